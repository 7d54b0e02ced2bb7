//! AdamW (decoupled weight decay; Llama 2: β = (0.9, 0.95), ε = 1e-5) with global-norm
//! clipping, and the learning-rate schedules (cosine to `min_lr_ratio` of the peak, or
//! constant, both after a linear warm-up).
//!
//! The state (first and second moments, step count) is plain data in the model's parameter
//! order so that the training loop can checkpoint it exactly and a resumed run continues with
//! bit-identical numbers. Norm weights get no weight decay (common practice; the paper does not
//! say). The update is element-wise, so splitting it across threads by tensor cannot change a
//! single bit.

use kernels::model::{Grads, Llama, ParamKind};
use rayon::prelude::*;

/// The shape of the learning-rate curve after warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Cosine from the peak down to `min_lr_ratio` × peak at the last step.
    Cosine { min_lr_ratio: f64 },
    Constant,
}

/// Learning rate at step `step` (0-based) of `total`: linear warm-up over `warmup` steps to
/// `peak` (step 0 already gets peak / warmup), then the schedule.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, schedule: Schedule) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => peak,
        Schedule::Cosine { min_lr_ratio } => {
            let span = total.saturating_sub(warmup).max(1);
            let progress = ((step - warmup) as f64 / span as f64).min(1.0);
            let min = peak * min_lr_ratio;
            min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// AdamW hyper-parameters other than the learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// Llama 2's betas and epsilon with the given weight decay.
    pub fn llama2(weight_decay: f64) -> AdamWConfig {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay }
    }
}

/// The optimiser state: moments shaped like the parameters, and the number of updates done.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub step: u64,
}

impl AdamW {
    pub fn new(model: &Llama, config: AdamWConfig) -> AdamW {
        let zeros: Vec<Vec<f32>> = model.params().iter().map(|p| vec![0.0; p.len()]).collect();
        AdamW { config, m: zeros.clone(), v: zeros, step: 0 }
    }

    /// One update with learning rate `lr`.
    pub fn update(&mut self, model: &mut Llama, grads: &Grads, lr: f64) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let kinds: Vec<ParamKind> = model.specs().iter().map(|s| s.kind).collect();
        let (b1, b2, eps, lr32) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32, lr as f32);
        let (bc1, bc2) = (bc1 as f32, bc2 as f32);
        model
            .params_mut()
            .par_iter_mut()
            .zip(self.m.par_iter_mut())
            .zip(self.v.par_iter_mut())
            .zip(grads.tensors.par_iter())
            .zip(kinds.par_iter())
            .for_each(|((((p, m), v), g), kind)| {
                let decay = if *kind == ParamKind::Norm { 0.0 } else { (lr * c.weight_decay) as f32 };
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    let mhat = m[i] / bc1;
                    let vhat = v[i] / bc2;
                    p[i] -= decay * p[i];
                    p[i] -= lr32 * mhat / (vhat.sqrt() + eps);
                }
            });
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (no-op when `max_norm`
/// ≤ 0). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut Grads, max_norm: f64) -> f32 {
    let norm = grads.global_norm();
    if max_norm > 0.0 && norm as f64 > max_norm {
        grads.scale((max_norm / (norm as f64 + 1e-6)) as f32);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = Schedule::Cosine { min_lr_ratio: 0.1 };
        assert!((lr_at(0, 100, 10, 1.0, s) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, s) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, s) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, s) - 0.1).abs() < 1e-12);
        let mid = lr_at(55, 100, 10, 1.0, s);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
        assert_eq!(lr_at(50, 100, 0, 2.0, Schedule::Constant), 2.0);
    }
}
