//! SwiGLU, Llama's MLP nonlinearity: `a = silu(g) * u` with `silu(g) = g * sigmoid(g)`, where
//! g and u are the gate and up projections, both (N, F). Backward:
//! `du = da * silu(g)`, `dg = da * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`.

use rayon::prelude::*;

const CHUNK: usize = 4096;

/// sigmoid(g) for a chunk, into `s`, with the vectorised exponential.
fn sigmoid_into(s: &mut [f32], g: &[f32]) {
    s.iter_mut().zip(g).for_each(|(o, &x)| *o = -x);
    super::exp_inplace(s);
    s.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
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
    a.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((a, g), u)| {
        sigmoid_into(a, g);
        for i in 0..a.len() {
            a[i] *= g[i] * u[i];
        }
    });
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
        .for_each(|(((dg, du), da), (g, u))| {
            // dg holds sigmoid(g) until it is overwritten element by element.
            sigmoid_into(dg, g);
            for i in 0..dg.len() {
                let s = dg[i];
                du[i] = da[i] * g[i] * s;
                dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
}

/// [`swiglu`] on the fused gate/up product: gu (N, 2F) holds [g | u] per row; a is (N, F).
pub fn swiglu_packed(a: &mut [f32], gu: &[f32], f: usize) {
    a.par_chunks_mut(f).zip(gu.par_chunks(2 * f)).for_each(|(a, gu)| {
        let (g, u) = gu.split_at(f);
        sigmoid_into(a, g);
        for i in 0..f {
            a[i] *= g[i] * u[i];
        }
    });
}

/// [`swiglu_backward`] on the fused layout: writes dgu (N, 2F) = [dg | du] per row.
pub fn swiglu_backward_packed(dgu: &mut [f32], da: &[f32], gu: &[f32], f: usize) {
    dgu.par_chunks_mut(2 * f).zip(da.par_chunks(f)).zip(gu.par_chunks(2 * f)).for_each(|((dgu, da), gu)| {
        let (dg, du) = dgu.split_at_mut(f);
        let (g, u) = gu.split_at(f);
        sigmoid_into(dg, g);
        for i in 0..f {
            let s = dg[i];
            du[i] = da[i] * g[i] * s;
            dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    });
}
