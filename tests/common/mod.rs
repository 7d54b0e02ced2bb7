//! Helpers for the pipeline integration tests: run the `alignflow` binary in a temporary
//! directory, parse `run --json`, write JSONL sources, and read artifacts from a workspace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_alignflow"))
}

/// Runs `alignflow ARGS` in `dir` and returns its output.
pub fn alignflow(dir: &Path, args: &[&str]) -> Output {
    bin().current_dir(dir).args(args).output().expect("alignflow runs")
}

/// `alignflow run FILE --json --workspace WS EXTRA...`, asserting success; the JSON object.
pub fn run_json(dir: &Path, file: &str, workspace: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", file, "--json", "--workspace", workspace];
    args.extend_from_slice(extra);
    let out = alignflow(dir, &args);
    assert!(out.status.success(), "run failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The stage object named `name` (round 0 or the given round) of a run report.
pub fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

/// Writes `n` JSON lines `{"id": "<prefix>-i", "text": ...}` with varied words.
pub fn write_jsonl(path: &Path, prefix: &str, range: std::ops::Range<usize>) {
    use std::fmt::Write as _;
    let words = ["reward", "policy", "prompt", "safety", "helpful", "answer", "model", "round", "sample", "token"];
    let mut s = String::new();
    for i in range {
        let text: Vec<&str> = (0..6 + i % 5).map(|k| words[(i * 7 + k * 3) % words.len()]).collect();
        writeln!(s, "{{\"id\": \"{prefix}-{i}\", \"text\": \"{} {i}\"}}", text.join(" ")).unwrap();
    }
    std::fs::write(path, s).unwrap();
}

/// The bytes of the main file of output `output` of the instance with `fingerprint`.
pub fn artifact(workspace: &Path, fingerprint: &str, output: &str, file: &str) -> Vec<u8> {
    let p: PathBuf = workspace.join("artifacts").join(fingerprint).join(output).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A pipeline: a fixed `corpus` source trains the tokenizer; a `docs` source is tokenized.
/// Growing docs.jsonl then leaves the tokenizer alone and exercises the row memo.
pub const TWO_SOURCES: &str = r#"
[pipeline]
name = "two_sources"
seed = 5

[stages.corpus]
kind = "jsonl"
params = { path = "corpus.jsonl" }

[stages.docs]
kind = "jsonl"
params = { path = "docs.jsonl" }

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "corpus.table" }
params = { vocab_size = 300, min_frequency = 2 }

[stages.tokens]
kind = "tokenize"
inputs = { table = "docs.table", tokenizer = "bpe.tokenizer" }
"#;

/// Sets up TWO_SOURCES in `dir` with `docs` rows of docs.jsonl.
pub fn two_sources(dir: &Path, docs: usize) {
    std::fs::write(dir.join("p.toml"), TWO_SOURCES).unwrap();
    write_jsonl(&dir.join("corpus.jsonl"), "c", 0..200);
    write_jsonl(&dir.join("docs.jsonl"), "d", 0..docs);
}
