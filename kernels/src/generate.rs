//! Text generation with a KV cache: batched, greedy or temperature + top-p sampling, per-row
//! random streams, EOS stop and a cap on new tokens.
//!
//! Each prompt is prefilled on its own (one big matrix product per layer over its tokens),
//! then all unfinished rows decode together one token per step. The decode step computes each
//! row's products as independent dot products ([`linear_few_rows_many`]), so a row's numbers, and
//! therefore its tokens, are the same whichever batch it is in; row r samples from the random
//! stream (seed, row id). Weights can be read as f32 or rounded to bf16, which halves the bytes
//! per token on this memory-bound path.

use crate::config::Head;
use crate::model::{self, Llama, ModelError};
use crate::ops::attention::AttnShape;
use crate::ops::matmul::{FewRows, MmShape, Tr, WeightRef, linear_few_rows, linear_few_rows_many, matmul, pack_rows_into, to_bf16_bits};
use crate::ops::pages::HugeBuf;
use crate::ops::{embedding, norm, rope, swiglu};
use crate::rng::Rng;
use rayon::prelude::*;
use std::sync::OnceLock;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0.0 = greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to at least top_p.
    pub top_p: f32,
    pub seed: u64,
}

/// The storage type of the weights read while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightPrecision {
    F32,
    /// Linear and head weights rounded to bf16 (round to nearest even); activations stay f32.
    Bf16,
}

/// The weights the decoder reads. Products over many rows (prefill, large batches) run through
/// gemm on the model's own f32 tensors; products over a few rows stream each matrix once, in
/// the [`crate::ops::matmul::pack_rows`] layout, all matrices in one [`HugeBuf`] (huge pages where Linux allows):
/// f32 copies packed the first time a few-row product runs, or bf16 copies packed when the
/// weights are made. An f32 model decoded a few rows at a time thus holds its matrices twice
/// (BENCHMARKS-engine.md, "Session 9": 1.2× the tokens/s for that).
pub struct DecodeWeights<'a> {
    pub model: &'a Llama,
    bf16: Option<Packed<u16>>,
    packed_f32: OnceLock<Packed<f32>>,
}

/// Every matrix of a decoding step packed into one buffer: `at[idx]` is the range of parameter
/// `idx` (None for the parameters no product reads).
struct Packed<T: bytemuck::Zeroable + Copy> {
    buf: HugeBuf<T>,
    at: Vec<Option<std::ops::Range<usize>>>,
}

impl<T: bytemuck::Zeroable + Copy + Send + Sync> Packed<T> {
    /// Packs `matrices` of `model`, each value converted by `convert`, in parallel.
    fn new(model: &Llama, matrices: &[usize], convert: impl Fn(f32) -> T + Sync) -> Self {
        let params = model.params();
        let mut at = vec![None; params.len()];
        let mut total = 0;
        for &idx in matrices {
            at[idx] = Some(total..total + params[idx].len());
            total += params[idx].len();
        }
        let mut buf = HugeBuf::zeroed(total);
        let mut parts: Vec<(usize, &mut [T])> = Vec::with_capacity(matrices.len());
        let mut rest: &mut [T] = &mut buf;
        for &idx in matrices {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(params[idx].len());
            parts.push((idx, part));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(idx, out)| pack_rows_into(&params[idx], model.specs()[idx].shape[1], out, &convert));
        Packed { buf, at }
    }

    fn get(&self, idx: usize) -> &[T] {
        let r = self.at[idx].clone().unwrap_or_else(|| panic!("parameter {idx} is not a matrix a decoding step reads"));
        &self.buf[r]
    }
}

impl<'a> DecodeWeights<'a> {
    pub fn new(model: &'a Llama, precision: WeightPrecision) -> DecodeWeights<'a> {
        let mut dw = DecodeWeights { model, bf16: None, packed_f32: OnceLock::new() };
        if precision == WeightPrecision::Bf16 {
            let matrices: Vec<usize> = dw.matrices().collect();
            dw.bf16 = Some(Packed::new(model, &matrices, to_bf16_bits));
        }
        dw
    }

    /// Packs the matrices the few-row products read now rather than on first use (benchmarks
    /// time decoding without the one-off copy).
    pub fn pack_all(&self) {
        if let Some(idx) = self.matrices().next() {
            self.w(idx);
        }
    }

    /// Parameter indices of every matrix one decoding step reads: each layer's seven, then the
    /// head (a tied head is the embedding, read once per step as a matrix).
    fn matrices(&self) -> impl Iterator<Item = usize> + '_ {
        const LAYER: [usize; 7] = [model::WQ, model::WK, model::WV, model::WO, model::WG, model::WU, model::WD];
        (0..self.model.config.num_hidden_layers)
            .flat_map(|l| LAYER.map(|j| Llama::layer_index(l, j)))
            .chain(std::iter::once(self.model.head_index()))
    }

    /// Matrix `idx` (one of [`Self::matrices`]) for the few-row products.
    pub(crate) fn w(&self, idx: usize) -> WeightRef<'_> {
        match &self.bf16 {
            Some(b) => WeightRef::Bf16Packed(b.get(idx)),
            None => {
                let packed = self.packed_f32.get_or_init(|| {
                    let matrices: Vec<usize> = self.matrices().collect();
                    Packed::new(self.model, &matrices, |x| x)
                });
                WeightRef::F32Packed(packed.get(idx))
            }
        }
    }

    /// Matrix `idx` as the model holds it, for gemm; None for bf16 weights.
    fn f32_rows(&self, idx: usize) -> Option<&[f32]> {
        self.bf16.is_none().then(|| self.model.params()[idx].as_slice())
    }

    /// Bytes of weights read to decode one token (every matrix once, plus the head).
    pub fn bytes_per_token(&self) -> usize {
        let per = if self.bf16.is_some() { 2 } else { 4 };
        self.matrices().map(|idx| self.model.params()[idx].len()).sum::<usize>() * per
    }
}

/// One row's KV cache: per layer, keys and values (len, Hkv·hd) after rotary. The default
/// has no layers (a [`Session`] sizes it for its model on first use).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { k: vec![Vec::new(); layers], v: vec![Vec::new(); layers], len: 0 }
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            let width = k.len() / self.len;
            k.truncate(len * width);
            v.truncate(len * width);
        }
        self.len = len;
    }
}

/// One row's decoding state kept between generation calls: its KV cache and the tokens the
/// cache holds. A prompt that extends what the cache holds (the next turn of a dialogue: the
/// previous prompt, its answer, the new user message) runs only its new tokens; a prompt that
/// departs from it keeps the common prefix. The logits are those of a fresh prefill up to
/// rounding: the cached positions were computed one token at a time, a fresh prefill computes
/// them in one product (both deterministic, neither depends on the other rows).
#[derive(Debug, Clone, Default)]
pub struct Session {
    cache: KvCache,
    tokens: Vec<u32>,
}

impl Session {
    /// The tokens whose keys and values are cached.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Makes the cache hold the longest prefix of `prompt` it already has, short of the last
    /// token (whose logits the caller needs); returns how many tokens are reused.
    fn reuse_prefix(&mut self, prompt: &[u32], layers: usize) -> usize {
        if self.cache.k.len() != layers {
            self.cache = KvCache::new(layers);
            self.tokens.clear();
        }
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        keep
    }
}

/// Each `y (n, dout) = x (n, din) @ Wᵀ` of one input, for matrices `(y, parameter index, dout)`,
/// choosing gemm for many f32 rows and dot products otherwise (all products of the input in one
/// parallel pass).
fn project(dw: &DecodeWeights<'_>, x: &[f32], n: usize, din: usize, outs: &mut [(&mut [f32], usize, usize)]) {
    if n > FEW_ROWS_MAX && outs.iter().all(|o| dw.f32_rows(o.1).is_some()) {
        for (y, idx, dout) in outs.iter_mut() {
            let w = dw.f32_rows(*idx).expect("checked above");
            matmul(y, x, Tr::N, w, Tr::T, MmShape { m: n, k: din, n: *dout }, false);
        }
    } else {
        let mut few: Vec<FewRows<'_>> = outs.iter_mut().map(|(y, idx, dout)| FewRows { y, w: dw.w(*idx), n: *dout }).collect();
        linear_few_rows_many(x, n, din, &mut few);
    }
}

/// Dot product in 8 lanes summed as a fixed tree: a head is short (32-128 values), so the
/// 16-lane [`crate::ops::dot_plain`] would spend most of its time on the final sum. The AVX2
/// kernel of [`head_scores`] does the same operations in the same order.
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut rest = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        rest += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + rest
}

/// `scores[j] = (q · k_j) · scale` for the cached keys k_j = `kc[j·kw..][cols]`.
fn head_scores(scores: &mut [f32], q: &[f32], kc: &[f32], kw: usize, cols: std::ops::Range<usize>, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if q.len() == cols.len() && kc.len() >= scores.len() * kw && crate::ops::has_avx2_fma() {
            // SAFETY: AVX2 is present (the kernels check the bounds).
            match q.len() {
                32 => return unsafe { head_scores_avx2::<4>(scores, q, kc, kw, cols.start, scale) },
                64 => return unsafe { head_scores_avx2::<8>(scores, q, kc, kw, cols.start, scale) },
                128 => return unsafe { head_scores_avx2::<16>(scores, q, kc, kw, cols.start, scale) },
                _ => {}
            }
        }
    }
    for (s, k) in scores.iter_mut().zip(kc.chunks_exact(kw)) {
        *s = dot8(q, &k[cols.clone()]) * scale;
    }
}

/// [`head_scores`] for a head of 8·N columns, four keys at a time: the same multiplies and
/// adds as [`dot8`] in the same order (no FMA), so the scores are bit-identical to the plain
/// loop; the four keys' final sums are done side by side after a 4×4 transpose.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_scores_avx2<const N: usize>(scores: &mut [f32], q: &[f32], kc: &[f32], kw: usize, col0: usize, scale: f32) {
    use std::arch::x86_64::*;
    assert!(q.len() == 8 * N && col0 + 8 * N <= kw && kc.len() >= scores.len() * kw);
    let mut qv = [_mm256_setzero_ps(); N];
    for (c, x) in qv.iter_mut().enumerate() {
        // SAFETY: 8c + 8 <= q.len().
        *x = unsafe { _mm256_loadu_ps(q.as_ptr().add(8 * c)) };
    }
    // (a0+a4, a1+a5, a2+a6, a3+a7) of one key's 8 lanes.
    let dot_halves = |row: usize| -> __m128 {
        let mut acc = _mm256_setzero_ps();
        for (c, x) in qv.iter().enumerate() {
            // SAFETY: row < scores.len(), so row·kw + col0 + 8c + 8 <= kc.len() (asserted).
            let y = unsafe { _mm256_loadu_ps(kc.as_ptr().add(row * kw + col0 + 8 * c)) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(*x, y));
        }
        _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1))
    };
    let (zero, sc) = (_mm_setzero_ps(), _mm_set1_ps(scale));
    let full = scores.len() / 4 * 4;
    for j in (0..full).step_by(4) {
        let (a, b, c, d) = (dot_halves(j), dot_halves(j + 1), dot_halves(j + 2), dot_halves(j + 3));
        // Transpose: s_i holds lane i of the four keys.
        let (ab_lo, ab_hi) = (_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b));
        let (cd_lo, cd_hi) = (_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
        let (s0, s1) = (_mm_movelh_ps(ab_lo, cd_lo), _mm_movehl_ps(cd_lo, ab_lo));
        let (s2, s3) = (_mm_movelh_ps(ab_hi, cd_hi), _mm_movehl_ps(cd_hi, ab_hi));
        // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), + 0 (dot8's empty remainder), · scale.
        let dot = _mm_add_ps(_mm_add_ps(_mm_add_ps(s0, s2), _mm_add_ps(s1, s3)), zero);
        // SAFETY: j + 4 <= scores.len().
        unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(j), _mm_mul_ps(dot, sc)) };
    }
    for (j, s) in scores.iter_mut().enumerate().skip(full) {
        let h = dot_halves(j);
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let d = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        *s = (d + 0.0) * scale;
    }
}

/// `o = (Σ_j e_j · v_j) / z` over the cached values v_j = `vc[j·kw..][cols]`, in order of j.
fn head_mix(o: &mut [f32], e: &[f32], z: f32, vc: &[f32], kw: usize, cols: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        if o.len() == cols.len() && crate::ops::has_avx2_fma() {
            // SAFETY: AVX2 is present (the kernels check the bounds).
            match o.len() {
                32 => return unsafe { head_mix_avx2::<4>(o, e, z, vc, kw, cols.start) },
                64 => return unsafe { head_mix_avx2::<8>(o, e, z, vc, kw, cols.start) },
                128 => return unsafe { head_mix_avx2::<16>(o, e, z, vc, kw, cols.start) },
                _ => {}
            }
        }
    }
    for (&ej, v) in e.iter().zip(vc.chunks_exact(kw)) {
        for (a, b) in o.iter_mut().zip(&v[cols.clone()]) {
            *a += ej * b;
        }
    }
    let inv = 1.0 / z;
    for a in o.iter_mut() {
        *a *= inv;
    }
}

/// [`head_mix`] for a head of 8·N columns: the N column blocks' sums stay in registers while
/// the keys stream by once, each column summed over j in order (bit-identical to the plain loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_mix_avx2<const N: usize>(o: &mut [f32], e: &[f32], z: f32, vc: &[f32], kw: usize, col0: usize) {
    use std::arch::x86_64::*;
    assert!(o.len() == 8 * N && col0 + 8 * N <= kw);
    let mut acc = [_mm256_setzero_ps(); N];
    for (c, a) in acc.iter_mut().enumerate() {
        // SAFETY: 8c + 8 <= o.len().
        *a = unsafe { _mm256_loadu_ps(o.as_ptr().add(8 * c)) };
    }
    for (&ej, v) in e.iter().zip(vc.chunks_exact(kw)) {
        let w = _mm256_set1_ps(ej);
        for (c, a) in acc.iter_mut().enumerate() {
            // SAFETY: col0 + 8c + 8 <= kw = v.len() (asserted above).
            let x = unsafe { _mm256_loadu_ps(v.as_ptr().add(col0 + 8 * c)) };
            *a = _mm256_add_ps(*a, _mm256_mul_ps(w, x));
        }
    }
    let inv = _mm256_set1_ps(1.0 / z);
    for (c, a) in acc.iter().enumerate() {
        // SAFETY: 8c + 8 <= o.len().
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * c), _mm256_mul_ps(*a, inv)) };
    }
}

/// Attention of `t_new` new tokens (q: (t_new, Hq·hd)) of one row against its whole cache
/// (keys and values (len, Hkv·hd), the new tokens last), causally.
fn cached_attention(q: &[f32], kc: &[f32], vc: &[f32], len: usize, sh: AttnShape) -> Vec<f32> {
    let qw = sh.heads * sh.head_dim;
    let t_new = q.len() / qw;
    let mut out = vec![0.0f32; q.len()];
    let mut scratch = AttnScratch::default();
    for i in 0..t_new {
        for h in 0..sh.heads {
            let o = &mut out[i * qw + h * sh.head_dim..i * qw + (h + 1) * sh.head_dim];
            attend_head(o, q, kc, vc, len, sh, i, h, &mut scratch);
        }
    }
    out
}

/// Score and exponent buffers of [`attend_head`], reused across heads.
#[derive(Default)]
pub(crate) struct AttnScratch {
    scores: Vec<f32>,
    exps: Vec<f32>,
}

/// Head `h` of new token `i` (of the `q.len() / (Hq·hd)` new tokens of one row, the last of
/// the cache's `len` positions) attending causally over the cache: writes the head's output
/// (head_dim values) into `o`. The one implementation of cached attention.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head(o: &mut [f32], q: &[f32], kc: &[f32], vc: &[f32], len: usize, sh: AttnShape, i: usize, h: usize, sc: &mut AttnScratch) {
    let (hd, qw, kw) = (sh.head_dim, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    let t_new = q.len() / qw;
    let visible = len - t_new + i + 1;
    let scale = 1.0 / (hd as f32).sqrt();
    let kh = h / (sh.heads / sh.kv_heads);
    if sc.scores.len() < visible {
        sc.scores.resize(visible, 0.0);
        sc.exps.resize(visible, 0.0);
    }
    let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
    let cols = kh * hd..(kh + 1) * hd;
    o.fill(0.0);
    head_scores(&mut sc.scores[..visible], qi, &kc[..visible * kw], kw, cols.clone(), scale);
    let max = crate::ops::lane_max(&sc.scores[..visible]);
    let z = crate::ops::exp_shifted_sum(&mut sc.exps[..visible], &sc.scores[..visible], max);
    head_mix(o, &sc.exps[..visible], z, &vc[..visible * kw], kw, cols);
}

/// Runs the new tokens of each row through the model, appending to each row's cache, and
/// returns the head output at each row's last new token: (rows, out_width).
pub fn forward_cached(dw: &DecodeWeights<'_>, new: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Vec<Vec<f32>>, ModelError> {
    let m = dw.model;
    let c = &m.config;
    let table = m.rope_table();
    for (r, (toks, cache)) in new.iter().zip(caches.iter()).enumerate() {
        if toks.is_empty() {
            return Err(ModelError::EmptyRow { row: r });
        }
        if cache.len + toks.len() > table.len {
            return Err(ModelError::TooLong { row: r, len: cache.len + toks.len(), max: table.len });
        }
        if let Some((pos, &token)) = toks.iter().enumerate().find(|(_, t)| **t as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { row: r, pos, token, vocab: c.vocab_size });
        }
    }
    let tokens: Vec<u32> = new.iter().flat_map(|t| t.iter().copied()).collect();
    let positions: Vec<usize> = new.iter().zip(caches.iter()).flat_map(|(t, cache)| cache.len..cache.len + t.len()).collect();
    let n = tokens.len();
    let d = c.hidden_size;
    let spans = crate::ops::spans_of(new.iter().map(|t| t.len()));
    let mut x = vec![0.0f32; n * d];
    embedding::embedding(&mut x, m.embed(), d, &tokens);
    let out = if crate::decode_team::applies(n, FEW_ROWS_MAX) {
        // Few rows: the same numbers on a team of the pool's threads, without a fork/join per product.
        crate::decode_team::forward(dw, x, &positions, &spans, caches)
    } else {
        layers_fork_join(dw, &mut x, &positions, &spans, caches);
        // Only each row's last token needs the head: (rows, D) -> (rows, out_width).
        let last: Vec<f32> = spans.iter().flat_map(|s| x[(s.offset + s.len - 1) * d..(s.offset + s.len) * d].iter().copied()).collect();
        let rows = spans.len();
        let (mut hl, mut rl) = (vec![0.0; rows * d], vec![0.0; rows]);
        norm::rmsnorm(&mut hl, &mut rl, &last, m.final_norm(), c.rms_norm_eps);
        let mut out = vec![0.0; rows * m.out_width()];
        linear_few_rows(&mut out, &hl, dw.w(m.head_index()), rows, d, m.out_width());
        out
    };
    for (s, cache) in spans.iter().zip(caches.iter_mut()) {
        cache.len += s.len;
    }
    Ok(out.chunks(m.out_width()).map(|r| r.to_vec()).collect())
}

/// Appends layer `l`'s keys and values of the new tokens (k, v: (n, kvd), rows `spans`) to each
/// row's cache. `cache.len` moves on only after the last layer.
pub(crate) fn append_kv(caches: &mut [&mut KvCache], spans: &[crate::ops::Span], l: usize, k: &[f32], v: &[f32], kvd: usize) {
    for (s, cache) in spans.iter().zip(caches.iter_mut()) {
        cache.k[l].extend_from_slice(&k[s.offset * kvd..(s.offset + s.len) * kvd]);
        cache.v[l].extend_from_slice(&v[s.offset * kvd..(s.offset + s.len) * kvd]);
    }
}

/// Rows of at most this many tokens decode with [`crate::decode_team`] (and, for f32 weights,
/// the few-row product instead of gemm in either path).
const FEW_ROWS_MAX: usize = 8;

/// The decoder layers of [`forward_cached`] as one fork/join per operation: the path for many
/// rows (prefill, large batches), where each product is long enough for its fork/join.
fn layers_fork_join(dw: &DecodeWeights<'_>, x: &mut [f32], positions: &[usize], spans: &[crate::ops::Span], caches: &mut [&mut KvCache]) {
    let m = dw.model;
    let c = &m.config;
    let table = m.rope_table();
    let n = positions.len();
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let sh = AttnShape { heads: c.num_attention_heads, kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
    let (mut h, mut rstd) = (vec![0.0f32; n * d], vec![0.0f32; n]);
    for l in 0..c.num_hidden_layers {
        let wi = |j| Llama::layer_index(l, j);
        norm::rmsnorm(&mut h, &mut rstd, &*x, m.layer_param(l, model::ATTN_NORM), c.rms_norm_eps);
        let (mut q, mut k, mut v) = (vec![0.0; n * qd], vec![0.0; n * kvd], vec![0.0; n * kvd]);
        project(dw, &h, n, d, &mut [(&mut q, wi(model::WQ), qd), (&mut k, wi(model::WK), kvd), (&mut v, wi(model::WV), kvd)]);
        rope::rope(&mut q, positions, c.num_attention_heads, table, rope::Direction::Forward);
        rope::rope(&mut k, positions, c.num_key_value_heads, table, rope::Direction::Forward);
        append_kv(caches, spans, l, &k, &v, kvd);
        let outs: Vec<Vec<f32>> = spans.par_iter().zip(caches.par_iter()).map(|(s, cache)| {
            let total = cache.len + s.len;
            cached_attention(&q[s.offset * qd..(s.offset + s.len) * qd], &cache.k[l], &cache.v[l], total, sh)
        }).collect();
        let att: Vec<f32> = outs.concat();
        let mut o = vec![0.0; n * d];
        project(dw, &att, n, qd, &mut [(&mut o, wi(model::WO), d)]);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        norm::rmsnorm(&mut h, &mut rstd, &*x, m.layer_param(l, model::MLP_NORM), c.rms_norm_eps);
        let (mut g, mut u, mut a) = (vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * f]);
        project(dw, &h, n, d, &mut [(&mut g, wi(model::WG), f), (&mut u, wi(model::WU), f)]);
        swiglu::swiglu(&mut a, &g, &u);
        project(dw, &a, n, f, &mut [(&mut o, wi(model::WD), d)]);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    }
}

/// Greedy choice: the highest logit, the lowest id on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws the next token: greedy at temperature 0, else softmax(logits / T) sampled with one
/// uniform draw: over the whole vocabulary in id order at top_p 1 (plain sampling), else over
/// the top-p nucleus, most likely first (ties by id).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = params.temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(f64, u32)> = logits.iter().enumerate().map(|(i, &x)| (((x as f64 - max) / t).exp(), i as u32)).collect();
    let z: f64 = probs.iter().map(|p| p.0).sum();
    let top_p = (params.top_p as f64).clamp(0.0, 1.0);
    if top_p >= 1.0 {
        return walk(&probs, rng.uniform() * z);
    }
    // Most likely first, ties by id: a strict total order, so the `k` first of a full sort are
    // the `k` largest, sorted. The nucleus of a trained model is a few dozen tokens of a
    // vocabulary of thousands: order the largest PARTIAL first, and the whole vector only when
    // their mass falls short of top_p. Same tokens as sorting everything (test).
    let order = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    const PARTIAL: usize = 64;
    let kept = match nucleus_within(&mut probs, z, top_p, PARTIAL, order) {
        Some(kept) => kept,
        None => {
            probs.sort_unstable_by(order);
            nucleus(&probs, z, top_p).unwrap_or(probs.len())
        }
    };
    let mass: f64 = probs[..kept].iter().map(|p| p.0).sum();
    walk(&probs[..kept], rng.uniform() * mass)
}

/// The token at which the running sum of `probs` (weights, in the order given) passes `u`.
fn walk(probs: &[(f64, u32)], mut u: f64) -> u32 {
    for &(p, id) in probs {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs[probs.len() - 1].1
}

/// With `probs` sorted (most likely first): the nucleus length, the shortest prefix whose share
/// of `z` reaches `top_p`; `None` if rounding leaves all of `probs` short of it.
fn nucleus(probs: &[(f64, u32)], z: f64, top_p: f64) -> Option<usize> {
    let mut cum = 0.0;
    for (kept, (p, _)) in probs.iter().enumerate() {
        cum += p / z;
        if cum >= top_p {
            return Some(kept + 1);
        }
    }
    None
}

/// Moves the `k` first of `probs` under `order` to its front, sorted, and returns the nucleus
/// length if it lies within them; `None` (the order of `probs` then unspecified) if not.
fn nucleus_within(probs: &mut [(f64, u32)], z: f64, top_p: f64, k: usize, order: impl Fn(&(f64, u32), &(f64, u32)) -> std::cmp::Ordering) -> Option<usize> {
    if probs.len() <= k {
        return None;
    }
    probs.select_nth_unstable_by(k - 1, &order);
    probs[..k].sort_unstable_by(&order);
    nucleus(&probs[..k], z, top_p)
}

/// Batched generation with a KV cache. Row r draws its random numbers from (seed, r) only, so
/// a row's output does not depend on the batch it is in. Stops a row at any of `eos` (the EOS
/// token is included in the output) or after max_new_tokens. Returns only the new tokens.
pub fn generate(model: &Llama, prompts: &[Vec<u32>], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Vec<u32>>, ModelError> {
    let ids: Vec<u64> = (0..prompts.len() as u64).collect();
    generate_with(&DecodeWeights::new(model, WeightPrecision::F32), prompts, &ids, params, eos)
}

/// [`generate`] with chosen weights and row ids: row r samples from (seed, row_ids[r]), so a
/// caller can key each row's randomness by its content (for memo tables and re-runs).
pub fn generate_with(dw: &DecodeWeights<'_>, prompts: &[Vec<u32>], row_ids: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Vec<u32>>, ModelError> {
    let mut sessions = vec![Session::default(); prompts.len()];
    generate_in_sessions(dw, &mut sessions, prompts, row_ids, params, eos)
}

/// [`generate_with`] continuing one [`Session`] per row: each row runs only the part of its
/// prompt its session does not hold yet, and afterwards the session holds the prompt and
/// the new tokens fed back (all but the last). Multi-turn rollouts keep a session per
/// dialogue, so turn t does not run turns 1..t-1 again.
pub fn generate_in_sessions(
    dw: &DecodeWeights<'_>, sessions: &mut [Session], prompts: &[Vec<u32>], row_ids: &[u64], params: &SamplingParams, eos: &[u32],
) -> Result<Vec<Vec<u32>>, ModelError> {
    if dw.model.config.head != Head::LanguageModel {
        return Err(ModelError::WrongHead { op: "generate", needed: "language-model" });
    }
    if row_ids.len() != prompts.len() {
        return Err(ModelError::RowCount { op: "generate (row ids)", expected: prompts.len(), got: row_ids.len() });
    }
    if sessions.len() != prompts.len() {
        return Err(ModelError::RowCount { op: "generate (sessions)", expected: prompts.len(), got: sessions.len() });
    }
    if !(params.top_p > 0.0) || params.temperature.is_nan() {
        return Err(ModelError::Invalid { op: "generate", message: format!("top_p must be in (0, 1] and temperature >= 0 (got {}, {})", params.top_p, params.temperature) });
    }
    let layers = dw.model.config.num_hidden_layers;
    let mut rngs: Vec<Rng> = row_ids.iter().map(|&id| Rng::stream(params.seed, id)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    if params.max_new_tokens == 0 {
        return Ok(out);
    }
    // Prefill each prompt on its own (what its session lacks) and sample its first new token.
    let mut next = vec![0u32; prompts.len()];
    for (r, (p, session)) in prompts.iter().zip(sessions.iter_mut()).enumerate() {
        if p.is_empty() {
            return Err(ModelError::EmptyRow { row: r });
        }
        let keep = session.reuse_prefix(p, layers);
        let logits = forward_cached(dw, &[&p[keep..]], &mut [&mut session.cache]).map_err(|e| renumber(e, r))?;
        session.tokens.extend_from_slice(&p[keep..]);
        next[r] = sample(&logits[0], params, &mut rngs[r]);
    }
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    loop {
        for &r in &active {
            out[r].push(next[r]);
        }
        active.retain(|&r| !eos.contains(&next[r]) && out[r].len() < params.max_new_tokens);
        if active.is_empty() {
            return Ok(out);
        }
        let toks: Vec<[u32; 1]> = active.iter().map(|&r| [next[r]]).collect();
        let new: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
        let mut cache_refs: Vec<&mut KvCache> = Vec::with_capacity(active.len());
        let mut rest: &mut [Session] = sessions;
        let mut base = 0;
        for &r in &active {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r - base);
            let (this, tail) = tail.split_first_mut().expect("active row in range");
            cache_refs.push(&mut this.cache);
            rest = tail;
            base = r + 1;
        }
        let logits = forward_cached(dw, &new, &mut cache_refs)?;
        // Only now do the caches hold the fed tokens (forward_cached checks before it writes).
        for (i, &r) in active.iter().enumerate() {
            sessions[r].tokens.push(next[r]);
            next[r] = sample(&logits[i], params, &mut rngs[r]);
        }
    }
}

/// Errors from a one-row call name the row of the caller's batch.
fn renumber(e: ModelError, r: usize) -> ModelError {
    match e {
        ModelError::EmptyRow { .. } => ModelError::EmptyRow { row: r },
        ModelError::TooLong { len, max, .. } => ModelError::TooLong { row: r, len, max },
        ModelError::TokenOutOfRange { pos, token, vocab, .. } => ModelError::TokenOutOfRange { row: r, pos, token, vocab },
        other => other,
    }
}
