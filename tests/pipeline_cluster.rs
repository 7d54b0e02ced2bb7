//! Issue 8: the pipeline on a timely cluster. Two `alignflow run` processes with two workers
//! each on loopback (free ports, one shared workspace) run the world, tokenizer, tokenize,
//! data-parallel pretraining and SFT, and a row-wise eval; every table and the weights are
//! byte-identical to a one-process run. The same for preference collection, a data-parallel
//! reward model and data-parallel PPO. Killing either process mid-training stops the other with
//! a clear error within seconds, and running both again resumes (store + SFT checkpoints) to the
//! same weights. A process whose peer never starts stops after `--connect-timeout`.

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"
[pipeline]
name = "cluster_small"
seed = 17

[stages.world]
kind = "assistant_world"
[stages.world.params]
pretrain = 200
sft = 48
rl_prompts = 0
preference_prompts = 0
eval = 12
eval_borderline = 0
gatt_dialogues = 0
eval_dialogues = 0

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "world.pretrain" }
params = { vocab_size = 400, column = "text" }

[stages.pretrain_tokens]
kind = "tokenize"
inputs = { table = "world.pretrain", tokenizer = "bpe.tokenizer" }

[stages.pretrain]
kind = "sft"
inputs = { data = "pretrain_tokens.tokens", tokenizer = "bpe.tokenizer" }
params = { mode = "pretrain", hidden_size = 32, layers = 2, heads = 4, kv_heads = 2, intermediate_size = 64, max_seq_len = 256, seq_len = 64, batch_size = 8, shards = 4, max_steps = PRETRAIN_STEPS, lr = 3e-3, warmup_steps = 2, checkpoint_every = 5 }

[stages.sft]
kind = "sft"
inputs = { data = "world.sft", model = "pretrain.model" }
params = { seq_len = 64, batch_size = 8, shards = 4, max_steps = 6, lr = 1e-3, warmup_steps = 1 }

[stages.eval_sft]
kind = "eval"
inputs = { model = "sft.model", prompts = "world.eval" }
params = { samples = 1, max_new_tokens = 4 }
"#;

fn pipeline(pretrain_steps: usize) -> String {
    PIPELINE.replace("PRETRAIN_STEPS", &pretrain_steps.to_string())
}

/// Two free loopback ports, written as a hostfile.
fn hostfile(dir: &Path) -> String {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = format!("# two processes on loopback\n127.0.0.1:{}\n127.0.0.1:{}\n", a.local_addr().unwrap().port(), b.local_addr().unwrap().port());
    std::fs::write(dir.join("hosts"), text).unwrap();
    "hosts".to_string()
}

/// Starts process `i` of a 2-process, 2-worker run of `file` on workspace `ws`.
fn start(dir: &Path, file: &str, ws: &str, hosts: &str, i: usize) -> Child {
    let id = i.to_string();
    bin()
        .current_dir(dir)
        .args(["run", file, "--json", "--workspace", ws, "--workers", "2", "--processes", "2", "--process-id", &id, "--hostfile", hosts])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The last stdout line of a finished process as the run's JSON object.
fn report(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn file_of(dir: &Path, ws: &str, run: &serde_json::Value, stage_name: &str, output: &str, file: &str) -> Vec<u8> {
    artifact(&dir.join(ws), stage(run, stage_name)["fingerprint"].as_str().unwrap(), output, file)
}

#[test]
fn two_processes_of_two_workers_match_one_process_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("p.toml"), pipeline(10)).unwrap();
    let one = run_json(d.path(), "p.toml", "ws1", &["--workers", "1"]);

    let hosts = hostfile(d.path());
    let children = [start(d.path(), "p.toml", "wsc", &hosts, 0), start(d.path(), "p.toml", "wsc", &hosts, 1)];
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (i, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "process {i} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    }
    let cluster = report(&outs[0]);
    let other = report(&outs[1]);
    for s in ["world", "bpe", "pretrain_tokens", "pretrain", "sft", "eval_sft"] {
        assert_eq!(stage(&cluster, s)["fingerprint"], stage(&one, s)["fingerprint"], "{s}");
        assert_eq!(stage(&cluster, s)["status"], "ran", "{s}");
        assert_eq!(stage(&other, s)["status"], "ran", "process 1 reports what ran: {s}");
    }
    assert_eq!(stage(&cluster, "pretrain_tokens")["rows_computed"], 200);
    // Process 1 did its share of the rows: its stderr shows the data-parallel stages too.
    let err1 = String::from_utf8_lossy(&outs[1].stderr);
    assert!(err1.contains("cluster: process 1 of 2"), "{err1}");

    for (s, out, file) in [
        ("world", "pretrain", "table.parquet"),
        ("world", "sft", "table.parquet"),
        ("bpe", "tokenizer", "tokenizer.json"),
        ("pretrain_tokens", "tokens", "table.parquet"),
        ("pretrain", "model", "model.safetensors"),
        ("pretrain", "model", "loss_curve.csv"),
        ("sft", "model", "model.safetensors"),
        ("sft", "model", "loss_curve.csv"),
        ("eval_sft", "results", "table.parquet"),
    ] {
        assert!(file_of(d.path(), "ws1", &one, s, out, file) == file_of(d.path(), "wsc", &cluster, s, out, file), "{s}.{out}/{file} differs between 1 process and 2 processes x 2 workers");
    }

    // A second cluster run finds everything cached on both processes.
    let children = [start(d.path(), "p.toml", "wsc", &hosts, 0), start(d.path(), "p.toml", "wsc", &hosts, 1)];
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = report(o);
        assert!(r["stages"].as_array().unwrap().iter().all(|s| s["status"] == "cached"), "{r}");
    }
}

/// The SFT checkpoints the run has left in the workspace's scratch area.
fn checkpoints(ws: &Path) -> Vec<String> {
    let Ok(fps) = std::fs::read_dir(ws.join("scratch")) else { return Vec::new() };
    fps.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_dir(e.path().join("checkpoints")).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("ckpt-"))
        .collect()
}

/// Kills process `victim` of a 2 x 2 run once pretraining has written a checkpoint past the
/// first; the other process must stop within 10 s with a clear error; running both again resumes
/// from the store and the checkpoint, and the weights equal a one-process run's.
fn kill_and_resume(victim: usize) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("p.toml"), pipeline(120)).unwrap();
    let hosts = hostfile(d.path());
    let ws = d.path().join("wsk");
    let mut procs = [start(d.path(), "p.toml", "wsk", &hosts, 0), start(d.path(), "p.toml", "wsk", &hosts, 1)];
    let t0 = Instant::now();
    // Wait for a pretraining checkpoint past the first, then kill the victim.
    loop {
        if checkpoints(&ws).iter().any(|n| !n.ends_with("000000005")) {
            break;
        }
        for p in procs.iter_mut() {
            assert!(p.try_wait().unwrap().is_none(), "a process ended before the kill");
        }
        assert!(t0.elapsed() < Duration::from_secs(240), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let survivor = 1 - victim;
    procs[victim].kill().unwrap();
    procs[victim].wait().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = procs[survivor].try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "process {survivor} still runs 10 s after process {victim} was killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_after = killed.elapsed();
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(procs[survivor].stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("error: process {survivor}: lost the connection to another process")), "unclear error: {err}");
    assert!(err.contains("Run the same command on every process again"), "{err}");
    eprintln!("process {survivor} stopped {:.2} s after process {victim} was killed", stopped_after.as_secs_f64());
    assert!(!checkpoints(&ws).is_empty());

    // Both again: pretraining resumes from its checkpoint, and the weights equal a one-process run's.
    let children = [start(d.path(), "p.toml", "wsk", &hosts, 0), start(d.path(), "p.toml", "wsk", &hosts, 1)];
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (i, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "re-run of process {i} failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("pretrain: resuming at step"), "process {i} did not resume: {e}");
    }
    let resumed = report(&outs[0]);
    assert_eq!(stage(&resumed, "world")["status"], "cached");
    let one = run_json(d.path(), "p.toml", "ws1", &["--workers", "1"]);
    for s in ["pretrain", "sft"] {
        assert!(
            file_of(d.path(), "wsk", &resumed, s, "model", "model.safetensors") == file_of(d.path(), "ws1", &one, s, "model", "model.safetensors"),
            "{s}: resumed cluster weights differ from the one-process run"
        );
    }
    assert!(checkpoints(&ws).is_empty(), "scratch checkpoints are removed once the stage commits");
}

#[test]
fn killing_one_process_stops_the_other_and_a_rerun_resumes() {
    kill_and_resume(1);
}

/// Process 0 holds the workspace lock and writes the store; killing it stops process 1 as
/// quickly, and the re-run (a new process 0 takes the lock of the dead one) completes.
#[test]
fn killing_process_0_stops_process_1_and_a_rerun_resumes() {
    kill_and_resume(0);
}

const RLHF: &str = r#"
[pipeline]
name = "cluster_rlhf"
seed = 23

[stages.world]
kind = "assistant_world"
[stages.world.params]
pretrain = 120
sft = 8
rl_prompts = 12
preference_prompts = 32
eval = 6
eval_borderline = 0
gatt_dialogues = 0
eval_dialogues = 0

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "world.pretrain" }
params = { vocab_size = 400, column = "text" }

[stages.pretrain]
kind = "sft"
inputs = { data = "world.pretrain", tokenizer = "bpe.tokenizer" }
params = { mode = "pretrain", hidden_size = 32, layers = 1, heads = 2, kv_heads = 1, intermediate_size = 48, max_seq_len = 128, seq_len = 48, batch_size = 8, shards = 2, max_steps = 6, lr = 3e-3, warmup_steps = 1 }

[stages.collect]
kind = "collect_preferences"
inputs = { prompts = "world.preference_prompts", policy = "pretrain.model" }
params = { prompts_per_round = 32, max_new_tokens = 6, test_share = 0.2 }

[stages.rm]
kind = "train_reward"
inputs = { pairs = "collect.pairs", init = "pretrain.model" }
params = { track = "helpfulness", epochs = 2, lr = 1e-3, batch_pairs = 8, micro_pairs = 2, max_tokens = 48 }

[stages.rs]
kind = "rejection_sample"
inputs = { prompts = "world.rl_prompts", policy = "pretrain.model", helpfulness_rm = "rm.model" }
params = { k = 4, max_new_tokens = 6 }

[stages.ppo]
kind = "ppo"
inputs = { prompts = "world.rl_prompts", policy = "pretrain.model", helpfulness_rm = "rm.model", heldout = "world.eval" }
params = { iterations = 2, batch_prompts = 6, minibatch = 3, shards = 3, lr = 1e-4, value_lr = 1e-4, max_new_tokens = 6, eval_every = 1, patience = 2, heldout_prompts = 4 }
"#;

/// Preference collection and rejection sampling (row-wise), the reward model (data-parallel:
/// its micro-batches are split over the processes) and PPO (data-parallel: rollouts split by
/// answer, mini-batch shards by part) on 2 processes x 2 workers give byte-identical tables,
/// weights and reports to one process, and both processes ran the data-parallel stages.
#[test]
fn reward_model_and_ppo_on_two_processes_match_one_process_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("p.toml"), RLHF).unwrap();
    let one = run_json(d.path(), "p.toml", "ws1", &["--workers", "1"]);
    let hosts = hostfile(d.path());
    let children = [start(d.path(), "p.toml", "wsc", &hosts, 0), start(d.path(), "p.toml", "wsc", &hosts, 1)];
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (i, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "process {i} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    }
    let cluster = report(&outs[0]);
    for s in ["collect", "rm", "rs", "ppo"] {
        assert_eq!(stage(&cluster, s)["fingerprint"], stage(&one, s)["fingerprint"], "{s}");
        assert_eq!(stage(&cluster, s)["status"], "ran", "{s}");
    }
    // Process 1 ran the data-parallel stages itself (its progress says `ran  rm  (...)`).
    let err1 = String::from_utf8_lossy(&outs[1].stderr);
    for s in ["rm", "ppo"] {
        let ran = |l: &str| l.split_whitespace().take(2).eq(["ran", s]);
        assert!(err1.lines().any(ran), "process 1 did not run {s}: {err1}");
    }
    for (s, out, file) in [
        ("collect", "pairs", "table.parquet"),
        ("rm", "model", "model.safetensors"),
        ("rm", "report", "report.json"),
        ("rs", "samples", "table.parquet"),
        ("rs", "best", "table.parquet"),
        ("ppo", "model", "model.safetensors"),
        ("ppo", "value", "model.safetensors"),
        ("ppo", "report", "report.json"),
    ] {
        assert!(file_of(d.path(), "ws1", &one, s, out, file) == file_of(d.path(), "wsc", &cluster, s, out, file), "{s}.{out}/{file} differs between 1 process and 2 processes x 2 workers");
    }
    // Several steps of several parts each, and PPO ran its iterations.
    let json = |s: &str| -> serde_json::Value { serde_json::from_slice(&file_of(d.path(), "wsc", &cluster, s, "report", "report.json")).unwrap() };
    let rm = json("rm");
    assert!(rm["train_pairs"].as_u64().unwrap() >= 16 && rm["loss_curve"].as_array().unwrap().len() >= 4, "{rm}");
    assert_eq!(json("ppo")["iterations_run"], 2);
}

/// Starts process `i` of a 2-process run whose other process never starts.
fn start_alone(dir: &Path, i: usize, timeout: &str) -> Child {
    let hosts = hostfile(dir);
    bin()
        .current_dir(dir)
        .args(["run", "p.toml", "--workspace", &format!("ws{i}"), "--workers", "1", "--processes", "2", "--process-id", &i.to_string(), "--hostfile", &hosts, "--connect-timeout", timeout])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A process whose peer never starts (process 0 waits for process 1 to connect; process 1
/// retries connecting to process 0) stops after `--connect-timeout` seconds with an error that
/// says what to check, instead of waiting for ever.
#[test]
fn a_process_whose_peer_never_starts_stops_after_the_connect_timeout() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("p.toml"), pipeline(2)).unwrap();
    for i in [0, 1] {
        let t0 = Instant::now();
        let out = start_alone(d.path(), i, "2").wait_with_output().unwrap();
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "process {i} succeeded alone: {err}");
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(20), "process {i} stopped after {took:?}");
        assert!(err.contains(&format!("process {i} of 2: the other processes did not all connect within 2 s")), "{err}");
        assert!(err.contains("--connect-timeout"), "{err}");
    }
    // Nothing was left locked: a one-process run of the same workspace works.
    run_json(d.path(), "p.toml", "ws0", &["--workers", "1"]);
    // The flag is checked.
    let bad = alignflow(d.path(), &["run", "p.toml", "--processes", "2", "--process-id", "0", "--hostfile", "hosts", "--connect-timeout", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("connect-timeout"), "{}", String::from_utf8_lossy(&bad.stderr));
}
