//! Training pieces shared by the training stages: examples with loss masks from any chat,
//! prompt/response, text or tokenized table (`examples`), packing with a separator and seeded
//! per-epoch shuffling (`packing`), and the loop over the engine's training step (gradient
//! accumulation, clipping, AdamW, warm-up + cosine) with progress, loss curve and resumable
//! checkpoints (`trainer`), data-parallel over the processes of a cluster run (`reduce`).

pub mod examples;
pub mod packing;
pub mod reduce;
pub mod trainer;

pub use examples::{examples_from_table, Columns, Example, LossMode};
pub use reduce::{GradPart, GradReduce, Local, OverCollective};
pub use trainer::{train, Schedule, write_loss_curve, LossPoint, RunOptions, TrainConfig, TrainError, TrainOutcome};
