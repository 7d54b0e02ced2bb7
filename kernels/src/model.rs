//! The Llama model on the CPU: weights by Hugging Face name, a forward pass that saves what the
//! backward needs, a hand-written backward, and the inference entry points (logits, per-token
//! log-probs, scalar-head scores).
//!
//! A batch is a list of rows of different lengths, packed back to back into (N, ·) tensors
//! (N = total tokens) so every linear layer is one big matrix product and no compute is spent
//! on padding; attention stays inside each row. Positions restart at 0 in every row. Right
//! padding from a tokenizer is handled by the caller passing each row's real tokens only (see
//! [`trim_right_padding`]), which for a causal model gives exactly the unpadded result.
//!
//! Parameters live in one `Vec<Vec<f32>>` in a fixed order (embedding, then 9 tensors per
//! layer, final norm, head) described by [`ParamSpec`]s; gradients ([`Grads`]) and optimiser
//! state use the same order, which is what keeps the optimiser generic and deterministic.

use crate::checkpoint::{HostTensor, TensorMap};
use crate::config::{Head, LlamaConfig};
use crate::ops::attention::{self, AttnShape, Cols};
use crate::ops::matmul::{MmShape, Tr, matmul, matmul_ld, matmul_new};
use crate::ops::{Span, embedding, loss, norm, rope, spans_of, swiglu};
use crate::rng::Rng;
use rayon::prelude::*;

/// Errors from building or running a model. Each names the tensor, row or op at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    BadShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("tensor `{name}` has {got} values for shape {shape:?}")]
    BadData { name: String, shape: Vec<usize>, got: usize },
    #[error("unexpected tensor `{name}` for this config")]
    UnexpectedTensor { name: String },
    #[error("row {row} is empty")]
    EmptyRow { row: usize },
    #[error("row {row}, position {pos}: token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { row: usize, pos: usize, token: u32, vocab: usize },
    #[error("row {row} has {len} tokens, more than the {max} positions this model supports")]
    TooLong { row: usize, len: usize, max: usize },
    #[error("{op}: row {row} has {got} values, expected {expected}")]
    LengthMismatch { op: &'static str, row: usize, expected: usize, got: usize },
    #[error("{op}: expected {expected} rows, got {got}")]
    RowCount { op: &'static str, expected: usize, got: usize },
    #[error("{op} needs a model with a {needed} head")]
    WrongHead { op: &'static str, needed: &'static str },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
}

/// What kind of tensor a parameter is; the optimiser uses it to skip weight decay on norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Embedding,
    Linear,
    Norm,
    Head,
}

/// One parameter tensor: its Hugging Face name, shape and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tensors per decoder layer, in parameter order.
const PER_LAYER: usize = 9;
const LAYER_TENSORS: [(&str, ParamKind); PER_LAYER] = [
    ("input_layernorm.weight", ParamKind::Norm),
    ("self_attn.q_proj.weight", ParamKind::Linear),
    ("self_attn.k_proj.weight", ParamKind::Linear),
    ("self_attn.v_proj.weight", ParamKind::Linear),
    ("self_attn.o_proj.weight", ParamKind::Linear),
    ("post_attention_layernorm.weight", ParamKind::Norm),
    ("mlp.gate_proj.weight", ParamKind::Linear),
    ("mlp.up_proj.weight", ParamKind::Linear),
    ("mlp.down_proj.weight", ParamKind::Linear),
];
pub(crate) const ATTN_NORM: usize = 0;
pub(crate) const WQ: usize = 1;
pub(crate) const WK: usize = 2;
pub(crate) const WV: usize = 3;
pub(crate) const WO: usize = 4;
pub(crate) const MLP_NORM: usize = 5;
pub(crate) const WG: usize = 6;
pub(crate) const WU: usize = 7;
pub(crate) const WD: usize = 8;

/// The parameter list for a config, in the engine's fixed order.
pub fn param_specs(c: &LlamaConfig) -> Vec<ParamSpec> {
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let spec = |name: String, shape: Vec<usize>, kind| ParamSpec { name, shape, kind };
    let mut v = vec![spec("model.embed_tokens.weight".into(), vec![c.vocab_size, d], ParamKind::Embedding)];
    for l in 0..c.num_hidden_layers {
        let shapes = [vec![d], vec![qd, d], vec![kvd, d], vec![kvd, d], vec![d, qd], vec![d], vec![f, d], vec![f, d], vec![d, f]];
        for ((name, kind), shape) in LAYER_TENSORS.iter().zip(shapes) {
            v.push(spec(format!("model.layers.{l}.{name}"), shape, *kind));
        }
    }
    v.push(spec("model.norm.weight".into(), vec![d], ParamKind::Norm));
    match c.head {
        Head::LanguageModel if c.tie_word_embeddings => {}
        Head::LanguageModel => v.push(spec("lm_head.weight".into(), vec![c.vocab_size, d], ParamKind::Head)),
        Head::Scalar { num_labels } => v.push(spec("score.weight".into(), vec![num_labels, d], ParamKind::Head)),
    }
    v
}

/// The Llama model: config plus weights.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    specs: Vec<ParamSpec>,
    params: Vec<Vec<f32>>,
    rope: rope::RopeTable,
}

/// Values per parallel chunk of the gradient-wide operations (and per partial sum of the norm).
const NORM_CHUNK: usize = 4096;

/// Gradients (or any per-parameter tensors) in the model's parameter order.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    pub tensors: Vec<Vec<f32>>,
}

impl Grads {
    /// Zeros shaped like the model's parameters.
    pub fn zeros(model: &Llama) -> Grads {
        Grads { tensors: model.specs.iter().map(|s| vec![0.0; s.numel()]).collect() }
    }

    /// `self += other` (gradient accumulation across micro-batches).
    pub fn add_assign(&mut self, other: &Grads) {
        self.tensors.par_iter_mut().zip(&other.tensors).for_each(|(a, b)| {
            a.par_chunks_mut(NORM_CHUNK).zip(b.par_chunks(NORM_CHUNK)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
        });
    }

    pub fn scale(&mut self, s: f32) {
        self.tensors.par_iter_mut().for_each(|t| t.par_chunks_mut(NORM_CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= s)));
    }

    /// The global L2 norm over all tensors, in f64: each tensor cut into fixed chunks of
    /// 4096 values, each chunk summed in 8 interleaved lanes, the chunk sums added in order,
    /// then the tensors in parameter order. The order depends only on the shapes, so the
    /// result is the same on any thread count.
    pub fn global_norm(&self) -> f32 {
        let per_tensor: Vec<f64> = self.tensors.par_iter().map(|t| {
            let chunks: Vec<f64> = t.par_chunks(NORM_CHUNK).map(|c| {
                let mut lanes = [0.0f64; 8];
                let it = c.chunks_exact(8);
                let tail: f64 = it.remainder().iter().map(|&x| x as f64 * x as f64).sum();
                for v in it {
                    for l in 0..8 {
                        lanes[l] += v[l] as f64 * v[l] as f64;
                    }
                }
                lanes.iter().sum::<f64>() + tail
            }).collect();
            chunks.iter().sum()
        }).collect();
        per_tensor.iter().sum::<f64>().sqrt() as f32
    }

    /// By Hugging Face parameter name (for tests and debugging).
    pub fn to_tensor_map(&self, model: &Llama) -> TensorMap {
        model.specs.iter().zip(&self.tensors)
            .map(|(s, t)| (s.name.clone(), HostTensor { shape: s.shape.clone(), data: t.clone() }))
            .collect()
    }
}

/// Rows with right padding trimmed: row r keeps its first `lengths[r]` tokens.
pub fn trim_right_padding(rows: &[Vec<u32>], lengths: &[usize]) -> Result<Vec<Vec<u32>>, ModelError> {
    if rows.len() != lengths.len() {
        return Err(ModelError::RowCount { op: "trim_right_padding", expected: rows.len(), got: lengths.len() });
    }
    rows.iter().zip(lengths).enumerate().map(|(r, (row, &n))| {
        if n > row.len() {
            return Err(ModelError::LengthMismatch { op: "trim_right_padding", row: r, expected: row.len(), got: n });
        }
        Ok(row[..n].to_vec())
    }).collect()
}

/// Converts transformers-style labels (unshifted, `-100` = not scored) into per-position
/// targets: `targets[t] = labels[t + 1]`, and the last position predicts nothing.
pub fn shift_labels(labels: &[i32]) -> Vec<i32> {
    let mut t: Vec<i32> = labels.iter().skip(1).copied().collect();
    if !labels.is_empty() {
        t.push(loss::IGNORE);
    }
    t
}

/// A checked, packed batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub spans: Vec<Span>,
    pub positions: Vec<usize>,
}

/// Activations of one decoder layer saved by the forward for the backward. Shapes for N tokens.
#[derive(Debug, Clone)]
struct LayerActs {
    x: Vec<f32>,     // (N, D) residual stream entering the layer
    rstd1: Vec<f32>, // (N)
    h1: Vec<f32>,    // (N, D) normed input of attention
    qkv: Vec<f32>,   // (N, (Hq + 2·Hkv)·hd): q and k after rotary, then v, side by side
    probs: Vec<f32>, // per (row, head) (L, L)
    att: Vec<f32>,   // (N, Hq·hd) attention output before o_proj
    x_mid: Vec<f32>, // (N, D) residual after attention
    rstd2: Vec<f32>, // (N)
    h2: Vec<f32>,    // (N, D) normed input of the MLP
    gu: Vec<f32>,    // (N, 2F): gate and up projections side by side
    a: Vec<f32>,     // (N, F) silu(g) * u
    wqkv: Vec<f32>,  // [Wq; Wk; Wv] as the forward stacked them, reused by the backward
    wgu: Vec<f32>,   // [Wg; Wu]
}

/// The result of a forward pass: the head's output for every token and, when kept for
/// training, the saved activations.
#[derive(Debug, Clone)]
pub struct Forward {
    pub batch: Batch,
    /// (N, V) logits for a language-model head, (N, num_labels) scores for a scalar head.
    pub out: Vec<f32>,
    pub out_width: usize,
    layers: Vec<LayerActs>,
    x_final: Vec<f32>,
    rstd_f: Vec<f32>,
    hf: Vec<f32>,
}

impl Forward {
    /// The head output of row r: (len_r, out_width).
    pub fn row_out(&self, r: usize) -> &[f32] {
        let s = self.batch.spans[r];
        &self.out[s.offset * self.out_width..(s.offset + s.len) * self.out_width]
    }

    /// Packs per-row values (row r has len_r entries) into one (N) vector, checking lengths.
    pub fn pack<T: Copy>(&self, op: &'static str, per_row: &[Vec<T>]) -> Result<Vec<T>, ModelError> {
        if per_row.len() != self.batch.spans.len() {
            return Err(ModelError::RowCount { op, expected: self.batch.spans.len(), got: per_row.len() });
        }
        let mut v = Vec::with_capacity(self.batch.tokens.len());
        for (r, (s, row)) in self.batch.spans.iter().zip(per_row).enumerate() {
            if row.len() != s.len {
                return Err(ModelError::LengthMismatch { op, row: r, expected: s.len, got: row.len() });
            }
            v.extend_from_slice(row);
        }
        Ok(v)
    }

    /// log p(target) at every packed position (0 where the target is [`loss::IGNORE`]).
    pub fn target_logprobs(&self, targets: &[i32]) -> Vec<f32> {
        loss::token_logprobs(&self.out, self.out_width, targets)
    }

    /// Unpacks an (N) vector into rows.
    pub fn unpack<T: Copy>(&self, packed: &[T]) -> Vec<Vec<T>> {
        self.batch.spans.iter().map(|s| packed[s.offset..s.offset + s.len].to_vec()).collect()
    }
}

/// What the loss says about the head's output, for [`Llama::backward`].
#[derive(Debug, Clone, Copy)]
pub enum HeadGrad<'a> {
    /// `L = Σ_t coef_t · log p(targets_t)` over packed positions (N): cross-entropy, weighted
    /// SFT losses and policy-gradient objectives are all of this form.
    Logprobs { targets: &'a [i32], coef: &'a [f32] },
    /// dL/dscore for every packed position and label, (N, num_labels).
    Scores { dscores: &'a [f32] },
}

/// y (n, dout) = x (n, din) @ wᵀ with w stored (dout, din), in a new buffer.
fn linear(x: &[f32], w: &[f32], n: usize, din: usize, dout: usize) -> Vec<f32> {
    matmul_new(x, Tr::N, w, Tr::T, MmShape { m: n, k: din, n: dout })
}

/// Backward of [`linear`]: returns `dx = dy @ w` and adds `dyᵀ @ x` into dw.
#[allow(clippy::too_many_arguments)]
fn linear_backward(dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], n: usize, din: usize, dout: usize) -> Vec<f32> {
    matmul(dw, dy, Tr::T, x, Tr::N, MmShape { m: dout, k: n, n: din }, true);
    matmul_new(dy, Tr::N, w, Tr::N, MmShape { m: n, k: dout, n: din })
}

impl Llama {
    fn build(config: LlamaConfig, params: Vec<Vec<f32>>) -> Llama {
        let specs = param_specs(&config);
        let rope = rope::RopeTable::new(config.head_dim, config.rope_theta, config.max_position_embeddings);
        Llama { config, specs, params, rope }
    }

    /// Builds a model from Hugging Face tensors, checking every name and shape. A tied model
    /// may carry a redundant `lm_head.weight` (ignored); `rotary_emb.inv_freq` buffers from old
    /// checkpoints are ignored; any other extra tensor is an error.
    pub fn from_tensors(config: LlamaConfig, tensors: &TensorMap) -> Result<Llama, ModelError> {
        let specs = param_specs(&config);
        let mut params = Vec::with_capacity(specs.len());
        for s in &specs {
            let t = tensors.get(&s.name).ok_or_else(|| ModelError::MissingTensor { name: s.name.clone() })?;
            if t.shape != s.shape {
                return Err(ModelError::BadShape { name: s.name.clone(), expected: s.shape.clone(), got: t.shape.clone() });
            }
            if t.data.len() != s.numel() {
                return Err(ModelError::BadData { name: s.name.clone(), shape: t.shape.clone(), got: t.data.len() });
            }
            params.push(t.data.clone());
        }
        for name in tensors.keys() {
            let known = specs.iter().any(|s| &s.name == name)
                || name.ends_with("rotary_emb.inv_freq")
                || (name == "lm_head.weight" && config.tie_word_embeddings);
            if !known {
                return Err(ModelError::UnexpectedTensor { name: name.clone() });
            }
        }
        Ok(Llama::build(config, params))
    }

    /// Hugging Face tensors; a tied model has no `lm_head.weight`.
    pub fn to_tensors(&self) -> TensorMap {
        self.specs.iter().zip(&self.params)
            .map(|(s, p)| (s.name.clone(), HostTensor { shape: s.shape.clone(), data: p.clone() }))
            .collect()
    }

    /// Random weights as transformers initialises them: normal(0, 0.02) for embeddings and
    /// linear layers, ones for norms. Tensor i draws from the stream (seed, i), so the result
    /// is fixed by the seed alone.
    pub fn new_random(config: LlamaConfig, seed: u64) -> Llama {
        let specs = param_specs(&config);
        let params = specs.iter().enumerate().map(|(i, s)| match s.kind {
            ParamKind::Norm => vec![1.0; s.numel()],
            _ => {
                let mut rng = Rng::stream(seed, i as u64);
                (0..s.numel()).map(|_| (rng.normal() * 0.02) as f32).collect()
            }
        }).collect();
        Llama::build(config, params)
    }

    pub fn num_parameters(&self) -> usize {
        self.specs.iter().map(|s| s.numel()).sum()
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Parameter tensors in [`Llama::specs`] order.
    pub fn params(&self) -> &[Vec<f32>] {
        &self.params
    }

    /// Mutable parameters, for optimisers; shapes must not change.
    pub fn params_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.params
    }

    pub(crate) fn rope_table(&self) -> &rope::RopeTable {
        &self.rope
    }

    /// Index in [`Llama::params`] of tensor j (see `LAYER_TENSORS`) of a layer.
    pub(crate) fn layer_index(layer: usize, j: usize) -> usize {
        1 + layer * PER_LAYER + j
    }

    pub(crate) fn layer_param(&self, layer: usize, j: usize) -> &[f32] {
        &self.params[Self::layer_index(layer, j)]
    }

    pub(crate) fn embed(&self) -> &[f32] {
        &self.params[0]
    }

    pub(crate) fn final_norm(&self) -> &[f32] {
        &self.params[1 + self.config.num_hidden_layers * PER_LAYER]
    }

    /// The head matrix: lm_head (V, D), the tied embedding, or score (labels, D).
    pub(crate) fn head(&self) -> &[f32] {
        let i = 2 + self.config.num_hidden_layers * PER_LAYER;
        if i < self.params.len() { &self.params[i] } else { &self.params[0] }
    }

    pub(crate) fn head_index(&self) -> usize {
        let i = 2 + self.config.num_hidden_layers * PER_LAYER;
        if i < self.params.len() { i } else { 0 }
    }

    /// Weights of a layer stacked by rows, e.g. [Wq; Wk; Wv] ((Hq + 2·Hkv)·hd, D): one product
    /// with the stack replaces one per weight.
    fn stacked_weight(&self, layer: usize, js: &[usize]) -> Vec<f32> {
        js.iter().flat_map(|&j| self.layer_param(layer, j).iter().copied()).collect()
    }

    /// Backward of `y = x @ stackᵀ`: returns `dx = dy @ stack`, and adds each stacked
    /// tensor's weight gradient, `dW_j += dy[:, cols of j]ᵀ @ x`, straight into `grads`.
    /// `w` is the stack the forward used ([`Llama::stacked_weight`] of the same tensors).
    fn stacked_linear_backward(&self, grads: &mut Grads, layer: usize, js: &[usize], w: &[f32], dy: &[f32], x: &[f32]) -> Vec<f32> {
        let d = self.config.hidden_size;
        let n = x.len() / d;
        let dout = w.len() / d;
        let dx = matmul_new(dy, Tr::N, w, Tr::N, MmShape { m: n, k: dout, n: d });
        let mut col0 = 0;
        for &j in js {
            let g = &mut grads.tensors[Self::layer_index(layer, j)];
            let rows = g.len() / d;
            matmul_ld(g, d, &dy[col0..], dout, Tr::T, x, d, Tr::N, MmShape { m: rows, k: n, n: d }, true);
            col0 += rows;
        }
        dx
    }

    /// Width of the head's output per token.
    pub fn out_width(&self) -> usize {
        match self.config.head {
            Head::LanguageModel => self.config.vocab_size,
            Head::Scalar { num_labels } => num_labels,
        }
    }

    /// Checks the rows (non-empty, ids in range, not longer than the rotary table) and packs them.
    pub fn batch(&self, rows: &[Vec<u32>]) -> Result<Batch, ModelError> {
        for (r, row) in rows.iter().enumerate() {
            if row.is_empty() {
                return Err(ModelError::EmptyRow { row: r });
            }
            if row.len() > self.rope.len {
                return Err(ModelError::TooLong { row: r, len: row.len(), max: self.rope.len });
            }
            if let Some((pos, &token)) = row.iter().enumerate().find(|(_, t)| **t as usize >= self.config.vocab_size) {
                return Err(ModelError::TokenOutOfRange { row: r, pos, token, vocab: self.config.vocab_size });
            }
        }
        Ok(Batch {
            tokens: rows.iter().flatten().copied().collect(),
            spans: spans_of(rows.iter().map(|r| r.len())),
            positions: rows.iter().flat_map(|r| 0..r.len()).collect(),
        })
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape { heads: self.config.num_attention_heads, kv_heads: self.config.num_key_value_heads, head_dim: self.config.head_dim }
    }

    /// The forward pass over a packed batch; `save` keeps the activations for [`Llama::backward`].
    pub fn forward(&self, rows: &[Vec<u32>], save: bool) -> Result<Forward, ModelError> {
        let batch = self.batch(rows)?;
        let c = &self.config;
        let n = batch.tokens.len();
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let sh = self.attn_shape();
        let mut x = vec![0.0f32; n * d];
        embedding::embedding(&mut x, self.embed(), d, &batch.tokens);
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let w = |j| self.layer_param(l, j);
            let mut rstd1 = vec![0.0; n];
            let mut h1 = vec![0.0; n * d];
            norm::rmsnorm(&mut h1, &mut rstd1, &x, w(ATTN_NORM), c.rms_norm_eps);
            // q, k and v come from one product with [Wq; Wk; Wv]: one wide gemm runs closer to
            // the peak than three narrow ones (n = 64 for k and v in the small presets).
            let wqkv = self.stacked_weight(l, &[WQ, WK, WV]);
            // q, k and v stay side by side in the product's output; rotary and attention read
            // their columns in place.
            let sw = qd + 2 * kvd;
            let mut qkv = linear(&h1, &wqkv, n, d, sw);
            rope::rope_cols(&mut qkv, sw, 0, &batch.positions, c.num_attention_heads, &self.rope, rope::Direction::Forward);
            rope::rope_cols(&mut qkv, sw, qd, &batch.positions, c.num_key_value_heads, &self.rope, rope::Direction::Forward);
            let mut att = vec![0.0; n * qd];
            let mut probs = vec![0.0; attention::probs_len(&batch.spans, sh)];
            let col = |col0| Cols { data: &qkv, width: sw, col0 };
            attention::attention_cols(&mut att, &mut probs, col(0), col(qd), col(qd + kvd), &batch.spans, sh);
            let mut x_mid = linear(&att, w(WO), n, qd, d);
            x_mid.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
            let mut rstd2 = vec![0.0; n];
            let mut h2 = vec![0.0; n * d];
            norm::rmsnorm(&mut h2, &mut rstd2, &x_mid, w(MLP_NORM), c.rms_norm_eps);
            // Gate and up from one product with [Wg; Wu], for the same reason as q/k/v.
            let wgu = self.stacked_weight(l, &[WG, WU]);
            let gu = linear(&h2, &wgu, n, d, 2 * f);
            let mut a = vec![0.0; n * f];
            swiglu::swiglu_packed(&mut a, &gu, f);
            let mut x_out = linear(&a, w(WD), n, f, d);
            x_out.iter_mut().zip(&x_mid).for_each(|(a, b)| *a += b);
            let x_in = std::mem::replace(&mut x, x_out);
            if save {
                layers.push(LayerActs { x: x_in, rstd1, h1, qkv, probs, att, x_mid, rstd2, h2, gu, a, wqkv, wgu });
            }
        }
        let mut rstd_f = vec![0.0; n];
        let mut hf = vec![0.0; n * d];
        norm::rmsnorm(&mut hf, &mut rstd_f, &x, self.final_norm(), c.rms_norm_eps);
        let ow = self.out_width();
        let out = linear(&hf, self.head(), n, d, ow);
        Ok(Forward { batch, out, out_width: ow, layers, x_final: x, rstd_f, hf })
    }

    /// The backward pass: gradients of the loss described by `head_grad` for every parameter.
    pub fn backward(&self, fwd: &Forward, head_grad: HeadGrad<'_>) -> Result<Grads, ModelError> {
        let c = &self.config;
        if fwd.layers.len() != c.num_hidden_layers {
            return Err(ModelError::Invalid { op: "backward", message: "the forward did not save activations (save = false)".into() });
        }
        let n = fwd.batch.tokens.len();
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let ow = fwd.out_width;
        let dout = match (head_grad, c.head) {
            (HeadGrad::Logprobs { targets, coef }, Head::LanguageModel) => {
                if targets.len() != n || coef.len() != n {
                    return Err(ModelError::Invalid { op: "backward", message: format!("targets/coef have {}/{} entries for {n} tokens", targets.len(), coef.len()) });
                }
                let mut dl = vec![0.0; n * ow];
                loss::logprob_backward(&mut dl, &fwd.out, ow, targets, coef);
                dl
            }
            (HeadGrad::Scores { dscores }, Head::Scalar { .. }) => {
                if dscores.len() != n * ow {
                    return Err(ModelError::Invalid { op: "backward", message: format!("dscores has {} entries, expected {}", dscores.len(), n * ow) });
                }
                dscores.to_vec()
            }
            (HeadGrad::Logprobs { .. }, _) => return Err(ModelError::WrongHead { op: "backward (log-probs)", needed: "language-model" }),
            (HeadGrad::Scores { .. }, _) => return Err(ModelError::WrongHead { op: "backward (scores)", needed: "scalar" }),
        };
        let mut grads = Grads::zeros(self);
        let sh = self.attn_shape();
        // Head and final norm. dx is the gradient of the residual stream, (N, D).
        let dhf = linear_backward(&mut grads.tensors[self.head_index()], &dout, &fwd.hf, self.head(), n, d, ow);
        let mut dx = vec![0.0; n * d];
        let fi = 1 + c.num_hidden_layers * PER_LAYER;
        norm::rmsnorm_backward(&mut dx, &mut grads.tensors[fi], &dhf, &fwd.x_final, self.final_norm(), &fwd.rstd_f);
        for l in (0..c.num_hidden_layers).rev() {
            let s = &fwd.layers[l];
            let w = |j| self.layer_param(l, j);
            let gi = |j: usize| 1 + l * PER_LAYER + j;
            // MLP: x_out = x_mid + down(swiglu(gate(h2), up(h2))).
            let da = linear_backward(&mut grads.tensors[gi(WD)], &dx, &s.a, w(WD), n, f, d);
            let mut dgu = vec![0.0; n * 2 * f];
            swiglu::swiglu_backward_packed(&mut dgu, &da, &s.gu, f);
            drop(da);
            let dh2 = self.stacked_linear_backward(&mut grads, l, &[WG, WU], &s.wgu, &dgu, &s.h2);
            // dx now flows into x_mid: the residual path plus the MLP norm's backward.
            norm::rmsnorm_backward(&mut dx, &mut grads.tensors[gi(MLP_NORM)], &dh2, &s.x_mid, w(MLP_NORM), &s.rstd2);
            // Attention: x_mid = x + o(attn(rope(q(h1)), rope(k(h1)), v(h1))).
            let datt = linear_backward(&mut grads.tensors[gi(WO)], &dx, &s.att, w(WO), n, qd, d);
            // dq, dk and dv land side by side in the fused layout, where the q/k/v product's
            // backward wants them: dh1 = dqkv @ Wqkv and dWqkv = dqkvᵀ @ h1, whose row blocks
            // are exactly dWq, dWk and dWv.
            let sw = qd + 2 * kvd;
            let mut dqkv = vec![0.0; n * sw];
            let col = |col0| Cols { data: &s.qkv, width: sw, col0 };
            attention::attention_backward_cols(&mut dqkv, sw, &datt, col(0), col(qd), col(qd + kvd), &s.probs, &fwd.batch.spans, sh);
            rope::rope_cols(&mut dqkv, sw, 0, &fwd.batch.positions, c.num_attention_heads, &self.rope, rope::Direction::Inverse);
            rope::rope_cols(&mut dqkv, sw, qd, &fwd.batch.positions, c.num_key_value_heads, &self.rope, rope::Direction::Inverse);
            let dh1 = self.stacked_linear_backward(&mut grads, l, &[WQ, WK, WV], &s.wqkv, &dqkv, &s.h1);
            norm::rmsnorm_backward(&mut dx, &mut grads.tensors[gi(ATTN_NORM)], &dh1, &s.x, w(ATTN_NORM), &s.rstd1);
        }
        embedding::embedding_backward(&mut grads.tensors[0], d, &fwd.batch.tokens, &dx);
        Ok(grads)
    }

    /// Logits for every position of every row: rows may differ in length; result[r] is
    /// (len_r · vocab).
    pub fn logits(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.need_lm("logits")?;
        let fwd = self.forward(rows, false)?;
        Ok((0..rows.len()).map(|r| fwd.row_out(r).to_vec()).collect())
    }

    /// logprobs[r][i] = log p(rows[r][i+1] | rows[r][..=i]); length len_r - 1.
    pub fn token_logprobs(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.need_lm("token_logprobs")?;
        let fwd = self.forward(rows, false)?;
        let targets = next_token_targets(rows);
        let lp = fwd.target_logprobs(&targets);
        Ok(fwd.unpack(&lp).into_iter().map(|mut r| {
            r.pop();
            r
        }).collect())
    }

    /// Scalar-head models: the score (label 0) at the last token of each row (rows carry no
    /// padding here; see [`trim_right_padding`]).
    pub fn scores(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
        self.need_scalar("scores")?;
        let fwd = self.forward(rows, false)?;
        Ok(last_token_scores(&fwd))
    }

    /// Mean-free weighted next-token loss and its gradient: `L = Σ_t w_t · (-log p(target_t))`
    /// over packed positions. `targets[r][t]` is the token position t of row r predicts
    /// ([`loss::IGNORE`] for none); weights have the same shape. Returns (L, grads). For the
    /// mean cross-entropy over a (possibly accumulated) batch, pass `w = 1 / total scored`.
    pub fn weighted_nll_grads(&self, rows: &[Vec<u32>], targets: &[Vec<i32>], weights: &[Vec<f32>]) -> Result<(f32, Grads), ModelError> {
        self.need_lm("weighted_nll_grads")?;
        let fwd = self.forward(rows, true)?;
        let t = fwd.pack("targets", targets)?;
        let w = fwd.pack("weights", weights)?;
        let lp = fwd.target_logprobs(&t);
        let loss: f64 = lp.iter().zip(&w).zip(&t).filter(|(_, t)| **t != loss::IGNORE).map(|((&l, &w), _)| -(l as f64) * w as f64).sum();
        let coef: Vec<f32> = w.iter().map(|&x| -x).collect();
        let grads = self.backward(&fwd, HeadGrad::Logprobs { targets: &t, coef: &coef })?;
        Ok((loss as f32, grads))
    }

    /// Mean cross-entropy over scored positions (targets as in [`Llama::weighted_nll_grads`])
    /// and its gradient.
    pub fn cross_entropy_grads(&self, rows: &[Vec<u32>], targets: &[Vec<i32>]) -> Result<(f32, Grads), ModelError> {
        let scored = targets.iter().flatten().filter(|&&t| t >= 0).count();
        let w = if scored == 0 { 0.0 } else { 1.0 / scored as f32 };
        let weights: Vec<Vec<f32>> = targets.iter().map(|r| vec![w; r.len()]).collect();
        self.weighted_nll_grads(rows, targets, &weights)
    }

    /// Llama 2's pairwise reward loss, mean over pairs: `-log σ(r(chosen) - r(rejected) -
    /// margin)`, with the gradient through the scalar head at each row's last token.
    /// Returns (mean loss, grads, accuracy = share of pairs with r_c > r_r).
    pub fn pairwise_reward_grads(&self, chosen: &[Vec<u32>], rejected: &[Vec<u32>], margins: &[f32]) -> Result<(f32, Grads, f32), ModelError> {
        self.need_scalar("pairwise_reward_grads")?;
        let p = chosen.len();
        if rejected.len() != p || margins.len() != p {
            return Err(ModelError::RowCount { op: "pairwise_reward_grads", expected: p, got: rejected.len().min(margins.len()) });
        }
        let rows: Vec<Vec<u32>> = chosen.iter().chain(rejected).cloned().collect();
        let fwd = self.forward(&rows, true)?;
        let r = last_token_scores(&fwd);
        let mut dscores = vec![0.0f32; fwd.out.len()];
        let (mut total, mut correct) = (0.0f64, 0usize);
        for i in 0..p {
            let (l, dc, dr) = loss::pairwise_reward_loss(r[i], r[p + i], margins[i]);
            total += l as f64;
            correct += usize::from(r[i] > r[p + i]);
            let (sc, sr) = (fwd.batch.spans[i], fwd.batch.spans[p + i]);
            dscores[(sc.offset + sc.len - 1) * fwd.out_width] = dc / p as f32;
            dscores[(sr.offset + sr.len - 1) * fwd.out_width] = dr / p as f32;
        }
        let grads = self.backward(&fwd, HeadGrad::Scores { dscores: &dscores })?;
        Ok(((total / p.max(1) as f64) as f32, grads, correct as f32 / p.max(1) as f32))
    }

    fn need_lm(&self, op: &'static str) -> Result<(), ModelError> {
        match self.config.head {
            Head::LanguageModel => Ok(()),
            _ => Err(ModelError::WrongHead { op, needed: "language-model" }),
        }
    }

    fn need_scalar(&self, op: &'static str) -> Result<(), ModelError> {
        match self.config.head {
            Head::Scalar { .. } => Ok(()),
            _ => Err(ModelError::WrongHead { op, needed: "scalar" }),
        }
    }
}

/// Packed next-token targets: position t of each row predicts token t + 1; the last predicts
/// nothing.
pub fn next_token_targets(rows: &[Vec<u32>]) -> Vec<i32> {
    rows.iter().flat_map(|r| r.iter().skip(1).map(|&t| t as i32).chain(std::iter::once(loss::IGNORE))).collect()
}

/// Label-0 score at each row's last token.
pub fn last_token_scores(fwd: &Forward) -> Vec<f32> {
    fwd.batch.spans.iter().map(|s| fwd.out[(s.offset + s.len - 1) * fwd.out_width]).collect()
}
