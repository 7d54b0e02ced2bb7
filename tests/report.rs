//! `alignflow report`: a clear error before any run; after a run, Markdown, PNG plots and the
//! documented JSON keys, with models named after the stage that trained them.

mod common;
use common::*;

/// The stages after the tiny model (`common::tiny_model_pipeline`).
const JUDGE: &str = r#"
[stages.judge_base]
kind = "eval"
inputs = { model = "base.model", prompts = "prompts.table" }
params = { samples = 1, max_new_tokens = 4 }
"#;

fn setup(dir: &std::path::Path) {
    write_tiny_model_pipeline(dir, &(tiny_model_pipeline("report_mini") + JUDGE));
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
    if plot_font() {
        for png in ["graph.png", "helpfulness.png", "safety.png", "categories.png", "loss.png"] {
            check_plot(&dir.join(png));
            assert!(md.contains(&format!("({png})")), "{png} not linked");
        }
    } else {
        assert!(md.contains("No plots"), "{md}");
    }
    // One model, no RLHF stages, no dialogues: those plots are not drawn and their keys are
    // empty objects or null (README, "Report").
    for png in ["rounds.png", "reward_models.png", "rejection_sampling.png", "ppo.png", "adherence.png"] {
        assert!(!dir.join(png).exists(), "{png} drawn without data");
    }
    assert_eq!(v["reward_models"], serde_json::json!({}));
    assert!(v["adherence"].is_null());
    assert_eq!(v["model_order"], serde_json::json!(["base"]));

    // The pipeline graph: every instance, dependencies first, what it read, and that it ran.
    let g = v["graph"]["instances"].as_array().unwrap();
    let names: Vec<&str> = g.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text", "prompts", "bpe", "base", "judge_base"]);
    let judge = &g[4];
    assert_eq!(judge["kind"], "eval");
    assert_eq!(judge["round"], 0);
    // `absent`: an optional port with nothing wired.
    assert_eq!(judge["inputs"], serde_json::json!({"model": "base.model", "prompts": "prompts.table", "borderline": "absent"}));
    assert!(g.iter().all(|i| i["status"] == "ran"), "{g:?}");
    assert_eq!(v["graph"]["status_counts"], serde_json::json!({"ran": 5}));
    assert!(md.contains("## Pipeline graph") && md.contains("```mermaid") && md.contains("| 5 | `judge_base` | eval |"), "{md}");

    // Run again: the graph says every instance was cached.
    run_json(d.path(), "p.toml", "ws", &[]);
    let out = alignflow(d.path(), &["report", "p.toml", "--workspace", "ws", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["graph"]["status_counts"], serde_json::json!({"cached": 5}), "{}", v["graph"]);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("Last run: 0 ran, 5 cached"), "{md}");
}
