//! `--workers 2` and `--workers 1` give identical tables: rows are split across timely
//! workers by a stable hash of their key, and every row's result depends only on the row.

mod common;
use common::*;

#[test]
fn one_and_two_workers_write_identical_tables() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 300);
    let one = run_json(d.path(), "p.toml", "w1", &["--workers", "1"]);
    let two = run_json(d.path(), "p.toml", "w2", &["--workers", "2", "--cpus", "2"]);
    for (a, b) in one["stages"].as_array().unwrap().iter().zip(two["stages"].as_array().unwrap()) {
        assert_eq!(a["fingerprint"], b["fingerprint"], "worker count must not enter fingerprints");
    }
    let fp = stage(&one, "tokens")["fingerprint"].as_str().unwrap().to_string();
    let a = artifact(&d.path().join("w1"), &fp, "tokens", "table.parquet");
    let b = artifact(&d.path().join("w2"), &fp, "tokens", "table.parquet");
    assert!(a == b, "tables differ between --workers 1 and --workers 2");
    let fp = stage(&one, "bpe")["fingerprint"].as_str().unwrap().to_string();
    let a = artifact(&d.path().join("w1"), &fp, "tokenizer", "tokenizer.json");
    let b = artifact(&d.path().join("w2"), &fp, "tokenizer", "tokenizer.json");
    assert!(a == b, "tokenizers differ");
}
