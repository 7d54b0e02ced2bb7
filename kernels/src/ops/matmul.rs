//! Matrix products: the forward of every linear layer and the two products of its backward.
//!
//! `C (m, n) [+]= op(A) (m, k) @ op(B) (k, n)` where `op` is identity or transpose as stored:
//! a linear layer `y = x @ Wᵀ` with W stored (out, in) is `matmul(y, x, N, w, T, ...)`; its
//! backward is `dx = dy @ W` (`N, N`) and `dW += dyᵀ @ x` (`T, N`). The fast version calls the
//! `gemm` crate (AVX-512 kernels chosen at run time); a transpose is only a swap of strides.
//! `gemm` splits work over output blocks, never over k, so each output element is summed in
//! the same order whatever the thread count.

use gemm::Parallelism;

/// How an operand is stored relative to the product's view of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tr {
    /// Stored as used: A is (m, k) row-major.
    N,
    /// Stored transposed: A is given as its transpose, (k, m) row-major.
    T,
}

/// The product's shape: C is (m, n), the contraction is over k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

fn check_lens(c: &[f32], a: &[f32], b: &[f32], s: MmShape) {
    // Callers inside the engine size buffers from the model's own shapes, so a mismatch here
    // is a bug in the engine, not bad input.
    assert_eq!(c.len(), s.m * s.n, "matmul: C has {} elements, shape {s:?}", c.len());
    assert_eq!(a.len(), s.m * s.k, "matmul: A has {} elements, shape {s:?}", a.len());
    assert_eq!(b.len(), s.k * s.n, "matmul: B has {} elements, shape {s:?}", b.len());
}

/// Reference: the triple loop, accumulated in f64.
pub fn matmul_ref(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool) {
    check_lens(c, a, b, s);
    let MmShape { m, k, n } = s;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = match ta { Tr::N => a[i * k + p], Tr::T => a[p * m + i] };
                let bv = match tb { Tr::N => b[p * n + j], Tr::T => b[j * k + p] };
                acc += av as f64 * bv as f64;
            }
            let prev = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (prev + acc) as f32;
        }
    }
}

/// Threads for a product of this shape: one thread for small or skinny products, where
/// splitting costs more than it gains (gemm with 2 threads on m = 64 runs slower than 1).
fn parallelism(s: MmShape) -> Parallelism {
    let threads = rayon::current_num_threads();
    let work = s.m * s.n * s.k;
    if threads <= 1 || work < (1 << 20) || s.m.min(s.n) < 32 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// Fast product through `gemm`, with the same contract as [`matmul_ref`].
pub fn matmul(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool) {
    matmul_with(c, a, ta, b, tb, s, accumulate, parallelism(s));
}

/// [`matmul`] on one thread: for callers that already run in parallel (per attention head).
pub fn matmul_serial(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool) {
    matmul_with(c, a, ta, b, tb, s, accumulate, Parallelism::None);
}

#[allow(clippy::too_many_arguments)]
fn matmul_with(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool, par: Parallelism) {
    check_lens(c, a, b, s);
    let MmShape { m, k, n } = s;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // gemm strides are (column stride, row stride) in elements.
    let (a_cs, a_rs) = match ta { Tr::N => (1, k as isize), Tr::T => (m as isize, 1) };
    let (b_cs, b_rs) = match tb { Tr::N => (1, n as isize), Tr::T => (k as isize, 1) };
    // SAFETY: the lengths were checked against the shape above, and the strides address
    // exactly those row-major buffers.
    unsafe {
        gemm::gemm(
            m, n, k, c.as_mut_ptr(), 1, n as isize, accumulate, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs,
            1.0f32, 1.0f32, false, false, false, par,
        );
    }
}

/// `y (m, n) = x (m, k) @ Wᵀ` for few rows (decoding), with W (n, k) as f32 or bf16 bits.
/// Memory-bound: each weight is read once, and the output rows are split across threads.
pub fn linear_few_rows(y: &mut [f32], x: &[f32], w: WeightRef<'_>, m: usize, k: usize, n: usize) {
    assert_eq!(y.len(), m * n, "linear_few_rows: y");
    assert_eq!(x.len(), m * k, "linear_few_rows: x");
    assert_eq!(w.len(), n * k, "linear_few_rows: w");
    use rayon::prelude::*;
    // Blocks of 64 output features: big enough to amortise a task, small enough to balance.
    const BLOCK: usize = 64;
    let mut yt = vec![0.0f32; n * m]; // (n, m): each block of features owns a contiguous slice
    yt.par_chunks_mut(BLOCK * m).enumerate().for_each(|(bi, out)| {
        let j0 = bi * BLOCK;
        for (jj, o) in out.chunks_mut(m).enumerate() {
            let j = j0 + jj;
            for (r, o) in o.iter_mut().enumerate() {
                let xr = &x[r * k..(r + 1) * k];
                *o = match w {
                    WeightRef::F32(w) => dot_fast(xr, &w[j * k..(j + 1) * k]),
                    WeightRef::Bf16(w) => dot_bf16(xr, &w[j * k..(j + 1) * k]),
                };
            }
        }
    });
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = yt[j * m + r];
        }
    }
}

/// A weight matrix in either storage type.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    /// bf16 as raw bits: the top 16 bits of the f32.
    Bf16(&'a [u16]),
}

impl WeightRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::Bf16(w) => w.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dot product dispatched to AVX2+FMA when the CPU has it (the crate is built for baseline
/// x86-64, so the plain loop would only get SSE2).
#[inline]
pub fn dot_fast(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { dot_avx2(a, b) };
        }
    }
    super::dot(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    super::dot_plain(a, b)
}

/// Dot product of f32 activations with bf16 weights (bits shifted into an f32).
#[inline]
pub fn dot_bf16(a: &[f32], w: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { dot_bf16_avx2(a, w) };
        }
    }
    dot_bf16_plain(a, w)
}

#[inline(always)]
fn dot_bf16_plain(a: &[f32], w: &[u16]) -> f32 {
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cw = w.chunks_exact(16);
    let (ra, rw) = (ca.remainder(), cw.remainder());
    for (x, y) in ca.zip(cw) {
        for l in 0..16 {
            acc[l] += x[l] * f32::from_bits((y[l] as u32) << 16);
        }
    }
    let mut s = 0.0f32;
    for (x, y) in ra.iter().zip(rw) {
        s += x * f32::from_bits((*y as u32) << 16);
    }
    acc.iter().sum::<f32>() + s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16_avx2(a: &[f32], w: &[u16]) -> f32 {
    dot_bf16_plain(a, w)
}

/// Rounds f32 to bf16 bits (round to nearest even), for the bf16-weight decoding option.
pub fn to_bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Sum of a slice with AVX2 when present (used to measure read bandwidth).
pub fn sum_fast(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was detected at run time.
            return unsafe { sum_avx2(x) };
        }
    }
    sum_plain(x)
}

#[inline(always)]
fn sum_plain(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let c = x.chunks_exact(32);
    let r: f32 = c.remainder().iter().sum();
    for v in c {
        for l in 0..32 {
            acc[l] += v[l];
        }
    }
    acc.iter().sum::<f32>() + r
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(x: &[f32]) -> f32 {
    sum_plain(x)
}
