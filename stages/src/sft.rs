//! `sft`: supervised fine-tuning (Llama 2 §3.1) and, with `mode = "pretrain"`, plain language
//! modelling from random initialisation. Reads a chat table (TRL `messages`), prompt/response
//! columns, a text column, or a table already tokenized by the `tokenize` stage; packs the
//! examples into `seq_len` rows with EOS between them; trains with AdamW, warm-up + cosine,
//! weight decay, clipping, batch and gradient accumulation (`train::trainer`); writes a Hugging
//! Face model directory with the tokenizer, the chat template and the loss curve, so that
//! `alignflow generate --model DIR --chat ...` works on it directly.
//!
//! The initial model is the `model` input when wired, else a random Llama of the shape given by
//! the parameters (seeded by the instance seed) whose vocabulary is the tokenizer's.

use std::path::PathBuf;

use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};
use kernels::chat::ChatTemplate;
use kernels::checkpoint::SaveDtype;
use kernels::config::{Head, LlamaConfig};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;
use kernels::tokenizer::Tokenizer;

use crate::common::{read_input_table, tokenizer_file};
use crate::train::{examples_from_table, train, write_loss_curve, Columns, Example, LossMode, RunOptions, Schedule, TrainConfig};

pub struct Sft;

impl Stage for Sft {
    fn kind(&self) -> &'static str {
        "sft"
    }
    fn version(&self) -> u32 {
        2
    }
    fn doc(&self) -> &'static str {
        "Supervised fine-tuning with loss on assistant tokens only (mode = \"sft\"), or pretraining with loss on every token (mode = \"pretrain\"), from an input model or from random init; packing, AdamW, warm-up + cosine, gradient accumulation, clipping; writes a Hugging Face model directory with tokenizer, chat template and loss curve."
    }
    fn data_parallel(&self) -> bool {
        true
    }
    /// One GPU when the run has one (`--gpus`): training then runs on it (see
    /// `train_and_save`); with `--gpus 0` the scheduler grants none and training stays on the CPU.
    fn resources(&self) -> graph::Resources {
        graph::Resources { cpus: 1, gpus: 1 }
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("data", ArtifactType::Table, "training rows: `messages` chats, prompt/response, a text column, or `input_ids` (+ `loss_mask`)"),
            Port::optional("model", ArtifactType::Model, "the initial model; random init of the given shape when absent"),
            Port::optional("tokenizer", ArtifactType::Tokenizer, "the tokenizer (required without an input model that ships one)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("model", ArtifactType::Model, "the trained model (HF layout) + loss_curve.json/.csv + train_summary.json")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::str("mode", Some("sft"), "\"sft\": loss on assistant tokens only; \"pretrain\": loss on every token"),
            ParamSpec::int("hidden_size", 8, 65536, Some(128), "random init: model width"),
            ParamSpec::int("layers", 1, 1024, Some(4), "random init: decoder layers"),
            ParamSpec::int("heads", 1, 1024, Some(4), "random init: attention heads"),
            ParamSpec::int("kv_heads", 1, 1024, Some(2), "random init: key/value heads (grouped-query attention)"),
            ParamSpec::int("intermediate_size", 8, 1 << 20, Some(344), "random init: SwiGLU width"),
            ParamSpec::int("max_seq_len", 16, 1 << 20, Some(512), "random init: positions the model supports"),
            ParamSpec::bool("tie_embeddings", Some(false), "random init: share the input embedding and the LM head"),
        ]
        .into_iter()
        .chain(train_param_specs(TrainDefaults { seq_len: 128, seq_len_doc: "tokens per packed row", batch_size: 8, epochs: 1, warmup_steps: 10 }))
        .chain([
            ParamSpec::str("messages_column", Some("messages"), "the chat column"),
            ParamSpec::str("text_column", Some("text"), "the text column (pretraining data)"),
        ])
        .collect()
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let p = ctx.params;
        let mode = LossMode::parse(p.str("mode")?).ok_or_else(|| StageError::Param { name: "mode".into(), expected: "\"sft\" or \"pretrain\"".into() })?;
        let init = ctx.input_opt("model").map(ModelDir::load).transpose().map_err(|e| StageError::wrap("loading input `model`", e))?;
        let tokenizer = match ctx.input_opt("tokenizer") {
            Some(dir) => Some(Tokenizer::from_file(&tokenizer_file(dir)).map_err(|e| StageError::wrap("input `tokenizer`", e))?),
            None => init.as_ref().and_then(|m| m.tokenizer.clone()),
        };
        let tok = tokenizer.ok_or_else(|| StageError::Message("a tokenizer is needed: wire `tokenizer`, or a `model` whose directory has tokenizer.json".into()))?;
        let template = init.as_ref().and_then(|m| m.chat.clone()).unwrap_or(ChatTemplate::Llama2);
        let (mut model, chat) = match init {
            Some(m) => {
                let model = Llama::from_tensors(m.config.clone(), &m.tensors).map_err(|e| StageError::wrap("input `model`", e))?;
                (model, m.chat.unwrap_or(ChatTemplate::Llama2))
            }
            None => (Llama::new_random(random_config(ctx, &tok)?, ctx.seed), ChatTemplate::Llama2),
        };
        let table = read_input_table(ctx, "data")?;
        let cols = Columns { messages: p.str("messages_column")?.to_string(), text: p.str("text_column")?.to_string() };
        let examples = examples_from_table(&table, &cols, Some(&tok), &template, mode, "data").map_err(|e| StageError::wrap("building examples", e))?;
        train_and_save(ctx, &mut model, &examples, tok, chat, p.str("mode")?)?;
        Ok(())
    }
}

/// Where a training stage runs: the first GPU the scheduler granted it (`--gpus`, the stage's
/// `resources.gpus`), else the CPU. A granted GPU that cannot be used (a build without the
/// `cuda` feature, no driver) is reported on stderr and training runs on the CPU. GPU training
/// (bf16) agrees with the CPU's within bf16 rounding, not bitwise, and fingerprints do not
/// record the device.
pub(crate) fn training_device(ctx: &RunCtx<'_>) -> kernels::device::Device {
    use kernels::device::Device;
    match ctx.gpus().first() {
        None => Device::Cpu,
        Some(&g) => match Device::cuda(g as usize) {
            Ok(d) => {
                eprintln!("{}: training on GPU cuda:{g}", ctx.instance);
                d
            }
            Err(e) => {
                eprintln!("{}: granted GPU {g}, but {e}; training on the CPU", ctx.instance);
                Device::Cpu
            }
        },
    }
}

/// What [`train_and_save`] did.
pub(crate) struct Trained {
    pub cfg: TrainConfig,
    /// The `model` output directory.
    pub out: PathBuf,
}

/// The shared end of every training stage (sft, gatt): trains `model` on `examples` with the
/// parameters of [`train_param_specs`] (resumable through the scratch directory), then writes
/// the `model` output: the HF-layout directory with `tok` and `chat`, the loss curve, and
/// train_summary.json (`mode` names the stage's kind of training).
pub(crate) fn train_and_save(ctx: &RunCtx<'_>, model: &mut Llama, examples: &[Example], tok: Tokenizer, chat: ChatTemplate, mode: &str) -> Result<Trained, StageError> {
    let p = ctx.params;
    let separator = model.config.eos_token_ids.first().copied().or_else(|| tok.token_to_id("</s>"));
    let cfg = train_config(ctx, separator)?;
    let opts = RunOptions {
        checkpoint_dir: checkpoint_dir(ctx),
        checkpoint_every: p.int("checkpoint_every")? as usize,
        stop_after: None,
        label: ctx.instance.to_string(),
        progress: true,
        reduce: crate::train::reduce::for_collective(ctx.collective()),
        device: training_device(ctx),
    };
    let t0 = std::time::Instant::now();
    let outcome = train(model, examples, &cfg, &opts).map_err(|e| StageError::wrap("training", e))?;
    let seconds = t0.elapsed().as_secs_f64();
    let out = ctx.output("model")?.to_path_buf();
    let dir = ModelDir { config: model.config.clone(), tensors: model.to_tensors(), tokenizer: Some(tok), chat: Some(chat) };
    dir.save(&out, SaveDtype::F32).map_err(|e| StageError::wrap("saving the model", e))?;
    write_loss_curve(&out, &outcome.curve).map_err(|source| StageError::Io { path: out.clone(), source })?;
    let scored: usize = examples.iter().map(|e| e.mask.iter().filter(|m| **m).count()).sum();
    let summary = serde_json::json!({
        "mode": mode,
        "examples": examples.len(),
        "scored_tokens_per_epoch": scored,
        "rows_per_epoch": outcome.rows_per_epoch,
        "steps": outcome.total_steps,
        "parameters": model.num_parameters(),
        "final_loss": outcome.curve.last().map(|l| l.loss),
        "seconds": seconds,
        "device": opts.device.name(),
    });
    let path = out.join("train_summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary).expect("json")).map_err(|source| StageError::Io { path, source })?;
    Ok(Trained { cfg, out })
}

/// The defaults that differ between the stages that train with [`train_param_specs`].
pub(crate) struct TrainDefaults {
    pub seq_len: i64,
    pub seq_len_doc: &'static str,
    pub batch_size: i64,
    pub epochs: i64,
    pub warmup_steps: i64,
}

/// The training parameters [`train_config`] reads (and `checkpoint_every`), declared once for
/// every stage that runs the shared training loop (sft, gatt).
pub(crate) fn train_param_specs(d: TrainDefaults) -> Vec<ParamSpec> {
    vec![
        ParamSpec::int("seq_len", 2, 1 << 20, Some(d.seq_len), d.seq_len_doc),
        ParamSpec::int("batch_size", 1, 1 << 20, Some(d.batch_size), "packed rows per micro-batch"),
        ParamSpec::int("grad_accum", 1, 1 << 20, Some(1), "micro-batches per optimiser step"),
        ParamSpec::int("epochs", 0, 1 << 20, Some(d.epochs), "passes over the data (used when max_steps = 0)"),
        ParamSpec::int("max_steps", 0, i64::MAX, Some(0), "optimiser steps; 0 = as many as `epochs` needs"),
        ParamSpec::float("lr", 0.0, 10.0, Some(3e-4), "peak learning rate"),
        ParamSpec::int("warmup_steps", 0, i64::MAX, Some(d.warmup_steps), "linear warm-up steps"),
        ParamSpec::str("schedule", Some("cosine"), "\"cosine\" (to min_lr_ratio × lr) or \"constant\" after warm-up"),
        ParamSpec::float("min_lr_ratio", 0.0, 1.0, Some(0.1), "cosine floor as a fraction of lr (Llama 2: 0.1)"),
        ParamSpec::float("weight_decay", 0.0, 10.0, Some(0.1), "AdamW decoupled weight decay (not on norms)"),
        ParamSpec::float("clip", 0.0, 1e6, Some(1.0), "global gradient-norm clip; 0 = none"),
        ParamSpec::int("shards", 1, 1024, Some(2), "each micro-batch's rows are split into this many shards whose passes run concurrently (gradients summed in order); changes results only by float summation order, and never depends on the thread count"),
        ParamSpec::int("checkpoint_every", 0, i64::MAX, Some(0), "steps between resumable checkpoints, kept in the runtime's scratch directory so a killed run resumes; 0 = none"),
    ]
}

/// The training configuration from the parameters.
pub(crate) fn train_config(ctx: &RunCtx<'_>, separator: Option<u32>) -> Result<TrainConfig, StageError> {
    let p = ctx.params;
    let u = |name: &str| p.int(name).map(|v| v as usize);
    let schedule = match p.str("schedule")? {
        "cosine" => Schedule::Cosine { min_lr_ratio: p.float("min_lr_ratio")? as f32 },
        "constant" => Schedule::Constant,
        _ => return Err(StageError::Param { name: "schedule".into(), expected: "\"cosine\" or \"constant\"".into() }),
    };
    let cfg = TrainConfig {
        seq_len: u("seq_len")?,
        batch_size: u("batch_size")?,
        grad_accum: u("grad_accum")?,
        epochs: u("epochs")?,
        max_steps: u("max_steps")?,
        lr: p.float("lr")? as f32,
        warmup_steps: u("warmup_steps")?,
        schedule,
        weight_decay: p.float("weight_decay")? as f32,
        clip: p.float("clip")? as f32,
        seed: ctx.seed,
        separator,
        shards: u("shards")?,
    };
    if cfg.epochs == 0 && cfg.max_steps == 0 {
        return Err(StageError::Param { name: "epochs".into(), expected: "at least 1 when max_steps is 0".into() });
    }
    Ok(cfg)
}

/// The random-init model shape: the parameters plus the tokenizer's vocabulary and specials.
fn random_config(ctx: &RunCtx<'_>, tok: &Tokenizer) -> Result<LlamaConfig, StageError> {
    let p = ctx.params;
    let u = |name: &str| p.int(name).map(|v| v as usize);
    let (hidden, heads, kv) = (u("hidden_size")?, u("heads")?, u("kv_heads")?);
    if hidden % heads != 0 {
        return Err(StageError::Param { name: "heads".into(), expected: format!("a divisor of hidden_size {hidden}") });
    }
    if heads % kv != 0 {
        return Err(StageError::Param { name: "kv_heads".into(), expected: format!("a divisor of heads {heads}") });
    }
    Ok(LlamaConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: hidden,
        intermediate_size: u("intermediate_size")?,
        num_hidden_layers: u("layers")?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: u("max_seq_len")?,
        tie_word_embeddings: p.bool("tie_embeddings")?,
        bos_token_id: tok.token_to_id("<s>"),
        eos_token_ids: tok.token_to_id("</s>").into_iter().collect(),
        pad_token_id: tok.token_to_id("<pad>"),
        head: Head::LanguageModel,
    })
}

/// Where checkpoints go: the runtime's per-instance scratch directory, which survives a kill
/// and is keyed by the instance's fingerprint, so a re-run of the same stage resumes from it.
pub(crate) fn checkpoint_dir(ctx: &RunCtx<'_>) -> Option<PathBuf> {
    ctx.scratch_dir().map(|d| d.join("checkpoints"))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::common::{table_file, testing};
    use datasets::schema::ChatMessage;
    use datasets::world::{generate_split, Split, WorldConfig};
    use graph::ParamValue;
    use kernels::tokenizer::BpeOptions;

    /// A small world: SFT demonstrations and pretraining text, and a BPE tokenizer on both.
    pub(crate) fn world(dir: &Path) -> (WorldConfig, PathBuf) {
        let mut cfg = WorldConfig::standard(5);
        cfg.sizes.pretrain = 60;
        cfg.sizes.sft = 40;
        cfg.sizes.eval = 12;
        cfg.sizes.eval_borderline = 4;
        let pre = generate_split(&cfg, Split::Pretrain).unwrap();
        let texts: Vec<String> = datasets::table::str_values(&pre, "text", "pretrain").unwrap().into_iter().map(String::from).collect();
        let opts = BpeOptions { vocab_size: 400, min_frequency: 2, special_tokens: vec!["<s>".into(), "</s>".into(), "<pad>".into()] };
        let tok = Tokenizer::train_bpe(&mut texts.into_iter(), &opts).unwrap();
        let tdir = dir.join("tokenizer");
        std::fs::create_dir_all(&tdir).unwrap();
        tok.save(&tokenizer_file(&tdir)).unwrap();
        (cfg, tdir)
    }

    pub(crate) fn write_table(dir: &Path, batch: &arrow_array::RecordBatch) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        datasets::table::write_parquet(&table_file(dir), batch).unwrap();
        dir.to_path_buf()
    }

    /// A tiny random model's parameters, for tests.
    pub(crate) fn tiny(extra: &[(&str, ParamValue)]) -> graph::Params {
        let mut over: Vec<(&str, ParamValue)> = vec![
            ("hidden_size", ParamValue::Int(32)),
            ("layers", ParamValue::Int(2)),
            ("heads", ParamValue::Int(4)),
            ("kv_heads", ParamValue::Int(2)),
            ("intermediate_size", ParamValue::Int(64)),
            ("max_seq_len", ParamValue::Int(256)),
            ("seq_len", ParamValue::Int(64)),
            ("batch_size", ParamValue::Int(4)),
            ("lr", ParamValue::Float(3e-3)),
        ];
        over.extend(extra.iter().cloned());
        testing::params(&Sft, &over)
    }

    /// Issue 4: on multi-turn chats the SFT mask is neither all-zero nor all-one, it covers
    /// exactly the assistant turns (and their EOS), and pretraining mode covers everything.
    #[test]
    fn multi_turn_mask_covers_assistant_turns_only() {
        let d = tempfile::tempdir().unwrap();
        let (_, tdir) = world(d.path());
        let tok = Tokenizer::from_file(&tokenizer_file(&tdir)).unwrap();
        let chats = vec![vec![
            ChatMessage::new("system", "Answer briefly."),
            ChatMessage::new("user", "What is 7 + 12?"),
            ChatMessage::new("assistant", "The answer is 19."),
            ChatMessage::new("user", "What is the capital of Peru?"),
            ChatMessage::new("assistant", "The capital of Peru is Lima."),
        ]];
        let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new("messages", datasets::schema::messages_type(), false)]));
        let batch = arrow_array::RecordBatch::try_new(schema, vec![datasets::schema::messages_array(&chats)]).unwrap();
        let cols = Columns { messages: "messages".into(), text: "text".into() };
        let ex = examples_from_table(&batch, &cols, Some(&tok), &ChatTemplate::Llama2, LossMode::Sft, "chats").unwrap();
        let mask = &ex[0].mask;
        let on = mask.iter().filter(|m| **m).count();
        assert!(on > 0 && on < mask.len(), "mask has {on} of {} tokens", mask.len());
        let masked: Vec<u32> = ex[0].ids.iter().zip(mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        let text = tok.decode(&masked, true).unwrap();
        assert!(text.contains("19") && text.contains("Lima"), "{text:?}");
        assert!(!text.contains("capital of Peru?") && !text.contains("INST"), "{text:?}");
        // Both answers end with EOS, and EOS is a target.
        let eos = tok.token_to_id("</s>").unwrap();
        assert_eq!(masked.iter().filter(|&&t| t == eos).count(), 2);
        let pre = examples_from_table(&batch, &cols, Some(&tok), &ChatTemplate::Llama2, LossMode::Pretrain, "chats").unwrap();
        assert!(pre[0].mask.iter().all(|m| *m));
    }

    /// Issue 4: a user's own SFT data in TRL's `messages` format (Parquet) runs through the
    /// stage, and the model directory it writes is complete (config, weights, tokenizer, chat
    /// template, loss curve).
    #[test]
    fn trl_messages_parquet_trains_from_random_init() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, tdir) = world(d.path());
        // Only the TRL column: no world-specific columns.
        let sft = generate_split(&cfg, Split::Sft).unwrap();
        let trl = sft.project(&[sft.schema().index_of("messages").unwrap()]).unwrap();
        let data = write_table(&d.path().join("data"), &trl);
        let params = tiny(&[("max_steps", ParamValue::Int(30))]);
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), data), ("tokenizer".to_string(), tdir)].into();
        let (outs, _) = testing::run(&Sft, &params, d.path(), inputs, &d.path().join("work"), 1).unwrap();
        let out = &outs["model"];
        let md = ModelDir::load(out).unwrap();
        assert_eq!(md.chat, Some(ChatTemplate::Llama2));
        assert!(md.tokenizer.is_some());
        assert_eq!(md.config.hidden_size, 32);
        let curve: Vec<crate::train::LossPoint> = serde_json::from_slice(&std::fs::read(out.join("loss_curve.json")).unwrap()).unwrap();
        assert_eq!(curve.len(), 30);
        assert!(curve[29].loss < curve[0].loss, "{} -> {}", curve[0].loss, curve[29].loss);
        assert!(std::fs::read_to_string(out.join("loss_curve.csv")).unwrap().starts_with("step,loss"));
    }

    /// Pretraining mode on a text table, then SFT from that model on the tokenized-table path:
    /// the pipeline's two training nodes in miniature.
    #[test]
    fn pretrain_then_sft_from_the_pretrained_model() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, tdir) = world(d.path());
        let pre = write_table(&d.path().join("pre"), &generate_split(&cfg, Split::Pretrain).unwrap());
        let params = tiny(&[("mode", ParamValue::Str("pretrain".into())), ("max_steps", ParamValue::Int(6))]);
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), pre), ("tokenizer".to_string(), tdir.clone())].into();
        let (outs, _) = testing::run(&Sft, &params, d.path(), inputs, &d.path().join("w1"), 1).unwrap();
        let base = outs["model"].clone();
        // A tokenized table with a loss mask, as `tokenize` writes it.
        let tok = Tokenizer::from_file(&tokenizer_file(&tdir)).unwrap();
        let ids = vec!["a".to_string(), "b".to_string()];
        let toks: Vec<Vec<i32>> = vec![
            tok.encode("[INST] What is 1 + 1? [/INST] The answer is 2.").unwrap().into_iter().map(|x| x as i32).collect(),
            tok.encode("[INST] What is 2 + 2? [/INST] The answer is 4.").unwrap().into_iter().map(|x| x as i32).collect(),
        ];
        let masks: Vec<Vec<bool>> = toks.iter().map(|t| (0..t.len()).map(|i| i >= t.len() / 2).collect()).collect();
        let batch = datasets::schema::tokenized_batch(&ids, &toks, Some(&masks), "tokens").unwrap();
        let data = write_table(&d.path().join("tokens"), &batch);
        let params = tiny(&[("epochs", ParamValue::Int(2))]);
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), data), ("model".to_string(), base.clone())].into();
        let (outs, _) = testing::run(&Sft, &params, d.path(), inputs, &d.path().join("w2"), 1).unwrap();
        let tuned = ModelDir::load(&outs["model"]).unwrap();
        let before = ModelDir::load(&base).unwrap();
        assert_eq!(tuned.config, before.config);
        assert_ne!(tuned.tensors, before.tensors);
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(outs["model"].join("train_summary.json")).unwrap()).unwrap();
        assert_eq!(summary["examples"], 2);
    }

    #[test]
    fn missing_tokenizer_and_bad_mode_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, tdir) = world(d.path());
        let data = write_table(&d.path().join("data"), &generate_split(&cfg, Split::Sft).unwrap());
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), data.clone())].into();
        let err = testing::run(&Sft, &tiny(&[]), d.path(), inputs, &d.path().join("w1"), 1).unwrap_err();
        assert!(err.to_string().contains("tokenizer"), "{err}");
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), data), ("tokenizer".to_string(), tdir)].into();
        let err = testing::run(&Sft, &tiny(&[("mode", ParamValue::Str("dpo".into()))]), d.path(), inputs, &d.path().join("w2"), 1).unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
    }
}
