//! The engine's benchmarks as a kernels-only target, for measuring without building the whole
//! workspace: the same `kernels::bench` functions `alignflow bench` calls, printed as JSON.
//! They are `#[ignore]`d tests (speed is never asserted): run them with
//! `cargo test --release -p kernels --bench engine -- --ignored --nocapture --test-threads 1`.
//! `ENGINE_BENCH_STEPS` sets the number of timed training steps (default 10) and
//! `ENGINE_BENCH_THREADS` the threads (default 2), `ENGINE_BENCH_SHARDS` the row shards (default 2).

use kernels::bench::{bench_generate, bench_train, decode_shape, train_preset};
use kernels::generate::WeightPrecision;
use kernels::model::Llama;

fn steps() -> usize {
    std::env::var("ENGINE_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

fn train(preset: &str) {
    let p = train_preset(preset).unwrap();
    let threads = std::env::var("ENGINE_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let shards = std::env::var("ENGINE_BENCH_SHARDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let r = bench_train(&p, steps(), 2, threads, shards).unwrap();
    // CPU-time view: tokens per CPU-second × threads, and its GFLOP share of the CPU-time peak.
    let tokens = (p.batch * p.seq_len) as f64;
    if let (Some(cpu), Some(peak)) = (r.cpu_seconds_per_step, r.gemm_peak_gflops_cpu) {
        let tps = tokens / cpu * threads as f64;
        let gf = r.gflops * r.seconds_per_step / cpu * threads as f64;
        println!("{{\"bench\":\"train-cpu-time\",\"preset\":\"{}\",\"threads\":{threads},\"tokens_per_s\":{tps:.0},\"gflops\":{gf:.2},\"gemm_peak_gflops\":{peak:.2},\"share_of_gemm_peak\":{:.3}}}", r.preset, gf / peak);
    }
    println!(
        "{{\"bench\":\"train\",\"preset\":\"{}\",\"threads\":{},\"tokens_per_s\":{:.0},\"gflops\":{:.2},\"gemm_peak_gflops\":{:.2},\"share_of_gemm_peak\":{:.3},\"seconds_per_step\":{:.4},\"final_loss\":{:.4}}}",
        r.preset, r.threads, r.tokens_per_s, r.gflops, r.gemm_peak_gflops, r.share_of_gemm_peak, r.seconds_per_step, r.final_loss
    );
}

fn decode(shape: &str, batch: usize, precision: WeightPrecision) {
    let m = Llama::new_random(decode_shape(shape).unwrap(), 0);
    let r = bench_generate(&m, batch, 16, 32, precision, 2).unwrap();
    println!(
        "{{\"bench\":\"generate\",\"model\":\"random:{shape}\",\"batch\":{},\"precision\":\"{:?}\",\"tokens_per_s\":{:.2},\"bandwidth_bound_tokens_per_s\":{:.2},\"share_of_bound\":{:.3},\"read_bandwidth_gb_s\":{:.2},\"bytes_per_token\":{}}}",
        r.batch, r.precision, r.tokens_per_s, r.bandwidth_bound_tokens_per_s, r.share_of_bound, r.read_bandwidth_gb_s, r.bytes_per_token
    );
}

#[test]
#[ignore]
fn train_mini() {
    train("mini");
}

#[test]
#[ignore]
fn train_small() {
    train("small");
}

#[test]
#[ignore]
fn decode_smollm2_shape_f32_and_bf16() {
    decode("smollm2-135m", 1, WeightPrecision::F32);
    decode("smollm2-135m", 1, WeightPrecision::Bf16);
}
