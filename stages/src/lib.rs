//! alignflow's stage kinds, one file each, and the registry that lists them. Only this crate
//! knows what a stage means: it joins the graph's stage contract to the data (`datasets`) and
//! the engine (`kernels`). Also the CLI's helpers that need those crates: progress display,
//! `show` rendering, and the generated stage reference.

mod common;
mod dialogue;

pub mod assistant_world;
pub mod collect_preferences;
pub mod docs;
pub mod eval;
pub mod eval_dialogue;
pub mod gatt;
pub mod human_preferences;
pub mod jsonl;
pub mod onnx_annotate;
pub mod onnx_judge;
pub mod parquet;
pub mod source;
pub mod ppo;
pub mod progress;
pub mod registry;
pub mod rejection_sample;
pub mod report;
pub mod rlhf;
pub mod sft;
pub mod show;
pub mod tokenize;
pub mod train;
pub mod train_reward;
pub mod train_tokenizer;

pub use registry::registry;
