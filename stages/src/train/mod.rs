//! Training pieces shared by the training stages: examples with loss masks from any chat,
//! prompt/response, text or tokenized table (`examples`), packing with a separator and seeded
//! per-epoch shuffling (`packing`), AdamW and learning-rate schedules (`optim`), and the loop
//! with gradient accumulation, clipping, progress, loss curve and resumable checkpoints
//! (`trainer`).

pub mod examples;
pub mod optim;
pub mod packing;
pub mod trainer;

pub use examples::{examples_from_table, Columns, Example, LossMode};
pub use optim::Schedule;
pub use trainer::{train, write_loss_curve, LossPoint, RunOptions, TrainConfig, TrainError, TrainOutcome};
