//! The SFT half of the default pipeline in miniature, through the `alignflow` binary: world
//! tables as Parquet sources → BPE → tokenize → pretrain (random init) → sft → eval of both.
//! Issue 4's incremental acceptance: changing one demonstration re-tokenizes one row and
//! re-runs SFT and what depends on it; changing one eval prompt re-runs one row of an eval
//! whose model did not change, and so does changing one borderline prompt. An SFT stage killed
//! halfway resumes from its checkpoint to the same weights as an uninterrupted run. A user's own
//! chat data in TRL's `messages` format (Parquet) trains through the same stage. Also
//! `alignflow report --json` on the result.

mod common;
use common::*;

use std::path::Path;

use datasets::world::{generate_split, Split, WorldConfig};

const PIPELINE: &str = r#"
[pipeline]
name = "mini_chat"
seed = 3

[stages.pretrain_text]
kind = "parquet"
params = { path = "pretrain.parquet" }

[stages.demos]
kind = "parquet"
params = { path = "sft.parquet" }

[stages.eval_prompts]
kind = "parquet"
params = { path = "eval.parquet" }

[stages.borderline]
kind = "parquet"
params = { path = "borderline.parquet" }

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "pretrain_text.table" }
params = { vocab_size = 400 }

[stages.pretrain_tokens]
kind = "tokenize"
inputs = { table = "pretrain_text.table", tokenizer = "bpe.tokenizer" }

[stages.sft_tokens]
kind = "tokenize"
inputs = { table = "demos.table", tokenizer = "bpe.tokenizer" }
params = { column = "messages" }

[stages.pretrain]
kind = "sft"
inputs = { data = "pretrain_tokens.tokens", tokenizer = "bpe.tokenizer" }
params = { mode = "pretrain", hidden_size = 32, layers = 2, heads = 4, kv_heads = 2, intermediate_size = 64, max_seq_len = 256, seq_len = 64, batch_size = 4, max_steps = 8, lr = 3e-3, warmup_steps = 2 }

[stages.sft]
kind = "sft"
inputs = { data = "sft_tokens.tokens", model = "pretrain.model" }
params = { seq_len = 64, batch_size = 4, max_steps = 4, lr = 1e-3, warmup_steps = 1 }

[stages.eval_pretrain]
kind = "eval"
inputs = { model = "pretrain.model", prompts = "eval_prompts.table", borderline = "borderline.table" }
params = { samples = 1, max_new_tokens = 6 }

[stages.eval_sft]
kind = "eval"
inputs = { model = "sft.model", prompts = "eval_prompts.table", borderline = "borderline.table" }
params = { samples = 1, max_new_tokens = 6 }
"#;

fn world() -> WorldConfig {
    let mut cfg = WorldConfig::standard(9);
    cfg.sizes.pretrain = 60;
    cfg.sizes.sft = 24;
    cfg.sizes.eval = 16;
    cfg.sizes.eval_borderline = 4;
    cfg
}

/// Writes a table as `dir/name` (a macro: the tests name no Arrow type).
macro_rules! put_table {
    ($dir:expr, $name:expr, $batch:expr) => {
        datasets::table::write_parquet(&$dir.join($name), &$batch).unwrap()
    };
}

fn setup(dir: &Path) -> WorldConfig {
    let cfg = world();
    std::fs::write(dir.join("p.toml"), PIPELINE).unwrap();
    for (name, split) in [("pretrain.parquet", Split::Pretrain), ("sft.parquet", Split::Sft), ("eval.parquet", Split::Eval), ("borderline.parquet", Split::EvalBorderline)] {
        put_table!(dir, name, generate_split(&cfg, split).unwrap());
    }
    cfg
}

#[test]
fn one_changed_demonstration_reruns_one_row_then_sft_and_one_changed_prompt_one_eval_row() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path());
    let first = run_json(d.path(), "p.toml", "ws", &[]);
    for s in ["pretrain", "sft", "eval_pretrain", "eval_sft"] {
        assert_eq!(stage(&first, s)["status"], "ran", "{s}");
    }
    assert_eq!(stage(&first, "eval_sft")["rows_computed"], 20);

    // Edit the answer of one demonstration and the wording of one eval prompt.
    let mut rows = datasets::schema::prompt_rows(&generate_split(&cfg, Split::Eval).unwrap(), "eval").unwrap();
    rows[5].prompt = format!("{} Thanks.", rows[5].prompt);
    put_table!(d.path(), "eval.parquet", datasets::schema::prompts_batch(&rows, "eval").unwrap());
    let mut demos = sft_rows(&cfg);
    let last = demos[2].messages.len() - 1;
    demos[2].messages[last].content = "The answer is 42.".into();
    put_table!(d.path(), "sft.parquet", datasets::schema::sft_batch(&demos, "sft").unwrap());

    let second = run_json(d.path(), "p.toml", "ws", &[]);
    let t = stage(&second, "sft_tokens");
    assert_eq!((t["rows_computed"].as_u64(), t["rows_reused"].as_u64()), (Some(1), Some(23)));
    assert_eq!(stage(&second, "sft")["status"], "ran");
    for s in ["bpe", "pretrain_tokens", "pretrain"] {
        assert_eq!(stage(&second, s)["status"], "cached", "{s}");
    }
    let e = stage(&second, "eval_pretrain");
    assert_eq!((e["status"].as_str(), e["rows_computed"].as_u64()), (Some("partial"), Some(1)));
    // The SFT model changed, so its eval re-runs every row.
    assert_eq!(stage(&second, "eval_sft")["rows_computed"], 20);

    // Cached row-wise stages report their rows, all reused.
    let t = stage(&second, "pretrain_tokens");
    assert_eq!(t["status"], "cached");
    assert_eq!((t["rows_total"].as_u64(), t["rows_computed"].as_u64(), t["rows_reused"].as_u64()), (Some(60), Some(0), Some(60)));

    // Edit one borderline prompt: one row of each eval re-runs, nothing else.
    let mut border = datasets::schema::prompt_rows(&generate_split(&cfg, Split::EvalBorderline).unwrap(), "eval_borderline").unwrap();
    border[1].prompt = format!("{} Thanks.", border[1].prompt);
    put_table!(d.path(), "borderline.parquet", datasets::schema::prompts_batch(&border, "eval_borderline").unwrap());
    let third = run_json(d.path(), "p.toml", "ws", &[]);
    for s in ["eval_pretrain", "eval_sft"] {
        let e = stage(&third, s);
        assert_eq!((e["status"].as_str(), e["rows_total"].as_u64(), e["rows_computed"].as_u64(), e["rows_reused"].as_u64()), (Some("partial"), Some(20), Some(1), Some(19)), "{s}");
    }
    for s in ["sft_tokens", "pretrain", "sft"] {
        assert_eq!(stage(&third, s)["status"], "cached", "{s}");
    }
    assert_eq!(stage(&third, "sft_tokens")["rows_reused"], 24);

    // The report names models after the stages that trained them.
    let out = alignflow(d.path(), &["report", "p.toml", "--workspace", "ws", "--json", "--out", "rep"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for m in ["pretrain", "sft"] {
        let h = v["models"][m]["helpfulness"].as_f64().unwrap_or_else(|| panic!("{m}: {v}"));
        assert!((0.0..=1.0).contains(&h));
        assert!(v["models"][m]["sampled"]["helpfulness"].is_number());
    }
}

/// The SFT table's rows (the world's schema) for editing.
fn sft_rows(cfg: &WorldConfig) -> Vec<datasets::schema::SftRow> {
    let sft = generate_split(cfg, Split::Sft).unwrap();
    let batch = &sft;
    let ids = datasets::table::str_values(batch, "id", "sft").unwrap();
    let cats = datasets::table::str_values(batch, "category", "sft").unwrap();
    let safety = datasets::table::bool_column(batch, "is_safety", "sft").unwrap();
    let msgs = datasets::table::messages_values(batch, "messages", "sft").unwrap();
    let quality = datasets::table::str_values(batch, "quality", "sft").unwrap();
    (0..batch.num_rows())
        .map(|i| datasets::schema::SftRow {
            id: ids[i].to_string(),
            category: cats[i].to_string(),
            is_safety: safety.value(i),
            messages: msgs[i].clone(),
            quality: quality[i].to_string(),
        })
        .collect()
}

/// The mini pipeline with SFT checkpointing every 5 of 300 steps (and no evals).
fn resumable_pipeline() -> String {
    let head = PIPELINE.split("[stages.eval_pretrain]").next().unwrap();
    head.replace(
        "params = { seq_len = 64, batch_size = 4, max_steps = 4, lr = 1e-3, warmup_steps = 1 }",
        "params = { seq_len = 64, batch_size = 4, max_steps = 300, lr = 1e-3, warmup_steps = 1, checkpoint_every = 5 }",
    )
}

/// The checkpoint directories an SFT run has left in the workspace's scratch area.
fn checkpoints(ws: &Path) -> Vec<std::path::PathBuf> {
    let Ok(fps) = std::fs::read_dir(ws.join("scratch")) else { return Vec::new() };
    fps.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path().join("checkpoints")).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .collect()
}

/// Issue 4: the `sft` stage killed (SIGKILL) after its first checkpoints and run again resumes
/// from the newest one and ends with weights bit-identical to an uninterrupted run.
#[test]
fn a_killed_sft_stage_resumes_to_bit_identical_weights() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    std::fs::write(d.path().join("r.toml"), resumable_pipeline()).unwrap();

    let straight = run_json(d.path(), "r.toml", "ws_straight", &[]);
    let sft_fp = stage(&straight, "sft")["fingerprint"].as_str().unwrap().to_string();
    let weights = |ws: &str| std::fs::read(d.path().join(ws).join("artifacts").join(&sft_fp).join("model/model.safetensors")).unwrap();

    let ws = d.path().join("ws_killed");
    let mut child = bin().current_dir(d.path()).args(["run", "r.toml", "--json", "--workspace", "ws_killed"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    // Wait until SFT has written a checkpoint past its first, then kill it mid-run.
    loop {
        let cks = checkpoints(&ws);
        if cks.iter().any(|p| !p.file_name().unwrap().to_string_lossy().ends_with("000000005")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run finished before a kill could hit the sft stage");
        assert!(t0.elapsed().as_secs() < 300, "no sft checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!checkpoints(&ws).is_empty(), "the killed run left its checkpoints");

    let out = alignflow(d.path(), &["run", "r.toml", "--json", "--workspace", "ws_killed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sft: resuming at step"), "the re-run did not resume: {err}");
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stage(&resumed, "sft")["fingerprint"], sft_fp.as_str());
    assert_eq!(stage(&resumed, "pretrain")["status"], "cached");
    assert!(weights("ws_killed") == weights("ws_straight"), "resumed weights differ from the uninterrupted run's");
    assert!(checkpoints(&ws).is_empty(), "the scratch checkpoints are removed once the stage commits");
}

/// Issue 4: a user's own SFT data, a Parquet file with nothing but TRL's `messages` column
/// (list of role/content structs), trains through the `sft` stage from random init, and the
/// model it writes answers a chat prompt through `alignflow generate`.
#[test]
fn a_users_trl_messages_parquet_trains_through_sft() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path());
    let sft = generate_split(&cfg, Split::Sft).unwrap();
    let trl = sft.project(&[sft.schema().index_of("messages").unwrap()]).unwrap();
    assert_eq!(trl.num_columns(), 1);
    put_table!(d.path(), "trl.parquet", trl);
    std::fs::write(
        d.path().join("t.toml"),
        r#"
[pipeline]
name = "trl_chat"
seed = 4

[stages.text]
kind = "parquet"
params = { path = "pretrain.parquet" }

[stages.chats]
kind = "parquet"
params = { path = "trl.parquet" }

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "text.table" }
params = { vocab_size = 400 }

[stages.sft]
kind = "sft"
inputs = { data = "chats.table", tokenizer = "bpe.tokenizer" }
params = { hidden_size = 32, layers = 2, heads = 4, kv_heads = 2, intermediate_size = 64, max_seq_len = 256, seq_len = 64, batch_size = 4, max_steps = 12, lr = 3e-3, warmup_steps = 2 }
"#,
    )
    .unwrap();
    let run = run_json(d.path(), "t.toml", "ws", &[]);
    let s = stage(&run, "sft");
    assert_eq!(s["status"], "ran");
    let model = d.path().join("ws/artifacts").join(s["fingerprint"].as_str().unwrap()).join("model");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("train_summary.json")).unwrap()).unwrap();
    assert_eq!(summary["examples"], 24);
    assert_eq!(summary["steps"], 12);
    assert!(summary["scored_tokens_per_epoch"].as_u64().unwrap() > 0);
    let curve = std::fs::read_to_string(model.join("loss_curve.csv")).unwrap();
    assert_eq!(curve.lines().count(), 13, "a header and one line per step");
    let model_arg = model.to_string_lossy().to_string();
    let out = alignflow(d.path(), &["generate", "--model", &model_arg, "--chat", "What is 7 + 12?", "--greedy", "--max-new-tokens", "8", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--gpus 1` where no GPU can be used (a build without `cuda`, or no driver: CI): the sft stage
/// is granted GPU 0, says why it cannot use it, and trains on the CPU to the same weights as a
/// run with `--gpus 0`.
#[test]
fn a_granted_gpu_that_cannot_be_used_falls_back_to_the_cpu() {
    if kernels::device::Device::cuda(0).is_ok() {
        eprintln!("SKIPPED: a usable GPU is present (this test covers machines without one)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    write_tiny_model_pipeline(d.path(), &tiny_model_pipeline("gpu_fallback"));
    let cpu = run_json(d.path(), "p.toml", "ws0", &["--gpus", "0"]);
    let out = alignflow(d.path(), &["run", "p.toml", "--json", "--workspace", "ws1", "--gpus", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("base: granted GPU 0, but") && err.contains("training on the CPU"), "{err}");
    let fp = stage(&cpu, "base")["fingerprint"].as_str().unwrap().to_string();
    let weights = |ws: &str| artifact(&d.path().join(ws), &fp, "model", "model.safetensors");
    assert_eq!(weights("ws0"), weights("ws1"), "the CPU fallback trained different weights");
}
