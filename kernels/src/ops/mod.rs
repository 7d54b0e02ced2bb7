//! The engine's ops on the CPU, one file per concept, each with a slow obvious reference
//! (`*_ref`, the specification: plain loops, f64 accumulation, never optimised) next to the
//! fast version the model calls (gemm, rayon, cache-friendly loops), and a hand-written
//! backward for every forward. `tests/parity.rs` compares fast with reference and
//! `tests/gradcheck.rs` compares every backward with finite differences.
//!
//! Conventions: tensors are row-major `&[f32]` with the shape in the doc comment, e.g. `x` is
//! (N, D) for N tokens of width D. A batch of rows of different lengths is packed: row r owns
//! tokens `offset_r .. offset_r + len_r` (a [`Span`]); attention never crosses rows.
//! Backward functions *accumulate* into their gradient outputs (`+=`) so that residual
//! branches and tied weights add up without extra buffers. Reductions over tokens run in an
//! order fixed by the data, never by the thread count, so results are bit-identical with one
//! thread or many.

pub mod attention;
pub mod embedding;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod swiglu;
pub mod pages;

/// One row of a packed batch: tokens `offset .. offset + len` of the (N, ·) tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

/// Spans for rows of the given lengths, packed back to back.
pub fn spans_of(lens: impl IntoIterator<Item = usize>) -> Vec<Span> {
    let mut offset = 0;
    lens.into_iter()
        .map(|len| {
            let s = Span { offset, len };
            offset += len;
            s
        })
        .collect()
}

/// Checks `|got - want| <= atol + rtol * |want|` elementwise; the error names the worst index
/// (largest excess over its tolerance) with both values, so a failing test says where.
pub fn check_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != expected {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let bad = excess > 0.0 || g.is_nan() != w.is_nan();
        if bad && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{what}: worst index {i}: got {} want {} (|diff| {} > atol {atol} + rtol {rtol} * |want|)",
            got[i], want[i], (got[i] - want[i]).abs()
        )),
    }
}

/// Dot product in f32 with 16 independent lanes so the compiler vectorises it; the summation
/// order depends only on the length, never on threads.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_plain(a, b)
}

/// The body of [`dot`], always inlined so that callers compiled with AVX2 enabled (see
/// `matmul::dot_fast`) get it in 8-wide registers.
#[inline(always)]
pub(crate) fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    acc.iter().sum::<f32>() + s
}

/// The widest [`simd_kernel!`] version allowed to run: 0 baseline, 1 AVX2+FMA, 2 AVX-512.
static KERNEL_LIMIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(KernelLevel::Avx512 as u8);

/// Which versions of the [`simd_kernel!`] kernels may run (for the tests that all versions
/// agree bit for bit; results are the same either way). The CPU's features still decide
/// among the allowed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelLevel {
    /// The build's baseline (SSE2 on x86-64).
    Baseline = 0,
    /// Up to AVX2 + FMA (8 lanes).
    Avx2 = 1,
    /// Up to AVX-512 (16 lanes): the default.
    Avx512 = 2,
}

/// Limits the [`simd_kernel!`] kernels to `level` and below.
pub fn limit_kernels(level: KernelLevel) {
    KERNEL_LIMIT.store(level as u8, std::sync::atomic::Ordering::Relaxed);
}

/// Makes the [`simd_kernel!`] kernels run their baseline versions even on AVX2 CPUs (`true`),
/// or lifts every limit (`false`).
pub fn force_baseline_kernels(on: bool) {
    limit_kernels(if on { KernelLevel::Baseline } else { KernelLevel::Avx512 });
}

/// The widest level this CPU supports (detected once).
fn cpu_level() -> KernelLevel {
    static LEVEL: std::sync::OnceLock<KernelLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let avx512 = std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq");
            if avx2 && avx512 {
                KernelLevel::Avx512
            } else if avx2 {
                KernelLevel::Avx2
            } else {
                KernelLevel::Baseline
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            KernelLevel::Baseline
        }
    })
}

/// The version of the [`simd_kernel!`] kernels that runs: the widest the CPU has, within
/// [`limit_kernels`].
#[inline]
pub(crate) fn kernel_level() -> KernelLevel {
    match KERNEL_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => KernelLevel::Baseline,
        1 => cpu_level().min(KernelLevel::Avx2),
        _ => cpu_level(),
    }
}

/// Whether the AVX2+FMA kernels (or wider) may run: the CPU has them and they are allowed.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    kernel_level() >= KernelLevel::Avx2
}

/// Defines an elementwise kernel three times from one body: compiled for the build's baseline
/// (SSE2 on x86-64), for AVX2+FMA and for AVX-512, the widest the CPU has picked at run time.
/// The hot loops of norms, SwiGLU, softmax and AdamW then run 8 or 16 lanes wide on the CPUs
/// that have them without a `-C target-cpu` build that would not start on older ones. Rust
/// never fuses a multiply and an add on its own, and the bodies keep their summation order
/// fixed (sums in 16 explicit lanes), so every version gives bit-identical results.
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn plain($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                plain($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                plain($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            {
                match $crate::ops::kernel_level() {
                    // SAFETY: kernel_level() is Avx512 only on a CPU with the features `avx512`
                    // was compiled for.
                    $crate::ops::KernelLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: likewise for `avx2`.
                    $crate::ops::KernelLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::KernelLevel::Baseline => {}
                }
            }
            plain($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

/// Sum of a slice in 16 independent lanes (vectorisable; the order depends only on the
/// length, so the result is the same on every thread count and CPU).
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let c = x.chunks_exact(16);
    let rest = c.remainder();
    for v in c {
        for l in 0..16 {
            acc[l] += v[l];
        }
    }
    let mut s = 0.0f32;
    for &v in rest {
        s += v;
    }
    acc.iter().sum::<f32>() + s
}

/// Maximum of a slice in 16 lanes (NaN-free inputs; -inf for an empty slice).
#[inline(always)]
pub(crate) fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let c = x.chunks_exact(16);
    let rest = c.remainder();
    for v in c {
        for l in 0..16 {
            acc[l] = if v[l] > acc[l] { v[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in rest {
        m = if v > m { v } else { m };
    }
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

simd_kernel! {
    /// `out = exp(x - shift)` elementwise with [`exp_one`]; returns the sum of `out` (in 16
    /// lanes): the numerator and denominator of a softmax whose maximum is `shift`.
    pub(crate) fn exp_shifted_sum(out: &mut [f32], x: &[f32], shift: f32) -> f32 {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp_one(v - shift);
        }
        lane_sum(out)
    }
}

/// `1 / (1 + exp(-x))` with [`exp_one`]; branch-free, so loops over it vectorise.
#[inline(always)]
pub(crate) fn sigmoid_one(x: f32) -> f32 {
    1.0 / (1.0 + exp_one(-x))
}

simd_kernel! {
    /// `x ← exp(x)` for a slice, vectorised (AVX2+FMA when present): the Cephes
    /// single-precision method, `exp(x) = 2^n · exp(r)` with `n = round(x / ln 2)` and a
    /// degree-7 polynomial for `exp(r)` on |r| <= ln2/2 (relative error about 1e-7, like libm's
    /// expf, but 8 lanes at a time). Inputs are clamped to [-87.3, 88.3] (so 2^n stays a normal
    /// f32): very negative inputs give ~1e-38, not 0, and inputs past 88.3 give exp(88.3). The
    /// kernels fuse [`exp_one`] into their own loops; this is its slice form (and its test).
    pub fn exp_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = exp_one(*v);
        }
    }
}

/// One lane of [`exp_inplace`]; branch-free so loops over it vectorise.
#[inline(always)]
pub fn exp_one(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to the nearest integer
    let x = x.max(-87.3).min(88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits; reading it with integer ops (not an
    // f32 -> i32 cast, which saturates and does not vectorise) keeps the loop in SIMD.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.500_000_01;
    let e = y * r * r + r + 1.0;
    e * f32::from_bits((n_int.wrapping_add(127) as u32) << 23)
}
