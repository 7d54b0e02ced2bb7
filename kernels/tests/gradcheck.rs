//! Finite-difference gradient checks for every op's backward and for the whole model.
//!
//! For an op y = f(x) we take the scalar L = Σ r·y with fixed random r (accumulated in f64),
//! perturb inputs by ±h and compare (L(x+h) - L(x-h)) / 2h with the analytic gradient from
//! the hand-written backward. Inputs are f32, so h is 1e-2 and the tolerance is relative to
//! the gradient's scale: truncation error is O(h²), round-off O(ε_f32 / h).

use kernels::config::{Head, LlamaConfig};
use kernels::model::{HeadGrad, Llama};
use kernels::ops::attention::{AttnShape, attention_backward, attention_ref, probs_len};
use kernels::ops::matmul::{MmShape, Tr, matmul, matmul_ref};
use kernels::ops::{embedding, loss, norm, rope, spans_of, swiglu};
use kernels::rng::Rng;

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * scale).collect()
}

fn weighted(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Compares `analytic` with central differences of `f` around `x` at every index (or every
/// `stride`-th for big inputs).
fn fd_check(what: &str, x: &[f32], analytic: &[f32], stride: usize, f: &dyn Fn(&[f32]) -> f64) {
    fd_check_h(what, x, analytic, stride, 1e-2, 2e-3, f)
}

/// [`fd_check`] with step `h` and relative tolerance `rtol` (of the gradient's scale).
fn fd_check_h(what: &str, x: &[f32], analytic: &[f32], stride: usize, h: f32, rtol: f64, f: &dyn Fn(&[f32]) -> f64) {
    let scale = analytic.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    let mut worst = (0usize, 0.0f64, 0.0f64, 0.0f64);
    for i in (0..x.len()).step_by(stride) {
        let mut xp = x.to_vec();
        xp[i] += h;
        let lp = f(&xp);
        xp[i] -= 2.0 * h;
        let lm = f(&xp);
        let num = (lp - lm) / (2.0 * h as f64);
        let err = (num - analytic[i] as f64).abs();
        if err > worst.1 {
            worst = (i, err, num, analytic[i] as f64);
        }
    }
    assert!(worst.1 <= rtol * scale as f64 + 1e-4, "{what}: worst index {}: numeric {} analytic {} (|diff| {}, scale {scale})", worst.0, worst.2, worst.3, worst.1);
}

#[test]
fn matmul_backward_products() {
    let s = MmShape { m: 5, k: 7, n: 4 };
    let a = randn(35, 1, 1.0);
    let b = randn(28, 2, 1.0);
    let r = randn(20, 3, 1.0);
    let lf = |a: &[f32], b: &[f32]| {
        let mut c = vec![0.0; 20];
        matmul_ref(&mut c, a, Tr::N, b, Tr::N, s, false);
        weighted(&r, &c)
    };
    // dA (m, k) = dC (m, n) @ Bᵀ; dB (k, n) = Aᵀ @ dC.
    let mut da = vec![0.0; 35];
    matmul(&mut da, &r, Tr::N, &b, Tr::T, MmShape { m: 5, k: 4, n: 7 }, false);
    let mut db = vec![0.0; 28];
    matmul(&mut db, &a, Tr::T, &r, Tr::N, MmShape { m: 7, k: 5, n: 4 }, false);
    fd_check("matmul dA", &a, &da, 1, &|x| lf(x, &b));
    fd_check("matmul dB", &b, &db, 1, &|x| lf(&a, x));
}

#[test]
fn rmsnorm_backward() {
    let (n, d) = (4, 9);
    let x = randn(n * d, 4, 1.5);
    let w = randn(d, 5, 1.0);
    let r = randn(n * d, 6, 1.0);
    let (_, rstd) = norm::rmsnorm_ref(&x, &w, 1e-5);
    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    norm::rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd);
    fd_check("rmsnorm dx", &x, &dx, 1, &|x| weighted(&r, &norm::rmsnorm_ref(x, &w, 1e-5).0));
    fd_check("rmsnorm dw", &w, &dw, 1, &|w| weighted(&r, &norm::rmsnorm_ref(&x, w, 1e-5).0));
}

#[test]
fn rope_backward_is_the_inverse_rotation() {
    let (heads, hd) = (2, 6);
    let pos = vec![0, 3, 17];
    let x = randn(3 * heads * hd, 7, 1.0);
    let r = randn(x.len(), 8, 1.0);
    let table = rope::RopeTable::new(hd, 500.0, 32);
    let mut dx = r.clone();
    rope::rope(&mut dx, &pos, heads, &table, rope::Direction::Inverse);
    fd_check("rope dx", &x, &dx, 1, &|x| {
        let mut y = x.to_vec();
        rope::rope_ref(&mut y, &pos, heads, hd, 500.0, rope::Direction::Forward);
        weighted(&r, &y)
    });
}

#[test]
fn attention_backward_fd() {
    let spans = spans_of([4, 1, 6]);
    let n = 11;
    let sh = AttnShape { heads: 4, kv_heads: 2, head_dim: 4 };
    let q = randn(n * 16, 9, 1.0);
    let k = randn(n * 8, 10, 1.0);
    let v = randn(n * 8, 11, 1.0);
    let r = randn(n * 16, 12, 1.0);
    let (_, p) = attention_ref(&q, &k, &v, &spans, sh);
    assert_eq!(p.len(), probs_len(&spans, sh));
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &p, &spans, sh);
    fd_check("attention dq", &q, &dq, 1, &|x| weighted(&r, &attention_ref(x, &k, &v, &spans, sh).0));
    fd_check("attention dk", &k, &dk, 1, &|x| weighted(&r, &attention_ref(&q, x, &v, &spans, sh).0));
    fd_check("attention dv", &v, &dv, 1, &|x| weighted(&r, &attention_ref(&q, &k, x, &spans, sh).0));
}

#[test]
fn swiglu_backward() {
    let g = randn(20, 13, 2.0);
    let u = randn(20, 14, 1.0);
    let r = randn(20, 15, 1.0);
    let (mut dg, mut du) = (vec![0.0; 20], vec![0.0; 20]);
    swiglu::swiglu_backward(&mut dg, &mut du, &r, &g, &u);
    fd_check("swiglu dg", &g, &dg, 1, &|x| weighted(&r, &swiglu::swiglu_ref(x, &u)));
    fd_check("swiglu du", &u, &du, 1, &|x| weighted(&r, &swiglu::swiglu_ref(&g, x)));
}

#[test]
fn embedding_backward() {
    let (v, d) = (5, 3);
    let table = randn(v * d, 16, 1.0);
    let tokens = vec![1, 4, 1];
    let r = randn(tokens.len() * d, 17, 1.0);
    let mut dt = vec![0.0; v * d];
    embedding::embedding_backward(&mut dt, d, &tokens, &r);
    fd_check("embedding dtable", &table, &dt, 1, &|t| weighted(&r, &embedding::embedding_ref(t, d, &tokens)));
}

#[test]
fn cross_entropy_and_weighted_logprob_backward() {
    let (n, v) = (4, 7);
    let logits = randn(n * v, 18, 2.0);
    let targets = vec![2, -100, 6, 0];
    let (_, d) = loss::cross_entropy(&logits, v, &targets);
    fd_check("cross_entropy dlogits", &logits, &d, 1, &|x| loss::cross_entropy_ref(x, v, &targets).0 as f64);
    let coef = randn(n, 19, 1.0);
    let mut dl = vec![0.0; n * v];
    loss::logprob_backward(&mut dl, &logits, v, &targets, &coef);
    fd_check("logprob dlogits", &logits, &dl, 1, &|x| weighted(&coef, &loss::token_logprobs_ref(x, v, &targets)));
}

#[test]
fn pairwise_reward_loss_derivatives() {
    for &(c, r, m) in &[(0.3f32, -0.2f32, 0.0f32), (-2.0, 3.0, 1.0), (40.0, -40.0, 0.5)] {
        let (l, dc, dr) = loss::pairwise_reward_loss(c, r, m);
        let h = 1e-3;
        let num_c = (loss::pairwise_reward_loss(c + h, r, m).0 - loss::pairwise_reward_loss(c - h, r, m).0) / (2.0 * h);
        assert!((num_c - dc).abs() < 1e-3, "d/dc {num_c} vs {dc}");
        assert!((dr + dc).abs() < 1e-7);
        assert!(l.is_finite() && l >= 0.0);
    }
}

fn tiny_config(head: Head, tie: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 23, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, head_dim: 4, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 64,
        tie_word_embeddings: tie, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head,
    }
}

/// The whole model: a sample of entries of every parameter tensor against finite differences
/// of the loss, for a tied LM head (cross-entropy) and a scalar head (weighted scores).
#[test]
fn whole_model_gradients_every_tensor() {
    let rows = vec![vec![1u32, 5, 9, 22, 3], vec![7, 7], vec![0, 4, 11]];
    for head in [Head::LanguageModel, Head::Scalar { num_labels: 1 }] {
        let model = Llama::new_random(tiny_config(head, head == Head::LanguageModel), 3);
        // Scale weights up from 0.02 so the gradients are not vanishingly small.
        let mut model = model;
        for p in model.params_mut() {
            p.iter_mut().for_each(|x| *x *= 5.0);
        }
        let n: usize = rows.iter().map(|r| r.len()).sum();
        let targets: Vec<i32> = vec![5, 9, -100, 3, -100, 7, -100, 4, 11, -100];
        let coef = randn(n, 20, 1.0);
        let loss_of = |m: &Llama| -> f64 {
            let f = m.forward(&rows, false).unwrap();
            match head {
                Head::LanguageModel => weighted(&coef, &f.target_logprobs(&targets)),
                Head::Scalar { .. } => weighted(&coef, &f.out),
            }
        };
        let fwd = model.forward(&rows, true).unwrap();
        let hg = match head {
            Head::LanguageModel => HeadGrad::Logprobs { targets: &targets, coef: &coef },
            Head::Scalar { .. } => HeadGrad::Scores { dscores: &coef },
        };
        let grads = model.backward(&fwd, hg).unwrap();
        for (ti, spec) in model.specs().iter().enumerate() {
            let x = model.params()[ti].clone();
            let stride = (x.len() / 12).max(1);
            // A deep f32 composition: a smaller step keeps truncation error below the tolerance.
            fd_check_h(&format!("{head:?} {}", spec.name), &x, &grads.tensors[ti], stride, 2e-3, 5e-3, &|xv| {
                let mut m = model.clone();
                m.params_mut()[ti].copy_from_slice(xv);
                loss_of(&m)
            });
        }
    }
}
