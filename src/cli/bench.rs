//! `alignflow bench train|generate`: the engine's speed next to the ceilings measured in the
//! same run (GEMM peak for training, memory bandwidth for decoding). Parsing and printing
//! only; the measurements live in `kernels::bench`.

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use kernels::bench::{bench_generate, bench_train, decode_shape, train_preset};
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
        /// mini (dim 128, 4 layers, T 128, batch 16) or small (dim 256, 6 layers, T 256, batch 8).
        #[arg(long)]
        preset: String,
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
        /// smollm2-135m, mini, small (random weights decode at the same speed).
        #[arg(long)]
        model: String,
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
        BenchCommand::Train { preset, steps, warmup, threads, json } => {
            let p = train_preset(&preset).with_context(|| format!("unknown preset `{preset}` (expected mini or small)"))?;
            let r = bench_train(&p, steps, warmup, threads)?;
            let v = serde_json::json!({
                "bench": "train", "preset": r.preset, "threads": r.threads, "steps": r.steps, "parameters": r.parameters,
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
        BenchCommand::Generate { model, batch, new_tokens, prompt_len, precision, threads, json } => {
            let m = load_model(&model)?;
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
