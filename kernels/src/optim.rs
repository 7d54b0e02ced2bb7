//! Training steps: AdamW with decoupled weight decay, global-norm clipping, gradient
//! accumulation over micro-batches, and the optimiser state as tensors for resuming.
//!
//! AdamW as PyTorch computes it (Loshchilov & Hutter): `p ← p · (1 - lr·wd)`, then
//! `m ← β1 m + (1-β1) g`, `v ← β2 v + (1-β2) g²`, `p ← p - lr · m̂ / (sqrt(v̂) + ε)` with
//! bias-corrected m̂, v̂. Llama 2 uses β = (0.9, 0.95), ε = 1e-5, weight decay 0.1. Every
//! update is elementwise and every reduction runs in parameter order, so a step gives
//! bit-identical weights whatever the thread count.

use crate::checkpoint::{HostTensor, TensorMap};
use crate::model::{Grads, Llama, ModelError, ParamKind};
use rayon::prelude::*;
use std::borrow::Cow;

/// AdamW's settings. No `Default`: every field changes results, so callers say what they use.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Whether RMSNorm weights are decayed too (commonly not).
    pub decay_norms: bool,
}

impl AdamWConfig {
    /// Llama 2's optimiser (β 0.9/0.95, ε 1e-5) with the given weight decay, norms not decayed.
    pub fn llama2(weight_decay: f32) -> AdamWConfig {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay, decay_norms: false }
    }
}

/// AdamW with its moment estimates, one per parameter tensor in the model's order.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Steps taken so far (bias correction uses step + 1 for the next one).
    pub step: u64,
}

impl AdamW {
    pub fn new(config: AdamWConfig, model: &Llama) -> AdamW {
        let zeros = || model.specs().iter().map(|s| vec![0.0; s.numel()]).collect();
        AdamW { config, m: zeros(), v: zeros(), step: 0 }
    }

    /// The first and second moment estimates, one vector per parameter tensor (model order).
    pub fn moments(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.m, &self.v)
    }

    /// Mutable moment estimates (for optimisers kept on another device that hand their state
    /// back); the shapes must stay those of the model.
    pub fn moments_mut(&mut self) -> (&mut [Vec<f32>], &mut [Vec<f32>]) {
        (&mut self.m, &mut self.v)
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn update(&mut self, model: &mut Llama, grads: &Grads, lr: f32) -> Result<(), ModelError> {
        check_like(model, grads)?;
        self.step += 1;
        let c = self.config.clone();
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let kinds: Vec<ParamKind> = model.specs().iter().map(|s| s.kind).collect();
        let params = model.params_mut();
        params.par_iter_mut().zip(&grads.tensors).zip(self.m.par_iter_mut().zip(self.v.par_iter_mut())).zip(kinds)
            .for_each(|(((p, g), (m, v)), kind)| {
                let wd = if kind == ParamKind::Norm && !c.decay_norms { 0.0 } else { c.weight_decay };
                let decay = 1.0 - lr * wd;
                let step = (lr as f64 / bc1) as f32;
                let inv_bc2 = (1.0 / bc2) as f32;
                adamw_slice(p, g, m, v, [c.beta1, c.beta2, decay, step, inv_bc2, c.eps]);
            });
        Ok(())
    }

    /// The moments and step as tensors (`adamw.m.<param>`, `adamw.v.<param>`, `adamw.step`),
    /// to store next to a checkpoint and resume exactly.
    pub fn to_tensors(&self, model: &Llama) -> TensorMap {
        let mut t = TensorMap::new();
        for (s, (m, v)) in model.specs().iter().zip(self.m.iter().zip(&self.v)) {
            t.insert(format!("adamw.m.{}", s.name), HostTensor { shape: s.shape.clone(), data: m.clone() });
            t.insert(format!("adamw.v.{}", s.name), HostTensor { shape: s.shape.clone(), data: v.clone() });
        }
        // The step count as two exact f32 halves (an f32 holds integers up to 2^24 exactly).
        let (hi, lo) = ((self.step >> 24) as f32, (self.step & 0xFF_FFFF) as f32);
        t.insert("adamw.step".into(), HostTensor { shape: vec![2], data: vec![hi, lo] });
        t
    }

    /// Restores state written by [`AdamW::to_tensors`], checking every name and shape.
    pub fn from_tensors(config: AdamWConfig, model: &Llama, t: &TensorMap) -> Result<AdamW, ModelError> {
        let get = |name: String, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let x = t.get(&name).ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            if x.shape != shape || x.data.len() != shape.iter().product::<usize>() {
                return Err(ModelError::BadShape { name, expected: shape.to_vec(), got: x.shape.clone() });
            }
            Ok(x.data.clone())
        };
        let mut m = Vec::new();
        let mut v = Vec::new();
        for s in model.specs() {
            m.push(get(format!("adamw.m.{}", s.name), &s.shape)?);
            v.push(get(format!("adamw.v.{}", s.name), &s.shape)?);
        }
        let st = get("adamw.step".into(), &[2])?;
        Ok(AdamW { config, m, v, step: ((st[0] as u64) << 24) | st[1] as u64 })
    }
}

crate::ops::simd_kernel! {
    /// The AdamW update of one tensor; `k` = [beta1, beta2, decay, step, 1 / bias correction 2, eps].
    fn adamw_slice(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 6]) {
        let [beta1, beta2, decay, step, inv_bc2, eps] = k;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        for i in 0..n {
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
            p[i] = p[i] * decay - step * m[i] / ((v[i] * inv_bc2).sqrt() + eps);
        }
    }
}

fn check_like(model: &Llama, grads: &Grads) -> Result<(), ModelError> {
    if grads.tensors.len() != model.specs().len() {
        return Err(ModelError::Invalid { op: "adamw", message: format!("{} gradient tensors for {} parameters", grads.tensors.len(), model.specs().len()) });
    }
    for (s, g) in model.specs().iter().zip(&grads.tensors) {
        if g.len() != s.numel() {
            return Err(ModelError::BadData { name: s.name.clone(), shape: s.shape.clone(), got: g.len() });
        }
    }
    Ok(())
}

/// Scales the gradients so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (what training logs report).
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f32) -> f32 {
    let norm = grads.global_norm();
    if norm > max_norm && norm > 0.0 {
        grads.scale(max_norm / norm);
    }
    norm
}

/// One micro-batch of a language-model step: rows, the token each position predicts
/// (`IGNORE` for none) and each position's loss weight. The step's loss is
/// `Σ weight · (-log p(target))` over all micro-batches.
#[derive(Debug, Clone)]
pub struct LmMicroBatch {
    pub rows: Vec<Vec<u32>>,
    pub targets: Vec<Vec<i32>>,
    pub weights: Vec<Vec<f32>>,
}

/// Splits rows into micro-batches of at most `rows_per_micro` rows, weighting every scored
/// position by 1 / (scored positions in the whole step): the accumulated loss is then the
/// mean cross-entropy of the whole batch, whatever the split.
pub fn mean_ce_micro_batches(rows: &[Vec<u32>], targets: &[Vec<i32>], rows_per_micro: usize) -> Vec<LmMicroBatch> {
    let scored = targets.iter().flatten().filter(|&&t| t >= 0).count();
    let w = if scored == 0 { 0.0 } else { 1.0 / scored as f32 };
    rows.chunks(rows_per_micro.max(1)).zip(targets.chunks(rows_per_micro.max(1))).map(|(r, t)| LmMicroBatch {
        rows: r.to_vec(),
        targets: t.to_vec(),
        weights: t.iter().map(|row| row.iter().map(|&x| if x >= 0 { w } else { 0.0 }).collect()).collect(),
    }).collect()
}

/// What a training step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
    pub tokens: usize,
}

/// A full language-model step: forward and backward of every micro-batch with the gradients
/// summed in order, optional global-norm clipping, then one AdamW update at `lr`.
pub fn lm_train_step(model: &mut Llama, opt: &mut AdamW, micro: &[LmMicroBatch], lr: f32, clip: Option<f32>) -> Result<StepReport, ModelError> {
    lm_train_step_sharded(model, opt, micro, lr, clip, 1)
}

/// [`lm_train_step`] with each micro-batch's rows split into `shards` contiguous row shards
/// whose forward and backward passes run concurrently (data parallelism inside the step), their
/// losses and gradients added in shard order. On 2 cores this keeps both busy where one pass
/// over small matrices cannot. The result depends on the shard count (a setting), never on the
/// thread count; one shard is exactly [`lm_train_step`].
pub fn lm_train_step_sharded(model: &mut Llama, opt: &mut AdamW, micro: &[LmMicroBatch], lr: f32, clip: Option<f32>, shards: usize) -> Result<StepReport, ModelError> {
    let mut total: Option<Grads> = None;
    let mut loss = 0.0f64;
    let mut tokens = 0;
    for mb in micro {
        let per = mb.rows.len().div_ceil(shards.max(1)).max(1);
        let ranges: Vec<(usize, usize)> = (0..mb.rows.len()).step_by(per).map(|a| (a, (a + per).min(mb.rows.len()))).collect();
        let m: &Llama = model;
        let parts: Vec<Result<(f32, Grads), ModelError>> = if ranges.len() == 1 {
            vec![m.weighted_nll_grads(&mb.rows, &mb.targets, &mb.weights)]
        } else {
            ranges.par_iter().map(|&(a, b)| m.weighted_nll_grads(&mb.rows[a..b], &mb.targets[a..b], &mb.weights[a..b])).collect()
        };
        for part in parts {
            let (l, g) = part?;
            loss += l as f64;
            add_part(&mut total, Cow::Owned(g));
        }
        tokens += mb.rows.iter().map(|r| r.len()).sum::<usize>();
    }
    apply_sum(model, opt, total, loss, tokens, lr, clip)
}

/// Adds one part's gradients to the step's sum; the first part becomes the sum (0 + g = g
/// exactly), so no zeroed buffer is needed.
fn add_part(total: &mut Option<Grads>, g: Cow<'_, Grads>) {
    match total {
        None => *total = Some(g.into_owned()),
        Some(t) => t.add_assign(&g),
    }
}

/// The end of every step: the summed gradients (zeros when there were none) clipped, one
/// AdamW update at `lr`.
fn apply_sum(model: &mut Llama, opt: &mut AdamW, total: Option<Grads>, loss: f64, tokens: usize, lr: f32, clip: Option<f32>) -> Result<StepReport, ModelError> {
    let mut total = total.unwrap_or_else(|| Grads::zeros(model));
    let grad_norm = match clip {
        Some(c) => clip_grad_norm(&mut total, c),
        None => total.global_norm(),
    };
    opt.update(model, &total, lr)?;
    Ok(StepReport { loss: loss as f32, grad_norm, lr, tokens })
}

/// One part of a language-model step: rows `rows` of micro-batch `micro`. Parts are numbered
/// in the order their gradients are added (micro-batch by micro-batch, shards in row order),
/// exactly as [`lm_train_step_sharded`] adds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPart {
    pub micro: usize,
    pub rows: (usize, usize),
}

/// The parts of a step whose micro-batches are split into `shards` row shards.
pub fn lm_step_parts(micro: &[LmMicroBatch], shards: usize) -> Vec<StepPart> {
    let mut parts = Vec::new();
    for (i, mb) in micro.iter().enumerate() {
        let per = mb.rows.len().div_ceil(shards.max(1)).max(1);
        parts.extend((0..mb.rows.len()).step_by(per).map(|a| StepPart { micro: i, rows: (a, (a + per).min(mb.rows.len())) }));
    }
    parts
}

/// Loss and gradients of the parts numbered `which` (indices into `parts`), computed
/// concurrently; returned in the order of `which`. Each part's numbers depend only on the
/// model and its rows, so any process computing a part gets the same bits.
pub fn lm_part_grads(model: &Llama, micro: &[LmMicroBatch], parts: &[StepPart], which: &[usize]) -> Result<Vec<(f32, Grads)>, ModelError> {
    which
        .par_iter()
        .map(|&j| {
            let StepPart { micro: i, rows: (a, b) } = parts[j];
            let mb = &micro[i];
            model.weighted_nll_grads(&mb.rows[a..b], &mb.targets[a..b], &mb.weights[a..b])
        })
        .collect()
}

/// The end of a step from its parts' results, given in part order: losses and gradients added
/// in that order (as [`lm_train_step_sharded`] does), clipping, one AdamW update at `lr`.
pub fn lm_apply_parts<'a>(model: &mut Llama, opt: &mut AdamW, parts: impl IntoIterator<Item = (f32, &'a Grads)>, tokens: usize, lr: f32, clip: Option<f32>) -> Result<StepReport, ModelError> {
    let mut total: Option<Grads> = None;
    let mut loss = 0.0f64;
    for (l, g) in parts {
        loss += l as f64;
        add_part(&mut total, Cow::Borrowed(g));
    }
    apply_sum(model, opt, total, loss, tokens, lr, clip)
}
