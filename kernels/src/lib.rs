//! The compute engine: the Llama architecture with hand-written forward and backward passes,
//! a slow reference and a fast CPU version of every op, AdamW, KV-cache generation,
//! Hugging Face checkpoints, GGUF import, tokenizers and chat templates.
//!
//! Invariant: this crate never reads TOML or Parquet and knows nothing of pipelines.

pub mod config;
pub mod checkpoint;
pub mod tokenizer;
pub mod chat;
pub mod model_dir;
pub mod gguf;
pub mod device;
pub mod rng;
pub mod ops;
pub mod model;
pub mod generate;
mod decode_team;
pub mod optim;
pub mod schedule;
pub mod bench;
#[cfg(feature = "cuda")]
pub mod cuda;
