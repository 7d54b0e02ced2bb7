//! Rotary position embeddings in Hugging Face's "rotate half" layout: for a head vector of
//! width hd with half = hd/2, pair i (i < half) is (x[i], x[i + half]) rotated by the angle
//! `pos * theta^(-2i/hd)`. The angles are computed in f64 and rounded once, as transformers
//! does in float64 for the golden files. Rotation is orthogonal, so the backward is the same
//! rotation by the negative angle ([`Direction::Inverse`]).

use rayon::prelude::*;

/// Forward rotation or its inverse (the backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Inverse,
}

/// cos and sin for positions 0..len and pair index 0..half, each (len, half).
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub half: usize,
    pub len: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, len: usize) -> RopeTable {
        let half = head_dim / 2;
        let mut cos = vec![0.0; len * half];
        let mut sin = vec![0.0; len * half];
        for p in 0..len {
            for i in 0..half {
                let a = angle(p, i, head_dim, theta);
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        RopeTable { half, len, cos, sin }
    }

    /// cos of every (position, pair) angle, (len, half).
    pub fn cos(&self) -> &[f32] {
        &self.cos
    }

    /// sin of every (position, pair) angle, (len, half).
    pub fn sin(&self) -> &[f32] {
        &self.sin
    }
}

fn angle(pos: usize, i: usize, head_dim: usize, theta: f32) -> f64 {
    // The inverse frequency as transformers writes it: 1 / theta^(2i / hd).
    let inv_freq = 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64);
    pos as f64 * inv_freq
}

/// Reference: rotates x (N, heads * hd) in place, token t at position `pos[t]`, computing each
/// angle from scratch.
pub fn rope_ref(x: &mut [f32], pos: &[usize], heads: usize, hd: usize, theta: f32, dir: Direction) {
    let half = hd / 2;
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = t * heads * hd + h * hd;
            for i in 0..half {
                let a = angle(p, i, hd, theta);
                let (c, s) = (a.cos(), if dir == Direction::Forward { a.sin() } else { -a.sin() });
                let (x1, x2) = (x[base + i] as f64, x[base + i + half] as f64);
                x[base + i] = (x1 * c - x2 * s) as f32;
                x[base + i + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
}

/// Fast: tokens in parallel, angles from the table. Panics if a position is past the table
/// (the model checks positions against it first and returns an error).
pub fn rope(x: &mut [f32], pos: &[usize], heads: usize, table: &RopeTable, dir: Direction) {
    let width = heads * 2 * table.half;
    rope_cols(x, width, 0, pos, heads, table, dir);
}

/// [`rope`] on `heads` heads starting at column `col0` of rows `width` wide (e.g. the q or k
/// columns of a fused q/k/v product); other columns are untouched.
pub fn rope_cols(x: &mut [f32], width: usize, col0: usize, pos: &[usize], heads: usize, table: &RopeTable, dir: Direction) {
    x.par_chunks_mut(width).zip(pos.par_iter()).for_each(|(xt, &p)| rope_row(xt, col0, p, heads, table, dir));
}

/// [`rope`] on one thread (callers that already split work across threads).
pub(crate) fn rope_serial(x: &mut [f32], pos: &[usize], heads: usize, table: &RopeTable, dir: Direction) {
    let width = heads * 2 * table.half;
    for (xt, &p) in x.chunks_mut(width).zip(pos) {
        rope_row(xt, 0, p, heads, table, dir);
    }
}

/// One token's row of [`rope_cols`]: `heads` heads from column `col0`, at position `p`.
fn rope_row(xt: &mut [f32], col0: usize, p: usize, heads: usize, table: &RopeTable, dir: Direction) {
    let half = table.half;
    let hd = 2 * half;
    let cos = &table.cos[p * half..(p + 1) * half];
    let sin = &table.sin[p * half..(p + 1) * half];
    let sign = if dir == Direction::Forward { 1.0 } else { -1.0 };
    for xh in xt[col0..col0 + heads * hd].chunks_mut(hd) {
        let (a, b) = xh.split_at_mut(half);
        for i in 0..half {
            let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
            a[i] = x1 * cos[i] - x2 * s;
            b[i] = x2 * cos[i] + x1 * s;
        }
    }
}
