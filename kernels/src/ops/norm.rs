//! RMSNorm (Llama's pre-norm): `y = x * rstd * w`, `rstd = 1 / sqrt(mean(x²) + eps)` per row.
//!
//! Forward saves `rstd` (one per row) for the backward. With `g = dy * w`, the backward is
//! `dx = rstd * (g - x * rstd² * mean(g * x))` and `dw += Σ_rows dy * x * rstd`. The weight
//! gradient is summed over fixed blocks of rows and the block sums are added in order, so the
//! result does not depend on the thread count.

use rayon::prelude::*;

use super::simd_kernel;

/// Rows per block in the weight-gradient reduction; fixed so results are thread-independent.
const DW_BLOCK: usize = 64;

/// Reference: x (N, D), w (D) -> (y (N, D), rstd (N)), accumulated in f64.
pub fn rmsnorm_ref(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; x.len() / d];
    for (i, xr) in x.chunks(d).enumerate() {
        let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        rstd[i] = r as f32;
        for c in 0..d {
            y[i * d + c] = (xr[c] as f64 * r * w[c] as f64) as f32;
        }
    }
    (y, rstd)
}

/// Fast forward: rows in parallel. y and x are (N, D), rstd is (N).
pub fn rmsnorm(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    y.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks(d)).for_each(|((yr, r), xr)| *r = rmsnorm_row(yr, xr, w, eps));
}

/// Reference backward: returns (dx, dw) for dy (N, D).
pub fn rmsnorm_backward_ref(dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0f64; d];
    for i in 0..rstd.len() {
        let r = rstd[i] as f64;
        let (xr, dyr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
        let gx = (0..d).map(|c| dyr[c] as f64 * w[c] as f64 * xr[c] as f64).sum::<f64>() / d as f64;
        for c in 0..d {
            let g = dyr[c] as f64 * w[c] as f64;
            dx[i * d + c] = (r * (g - xr[c] as f64 * r * r * gx)) as f32;
            dw[c] += dyr[c] as f64 * xr[c] as f64 * r;
        }
    }
    (dx, dw.into_iter().map(|v| v as f32).collect())
}

/// Fast backward, accumulating: `dx += ...`, `dw += ...`.
pub fn rmsnorm_backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32]) {
    let d = w.len();
    dx.par_chunks_mut(d).zip(dy.par_chunks(d)).zip(x.par_chunks(d)).zip(rstd.par_iter()).for_each(
        |(((dxr, dyr), xr), &r)| rmsnorm_backward_row(dxr, dyr, xr, w, r),
    );
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(d * DW_BLOCK)
        .zip(x.par_chunks(d * DW_BLOCK))
        .zip(rstd.par_chunks(DW_BLOCK))
        .map(|((dyb, xb), rb)| {
            let mut p = vec![0.0f32; d];
            rmsnorm_dw_block(&mut p, dyb, xb, rb);
            p
        })
        .collect();
    for p in partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
}

simd_kernel! {
    /// One row of [`rmsnorm`]: writes y, returns rstd.
    pub(crate) fn rmsnorm_row(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) -> f32 {
        let ms = super::dot_plain(x, x) / w.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &wc) in y.iter_mut().zip(x).zip(w) {
            *o = v * r * wc;
        }
        r
    }
}

simd_kernel! {
    /// One row of [`rmsnorm_backward`]'s dx (accumulating).
    fn rmsnorm_backward_row(dx: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], r: f32) {
        let d = w.len().min(dx.len()).min(dy.len()).min(x.len());
        let mut gx = 0.0f32;
        for c in 0..d {
            gx += dy[c] * w[c] * x[c];
        }
        let k = r * r * gx / w.len() as f32;
        for c in 0..d {
            dx[c] += r * (dy[c] * w[c] - x[c] * k);
        }
    }
}

simd_kernel! {
    /// One block of rows of [`rmsnorm_backward`]'s dw: `p += Σ_rows dy * x * rstd`.
    fn rmsnorm_dw_block(p: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32]) {
        let d = p.len();
        for ((dyr, xr), &r) in dy.chunks(d).zip(x.chunks(d)).zip(rstd) {
            for c in 0..d.min(dyr.len()).min(xr.len()) {
                p[c] += dyr[c] * xr[c] * r;
            }
        }
    }
}
