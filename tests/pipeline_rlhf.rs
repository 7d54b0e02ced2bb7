//! The RLHF stages end to end: `pipelines/rlhf_small.toml` (a tiny model, three rounds of
//! preference collection, two reward models, rejection sampling with a pool, and PPO) runs,
//! every round's reports carry the documented fields, pairs accumulate across rounds, and a
//! second run is fully cached.

mod common;

use std::path::{Path, PathBuf};

use common::run_json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fingerprint of stage `name` in `round` (loop instances share the name, not the round).
fn fingerprint(run: &serde_json::Value, name: &str, round: u64) -> String {
    let s = run["stages"].as_array().unwrap().iter().find(|s| s["name"] == name && s["round"] == round);
    s.unwrap_or_else(|| panic!("no {name} in round {round}"))["fingerprint"].as_str().unwrap().to_string()
}

fn report_of(ws: &Path, run: &serde_json::Value, name: &str, round: u64, output: &str) -> serde_json::Value {
    let fp = fingerprint(run, name, round);
    serde_json::from_slice(&common::artifact(ws, &fp, output, "report.json")).unwrap()
}

fn table_rows(ws: &Path, run: &serde_json::Value, name: &str, round: u64, output: &str) -> usize {
    let fp = fingerprint(run, name, round);
    let path = ws.join("artifacts").join(fp).join(output).join("table.parquet");
    datasets::table::read_parquet(&path).unwrap().num_rows()
}

#[test]
fn rlhf_small_runs_three_rounds_and_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let file = repo().join("pipelines/rlhf_small.toml");
    let run = run_json(tmp.path(), file.to_str().unwrap(), ws.to_str().unwrap(), &[]);

    // Pairs accumulate: round r holds at least the pairs of round r - 1.
    let pairs: Vec<usize> = (1..=3).map(|r| table_rows(&ws, &run, "collect", r, "pairs")).collect();
    assert!(pairs[0] > 0 && pairs[1] > pairs[0] && pairs[2] > pairs[1], "{pairs:?}");

    for r in 1..=3 {
        for rm in ["rm_helpful", "rm_safe"] {
            let rep = report_of(&ws, &run, rm, r, "report");
            assert!(rep["accuracy_by_rating"].is_object(), "{rm}@{r}: {rep}");
            assert!(rep["loss_curve"].as_array().is_some_and(|c| !c.is_empty()));
        }
        let rs = report_of(&ws, &run, "rs", r, "report");
        for key in ["max_reward_by_k", "median_reward_by_k", "gold_of_chosen_by_k", "gold_median_by_k"] {
            let m = rs[key].as_object().unwrap_or_else(|| panic!("rs@{r}: no {key}"));
            assert_eq!(m.keys().cloned().collect::<Vec<_>>(), ["1", "2", "4"], "{key}");
        }
        // Max over more samples never falls below max over fewer.
        assert!(rs["max_reward_by_k"]["4"].as_f64().unwrap() >= rs["max_reward_by_k"]["1"].as_f64().unwrap());
        let ppo = report_of(&ws, &run, "ppo", r, "report");
        let curve = ppo["curve"].as_array().unwrap();
        assert!(!curve.is_empty());
        for k in ["reward", "kl", "entropy", "clip_fraction"] {
            assert!(curve[0][k].as_f64().is_some_and(f64::is_finite), "ppo@{r} {k}");
        }
    }
    // The pool of best answers grows with the rounds' new prompts.
    assert!(table_rows(&ws, &run, "rs", 3, "best") > table_rows(&ws, &run, "rs", 1, "best"));

    // The report lifts every round's reward-model, rejection-sampling and PPO figures and
    // evaluates every round's policy (README, "Report").
    let out = common::alignflow(tmp.path(), &["report", file.to_str().unwrap(), "--workspace", ws.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in 1..=3 {
        for rm in ["rm_helpful", "rm_safe"] {
            let a = &v["reward_models"][format!("{rm}@{r}")]["accuracy_by_rating"];
            assert!(a.is_object(), "{rm}@{r}: {}", v["reward_models"]);
            for level in a.as_object().unwrap().keys() {
                assert!(["significantly_better", "better", "slightly_better", "negligibly_better"].contains(&level.as_str()), "{level}");
            }
        }
        let rs = &v["rejection_sampling"][format!("rs@{r}")];
        for key in ["max_reward_by_k", "median_reward_by_k", "gold_of_chosen_by_k", "gold_median_by_k"] {
            assert_eq!(rs[key].as_object().map(|m| m.len()), Some(3), "rs@{r} {key}: {rs}");
            assert!(rs[key]["4"].is_number());
        }
        let ppo = &v["ppo"][format!("ppo@{r}")];
        assert!(ppo["curve"].as_array().is_some_and(|c| !c.is_empty()) && ppo["last"]["kl"].is_number(), "{ppo}");
        let m = &v["models"][format!("ppo@{r}")];
        assert!(m["helpfulness"].is_number() && m["sampled"]["helpfulness"].is_number(), "ppo@{r}: {m}");
        assert_eq!(m["eval_stage"], format!("eval_round@{r}"));
    }
    assert!(v["models"]["sft"]["helpfulness"].is_number());
    assert_eq!(v["model_order"], serde_json::json!(["sft", "ppo@1", "ppo@2", "ppo@3"]));

    // The pipeline graph: every instance once, each after the instances it reads, all ran.
    let g = v["graph"]["instances"].as_array().unwrap();
    assert_eq!(g.len(), run["stages"].as_array().unwrap().len());
    let pos = |n: &str| g.iter().position(|i| i["name"] == n).unwrap_or_else(|| panic!("no {n} in the graph"));
    for (k, i) in g.iter().enumerate() {
        assert_eq!(i["status"], "ran", "{i}");
        for (port, src) in i["inputs"].as_object().unwrap() {
            let src = src.as_str().unwrap();
            if src != "absent" {
                let producer = src.split('.').next().unwrap();
                assert!(pos(producer) < k, "{}: {port} reads {src}, placed later", i["name"]);
            }
        }
    }
    assert_eq!(g[pos("collect@2")]["inputs"]["policy"], "ppo@1.model");
    assert_eq!(g[pos("collect@1")]["inputs"]["previous"], "absent");
    assert_eq!(g[pos("ppo@3")]["kind"], "ppo");

    // Every plot of the RLHF sections exists and is a sane drawing.
    let dir = ws.join("report").join("rlhf_small");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    if common::plot_font() {
        for png in ["graph.png", "rounds.png", "reward_models.png", "rejection_sampling.png", "ppo.png", "helpfulness.png", "safety.png", "loss.png"] {
            common::check_plot(&dir.join(png));
            assert!(md.contains(&format!("({png})")), "{png} not linked in report.md");
        }
    }
    for section in ["## Pipeline graph", "## Reward models", "## Rejection sampling", "## PPO", "### Round by round", "gold of chosen at K"] {
        assert!(md.contains(section), "no {section:?} in report.md");
    }
    assert!(!dir.join("adherence.png").exists() && v["adherence"].is_null());

    // Nothing changed: every stage is cached, and the report's graph says so.
    let again = run_json(tmp.path(), file.to_str().unwrap(), ws.to_str().unwrap(), &[]);
    for s in again["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{s}");
    }
    let out = common::alignflow(tmp.path(), &["report", file.to_str().unwrap(), "--workspace", ws.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["graph"]["instances"].as_array().unwrap().iter().all(|i| i["status"] == "cached"), "{}", v["graph"]);
}
