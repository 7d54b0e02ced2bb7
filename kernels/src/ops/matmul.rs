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
    assert_eq!(c.len(), s.m * s.n, "matmul: C has {} elements, shape {s:?}", c.len());
    check_operands(a, b, s);
}

/// Callers inside the engine size buffers from the model's own shapes, so a mismatch here
/// is a bug in the engine, not bad input.
fn check_operands(a: &[f32], b: &[f32], s: MmShape) {
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

/// `C = op(A) @ op(B)` into a new buffer, which is not zero-filled first: the product writes
/// every element of C without reading it. The same numbers as [`matmul`] without accumulation.
pub fn matmul_new(a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape) -> Vec<f32> {
    check_operands(a, b, s);
    let MmShape { m, k, n } = s;
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: C has capacity m·n, addressed row-major with ld n; A and B lengths were checked
    // against the shape. Not accumulating, gemm never reads C and writes each of its m·n
    // elements once, so all are initialised before set_len.
    unsafe {
        gemm_raw(c.as_mut_ptr(), n, a, natural_ld(ta, m, k), ta, b, natural_ld(tb, k, n), tb, s, false, parallelism(s));
        c.set_len(m * n);
    }
    c
}

/// [`matmul`] on one thread: for callers that already run in parallel (per attention head).
pub fn matmul_serial(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool) {
    matmul_with(c, a, ta, b, tb, s, accumulate, Parallelism::None);
}

#[allow(clippy::too_many_arguments)]
fn matmul_with(c: &mut [f32], a: &[f32], ta: Tr, b: &[f32], tb: Tr, s: MmShape, accumulate: bool, par: Parallelism) {
    check_lens(c, a, b, s);
    let MmShape { m, k, n } = s;
    matmul_ld_with(c, n, a, natural_ld(ta, m, k), ta, b, natural_ld(tb, k, n), tb, s, accumulate, par);
}

/// The leading dimension of a whole row-major operand whose product view is (rows, cols).
fn natural_ld(t: Tr, rows: usize, cols: usize) -> usize {
    match t {
        Tr::N => cols,
        Tr::T => rows,
    }
}

/// The one call into `gemm`: C (m, n) [+]= op(A) @ op(B), each operand row-major with its
/// leading dimension. SAFETY: m, n, k > 0 and every addressed element of A, B and C lies
/// inside its buffer; C is only read when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(c: *mut f32, ldc: usize, a: &[f32], lda: usize, ta: Tr, b: &[f32], ldb: usize, tb: Tr, s: MmShape, accumulate: bool, par: Parallelism) {
    let MmShape { m, k, n } = s;
    // gemm strides are (column stride, row stride) in elements.
    let (a_cs, a_rs) = match ta { Tr::N => (1, lda as isize), Tr::T => (lda as isize, 1) };
    let (b_cs, b_rs) = match tb { Tr::N => (1, ldb as isize), Tr::T => (ldb as isize, 1) };
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            m, n, k, c, 1, ldc as isize, accumulate, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs,
            1.0f32, 1.0f32, false, false, false, par,
        );
    }
}

/// [`matmul_serial`] on sub-matrices of larger row-major buffers: each operand is given by a
/// slice starting at its first element and its leading dimension (the distance between
/// consecutive stored rows; the stored form is (m, k) for A with `Tr::N`, (k, m) with `Tr::T`,
/// and likewise for B). Used by attention to compute only the causal blocks of (L, L) products.
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial_ld(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, ta: Tr, b: &[f32], ldb: usize, tb: Tr, s: MmShape, accumulate: bool) {
    matmul_ld_with(c, ldc, a, lda, ta, b, ldb, tb, s, accumulate, Parallelism::None);
}

/// [`matmul_serial_ld`] with the threads [`matmul`] would use for this shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ld(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, ta: Tr, b: &[f32], ldb: usize, tb: Tr, s: MmShape, accumulate: bool) {
    matmul_ld_with(c, ldc, a, lda, ta, b, ldb, tb, s, accumulate, parallelism(s));
}

#[allow(clippy::too_many_arguments)]
fn matmul_ld_with(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, ta: Tr, b: &[f32], ldb: usize, tb: Tr, s: MmShape, accumulate: bool, par: Parallelism) {
    let MmShape { m, k, n } = s;
    if m == 0 || n == 0 {
        return;
    }
    let need = |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    let (ar, ac) = match ta { Tr::N => (m, k), Tr::T => (k, m) };
    let (br, bc) = match tb { Tr::N => (k, n), Tr::T => (n, k) };
    assert!(ldc >= n && c.len() >= need(m, n, ldc), "matmul_ld: C too short for {s:?}, ld {ldc}");
    assert!(lda >= ac && a.len() >= need(ar, ac, lda), "matmul_ld: A too short for {s:?}, ld {lda}");
    assert!(ldb >= bc && b.len() >= need(br, bc, ldb), "matmul_ld: B too short for {s:?}, ld {ldb}");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the asserts above check that every addressed element lies inside its slice.
    unsafe { gemm_raw(c.as_mut_ptr(), ldc, a, lda, ta, b, ldb, tb, s, accumulate, par) };
}

/// `y (m, n) = x (m, k) @ Wᵀ` for few rows (decoding), with W (n, k) as f32 or bf16 bits.
/// Memory-bound: each weight is read once, and the output features are split across threads.
pub fn linear_few_rows(y: &mut [f32], x: &[f32], w: WeightRef<'_>, m: usize, k: usize, n: usize) {
    linear_few_rows_many(x, m, k, &mut [FewRows { y, w, n }]);
}

/// One product of [`linear_few_rows_many`]: `y (m, n) = x @ Wᵀ` with W (n, k).
pub struct FewRows<'a> {
    pub y: &'a mut [f32],
    pub w: WeightRef<'a>,
    pub n: usize,
}

/// Several few-row products of the same input in one parallel pass (a layer's q, k and v, or
/// its gate and up): one fork/join instead of one per product. Each output is a dot product
/// of an input row with a weight row, summed in an order that depends only on k, so a row's
/// numbers do not depend on the batch, the thread count or which products share the pass.
///
/// Work is cut into blocks of 64 output features; inside a block, four weight rows are read
/// together (the input row is loaded once for the four) while the next four rows are
/// prefetched, which keeps enough reads in flight to run near the memory bandwidth.
pub fn linear_few_rows_many(x: &[f32], m: usize, k: usize, outs: &mut [FewRows<'_>]) {
    use rayon::prelude::*;
    const BLOCK: usize = FEW_ROWS_BLOCK;
    assert_eq!(x.len(), m * k, "linear_few_rows: x");
    for o in outs.iter() {
        assert_eq!(o.y.len(), m * o.n, "linear_few_rows: y");
        assert_eq!(o.w.len(), o.n * k, "linear_few_rows: w");
    }
    // Results are written feature-major, (n, m), so each block owns a contiguous slice.
    let mut yts: Vec<Vec<f32>> = outs.iter().map(|o| vec![0.0f32; o.n * m]).collect();
    let mut tasks: Vec<(WeightRef<'_>, usize, &mut [f32])> = Vec::new();
    for (o, yt) in outs.iter().zip(yts.iter_mut()) {
        for (bi, chunk) in yt.chunks_mut(BLOCK * m).enumerate() {
            tasks.push((o.w, bi * BLOCK, chunk));
        }
    }
    tasks.into_par_iter().for_each(|(w, j0, out)| few_rows_block(x, m, k, w, j0, out));
    for (o, yt) in outs.iter_mut().zip(&yts) {
        for j in 0..o.n {
            for r in 0..m {
                o.y[r * o.n + j] = yt[j * m + r];
            }
        }
    }
}

/// The output features per task of [`linear_few_rows_many`] (a multiple of 4, so a task
/// starts on a packed group of four).
pub const FEW_ROWS_BLOCK: usize = 64;

/// Output features `j0 .. j0 + out.len() / m` of `x (m, k) @ Wᵀ`, written feature-major into
/// `out` ((features, m)): four weight rows at a time, single rows only at the end of the
/// matrix. The one loop behind every few-row product (a feature's sum does not depend on
/// which call or thread computes it).
pub fn few_rows_block(x: &[f32], m: usize, k: usize, w: WeightRef<'_>, j0: usize, out: &mut [f32]) {
    let feats = out.len() / m;
    let mut jj = 0;
    while jj < feats {
        let take = if feats - jj >= 4 { 4 } else { 1 };
        let j = j0 + jj;
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            let mut got = [0.0f32; 4];
            dot_rows(xr, w, j, take, &mut got[..take], r == 0);
            for (i, g) in got[..take].iter().enumerate() {
                out[(jj + i) * m + r] = *g;
            }
        }
        jj += take;
    }
}

/// `out[i] = x · W[j + i]` for `out.len()` (1 or 4) consecutive weight rows, optionally
/// prefetching the rows that follow them. With a packed weight ([`pack_rows`]) four rows start
/// at a multiple of 4 and single rows lie past the last group of four.
fn dot_rows(x: &[f32], w: WeightRef<'_>, j: usize, rows: usize, out: &mut [f32], prefetch: bool) {
    let k = x.len();
    if w.is_packed() {
        let n = w.len() / k;
        assert!(if rows == 4 { j % 4 == 0 } else { j >= n / 4 * 4 }, "dot_rows: rows {j}.. of a packed weight are not a group of four or a row past them");
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time; the slices hold `rows` rows of k
            // (a packed group of four holds the same 4k values as four plain rows).
            unsafe {
                match (w, rows) {
                    (WeightRef::F32(w), 4) => simd::dot_rows_f32::<4>(x, &w[j * k..(j + 4) * k], out, prefetch),
                    (WeightRef::F32Packed(w), 4) => simd::dot_packed_f32(x, &w[j * k..(j + 4) * k], out, prefetch),
                    (WeightRef::F32(w) | WeightRef::F32Packed(w), _) => simd::dot_rows_f32::<1>(x, &w[j * k..(j + 1) * k], out, prefetch),
                    (WeightRef::Bf16(w), 4) => simd::dot_rows_bf16::<4>(x, &w[j * k..(j + 4) * k], out, prefetch),
                    (WeightRef::Bf16Packed(w), 4) => simd::dot_packed_bf16(x, &w[j * k..(j + 4) * k], out, prefetch),
                    (WeightRef::Bf16(w) | WeightRef::Bf16Packed(w), _) => simd::dot_rows_bf16::<1>(x, &w[j * k..(j + 1) * k], out, prefetch),
                }
            }
            return;
        }
    }
    let _ = prefetch;
    for (i, o) in out.iter_mut().enumerate().take(rows) {
        let row = j + i;
        *o = match w {
            WeightRef::F32(w) => super::dot(x, &w[row * k..(row + 1) * k]),
            WeightRef::Bf16(w) => dot_bf16_plain(x, &w[row * k..(row + 1) * k]),
            WeightRef::F32Packed(w) => super::dot(x, &packed_row(w, k, row)),
            WeightRef::Bf16Packed(w) => dot_bf16_plain(x, &packed_row(w, k, row)),
        };
    }
}

/// A weight (n, k), row-major, in the layout the decoding products stream through: each group
/// of four rows (0-3, 4-7, ...) becomes its k / 16 blocks of sixteen columns, the four rows'
/// blocks side by side (4 × 16 values), then the four rows' last k mod 16 values; the n mod 4
/// rows after the last group stay as they are. The same n · k values, so four rows are one
/// forward stream instead of four, which the hardware prefetchers follow better (measured in
/// BENCHMARKS-engine.md, "Session 9"). Sums over a packed weight are bit-identical to sums over
/// the plain one.
pub fn pack_rows<T: Copy + Default>(w: &[T], k: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    pack_rows_into(w, k, &mut out, |v| v);
    out
}

/// [`pack_rows`] into `out` (as long as `w`), each value converted by `convert` on the way
/// (to bf16 bits, or the identity), so no converted copy of the whole matrix is made first.
pub fn pack_rows_into<S: Copy, T>(w: &[S], k: usize, out: &mut [T], convert: impl Fn(S) -> T) {
    assert!(k > 0 && w.len() % k == 0, "pack_rows: {} values are not rows of {k}", w.len());
    assert_eq!(out.len(), w.len(), "pack_rows: output length");
    let groups = w.len() / k / 4;
    let k16 = k - k % 16;
    let mut at = 0;
    let mut put = |src: &[S]| {
        for (o, &v) in out[at..at + src.len()].iter_mut().zip(src) {
            *o = convert(v);
        }
        at += src.len();
    };
    for g in 0..groups {
        let rows = &w[g * 4 * k..(g + 1) * 4 * k];
        for c in (0..k16).step_by(16) {
            for r in 0..4 {
                put(&rows[r * k + c..r * k + c + 16]);
            }
        }
        for r in 0..4 {
            put(&rows[r * k + k16..(r + 1) * k]);
        }
    }
    put(&w[groups * 4 * k..]);
}

/// Row `row` of a weight packed by [`pack_rows`], in plain order.
pub fn packed_row<T: Copy>(w: &[T], k: usize, row: usize) -> Vec<T> {
    let n = w.len() / k;
    if row >= n / 4 * 4 {
        return w[row * k..(row + 1) * k].to_vec();
    }
    let (g, r) = (row / 4, row % 4);
    let group = &w[g * 4 * k..(g + 1) * 4 * k];
    let k16 = k - k % 16;
    let tail = k - k16;
    let mut out = Vec::with_capacity(k);
    for c in (0..k16).step_by(16) {
        out.extend_from_slice(&group[4 * c + r * 16..4 * c + r * 16 + 16]);
    }
    out.extend_from_slice(&group[4 * k16 + r * tail..4 * k16 + (r + 1) * tail]);
    out
}

/// The AVX2 dot-product kernels of the decoding products. Every row is summed the same way
/// whatever R: 16 lanes as two 8-wide accumulators, the two added, the 8 lanes summed in
/// order, then the tail (k mod 16) one by one.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    macro_rules! dot_rows_kernel {
        ($name:ident, $elem:ty, $load:ident, $scalar:expr) => {
            /// SAFETY: needs AVX2 and FMA; `w` holds R rows of `x.len()` weights and `out` R slots.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name<const R: usize>(x: &[f32], w: &[$elem], out: &mut [f32], prefetch: bool) {
                let k = x.len();
                assert!(w.len() == R * k && out.len() == R);
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                let mut lo = [_mm256_setzero_ps(); R];
                let mut hi = [_mm256_setzero_ps(); R];
                // Once per 64-byte line of each row: prefetch the same offset R rows further
                // on (the next group's rows; past the end of w is harmless, a prefetch never
                // faults).
                let per_line = 64 / std::mem::size_of::<$elem>();
                let mut p = 0;
                while p + 16 <= k {
                    if prefetch && p % per_line == 0 {
                        for r in 0..R {
                            _mm_prefetch(wp.wrapping_add((r + R) * k + p) as *const i8, _MM_HINT_T0);
                        }
                    }
                    // SAFETY: p + 16 <= k, so all reads stay inside x and row r of w.
                    unsafe {
                        let x0 = _mm256_loadu_ps(xp.add(p));
                        let x1 = _mm256_loadu_ps(xp.add(p + 8));
                        for r in 0..R {
                            lo[r] = _mm256_fmadd_ps(x0, $load(wp.add(r * k + p)), lo[r]);
                            hi[r] = _mm256_fmadd_ps(x1, $load(wp.add(r * k + p + 8)), hi[r]);
                        }
                    }
                    p += 16;
                }
                for r in 0..R {
                    let mut lanes = [0.0f32; 8];
                    // SAFETY: lanes holds 8 f32s.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(lo[r], hi[r])) };
                    let mut s = 0.0f32;
                    for l in lanes {
                        s += l;
                    }
                    for q in p..k {
                        s += x[q] * $scalar(w[r * k + q]);
                    }
                    out[r] = s;
                }
            }
        };
    }

    /// SAFETY: 8 readable f32s at p; AVX.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }

    /// Eight bf16 values widened to f32 (the bits shifted into the top half).
    /// SAFETY: 8 readable u16s at p; AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }

    dot_rows_kernel!(dot_rows_f32, f32, load_f32, |v: f32| v);
    dot_rows_kernel!(dot_rows_bf16, u16, load_bf16, |v: u16| f32::from_bits((v as u32) << 16));

    /// How far ahead of the block being summed a packed group prefetches (bytes): about a
    /// memory latency's worth of a thread's stream at 40 GB/s. 1 KiB was as good on hosts
    /// reading 23-50 GB/s; on the AMD host reading 80-90 GB/s, SmolLM2 decoded 5% faster with
    /// 4 KiB and 4% faster again with 8 KiB; 16 KiB was no better (BENCHMARKS-engine.md,
    /// "Session 10").
    const PACKED_PREFETCH: usize = 8192;

    macro_rules! dot_packed_kernel {
        ($name:ident, $elem:ty, $load:ident, $scalar:expr) => {
            /// Four rows of a weight packed by `pack_rows`: the same sums, in the same order, as
            /// the plain kernel with R = 4, reading one forward stream.
            /// SAFETY: needs AVX2 and FMA; `w` holds one packed group of 4 · `x.len()` weights.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(x: &[f32], w: &[$elem], out: &mut [f32], prefetch: bool) {
                let k = x.len();
                assert!(w.len() == 4 * k && out.len() == 4);
                let k16 = k - k % 16;
                let tail = k - k16;
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                let mut lo = [_mm256_setzero_ps(); 4];
                let mut hi = [_mm256_setzero_ps(); 4];
                let size = std::mem::size_of::<$elem>();
                let (ahead, per_line) = (PACKED_PREFETCH / size, 64 / size);
                let mut p = 0;
                while p < k16 {
                    // The block of sixteen columns of the four rows starts at 4p.
                    let q = wp.wrapping_add(4 * p);
                    if prefetch {
                        // Every line of this block, PACKED_PREFETCH bytes on (past the end of w
                        // is harmless: a prefetch never faults).
                        let mut l = 0;
                        while l < 64 {
                            _mm_prefetch(q.wrapping_add(ahead + l) as *const i8, _MM_HINT_T0);
                            l += per_line;
                        }
                    }
                    // SAFETY: p + 16 <= k16 <= k, and the block's 64 values lie inside w.
                    unsafe {
                        let x0 = _mm256_loadu_ps(xp.add(p));
                        let x1 = _mm256_loadu_ps(xp.add(p + 8));
                        for r in 0..4 {
                            lo[r] = _mm256_fmadd_ps(x0, $load(q.add(r * 16)), lo[r]);
                            hi[r] = _mm256_fmadd_ps(x1, $load(q.add(r * 16 + 8)), hi[r]);
                        }
                    }
                    p += 16;
                }
                for r in 0..4 {
                    let mut lanes = [0.0f32; 8];
                    // SAFETY: lanes holds 8 f32s.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(lo[r], hi[r])) };
                    let mut s = 0.0f32;
                    for l in lanes {
                        s += l;
                    }
                    for t in 0..tail {
                        s += x[k16 + t] * $scalar(w[4 * k16 + r * tail + t]);
                    }
                    out[r] = s;
                }
            }
        };
    }

    dot_packed_kernel!(dot_packed_f32, f32, load_f32, |v: f32| v);
    dot_packed_kernel!(dot_packed_bf16, u16, load_bf16, |v: u16| f32::from_bits((v as u32) << 16));
}

/// A weight matrix in either storage type.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    /// bf16 as raw bits: the top 16 bits of the f32.
    Bf16(&'a [u16]),
    /// f32 in the [`pack_rows`] layout.
    F32Packed(&'a [f32]),
    /// bf16 bits in the [`pack_rows`] layout.
    Bf16Packed(&'a [u16]),
}

impl WeightRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) | WeightRef::F32Packed(w) => w.len(),
            WeightRef::Bf16(w) | WeightRef::Bf16Packed(w) => w.len(),
        }
    }
    pub fn is_packed(&self) -> bool {
        matches!(self, WeightRef::F32Packed(_) | WeightRef::Bf16Packed(_))
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

super::simd_kernel! {
    /// Dot product dispatched to AVX2+FMA when the CPU has it (the crate is built for baseline
    /// x86-64, so the plain loop would only get SSE2).
    #[inline]
    pub fn dot_fast(a: &[f32], b: &[f32]) -> f32 {
        super::dot_plain(a, b)
    }
}

/// Dot product of f32 activations with bf16 weights: the portable fallback.
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

/// Rounds f32 to bf16 bits (round to nearest even), for the bf16-weight decoding option.
pub fn to_bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Sum of a slice with AVX2 when present, prefetching 8 KiB ahead: the read bandwidth that
/// the decoding products (which prefetch the same way) are measured against.
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
    use std::arch::x86_64::*;
    const AHEAD: usize = 2048; // f32s
    let p = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= x.len() {
        _mm_prefetch(p.wrapping_add(i + AHEAD) as *const i8, _MM_HINT_T0);
        _mm_prefetch(p.wrapping_add(i + AHEAD + 16) as *const i8, _MM_HINT_T0);
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32 <= len.
            *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(p.add(i + 8 * l)) });
        }
        i += 32;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: lanes holds 8 f32s.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) };
    lanes.iter().sum::<f32>() + x[i..].iter().sum::<f32>()
}
