//! Reliability of the store under abuse: a run killed with SIGKILL at any moment leaves nothing
//! that a later run trusts, and the re-run completes with exactly the artifacts of an
//! undisturbed run; two runs on one workspace never corrupt it; a damaged artifact is rebuilt.
//!
//! Artifacts are compared through their manifests, which list every file with its blake3.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_alignflow")
}

fn pipeline() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/good/data_stages.toml")
}

/// Runs the pipeline to completion with `--json` and returns the report.
fn run_json(ws: &Path) -> Value {
    let out = Command::new(bin())
        .args(["run", "--json", "--workspace"])
        .arg(ws)
        .arg(pipeline())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("run --json prints one JSON object")
}

/// Stage name -> (fingerprint, manifest text) for every stage of a run report.
fn artifacts(ws: &Path, report: &Value) -> BTreeMap<String, (String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let fp = s["fingerprint"].as_str().unwrap().to_string();
            let manifest = std::fs::read_to_string(ws.join("artifacts").join(&fp).join("MANIFEST.json"))
                .unwrap_or_else(|e| panic!("stage {}: no manifest for {fp}: {e}", s["name"]));
            (s["name"].as_str().unwrap().to_string(), (fp, manifest))
        })
        .collect()
}

fn statuses(report: &Value) -> Vec<String> {
    report["stages"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap().to_string()).collect()
}

#[test]
fn kill_9_at_any_moment_then_rerun_matches_an_undisturbed_run() {
    let reference_ws = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let reference = run_json(reference_ws.path());
    let full = t0.elapsed();
    let expected = artifacts(reference_ws.path(), &reference);

    // Kill at several points spread over a full run's duration.
    for frac in [0.05, 0.2, 0.4, 0.6, 0.8, 0.95] {
        let ws = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin())
            .args(["run", "--workspace"])
            .arg(ws.path())
            .arg(pipeline())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(frac));
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();

        let again = run_json(ws.path());
        assert_eq!(
            artifacts(ws.path(), &again),
            expected,
            "after kill -9 at {:.0}% of a run, the re-run's artifacts differ from an undisturbed run's",
            frac * 100.0
        );
        let third = run_json(ws.path());
        assert!(statuses(&third).iter().all(|s| s == "cached"), "third run not all cached: {:?}", statuses(&third));
    }
}

#[test]
fn a_half_written_or_truncated_artifact_is_never_trusted() {
    let ws = tempfile::tempdir().unwrap();
    let first = run_json(ws.path());
    let expected = artifacts(ws.path(), &first);
    let stages = first["stages"].as_array().unwrap();
    let victim = stages.iter().find(|s| s["name"] == "bpe").expect("a stage named bpe");
    let fp = victim["fingerprint"].as_str().unwrap();
    let dir = ws.path().join("artifacts").join(fp);

    // Truncate one file of a committed artifact: its manifest no longer matches.
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let file = manifest["files"][0]["path"].as_str().unwrap();
    let path = dir.join(file);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();

    let second = run_json(ws.path());
    let bpe = second["stages"].as_array().unwrap().iter().find(|s| s["name"] == "bpe").unwrap();
    assert_eq!(bpe["status"], "ran", "a truncated artifact was trusted");
    assert_eq!(artifacts(ws.path(), &second), expected);

    // An artifact directory without a manifest (a crash between the files and the manifest).
    std::fs::remove_file(dir.join("MANIFEST.json")).unwrap();
    let third = run_json(ws.path());
    let bpe = third["stages"].as_array().unwrap().iter().find(|s| s["name"] == "bpe").unwrap();
    assert_eq!(bpe["status"], "ran", "an artifact without a manifest was trusted");
    assert_eq!(artifacts(ws.path(), &third), expected);
}

#[test]
fn two_runs_at_once_on_one_workspace_do_not_corrupt_it() {
    let reference_ws = tempfile::tempdir().unwrap();
    let expected = artifacts(reference_ws.path(), &run_json(reference_ws.path()));

    let ws = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(bin())
            .args(["run", "--workspace"])
            .arg(ws.path())
            .arg(pipeline())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    // Let the first run take the lock before the second starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ws.path().join("lock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let second = spawn().wait_with_output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "the first run failed:\n{}", String::from_utf8_lossy(&first.stderr));
    if !second.status.success() {
        let msg = String::from_utf8_lossy(&second.stderr);
        assert!(msg.contains("locked"), "the second run failed without saying the workspace is locked:\n{msg}");
        assert!(!msg.contains("panicked"), "{msg}");
    }
    let after = run_json(ws.path());
    assert!(statuses(&after).iter().all(|s| s == "cached"), "{:?}", statuses(&after));
    assert_eq!(artifacts(ws.path(), &after), expected);
}
