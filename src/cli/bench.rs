//! `alignflow bench train|generate`: the engine's speed next to the ceilings measured in the
//! same run (GEMM peak for training, memory bandwidth for decoding). Parsing and printing
//! only; the measurements live in `kernels::bench`.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use kernels::bench::{bench_generate, bench_train, decode_shape, train_preset};
use kernels::device::Device;
use kernels::generate::WeightPrecision;
use kernels::model::Llama;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time training steps (forward, cross-entropy, backward, clip, AdamW) on a preset shape.
    Train {
        /// mini (dim 128, 4 layers, T 128, batch 16), small (dim 256, 6 layers, T 256, batch 8)
        /// or 1b (dim 2048, 22 layers, T 1024, batch 16; for GPUs).
        #[arg(long)]
        preset: String,
        /// `cpu`, or `cuda[:N]` (a build with `--features cuda` and an NVIDIA GPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Rows per micro-batch on the GPU (gradient accumulation over the preset's batch).
        #[arg(long)]
        micro_batch: Option<usize>,
        /// CPU: row shards per step whose passes run concurrently (data parallelism inside
        /// the step; results depend on the shard count, not the thread count).
        #[arg(long, default_value_t = 2)]
        shards: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time batched greedy decoding with the KV cache.
    Generate {
        /// A model directory (config.json + safetensors), or `random:SHAPE` with SHAPE one of
        /// smollm2-135m, mini, small, 1b (random weights decode at the same speed).
        #[arg(long)]
        model: String,
        /// `cpu`, or `cuda[:N]` (bf16 weights on the GPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 16)]
        prompt_len: usize,
        /// Storage of the weights read while decoding.
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {
        BenchCommand::Train { preset, device, micro_batch, shards, steps, warmup, threads, json } => {
            let p = train_preset(&preset).with_context(|| format!("unknown preset `{preset}` (expected mini, small or 1b)"))?;
            let dev = Device::parse(&device)?;
            if !dev.is_cpu() {
                return gpu::train(&dev, &p, micro_batch.unwrap_or(p.batch), steps, warmup, json);
            }
            let r = bench_train(&p, steps, warmup, threads, shards)?;
            let v = serde_json::json!({
                "bench": "train", "preset": r.preset, "threads": r.threads, "shards": shards, "steps": r.steps, "parameters": r.parameters,
                "seconds_per_step": r.seconds_per_step, "tokens_per_s": r.tokens_per_s, "gflops": r.gflops,
                "gemm_peak_gflops": r.gemm_peak_gflops, "share_of_gemm_peak": r.share_of_gemm_peak, "final_loss": r.final_loss,
            });
            if json {
                println!("{v}");
            } else {
                println!("train {}: {:.0} tokens/s, {:.1} GFLOP/s = {:.0}% of the {:.1} GFLOP/s GEMM peak ({} threads, {:.1} ms/step)",
                    r.preset, r.tokens_per_s, r.gflops, 100.0 * r.share_of_gemm_peak, r.gemm_peak_gflops, r.threads, 1e3 * r.seconds_per_step);
            }
        }
        BenchCommand::Generate { model, device, batch, new_tokens, prompt_len, precision, threads, json } => {
            let dev = Device::parse(&device)?;
            let m = load_model(&model)?;
            if !dev.is_cpu() {
                return gpu::generate(&dev, &m, &model, batch, prompt_len, new_tokens, json);
            }
            let prec = match precision { Precision::F32 => WeightPrecision::F32, Precision::Bf16 => WeightPrecision::Bf16 };
            let r = bench_generate(&m, batch, prompt_len, new_tokens, prec, threads)?;
            let v = serde_json::json!({
                "bench": "generate", "model": model, "threads": r.threads, "batch": r.batch, "prompt_len": r.prompt_len,
                "new_tokens": r.new_tokens, "precision": match prec { WeightPrecision::F32 => "f32", WeightPrecision::Bf16 => "bf16" },
                "parameters": r.parameters, "bytes_per_token": r.bytes_per_token, "prefill_tokens_per_s": r.prefill_tokens_per_s,
                "tokens_per_s": r.tokens_per_s, "read_bandwidth_gb_s": r.read_bandwidth_gb_s,
                "bandwidth_bound_tokens_per_s": r.bandwidth_bound_tokens_per_s, "share_of_bound": r.share_of_bound,
            });
            if json {
                println!("{v}");
            } else {
                println!("generate {model} batch {}: {:.1} tokens/s = {:.0}% of the {:.1} tokens/s bandwidth bound ({:.1} GB/s, {:.1} MB/token)",
                    r.batch, r.tokens_per_s, 100.0 * r.share_of_bound, r.bandwidth_bound_tokens_per_s, r.read_bandwidth_gb_s, r.bytes_per_token as f64 / 1e6);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_model(spec: &str) -> anyhow::Result<Llama> {
    if let Some(shape) = spec.strip_prefix("random:") {
        let c = decode_shape(shape).with_context(|| format!("unknown shape `{shape}` (expected smollm2-135m, mini or small)"))?;
        return Ok(Llama::new_random(c, 0));
    }
    let dir = PathBuf::from(spec);
    let config = kernels::config::LlamaConfig::from_file(&dir)?;
    let tensors = kernels::checkpoint::load_tensors(&dir).with_context(|| format!("loading weights from {}", dir.display()))?;
    Ok(Llama::from_tensors(config, &tensors).with_context(|| format!("building the model from {}", dir.display()))?)
}

/// The GPU benchmarks (feature `cuda`); without it, [`Device::parse`] has already refused
/// `cuda` with a message saying how to build with CUDA.
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use kernels::bench::TrainPreset;

    fn handle(dev: &Device) -> anyhow::Result<std::sync::Arc<kernels::cuda::Gpu>> {
        match dev {
            Device::Cuda(d) => Ok(d.gpu().clone()),
            Device::Cpu => anyhow::bail!("not a CUDA device"),
        }
    }

    pub fn train(dev: &Device, p: &TrainPreset, micro: usize, steps: usize, warmup: usize, json: bool) -> anyhow::Result<ExitCode> {
        let g = handle(dev)?;
        let r = kernels::cuda::bench::bench_train(&g, &p.config, p.seq_len, p.batch, micro, steps, warmup)?;
        let mut v = serde_json::to_value(&r)?;
        v["bench"] = "train".into();
        v["preset"] = p.name.into();
        v["gflops"] = (r.tflops * 1e3).into();
        v["gemm_peak_gflops"] = (r.gemm_peak_tflops * 1e3).into();
        if json {
            println!("{v}");
        } else {
            println!("train {} on {}: {:.0} tokens/s, {:.1} TFLOP/s = {:.0}% of the {:.0} TFLOP/s measured bf16 product peak{} ({:.1} ms/step, {:.1} GB in use)",
                p.name, r.device, r.tokens_per_s, r.tflops, 100.0 * r.share_of_gemm_peak, r.gemm_peak_tflops,
                r.mfu.map(|m| format!(", MFU {:.1}% of {:.0}", 100.0 * m, r.datasheet_peak_tflops.unwrap_or(0.0))).unwrap_or_default(),
                1e3 * r.seconds_per_step, r.peak_memory_gb);
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn generate(dev: &Device, m: &Llama, model: &str, batch: usize, prompt_len: usize, new_tokens: usize, json: bool) -> anyhow::Result<ExitCode> {
        let g = handle(dev)?;
        let r = kernels::cuda::bench::bench_generate(&g, m, batch, prompt_len, new_tokens)?;
        let mut v = serde_json::to_value(&r)?;
        v["bench"] = "generate".into();
        v["model"] = model.into();
        v["precision"] = "bf16".into();
        if json {
            println!("{v}");
        } else {
            println!("generate {model} on {} batch {}: {:.0} tokens/s = {:.0}% of the {:.0} tokens/s bandwidth bound ({:.0} GB/s copy)",
                r.device, r.batch, r.tokens_per_s, 100.0 * r.share_of_bound, r.bandwidth_bound_tokens_per_s, r.copy_bandwidth_gb_s);
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use super::*;
    use kernels::bench::TrainPreset;

    pub fn train(dev: &Device, _: &TrainPreset, _: usize, _: usize, _: usize, _: bool) -> anyhow::Result<ExitCode> {
        anyhow::bail!("{} needs a build with `--features cuda`", dev.name())
    }

    pub fn generate(dev: &Device, _: &Llama, _: &str, _: usize, _: usize, _: usize, _: bool) -> anyhow::Result<ExitCode> {
        anyhow::bail!("{} needs a build with `--features cuda`", dev.name())
    }
}
