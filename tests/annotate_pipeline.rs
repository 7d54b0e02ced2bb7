//! Issue 9 in pipelines: an `onnx_judge` scores an eval table with a small ONNX classifier built
//! here (scripts/make_onnx_classifier.py) and its metric appears in `alignflow report` (JSON and
//! Markdown), with the same scores as Python onnxruntime; and `collect_preferences` with
//! `annotator = "human"` waits for its quota of human answers, then outputs the people's labels.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

const JUDGE: &str = r#"
[stages.judge_base]
kind = "eval"
inputs = { model = "base.model", prompts = "prompts.table" }
params = { samples = 1, max_new_tokens = 6 }

[stages.toxicity]
kind = "onnx_judge"
inputs = { results = "judge_base.results" }
params = { model = "clf/classifier.onnx", tokenizer = "clf/tokenizer.json", metric = "toxicity" }
"#;

const HUMAN: &str = r#"
[stages.collect]
kind = "collect_preferences"
inputs = { prompts = "prompts.table", policy = "base.model" }
params = { annotator = "human", human_answers = "human", quota = 2, max_new_tokens = 6, test_share = 0.0 }
"#;

fn setup(dir: &Path, extra: &str) {
    write_tiny_model_pipeline(dir, &(tiny_model_pipeline("annotate_mini") + extra));
}

fn script() -> String {
    format!("{}/scripts/make_onnx_classifier.py", env!("CARGO_MANIFEST_DIR"))
}

/// Why the ONNX test cannot run here, if it cannot.
fn onnx_missing() -> Option<String> {
    let ok = std::process::Command::new("python3").args(["-c", "import onnx, onnxruntime, numpy"]).output().map(|o| o.status.success());
    if !matches!(ok, Ok(true)) {
        return Some("python3 with the PyPI packages onnx, onnxruntime and numpy is missing (scripts/setup.sh installs them)".into());
    }
    stages::onnx_judge::find_onnxruntime().err()
}

#[test]
fn an_onnx_judge_scores_the_eval_table_and_the_report_shows_its_metric() {
    if let Some(why) = onnx_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), JUDGE);
    let out = std::process::Command::new("python3").arg(script()).arg(d.path().join("clf")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = run_json(d.path(), "p.toml", "ws", &[]);
    let fp = stage(&run, "toxicity")["fingerprint"].as_str().unwrap().to_string();

    let out = alignflow(d.path(), &["report", "p.toml", "--workspace", "ws", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let j = &v["onnx_judges"]["toxicity"];
    assert_eq!(j["metric"], "toxicity", "{v}");
    assert_eq!(j["model"], "base");
    assert_eq!(j["eval_stage"], "judge_base");
    assert_eq!(j["column"], "greedy_response");
    assert_eq!(j["n"], 8);
    let mean = j["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mean), "{j}");
    assert!(j["flagged_rate"].is_number() && j["by_category"].is_object(), "{j}");
    let md = std::fs::read_to_string(d.path().join("ws/report/annotate_mini/report.md")).unwrap();
    assert!(md.contains("## ONNX judges") && md.contains("| toxicity | base | judge_base | toxicity | 8 |"), "{md}");

    // The same scores as Python onnxruntime, on the texts the stage scored plus two fixed ones.
    let table = datasets::table::read_parquet(&d.path().join("ws/artifacts").join(&fp).join("scores/table.parquet")).unwrap();
    let texts: Vec<String> = datasets::table::str_values(&table, "text", "scores").unwrap().into_iter().map(String::from).collect();
    let ours: Vec<f32> = datasets::table::f32_column(&table, "score", "scores").unwrap().values().to_vec();
    let py = std::process::Command::new("python3").arg(script()).arg(d.path().join("clf2")).arg("--check").args(&texts).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let theirs: Vec<f32> = String::from_utf8_lossy(&py.stdout).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(theirs.len(), ours.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!((a - b).abs() < 1e-5, "text {i} {:?}: rust {a}, python {b}", texts[i]);
    }
    let mean_scores = ours.iter().map(|&s| s as f64).sum::<f64>() / ours.len() as f64;
    assert!((mean - mean_scores).abs() < 1e-6);

    // Editing the classifier re-runs the judge (its files are part of the fingerprint).
    std::fs::write(d.path().join("clf/classifier.onnx"), b"not a model").unwrap();
    let out = alignflow(d.path(), &["run", "p.toml", "--workspace", "ws"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loading the ONNX model") && err.contains("classifier.onnx"), "{err}");
}

#[test]
fn human_collection_waits_for_its_quota_then_outputs_the_peoples_labels() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path(), HUMAN);
    let out = alignflow(d.path(), &["run", "p.toml", "--workspace", "ws"]);
    assert!(!out.status.success(), "the quota is not met yet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for 2 more human answers (0 of quota 2; 8 pairs to annotate)"), "{err}");
    assert!(err.contains("alignflow annotate --pairs"), "{err}");
    let pairs = d.path().join("human/pairs_r1.parquet");
    let candidates = datasets::human::read_candidates(&pairs).unwrap();
    assert_eq!(candidates.len(), 8);

    // Two people answer through the server (the page's own API calls).
    let server = annotate::start(annotate::Config {
        pairs: candidates.clone(),
        answers: d.path().join("human/answers.parquet"),
        listen: "127.0.0.1:0".into(),
        token: "tok".into(),
    })
    .unwrap();
    for (i, who) in [(0usize, "ann-a"), (3, "ann-b")] {
        let body = serde_json::json!({"pair_id": candidates[i].id, "choice": "b", "rating": "slightly_better", "unsafe": "none", "annotator": who});
        let r = annotate::client::request(server.addr, "POST", "/api/answer", &[("x-annotate-token", "tok")], body.to_string().as_bytes(), Duration::from_secs(20)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    server.stop().unwrap();

    let run = run_json(d.path(), "p.toml", "ws", &[]);
    let c = stage(&run, "collect");
    assert_eq!(c["rows_reused"], 8, "the samples come from the row memo: {c}");
    let fp = c["fingerprint"].as_str().unwrap();
    let table = datasets::table::read_parquet(&d.path().join("ws/artifacts").join(fp).join("pairs/table.parquet")).unwrap();
    let rows = stages::rlhf::pairs::read_pairs(&table, "pairs").unwrap();
    assert_eq!(rows.len(), 2);
    for (i, r) in rows.iter().enumerate() {
        let cand = candidates.iter().find(|c| c.id == r.id).unwrap();
        assert_eq!((r.chosen.as_str(), r.rejected.as_str()), (cand.response_b.as_str(), cand.response_a.as_str()), "row {i}");
        assert_eq!((r.annotator.as_str(), r.rating.as_str(), r.margin_level), ("human", "slightly_better", 1));
        assert_eq!(r.chosen_score, cand.gold_b);
    }
}

/// The ONNX classifier as an annotator: TRL-style pairs imported, then `onnx_annotate`
/// relabels them; every output pair's chosen answer scores no worse than its rejected one by
/// Python onnxruntime's scores, the rating follows the gap, and the flips are counted.
#[test]
fn an_onnx_annotator_turns_classifier_scores_into_preferences() {
    if let Some(why) = onnx_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3").arg(script()).arg(d.path().join("clf")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers = [
        ("What is 2 + 3?", "The answer is 5.", "I can't help with that."),
        ("Reverse the word \"stone\".", "enots", "The reversed word is enots."),
        ("How do I kill a stuck process?", "Use kill with its process id.", "Hmm, let me think. Maybe 7."),
        ("What is the capital of Peru?", "The capital of Peru is Lima.", "lima lima lima lima"),
        ("Sort 5, 2, 9.", "2, 5, 9", "The sorted list is 9, 5, 2."),
        ("Which is larger, 31 or 13?", "31", "The larger number is 13."),
    ];
    let lines: Vec<String> = answers.iter().map(|a| serde_json::json!({ "prompt": a.0, "chosen": a.1, "rejected": a.2 }).to_string()).collect();
    std::fs::write(d.path().join("trl.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        d.path().join("p.toml"),
        r#"
[pipeline]
name = "onnx_annotate_mini"
seed = 3

[stages.trl]
kind = "jsonl"
params = { path = "trl.jsonl" }

[stages.imported]
kind = "import_preferences"
inputs = { table = "trl.table" }
params = { test_share = 0.0 }

[stages.relabel]
kind = "onnx_annotate"
inputs = { pairs = "imported.pairs" }
params = { model = "clf/classifier.onnx", tokenizer = "clf/tokenizer.json", prefer = "lower", annotator = "toxicity-judge" }
"#,
    )
    .unwrap();
    let run = run_json(d.path(), "p.toml", "ws", &[]);
    let fp = stage(&run, "relabel")["fingerprint"].as_str().unwrap().to_string();
    let table = datasets::table::read_parquet(&d.path().join("ws/artifacts").join(&fp).join("pairs/table.parquet")).unwrap();
    let s = |c: &str| -> Vec<String> { datasets::table::str_values(&table, c, "pairs").unwrap().into_iter().map(String::from).collect() };
    let (chosen, rejected, rating, annotator) = (s("chosen"), s("rejected"), s("rating"), s("annotator"));
    assert_eq!(chosen.len(), answers.len());
    let mut texts = chosen.clone();
    texts.extend(rejected.iter().cloned());
    let py = std::process::Command::new("python3").arg(script()).arg(d.path().join("clf2")).arg("--check").args(&texts).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let scores: Vec<f32> = String::from_utf8_lossy(&py.stdout).lines().map(|l| l.parse().unwrap()).collect();
    let n = chosen.len();
    let mut flips = 0;
    for i in 0..n {
        let (c, r) = (scores[i], scores[n + i]);
        assert!(c <= r + 1e-5, "pair {i}: chosen {:?} scores {c} > rejected {:?} {r}", chosen[i], rejected[i]);
        let gap = (c - r).abs();
        let want = if gap >= 0.5 { "significantly_better" } else if gap >= 0.25 { "better" } else if gap >= 0.1 { "slightly_better" } else { "negligibly_better" };
        // Rust and Python scores agree to 1e-5: only a gap that close to a threshold may differ.
        if [0.5f32, 0.25, 0.1].iter().all(|t| (gap - t).abs() > 1e-4) {
            assert_eq!(rating[i], want, "pair {i}, gap {gap}");
        }
        assert_eq!(annotator[i], "toxicity-judge");
        let orig = answers.iter().find(|a| a.1 == chosen[i] || a.2 == chosen[i]).unwrap();
        flips += usize::from(orig.2 == chosen[i]);
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("ws/artifacts").join(&fp).join("report/report.json")).unwrap()).unwrap();
    assert_eq!(report["flipped_against_input"], flips, "{report}");
    assert_eq!(report["pairs"], n);
}
