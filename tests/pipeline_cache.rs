//! A second run of an unchanged pipeline computes nothing: every stage reports `cached`, and
//! the cached outputs are the ones the first run wrote.

mod common;
use common::*;

#[test]
fn second_run_reports_every_stage_cached() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 50);
    let first = run_json(d.path(), "p.toml", "ws", &[]);
    assert_eq!(first["pipeline"], "two_sources");
    for s in first["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "ran", "{s}");
    }
    assert_eq!(stage(&first, "tokens")["rows_total"], 50);
    assert_eq!(stage(&first, "bpe")["rows_total"], serde_json::Value::Null);

    let second = run_json(d.path(), "p.toml", "ws", &[]);
    assert_eq!(second["stages"].as_array().unwrap().len(), 4);
    for (a, b) in first["stages"].as_array().unwrap().iter().zip(second["stages"].as_array().unwrap()) {
        assert_eq!(b["status"], "cached", "{b}");
        assert_eq!(a["fingerprint"], b["fingerprint"]);
    }
}

#[test]
fn editing_a_source_file_reruns_it_and_what_reads_it() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 20);
    run_json(d.path(), "p.toml", "ws", &[]);
    // Same rows, one text changed.
    let path = d.path().join("docs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap().replacen("\"d-3\", \"text\": \"", "\"d-3\", \"text\": \"edited ", 1);
    std::fs::write(&path, text).unwrap();
    let r = run_json(d.path(), "p.toml", "ws", &[]);
    assert_eq!(stage(&r, "corpus")["status"], "cached");
    assert_eq!(stage(&r, "bpe")["status"], "cached");
    assert_eq!(stage(&r, "docs")["status"], "ran");
    let t = stage(&r, "tokens");
    assert_eq!(t["status"], "partial");
    assert_eq!(t["rows_computed"], 1);
    assert_eq!(t["rows_reused"], 19);
}

#[test]
fn show_resolves_stage_output_of_the_last_run() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 10);
    run_json(d.path(), "p.toml", "ws", &[]);
    let out = alignflow(d.path(), &["show", "tokens.tokens", "--workspace", "ws", "--rows", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("10 rows"), "{text}");
    assert!(text.contains("input_ids"), "{text}");
    let out = alignflow(d.path(), &["show", "tokens.nosuch", "--workspace", "ws"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no output `nosuch`"));
}
