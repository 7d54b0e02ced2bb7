//! One launcher per kernel of `kernels/cuda/`, on raw device addresses (see [`super::dptr`])
//! with explicit shapes. bf16 tensors are `u16` buffers holding bf16 bit patterns. Each
//! function queues work on the device's stream and returns at once.

use super::{CudaError, Gpu, launch};
use crate::ops::Span;
use cudarc::driver::{CudaSlice, LaunchConfig};

fn cfg(grid: (u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0.max(1), grid.1.max(1), 1), block_dim: (block, 1, 1), shared_mem_bytes: smem }
}

impl Gpu {
    fn stride_cfg(&self, n: usize) -> LaunchConfig {
        cfg((self.grid_for(n), 1), 256, 0)
    }

    /// x (n, d) f32 = table[tokens].
    pub fn embedding_fwd(&self, x: u64, table: u64, tokens: u64, n: usize, d: usize) -> Result<(), CudaError> {
        launch!(self, "embedding_fwd", self.stride_cfg(n * d); x, table, tokens, n as i32, d as i32);
        Ok(())
    }

    /// dtable[tok] += Σ dx over the token's positions (see [`TokenIndex`]).
    pub fn embedding_bwd(&self, dtable: u64, dx: u64, index: &TokenIndex, d: usize) -> Result<(), CudaError> {
        if index.unique == 0 {
            return Ok(());
        }
        launch!(self, "embedding_bwd", cfg((index.unique as u32, 1), 256, 0);
            dtable, dx, super::dptr(&index.uniq), super::dptr(&index.start), super::dptr(&index.pos), d as i32);
        Ok(())
    }

    /// y (n, d) bf16 = rmsnorm(x f32) · w; rstd (n) saved for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_fwd(&self, y: u64, rstd: u64, x: u64, w: u64, n: usize, d: usize, eps: f32) -> Result<(), CudaError> {
        launch!(self, "rmsnorm_fwd", cfg((n as u32, 1), 256, 0); y, rstd, x, w, n as i32, d as i32, eps);
        Ok(())
    }

    /// y (n, d) f32 = rmsnorm(x) · w.
    pub fn rmsnorm_fwd_f32(&self, y: u64, x: u64, w: u64, n: usize, d: usize, eps: f32) -> Result<(), CudaError> {
        launch!(self, "rmsnorm_fwd_f32", cfg((n as u32, 1), 256, 0); y, x, w, n as i32, d as i32, eps);
        Ok(())
    }

    /// RMSNorm backward: dx (f32, `=` or `+=`) and its bf16 copy dx_b, and dw += Σ_rows.
    /// `scratch` holds at least [`rmsnorm_scratch_len`] floats.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_bwd(&self, dx: u64, dx_b: u64, dw: u64, scratch: u64, dy: u64, x: u64, w: u64, rstd: u64, n: usize, d: usize, accumulate: bool) -> Result<(), CudaError> {
        launch!(self, "rmsnorm_bwd", cfg((n as u32, 1), 256, 0); dx, dx_b, dy, x, w, rstd, n as i32, d as i32, accumulate as i32);
        let chunks = n.div_ceil(RMS_ROWS);
        launch!(self, "rmsnorm_dw_partial", cfg((d.div_ceil(128) as u32, chunks as u32), 128, 0);
            scratch, dy, x, rstd, n as i32, d as i32, RMS_ROWS as i32);
        launch!(self, "sum_rows_add", cfg((d.div_ceil(128) as u32, 1), 128, 0); dw, scratch, chunks as i32, d as i32);
        Ok(())
    }

    /// Rotary embedding in place on `heads` heads of width hd starting at column col0 of bf16
    /// rows of `stride` elements; `inverse` for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(&self, x: u64, stride: usize, col0: usize, cos: u64, sin: u64, pos: u64, n: usize, heads: usize, hd: usize, inverse: bool) -> Result<(), CudaError> {
        // One warp per (token, head).
        launch!(self, "rope", self.stride_cfg(n * heads * 32);
            x, stride as i32, col0 as i32, cos, sin, pos, n as i32, heads as i32, hd as i32, inverse as i32);
        Ok(())
    }

    /// a (n, f) = silu(g) · u from gu (n, 2f) = [g | u].
    pub fn swiglu_fwd(&self, a: u64, gu: u64, n: usize, f: usize) -> Result<(), CudaError> {
        launch!(self, "swiglu_fwd", self.stride_cfg(n * f); a, gu, n as i32, f as i32);
        Ok(())
    }

    /// dgu (n, 2f) from da (n, f) and gu.
    pub fn swiglu_bwd(&self, dgu: u64, da: u64, gu: u64, n: usize, f: usize) -> Result<(), CudaError> {
        launch!(self, "swiglu_bwd", self.stride_cfg(n * f); dgu, da, gu, n as i32, f as i32);
        Ok(())
    }

    pub fn cast_f32_bf16(&self, out: u64, x: u64, n: usize) -> Result<(), CudaError> {
        launch!(self, "cast_f32_bf16", self.stride_cfg(n); out, x, n as i64);
        Ok(())
    }

    pub fn cast_bf16_f32(&self, out: u64, x: u64, n: usize) -> Result<(), CudaError> {
        launch!(self, "cast_bf16_f32", self.stride_cfg(n); out, x, n as i64);
        Ok(())
    }

    /// y += x over n floats.
    pub fn add_inplace(&self, y: u64, x: u64, n: usize) -> Result<(), CudaError> {
        launch!(self, "add_inplace", self.stride_cfg(n); y, x, n as i64);
        Ok(())
    }

    /// logp (n) = log softmax(logits)[target] (0 where target < 0); with `dlogits` (bf16, n×v)
    /// also the gradient of Σ coef·logp.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob(&self, logp: u64, dlogits: Option<u64>, logits: u64, targets: u64, coef: u64, n: usize, v: usize) -> Result<(), CudaError> {
        let (dl, write) = match dlogits {
            Some(p) => (p, 1i32),
            None => (0u64, 0i32),
        };
        launch!(self, "logprob_fwd_bwd", cfg((n as u32, 1), 512, 0); logp, dl, logits, targets, coef, n as i32, v as i32, write);
        Ok(())
    }

    /// Σ g² over n floats, added in a fixed order (waits for the stream).
    pub fn sumsq(&self, g: u64, n: usize, scratch: &CudaSlice<f32>) -> Result<f64, CudaError> {
        let blocks = SUMSQ_BLOCKS.min(n.div_ceil(256)).max(1);
        launch!(self, "sumsq_partial", cfg((blocks as u32, 1), 256, 0); super::dptr(scratch), g, n as i64);
        let part = self.download(scratch)?;
        Ok(part[..blocks].iter().map(|&x| x as f64).sum())
    }

    /// One AdamW update of n parameters (see kernels/cuda/optim.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(&self, p: u64, p_b: u64, m: u64, v: u64, g: u64, n: usize, decay: f32, step: f32, inv_bc2: f32, b1: f32, b2: f32, eps: f32, gscale: f32) -> Result<(), CudaError> {
        launch!(self, "adamw", self.stride_cfg(n); p, p_b, m, v, g, n as i64, decay, step, inv_bc2, b1, b2, eps, gscale);
        Ok(())
    }

    /// Causal attention forward over packed rows: out (n, hq·hd) bf16, lse (hq, n) f32.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd(&self, out: u64, lse: u64, qkv: u64, rows: &PackedRows, hq: usize, hkv: usize, hd: usize, imp: AttnImpl) -> Result<(), CudaError> {
        let n = rows.n;
        let scale = 1.0 / (hd as f32).sqrt();
        let (tr, tt, tl) = (super::dptr(&rows.tile_row), super::dptr(&rows.tile_tok), super::dptr(&rows.tile_len));
        match imp.resolve(hd) {
            AttnImpl::Simple => {
                let smem = ((hd + rows.max_len) * 4) as u32;
                launch!(self, "attn_fwd_simple", cfg((n as u32, hq as u32), 128, smem);
                    out, lse, qkv, super::dptr(&rows.row_start), n as i32, hq as i32, hkv as i32, hd as i32, scale);
            }
            // (`resolve` never gives `Auto`.)
            AttnImpl::Fa2 | AttnImpl::Auto => {
                let name = match hd {
                    32 => "fa2_fwd_32",
                    64 => "fa2_fwd_64",
                    _ => "fa2_fwd_128",
                };
                launch!(self, name, cfg((hq as u32, rows.tiles as u32), 128, tile_smem(hd, 4));
                    out, lse, qkv, tr, tt, tl, super::dptr(&rows.order_q), n as i32, hq as i32, hkv as i32, scale);
            }
        }
        Ok(())
    }

    /// Attention backward: dqkv (n, (hq+2hkv)·hd) bf16 from dout, the forward's out and lse.
    /// `dsum` is scratch of hq·n floats. Every element of dqkv is written.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(&self, dqkv: u64, dsum: u64, dout: u64, out: u64, qkv: u64, lse: u64, rows: &PackedRows, hq: usize, hkv: usize, hd: usize, imp: AttnImpl) -> Result<(), CudaError> {
        let n = rows.n;
        let scale = 1.0 / (hd as f32).sqrt();
        let (tr, tt, tl) = (super::dptr(&rows.tile_row), super::dptr(&rows.tile_tok), super::dptr(&rows.tile_len));
        match imp.resolve(hd) {
            AttnImpl::Simple => {
                launch!(self, "attn_bwd_prep", cfg((n as u32, hq as u32), 32, 0); dsum, dout, out, n as i32, hq as i32, hd as i32);
                let smem = ((2 * hd + rows.max_len) * 4) as u32;
                launch!(self, "attn_bwd_dq_simple", cfg((n as u32, hq as u32), 128, smem);
                    dqkv, dout, qkv, lse, dsum, super::dptr(&rows.row_start), n as i32, hq as i32, hkv as i32, hd as i32, scale);
                launch!(self, "attn_bwd_dkdv_simple", cfg((n as u32, hkv as u32), hd.div_ceil(32) as u32 * 32, 0);
                    dqkv, dout, qkv, lse, dsum, super::dptr(&rows.row_end), n as i32, hq as i32, hkv as i32, hd as i32, scale);
            }
            AttnImpl::Fa2 | AttnImpl::Auto => {
                let (dkdv, dq) = match hd {
                    32 => ("fa2_bwd_dkdv_32", "fa2_bwd_dq_32"),
                    64 => ("fa2_bwd_dkdv_64", "fa2_bwd_dq_64"),
                    _ => ("fa2_bwd_dkdv_128", "fa2_bwd_dq_128"),
                };
                // dQ first: it also writes D = rowsum(dO ∘ O), which the dK/dV kernel reads.
                launch!(self, dq, cfg((hq as u32, rows.tiles as u32), 128, tile_smem(hd, 4));
                    dqkv, dsum, dout, out, qkv, lse, tr, tt, tl, super::dptr(&rows.order_q), n as i32, hq as i32, hkv as i32, scale);
                // With grouped heads each q head's dK, dV go to f32 scratch, then are summed per
                // group in head order (fa2_dkdv_reduce); without groups straight into dqkv.
                let scratch = if hq != hkv { Some((self.empty::<f32>(hq * n * hd)?, self.empty::<f32>(hq * n * hd)?)) } else { None };
                let (dkh, dvh) = scratch.as_ref().map(|(a, b)| (super::dptr(a), super::dptr(b))).unwrap_or((0, 0));
                launch!(self, dkdv, cfg((hq as u32, rows.tiles as u32), 128, tile_smem(hd, 6) + 4 * 64 * 4);
                    dqkv, dkh, dvh, dout, qkv, lse, dsum, tr, tt, tl, super::dptr(&rows.order_k), n as i32, hq as i32, hkv as i32, scale);
                if scratch.is_some() {
                    launch!(self, "fa2_dkdv_reduce", self.stride_cfg(n * hkv * hd); dqkv, dkh, dvh, n as i32, hq as i32, hkv as i32, hd as i32);
                }
            }
        }
        Ok(())
    }

    /// Writes each row's new k and v (from qkv, already rotated) at position pos[r] of the
    /// (b, max_len, hkv·hd) caches.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(&self, kc: u64, vc: u64, qkv: u64, pos: u64, b: usize, max_len: usize, hq: usize, hkv: usize, hd: usize) -> Result<(), CudaError> {
        launch!(self, "kv_append", self.stride_cfg(b * hkv * hd); kc, vc, qkv, pos, b as i32, max_len as i32, hq as i32, hkv as i32, hd as i32);
        Ok(())
    }

    /// out (b, hq·hd) = attention of each row's new query over cache positions 0..=pos[r].
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attn(&self, out: u64, qkv: u64, kc: u64, vc: u64, pos: u64, b: usize, max_len: usize, hq: usize, hkv: usize, hd: usize) -> Result<(), CudaError> {
        let scale = 1.0 / (hd as f32).sqrt();
        launch!(self, "decode_attn", cfg((b as u32, hq as u32), 128, ((hd + max_len) * 4) as u32);
            out, qkv, kc, vc, pos, max_len as i32, hq as i32, hkv as i32, hd as i32, scale);
        Ok(())
    }

    /// The next token of each of b rows of logits (b, v): greedy, or temperature + top-p with
    /// one uniform number per row (see kernels/cuda/decode.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_rows(&self, out: u64, logits: u64, uniform: u64, b: usize, v: usize, temperature: f32, top_p: f32, greedy: bool) -> Result<(), CudaError> {
        let inv_t = if temperature > 0.0 { 1.0 / temperature } else { 1.0 };
        launch!(self, "sample_rows", cfg((b as u32, 1), 1024, 0); out, logits, uniform, v as i32, inv_t, top_p, greedy as i32);
        Ok(())
    }
}

/// Rows per chunk of the deterministic two-pass RMSNorm weight gradient.
pub const RMS_ROWS: usize = 64;
/// Partial sums of the gradient norm.
pub const SUMSQ_BLOCKS: usize = 1024;

/// Scratch floats the RMSNorm backward needs for n rows of width d.
pub fn rmsnorm_scratch_len(n: usize, d: usize) -> usize {
    n.div_ceil(RMS_ROWS) * d
}

fn tile_smem(hd: usize, tiles: usize) -> u32 {
    (tiles * 64 * (hd + 8) * 2) as u32
}

/// Which attention kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnImpl {
    /// The best kernels for the head size: `Fa2` for 32, 64 and 128, else `Simple`.
    Auto,
    /// The simple SIMT kernels (attention.cu: the GPU reference, and every head size).
    Simple,
    /// The tensor-core kernels (attention_fa2.cu: cp.async double buffering, ldmatrix, one
    /// dK/dV block per q head, heaviest tiles first); head sizes 32, 64, 128.
    Fa2,
}

impl AttnImpl {
    /// `ALIGNFLOW_CUDA_ATTENTION=simple` or `=fa2` picks those kernels.
    pub fn from_env() -> AttnImpl {
        match std::env::var("ALIGNFLOW_CUDA_ATTENTION").as_deref() {
            Ok("simple") => AttnImpl::Simple,
            Ok("fa2") => AttnImpl::Fa2,
            _ => AttnImpl::Auto,
        }
    }

    /// The kernels that run for head size `hd`.
    pub fn resolve(self, hd: usize) -> AttnImpl {
        match self {
            AttnImpl::Simple => AttnImpl::Simple,
            _ if !matches!(hd, 32 | 64 | 128) => AttnImpl::Simple,
            _ => AttnImpl::Fa2,
        }
    }
}

/// A packed batch's layout on the device: per token its row's start and end, and the 64-token
/// tiles the flash kernels iterate over.
pub struct PackedRows {
    pub n: usize,
    pub max_len: usize,
    pub tiles: usize,
    pub row_start: CudaSlice<i32>,
    pub row_end: CudaSlice<i32>,
    pub tile_row: CudaSlice<i32>,
    pub tile_tok: CudaSlice<i32>,
    pub tile_len: CudaSlice<i32>,
    /// Tile indices by descending work for query-tile kernels (more key tiles first).
    pub order_q: CudaSlice<i32>,
    /// Tile indices by descending work for key-tile kernels (more query tiles first).
    pub order_k: CudaSlice<i32>,
}

impl PackedRows {
    pub fn new(gpu: &Gpu, spans: &[Span]) -> Result<PackedRows, CudaError> {
        let n: usize = spans.iter().map(|s| s.len).sum();
        let (mut rs, mut re) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut tr, mut tt, mut tl) = (vec![], vec![], vec![]);
        for s in spans {
            for _ in 0..s.len {
                rs.push(s.offset as i32);
                re.push((s.offset + s.len) as i32);
            }
            for t in (0..s.len).step_by(64) {
                tr.push(s.offset as i32);
                tt.push((s.offset + t) as i32);
                tl.push(s.len as i32);
            }
        }
        // Heaviest first, so the long blocks of the causal triangle do not start last. Ties keep
        // tile order (stable sort): the launch order is deterministic.
        let mut order_q: Vec<i32> = (0..tr.len() as i32).collect();
        order_q.sort_by_key(|&t| std::cmp::Reverse(tt[t as usize] - tr[t as usize]));
        let mut order_k: Vec<i32> = (0..tr.len() as i32).collect();
        order_k.sort_by_key(|&t| std::cmp::Reverse(tl[t as usize] - (tt[t as usize] - tr[t as usize])));
        Ok(PackedRows {
            n,
            order_q: gpu.upload(&order_q)?,
            order_k: gpu.upload(&order_k)?,
            max_len: spans.iter().map(|s| s.len).max().unwrap_or(0),
            tiles: tr.len(),
            row_start: gpu.upload(&rs)?,
            row_end: gpu.upload(&re)?,
            tile_row: gpu.upload(&tr)?,
            tile_tok: gpu.upload(&tt)?,
            tile_len: gpu.upload(&tl)?,
        })
    }
}

/// Tokens grouped by id for the embedding backward: block u adds the rows `pos[start[u] ..
/// start[u+1]]` (in position order) into the table row `uniq[u]`.
pub struct TokenIndex {
    pub unique: usize,
    pub uniq: CudaSlice<i32>,
    pub start: CudaSlice<i32>,
    pub pos: CudaSlice<i32>,
}

impl TokenIndex {
    pub fn new(gpu: &Gpu, tokens: &[u32]) -> Result<TokenIndex, CudaError> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| (tokens[i], i));
        let (mut uniq, mut start) = (vec![], vec![]);
        for (k, &i) in order.iter().enumerate() {
            if k == 0 || tokens[i] != tokens[order[k - 1]] {
                uniq.push(tokens[i] as i32);
                start.push(k as i32);
            }
        }
        start.push(order.len() as i32);
        let pos: Vec<i32> = order.iter().map(|&i| i as i32).collect();
        Ok(TokenIndex { unique: uniq.len(), uniq: gpu.upload(&uniq)?, start: gpu.upload(&start)?, pos: gpu.upload(&pos)? })
    }
}
