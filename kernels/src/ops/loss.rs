//! The language-model head's losses, fused with their backward so that the (N, V) softmax is
//! never stored: per-token log-probabilities of target tokens, and the gradient of any loss
//! that is a weighted sum of them, `L = Σ_t c_t · log p(target_t)`, which gives
//! `dlogits_t = c_t · (onehot(target_t) - softmax(logits_t))`. Cross-entropy with -100 label
//! masking and a mean over scored tokens is the case `c_t = -1 / n_scored`; PPO's clipped
//! objective and DPO-style losses supply their own `c_t`.

use rayon::prelude::*;

/// The label value that means "not scored" (transformers' `ignore_index`).
pub const IGNORE: i32 = -100;

fn target_of(t: i32, v: usize) -> Option<usize> {
    (t >= 0 && (t as usize) < v).then_some(t as usize)
}

/// Reference: log p(target_t) for logits (N, V) and targets (N); 0.0 where not scored.
pub fn token_logprobs_ref(logits: &[f32], v: usize, targets: &[i32]) -> Vec<f32> {
    logits.chunks(v).zip(targets).map(|(row, &t)| match target_of(t, v) {
        None => 0.0,
        Some(t) => {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            (row[t] as f64 - lse) as f32
        }
    }).collect()
}

/// log Σ exp(row), in f32 with the max subtracted; exponentials and their sum in blocks of
/// 256 through the vectorised [`super::exp_shifted_sum`].
fn logsumexp(row: &[f32]) -> f32 {
    let max = super::lane_max(row);
    let mut buf = [0.0f32; 256];
    let mut sum = 0.0f32;
    for chunk in row.chunks(256) {
        let b = &mut buf[..chunk.len()];
        sum += super::exp_shifted_sum(b, chunk, max);
    }
    max + sum.ln()
}

super::simd_kernel! {
    /// `x *= k` elementwise.
    fn scale_slice(x: &mut [f32], k: f32) {
        for v in x.iter_mut() {
            *v *= k;
        }
    }
}

/// Fast: rows in parallel.
pub fn token_logprobs(logits: &[f32], v: usize, targets: &[i32]) -> Vec<f32> {
    logits.par_chunks(v).zip(targets.par_iter()).map(|(row, &t)| match target_of(t, v) {
        None => 0.0,
        Some(t) => row[t] - logsumexp(row),
    }).collect()
}

/// Reference backward of `L = Σ_t coef_t · log p(target_t)`: returns dlogits (N, V).
pub fn logprob_backward_ref(logits: &[f32], v: usize, targets: &[i32], coef: &[f32]) -> Vec<f32> {
    let mut d = vec![0.0f32; logits.len()];
    for (i, row) in logits.chunks(v).enumerate() {
        let Some(t) = target_of(targets[i], v) else { continue };
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        for j in 0..v {
            let p = (row[j] as f64 - max).exp() / z;
            let onehot = if j == t { 1.0 } else { 0.0 };
            d[i * v + j] = (coef[i] as f64 * (onehot - p)) as f32;
        }
    }
    d
}

/// Fast fused backward: writes dlogits (N, V); rows without a target (or with coef 0) get 0.
pub fn logprob_backward(dlogits: &mut [f32], logits: &[f32], v: usize, targets: &[i32], coef: &[f32]) {
    dlogits.par_chunks_mut(v).zip(logits.par_chunks(v)).zip(targets.par_iter().zip(coef.par_iter())).for_each(
        |((d, row), (&t, &c))| match target_of(t, v) {
            Some(t) if c != 0.0 => {
                // One pass of exponentials: d = exp(x - max), then scale by -c / Σ.
                let max = super::lane_max(row);
                let k = -c / super::exp_shifted_sum(d, row, max);
                scale_slice(d, k);
                d[t] += c;
            }
            _ => d.fill(0.0),
        },
    );
}

/// Mean cross-entropy over scored tokens and its gradient, fused: returns (loss, dlogits).
/// targets (N) holds the token each position predicts, or [`IGNORE`]. With no scored token
/// the loss is 0 and the gradient is 0 (nothing to learn from), not NaN.
pub fn cross_entropy(logits: &[f32], v: usize, targets: &[i32]) -> (f32, Vec<f32>) {
    let n_scored = targets.iter().filter(|&&t| target_of(t, v).is_some()).count();
    let c = if n_scored == 0 { 0.0 } else { -1.0 / n_scored as f32 };
    let coef = vec![c; targets.len()];
    let lp = token_logprobs(logits, v, targets);
    let loss = lp.iter().map(|&x| x as f64).sum::<f64>() * c as f64;
    let mut d = vec![0.0; logits.len()];
    logprob_backward(&mut d, logits, v, targets, &coef);
    (loss as f32, d)
}

/// Reference cross-entropy: the same quantity from the reference pieces.
pub fn cross_entropy_ref(logits: &[f32], v: usize, targets: &[i32]) -> (f32, Vec<f32>) {
    let n_scored = targets.iter().filter(|&&t| target_of(t, v).is_some()).count();
    let c = if n_scored == 0 { 0.0 } else { -1.0 / n_scored as f64 };
    let lp = token_logprobs_ref(logits, v, targets);
    let loss = lp.iter().map(|&x| x as f64).sum::<f64>() * c;
    let d = logprob_backward_ref(logits, v, targets, &vec![c as f32; targets.len()]);
    (loss as f32, d)
}

/// Llama 2's pairwise reward-model loss (§3.2.2): `-log σ(r_chosen - r_rejected - margin)`,
/// returned with its derivatives (d/dr_chosen, d/dr_rejected). Computed stably as
/// `softplus(-z)` so large margins neither overflow nor lose precision.
pub fn pairwise_reward_loss(r_chosen: f32, r_rejected: f32, margin: f32) -> (f32, f32, f32) {
    let z = (r_chosen - r_rejected - margin) as f64;
    let loss = if z > 0.0 { (-z).exp().ln_1p() } else { -z + z.exp().ln_1p() };
    let dz = -1.0 / (1.0 + z.exp()); // d(-log σ(z))/dz = σ(z) - 1
    (loss as f32, dz as f32, -dz as f32)
}
