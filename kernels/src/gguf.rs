//! GGUF import: llama.cpp's single-file format turned into a Hugging Face model directory.
//!
//! The parser reads GGUF v2 and v3 (header, metadata of every value type, tensor infos, data
//! alignment) from a memory map with bounds checks everywhere, so a truncated or corrupt file
//! is an error that names the file and the problem, never a panic or a huge allocation.
//! Tensors are dequantized to f32 from F32, F16, BF16, Q8_0, Q4_0 and Q4_1; [`reference`] holds
//! the slow element-by-element dequantizers that specify the block layouts, and the fast block
//! loops are tested against them.
//!
//! Conversion to Hugging Face Llama undoes what llama.cpp's `convert_hf_to_gguf.py` did:
//! tensor names are mapped back (`blk.N.attn_q` → `model.layers.N.self_attn.q_proj`), shapes are
//! reversed (GGUF lists dimensions innermost first), the Q and K rows are un-permuted (the
//! converter interleaves the two rotary halves of every head for llama.cpp's rope; transformers
//! rotates halves), a missing `output` tensor means tied embeddings, the config comes from the
//! `llama.*` metadata and the tokenizer from `tokenizer.ggml.*` (a byte-level BPE written as
//! tokenizer.json) with `tokenizer.chat_template` as the chat template.

use std::collections::BTreeMap;
use std::path::Path;

use crate::chat::ChatTemplate;
use crate::checkpoint::{HostTensor, TensorMap};
use crate::config::{Head, LlamaConfig};
use crate::model_dir::ModelDir;
use crate::tokenizer::Tokenizer;

/// Errors reading or converting a GGUF file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: corrupt or truncated GGUF at byte {offset}: {message}")]
    Corrupt { path: String, offset: u64, message: String },
    #[error("{path}: {message}")]
    Unsupported { path: String, message: String },
    #[error("{path}: {message}")]
    Convert { path: String, message: String },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(x as u64),
            GgufValue::U16(x) => Some(x as u64),
            GgufValue::U32(x) => Some(x as u64),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x as f64),
            GgufValue::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Tensor element types this importer can dequantize (ggml's type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
    /// Any other ggml type id (K-quants, IQ-quants, ...): listed, not convertible.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block); `None` for unsupported types.
    pub fn block(&self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::Bf16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
}

/// A tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as GGUF stores them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
    }
}

/// A parsed GGUF file; tensor data stays in the memory map until asked for.
pub struct GgufFile {
    path: String,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    data_start: usize,
    map: memmap2::Mmap,
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn corrupt(&self, message: String) -> GgufError {
        GgufError::Corrupt { path: self.path.to_string(), offset: self.pos as u64, message }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.corrupt(format!("file ends inside {what} ({n} bytes needed, {} left)", self.bytes.len() - self.pos))),
        }
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count that must be satisfiable by the bytes left (each item needs `min_item` bytes),
    /// so a garbage length fails here instead of allocating terabytes.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(self.corrupt(format!("{what} {n} needs at least {} bytes but only {left} are left", n.saturating_mul(min_item as u64))));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.corrupt(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.arr(key)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.arr(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.arr(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.corrupt(format!("`{key}`: bool byte {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(self.corrupt(format!("`{key}`: arrays nested too deeply")));
                }
                let item_ty = self.u32(key)?;
                let min_item = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(self.corrupt(format!("`{key}`: unknown array item type {t}"))),
                };
                let n = self.count(key, min_item)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.arr(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr(key)?)),
            t => return Err(self.corrupt(format!("`{key}`: unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Maps and parses the header of a GGUF file; checks every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let p = path.display().to_string();
        let io = |error| GgufError::Io { path: p.clone(), error };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map, used while `self` lives; nobody writes GGUF files in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors, alignment, data_start) = parse_header(&map, &p)?;
        let g = GgufFile { path: p, version, metadata, tensors, alignment, data_start, map };
        for t in &g.tensors {
            g.tensor_bytes(t)?;
        }
        Ok(g)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The raw bytes of a tensor, checked against its type, shape and the file size.
    pub fn tensor_bytes(&self, t: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        let bad = |message: String| GgufError::Corrupt { path: self.path.clone(), offset: self.data_start as u64 + t.offset, message };
        let (per_block, block_bytes) = t.ty.block().ok_or_else(|| GgufError::Unsupported {
            path: self.path.clone(),
            message: format!("tensor `{}` has ggml type {:?}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1", t.name, t.ty),
        })?;
        let n = t.numel().ok_or_else(|| bad(format!("tensor `{}`: shape {:?} overflows", t.name, t.dims)))?;
        let inner = t.dims.first().copied().unwrap_or(1) as usize;
        if !inner.is_multiple_of(per_block) {
            return Err(bad(format!("tensor `{}`: row length {inner} is not a multiple of the block size {per_block}", t.name)));
        }
        let len = (n / per_block).checked_mul(block_bytes).ok_or_else(|| bad(format!("tensor `{}` is too large", t.name)))?;
        let start = usize::try_from(t.offset).ok().and_then(|o| o.checked_add(self.data_start));
        let range = start.and_then(|s| Some(s..s.checked_add(len)?)).filter(|r| r.end <= self.map.len());
        match range {
            Some(r) => Ok(&self.map[r]),
            None => Err(bad(format!("tensor `{}` ({len} bytes at data offset {}) runs past the end of the file ({} bytes)", t.name, t.offset, self.map.len()))),
        }
    }

    /// A tensor dequantized to f32, in GGUF's element order.
    pub fn tensor_f32(&self, t: &GgufTensorInfo) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(t)?;
        Ok(dequantize(t.ty, bytes).expect("tensor_bytes checked the type and the length"))
    }
}

type Header = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>, u64, usize);

fn parse_header(bytes: &[u8], path: &str) -> Result<Header, GgufError> {
    let mut c = Cursor { bytes, pos: 0, path };
    let magic = c.arr::<4>("the magic number")?;
    if &magic != b"GGUF" {
        return Err(GgufError::Corrupt { path: path.into(), offset: 0, message: format!("magic is {magic:?}, not \"GGUF\"") });
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Unsupported { path: path.into(), message: format!("GGUF version {version} (only 2 and 3 are read)") });
    }
    // A tensor info needs at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
    // a key/value at least 8 (key length) + 4 (type) + 1 bytes.
    let n_tensors = c.count("the tensor count", 24)?;
    let n_kv = c.count("the metadata count", 13)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("a metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key, 0)?;
        metadata.insert(key, v);
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("a tensor name")?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims > 4 {
            return Err(c.corrupt(format!("tensor `{name}` has {n_dims} dimensions (ggml allows at most 4)")));
        }
        let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>, _>>()?;
        let ty = GgmlType::from_id(c.u32(&name)?);
        let offset = c.u64(&name)?;
        tensors.push(GgufTensorInfo { name, dims, ty, offset });
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => v.as_u64().filter(|&a| a > 0 && a.is_power_of_two()).ok_or_else(|| {
            GgufError::Corrupt { path: path.into(), offset: c.pos as u64, message: format!("general.alignment {v:?} is not a power of two") }
        })?,
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::Corrupt { path: path.into(), offset: data_start, message: format!("tensor `{}` offset {} is not aligned to {alignment}", t.name, t.offset) });
        }
    }
    Ok((version, metadata, tensors, alignment, data_start as usize))
}

/// Dequantizes a whole tensor's bytes; `None` when the type is unsupported or the byte length
/// is not a whole number of blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (per_block, block_bytes) = ty.block()?;
    if !bytes.len().is_multiple_of(block_bytes) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * per_block);
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::Bf16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        // Q8_0 block: f16 scale d, then 32 signed bytes q; x = d * q.
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16(&b[..2]);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        // Q4_0 block: f16 scale d, then 16 bytes; byte j holds element j in its low nibble and
        // element j + 16 in its high nibble; x = d * (nibble - 8).
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16(&b[..2]);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        // Q4_1 block: f16 scale d, f16 minimum m, then 16 bytes as in Q4_0; x = d * nibble + m.
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m) = (f16(&b[..2]), f16(&b[2..4]));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Other(_) => return None,
    }
    Some(out)
}

/// Slow, obvious dequantizers: element `i` of a tensor computed on its own from ggml's block
/// definitions. They specify the layouts; [`dequantize`] is tested against them.
pub mod reference {
    use super::GgmlType;

    fn f16_at(bytes: &[u8], at: usize) -> f32 {
        half::f16::from_bits(u16::from(bytes[at]) | (u16::from(bytes[at + 1]) << 8)).to_f32()
    }

    /// The 4-bit code of element `k` (0..32) of a block whose nibbles start at `qs`.
    fn nibble(bytes: &[u8], qs: usize, k: usize) -> u8 {
        if k < 16 { bytes[qs + k] & 0x0f } else { bytes[qs + k - 16] >> 4 }
    }

    /// Element `i` of a tensor stored as `ty` in `bytes`.
    pub fn element(ty: GgmlType, bytes: &[u8], i: usize) -> f32 {
        let (blk, k) = (i / 32, i % 32);
        match ty {
            GgmlType::F32 => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
            GgmlType::F16 => f16_at(bytes, 2 * i),
            GgmlType::Bf16 => half::bf16::from_bits(u16::from(bytes[2 * i]) | (u16::from(bytes[2 * i + 1]) << 8)).to_f32(),
            GgmlType::Q8_0 => {
                let base = blk * 34;
                f16_at(bytes, base) * f32::from(bytes[base + 2 + k] as i8)
            }
            GgmlType::Q4_0 => {
                let base = blk * 18;
                f16_at(bytes, base) * (f32::from(nibble(bytes, base + 2, k)) - 8.0)
            }
            GgmlType::Q4_1 => {
                let base = blk * 20;
                f16_at(bytes, base) * f32::from(nibble(bytes, base + 4, k)) + f16_at(bytes, base + 2)
            }
            // No reference exists for other types; NaN marks that rather than a panic.
            GgmlType::Other(_) => f32::NAN,
        }
    }

    /// All `n` elements, one call of [`element`] each.
    pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        (0..n).map(|i| element(ty, bytes, i)).collect()
    }
}

/// Undoes `convert_hf_to_gguf.py`'s `permute` of a Q or K weight (`rows` = n_heads * head_dim
/// rows of `cols` values). In GGUF, row `h*hd + 2j + i` of head `h` holds what transformers keeps
/// in row `h*hd + i*hd/2 + j` (i in {0, 1} picks the rotary half, j < hd/2).
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * hd + i * half + j;
                let gguf_row = h * hd + 2 * j + i;
                out[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

/// The Hugging Face name of a llama.cpp tensor name, and which Q/K un-permutation it needs.
fn hf_name(name: &str) -> Option<(String, Permute)> {
    let simple = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some((s.to_string(), Permute::None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, perm) = match part {
        "attn_q.weight" => ("self_attn.q_proj.weight", Permute::Heads),
        "attn_k.weight" => ("self_attn.k_proj.weight", Permute::KvHeads),
        "attn_v.weight" => ("self_attn.v_proj.weight", Permute::None),
        "attn_output.weight" => ("self_attn.o_proj.weight", Permute::None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", Permute::None),
        "ffn_up.weight" => ("mlp.up_proj.weight", Permute::None),
        "ffn_down.weight" => ("mlp.down_proj.weight", Permute::None),
        "attn_norm.weight" => ("input_layernorm.weight", Permute::None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", Permute::None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), perm))
}

#[derive(Clone, Copy)]
enum Permute {
    None,
    Heads,
    KvHeads,
}

impl GgufFile {
    fn convert_err(&self, message: String) -> GgufError {
        GgufError::Convert { path: self.path.clone(), message }
    }

    fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key).and_then(|v| v.as_u64()).ok_or_else(|| self.convert_err(format!("metadata `{key}` is missing or not an integer")))
    }

    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.as_u64()).and_then(|x| u32::try_from(x).ok())
    }

    /// The Llama config from `llama.*` metadata; the vocabulary size falls back to the token
    /// list and then the embedding's shape.
    pub fn llama_config(&self) -> Result<LlamaConfig, GgufError> {
        let arch = self.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
        if arch != "llama" {
            return Err(GgufError::Unsupported { path: self.path.clone(), message: format!("general.architecture is `{arch}`; only `llama` is imported") });
        }
        let hidden = self.req_u64("llama.embedding_length")? as usize;
        let heads = self.req_u64("llama.attention.head_count")? as usize;
        let kv_heads = self.get("llama.attention.head_count_kv").and_then(|v| v.as_u64()).map_or(heads, |x| x as usize);
        let vocab = match self.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => match self.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(t) => t.len(),
                None => self.tensors.iter().find(|t| t.name == "token_embd.weight").and_then(|t| t.dims.get(1)).copied().unwrap_or(0) as usize,
            },
        };
        let head_dim = match self.get("llama.attention.key_length").and_then(|v| v.as_u64()) {
            Some(k) => k as usize,
            None if heads > 0 && hidden.is_multiple_of(heads) => hidden / heads,
            None => return Err(self.convert_err(format!("embedding_length {hidden} is not divisible by head_count {heads}"))),
        };
        if self.get("llama.rope.scaling.type").and_then(|v| v.as_str()).is_some_and(|t| t != "none") {
            return Err(GgufError::Unsupported { path: self.path.clone(), message: "rope scaling is not supported".into() });
        }
        let mut json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.req_u64("llama.feed_forward_length")?,
            "num_hidden_layers": self.req_u64("llama.block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": self.get("llama.attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()).unwrap_or(1e-5),
            "rope_theta": self.get("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10000.0),
            "max_position_embeddings": self.get("llama.context_length").and_then(|v| v.as_u64()).unwrap_or(2048),
            "tie_word_embeddings": !self.tensors.iter().any(|t| t.name == "output.weight"),
            "bos_token_id": self.opt_u32("tokenizer.ggml.bos_token_id"),
            "pad_token_id": self.opt_u32("tokenizer.ggml.padding_token_id"),
        });
        if let Some(eos) = self.opt_u32("tokenizer.ggml.eos_token_id") {
            json["eos_token_id"] = eos.into();
        }
        LlamaConfig::from_json_str(&json.to_string(), &format!("{} (llama.* metadata)", self.path)).map_err(|e| self.convert_err(e.to_string()))
    }

    /// Every tensor dequantized, renamed, reshaped and un-permuted into Hugging Face layout.
    pub fn hf_tensors(&self, config: &LlamaConfig) -> Result<TensorMap, GgufError> {
        let mut out = TensorMap::new();
        for t in &self.tensors {
            let (name, perm) = hf_name(&t.name).ok_or_else(|| GgufError::Unsupported {
                path: self.path.clone(),
                message: format!("tensor `{}` has no Hugging Face Llama equivalent", t.name),
            })?;
            let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            let mut data = self.tensor_f32(t)?;
            let heads = match perm {
                Permute::None => None,
                Permute::Heads => Some(config.num_attention_heads),
                Permute::KvHeads => Some(config.num_key_value_heads),
            };
            if let Some(n_heads) = heads {
                let (rows, cols) = match shape.as_slice() {
                    [r, c] => (*r, *c),
                    _ => return Err(self.convert_err(format!("tensor `{}` should be 2-D, has shape {shape:?}", t.name))),
                };
                if rows != n_heads * config.head_dim || !config.head_dim.is_multiple_of(2) {
                    return Err(self.convert_err(format!("tensor `{}` has {rows} rows, expected {n_heads} heads x {} (even) head_dim", t.name, config.head_dim)));
                }
                data = unpermute_qk(&data, rows, cols, n_heads);
            }
            if out.insert(name.clone(), HostTensor { shape, data }).is_some() {
                return Err(self.convert_err(format!("two tensors map to `{name}`")));
            }
        }
        Ok(out)
    }

    /// The tokenizer from `tokenizer.ggml.*` (`gpt2` model = byte-level BPE), if present.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>, GgufError> {
        let model = match self.get("tokenizer.ggml.model").and_then(|v| v.as_str()) {
            None => return Ok(None),
            Some(m) => m,
        };
        if model != "gpt2" {
            return Err(GgufError::Unsupported {
                path: self.path.clone(),
                message: format!("tokenizer.ggml.model `{model}` (only the byte-level BPE `gpt2` is imported)"),
            });
        }
        let strings = |key: &str| -> Result<Vec<String>, GgufError> {
            let arr = self.get(key).and_then(|v| v.as_array()).ok_or_else(|| self.convert_err(format!("`{key}` is missing or not an array")))?;
            arr.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.convert_err(format!("`{key}` holds a non-string")))).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match self.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| match v {
                GgufValue::I32(x) => *x as i64,
                other => other.as_u64().map_or(1, |x| x as i64),
            }).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = self.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let json = bpe_tokenizer_json(&tokens, &types, &merges, pre).map_err(|m| GgufError::Unsupported { path: self.path.clone(), message: m })?;
        Tokenizer::from_json_str(&json.to_string(), &format!("{} (tokenizer.ggml.*)", self.path)).map(Some).map_err(|e| self.convert_err(e.to_string()))
    }

    /// `tokenizer.chat_template` with the BOS/EOS token strings, if present.
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        let source = self.get("tokenizer.chat_template")?.as_str()?.to_string();
        let tokens = self.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
        let name = |key: &str| {
            let id = self.opt_u32(key)? as usize;
            tokens?.get(id)?.as_str().map(str::to_string)
        };
        Some(ChatTemplate::Jinja {
            source,
            bos_token: name("tokenizer.ggml.bos_token_id").unwrap_or_default(),
            eos_token: name("tokenizer.ggml.eos_token_id").unwrap_or_default(),
        })
    }
}

/// The pre-tokenizer of a llama.cpp `tokenizer.ggml.pre` name, as tokenizer.json JSON.
fn pre_tokenizer_json(pre: &str) -> Result<serde_json::Value, String> {
    let byte_level = |use_regex: bool| serde_json::json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex });
    Ok(match pre {
        // GPT-2's regex, which the ByteLevel pre-tokenizer applies itself.
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp splits every digit on its own, then applies the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [ { "type": "Digits", "individual_digits": true }, byte_level(true) ],
        }),
        // Llama 3's tiktoken-style regex, then bytes to characters without a second regex.
        "llama3" | "llama-v3" | "llama-bpe" => serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, "behavior": "Isolated", "invert": false },
                byte_level(false),
            ],
        }),
        other => return Err(format!("tokenizer.ggml.pre `{other}` is not supported (known: gpt2, smollm, starcoder, refact, llama-bpe)")),
    })
}

/// A Hugging Face tokenizer.json for a byte-level BPE. llama.cpp token types: 1 normal,
/// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; control and user-defined tokens
/// become added tokens (control ones special), as in the tokenizer.json they came from.
fn bpe_tokenizer_json(tokens: &[String], types: &[i64], merges: &[String], pre: &str) -> Result<serde_json::Value, String> {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i.into())).collect();
    if vocab.len() != tokens.len() {
        return Err("tokenizer.ggml.tokens holds duplicate tokens".into());
    }
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let ty = types.get(i).copied().unwrap_or(1);
            (ty == 3 || ty == 4).then(|| {
                serde_json::json!({ "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": ty == 4, "special": ty == 3 })
            })
        })
        .collect();
    let byte_level = serde_json::json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true });
    Ok(serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer_json(pre)?,
        "post_processor": byte_level,
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// Imports a GGUF Llama as a model directory in memory (save it with [`ModelDir::save`]).
pub fn import(path: &Path) -> Result<ModelDir, GgufError> {
    let g = GgufFile::open(path)?;
    let config = g.llama_config()?;
    if config.head != Head::LanguageModel {
        return Err(g.convert_err("only causal language models are imported".into()));
    }
    let tensors = g.hf_tensors(&config)?;
    let tokenizer = g.tokenizer()?;
    if let Some(tok) = tokenizer.as_ref().filter(|t| t.vocab_size() > config.vocab_size) {
        return Err(g.convert_err(format!("the tokenizer has {} tokens but the model only {}", tok.vocab_size(), config.vocab_size)));
    }
    Ok(ModelDir { config, tensors, tokenizer, chat: g.chat_template() })
}
