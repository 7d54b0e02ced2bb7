//! `alignflow import gguf FILE --out DIR`: a llama.cpp GGUF file (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1 tensors) becomes a Hugging Face layout directory with its tokenizer and chat template.
//! The work is in `kernels::gguf`; this file parses arguments and prints a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use kernels::checkpoint::SaveDtype;

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Import a GGUF Llama (dequantized to f32, or bf16 with --dtype bf16).
    Gguf {
        /// The .gguf file.
        file: PathBuf,
        /// The model directory to write (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Element type of the written model.safetensors.
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

pub fn run(c: ImportCommand) -> anyhow::Result<ExitCode> {
    match c {
        ImportCommand::Gguf { file, out, dtype, json } => {
            let model = kernels::gguf::import(&file)?;
            let dtype = match dtype {
                DtypeArg::F32 => SaveDtype::F32,
                DtypeArg::Bf16 => SaveDtype::Bf16,
            };
            model.save(&out, dtype).with_context(|| format!("writing {}", out.display()))?;
            let c = &model.config;
            let params: usize = model.tensors.values().map(|t| t.data.len()).sum();
            let summary = serde_json::json!({
                "out": out.display().to_string(),
                "parameters": params,
                "layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size,
                "vocab_size": c.vocab_size,
                "tied_embeddings": c.tie_word_embeddings,
                "tokenizer": model.tokenizer.is_some(),
                "chat_template": model.chat.is_some(),
            });
            if json {
                println!("{summary}");
            } else {
                println!(
                    "imported {} -> {}: {} parameters, {} layers, hidden {}, vocab {}{}{}",
                    file.display(),
                    out.display(),
                    params,
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.vocab_size,
                    if model.tokenizer.is_some() { ", tokenizer" } else { "" },
                    if model.chat.is_some() { ", chat template" } else { "" },
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
