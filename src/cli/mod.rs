//! One module per group of commands, each owning its clap types and its printing.

pub mod annotate;
pub mod bench;
pub mod import;
pub mod model;
pub mod pipeline;
pub mod report;
