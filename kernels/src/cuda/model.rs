//! The Llama model on a CUDA device, mirroring [`crate::model::Llama`] op for op.
//!
//! Precision: f32 master weights (what AdamW updates and checkpoints hold), a bf16 copy of them
//! that every matrix product reads, bf16 activations between ops, an f32 residual stream, f32
//! logits and f32 accumulation everywhere (cuBLAS `COMPUTE_32F`, f32 sums in the kernels).
//! Weight gradients accumulate in f32 straight from the products (`beta = 1`).
//!
//! All parameters live in one flat buffer in the engine's parameter order, so the stacked
//! [Wq; Wk; Wv] and [Wg; Wu] products the CPU builds by copying are here plain views: the
//! tensors are adjacent. Gradients and AdamW moments use the same layout.

use super::ops::{AttnImpl, PackedRows, TokenIndex, rmsnorm_scratch_len};
use super::{CudaError, Gpu, dptr};
use crate::config::{Head, LlamaConfig};
use crate::model::{ATTN_NORM, Grads, Llama, MLP_NORM, ModelError, ParamKind, ParamSpec, WD, WG, WO, WQ, next_token_targets, param_specs};
use crate::optim::{AdamWConfig, LmMicroBatch, StepReport};
use cudarc::driver::CudaSlice;
use std::sync::Arc;

/// The Llama model on the device. Language-model head only (scalar heads stay on the CPU).
pub struct GpuLlama {
    gpu: Arc<Gpu>,
    pub config: LlamaConfig,
    specs: Vec<ParamSpec>,
    offsets: Vec<usize>,
    total: usize,
    master: CudaSlice<f32>,
    weights: CudaSlice<u16>,
    grads: CudaSlice<f32>,
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    rope_len: usize,
    /// Which attention kernels the model runs (default: [`AttnImpl::from_env`]).
    pub attention: AttnImpl,
}

/// Activations of one layer saved for the backward.
struct LayerActs {
    x: CudaSlice<f32>,
    rstd1: CudaSlice<f32>,
    h1: CudaSlice<u16>,
    qkv: CudaSlice<u16>,
    att: CudaSlice<u16>,
    lse: CudaSlice<f32>,
    x_mid: CudaSlice<f32>,
    rstd2: CudaSlice<f32>,
    h2: CudaSlice<u16>,
    gu: CudaSlice<u16>,
    a: CudaSlice<u16>,
}

/// A forward pass's results on the device.
struct Acts {
    rows: PackedRows,
    tokens: Vec<u32>,
    pos: CudaSlice<i32>,
    layers: Vec<LayerActs>,
    x_final: CudaSlice<f32>,
    rstd_f: CudaSlice<f32>,
    hf: CudaSlice<u16>,
    logits: CudaSlice<f32>,
}

impl GpuLlama {
    /// Uploads a CPU model. The hidden size must be a multiple of 8 (16-byte aligned rows).
    pub fn from_cpu(gpu: Arc<Gpu>, model: &Llama) -> Result<GpuLlama, CudaError> {
        let c = model.config.clone();
        if !matches!(c.head, Head::LanguageModel) {
            return Err(CudaError::Unsupported("the CUDA backend runs language-model heads only; scalar-head (reward) models run on the CPU".into()));
        }
        if c.hidden_size % 8 != 0 || c.head_dim % 2 != 0 {
            return Err(CudaError::Unsupported(format!("hidden size {} (must be a multiple of 8) / head_dim {} (must be even)", c.hidden_size, c.head_dim)));
        }
        let specs = param_specs(&c);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut flat = Vec::with_capacity(model.num_parameters());
        for p in model.params() {
            offsets.push(flat.len());
            flat.extend_from_slice(p);
        }
        let total = flat.len();
        let master = gpu.upload(&flat)?;
        let weights = gpu.zeros::<u16>(total)?;
        gpu.cast_f32_bf16(dptr(&weights), dptr(&master), total)?;
        let grads = gpu.zeros::<f32>(total)?;
        let table = model.rope_table();
        let (rope_cos, rope_sin) = (gpu.upload(table.cos())?, gpu.upload(table.sin())?);
        Ok(GpuLlama { rope_len: table.len, gpu, config: c, specs, offsets, total, master, weights, grads, rope_cos, rope_sin, attention: AttnImpl::from_env() })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn num_parameters(&self) -> usize {
        self.total
    }

    /// Copies the master weights back into a CPU model of the same config.
    pub fn download_into(&self, model: &mut Llama) -> Result<(), CudaError> {
        let flat = self.gpu.download(&self.master)?;
        for (i, p) in model.params_mut().iter_mut().enumerate() {
            let (o, len) = (self.offsets[i], p.len());
            p.copy_from_slice(&flat[o..o + len]);
        }
        Ok(())
    }

    /// The accumulated gradients as CPU tensors.
    pub fn download_grads(&self) -> Result<Grads, CudaError> {
        let flat = self.gpu.download(&self.grads)?;
        Ok(Grads { tensors: self.specs.iter().zip(&self.offsets).map(|(s, &o)| flat[o..o + s.numel()].to_vec()).collect() })
    }

    pub fn zero_grads(&self) -> Result<(), CudaError> {
        self.gpu.memset_zero::<f32>(dptr(&self.grads), self.total)
    }

    fn w(&self, i: usize) -> u64 {
        dptr(&self.weights) + 2 * self.offsets[i] as u64
    }
    fn m32(&self, i: usize) -> u64 {
        dptr(&self.master) + 4 * self.offsets[i] as u64
    }
    fn g(&self, i: usize) -> u64 {
        dptr(&self.grads) + 4 * self.offsets[i] as u64
    }
    fn li(&self, l: usize, j: usize) -> usize {
        Llama::layer_index(l, j)
    }
    pub(crate) fn layer_index(&self, l: usize, j: usize) -> usize {
        Llama::layer_index(l, j)
    }
    pub(crate) fn master_ptr(&self, i: usize) -> u64 {
        self.m32(i)
    }
    pub(crate) fn weight_ptr(&self, i: usize) -> u64 {
        self.w(i)
    }
    pub(crate) fn rope_ptrs(&self) -> (u64, u64) {
        (dptr(&self.rope_cos), dptr(&self.rope_sin))
    }
    /// The longest row the rotary table covers.
    pub fn max_positions(&self) -> usize {
        self.rope_len
    }
    pub(crate) fn check_prompts(&self, rows: &[Vec<u32>]) -> Result<(), ModelError> {
        self.check_rows(rows)
    }
    pub(crate) fn final_norm_index(&self) -> usize {
        1 + self.config.num_hidden_layers * 9
    }
    pub(crate) fn head_index(&self) -> usize {
        let i = 2 + self.config.num_hidden_layers * 9;
        if i < self.specs.len() { i } else { 0 }
    }

    fn check_rows(&self, rows: &[Vec<u32>]) -> Result<(), ModelError> {
        for (r, row) in rows.iter().enumerate() {
            if row.is_empty() {
                return Err(ModelError::EmptyRow { row: r });
            }
            if row.len() > self.rope_len {
                return Err(ModelError::TooLong { row: r, len: row.len(), max: self.rope_len });
            }
            if let Some((pos, &token)) = row.iter().enumerate().find(|(_, t)| **t as usize >= self.config.vocab_size) {
                return Err(ModelError::TokenOutOfRange { row: r, pos, token, vocab: self.config.vocab_size });
            }
        }
        Ok(())
    }

    fn forward(&self, rows: &[Vec<u32>], save: bool) -> Result<Acts, CudaError> {
        self.check_rows(rows)?;
        let g = &*self.gpu;
        let c = &self.config;
        let spans = crate::ops::spans_of(rows.iter().map(|r| r.len()));
        let packed = PackedRows::new(g, &spans)?;
        let tokens: Vec<u32> = rows.iter().flatten().copied().collect();
        let positions: Vec<i32> = rows.iter().flat_map(|r| 0..r.len() as i32).collect();
        let n = tokens.len();
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (hq, hkv) = (c.num_attention_heads, c.num_key_value_heads);
        let (qd, kvd) = (hq * hd, hkv * hd);
        let s = qd + 2 * kvd;
        let tok_dev = g.upload(&tokens.iter().map(|&t| t as i32).collect::<Vec<i32>>())?;
        let pos = g.upload(&positions)?;
        let mut x = g.empty::<f32>(n * d)?;
        g.embedding_fwd(dptr(&x), self.m32(0), dptr(&tok_dev), n, d)?;
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let rstd1 = g.empty::<f32>(n)?;
            let h1 = g.empty::<u16>(n * d)?;
            g.rmsnorm_fwd(dptr(&h1), dptr(&rstd1), dptr(&x), self.m32(self.li(l, ATTN_NORM)), n, d, c.rms_norm_eps)?;
            let qkv = g.empty::<u16>(n * s)?;
            g.gemm(dptr(&qkv), false, dptr(&h1), false, self.w(self.li(l, WQ)), true, n, s, d, 0.0)?;
            // q and k heads are adjacent in qkv: one rotary launch for both.
            g.rope(dptr(&qkv), s, 0, dptr(&self.rope_cos), dptr(&self.rope_sin), dptr(&pos), n, hq + hkv, hd, false)?;
            let att = g.empty::<u16>(n * qd)?;
            let lse = g.empty::<f32>(hq * n)?;
            g.attention_fwd(dptr(&att), dptr(&lse), dptr(&qkv), &packed, hq, hkv, hd, self.attention)?;
            let x_mid = g.empty::<f32>(n * d)?;
            g.copy::<f32>(dptr(&x_mid), dptr(&x), n * d)?;
            g.gemm(dptr(&x_mid), true, dptr(&att), false, self.w(self.li(l, WO)), true, n, d, qd, 1.0)?;
            let rstd2 = g.empty::<f32>(n)?;
            let h2 = g.empty::<u16>(n * d)?;
            g.rmsnorm_fwd(dptr(&h2), dptr(&rstd2), dptr(&x_mid), self.m32(self.li(l, MLP_NORM)), n, d, c.rms_norm_eps)?;
            let gu = g.empty::<u16>(n * 2 * f)?;
            g.gemm(dptr(&gu), false, dptr(&h2), false, self.w(self.li(l, WG)), true, n, 2 * f, d, 0.0)?;
            let a = g.empty::<u16>(n * f)?;
            g.swiglu_fwd(dptr(&a), dptr(&gu), n, f)?;
            let x_out = g.empty::<f32>(n * d)?;
            g.copy::<f32>(dptr(&x_out), dptr(&x_mid), n * d)?;
            g.gemm(dptr(&x_out), true, dptr(&a), false, self.w(self.li(l, WD)), true, n, d, f, 1.0)?;
            let x_in = std::mem::replace(&mut x, x_out);
            if save {
                layers.push(LayerActs { x: x_in, rstd1, h1, qkv, att, lse, x_mid, rstd2, h2, gu, a });
            }
        }
        let rstd_f = g.empty::<f32>(n)?;
        let hf = g.empty::<u16>(n * d)?;
        g.rmsnorm_fwd(dptr(&hf), dptr(&rstd_f), dptr(&x), self.m32(self.final_norm_index()), n, d, c.rms_norm_eps)?;
        let v = c.vocab_size;
        let logits = g.empty::<f32>(n * v)?;
        g.gemm(dptr(&logits), true, dptr(&hf), false, self.w(self.head_index()), true, n, v, d, 0.0)?;
        Ok(Acts { rows: packed, tokens, pos, layers, x_final: x, rstd_f, hf, logits })
    }

    /// Logits for every position of every row, as [`Llama::logits`].
    pub fn logits(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, CudaError> {
        let acts = self.forward(rows, false)?;
        let flat = self.gpu.download(&acts.logits)?;
        let v = self.config.vocab_size;
        let mut out = Vec::with_capacity(rows.len());
        let mut o = 0;
        for r in rows {
            out.push(flat[o * v..(o + r.len()) * v].to_vec());
            o += r.len();
        }
        Ok(out)
    }

    /// logprobs[r][i] = log p(rows[r][i+1] | rows[r][..=i]), as [`Llama::token_logprobs`].
    pub fn token_logprobs(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, CudaError> {
        let acts = self.forward(rows, false)?;
        let targets = next_token_targets(rows);
        let n = targets.len();
        let g = &*self.gpu;
        let t = g.upload(&targets)?;
        let coef = g.zeros::<f32>(n)?;
        let lp = g.zeros::<f32>(n)?;
        g.logprob(dptr(&lp), None, dptr(&acts.logits), dptr(&t), dptr(&coef), n, self.config.vocab_size)?;
        let flat = g.download(&lp)?;
        let mut out = Vec::new();
        let mut o = 0;
        for r in rows {
            out.push(flat[o..o + r.len() - 1].to_vec());
            o += r.len();
        }
        Ok(out)
    }

    /// Adds the gradient of `L = Σ w · (-log p(target))` into the device gradients and
    /// returns L (as [`Llama::weighted_nll_grads`], which returns the gradients instead).
    pub fn accumulate_nll_grads(&self, rows: &[Vec<u32>], targets: &[Vec<i32>], weights: &[Vec<f32>]) -> Result<f32, CudaError> {
        let acts = self.forward(rows, true)?;
        let g = &*self.gpu;
        let c = &self.config;
        let n = acts.tokens.len();
        let t: Vec<i32> = pack_rows("targets", rows, targets)?;
        let w: Vec<f32> = pack_rows("weights", rows, weights)?;
        let coef: Vec<f32> = w.iter().map(|&x| -x).collect();
        let (d, f, hd, v) = (c.hidden_size, c.intermediate_size, c.head_dim, c.vocab_size);
        let (hq, hkv) = (c.num_attention_heads, c.num_key_value_heads);
        let (qd, kvd) = (hq * hd, hkv * hd);
        let s = qd + 2 * kvd;
        let t_dev = g.upload(&t)?;
        let coef_dev = g.upload(&coef)?;
        let lp = g.zeros::<f32>(n)?;
        let dlogits = g.empty::<u16>(n * v)?;
        g.logprob(dptr(&lp), Some(dptr(&dlogits)), dptr(&acts.logits), dptr(&t_dev), dptr(&coef_dev), n, v)?;
        drop(acts.logits);
        let scratch = g.zeros::<f32>(rmsnorm_scratch_len(n, d))?;
        // Head and final norm.
        let hi = self.head_index();
        g.gemm(self.g(hi), true, dptr(&dlogits), true, dptr(&acts.hf), false, v, d, n, 1.0)?;
        let dh = g.empty::<u16>(n * d)?;
        g.gemm(dptr(&dh), false, dptr(&dlogits), false, self.w(hi), false, n, d, v, 0.0)?;
        drop(dlogits);
        let dx = g.empty::<f32>(n * d)?;
        let dx_b = g.empty::<u16>(n * d)?;
        let fi = self.final_norm_index();
        g.rmsnorm_bwd(dptr(&dx), dptr(&dx_b), self.g(fi), dptr(&scratch), dptr(&dh), dptr(&acts.x_final), self.m32(fi), dptr(&acts.rstd_f), n, d, false)?;
        let da = g.empty::<u16>(n * f)?;
        let dgu = g.empty::<u16>(n * 2 * f)?;
        let datt = g.empty::<u16>(n * qd)?;
        let dqkv = g.empty::<u16>(n * s)?;
        let dsum = g.empty::<f32>(hq * n)?;
        for l in (0..c.num_hidden_layers).rev() {
            let a = &acts.layers[l];
            // MLP.
            g.gemm(dptr(&da), false, dptr(&dx_b), false, self.w(self.li(l, WD)), false, n, f, d, 0.0)?;
            g.gemm(self.g(self.li(l, WD)), true, dptr(&dx_b), true, dptr(&a.a), false, d, f, n, 1.0)?;
            g.swiglu_bwd(dptr(&dgu), dptr(&da), dptr(&a.gu), n, f)?;
            g.gemm(dptr(&dh), false, dptr(&dgu), false, self.w(self.li(l, WG)), false, n, d, 2 * f, 0.0)?;
            g.gemm(self.g(self.li(l, WG)), true, dptr(&dgu), true, dptr(&a.h2), false, 2 * f, d, n, 1.0)?;
            let mi = self.li(l, MLP_NORM);
            g.rmsnorm_bwd(dptr(&dx), dptr(&dx_b), self.g(mi), dptr(&scratch), dptr(&dh), dptr(&a.x_mid), self.m32(mi), dptr(&a.rstd2), n, d, true)?;
            // Attention.
            g.gemm(dptr(&datt), false, dptr(&dx_b), false, self.w(self.li(l, WO)), false, n, qd, d, 0.0)?;
            g.gemm(self.g(self.li(l, WO)), true, dptr(&dx_b), true, dptr(&a.att), false, d, qd, n, 1.0)?;
            g.attention_bwd(dptr(&dqkv), dptr(&dsum), dptr(&datt), dptr(&a.att), dptr(&a.qkv), dptr(&a.lse), &acts.rows, hq, hkv, hd, self.attention)?;
            // q and k heads are adjacent in qkv: one rotary launch for both.
            g.rope(dptr(&dqkv), s, 0, dptr(&self.rope_cos), dptr(&self.rope_sin), dptr(&acts.pos), n, hq + hkv, hd, true)?;
            g.gemm(dptr(&dh), false, dptr(&dqkv), false, self.w(self.li(l, WQ)), false, n, d, s, 0.0)?;
            g.gemm(self.g(self.li(l, WQ)), true, dptr(&dqkv), true, dptr(&a.h1), false, s, d, n, 1.0)?;
            let ai = self.li(l, ATTN_NORM);
            g.rmsnorm_bwd(dptr(&dx), dptr(&dx_b), self.g(ai), dptr(&scratch), dptr(&dh), dptr(&a.x), self.m32(ai), dptr(&a.rstd1), n, d, true)?;
        }
        let index = TokenIndex::new(g, &acts.tokens)?;
        g.embedding_bwd(self.g(0), dptr(&dx), &index, d)?;
        let lp_host = g.download(&lp)?;
        let loss: f64 = lp_host.iter().zip(&w).zip(&t).filter(|(_, t)| **t >= 0).map(|((&l, &w), _)| -(l as f64) * w as f64).sum();
        Ok(loss as f32)
    }

    /// The loss and its gradients, as [`Llama::weighted_nll_grads`] (for tests: the training
    /// step keeps gradients on the device).
    pub fn weighted_nll_grads(&self, rows: &[Vec<u32>], targets: &[Vec<i32>], weights: &[Vec<f32>]) -> Result<(f32, Grads), CudaError> {
        self.zero_grads()?;
        let loss = self.accumulate_nll_grads(rows, targets, weights)?;
        Ok((loss, self.download_grads()?))
    }
}

/// Packs per-row values (row r has len_r entries) into one vector, checking the lengths.
fn pack_rows<T: Copy>(op: &'static str, rows: &[Vec<u32>], per_row: &[Vec<T>]) -> Result<Vec<T>, ModelError> {
    if per_row.len() != rows.len() {
        return Err(ModelError::RowCount { op, expected: rows.len(), got: per_row.len() });
    }
    let mut v = Vec::with_capacity(rows.iter().map(|r| r.len()).sum());
    for (r, (row, x)) in rows.iter().zip(per_row).enumerate() {
        if row.len() != x.len() {
            return Err(ModelError::LengthMismatch { op, row: r, expected: row.len(), got: x.len() });
        }
        v.extend_from_slice(x);
    }
    Ok(v)
}

/// AdamW on the device, the same update as [`crate::optim::AdamW`] (moments in f32, one
/// fused kernel per tensor that also refreshes the bf16 weights).
pub struct GpuAdamW {
    pub config: AdamWConfig,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    scratch: CudaSlice<f32>,
    pub step: u64,
}

impl GpuAdamW {
    pub fn new(config: AdamWConfig, model: &GpuLlama) -> Result<GpuAdamW, CudaError> {
        let g = &model.gpu;
        Ok(GpuAdamW { config, m: g.zeros(model.total)?, v: g.zeros(model.total)?, scratch: g.zeros(super::ops::SUMSQ_BLOCKS)?, step: 0 })
    }

    /// Copies a CPU optimiser's moments and step count to the device (`model` gives the layout).
    pub fn upload_state(&mut self, model: &GpuLlama, cpu: &crate::optim::AdamW) -> Result<(), CudaError> {
        let (m, v) = cpu.moments();
        let flat = |t: &[Vec<f32>]| -> Result<Vec<f32>, CudaError> {
            if t.len() != model.specs.len() || t.iter().zip(&model.specs).any(|(x, s)| x.len() != s.numel()) {
                return Err(CudaError::Unsupported("optimiser state does not match the model's parameters".into()));
            }
            Ok(t.concat())
        };
        self.m = model.gpu.upload(&flat(m)?)?;
        self.v = model.gpu.upload(&flat(v)?)?;
        self.step = cpu.step;
        Ok(())
    }

    /// Copies the moments and step count back into a CPU optimiser of the same model.
    pub fn download_state(&self, model: &GpuLlama, cpu: &mut crate::optim::AdamW) -> Result<(), CudaError> {
        let (m, v) = (model.gpu.download(&self.m)?, model.gpu.download(&self.v)?);
        let (cm, cv) = cpu.moments_mut();
        for (i, s) in model.specs.iter().enumerate() {
            let (o, len) = (model.offsets[i], s.numel());
            cm[i].copy_from_slice(&m[o..o + len]);
            cv[i].copy_from_slice(&v[o..o + len]);
        }
        cpu.step = self.step;
        Ok(())
    }

    /// The global L2 norm of the model's accumulated gradients.
    pub fn grad_norm(&self, model: &GpuLlama) -> Result<f32, CudaError> {
        Ok(model.gpu.sumsq(dptr(&model.grads), model.total, &self.scratch)?.sqrt() as f32)
    }

    /// Clips the gradients to `clip` (global norm) and updates every parameter at `lr`;
    /// returns the norm before clipping.
    pub fn update(&mut self, model: &mut GpuLlama, lr: f32, clip: Option<f32>) -> Result<f32, CudaError> {
        let norm = self.grad_norm(model)?;
        let gscale = match clip {
            Some(c) if norm > c && norm > 0.0 => c / norm,
            _ => 1.0,
        };
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let step = (lr as f64 / bc1) as f32;
        let inv_bc2 = (1.0 / bc2) as f32;
        for (i, s) in model.specs.iter().enumerate() {
            let wd = if s.kind == ParamKind::Norm && !c.decay_norms { 0.0 } else { c.weight_decay };
            let o = model.offsets[i] as u64;
            model.gpu.adamw(
                dptr(&model.master) + 4 * o,
                dptr(&model.weights) + 2 * o,
                dptr(&self.m) + 4 * o,
                dptr(&self.v) + 4 * o,
                dptr(&model.grads) + 4 * o,
                s.numel(),
                1.0 - lr * wd,
                step,
                inv_bc2,
                c.beta1,
                c.beta2,
                c.eps,
                gscale,
            )?;
        }
        Ok(norm)
    }
}

/// A full language-model step on the device, as [`crate::optim::lm_train_step`]: forward and
/// backward of every micro-batch with gradients summed in order, clipping, one AdamW update.
pub fn lm_train_step(model: &mut GpuLlama, opt: &mut GpuAdamW, micro: &[LmMicroBatch], lr: f32, clip: Option<f32>) -> Result<StepReport, CudaError> {
    model.zero_grads()?;
    let mut loss = 0.0f64;
    let mut tokens = 0;
    for mb in micro {
        loss += model.accumulate_nll_grads(&mb.rows, &mb.targets, &mb.weights)? as f64;
        tokens += mb.rows.iter().map(|r| r.len()).sum::<usize>();
    }
    let grad_norm = opt.update(model, lr, clip)?;
    Ok(StepReport { loss: loss as f32, grad_norm, lr, tokens })
}
