//! The model commands of the binary against Hugging Face transformers' outputs (the golden case
//! in kernels/tests/fixtures/golden): `logprobs`, `generate --greedy` and `score` print, as JSON,
//! what transformers computed; a broken model directory is a clear error naming the file.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/tests/fixtures/golden")
}

/// A tensor of the golden case: its shape and its values as f64 (the case holds f32 and i64).
struct T {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn case() -> BTreeMap<String, T> {
    let bytes = std::fs::read(golden().join("case.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
                safetensors::Dtype::I64 => v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, T { shape: v.shape().to_vec(), data })
        })
        .collect()
}

/// Row `r` of a [rows, cols] (or [cols]) integer tensor, as token ids.
fn ids_row(t: &BTreeMap<String, T>, name: &str, r: usize) -> Vec<u32> {
    let x = &t[name];
    let cols = *x.shape.last().unwrap();
    let row = if x.shape.len() == 1 { &x.data[..] } else { &x.data[r * cols..(r + 1) * cols] };
    row.iter().map(|&v| v as u32).collect()
}

fn csv(ids: &[u32]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

fn alignflow_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_alignflow")).args(args).output().unwrap();
    assert!(out.status.success(), "alignflow {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn logprobs_command_matches_transformers() {
    let c = case();
    let model = golden().join("model");
    for r in 0..3 {
        let ids = ids_row(&c, "input_ids", r);
        let v = alignflow_json(&["logprobs", "--model", model.to_str().unwrap(), "--token-ids", &csv(&ids), "--json"]);
        let got: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let want = &c["token_logprobs"];
        let cols = want.shape[1];
        assert_eq!(got.len(), cols, "row {r}: one log-prob per next token");
        for (i, g) in got.iter().enumerate() {
            let w = want.data[r * cols + i];
            assert!((g - w).abs() <= 1e-4, "row {r} position {i}: {g} vs transformers {w}");
        }
    }
}

#[test]
fn greedy_generate_command_matches_transformers() {
    let c = case();
    let prompt = ids_row(&c, "greedy_prompt", 0);
    let want = ids_row(&c, "greedy_tokens", 0);
    let model = golden().join("model");
    let n = want.len().to_string();
    let v = alignflow_json(&[
        "generate", "--model", model.to_str().unwrap(), "--token-ids", &csv(&prompt), "--greedy", "--max-new-tokens", &n, "--json",
    ]);
    let got: Vec<u32> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(got, want);
}

#[test]
fn score_command_matches_transformers_reward_model() {
    let c = case();
    let rm = golden().join("rm");
    let mask = &c["rm_attention_mask"];
    let cols = mask.shape[1];
    for r in 0..3 {
        let len = mask.data[r * cols..(r + 1) * cols].iter().filter(|&&m| m > 0.5).count();
        let ids = &ids_row(&c, "rm_input_ids", r)[..len];
        let v = alignflow_json(&["score", "--model", rm.to_str().unwrap(), "--token-ids", &csv(ids), "--json"]);
        let got = v["score"].as_f64().unwrap();
        let want = c["rm_scores"].data[r];
        assert!((got - want).abs() <= 1e-4, "row {r}: score {got} vs transformers {want}");
    }
}

#[test]
fn a_broken_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = golden().join("model");
    std::fs::copy(model.join("config.json"), dir.path().join("config.json")).unwrap();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &weights[..weights.len() / 3]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alignflow"))
        .args(["logprobs", "--model"])
        .arg(dir.path())
        .args(["--token-ids", "1,2,3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("model.safetensors"), "the error should name the file: {err}");
}
