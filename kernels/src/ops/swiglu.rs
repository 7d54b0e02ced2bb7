//! SwiGLU, Llama's MLP nonlinearity: `a = silu(g) * u` with `silu(g) = g * sigmoid(g)`, where
//! g and u are the gate and up projections, both (N, F). Backward:
//! `du = da * silu(g)`, `dg = da * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`.

use rayon::prelude::*;

use super::{sigmoid_one, simd_kernel};

const CHUNK: usize = 4096;

simd_kernel! {
    /// `a = silu(g) * u` over one chunk (the sigmoid from [`super::exp_one`]).
    pub(crate) fn swiglu_chunk(a: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, &x), &up) in a.iter_mut().zip(g).zip(u) {
            *o = sigmoid_one(x) * (x * up);
        }
    }
}

simd_kernel! {
    /// The backward of [`swiglu_chunk`]: writes dg and du.
    fn swiglu_backward_chunk(dg: &mut [f32], du: &mut [f32], da: &[f32], g: &[f32], u: &[f32]) {
        for i in 0..dg.len().min(du.len()).min(da.len()).min(g.len()).min(u.len()) {
            let (x, d) = (g[i], da[i]);
            let s = sigmoid_one(x);
            du[i] = d * x * s;
            dg[i] = d * u[i] * s * (1.0 + x * (1.0 - s));
        }
    }
}

/// Reference forward in f64.
pub fn swiglu_ref(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter().zip(u).map(|(&g, &u)| {
        let (g, u) = (g as f64, u as f64);
        (g / (1.0 + (-g).exp()) * u) as f32
    }).collect()
}

/// Fast forward into `a`.
pub fn swiglu(a: &mut [f32], g: &[f32], u: &[f32]) {
    a.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((a, g), u)| swiglu_chunk(a, g, u));
}

/// Reference backward: returns (dg, du).
pub fn swiglu_backward_ref(da: &[f32], g: &[f32], u: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0.0; g.len()];
    let mut du = vec![0.0; g.len()];
    for i in 0..g.len() {
        let (x, up, d) = (g[i] as f64, u[i] as f64, da[i] as f64);
        let s = 1.0 / (1.0 + (-x).exp());
        du[i] = (d * x * s) as f32;
        dg[i] = (d * up * s * (1.0 + x * (1.0 - s))) as f32;
    }
    (dg, du)
}

/// Fast backward, writing (not accumulating) dg and du.
pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], da: &[f32], g: &[f32], u: &[f32]) {
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(da.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(((dg, du), da), (g, u))| swiglu_backward_chunk(dg, du, da, g, u));
}

/// [`swiglu`] on the fused gate/up product: gu (N, 2F) holds [g | u] per row; a is (N, F).
pub fn swiglu_packed(a: &mut [f32], gu: &[f32], f: usize) {
    a.par_chunks_mut(f).zip(gu.par_chunks(2 * f)).for_each(|(a, gu)| {
        let (g, u) = gu.split_at(f);
        swiglu_chunk(a, g, u);
    });
}

/// [`swiglu_backward`] on the fused layout: writes dgu (N, 2F) = [dg | du] per row.
pub fn swiglu_backward_packed(dgu: &mut [f32], da: &[f32], gu: &[f32], f: usize) {
    dgu.par_chunks_mut(2 * f).zip(da.par_chunks(f)).zip(gu.par_chunks(2 * f)).for_each(|((dgu, da), gu)| {
        let (dg, du) = dgu.split_at_mut(f);
        let (g, u) = gu.split_at(f);
        swiglu_backward_chunk(dg, du, da, g, u);
    });
}
