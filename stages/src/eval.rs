//! `eval`: generates answers to the world's evaluation prompts with one model and judges them
//! with the gold judges (`datasets::judge`; ../shared/docs/assistant-world.md, "Gold judges"
//! and "Evaluation decoding"). Every prompt is answered greedily and with `samples` draws at
//! `temperature` (1.0 by default): violations and the value of RLHF show mostly under sampling.
//!
//! One eval node per model: the pipeline wires `model` to the stage whose model it judges and
//! `alignflow report` names the result after that stage (`sft`, `ppo@2`). The `prompts` table
//! (the world's `eval` split) is the row port; the optional `borderline` table (the world's
//! `eval_borderline`) adds rows keyed `borderline/<id>`. The stage is row-wise through
//! `ctx.map_rows`: a row's answers depend only on the model, the row and its seed, so editing
//! one prompt re-generates one row.
//!
//! Outputs: `results` (one row per prompt: responses and judgements) and `report`
//! (`report.json` with the aggregates below, and `report.md`).
//! - `helpfulness`: mean gold helpfulness over the `prompts` table;
//! - `violation_rate`: share of unsafe answers to `is_safety` prompts;
//! - `false_refusal_rate`: share of refusals of the other (safe) prompts of `prompts`;
//! - `false_refusal_borderline`: share of refusals on the `borderline` table (null without it);
//! - `eos_rate`: share of answers that ended with EOS (the chat format was followed);
//! - `by_category`: helpfulness, refusal and violation rates and counts per category.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use datasets::judge::{self, JudgeInput};
use graph::{ArtifactType, ParamSpec, Port, RowFn, RowId, RowTask, RunCtx, Stage, StageError};
use kernels::chat::{ChatTemplate, Message};
use kernels::generate::{generate_with, DecodeWeights, SamplingParams, WeightPrecision};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;
use kernels::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::common::{read_input_table, write_output_table};

pub struct Eval;

/// The seed of every generation call; rows differ by their row id (the per-row seed).
const GENERATION_SEED: u64 = 0x5EED_E7A1;

impl Stage for Eval {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn version(&self) -> u32 {
        // 2: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        2
    }
    fn doc(&self) -> &'static str {
        "Gold-judged evaluation of one model on prompt tables: greedy and sampled answers, helpfulness, violation rate on is_safety prompts, false refusals on ordinary and borderline prompts, per category. Row-wise and incremental."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the model to evaluate (HF layout with tokenizer)"),
            Port::new("prompts", ArtifactType::Table, "evaluation prompts (prompt schema: id, category, is_safety, prompt, judge)"),
            Port::optional("borderline", ArtifactType::Table, "borderline prompts for the false-refusal rate (prompt schema)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("results", ArtifactType::Table, "one row per prompt: responses, helpfulness, unsafe and refusal flags, greedy and sampled"),
            Port::new("report", ArtifactType::Report, "report.json (aggregates, greedy and sampled) and report.md"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("samples", 0, 64, Some(2), "sampled answers per prompt (the world doc: one to four)"),
            ParamSpec::float("temperature", 0.0, 10.0, Some(1.0), "temperature of the sampled answers"),
            ParamSpec::float("top_p", 0.0, 1.0, Some(1.0), "nucleus of the sampled answers (1.0 = plain sampling)"),
            ParamSpec::int("max_new_tokens", 1, 1 << 16, Some(48), "cap on answer length"),
            ParamSpec::str("system", Some(""), "a system message put before every prompt (empty = none)"),
        ]
    }
    fn row_port(&self) -> Option<&'static str> {
        Some("prompts")
    }
    fn extra_row_ports(&self) -> &'static [&'static str] {
        &["borderline"]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let md = ModelDir::load(ctx.input("model")?).map_err(|e| StageError::wrap("loading input `model`", e))?;
        let stop = md.stop_ids();
        let tok = md.tokenizer.clone().ok_or_else(|| StageError::Message("input `model` has no tokenizer.json".into()))?;
        let template = md.chat.clone().unwrap_or(ChatTemplate::Llama2);
        let model = Llama::from_tensors(md.config.clone(), &md.tensors).map_err(|e| StageError::wrap("input `model`", e))?;
        let mut prompts = load_prompts(ctx, "prompts", "")?;
        let n_main = prompts.len();
        if ctx.input_opt("borderline").is_some() {
            prompts.extend(load_prompts(ctx, "borderline", "borderline/")?);
        }
        let p = ctx.params;
        let settings = Settings {
            samples: p.int("samples")? as usize,
            temperature: p.float("temperature")? as f32,
            top_p: p.float("top_p")? as f32,
            max_new_tokens: p.int("max_new_tokens")? as usize,
            system: p.str("system")?.to_string(),
        };
        let rows: Vec<RowId> = prompts.iter().map(|q| RowId { key: q.key.clone(), hash: q.hash }).collect();
        let f = Arc::new(Answer { model, tok, template, stop, prompts, settings: settings.clone() });
        let results = ctx.map_rows(&rows, f.clone())?;
        let judged: Vec<RowResult> = rows
            .iter()
            .zip(&results)
            .map(|(r, b)| serde_json::from_slice(b).map_err(|e| StageError::Row { key: r.key.clone(), message: format!("corrupt memo entry: {e}") }))
            .collect::<Result<_, _>>()?;
        let (main, border) = (&f.prompts[..n_main], &f.prompts[n_main..]);
        let report = EvalReport {
            greedy: aggregate(main, border, &judged, Decoding::Greedy),
            sampled: (settings.samples > 0).then(|| aggregate(main, border, &judged, Decoding::Sampled)),
            samples_per_prompt: settings.samples,
            temperature: settings.temperature,
            prompts: n_main,
            borderline_prompts: border.len(),
        };
        write_output_table(ctx, "results", &results_table(&f.prompts, &judged)?)?;
        let dir = ctx.output("report")?;
        let path = dir.join("report.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&report).expect("report serialises")).map_err(|source| StageError::Io { path, source })?;
        let path = dir.join("report.md");
        std::fs::write(&path, report.markdown(ctx.instance)).map_err(|source| StageError::Io { path, source })
    }
}

#[derive(Clone, Debug)]
struct Settings {
    samples: usize,
    temperature: f32,
    top_p: f32,
    max_new_tokens: usize,
    system: String,
}

/// One prompt to answer: its row key, content hash, judge input and text.
#[derive(Clone, Debug)]
struct Prompt {
    key: String,
    hash: [u8; 32],
    source: &'static str,
    category: String,
    judge: JudgeInput,
    text: String,
}

fn load_prompts(ctx: &RunCtx<'_>, port: &str, key_prefix: &str) -> Result<Vec<Prompt>, StageError> {
    let table = read_input_table(ctx, port)?;
    let wrap = |e| StageError::wrap(format!("input `{port}`"), e);
    let rows = datasets::schema::prompt_rows(&table, port).map_err(wrap)?;
    let hashes = datasets::table::row_hashes(&table).map_err(wrap)?;
    let source = if key_prefix.is_empty() { "prompts" } else { "borderline" };
    rows.iter()
        .zip(hashes)
        .enumerate()
        .map(|(i, (r, hash))| {
            Ok(Prompt {
                key: format!("{key_prefix}{}", r.id),
                hash,
                source,
                category: r.category.clone(),
                judge: JudgeInput::from_prompt_row(r, port, i).map_err(wrap)?,
                text: r.prompt.clone(),
            })
        })
        .collect()
}

/// One judged answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Judged {
    text: String,
    helpfulness: f32,
    unsafe_: bool,
    refusal: bool,
    /// The answer ended with a stop id (rather than hitting max_new_tokens).
    eos: bool,
}

/// What the row function returns for a prompt (stored in the memo as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RowResult {
    greedy: Judged,
    samples: Vec<Judged>,
}

/// The per-row function: owns the model and everything the answers depend on.
struct Answer {
    model: Llama,
    tok: Tokenizer,
    template: ChatTemplate,
    stop: Vec<u32>,
    prompts: Vec<Prompt>,
    settings: Settings,
}

impl RowFn for Answer {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        let ids: Vec<Vec<u32>> = tasks.iter().map(|t| self.encode(t)).collect::<Result<_, _>>()?;
        let dw = DecodeWeights::new(&self.model, WeightPrecision::F32);
        let s = &self.settings;
        let run_gen = |prompts: &[Vec<u32>], temperature: f32, top_p: f32, row_ids: &[u64]| {
            let params = SamplingParams { max_new_tokens: s.max_new_tokens, temperature, top_p, seed: GENERATION_SEED };
            generate_with(&dw, prompts, row_ids, &params, &self.stop).map_err(|e| StageError::wrap("generating", e))
        };
        let seeds: Vec<u64> = tasks.iter().map(|t| t.seed).collect();
        let greedy = run_gen(&ids, 0.0, 1.0, &seeds)?;
        // Every sample of every row in one batched generation (rows decode independently, so
        // the batch does not change an answer): sample j of a row draws from its own stream,
        // (row seed, j) mixed by blake3.
        let all_prompts: Vec<Vec<u32>> = (0..s.samples).flat_map(|_| ids.iter().cloned()).collect();
        let row_ids: Vec<u64> = (0..s.samples).flat_map(|j| seeds.iter().map(move |&seed| sample_stream(seed, j))).collect();
        let all = if s.samples > 0 { run_gen(&all_prompts, s.temperature, s.top_p, &row_ids)? } else { Vec::new() };
        let sampled: Vec<&[Vec<u32>]> = all.chunks(ids.len().max(1)).collect();
        tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let q = &self.prompts[t.index];
                let greedy = self.judge(q, &greedy[i], &t.key)?;
                let samples = sampled.iter().map(|s| self.judge(q, &s[i], &t.key)).collect::<Result<_, _>>()?;
                Ok(serde_json::to_vec(&RowResult { greedy, samples }).expect("row result serialises"))
            })
            .collect()
    }
}

impl Answer {
    /// The prompt in the model's chat format, ready for the answer.
    fn encode(&self, t: &RowTask) -> Result<Vec<u32>, StageError> {
        let q = &self.prompts[t.index];
        let mut msgs = Vec::new();
        if !self.settings.system.is_empty() {
            msgs.push(Message::new("system", &self.settings.system));
        }
        msgs.push(Message::new("user", &q.text));
        let enc = self.template.encode(&self.tok, &msgs, true, None, None).map_err(|e| StageError::Row { key: t.key.clone(), message: e.to_string() })?;
        Ok(enc.ids)
    }

    fn judge(&self, q: &Prompt, ids: &[u32], key: &str) -> Result<Judged, StageError> {
        let eos = ids.last().is_some_and(|t| self.stop.contains(t));
        let text = self.tok.decode(ids, true).map_err(|e| StageError::Row { key: key.to_string(), message: e.to_string() })?;
        let text = text.trim().to_string();
        Ok(Judged {
            helpfulness: judge::helpfulness(&q.judge, &text),
            unsafe_: judge::is_unsafe(&q.judge, &text),
            refusal: judge::is_refusal(&text),
            eos,
            text,
        })
    }
}

/// The random-stream id of sample `j` of a row with seed `seed`.
fn sample_stream(seed: u64, j: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(j as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Decoding {
    Greedy,
    Sampled,
}

/// Aggregates for one decoding mode. Rates are over answers (a prompt with n samples counts n
/// times under sampling); a rate with nothing to count is null.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub helpfulness: Option<f64>,
    pub violation_rate: Option<f64>,
    pub false_refusal_rate: Option<f64>,
    pub false_refusal_borderline: Option<f64>,
    pub eos_rate: Option<f64>,
    pub by_category: BTreeMap<String, CategoryMetrics>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    /// Answers judged (prompts × samples).
    pub n: usize,
    pub helpfulness: f64,
    pub refusal_rate: f64,
    pub violation_rate: f64,
}

/// `report.json` of an eval instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub greedy: Metrics,
    /// None when `samples` = 0.
    pub sampled: Option<Metrics>,
    pub samples_per_prompt: usize,
    pub temperature: f32,
    pub prompts: usize,
    pub borderline_prompts: usize,
}

/// Mean of booleans or numbers; None when empty.
#[derive(Default)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.n += 1;
    }
    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

fn answers(r: &RowResult, d: Decoding) -> Vec<&Judged> {
    match d {
        Decoding::Greedy => vec![&r.greedy],
        Decoding::Sampled => r.samples.iter().collect(),
    }
}

fn aggregate(main: &[Prompt], border: &[Prompt], judged: &[RowResult], d: Decoding) -> Metrics {
    let (mut help, mut viol, mut refuse, mut border_refuse, mut eos) = (Mean::default(), Mean::default(), Mean::default(), Mean::default(), Mean::default());
    let mut cats: BTreeMap<String, (Mean, Mean, Mean)> = BTreeMap::new();
    for (q, r) in main.iter().zip(judged) {
        for a in answers(r, d) {
            help.add(a.helpfulness as f64);
            eos.add(a.eos as u8 as f64);
            if q.judge.is_safety {
                viol.add(a.unsafe_ as u8 as f64);
            } else {
                refuse.add(a.refusal as u8 as f64);
            }
            let c = cats.entry(q.category.clone()).or_default();
            c.0.add(a.helpfulness as f64);
            c.1.add(a.refusal as u8 as f64);
            c.2.add(a.unsafe_ as u8 as f64);
        }
    }
    for r in &judged[main.len()..main.len() + border.len()] {
        for a in answers(r, d) {
            border_refuse.add(a.refusal as u8 as f64);
        }
    }
    let by_category = cats
        .into_iter()
        .map(|(k, (h, rf, v))| {
            let n = h.n;
            (k, CategoryMetrics { n, helpfulness: h.get().unwrap_or(0.0), refusal_rate: rf.get().unwrap_or(0.0), violation_rate: v.get().unwrap_or(0.0) })
        })
        .collect();
    Metrics {
        helpfulness: help.get(),
        violation_rate: viol.get(),
        false_refusal_rate: refuse.get(),
        false_refusal_borderline: border_refuse.get(),
        eos_rate: eos.get(),
        by_category,
    }
}

impl EvalReport {
    /// A short Markdown summary (the full report across models is `alignflow report`).
    pub fn markdown(&self, instance: &str) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        let mut s = format!("# eval `{instance}`\n\n{} prompts, {} borderline prompts; sampled: {} per prompt at T = {}\n\n", self.prompts, self.borderline_prompts, self.samples_per_prompt, self.temperature);
        s.push_str("| decoding | helpfulness | violation rate | false refusal | false refusal (borderline) | EOS rate |\n|---|---|---|---|---|---|\n");
        for (name, m) in [("greedy", Some(&self.greedy)), ("sampled", self.sampled.as_ref())] {
            if let Some(m) = m {
                s.push_str(&format!("| {name} | {} | {} | {} | {} | {} |\n", f(m.helpfulness), f(m.violation_rate), f(m.false_refusal_rate), f(m.false_refusal_borderline), f(m.eos_rate)));
            }
        }
        s
    }
}

/// The `results` table: one row per prompt of both tables.
fn results_table(prompts: &[Prompt], judged: &[RowResult]) -> Result<RecordBatch, StageError> {
    let strs = |f: &dyn Fn(usize) -> String| -> ArrayRef { Arc::new((0..prompts.len()).map(|i| Some(f(i))).collect::<StringArray>()) };
    let floats = |f: &dyn Fn(usize) -> f32| -> ArrayRef { Arc::new((0..prompts.len()).map(|i| Some(f(i))).collect::<Float32Array>()) };
    let bools = |f: &dyn Fn(usize) -> bool| -> ArrayRef { Arc::new((0..prompts.len()).map(|i| Some(f(i))).collect::<BooleanArray>()) };
    let mean = |i: usize, g: &dyn Fn(&Judged) -> f32| -> f32 {
        let s = &judged[i].samples;
        if s.is_empty() { f32::NAN } else { s.iter().map(g).sum::<f32>() / s.len() as f32 }
    };
    let fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("is_safety", DataType::Boolean, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("greedy_response", DataType::Utf8, false),
        Field::new("greedy_helpfulness", DataType::Float32, false),
        Field::new("greedy_unsafe", DataType::Boolean, false),
        Field::new("greedy_refusal", DataType::Boolean, false),
        Field::new("sample_response", DataType::Utf8, false),
        Field::new("sampled_helpfulness", DataType::Float32, false),
        Field::new("sampled_unsafe_rate", DataType::Float32, false),
        Field::new("sampled_refusal_rate", DataType::Float32, false),
    ];
    let columns = vec![
        strs(&|i| prompts[i].key.clone()),
        strs(&|i| prompts[i].source.to_string()),
        strs(&|i| prompts[i].category.clone()),
        bools(&|i| prompts[i].judge.is_safety),
        strs(&|i| prompts[i].text.clone()),
        strs(&|i| judged[i].greedy.text.clone()),
        floats(&|i| judged[i].greedy.helpfulness),
        bools(&|i| judged[i].greedy.unsafe_),
        bools(&|i| judged[i].greedy.refusal),
        strs(&|i| judged[i].samples.first().map(|s| s.text.clone()).unwrap_or_default()),
        floats(&|i| mean(i, &|j| j.helpfulness)),
        floats(&|i| mean(i, &|j| j.unsafe_ as u8 as f32)),
        floats(&|i| mean(i, &|j| j.refusal as u8 as f32)),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| StageError::wrap("building output `results`", e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::common::testing;
    use crate::sft::tests::{tiny, world, write_table};
    use crate::sft::Sft;
    use datasets::world::{generate_split, Split};
    use graph::ParamValue;

    /// A briefly trained tiny model, the world's eval tables, and an eval run on them; then one
    /// prompt is edited and the stage re-runs with the same memo: only that row is computed.
    #[test]
    fn judges_every_row_and_recomputes_only_an_edited_prompt() {
        let d = tempfile::tempdir().unwrap();
        let (cfg, tdir) = world(d.path());
        let sft = write_table(&d.path().join("sft"), &generate_split(&cfg, Split::Sft).unwrap());
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), sft), ("tokenizer".to_string(), tdir)].into();
        let (outs, _) = testing::run(&Sft, &tiny(&[("max_steps", ParamValue::Int(4))]), d.path(), inputs, &d.path().join("train"), 1).unwrap();
        let model = outs["model"].clone();
        let eval = generate_split(&cfg, Split::Eval).unwrap();
        let prompts = write_table(&d.path().join("eval"), &eval);
        let border = write_table(&d.path().join("border"), &generate_split(&cfg, Split::EvalBorderline).unwrap());
        let params = testing::params(&Eval, &[("samples", ParamValue::Int(2)), ("max_new_tokens", ParamValue::Int(8))]);
        let inputs: BTreeMap<String, PathBuf> =
            [("model".to_string(), model.clone()), ("prompts".to_string(), prompts.clone()), ("borderline".to_string(), border.clone())].into();
        let work = d.path().join("evalwork");
        let (outs, stats) = testing::run(&Eval, &params, d.path(), inputs.clone(), &work, 2).unwrap();
        let stats = stats.unwrap();
        assert_eq!((stats.total, stats.computed), (16, 16));
        let report: EvalReport = serde_json::from_slice(&std::fs::read(outs["report"].join("report.json")).unwrap()).unwrap();
        assert_eq!((report.prompts, report.borderline_prompts, report.samples_per_prompt), (12, 4, 2));
        let h = report.greedy.helpfulness.unwrap();
        assert!((0.0..=1.0).contains(&h));
        assert!(report.greedy.violation_rate.is_some(), "the eval split has is_safety prompts");
        assert!(report.greedy.false_refusal_borderline.is_some());
        let sampled = report.sampled.as_ref().unwrap();
        let n: usize = sampled.by_category.values().map(|c| c.n).sum();
        assert_eq!(n, 24, "12 prompts x 2 samples");
        let results = datasets::table::read_parquet(&crate::common::table_file(&outs["results"])).unwrap();
        assert_eq!(results.num_rows(), 16);

        // Same inputs again: everything reused, identical report.
        let (outs2, stats2) = testing::run(&Eval, &params, d.path(), inputs.clone(), &work, 1).unwrap();
        assert_eq!(stats2.unwrap().computed, 0);
        let report2: EvalReport = serde_json::from_slice(&std::fs::read(outs2["report"].join("report.json")).unwrap()).unwrap();
        assert_eq!(report2, report);

        // Edit one prompt: one row recomputed.
        let mut rows = datasets::schema::prompt_rows(&eval, "eval").unwrap();
        rows[3].prompt = format!("{} Please.", rows[3].prompt);
        write_table(&prompts, &datasets::schema::prompts_batch(&rows, "eval").unwrap());
        let (_, stats3) = testing::run(&Eval, &params, d.path(), inputs, &work, 1).unwrap();
        let stats3 = stats3.unwrap();
        assert_eq!((stats3.total, stats3.computed, stats3.reused), (16, 1, 15));
    }

    #[test]
    fn aggregates_count_what_the_docs_say() {
        let judge = |family: &str| -> JudgeInput {
            let spec: judge::JudgeSpec = match family {
                "unsafe" => serde_json::from_str(r#"{"family":"unsafe","area":"illicit","request":"x"}"#).unwrap(),
                _ => serde_json::from_str(r#"{"family":"arithmetic","a":1,"b":2,"op":"+","answer":3}"#).unwrap(),
            };
            JudgeInput::new(spec)
        };
        let prompt = |key: &str, family: &str| Prompt { key: key.into(), hash: [0; 32], source: "prompts", category: family.into(), judge: judge(family), text: String::new() };
        let ans = |h: f32, unsafe_: bool, refusal: bool| Judged { text: String::new(), helpfulness: h, unsafe_, refusal, eos: true };
        let main = vec![prompt("a", "arithmetic"), prompt("b", "arithmetic"), prompt("c", "unsafe")];
        let judged = vec![
            RowResult { greedy: ans(1.0, false, false), samples: vec![] },
            RowResult { greedy: ans(0.1, false, true), samples: vec![] },
            RowResult { greedy: ans(0.0, true, false), samples: vec![] },
        ];
        let m = aggregate(&main, &[], &judged, Decoding::Greedy);
        assert!((m.helpfulness.unwrap() - 1.1 / 3.0).abs() < 1e-6);
        assert_eq!(m.violation_rate, Some(1.0));
        assert_eq!(m.false_refusal_rate, Some(0.5));
        assert_eq!(m.false_refusal_borderline, None);
        assert_eq!(m.by_category["arithmetic"].n, 2);
        let s = aggregate(&main, &[], &judged, Decoding::Sampled);
        assert_eq!(s.helpfulness, None);
    }
}
