//! Adding 1% more rows to a source: the row-wise stage computes about 1% of its rows, and its
//! output equals that of a from-scratch run on the same inputs (computed both ways).

mod common;
use common::*;

#[test]
fn one_percent_more_rows_computes_one_percent_and_matches_a_full_run() {
    let d = tempfile::tempdir().unwrap();
    two_sources(d.path(), 400);
    let first = run_json(d.path(), "p.toml", "ws", &[]);
    assert_eq!(stage(&first, "tokens")["rows_computed"], 400);

    // Grow docs.jsonl by 1% (4 rows) and run incrementally.
    write_jsonl(&d.path().join("docs.jsonl"), "d", 0..404);
    let inc = run_json(d.path(), "p.toml", "ws", &[]);
    let t = stage(&inc, "tokens");
    assert_eq!(t["status"], "partial");
    assert_eq!(t["rows_total"], 404);
    assert_eq!(t["rows_computed"], 4);
    assert_eq!(t["rows_reused"], 400);
    assert_eq!(stage(&inc, "bpe")["status"], "cached");

    // The same inputs from scratch, in a fresh workspace.
    let full = run_json(d.path(), "p.toml", "fresh", &[]);
    let f = stage(&full, "tokens");
    assert_eq!(f["status"], "ran");
    assert_eq!(f["rows_computed"], 404);
    assert_eq!(f["fingerprint"], t["fingerprint"]);
    let fp = t["fingerprint"].as_str().unwrap();
    let a = artifact(&d.path().join("ws"), fp, "tokens", "table.parquet");
    let b = artifact(&d.path().join("fresh"), fp, "tokens", "table.parquet");
    assert!(a == b, "incremental and full outputs differ");
}
