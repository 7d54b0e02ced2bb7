//! The SFT half of the default pipeline in miniature, through the `alignflow` binary: world
//! tables as Parquet sources → BPE → tokenize → pretrain (random init) → sft → eval of both.
//! Issue 4's incremental acceptance: changing one demonstration re-tokenizes one row and
//! re-runs SFT and what depends on it; changing one eval prompt re-runs one row of an eval
//! whose model did not change. Also `alignflow report --json` on the result.

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
