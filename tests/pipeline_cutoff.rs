//! Early cut-off (docs/runtime.md, "Early cut-off"): an instance whose fingerprint is new only
//! because an upstream instance re-ran, and whose inputs came out byte-identical, is not run
//! again: the artifact computed from the same inputs is reused under the new fingerprint and
//! the instance is reported `cached` with `cutoff: true`.

mod common;

use std::path::Path;

use common::{alignflow, run_json};

/// The instance `name` in `round` of a `run --json` report.
fn inst<'a>(run: &'a serde_json::Value, name: &str, round: u64) -> &'a serde_json::Value {
    let s = run["stages"].as_array().unwrap().iter().find(|s| s["name"] == name && s["round"] == round);
    s.unwrap_or_else(|| panic!("no {name} in round {round}: {run}"))
}

fn fp(run: &serde_json::Value, name: &str, round: u64) -> String {
    inst(run, name, round)["fingerprint"].as_str().unwrap().to_string()
}

/// Every file of output `output` of the artifact `fingerprint`, by relative path, with bytes.
fn output_files(ws: &Path, fingerprint: &str, output: &str) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((p.strip_prefix(base).unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let dir = ws.join("artifacts").join(fingerprint).join(output);
    let mut out = Vec::new();
    walk(&dir, &dir, &mut out);
    out.sort();
    assert!(!out.is_empty(), "{} is empty", dir.display());
    out
}

fn assert_cut_off(run: &serde_json::Value, name: &str, round: u64) {
    let s = inst(run, name, round);
    assert_eq!(s["status"], "cached", "{s}");
    assert_eq!(s["cutoff"], true, "{s}");
    assert!(s["reason"].as_str().is_some_and(|r| r.starts_with("inputs identical by content to")), "{s}");
}

fn assert_ran(run: &serde_json::Value, name: &str, round: u64) {
    let s = inst(run, name, round);
    assert!(s["status"] == "ran" || s["status"] == "partial", "{s}");
    assert_eq!(s["cutoff"], false, "{s}");
}

/// A world whose `preference_prompts` size is a parameter, a tokenizer and a tiny pretraining
/// run on its `pretrain` table, and a row-wise tokenization of that table.
fn world_pipeline(preference_prompts: usize) -> String {
    format!(
        r#"
[pipeline]
name = "cutoff_small"
seed = 11

[stages.world]
kind = "assistant_world"
params = {{ pretrain = 60, sft = 20, rl_prompts = 8, preference_prompts = {preference_prompts}, eval = 8, eval_borderline = 4 }}

[stages.bpe]
kind = "train_tokenizer"
inputs = {{ text = "world.pretrain" }}
params = {{ vocab_size = 300, column = "text" }}

[stages.tokens]
kind = "tokenize"
inputs = {{ table = "world.pretrain", tokenizer = "bpe.tokenizer" }}

[stages.pretrain]
kind = "sft"
inputs = {{ data = "world.pretrain", tokenizer = "bpe.tokenizer" }}
params = {{ mode = "pretrain", hidden_size = 16, layers = 1, heads = 2, kv_heads = 1, intermediate_size = 32, max_seq_len = 64, seq_len = 32, batch_size = 4, max_steps = 4, lr = 3e-3, warmup_steps = 1 }}
"#
    )
}

#[test]
fn identical_upstream_outputs_cut_off_training_downstream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ws = dir.join("ws");
    let wss = ws.to_str().unwrap();
    std::fs::write(dir.join("p.toml"), world_pipeline(20)).unwrap();
    let first = run_json(dir, "p.toml", wss, &[]);
    for s in first["stages"].as_array().unwrap() {
        assert_eq!(s["cutoff"], false, "{s}");
    }

    // More preference prompts: the world re-runs (its fingerprint changed), but its `pretrain`
    // table is byte-identical, so nothing reading only that table needs to run.
    std::fs::write(dir.join("p.toml"), world_pipeline(30)).unwrap();
    let plan = alignflow(dir, &["plan", "p.toml", "--workspace", wss]);
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    for name in ["bpe", "tokens", "pretrain"] {
        let line = text.lines().find(|l| l.contains(&format!(" {name} ("))).unwrap_or_else(|| panic!("no {name} in plan:\n{text}"));
        assert!(line.starts_with("will run") && line.contains("will run unless its inputs come out identical (early cut-off)"), "{line}");
    }
    let world_line = text.lines().find(|l| l.contains(" world (")).unwrap();
    assert!(world_line.contains("parameter `preference_prompts` changed") && !world_line.contains("early cut-off"), "{world_line}");
    let plan_json = alignflow(dir, &["plan", "p.toml", "--workspace", wss, "--json"]);
    let pj: serde_json::Value = serde_json::from_slice(&plan_json.stdout).unwrap();
    let entry = |n: &str| pj["stages"].as_array().unwrap().iter().find(|s| s["name"] == n).unwrap().clone();
    assert_eq!(entry("pretrain")["cutoff_possible"], true);
    assert_eq!(entry("world")["cutoff_possible"], false);

    let second = run_json(dir, "p.toml", wss, &[]);
    assert_ran(&second, "world", 0);
    for name in ["bpe", "tokens", "pretrain"] {
        assert_cut_off(&second, name, 0);
        assert_ne!(fp(&second, name, 0), fp(&first, name, 0), "{name}: the recipe key changes");
    }
    assert!(inst(&second, "pretrain", 0)["reason"].as_str().unwrap().contains("`pretrain`"));
    // The row-wise stage reports its rows as reused, like any cached row-wise instance.
    let tok = inst(&second, "tokens", 0);
    assert_eq!(tok["rows_computed"], 0);
    assert_eq!(tok["rows_reused"], tok["rows_total"]);
    assert!(tok["rows_total"].as_u64().unwrap() > 0);
    // The reused artifacts are byte for byte the ones computed by the first run.
    for (name, output) in [("bpe", "tokenizer"), ("tokens", "tokens"), ("pretrain", "model")] {
        assert_eq!(output_files(&ws, &fp(&second, name, 0), output), output_files(&ws, &fp(&first, name, 0), output), "{name}");
    }
    // Readers of the last run see ordinary artifacts.
    let show = alignflow(dir, &["show", "tokens.tokens", "--workspace", wss, "--rows", "1"]);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));

    // Nothing changed: plain cached, no cut-off.
    let third = run_json(dir, "p.toml", wss, &[]);
    for s in third["stages"].as_array().unwrap() {
        assert_eq!((s["status"].as_str(), s["cutoff"].as_bool()), (Some("cached"), Some(false)), "{s}");
    }

    // A missing file in the reused artifact: it is rebuilt by content again; with the source
    // gone too, the stage runs and computes the same bytes.
    let model_file = |fingerprint: &str| ws.join("artifacts").join(fingerprint).join("model").join("train_summary.json");
    let (old, new) = (fp(&first, "pretrain", 0), fp(&second, "pretrain", 0));
    std::fs::remove_file(model_file(&new)).unwrap();
    let fourth = run_json(dir, "p.toml", wss, &[]);
    assert_cut_off(&fourth, "pretrain", 0);
    assert_eq!(output_files(&ws, &new, "model"), output_files(&ws, &old, "model"));
    std::fs::remove_file(model_file(&new)).unwrap();
    std::fs::remove_file(model_file(&old)).unwrap();
    let fifth = run_json(dir, "p.toml", wss, &[]);
    assert_ran(&fifth, "pretrain", 0);
    let weights = |fingerprint: &str| output_files(&ws, fingerprint, "model").into_iter().filter(|(p, _)| p.ends_with(".safetensors")).collect::<Vec<_>>();
    assert!(!weights(&new).is_empty());
    assert_eq!(weights(&new), output_files(&ws, &fp(&first, "pretrain", 0), "model").into_iter().filter(|(p, _)| p.ends_with(".safetensors")).collect::<Vec<_>>());
}

/// rlhf_small's stages in two rounds at tiny sizes. Round r of `collect` reads prompt rows
/// [60(r-1), 60r) of `world.preference_prompts` (wrapping): with 90 rows round 2 reads 60..90
/// and wraps to 0..30; with 120 it reads 60..120. Round 1 reads 0..60 either way. The reward
/// models leave out their optional `prompts` input (per-family accuracy), which would read the
/// whole grown table.
fn rlhf_pipeline(preference_prompts: usize) -> String {
    format!(
        r#"
[pipeline]
name = "cutoff_rlhf"
seed = 77

[stages.world]
kind = "assistant_world"
params = {{ pretrain = 120, sft = 60, rl_prompts = 24, preference_prompts = {preference_prompts}, eval = 8, eval_borderline = 4 }}

[stages.bpe]
kind = "train_tokenizer"
inputs = {{ text = "world.pretrain" }}
params = {{ vocab_size = 400, column = "text" }}

[stages.pretrain]
kind = "sft"
inputs = {{ data = "world.pretrain", tokenizer = "bpe.tokenizer" }}
params = {{ mode = "pretrain", hidden_size = 16, layers = 1, heads = 2, kv_heads = 1, intermediate_size = 32, max_seq_len = 128, seq_len = 48, batch_size = 8, max_steps = 6, lr = 3e-3, warmup_steps = 1 }}

[stages.sft]
kind = "sft"
inputs = {{ data = "world.sft", model = "pretrain.model" }}
params = {{ seq_len = 48, batch_size = 8, epochs = 1, max_steps = 4, lr = 1e-3, warmup_steps = 1 }}

[loop.rlhf]
rounds = 2
stages = ["collect", "rm_helpful", "rm_safe", "rs", "rs_sft", "ppo"]
[loop.rlhf.carry.policy]
init = "sft.model"
next = "ppo.model"
[loop.rlhf.carry.pairs]
next = "collect.pairs"
[loop.rlhf.carry.pool]
next = "rs.best"

[stages.collect]
kind = "collect_preferences"
inputs = {{ prompts = "world.preference_prompts", policy = "rlhf.policy", previous = "rlhf.pairs" }}
params = {{ prompts_per_round = 60, max_new_tokens = 6, test_share = 0.2 }}

[stages.rm_helpful]
kind = "train_reward"
inputs = {{ pairs = "collect.pairs", init = "rlhf.policy" }}
params = {{ track = "helpfulness", epochs = 1, lr = 1e-3, batch_pairs = 16, micro_pairs = 16, max_tokens = 48 }}

[stages.rm_safe]
kind = "train_reward"
inputs = {{ pairs = "collect.pairs", init = "rlhf.policy" }}
params = {{ track = "safety", epochs = 1, lr = 1e-3, batch_pairs = 16, micro_pairs = 16, max_tokens = 48 }}

[stages.rs]
kind = "rejection_sample"
inputs = {{ prompts = "world.rl_prompts", policy = "rlhf.policy", helpfulness_rm = "rm_helpful.model", safety_rm = "rm_safe.model", pool = "rlhf.pool" }}
params = {{ k = 2, max_new_tokens = 6, prompts_per_round = 8 }}

[stages.rs_sft]
kind = "sft"
inputs = {{ data = "rs.best", model = "rlhf.policy" }}
params = {{ seq_len = 48, batch_size = 4, epochs = 1, lr = 5e-4, warmup_steps = 1 }}

[stages.ppo]
kind = "ppo"
inputs = {{ prompts = "world.rl_prompts", policy = "rs_sft.model", helpfulness_rm = "rm_helpful.model", safety_rm = "rm_safe.model", heldout = "world.eval" }}
params = {{ iterations = 1, batch_prompts = 4, minibatch = 2, lr = 1e-4, value_lr = 1e-4, max_new_tokens = 6, eval_every = 1, patience = 2, heldout_prompts = 4 }}
"#
    )
}

/// Issue 5: "a re-run after adding preference pairs to round 2 re-trains only what depends on
/// them". New prompt rows that only round 2 reads make `collect@1` re-run (its row memo reuses
/// every row and its pairs come out identical); everything of round 1 after it is cut off,
/// while round 2 collects the new pairs and re-trains.
#[test]
fn adding_pairs_to_round_2_retrains_only_what_depends_on_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ws = dir.join("ws");
    let wss = ws.to_str().unwrap();
    std::fs::write(dir.join("p.toml"), rlhf_pipeline(90)).unwrap();
    let first = run_json(dir, "p.toml", wss, &[]);

    std::fs::write(dir.join("p.toml"), rlhf_pipeline(120)).unwrap();
    let second = run_json(dir, "p.toml", wss, &[]);

    assert_ran(&second, "world", 0);
    for name in ["bpe", "pretrain", "sft"] {
        assert_cut_off(&second, name, 0);
    }
    // Round 1 reads the same 60 prompts: every row comes from the memo, the pairs are the same.
    let c1 = inst(&second, "collect", 1);
    assert_eq!(c1["status"], "partial", "{c1}");
    assert_eq!((c1["rows_computed"].as_u64(), c1["rows_reused"].as_u64()), (Some(0), Some(60)), "{c1}");
    assert_eq!(output_files(&ws, &fp(&second, "collect", 1), "pairs"), output_files(&ws, &fp(&first, "collect", 1), "pairs"));
    // Nothing of round 1 downstream of the pairs re-trains.
    for name in ["rm_helpful", "rm_safe", "rs", "rs_sft", "ppo"] {
        assert_cut_off(&second, name, 1);
        let output = if name == "rs" { "best" } else { "model" };
        assert_eq!(output_files(&ws, &fp(&second, name, 1), output), output_files(&ws, &fp(&first, name, 1), output), "{name}@1");
    }
    // Round 2 collects pairs for the new prompts and re-trains what depends on them.
    let c2 = inst(&second, "collect", 2);
    assert!(c2["rows_computed"].as_u64().unwrap() > 0, "{c2}");
    assert_ne!(output_files(&ws, &fp(&second, "collect", 2), "pairs"), output_files(&ws, &fp(&first, "collect", 2), "pairs"));
    assert_ran(&second, "collect", 2);
    for name in ["rm_helpful", "rm_safe", "rs", "rs_sft", "ppo"] {
        assert_ran(&second, name, 2);
    }
}
