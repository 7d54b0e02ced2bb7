//! Decoding few rows with the pool's threads claiming work inside one step.
//!
//! A decoding step of one to a few rows is memory-bound: each weight is read once, and on two
//! cores a layer's seven matrices take tens of microseconds each. Run as one fork/join per
//! product (rayon), every product pays for waking the other worker, which by then has often
//! gone to sleep while the first thread did the norm, RoPE and attention between products:
//! measured on the 2-vCPU host, about 12 µs per product after a serial gap of 20 µs or more,
//! over a hundred products per token (BENCHMARKS-engine.md, "Session 10").
//!
//! Here the calling thread (the leader) runs the whole step as a sequence of phases (a layer's
//! q/k/v product, attention, output product, gate/up product with SwiGLU, down product, and at
//! the end the head), and spawns one helper per other pool thread. Each phase is a list of
//! items (64 output features of a product, 256 of the head, or one head of one token), split
//! into one contiguous range per thread; a thread claims the items of its own range in order
//! with an atomic counter (one forward stream through the weights, as the prefetchers like),
//! then helps with the other ranges. Between phases the leader alone does the short serial
//! parts (RoPE and the cache append, the residual additions and norms) while helpers wait. A
//! helper that starts late (its thread was asleep) joins the phase in progress, and one that
//! never starts costs nothing: the leader does its range too, and at the end of the step runs
//! the unstarted helper job itself, which returns at once. (A first version split every phase
//! statically among all threads with barriers: a step then waited for the slowest thread to
//! wake, up to milliseconds on the VM, and a small model decoded 8x slower. A second claimed
//! 32-feature items from one shared counter: the threads' streams interleaved and the
//! counters' cache lines bounced, and SmolLM2 lost what the team had won.)
//!
//! Every number is computed by the same kernels in the same order as in the fork/join path of
//! [`crate::generate::forward_cached`] ([`few_rows_block`] on blocks starting at multiples of
//! four, [`attend_head`], the row functions of the norm, RoPE and SwiGLU), so the results are
//! bit-identical to it whichever thread computes an item (test
//! `decode_team_matches_the_fork_join_path`).
//!
//! The shared buffers are written through raw pointers: within a phase each item writes its
//! own elements, the leader's serial parts run while no item runs, and the phase counters'
//! release/acquire order every write before the reads of the next phase.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::generate::{AttnScratch, DecodeWeights, KvCache, append_kv, attend_head};
use crate::model::{self, Llama};
use crate::ops::Span;
use crate::ops::attention::AttnShape;
use crate::ops::matmul::few_rows_block;
use crate::ops::norm::rmsnorm_row;
use crate::ops::rope::{self, rope_serial};
use crate::ops::swiglu::swiglu_chunk;

/// Output features per item of a layer's product and of the head (multiples of 4: items start
/// on a group of four weight rows, as [`few_rows_block`] requires).
const ITEM: usize = 64;
const HEAD_ITEM: usize = 256;

/// Spins before a waiting thread starts yielding its core (in case the thread it waits for
/// was preempted).
const SPINS: u32 = 1 << 12;

/// A buffer the step's threads share (see the module docs for the protocol).
struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: access follows the protocol in the module docs (disjoint writes within a phase,
// serial parts while no item runs, reads after the phase that wrote them).
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(v: &mut [T]) -> Self {
        Shared { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// SAFETY: no thread writes the buffer while the returned slice is used.
    unsafe fn all(&self) -> &[T] {
        // SAFETY: ptr and len come from a live slice that outlives the step (the caller's).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// SAFETY: no other thread reads or writes `r` while the returned slice is used.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "shared buffer: {r:?} out of 0..{}", self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

/// An item of a product phase: output features `j0..j0 + len` of matrix `slot` of the phase.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    slot: usize,
    j0: usize,
    len: usize,
}

/// The items of `size` features of a phase whose products have output widths `douts`.
fn blocks(douts: &[usize], size: usize) -> Vec<Block> {
    let mut out = Vec::new();
    for (slot, &n) in douts.iter().enumerate() {
        for j0 in (0..n).step_by(size) {
            out.push(Block { slot, j0, len: size.min(n - j0) });
        }
    }
    out
}

/// Thread `t`'s contiguous range of `n` items among `threads`.
fn share(n: usize, t: usize, threads: usize) -> std::ops::Range<usize> {
    n * t / threads..n * (t + 1) / threads
}

/// Whether [`forward`] should run this step: a step of at most `max_rows` token rows on a pool
/// of two or more threads.
pub(crate) fn applies(rows: usize, max_rows: usize) -> bool {
    rows <= max_rows && rayon::current_num_threads() >= 2
}

/// The phases of one layer, in order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Qkv,
    Attention,
    Out,
    GateUp,
    Down,
}

const KINDS: [Kind; 5] = [Kind::Qkv, Kind::Attention, Kind::Out, Kind::GateUp, Kind::Down];

/// Waits until `done()`, spinning, then yielding the core now and then.
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The decoder layers and the head for `n` new tokens in rows `spans` (hidden states `x`
/// (n, D) after the embedding), appending each row's keys and values to its cache, with the
/// pool's threads; returns the head's output at each row's last token, (rows, out_width). The
/// caller has checked the rows (lengths, positions, token ids) and updates `cache.len`
/// afterwards.
pub(crate) fn forward(dw: &DecodeWeights<'_>, mut x: Vec<f32>, positions: &[usize], spans: &[Span], caches: &mut [&mut KvCache]) -> Vec<f32> {
    let m: &Llama = dw.model;
    let c = &m.config;
    let n = positions.len();
    let (d, f, layers) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
    let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let sh = AttnShape { heads: c.num_attention_heads, kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
    let (rows, ow) = (spans.len(), m.out_width());
    let table = m.rope_table();
    let eps = c.rms_norm_eps;
    let norm = |h: &mut [f32], x: &[f32], w: &[f32]| {
        for (hr, xr) in h.chunks_mut(d).zip(x.chunks(d)) {
            rmsnorm_row(hr, xr, w, eps);
        }
    };

    let mut h = vec![0.0f32; n * d];
    norm(&mut h, &x, m.layer_param(0, model::ATTN_NORM));
    let (mut q, mut k, mut v) = (vec![0.0f32; n * qd], vec![0.0f32; n * kvd], vec![0.0f32; n * kvd]);
    let (mut att, mut o, mut a) = (vec![0.0f32; n * qd], vec![0.0f32; n * d], vec![0.0f32; n * f]);
    let (mut hl, mut logits) = (vec![0.0f32; rows * d], vec![0.0f32; rows * ow]);
    let (sx, sh_, sq, sk, sv) = (Shared::new(&mut x), Shared::new(&mut h), Shared::new(&mut q), Shared::new(&mut k), Shared::new(&mut v));
    let (satt, so, sa, shl, sout) = (Shared::new(&mut att), Shared::new(&mut o), Shared::new(&mut a), Shared::new(&mut hl), Shared::new(&mut logits));
    let scaches = Shared::new(caches);

    let (qkv, outs, ffn, head) = (blocks(&[qd, kvd, kvd], ITEM), blocks(&[d], ITEM), blocks(&[f], ITEM), blocks(&[ow], HEAD_ITEM));
    // Attention items: (row span, new token of the span, head).
    let heads: Vec<(usize, usize, usize)> =
        spans.iter().enumerate().flat_map(|(s, sp)| (0..sp.len).flat_map(move |i| (0..sh.heads).map(move |hh| (s, i, hh)))).collect();
    let items_of = |kind: Kind| match kind {
        Kind::Qkv => qkv.len(),
        Kind::Attention => heads.len(),
        Kind::Out | Kind::Down => outs.len(),
        Kind::GateUp => ffn.len(),
    };
    // Phase p < 5·layers is kind p % 5 of layer p / 5; phase 5·layers is the head.
    let phases = KINDS.len() * layers + 1;
    let items: Vec<usize> = (0..phases).map(|p| if p + 1 == phases { head.len() } else { items_of(KINDS[p % KINDS.len()]) }).collect();
    let threads = rayon::current_num_threads();
    // next[p][t]: the next unclaimed item of thread t's range of phase p.
    let next: Vec<Vec<AtomicUsize>> = items.iter().map(|&n| (0..threads).map(|t| AtomicUsize::new(share(n, t, threads).start)).collect()).collect();
    let done: Vec<AtomicUsize> = (0..phases).map(|_| AtomicUsize::new(0)).collect();
    let phase = AtomicUsize::new(0);
    let joined = AtomicUsize::new(1);

    // Writes a block's feature-major results (len, r) into y (r, width) at columns j0...
    let scatter = |y: &Shared<f32>, width: usize, r: usize, b: &Block, fm: &[f32]| {
        for row in 0..r {
            // SAFETY: this item owns columns j0..j0+len of every row of y in its phase.
            let dst = unsafe { y.part(row * width + b.j0..row * width + b.j0 + b.len) };
            for (i, out) in dst.iter_mut().enumerate() {
                *out = fm[i * r + row];
            }
        }
    };

    // Item `i` of phase `p`, with a thread's scratch buffers.
    let run_item = |p: usize, i: usize, tmp: &mut [f32], tmp2: &mut [f32], scratch: &mut AttnScratch| {
        if p + 1 == phases {
            let b = &head[i];
            let fm = &mut tmp[..b.len * rows];
            // SAFETY: hl is written only by the leader's serial part before this phase.
            few_rows_block(unsafe { shl.all() }, rows, d, dw.w(m.head_index()), b.j0, fm);
            scatter(&sout, ow, rows, b, fm);
            return;
        }
        let (l, kind) = (p / KINDS.len(), KINDS[p % KINDS.len()]);
        let wi = |j| Llama::layer_index(l, j);
        // SAFETY (all reads below): the buffers read were written in earlier phases or serial parts.
        match kind {
            Kind::Qkv => {
                let b = &qkv[i];
                let fm = &mut tmp[..b.len * n];
                let (w, dst, width) = [(model::WQ, &sq, qd), (model::WK, &sk, kvd), (model::WV, &sv, kvd)][b.slot];
                few_rows_block(unsafe { sh_.all() }, n, d, dw.w(wi(w)), b.j0, fm);
                scatter(dst, width, n, b, fm);
            }
            Kind::Attention => {
                let (s, t, hh) = heads[i];
                let (sp, qq, cs) = (&spans[s], unsafe { sq.all() }, unsafe { scaches.all() });
                let row = sp.offset + t;
                // SAFETY: each item owns its head's columns of its token's row.
                let out = unsafe { satt.part(row * qd + hh * sh.head_dim..row * qd + (hh + 1) * sh.head_dim) };
                let cache = &cs[s];
                attend_head(out, &qq[sp.offset * qd..(sp.offset + sp.len) * qd], &cache.k[l], &cache.v[l], cache.len + sp.len, sh, t, hh, scratch);
            }
            Kind::Out => {
                let b = &outs[i];
                let fm = &mut tmp[..b.len * n];
                few_rows_block(unsafe { satt.all() }, n, qd, dw.w(wi(model::WO)), b.j0, fm);
                scatter(&so, d, n, b, fm);
            }
            Kind::GateUp => {
                let b = &ffn[i];
                let (g, u) = (&mut tmp[..b.len * n], &mut tmp2[..b.len * n]);
                let hh = unsafe { sh_.all() };
                few_rows_block(hh, n, d, dw.w(wi(model::WG)), b.j0, g);
                few_rows_block(hh, n, d, dw.w(wi(model::WU)), b.j0, u);
                let (mut act, mut gr, mut ur) = ([0.0f32; ITEM], [0.0f32; ITEM], [0.0f32; ITEM]);
                for r in 0..n {
                    // Feature-major (len, n) to this row's len values.
                    for j in 0..b.len {
                        (gr[j], ur[j]) = (g[j * n + r], u[j * n + r]);
                    }
                    swiglu_chunk(&mut act[..b.len], &gr[..b.len], &ur[..b.len]);
                    // SAFETY: this item owns columns j0..j0+len of a.
                    unsafe { sa.part(r * f + b.j0..r * f + b.j0 + b.len) }.copy_from_slice(&act[..b.len]);
                }
            }
            Kind::Down => {
                let b = &outs[i];
                let fm = &mut tmp[..b.len * n];
                few_rows_block(unsafe { sa.all() }, n, f, dw.w(wi(model::WD)), b.j0, fm);
                scatter(&so, d, n, b, fm);
            }
        }
    };

    // Thread `t` claims and runs items of phase p, its own range first, until none is left.
    let work = |p: usize, t: usize, tmp: &mut [f32], tmp2: &mut [f32], scratch: &mut AttnScratch| {
        let mut ran = 0;
        for r in (0..threads).map(|j| (t + j) % threads) {
            let end = share(items[p], r, threads).end;
            loop {
                let i = next[p][r].fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                run_item(p, i, tmp, tmp2, scratch);
                ran += 1;
            }
        }
        done[p].fetch_add(ran, Ordering::Release);
    };
    let scratch_rows = n.max(rows);
    let buffers = || (vec![0.0f32; HEAD_ITEM * scratch_rows], vec![0.0f32; ITEM * scratch_rows], AttnScratch::default());
    let helper = || {
        let t = joined.fetch_add(1, Ordering::Relaxed).min(threads - 1);
        let (mut tmp, mut tmp2, mut scratch) = buffers();
        let mut p = phase.load(Ordering::Acquire);
        while p < phases {
            work(p, t, &mut tmp, &mut tmp2, &mut scratch);
            wait_until(|| phase.load(Ordering::Acquire) != p);
            p = phase.load(Ordering::Acquire);
        }
    };
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| helper());
        }
        let (mut tmp, mut tmp2, mut scratch) = buffers();
        for p in 0..phases {
            work(p, 0, &mut tmp, &mut tmp2, &mut scratch);
            wait_until(|| done[p].load(Ordering::Acquire) == items[p]);
            // The serial part after phase p; no item runs until the phase counter moves on.
            // SAFETY: exclusive access (see the module docs).
            unsafe {
                if p + 1 < phases {
                    let l = p / KINDS.len();
                    match KINDS[p % KINDS.len()] {
                        Kind::Qkv => {
                            rope_serial(sq.part(0..n * qd), positions, c.num_attention_heads, table, rope::Direction::Forward);
                            rope_serial(sk.part(0..n * kvd), positions, c.num_key_value_heads, table, rope::Direction::Forward);
                            append_kv(scaches.part(0..spans.len()), spans, l, sk.all(), sv.all(), kvd);
                        }
                        Kind::Out | Kind::Down => {
                            let xs = sx.part(0..n * d);
                            xs.iter_mut().zip(so.all()).for_each(|(a, b)| *a += b);
                            if KINDS[p % KINDS.len()] == Kind::Out {
                                norm(sh_.part(0..n * d), xs, m.layer_param(l, model::MLP_NORM));
                            } else if l + 1 < layers {
                                norm(sh_.part(0..n * d), xs, m.layer_param(l + 1, model::ATTN_NORM));
                            } else {
                                // The head reads each row's last token.
                                for (hr, sp) in shl.part(0..rows * d).chunks_mut(d).zip(spans) {
                                    let last = sp.offset + sp.len - 1;
                                    rmsnorm_row(hr, &xs[last * d..(last + 1) * d], m.final_norm(), eps);
                                }
                            }
                        }
                        Kind::Attention | Kind::GateUp => {}
                    }
                }
            }
            phase.store(p + 1, Ordering::Release);
        }
    });
    logits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output feature is in exactly one item; items start on a group of four and end on
    /// one unless at the matrix's end.
    #[test]
    fn blocks_cover_each_feature_once_on_group_boundaries() {
        for douts in [vec![576, 192, 192], vec![1536], vec![7], vec![3, 5, 130], vec![1]] {
            let mut seen: Vec<Vec<u32>> = douts.iter().map(|&n| vec![0; n]).collect();
            for b in blocks(&douts, ITEM) {
                assert!(b.len > 0 && b.len <= ITEM && b.j0 % 4 == 0, "{b:?}");
                assert!((b.j0 + b.len) % 4 == 0 || b.j0 + b.len == douts[b.slot], "{b:?} of {douts:?}");
                for j in b.j0..b.j0 + b.len {
                    seen[b.slot][j] += 1;
                }
            }
            assert!(seen.iter().flatten().all(|&c| c == 1), "{douts:?}");
        }
    }
}
