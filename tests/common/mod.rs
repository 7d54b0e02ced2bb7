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

/// Whether the report can draw plots here (the first font `stages::report` looks for).
pub fn plot_font() -> bool {
    Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file()
}

/// Decodes the report plot at `path` and checks that it is a sane drawing: a PNG between 400
/// and 4000 pixels wide and 200 and 2000 high, not one flat colour (at least 1 % of its pixels
/// differ from the corner's background), and with at least 200 clearly coloured pixels (axes and
/// text are black or grey, so colour means a series was drawn). Returns (width, height).
pub fn check_plot(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(file).read_info().unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()));
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap_or_else(|e| panic!("{}: cannot decode: {e}", path.display()));
    let (w, h) = (info.width, info.height);
    assert!((400..=4000).contains(&w) && (200..=2000).contains(&h), "{}: {w}x{h}", path.display());
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{}: colour type {:?}", path.display(), info.color_type);
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).map(|p| &p[..3]).collect();
    let background = px[0];
    let differ = px.iter().filter(|p| **p != background).count();
    assert!(differ * 100 >= px.len(), "{}: {differ} of {} pixels differ from the background: a flat image", path.display(), px.len());
    let coloured = px.iter().filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 60).count();
    assert!(coloured >= 200, "{}: only {coloured} coloured pixels: no series drawn", path.display());
    (w, h)
}

/// A tiny pipeline for tests that need one trained model: a pretraining table and an eval
/// prompt table from the world (Parquet sources), a BPE tokenizer and a 5-step pretraining
/// run (`base`). Tests append their own stages to [`tiny_model_pipeline`].
pub fn tiny_model_pipeline(name: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
seed = 4

[stages.text]
kind = "parquet"
params = {{ path = "pretrain.parquet" }}

[stages.prompts]
kind = "parquet"
params = {{ path = "eval.parquet" }}

[stages.bpe]
kind = "train_tokenizer"
inputs = {{ text = "text.table" }}
params = {{ vocab_size = 400 }}

[stages.base]
kind = "sft"
inputs = {{ data = "text.table", tokenizer = "bpe.tokenizer" }}
params = {{ mode = "pretrain", hidden_size = 32, layers = 1, heads = 2, kv_heads = 1, intermediate_size = 48, max_seq_len = 128, seq_len = 32, batch_size = 4, max_steps = 5, lr = 3e-3, warmup_steps = 1 }}
"#
    )
}

/// Writes `p.toml` (`pipeline`) and the two Parquet tables [`tiny_model_pipeline`] reads
/// (40 pretraining rows, 8 eval prompts) into `dir`.
pub fn write_tiny_model_pipeline(dir: &Path, pipeline: &str) {
    use datasets::world::{generate_split, Split, WorldConfig};
    let mut cfg = WorldConfig::standard(2);
    cfg.sizes.pretrain = 40;
    cfg.sizes.eval = 8;
    std::fs::write(dir.join("p.toml"), pipeline).unwrap();
    datasets::table::write_parquet(&dir.join("pretrain.parquet"), &generate_split(&cfg, Split::Pretrain).unwrap()).unwrap();
    datasets::table::write_parquet(&dir.join("eval.parquet"), &generate_split(&cfg, Split::Eval).unwrap()).unwrap();
}
