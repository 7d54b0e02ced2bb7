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

use kernels::checkpoint::{load_tensors, save_tensors, HostTensor, SaveDtype, TensorMap};
use kernels::model::{Grads, Llama};

use super::examples::Example;
use super::optim::{clip_global_norm, lr_at, AdamW, AdamWConfig, Schedule};
use super::packing::{pack_epoch, PackedRow};

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
    pub lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 = none.
    pub clip: f64,
    pub seed: u64,
    /// Appended after an example that does not end with it (usually EOS).
    pub separator: Option<u32>,
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
}

/// One point of the loss curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossPoint {
    /// 1-based: the loss of the step that made the model `step` updates old.
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
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
    let mut opt = AdamW::new(model, AdamWConfig::llama2(cfg.weight_decay));
    let mut curve = Vec::with_capacity(total);
    let mut start = 0;
    if let Some(dir) = &opts.checkpoint_dir {
        if let Some(ck) = newest_checkpoint(dir, &key)? {
            start = restore(&ck, model, &mut opt, &mut curve)?;
        }
    }
    let mut progress = Progress::new(&opts.label, total, start, opts.progress);
    let per_step = cfg.batch_size * cfg.grad_accum;
    for step in start..total {
        if opts.stop_after.is_some_and(|k| step - start >= k) {
            progress.finish();
            return Ok(TrainOutcome { curve, total_steps: total, steps_done: step, resumed_from: start, rows_per_epoch: stream.rows_per_epoch });
        }
        let rows: Vec<PackedRow> = (step * per_step..(step + 1) * per_step).map(|i| stream.row(i)).collect();
        let lr = lr_at(step, total, cfg.warmup_steps, cfg.lr, cfg.schedule);
        let point = one_step(model, &mut opt, &rows, cfg, step, lr)?;
        progress.step(&point);
        curve.push(point);
        let done = step + 1;
        if let Some(dir) = &opts.checkpoint_dir {
            if opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0 && done < total {
                save_checkpoint(dir, done, &key, model, &opt, &curve)?;
            }
        }
    }
    progress.finish();
    Ok(TrainOutcome { curve, total_steps: total, steps_done: total, resumed_from: start, rows_per_epoch: stream.rows_per_epoch })
}

/// Forward and backward over the step's micro-batches, clip, update.
fn one_step(model: &mut Llama, opt: &mut AdamW, rows: &[PackedRow], cfg: &TrainConfig, step: usize, lr: f64) -> Result<LossPoint, TrainError> {
    let scored: usize = rows.iter().map(PackedRow::scored).sum();
    let w = if scored == 0 { 0.0 } else { 1.0 / scored as f32 };
    let mut grads = Grads::zeros(model);
    let mut loss = 0.0f64;
    for micro in rows.chunks(cfg.batch_size) {
        let ids: Vec<Vec<u32>> = micro.iter().map(|r| r.ids.clone()).collect();
        let targets: Vec<Vec<i32>> = micro.iter().map(|r| r.targets.clone()).collect();
        let weights: Vec<Vec<f32>> = micro.iter().map(|r| vec![w; r.ids.len()]).collect();
        let (l, g) = model.weighted_nll_grads(&ids, &targets, &weights).map_err(|source| TrainError::Model { step, source })?;
        loss += l as f64;
        grads.add_assign(&g);
    }
    let loss = loss as f32;
    if !loss.is_finite() {
        return Err(TrainError::Diverged { step, loss });
    }
    let grad_norm = clip_global_norm(&mut grads, cfg.clip);
    opt.update(model, &grads, lr);
    Ok(LossPoint { step: step + 1, loss, lr, grad_norm, scored_tokens: scored })
}

/// blake3 over what a checkpoint's validity depends on: the configuration, the examples and
/// the initial weights. A checkpoint from another run is never resumed.
fn run_key(model: &Llama, examples: &[Example], cfg: &TrainConfig) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cfg.canonical().as_bytes());
    h.update(format!("{:?}", model.config).as_bytes());
    for p in model.params() {
        h.update(bytemuck_f32(p));
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

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Checkpoint file names inside a checkpoint directory `ckpt-<step>`.
const STATE_FILE: &str = "state.json";
const TENSORS_FILE: &str = "state.safetensors";

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    key: String,
    step: usize,
    adam_step: u64,
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
    let mut tensors = TensorMap::new();
    for (i, s) in model.specs().iter().enumerate() {
        let t = |data: &Vec<f32>| HostTensor { shape: s.shape.clone(), data: data.clone() };
        tensors.insert(format!("param.{}", s.name), t(&model.params()[i]));
        tensors.insert(format!("adam_m.{}", s.name), t(&opt.m[i]));
        tensors.insert(format!("adam_v.{}", s.name), t(&opt.v[i]));
    }
    save_tensors(&tmp.join(TENSORS_FILE), &tensors, SaveDtype::F32).map_err(|e| ck_err(&tmp, e))?;
    let state = CheckpointState { key: key.to_string(), step, adam_step: opt.step, curve: curve.to_vec() };
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
    let tensors = load_tensors(&path.join(TENSORS_FILE)).map_err(|e| ck_err(path, e))?;
    let names: Vec<String> = model.specs().iter().map(|s| s.name.clone()).collect();
    let get = |prefix: &str, name: &str, len: usize| -> Result<Vec<f32>, TrainError> {
        let t = tensors.get(&format!("{prefix}.{name}")).ok_or_else(|| ck_err(path, format!("missing {prefix}.{name}")))?;
        if t.data.len() != len {
            return Err(ck_err(path, format!("{prefix}.{name} has {} values, expected {len}", t.data.len())));
        }
        Ok(t.data.clone())
    };
    for (i, name) in names.iter().enumerate() {
        let len = model.params()[i].len();
        model.params_mut()[i] = get("param", name, len)?;
        opt.m[i] = get("adam_m", name, len)?;
        opt.v[i] = get("adam_v", name, len)?;
    }
    opt.step = state.adam_step;
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
