//! Causal self-attention with grouped-query heads over a packed batch.
//!
//! q is (N, Hq·hd), k and v are (N, Hkv·hd), already rotated; query head h reads key/value
//! head `h / (Hq / Hkv)`. Within each row (a [`Span`]) token i attends to tokens 0..=i of the
//! same row: `P = softmax(q kᵀ / sqrt(hd))` with the causal mask, `out = P v`. The forward
//! saves P, one (L, L) block per (row, query head) in row-then-head order (zeros above the
//! diagonal). Backward: `dP = dout vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`,
//! `dq = dS k / sqrt(hd)`, `dk = dSᵀ q / sqrt(hd)`, `dv = Pᵀ dout`, with dk and dv summed over
//! the query heads of a group. The fast version gathers each head into contiguous (L, hd)
//! blocks and uses single-threaded gemm per (row, head), running heads in parallel; the
//! (L, L) products are computed in causal tiles of 64 rows, skipping the blocks above the
//! diagonal.

use super::Span;
use super::matmul::{MmShape, Tr, matmul_serial_ld};
use rayon::prelude::*;

/// Head counts and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// Length of the saved-probabilities buffer for these rows.
pub fn probs_len(spans: &[Span], shape: AttnShape) -> usize {
    spans.iter().map(|s| shape.heads * s.len * s.len).sum()
}

/// Reference forward in f64: returns (out (N, Hq·hd), probs).
pub fn attention_ref(q: &[f32], k: &[f32], v: &[f32], spans: &[Span], sh: AttnShape) -> (Vec<f32>, Vec<f32>) {
    let (hd, qw, kw) = (sh.head_dim, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    let n = q.len() / qw;
    let mut out = vec![0.0f32; n * qw];
    let mut probs = vec![0.0f32; probs_len(spans, sh)];
    let mut pbase = 0;
    let scale = 1.0 / (hd as f64).sqrt();
    for s in spans {
        for h in 0..sh.heads {
            let kh = h / sh.group();
            for i in 0..s.len {
                let qi = (s.offset + i) * qw + h * hd;
                let scores: Vec<f64> = (0..=i).map(|j| {
                    let kj = (s.offset + j) * kw + kh * hd;
                    (0..hd).map(|c| q[qi + c] as f64 * k[kj + c] as f64).sum::<f64>() * scale
                }).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                for (j, sc) in scores.iter().enumerate() {
                    let p = (sc - max).exp() / z;
                    probs[pbase + i * s.len + j] = p as f32;
                    let vj = (s.offset + j) * kw + kh * hd;
                    for c in 0..hd {
                        out[qi + c] += (p * v[vj + c] as f64) as f32;
                    }
                }
            }
            pbase += s.len * s.len;
        }
    }
    (out, probs)
}

/// Columns of a row-major buffer: rows `width` wide, the tensor starting at column `col0`
/// (q, k and v can then be read straight out of the fused q/k/v product).
#[derive(Debug, Clone, Copy)]
pub struct Cols<'a> {
    pub data: &'a [f32],
    pub width: usize,
    pub col0: usize,
}

impl<'a> Cols<'a> {
    /// A plain (N, width) tensor.
    pub fn all(data: &'a [f32], width: usize) -> Cols<'a> {
        Cols { data, width, col0: 0 }
    }
}

/// Rows per causal tile of the (L, L) products: the blocks above the diagonal at this
/// granularity are skipped (for L = 256, 10 of 16 blocks are computed).
const TILE: usize = 64;

/// The tiles [i0, i1) covering 0..l.
fn tiles(l: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..l).step_by(TILE).map(move |i0| (i0, (i0 + TILE).min(l)))
}

/// Copies head `h` of rows `s` of x (N, width) into a contiguous (L, hd) block.
fn gather(x: &[f32], width: usize, s: Span, h: usize, hd: usize) -> Vec<f32> {
    gather_cols(Cols::all(x, width), s, h, hd)
}

fn gather_cols(x: Cols<'_>, s: Span, h: usize, hd: usize) -> Vec<f32> {
    let mut o = Vec::with_capacity(s.len * hd);
    for t in s.offset..s.offset + s.len {
        let b = t * x.width + x.col0 + h * hd;
        o.extend_from_slice(&x.data[b..b + hd]);
    }
    o
}

/// Writes a contiguous (L, hd) block into head `h` of rows `s` of x (rows `width` wide, the
/// tensor at column `col0`).
fn scatter_set(x: &mut [f32], width: usize, col0: usize, s: Span, h: usize, hd: usize, block: &[f32]) {
    for (i, t) in (s.offset..s.offset + s.len).enumerate() {
        let b = t * width + col0 + h * hd;
        x[b..b + hd].copy_from_slice(&block[i * hd..(i + 1) * hd]);
    }
}

/// Adds a contiguous (L, hd) block back into head `h` of rows `s` of x (N, width).
fn scatter_add(x: &mut [f32], width: usize, s: Span, h: usize, hd: usize, block: &[f32]) {
    for (i, t) in (s.offset..s.offset + s.len).enumerate() {
        for (a, b) in x[t * width + h * hd..t * width + (h + 1) * hd].iter_mut().zip(&block[i * hd..(i + 1) * hd]) {
            *a += b;
        }
    }
}

/// Splits the probs buffer into one mutable (L, L) block per (row, head).
fn prob_blocks<'a>(mut probs: &'a mut [f32], spans: &[Span], heads: usize) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(spans.len() * heads);
    for s in spans {
        for _ in 0..heads {
            let (a, rest) = std::mem::take(&mut probs).split_at_mut(s.len * s.len);
            blocks.push(a);
            probs = rest;
        }
    }
    blocks
}

/// Fast forward: writes out (N, Hq·hd) and probs (see [`probs_len`]).
pub fn attention(out: &mut [f32], probs: &mut [f32], q: &[f32], k: &[f32], v: &[f32], spans: &[Span], sh: AttnShape) {
    let (qw, kw) = (sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    attention_cols(out, probs, Cols::all(q, qw), Cols::all(k, kw), Cols::all(v, kw), spans, sh);
}

super::simd_kernel! {
    /// `row ← softmax(row · scale)` (the causal prefix of one query's scores).
    fn softmax_row(row: &mut [f32], scale: f32) {
        // Scaling by a positive number keeps the order, so max(x) · scale is max(x · scale).
        let max = super::lane_max(row) * scale;
        for x in row.iter_mut() {
            *x = super::exp_one(*x * scale - max);
        }
        let inv = 1.0 / super::lane_sum(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

super::simd_kernel! {
    /// The softmax backward of one row: `dp ← p ⊙ (dp - Σ p ⊙ dp) · scale`.
    fn softmax_backward_row(dp: &mut [f32], p: &[f32], scale: f32) {
        let dot = super::dot_plain(p, dp);
        for (d, &pj) in dp.iter_mut().zip(p) {
            *d = pj * (*d - dot) * scale;
        }
    }
}

/// [`attention`] reading q, k and v as column ranges (e.g. of the fused q/k/v product).
pub fn attention_cols(out: &mut [f32], probs: &mut [f32], q: Cols<'_>, k: Cols<'_>, v: Cols<'_>, spans: &[Span], sh: AttnShape) {
    let (hd, qw) = (sh.head_dim, sh.heads * sh.head_dim);
    let tasks: Vec<(Span, usize)> = spans.iter().flat_map(|&s| (0..sh.heads).map(move |h| (s, h))).collect();
    let blocks = prob_blocks(probs, spans, sh.heads);
    let scale = sh.scale();
    let outs: Vec<Vec<f32>> = tasks.par_iter().zip(blocks.into_par_iter()).map(|(&(s, h), p)| {
        let l = s.len;
        let qh = gather_cols(q, s, h, hd);
        let kh = gather_cols(k, s, h / sh.group(), hd);
        let vh = gather_cols(v, s, h / sh.group(), hd);
        // Query tiles of TILE rows: the tile's scores against keys 0..i1 only (the blocks
        // above the diagonal are never computed), the causal softmax row by row, then the
        // tile's output from the same blocks.
        let mut o = vec![0.0f32; l * hd];
        for (i0, i1) in tiles(l) {
            let pt = &mut p[i0 * l..];
            matmul_serial_ld(pt, l, &qh[i0 * hd..], hd, Tr::N, &kh, hd, Tr::T, MmShape { m: i1 - i0, k: hd, n: i1 }, false);
            for i in i0..i1 {
                let row = &mut p[i * l..(i + 1) * l];
                softmax_row(&mut row[..=i], scale);
                row[i + 1..].fill(0.0);
            }
            matmul_serial_ld(&mut o[i0 * hd..], hd, &p[i0 * l..], l, Tr::N, &vh, hd, Tr::N, MmShape { m: i1 - i0, k: i1, n: hd }, false);
        }
        o
    }).collect();
    out.fill(0.0);
    for (&(s, h), o) in tasks.iter().zip(&outs) {
        scatter_add(out, qw, s, h, hd, o);
    }
}

/// Reference backward in f64: returns (dq, dk, dv).
pub fn attention_backward_ref(
    dout: &[f32], q: &[f32], k: &[f32], v: &[f32], probs: &[f32], spans: &[Span], sh: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, qw, kw) = (sh.head_dim, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    let (mut dq, mut dk, mut dv) = (vec![0.0f64; q.len()], vec![0.0f64; k.len()], vec![0.0f64; v.len()]);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut pbase = 0;
    for s in spans {
        for h in 0..sh.heads {
            let kh = h / sh.group();
            for i in 0..s.len {
                let qi = (s.offset + i) * qw + h * hd;
                let p = |j: usize| probs[pbase + i * s.len + j] as f64;
                let dp: Vec<f64> = (0..=i).map(|j| {
                    let vj = (s.offset + j) * kw + kh * hd;
                    (0..hd).map(|c| dout[qi + c] as f64 * v[vj + c] as f64).sum()
                }).collect();
                let dot: f64 = (0..=i).map(|j| p(j) * dp[j]).sum();
                for j in 0..=i {
                    let ds = p(j) * (dp[j] - dot);
                    let kj = (s.offset + j) * kw + kh * hd;
                    for c in 0..hd {
                        dq[qi + c] += ds * k[kj + c] as f64 * scale;
                        dk[kj + c] += ds * q[qi + c] as f64 * scale;
                        dv[kj + c] += p(j) * dout[qi + c] as f64;
                    }
                }
            }
            pbase += s.len * s.len;
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect();
    (f(dq), f(dk), f(dv))
}

/// Fast backward, accumulating into dq (N, Hq·hd), dk and dv (N, Hkv·hd). One task per
/// (row, kv head) owns that head's dk/dv and its group's dq, so no two tasks write the same
/// element and each sum runs in a fixed order.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], dout: &[f32], q: &[f32], k: &[f32], v: &[f32], probs: &[f32],
    spans: &[Span], sh: AttnShape,
) {
    let (hd, qw, kw, g) = (sh.head_dim, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim, sh.group());
    let (tasks, results) = backward_blocks(dout, Cols::all(q, qw), Cols::all(k, kw), Cols::all(v, kw), probs, spans, sh);
    for (&(r, kh), (dqs, dkb, dvb)) in tasks.iter().zip(&results) {
        let s = spans[r];
        for (i, dqb) in dqs.iter().enumerate() {
            scatter_add(dq, qw, s, kh * g + i, hd, dqb);
        }
        scatter_add(dk, kw, s, kh, hd, dkb);
        scatter_add(dv, kw, s, kh, hd, dvb);
    }
}

/// The backward into the fused layout: writes (not adds) dq, dk and dv into the columns of
/// dqkv (rows `width` wide) where q, k and v sit in the forward's q/k/v product. Every element
/// of those columns is written.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_cols(
    dqkv: &mut [f32], width: usize, dout: &[f32], q: Cols<'_>, k: Cols<'_>, v: Cols<'_>, probs: &[f32], spans: &[Span], sh: AttnShape,
) {
    let (hd, g) = (sh.head_dim, sh.group());
    let (tasks, results) = backward_blocks(dout, q, k, v, probs, spans, sh);
    for (&(r, kh), (dqs, dkb, dvb)) in tasks.iter().zip(&results) {
        let s = spans[r];
        for (i, dqb) in dqs.iter().enumerate() {
            scatter_set(dqkv, width, q.col0, s, kh * g + i, hd, dqb);
        }
        scatter_set(dqkv, width, k.col0, s, kh, hd, dkb);
        scatter_set(dqkv, width, v.col0, s, kh, hd, dvb);
    }
}

/// Per (row, kv head): the group's dq blocks, and dk, dv, each (L, hd).
type BackwardBlocks = (Vec<(usize, usize)>, Vec<(Vec<Vec<f32>>, Vec<f32>, Vec<f32>)>);

fn backward_blocks(dout: &[f32], q: Cols<'_>, k: Cols<'_>, v: Cols<'_>, probs: &[f32], spans: &[Span], sh: AttnShape) -> BackwardBlocks {
    let (hd, qw, g) = (sh.head_dim, sh.heads * sh.head_dim, sh.group());
    let scale = sh.scale();
    let mut pbase = Vec::with_capacity(spans.len());
    let mut acc = 0;
    for s in spans {
        pbase.push(acc);
        acc += sh.heads * s.len * s.len;
    }
    let tasks: Vec<(usize, usize)> = (0..spans.len()).flat_map(|r| (0..sh.kv_heads).map(move |kh| (r, kh))).collect();
    type Grads = (Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let results: Vec<Grads> = tasks.par_iter().map(|&(r, kh)| {
        let s = spans[r];
        let l = s.len;
        let kb = gather_cols(k, s, kh, hd);
        let vb = gather_cols(v, s, kh, hd);
        let (mut dkb, mut dvb) = (vec![0.0f32; l * hd], vec![0.0f32; l * hd]);
        let mut dqs = Vec::with_capacity(g);
        let mut dp = vec![0.0f32; l * l];
        for h in kh * g..(kh + 1) * g {
            let p = &probs[pbase[r] + h * l * l..pbase[r] + (h + 1) * l * l];
            let qb = gather_cols(q, s, h, hd);
            let dob = gather(dout, qw, s, h, hd);
            // Only causal blocks: key tile [j0, j1) receives from queries j0..L, query tile
            // [i0, i1) reads keys 0..i1 (dp's blocks above the diagonal are never written nor
            // read).
            // dv (L, hd) += pᵀ (L, L) @ dout (L, hd)
            for (j0, j1) in tiles(l) {
                matmul_serial_ld(&mut dvb[j0 * hd..], hd, &p[j0 * l + j0..], l, Tr::T, &dob[j0 * hd..], hd, Tr::N, MmShape { m: j1 - j0, k: l - j0, n: hd }, true);
            }
            let mut dqb = vec![0.0f32; l * hd];
            for (i0, i1) in tiles(l) {
                // dp = dout @ vᵀ, then dS = p ⊙ (dp - rowsum(p ⊙ dp)) · scale in place.
                matmul_serial_ld(&mut dp[i0 * l..], l, &dob[i0 * hd..], hd, Tr::N, &vb, hd, Tr::T, MmShape { m: i1 - i0, k: hd, n: i1 }, false);
                for i in i0..i1 {
                    let (pr, dr) = (&p[i * l..(i + 1) * l], &mut dp[i * l..(i + 1) * l]);
                    softmax_backward_row(&mut dr[..=i], &pr[..=i], scale);
                    dr[i + 1..i1].fill(0.0);
                }
                // dq (tile) = dS (tile, 0..i1) @ k[0..i1]
                matmul_serial_ld(&mut dqb[i0 * hd..], hd, &dp[i0 * l..], l, Tr::N, &kb, hd, Tr::N, MmShape { m: i1 - i0, k: i1, n: hd }, false);
            }
            // dk (L, hd) += dSᵀ @ q
            for (j0, j1) in tiles(l) {
                matmul_serial_ld(&mut dkb[j0 * hd..], hd, &dp[j0 * l + j0..], l, Tr::T, &qb[j0 * hd..], hd, Tr::N, MmShape { m: j1 - j0, k: l - j0, n: hd }, true);
            }
            dqs.push(dqb);
        }
        (dqs, dkb, dvb)
    }).collect();
    (tasks, results)
}
