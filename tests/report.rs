//! `alignflow report`: a clear error before any run; after a run, Markdown, PNG plots and the
//! documented JSON keys, with models named after the stage that trained them.

mod common;
use common::*;

use datasets::world::{generate_split, Split, WorldConfig};

const PIPELINE: &str = r#"
[pipeline]
name = "report_mini"
seed = 4

[stages.text]
kind = "parquet"
params = { path = "pretrain.parquet" }

[stages.prompts]
kind = "parquet"
params = { path = "eval.parquet" }

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "text.table" }
params = { vocab_size = 400 }

[stages.base]
kind = "sft"
inputs = { data = "text.table", tokenizer = "bpe.tokenizer" }
params = { mode = "pretrain", hidden_size = 32, layers = 1, heads = 2, kv_heads = 1, intermediate_size = 48, max_seq_len = 128, seq_len = 32, batch_size = 4, max_steps = 5, lr = 3e-3, warmup_steps = 1 }

[stages.judge_base]
kind = "eval"
inputs = { model = "base.model", prompts = "prompts.table" }
params = { samples = 1, max_new_tokens = 4 }
"#;

fn setup(dir: &std::path::Path) {
    let mut cfg = WorldConfig::standard(2);
    cfg.sizes.pretrain = 40;
    cfg.sizes.eval = 8;
    std::fs::write(dir.join("p.toml"), PIPELINE).unwrap();
    datasets::table::write_parquet(&dir.join("pretrain.parquet"), &generate_split(&cfg, Split::Pretrain).unwrap()).unwrap();
    datasets::table::write_parquet(&dir.join("eval.parquet"), &generate_split(&cfg, Split::Eval).unwrap()).unwrap();
}

#[test]
fn report_before_any_run_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = alignflow(d.path(), &["report", "p.toml", "--workspace", "ws"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no run of pipeline `report_mini`"), "{err}");
}

#[test]
fn report_writes_markdown_plots_and_the_documented_json() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    run_json(d.path(), "p.toml", "ws", &[]);
    let out = alignflow(d.path(), &["report", "p.toml", "--workspace", "ws", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pipeline"], "report_mini");
    let m = &v["models"]["base"];
    for key in ["helpfulness", "violation_rate", "false_refusal_rate", "eos_rate"] {
        assert!(m[key].is_number(), "{key}: {m}");
        assert!(m["sampled"][key].is_number(), "sampled {key}: {m}");
    }
    // No borderline table wired: that rate is null, not a made-up zero.
    assert!(m["false_refusal_borderline"].is_null());
    assert!(m["by_category"]["arithmetic"]["helpfulness"].is_number());
    assert_eq!(m["eval_stage"], "judge_base");
    assert_eq!(v["training"]["base"]["steps"], 5);

    let dir = d.path().join("ws").join("report").join("report_mini");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| base |"), "{md}");
    let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file();
    for png in ["helpfulness.png", "safety.png", "categories.png", "loss.png"] {
        let p = dir.join(png);
        if font {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is not a PNG");
            assert!(md.contains(png));
        }
    }
}
