//! `alignflow bench train|generate --device cuda`: training-step and decoding throughput on the
//! GPU, next to ceilings measured in the same run: the bf16 cuBLAS product peak (an 8192³
//! product) and, for decoding, the device-to-device copy bandwidth. MFU is reported against the
//! card's datasheet bf16 dense peak where the card is known (H100 SXM 989 TFLOP/s, as llm.c and
//! PaLM count it), and against the measured product peak always.

use super::model::{GpuAdamW, GpuLlama, lm_train_step};
use super::{CudaError, Gpu, dptr};
use crate::bench::train_flops_per_token;
use crate::config::LlamaConfig;
use crate::generate::SamplingParams;
use crate::model::Llama;
use crate::optim::{AdamWConfig, mean_ce_micro_batches};
use crate::rng::Rng;
use std::sync::Arc;
use std::time::Instant;

/// What a GPU training benchmark reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuTrainReport {
    pub device: String,
    pub parameters: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub micro_batch: usize,
    pub steps: usize,
    pub seconds_per_step: f64,
    pub tokens_per_s: f64,
    pub tflops: f64,
    pub gemm_peak_tflops: f64,
    pub share_of_gemm_peak: f64,
    pub datasheet_peak_tflops: Option<f64>,
    pub mfu: Option<f64>,
    pub final_loss: f32,
    pub peak_memory_gb: f64,
    pub attention: String,
    /// Milliseconds per step by op when `ALIGNFLOW_CUDA_PROFILE=1` (each op synchronised).
    pub profile_ms_per_step: Vec<(String, f64, u64)>,
}

/// The card's bf16 dense tensor-core peak in TFLOP/s, where its name says which card it is.
pub fn datasheet_bf16_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H100") && (n.contains("PCIE") || n.contains("PCI")) {
        Some(756.0)
    } else if n.contains("H100") || n.contains("H200") || n.contains("H800") {
        Some(989.4)
    } else if n.contains("A100") {
        Some(312.0)
    } else {
        None
    }
}

/// The shortest of 10 synchronised runs of `op`, after 3 warm-up runs.
fn best_seconds(gpu: &Gpu, mut op: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
    let mut best = f64::INFINITY;
    for i in 0..13 {
        gpu.sync()?;
        let t0 = Instant::now();
        op()?;
        gpu.sync()?;
        if i >= 3 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// TFLOP/s of a square bf16 product (f32 accumulate) of size n on the device, best of 10.
pub fn gemm_peak_tflops(gpu: &Gpu, n: usize) -> Result<f64, CudaError> {
    let mut rng = Rng::new(3);
    let host: Vec<u16> = (0..n * n).map(|_| half::bf16::from_f32(rng.normal() as f32).to_bits()).collect();
    let a = gpu.upload(&host)?;
    let b = gpu.upload(&host)?;
    let c = gpu.zeros::<u16>(n * n)?;
    let best = best_seconds(gpu, || gpu.gemm(dptr(&c), false, dptr(&a), false, dptr(&b), true, n, n, n, 0.0))?;
    Ok(2.0 * (n as f64).powi(3) / best / 1e12)
}

/// Times `steps` training steps (after `warmup`) of a randomly initialised model on random
/// tokens: `batch` rows of `seq_len` tokens, split into micro-batches of `micro_batch` rows.
pub fn bench_train(gpu: &Arc<Gpu>, config: &LlamaConfig, seq_len: usize, batch: usize, micro_batch: usize, steps: usize, warmup: usize) -> Result<GpuTrainReport, CudaError> {
    let cpu = Llama::new_random(config.clone(), 0);
    let mut model = GpuLlama::from_cpu(gpu.clone(), &cpu)?;
    drop(cpu);
    let mut opt = GpuAdamW::new(AdamWConfig::llama2(0.1), &model)?;
    let mut rng = Rng::new(1);
    let rows: Vec<Vec<u32>> = (0..batch).map(|_| (0..seq_len).map(|_| (rng.next_u64() % config.vocab_size as u64) as u32).collect()).collect();
    let targets: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().skip(1).map(|&t| t as i32).chain([-100]).collect()).collect();
    let micro = mean_ce_micro_batches(&rows, &targets, micro_batch);
    let mut loss = 0.0;
    for _ in 0..warmup {
        loss = lm_train_step(&mut model, &mut opt, &micro, 1e-4, Some(1.0))?.loss;
    }
    gpu.sync()?;
    let t0 = Instant::now();
    for _ in 0..steps {
        loss = lm_train_step(&mut model, &mut opt, &micro, 1e-4, Some(1.0))?.loss;
    }
    gpu.sync()?;
    let dt = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    let (free, total) = gpu.memory()?;
    let mut profile_ms_per_step = vec![];
    if std::env::var_os("ALIGNFLOW_CUDA_PROFILE").is_some_and(|v| v != "0") {
        // A separate profiled step, so the timing above stays unsynchronised.
        gpu.set_profiling(true);
        gpu.profile(true);
        let t = Instant::now();
        lm_train_step(&mut model, &mut opt, &micro, 1e-4, Some(1.0))?;
        let total = t.elapsed().as_secs_f64();
        gpu.set_profiling(false);
        profile_ms_per_step = gpu.profile(true).into_iter().map(|(k, s, n)| (k.to_string(), 1e3 * s, n)).collect();
        profile_ms_per_step.push(("(whole profiled step)".into(), 1e3 * total, 1));
    }
    let tokens = (batch * seq_len) as f64;
    let tflops = tokens * train_flops_per_token(config, seq_len) / dt / 1e12;
    let peak = gemm_peak_tflops(gpu, 8192)?;
    let sheet = datasheet_bf16_tflops(gpu.name());
    Ok(GpuTrainReport {
        device: gpu.name().to_string(),
        parameters: model.num_parameters(),
        seq_len,
        batch,
        micro_batch,
        steps,
        seconds_per_step: dt,
        tokens_per_s: tokens / dt,
        tflops,
        gemm_peak_tflops: peak,
        share_of_gemm_peak: tflops / peak,
        datasheet_peak_tflops: sheet,
        mfu: sheet.map(|s| tflops / s),
        final_loss: loss,
        peak_memory_gb: (total - free) as f64 / 1e9,
        attention: format!("{:?}", model.attention.resolve(model.config.head_dim)),
        profile_ms_per_step,
    })
}

/// What a GPU decoding benchmark reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuGenerateReport {
    pub device: String,
    pub parameters: usize,
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub copy_bandwidth_gb_s: f64,
    /// batch × bandwidth / bytes of bf16 weights read per step.
    pub bandwidth_bound_tokens_per_s: f64,
    pub share_of_bound: f64,
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), 1 GiB buffers, best of 10.
pub fn copy_bandwidth_gb_s(gpu: &Gpu) -> Result<f64, CudaError> {
    let n = 1usize << 28; // f32s
    let a = gpu.zeros::<f32>(n)?;
    let b = gpu.zeros::<f32>(n)?;
    let best = best_seconds(gpu, || gpu.copy::<f32>(dptr(&b), dptr(&a), n))?;
    Ok(2.0 * (n * 4) as f64 / best / 1e9)
}

/// Greedy decoding of `batch` random prompts of `prompt_len` tokens for `new_tokens` tokens.
pub fn bench_generate(gpu: &Arc<Gpu>, model: &Llama, batch: usize, prompt_len: usize, new_tokens: usize) -> Result<GpuGenerateReport, CudaError> {
    let dev = GpuLlama::from_cpu(gpu.clone(), model)?;
    let v = model.config.vocab_size as u64;
    let mut rng = Rng::new(5);
    let prompts: Vec<Vec<u32>> = (0..batch).map(|_| (0..prompt_len).map(|_| (rng.next_u64() % v) as u32).collect()).collect();
    let ids: Vec<u64> = (0..batch as u64).collect();
    let params = SamplingParams { max_new_tokens: new_tokens, temperature: 0.0, top_p: 1.0, seed: 0 };
    // Warm-up, then the timed run; prompt steps count as decode steps here (one token per row
    // per step either way), so tokens/s counts every step of every row.
    dev.generate(&prompts, &ids, &SamplingParams { max_new_tokens: 4, ..params.clone() }, &[])?;
    gpu.sync()?;
    let (_, stats) = dev.generate(&prompts, &ids, &params, &[])?;
    let steps_tokens = (stats.steps * batch) as f64;
    let tps = steps_tokens / stats.seconds;
    let bw = copy_bandwidth_gb_s(gpu)?;
    let bytes = 2.0 * model.num_parameters() as f64;
    let bound = batch as f64 * bw * 1e9 / bytes;
    Ok(GpuGenerateReport {
        device: gpu.name().to_string(),
        parameters: model.num_parameters(),
        batch,
        prompt_len,
        new_tokens,
        seconds: stats.seconds,
        tokens_per_s: tps,
        copy_bandwidth_gb_s: bw,
        bandwidth_bound_tokens_per_s: bound,
        share_of_bound: tps / bound,
    })
}
