//! Speed measurements behind `alignflow bench`: a training step (forward, cross-entropy,
//! backward, clipping, AdamW) on the presets, and batched KV-cache decoding, each
//! reported next to a ceiling measured in the same run on the same threads: the GEMM peak
//! (a large square product) for training, and the memory-read bandwidth divided by the bytes
//! of weights read per token for decoding. Timings are wall-clock over whole steps after
//! warm-up; nothing here is used by tests (speed is never asserted).

use crate::config::{Head, LlamaConfig};
use crate::generate::{DecodeWeights, KvCache, WeightPrecision, argmax, forward_cached};
use crate::model::{Llama, ModelError};
use crate::ops::matmul::{MmShape, Tr, matmul};
use crate::ops::pages::HugeBuf;
use crate::optim::{AdamW, AdamWConfig, lm_train_step_sharded, mean_ce_micro_batches};
use crate::rng::Rng;
use rayon::prelude::*;
use std::time::Instant;

/// A training benchmark shape: the model and the batch (rows of seq_len tokens).
#[derive(Debug, Clone)]
pub struct TrainPreset {
    pub name: &'static str,
    pub config: LlamaConfig,
    pub seq_len: usize,
    pub batch: usize,
}

fn shape(vocab: usize, d: usize, layers: usize, heads: usize, kv: usize, ffn: usize, max_pos: usize, tie: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: vocab, hidden_size: d, intermediate_size: ffn, num_hidden_layers: layers, num_attention_heads: heads,
        num_key_value_heads: kv, head_dim: d / heads, rms_norm_eps: 1e-5, rope_theta: 10000.0,
        max_position_embeddings: max_pos, tie_word_embeddings: tie, bos_token_id: None, eos_token_ids: vec![],
        pad_token_id: None, head: Head::LanguageModel,
    }
}

/// The presets: mini (dim 128, 4 layers, T 128, batch 16) and small (dim 256, 6
/// layers, T 256, batch 8), untied embeddings as in the PyTorch peer.
pub fn train_preset(name: &str) -> Option<TrainPreset> {
    match name {
        "mini" => Some(TrainPreset { name: "mini", config: shape(1024, 128, 4, 4, 2, 344, 128, false), seq_len: 128, batch: 16 }),
        "small" => Some(TrainPreset { name: "small", config: shape(4096, 256, 6, 8, 4, 688, 256, false), seq_len: 256, batch: 8 }),
        // About 1.1B parameters (TinyLlama's shape: dim 2048, 22 layers, 32/4 heads, ffn 5632,
        // vocab 32000), T 1024, batch 16: the GPU benchmark of the CUDA issue.
        "1b" => Some(TrainPreset { name: "1b", config: shape(32000, 2048, 22, 32, 4, 5632, 2048, false), seq_len: 1024, batch: 16 }),
        _ => None,
    }
}

/// Model shapes for decoding benchmarks without a checkpoint (random weights decode at the
/// same speed): `smollm2-135m` has SmolLM2-135M's shape.
pub fn decode_shape(name: &str) -> Option<LlamaConfig> {
    match name {
        "smollm2-135m" => Some(shape(49152, 576, 30, 9, 3, 1536, 8192, true)),
        "mini" | "small" | "1b" => train_preset(name).map(|p| p.config),
        _ => None,
    }
}

/// Multiply-adds ×2 of one training step per token: 6 × (parameters used in products) for
/// forward + backward, plus causal attention (q·k and p·v over on average T/2 keys, ×3).
pub fn train_flops_per_token(c: &LlamaConfig, seq_len: usize) -> f64 {
    let (d, f) = (c.hidden_size as f64, c.intermediate_size as f64);
    let (qd, kvd) = ((c.num_attention_heads * c.head_dim) as f64, (c.num_key_value_heads * c.head_dim) as f64);
    let per_layer = d * qd + 2.0 * d * kvd + qd * d + 3.0 * d * f;
    let head = (c.vocab_size * c.hidden_size) as f64;
    let matmul_params = c.num_hidden_layers as f64 * per_layer + head;
    let attention = c.num_hidden_layers as f64 * 2.0 * 2.0 * (seq_len as f64 / 2.0) * qd;
    6.0 * matmul_params + 3.0 * attention
}

/// What `bench train` reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub preset: String,
    pub threads: usize,
    pub steps: usize,
    pub parameters: usize,
    pub seconds_per_step: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    pub gemm_peak_gflops: f64,
    pub share_of_gemm_peak: f64,
    pub final_loss: f32,
    /// Process CPU seconds (all threads) per step, from /proc/self/stat (Linux; 10 ms ticks).
    /// On a shared machine, tokens per CPU-second is steadier than wall-clock throughput.
    pub cpu_seconds_per_step: Option<f64>,
    /// The GEMM peak measured in CPU time: GFLOP per CPU-second, times the thread count.
    pub gemm_peak_gflops_cpu: Option<f64>,
}

/// CPU seconds used by this process so far (user + system, all threads), if the OS says.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Runs `warmup + steps` training steps on random tokens and times the last `steps`.
pub fn bench_train(preset: &TrainPreset, steps: usize, warmup: usize, threads: usize, shards: usize) -> Result<TrainReport, ModelError> {
    let pool = pool(threads)?;
    pool.install(|| {
        let mut model = Llama::new_random(preset.config.clone(), 0);
        let mut opt = AdamW::new(AdamWConfig::llama2(0.1), &model);
        let mut rng = Rng::new(1);
        let rows: Vec<Vec<u32>> = (0..preset.batch)
            .map(|_| (0..preset.seq_len).map(|_| (rng.next_u64() % preset.config.vocab_size as u64) as u32).collect())
            .collect();
        // Labels = inputs as in the peer: every position but the last is scored.
        let targets: Vec<Vec<i32>> = rows.iter().map(|r| r.iter().skip(1).map(|&t| t as i32).chain([-100]).collect()).collect();
        let micro = mean_ce_micro_batches(&rows, &targets, preset.batch);
        let mut loss = 0.0;
        for _ in 0..warmup {
            loss = lm_train_step_sharded(&mut model, &mut opt, &micro, 1e-3, Some(1.0), shards)?.loss;
        }
        let t0 = Instant::now();
        let c0 = process_cpu_seconds();
        for _ in 0..steps {
            loss = lm_train_step_sharded(&mut model, &mut opt, &micro, 1e-3, Some(1.0), shards)?.loss;
        }
        let dt = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
        let cpu = c0.zip(process_cpu_seconds()).map(|(a, b)| (b - a) / steps.max(1) as f64);
        let tokens = (preset.batch * preset.seq_len) as f64;
        let gflops = tokens * train_flops_per_token(&preset.config, preset.seq_len) / dt / 1e9;
        let (peak, peak_cpu) = gemm_peak_gflops_in_pool();
        Ok(TrainReport {
            preset: preset.name.to_string(), threads, steps, parameters: model.num_parameters(), seconds_per_step: dt,
            tokens_per_s: tokens / dt, gflops, gemm_peak_gflops: peak, share_of_gemm_peak: gflops / peak, final_loss: loss,
            cpu_seconds_per_step: cpu, gemm_peak_gflops_cpu: peak_cpu,
        })
    })
}

fn pool(threads: usize) -> Result<rayon::ThreadPool, ModelError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build()
        .map_err(|e| ModelError::Invalid { op: "bench", message: format!("cannot start {threads} threads: {e}") })
}

/// GFLOP/s of a 1024³ f32 product on the current pool's threads, best of 5 by wall clock,
/// and GFLOP per CPU-second × threads over the same runs (None where CPU time is unknown).
fn gemm_peak_gflops_in_pool() -> (f64, Option<f64>) {
    let n = 1024;
    let mut r = Rng::new(3);
    let a: Vec<f32> = (0..n * n).map(|_| r.normal() as f32).collect();
    let b: Vec<f32> = (0..n * n).map(|_| r.normal() as f32).collect();
    let mut c = vec![0.0f32; n * n];
    let s = MmShape { m: n, k: n, n };
    matmul(&mut c, &a, Tr::N, &b, Tr::N, s, false);
    let flop = 2.0 * (n * n * n) as f64;
    let c0 = process_cpu_seconds();
    let runs = 8;
    let best = (0..runs).map(|_| {
        let t0 = Instant::now();
        matmul(&mut c, &a, Tr::N, &b, Tr::N, s, false);
        t0.elapsed().as_secs_f64()
    }).fold(f64::INFINITY, f64::min);
    let threads = rayon::current_num_threads() as f64;
    let cpu = c0.zip(process_cpu_seconds()).map(|(a, b)| runs as f64 * flop / (b - a) * threads / 1e9);
    (flop / best / 1e9, cpu)
}

/// The GEMM peak on `threads` threads.
pub fn gemm_peak_gflops(threads: usize) -> Result<f64, ModelError> {
    Ok(pool(threads)?.install(gemm_peak_gflops_in_pool).0)
}

/// Read bandwidth in GB/s: summing a 256 MiB buffer split across the pool's threads, best of
/// 5, on ordinary pages and on huge pages ([`HugeBuf`], as the packed decoding weights); the
/// higher of the two, so the bound never flatters the decoder.
fn read_bandwidth_in_pool() -> f64 {
    let n = 64 << 20; // f32s
    let plain: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
    let mut huge: HugeBuf<f32> = HugeBuf::zeroed(n);
    huge.par_iter_mut().enumerate().for_each(|(i, x)| *x = (i % 7) as f32);
    let chunk = n / rayon::current_num_threads().max(1);
    let mut sink = 0.0f32;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        for buf in [&plain[..], &huge[..]] {
            let t0 = Instant::now();
            sink += buf.par_chunks(chunk).map(crate::ops::matmul::sum_fast).sum::<f32>();
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(sink);
    (n * 4) as f64 / best / 1e9
}

/// What `bench generate` reports.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub threads: usize,
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub precision: WeightPrecision,
    pub parameters: usize,
    pub bytes_per_token: usize,
    pub prefill_tokens_per_s: f64,
    pub tokens_per_s: f64,
    pub read_bandwidth_gb_s: f64,
    /// batch × bandwidth / bytes of weights per decode step (KV-cache reads not counted).
    pub bandwidth_bound_tokens_per_s: f64,
    pub share_of_bound: f64,
}

/// Greedy decoding of `batch` rows: prefill a `prompt_len`-token prompt per row, then
/// `new_tokens` decode steps, timed separately.
pub fn bench_generate(model: &Llama, batch: usize, prompt_len: usize, new_tokens: usize, precision: WeightPrecision, threads: usize) -> Result<GenerateReport, ModelError> {
    pool(threads)?.install(|| {
        let dw = DecodeWeights::new(model, precision);
        dw.pack_all();
        let v = model.config.vocab_size as u64;
        let mut rng = Rng::new(5);
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| (0..prompt_len).map(|_| (rng.next_u64() % v) as u32).collect()).collect();
        let layers = model.config.num_hidden_layers;
        let mut caches: Vec<KvCache> = (0..batch).map(|_| KvCache::new(layers)).collect();
        let t0 = Instant::now();
        let mut next = Vec::with_capacity(batch);
        for (p, c) in prompts.iter().zip(caches.iter_mut()) {
            next.push(argmax(&forward_cached(&dw, &[p.as_slice()], &mut [c])?[0]));
        }
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..new_tokens {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let new: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let logits = forward_cached(&dw, &new, &mut refs)?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        let decode = t1.elapsed().as_secs_f64();
        let bw = read_bandwidth_in_pool();
        let bytes = dw.bytes_per_token();
        let bound = batch as f64 * bw * 1e9 / bytes as f64;
        let tps = (batch * new_tokens) as f64 / decode;
        Ok(GenerateReport {
            threads, batch, prompt_len, new_tokens, precision, parameters: model.num_parameters(), bytes_per_token: bytes,
            prefill_tokens_per_s: (batch * prompt_len) as f64 / prefill, tokens_per_s: tps, read_bandwidth_gb_s: bw,
            bandwidth_bound_tokens_per_s: bound, share_of_bound: tps / bound,
        })
    })
}
