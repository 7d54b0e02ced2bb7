//! Model checkpoints in Hugging Face layout: a directory with config.json, model.safetensors,
//! tokenizer.json and a chat template. Reading accepts F32, F16 and BF16 tensors and converts
//! them to f32; writing stores f32 (or bf16 on request) with `format = pt` metadata so that
//! transformers' `from_pretrained` loads the directory as is.
//!
//! The engine exchanges weights with this module only through [`TensorMap`]: names as
//! transformers spells them (`model.layers.0.self_attn.q_proj.weight`), row-major f32 data.

use std::collections::BTreeMap;

/// One named tensor: row-major f32 data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All tensors of a checkpoint by Hugging Face name, in a stable (sorted) order.
pub type TensorMap = BTreeMap<String, HostTensor>;

// OWNER: the checkpoint/IO helper implements load/save here (see the module doc).
