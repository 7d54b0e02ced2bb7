//! `alignflow plan` says, per stage, cached or why it will run; and `check` validates the
//! shipped pipelines without reading data.

mod common;
use common::*;

fn plan_json(dir: &std::path::Path) -> serde_json::Value {
    let out = alignflow(dir, &["plan", "p.toml", "--workspace", "ws", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_names_the_changed_parameter_and_the_upstream_that_will_run() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 30);
    let before = plan_json(d.path());
    assert!(before["stages"][0]["reasons"][0].as_str().unwrap().contains("not run before"));
    run_json(d.path(), "p.toml", "ws", &[]);
    let cached = plan_json(d.path());
    for s in cached["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{s}");
    }

    let p = d.path().join("p.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace("vocab_size = 300", "vocab_size = 310");
    std::fs::write(&p, text).unwrap();
    let after = plan_json(d.path());
    let by_name = |n: &str| after["stages"].as_array().unwrap().iter().find(|s| s["name"] == n).unwrap().clone();
    assert_eq!(by_name("corpus")["status"], "cached");
    let bpe = by_name("bpe");
    assert_eq!(bpe["status"], "will run");
    assert_eq!(bpe["reasons"][0], "parameter `vocab_size` changed (300 -> 310)");
    let tokens = by_name("tokens");
    assert_eq!(tokens["reasons"][0], "input `tokenizer` changed (upstream `bpe` will run)");

    let out = alignflow(d.path(), &["plan", "p.toml", "--workspace", "ws"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("will run  bpe (train_tokenizer): parameter `vocab_size` changed (300 -> 310)"), "{text}");
}

#[test]
fn shipped_pipelines_pass_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["pipelines/llama2_chat.toml", "pipelines/examples/jsonl_tokenize.toml", "pipelines/examples/sft_eval.toml"] {
        let out = alignflow(root, &["check", f]);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// pipelines/examples/sft_eval.toml is the default pipeline's first half: every one of its
/// stage instances has the fingerprint of the default pipeline's instance of the same name (so
/// its results, e.g. on a GPU, compare with the default pipeline's).
#[test]
fn sft_eval_example_is_the_default_pipelines_first_half() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    let ws = d.path().join("ws");
    let plan = |f: &str| -> std::collections::BTreeMap<String, String> {
        let out = alignflow(root, &["plan", f, "--workspace", ws.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stages"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s["fingerprint"].as_str().unwrap().to_string())).collect()
    };
    let full = plan("pipelines/llama2_chat.toml");
    let half = plan("pipelines/examples/sft_eval.toml");
    assert_eq!(half.len(), 9);
    for (name, fp) in &half {
        assert_eq!(full.get(name), Some(fp), "stage `{name}` differs from pipelines/llama2_chat.toml");
    }
}

#[test]
fn check_reports_every_problem_with_positions_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let text = "[pipeline]\nname = \"x\"\nseed = 1\n\n[stages.a]\nkind = \"jsonl\"\nparams = { path = 3, colour = 1 }\n\n\
                [stages.b]\nkind = \"tokenize\"\ninputs = { table = \"a.table\", tokenizer = \"a.table\" }\n";
    std::fs::write(d.path().join("bad.toml"), text).unwrap();
    let out = alignflow(d.path(), &["check", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7:19: error: parameter `path`"), "{err}");
    assert!(err.contains("bad.toml:7:22: error: unknown parameter `colour`"), "{err}");
    assert!(err.contains("bad.toml:11:43: error: type mismatch"), "{err}");
}

#[test]
fn a_locked_workspace_fails_at_once_with_the_pid() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 5);
    let store = graph_lock(d.path());
    let out = alignflow(d.path(), &["run", "p.toml", "--workspace", "ws"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is locked by pid"), "{err}");
    drop(store);
}

/// Holds the workspace lock the way a running alignflow does (flock on ws/lock).
fn graph_lock(dir: &std::path::Path) -> std::fs::File {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(ws.join("lock")).unwrap();
    f.try_lock().unwrap();
    std::fs::write(ws.join("lock"), "4242").unwrap();
    f
}
