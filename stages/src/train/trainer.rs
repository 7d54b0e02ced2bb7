//! The training loop shared by the `sft` stage (both modes) and later training stages: packed
//! rows → micro-batches → gradient accumulation → clipping → AdamW with warm-up and a
//! cosine/constant schedule; a progress display with the running loss; a loss curve; and
//! checkpoints every N steps from which a killed run resumes with bit-identical final weights.
//!
//! Step s (0-based) reads rows [s·B·A, (s+1)·B·A) of the endless row stream "epoch 0's packed
//! rows, then epoch 1's, ..." (B = batch size, A = gradient accumulation), so a step's data
//! depends only on s and the seed. The loss of a step is the mean cross-entropy over every
//! scored token of its A micro-batches: each micro-batch's tokens are weighted 1 / (scored
//! tokens of the whole step), so accumulation gives exactly the large-batch gradient.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kernels::checkpoint::{load_tensors, save_tensors, SaveDtype, TensorMap};
use kernels::device::{Device, LmTrainer};
use kernels::model::Llama;
use kernels::optim::{mean_ce_micro_batches, AdamW, AdamWConfig, LmMicroBatch};

use super::examples::Example;
use super::packing::{pack_epoch, PackedRow};
use super::reduce::{GradPart, GradReduce, Local};

/// The shape of the learning-rate curve after the linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Cosine from the peak down to `min_lr_ratio` × peak at the last step (Llama 2: 0.1).
    Cosine { min_lr_ratio: f32 },
    Constant,
}

impl Schedule {
    /// The engine's schedule for a run of `total` steps.
    fn engine(self, warmup: usize, total: usize) -> kernels::schedule::Schedule {
        match self {
            Schedule::Cosine { min_lr_ratio } => kernels::schedule::Schedule::Cosine { warmup_steps: warmup as u64, total_steps: total as u64, floor: min_lr_ratio },
            Schedule::Constant => kernels::schedule::Schedule::Constant { warmup_steps: warmup as u64 },
        }
    }
}

/// Everything that changes the result of a training run. No `Default`: every field is a
/// decision of the caller (the stage's parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Whole passes over the data; used when `max_steps` is 0.
    pub epochs: usize,
    /// Optimiser steps; 0 = as many as `epochs` needs.
    pub max_steps: usize,
    pub lr: f32,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 = none.
    pub clip: f32,
    pub seed: u64,
    /// Appended after an example that does not end with it (usually EOS).
    pub separator: Option<u32>,
    /// Each micro-batch's rows are split into this many contiguous shards whose forward and
    /// backward passes run concurrently; their gradients are summed in shard order. The result
    /// depends on this number (float summation order), never on the thread count.
    pub shards: usize,
}

impl TrainConfig {
    /// A stable text of the configuration (part of the checkpoint key).
    fn canonical(&self) -> String {
        format!("{self:?}")
    }
}

/// How to run: outside the result-changing configuration.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where to write and look for checkpoints; `None` disables both.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint after every this many steps (0 = never).
    pub checkpoint_every: usize,
    /// Stop (as if killed) after this many steps in this call, without a final checkpoint:
    /// for tests of resuming.
    pub stop_after: Option<usize>,
    /// Shown in front of progress lines.
    pub label: String,
    /// Show progress on stderr.
    pub progress: bool,
    /// Data parallelism: which step parts this process computes and how gradients meet
    /// ([`Local`] for one process). Never changes the result.
    pub reduce: Arc<dyn GradReduce>,
    /// Where the steps run: the CPU engine, or a GPU (model and optimiser kept on the device,
    /// copied back for checkpoints and at the end). GPU results agree with the CPU's within
    /// bf16 rounding, not bitwise. Data-parallel runs (several processes) are CPU-only.
    pub device: Device,
}

impl RunOptions {
    /// One process on the CPU, no checkpoints, no progress display.
    pub fn quiet(label: &str) -> RunOptions {
        RunOptions { checkpoint_dir: None, checkpoint_every: 0, stop_after: None, label: label.to_string(), progress: false, reduce: Arc::new(Local), device: Device::Cpu }
    }
}

/// One point of the loss curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossPoint {
    /// 1-based: the loss of the step that made the model `step` updates old.
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    /// Tokens that carried loss in this step.
    pub scored_tokens: usize,
}

/// What a training call did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub curve: Vec<LossPoint>,
    pub total_steps: usize,
    /// Steps done when the call returned (= total_steps unless stopped early).
    pub steps_done: usize,
    /// The step this call started from (0, or the step of the checkpoint it resumed).
    pub resumed_from: usize,
    pub rows_per_epoch: usize,
}

/// Errors of the loop; each says what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training configuration: {0}")]
    Config(String),
    #[error("no training data: {0}")]
    NoData(String),
    #[error("step {step}: {source}")]
    Model { step: usize, source: kernels::model::ModelError },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("step {step}: the loss is not finite ({loss})")]
    Diverged { step: usize, loss: f32 },
    #[error("step {step}: {source}")]
    Reduce { step: usize, source: super::reduce::ReduceError },
    #[error("{0}")]
    Device(String),
}

/// The row stream of a run: epoch e's packed rows, computed when first needed.
struct RowStream<'a> {
    examples: &'a [Example],
    cfg: &'a TrainConfig,
    rows_per_epoch: usize,
    cached: Option<(u64, Vec<PackedRow>)>,
}

impl<'a> RowStream<'a> {
    fn new(examples: &'a [Example], cfg: &'a TrainConfig) -> Self {
        let first = pack_epoch(examples, cfg.seq_len, cfg.separator, cfg.seed, 0);
        RowStream { examples, cfg, rows_per_epoch: first.len(), cached: Some((0, first)) }
    }

    fn row(&mut self, i: usize) -> PackedRow {
        let epoch = (i / self.rows_per_epoch) as u64;
        if self.cached.as_ref().map(|c| c.0) != Some(epoch) {
            self.cached = Some((epoch, pack_epoch(self.examples, self.cfg.seq_len, self.cfg.separator, self.cfg.seed, epoch)));
        }
        self.cached.as_ref().expect("just filled").1[i % self.rows_per_epoch].clone()
    }
}

/// Number of optimiser steps the configuration asks for, given the rows in one epoch.
pub fn total_steps(cfg: &TrainConfig, rows_per_epoch: usize) -> usize {
    if cfg.max_steps > 0 {
        return cfg.max_steps;
    }
    let per_step = cfg.batch_size * cfg.grad_accum;
    (cfg.epochs * rows_per_epoch).div_ceil(per_step)
}

fn check(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |m: &str| Err(TrainError::Config(m.into()));
    if cfg.seq_len < 2 {
        return bad("seq_len must be at least 2");
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return bad("batch_size and grad_accum must be at least 1");
    }
    if cfg.max_steps == 0 && cfg.epochs == 0 {
        return bad("give epochs or max_steps");
    }
    if cfg.shards == 0 {
        return bad("shards must be at least 1");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return bad("lr must be positive");
    }
    Ok(())
}

/// Trains `model` in place on `examples`. With a checkpoint directory, resumes from the newest
/// checkpoint made by the same configuration, data and initial model shape.
pub fn train(model: &mut Llama, examples: &[Example], cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainOutcome, TrainError> {
    check(cfg)?;
    if examples.iter().all(|e| e.ids.len() + usize::from(cfg.separator.is_some()) < 2) {
        return Err(TrainError::NoData(format!("{} examples with no token to predict", examples.len())));
    }
    let mut stream = RowStream::new(examples, cfg);
    if stream.rows_per_epoch == 0 {
        return Err(TrainError::NoData("packing produced no rows".into()));
    }
    let total = total_steps(cfg, stream.rows_per_epoch);
    let key = run_key(model, examples, cfg);
    let mut opt = AdamW::new(AdamWConfig::llama2(cfg.weight_decay), model);
    let schedule = cfg.schedule.engine(cfg.warmup_steps, total);
    let mut curve = Vec::with_capacity(total);
    let mut start = 0;
    if let Some(dir) = &opts.checkpoint_dir {
        if let Some(ck) = newest_checkpoint(dir, &key)? {
            start = restore(&ck, model, &mut opt, &mut curve)?;
        }
    }
    // Data-parallel processes must resume from the same checkpoint (they read a shared scratch
    // directory); anything else would mix steps.
    opts.reduce.agree("the step training resumes from", start as u64).map_err(|source| TrainError::Reduce { step: start, source })?;
    if !opts.device.is_cpu() && opts.reduce.processes() > 1 {
        return Err(TrainError::Device(format!(
            "data-parallel training over {} processes runs on CPUs only (the GPU all-reduce through NCCL is not built); run it without GPUs",
            opts.reduce.processes()
        )));
    }
    let mut trainer = LmTrainer::new(&opts.device, model, &opt).map_err(|source| TrainError::Model { step: start, source })?;
    let mut progress = Progress::new(&opts.label, total, start, opts.progress);
    let per_step = cfg.batch_size * cfg.grad_accum;
    for step in start..total {
        if opts.stop_after.is_some_and(|k| step - start >= k) {
            trainer.sync(model, &mut opt).map_err(|source| TrainError::Model { step, source })?;
            progress.finish();
            return Ok(TrainOutcome { curve, total_steps: total, steps_done: step, resumed_from: start, rows_per_epoch: stream.rows_per_epoch });
        }
        let rows: Vec<PackedRow> = (step * per_step..(step + 1) * per_step).map(|i| stream.row(i)).collect();
        let lr = schedule.lr(cfg.lr, step as u64);
        let point = one_step(&mut trainer, model, &mut opt, &rows, cfg, step, lr, opts.reduce.as_ref())?;
        progress.step(&point);
        curve.push(point);
        let done = step + 1;
        if let Some(dir) = &opts.checkpoint_dir {
            if opts.reduce.writer() && opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0 && done < total {
                trainer.sync(model, &mut opt).map_err(|source| TrainError::Model { step: done, source })?;
                save_checkpoint(dir, done, &key, model, &opt, &curve)?;
            }
        }
    }
    trainer.sync(model, &mut opt).map_err(|source| TrainError::Model { step: total, source })?;
    progress.finish();
    Ok(TrainOutcome { curve, total_steps: total, steps_done: total, resumed_from: start, rows_per_epoch: stream.rows_per_epoch })
}

/// Forward and backward over the step's micro-batches (the engine's step: mean
/// cross-entropy over the whole step, clipping, AdamW).
#[allow(clippy::too_many_arguments)]
fn one_step(trainer: &mut LmTrainer, model: &mut Llama, opt: &mut AdamW, rows: &[PackedRow], cfg: &TrainConfig, step: usize, lr: f32, reduce: &dyn GradReduce) -> Result<LossPoint, TrainError> {
    let scored: usize = rows.iter().map(PackedRow::scored).sum();
    let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
    let targets: Vec<Vec<i32>> = rows.iter().map(|r| r.targets.clone()).collect();
    let micro = mean_ce_micro_batches(&ids, &targets, cfg.batch_size);
    let clip = (cfg.clip > 0.0).then_some(cfg.clip);
    let r = if reduce.processes() > 1 {
        data_parallel_step(model, opt, &micro, cfg.shards, lr, clip, reduce, step)?
    } else {
        trainer.step(model, opt, &micro, lr, clip, cfg.shards).map_err(|source| TrainError::Model { step, source })?
    };
    if !r.loss.is_finite() {
        return Err(TrainError::Diverged { step, loss: r.loss });
    }
    Ok(LossPoint { step: step + 1, loss: r.loss, lr, grad_norm: r.grad_norm, scored_tokens: scored })
}

// One process: `LmTrainer::step`. On the CPU that is the engine's language-model step with
// each micro-batch split into `shards` row shards whose passes run concurrently
// (`kernels::optim::lm_train_step_sharded`; one shard is exactly the engine's plain step).
// Several shards keep both cores busy where one pass cannot: on 2 cores the engine's single
// pass of 8 × 128 tokens used about 1.6 of them (BENCHMARKS-pipeline.md).

/// The one-process CPU step over the processes of a cluster run: each process computes the
/// step parts it owns (concurrently on its threads), the parts are all-gathered, and every
/// process adds all of them in part order and takes the same AdamW step: the same float
/// operations in the same order as `lm_train_step_sharded` on one process, so the weights are
/// bit-identical.
#[allow(clippy::too_many_arguments)]
fn data_parallel_step(model: &mut Llama, opt: &mut AdamW, micro: &[LmMicroBatch], shards: usize, lr: f32, clip: Option<f32>, reduce: &dyn GradReduce, step: usize) -> Result<kernels::optim::StepReport, TrainError> {
    let parts = kernels::optim::lm_step_parts(micro, shards);
    let which: Vec<usize> = (0..parts.len()).filter(|j| reduce.owns(*j)).collect();
    let mine = kernels::optim::lm_part_grads(model, micro, &parts, &which).map_err(|source| TrainError::Model { step, source })?;
    let mine: Vec<GradPart> = which.into_iter().zip(mine).map(|(index, (loss, grads))| GradPart::new(index, loss, grads)).collect();
    let all = reduce.gather(mine, parts.len()).map_err(|source| TrainError::Reduce { step, source })?;
    let tokens = micro.iter().map(|mb| mb.rows.iter().map(|r| r.len()).sum::<usize>()).sum();
    kernels::optim::lm_apply_parts(model, opt, all.iter().map(|p| (p.loss, &p.grads)), tokens, lr, clip).map_err(|source| TrainError::Model { step, source })
}

/// blake3 over what a checkpoint's validity depends on: the configuration, the examples and
/// the initial weights. A checkpoint from another run is never resumed.
fn run_key(model: &Llama, examples: &[Example], cfg: &TrainConfig) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cfg.canonical().as_bytes());
    h.update(format!("{:?}", model.config).as_bytes());
    for p in model.params() {
        h.update(&f32_bytes(p));
    }
    h.update(&(examples.len() as u64).to_le_bytes());
    for e in examples {
        h.update(&(e.ids.len() as u64).to_le_bytes());
        for (id, m) in e.ids.iter().zip(&e.mask) {
            h.update(&id.to_le_bytes());
            h.update(&[*m as u8]);
        }
    }
    h.finalize().to_hex().to_string()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Checkpoint file names inside a checkpoint directory `ckpt-<step>`.
const STATE_FILE: &str = "state.json";
const TENSORS_FILE: &str = "state.safetensors";

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    key: String,
    step: usize,
    curve: Vec<LossPoint>,
}

fn ck_err(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), message: message.to_string() }
}

/// Writes `dir/ckpt-<step>` atomically (a temp directory renamed into place, the state file
/// written last inside it) and removes older checkpoints.
pub fn save_checkpoint(dir: &Path, step: usize, key: &str, model: &Llama, opt: &AdamW, curve: &[LossPoint]) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| ck_err(dir, e))?;
    let final_dir = dir.join(format!("ckpt-{step:09}"));
    let tmp = dir.join(format!(".ckpt-{step:09}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ck_err(&tmp, e))?;
    // Weights under their Hugging Face names, the optimiser state under `adamw.*`.
    let mut tensors: TensorMap = model.to_tensors();
    tensors.extend(opt.to_tensors(model));
    save_tensors(&tmp.join(TENSORS_FILE), &tensors, SaveDtype::F32).map_err(|e| ck_err(&tmp, e))?;
    let state = CheckpointState { key: key.to_string(), step, curve: curve.to_vec() };
    let text = serde_json::to_vec(&state).map_err(|e| ck_err(&tmp, e))?;
    kernels::checkpoint::write_atomic(&tmp.join(STATE_FILE), &text).map_err(|e| ck_err(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|e| ck_err(&final_dir, e))?;
    for old in checkpoint_dirs(dir)? {
        if old.0 < step {
            let _ = std::fs::remove_dir_all(&old.1);
        }
    }
    Ok(())
}

/// `ckpt-<step>` directories of `dir` with their step, sorted by step.
fn checkpoint_dirs(dir: &Path) -> Result<Vec<(usize, PathBuf)>, TrainError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut v: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("ckpt-")?.parse::<usize>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The newest complete checkpoint of this run (same key), if any.
fn newest_checkpoint(dir: &Path, key: &str) -> Result<Option<PathBuf>, TrainError> {
    for (_, path) in checkpoint_dirs(dir)?.into_iter().rev() {
        let Ok(text) = std::fs::read(path.join(STATE_FILE)) else { continue };
        let Ok(state) = serde_json::from_slice::<CheckpointState>(&text) else { continue };
        if state.key == key && path.join(TENSORS_FILE).is_file() {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Loads a checkpoint into the model and optimiser; returns its step.
fn restore(path: &Path, model: &mut Llama, opt: &mut AdamW, curve: &mut Vec<LossPoint>) -> Result<usize, TrainError> {
    let text = std::fs::read(path.join(STATE_FILE)).map_err(|e| ck_err(path, e))?;
    let state: CheckpointState = serde_json::from_slice(&text).map_err(|e| ck_err(path, e))?;
    let mut tensors = load_tensors(&path.join(TENSORS_FILE)).map_err(|e| ck_err(path, e))?;
    *opt = AdamW::from_tensors(opt.config.clone(), model, &tensors).map_err(|e| ck_err(path, e))?;
    tensors.retain(|name, _| !name.starts_with("adamw."));
    *model = Llama::from_tensors(model.config.clone(), &tensors).map_err(|e| ck_err(path, e))?;
    *curve = state.curve;
    Ok(state.step)
}

/// The running-loss display: an indicatif bar on a terminal, a plain line every ~5% otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    label: String,
    total: usize,
    ema: Option<f32>,
}

impl Progress {
    fn new(label: &str, total: usize, start: usize, enabled: bool) -> Progress {
        let tty = enabled && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_prefix(label.to_string());
            b.set_position(start as u64);
            b
        });
        if enabled && !tty && start > 0 {
            eprintln!("{label}: resuming at step {start}/{total}");
        }
        Progress { bar, plain: enabled && !tty, label: label.to_string(), total, ema: None }
    }

    fn step(&mut self, p: &LossPoint) {
        let ema = match self.ema {
            None => p.loss,
            Some(e) => 0.95 * e + 0.05 * p.loss,
        };
        self.ema = Some(ema);
        if let Some(b) = &self.bar {
            b.set_position(p.step as u64);
            b.set_message(format!("loss {ema:.4} lr {:.2e}", p.lr));
        } else if self.plain {
            let every = (self.total / 20).max(1);
            if p.step % every == 0 || p.step == self.total {
                eprintln!("{}: step {}/{} loss {ema:.4} lr {:.2e}", self.label, p.step, self.total, p.lr);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Writes `loss_curve.json` and `loss_curve.csv` into `dir`.
pub fn write_loss_curve(dir: &Path, curve: &[LossPoint]) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(curve).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("loss_curve.json"), json)?;
    let mut csv = String::from("step,loss,lr,grad_norm,scored_tokens\n");
    for p in curve {
        csv.push_str(&format!("{},{},{},{},{}\n", p.step, p.loss, p.lr, p.grad_norm, p.scored_tokens));
    }
    std::fs::write(dir.join("loss_curve.csv"), csv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::config::{Head, LlamaConfig};

    fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 32,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
            head: Head::LanguageModel,
        }
    }

    /// Examples of a little counting language: BOS, k, k+1, ..., EOS; loss on the numbers.
    fn examples() -> Vec<Example> {
        (0..24)
            .map(|i| {
                let start = 3 + (i % 10) as u32;
                let mut ids = vec![1];
                ids.extend((0..(4 + i % 5) as u32).map(|k| 3 + (start + k - 3) % 29));
                ids.push(2);
                let mut mask = vec![true; ids.len()];
                mask[0] = false;
                mask[1] = false;
                Example { ids, mask }
            })
            .collect()
    }

    fn config(max_steps: usize) -> TrainConfig {
        TrainConfig {
            seq_len: 16,
            batch_size: 2,
            grad_accum: 2,
            epochs: 1,
            max_steps,
            lr: 1e-2,
            warmup_steps: 2,
            schedule: Schedule::Cosine { min_lr_ratio: 0.1 },
            weight_decay: 0.1,
            clip: 1.0,
            seed: 7,
            separator: Some(2),
            shards: 1,
        }
    }

    fn opts(dir: Option<&Path>, stop_after: Option<usize>) -> RunOptions {
        RunOptions { checkpoint_dir: dir.map(Path::to_path_buf), checkpoint_every: 2, stop_after, label: "test".into(), progress: false, reduce: Arc::new(Local), device: Device::Cpu }
    }

    #[test]
    fn loss_goes_down() {
        let mut model = Llama::new_random(tiny_config(), 3);
        let out = train(&mut model, &examples(), &config(40), &opts(None, None)).unwrap();
        assert_eq!(out.curve.len(), 40);
        let first: f32 = out.curve[..5].iter().map(|p| p.loss).sum::<f32>() / 5.0;
        let last: f32 = out.curve[35..].iter().map(|p| p.loss).sum::<f32>() / 5.0;
        assert!(last < 0.7 * first, "loss {first} -> {last}");
    }

    #[test]
    fn epochs_set_the_step_count() {
        let mut cfg = config(0);
        cfg.epochs = 2;
        let mut model = Llama::new_random(tiny_config(), 3);
        let out = train(&mut model, &examples(), &cfg, &opts(None, None)).unwrap();
        assert_eq!(out.total_steps, (2 * out.rows_per_epoch).div_ceil(4));
        assert_eq!(out.curve.len(), out.total_steps);
    }

    /// One shard is exactly the engine's step; two shards give the same step up to float
    /// summation order, and the same result whatever the thread count.
    #[test]
    fn sharded_step_matches_the_engine_step() {
        let ex = examples();
        let rows = super::super::packing::pack_epoch(&ex, 16, Some(2), 7, 0);
        let ids: Vec<Vec<u32>> = rows[..4].iter().map(|r| r.ids.clone()).collect();
        let targets: Vec<Vec<i32>> = rows[..4].iter().map(|r| r.targets.clone()).collect();
        let micro = mean_ce_micro_batches(&ids, &targets, 2);
        let run = |shards: usize| {
            let mut model = Llama::new_random(tiny_config(), 3);
            let mut opt = AdamW::new(AdamWConfig::llama2(0.1), &model);
            let mut t = LmTrainer::new(&Device::Cpu, &model, &opt).unwrap();
            let r = t.step(&mut model, &mut opt, &micro, 1e-2, Some(1.0), shards).unwrap();
            (r, model.params().iter().map(|p| p.to_vec()).collect::<Vec<_>>())
        };
        let mut model = Llama::new_random(tiny_config(), 3);
        let mut opt = AdamW::new(AdamWConfig::llama2(0.1), &model);
        let engine = kernels::optim::lm_train_step(&mut model, &mut opt, &micro, 1e-2, Some(1.0)).unwrap();
        let engine_params: Vec<Vec<f32>> = model.params().iter().map(|p| p.to_vec()).collect();
        let (one, one_params) = run(1);
        assert_eq!(one, engine);
        assert_eq!(one_params, engine_params);
        let (two, two_params) = run(2);
        assert!((two.loss - engine.loss).abs() < 1e-5 * engine.loss.abs().max(1.0), "{} vs {}", two.loss, engine.loss);
        assert!((two.grad_norm - engine.grad_norm).abs() < 1e-4 * engine.grad_norm.max(1.0));
        for (a, b) in two_params.iter().flatten().zip(engine_params.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // The same on one thread: shards, not threads, decide the numbers.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (two_1t, two_1t_params) = pool.install(|| run(2));
        assert_eq!(two_1t, two);
        assert_eq!(two_1t_params, two_params);
    }

    /// Two "processes" (threads joined by an in-memory all-gather) training data-parallel end
    /// with weights and curves bit-identical to one process with the same shards.
    #[test]
    fn data_parallel_processes_match_one_process_bit_for_bit() {
        let cfg = TrainConfig { shards: 3, ..config(6) };
        let mut one = Llama::new_random(tiny_config(), 3);
        let single = train(&mut one, &examples(), &cfg, &opts(None, None)).unwrap();
        let runs: Vec<(Vec<Vec<f32>>, Vec<LossPoint>)> = std::thread::scope(|s| {
            let hs: Vec<_> = super::super::reduce::testing::processes(2)
                .into_iter()
                .map(|reduce| {
                    let cfg = cfg.clone();
                    s.spawn(move || {
                        let o = RunOptions { reduce, ..opts(None, None) };
                        let mut m = Llama::new_random(tiny_config(), 3);
                        let out = train(&mut m, &examples(), &cfg, &o).unwrap();
                        (m.params().iter().map(|t| t.to_vec()).collect(), out.curve)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let one_params: Vec<Vec<f32>> = one.params().iter().map(|t| t.to_vec()).collect();
        for (params, curve) in &runs {
            assert_eq!(params, &one_params, "data-parallel weights differ from one process");
            assert_eq!(curve, &single.curve);
        }
    }

    /// Issue 4: a run killed midway and resumed from its newest checkpoint ends with weights
    /// bit-identical to an uninterrupted run.
    #[test]
    fn resume_after_a_kill_gives_bit_identical_weights() {
        let d = tempfile::tempdir().unwrap();
        let cfg = TrainConfig { shards: 2, ..config(9) };
        let mut straight = Llama::new_random(tiny_config(), 3);
        let full = train(&mut straight, &examples(), &cfg, &opts(None, None)).unwrap();

        let mut killed = Llama::new_random(tiny_config(), 3);
        let first = train(&mut killed, &examples(), &cfg, &opts(Some(d.path()), Some(5))).unwrap();
        assert_eq!(first.steps_done, 5);
        // The "process" dies here: the in-memory model is lost; only checkpoint 4 survives.
        let mut resumed = Llama::new_random(tiny_config(), 3);
        let second = train(&mut resumed, &examples(), &cfg, &opts(Some(d.path()), None)).unwrap();
        assert_eq!(second.resumed_from, 4);
        assert_eq!(second.steps_done, 9);
        assert_eq!(resumed.params(), straight.params(), "resumed weights differ from the uninterrupted run");
        assert_eq!(second.curve, full.curve);
    }

    #[test]
    fn a_checkpoint_of_another_run_is_not_resumed() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Llama::new_random(tiny_config(), 3);
        train(&mut a, &examples(), &config(9), &opts(Some(d.path()), Some(5))).unwrap();
        let mut cfg = config(9);
        cfg.lr = 5e-3;
        let mut b = Llama::new_random(tiny_config(), 3);
        let out = train(&mut b, &examples(), &cfg, &opts(Some(d.path()), None)).unwrap();
        assert_eq!(out.resumed_from, 0);
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        let mut model = Llama::new_random(tiny_config(), 3);
        let mut cfg = config(3);
        cfg.batch_size = 0;
        assert!(matches!(train(&mut model, &examples(), &cfg, &opts(None, None)), Err(TrainError::Config(_))));
        let mut cfg = config(3);
        cfg.seq_len = 1;
        assert!(matches!(train(&mut model, &examples(), &cfg, &opts(None, None)), Err(TrainError::Config(_))));
        assert!(matches!(train(&mut model, &[], &config(3), &opts(None, None)), Err(TrainError::NoData(_))));
    }
}
