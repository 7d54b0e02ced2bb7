//! alignflow's tables: the Arrow schemas every stage agrees on, Parquet and JSONL IO with
//! errors that name the file, line, table and column, canonical row hashes for memoisation,
//! and the assistant world (../shared/docs/assistant-world.md): a deterministic, seeded
//! generator of prompts, demonstrations and pretraining text, its gold judges and its
//! simulated annotators. This crate knows nothing of models, TOML or the runtime.

pub mod annotate;
pub mod error;
pub mod human;
pub mod judge;
pub mod schema;
pub mod table;
pub mod world;

pub use error::{DataError, Result};
