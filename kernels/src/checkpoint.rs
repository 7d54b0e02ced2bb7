//! Model weights in safetensors files, the way Hugging Face stores them: one
//! `model.safetensors`, or shards listed in `model.safetensors.index.json`. Reading maps the
//! file (no copy of the raw bytes), accepts F32, F16 and BF16 tensors and converts them to f32;
//! writing stores f32 (or bf16 on request) with `format = pt` metadata, because transformers'
//! `from_pretrained` refuses safetensors files without it. Writes are atomic (a temp file in the
//! same directory, then a rename), so a crash never leaves a half-written checkpoint behind.
//!
//! The engine exchanges weights with this module only through [`TensorMap`]: names as
//! transformers spells them (`model.layers.0.self_attn.q_proj.weight`), row-major f32 data.
//! A corrupt, truncated or missing file is an error naming the file and the problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// One named tensor: row-major f32 data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and data; errors when the element count does not match.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, CheckpointError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(CheckpointError::Shape { tensor: String::new(), shape, len: data.len() });
        }
        Ok(HostTensor { shape, data })
    }

    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// All tensors of a checkpoint by Hugging Face name, in a stable (sorted) order.
pub type TensorMap = BTreeMap<String, HostTensor>;

/// The element type written to disk. Reading always yields f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    /// bfloat16, rounded to nearest even from f32: half the size, 8 bits of mantissa.
    Bf16,
}

/// The file name of an unsharded checkpoint in a model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The file name of a sharded checkpoint's index in a model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Errors reading or writing safetensors checkpoints. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a valid safetensors file: {message}")]
    Corrupt { path: String, message: String },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; only F32, F16 and BF16 can be read")]
    Dtype { path: String, tensor: String, dtype: String },
    #[error("{path}: {message}")]
    Index { path: String, message: String },
    #[error("{path}: neither {SINGLE_FILE} nor {INDEX_FILE} is in this directory")]
    NoWeights { path: String },
    #[error("tensor `{tensor}`: shape {shape:?} needs {} elements but the data holds {len}", shape.iter().product::<usize>())]
    Shape { tensor: String, shape: Vec<usize>, len: usize },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io { path: path.display().to_string(), error }
}

/// Loads every tensor of a `.safetensors` file, or of a model directory (its
/// `model.safetensors`, else the shards its `model.safetensors.index.json` lists), as f32.
pub fn load_tensors(path: &Path) -> Result<TensorMap, CheckpointError> {
    if !path.is_dir() {
        return load_file(path);
    }
    let single = path.join(SINGLE_FILE);
    if single.is_file() {
        return load_file(&single);
    }
    let index = path.join(INDEX_FILE);
    if index.is_file() {
        return load_sharded(&index);
    }
    Err(CheckpointError::NoWeights { path: path.display().to_string() })
}

/// Reads one safetensors file through a memory map and converts each tensor to f32.
pub fn load_file(path: &Path) -> Result<TensorMap, CheckpointError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // SAFETY: the map is read-only and lives only inside this function; a concurrent writer
    // would be a bug elsewhere (our own writes go through a temp file and a rename).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    let p = path.display().to_string();
    let st = SafeTensors::deserialize(&mmap).map_err(|e| CheckpointError::Corrupt { path: p.clone(), message: e.to_string() })?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| CheckpointError::Dtype {
            path: p.clone(),
            tensor: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        out.insert(name, HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// Converts little-endian raw bytes of a float dtype to f32; `None` for other dtypes.
/// The byte length is already checked against the shape by the safetensors parser.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(s) => s.to_vec(),
            // The data may sit at an offset that is not 4-aligned in files from other writers.
            Err(_) => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        }),
        Dtype::F16 => Some(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        Dtype::BF16 => Some(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        _ => None,
    }
}

/// Loads the shards an index file lists and checks that each tensor is where the index says.
fn load_sharded(index: &Path) -> Result<TensorMap, CheckpointError> {
    let p = index.display().to_string();
    let bad = |message: String| CheckpointError::Index { path: p.clone(), message };
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object".into()))?;
    // shard file name -> tensor names the index puts there
    let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`weight_map.{name}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!("shard name `{file}` must be a plain file name in the same directory")));
        }
        shards.entry(file.to_string()).or_default().insert(name.clone());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = TensorMap::new();
    for (file, names) in shards {
        let shard = load_file(&dir.join(&file))?;
        for name in &names {
            if !shard.contains_key(name) {
                return Err(bad(format!("tensor `{name}` is listed in shard `{file}` but is not in it")));
            }
        }
        for (name, t) in shard {
            if !names.contains(&name) {
                return Err(bad(format!("shard `{file}` holds `{name}`, which the index does not list there")));
            }
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Writes `tensors` to one safetensors file, atomically, with `format = pt` metadata.
pub fn save_tensors(path: &Path, tensors: &TensorMap, dtype: SaveDtype) -> Result<(), CheckpointError> {
    // Encode every tensor first, so that a bad shape fails before anything touches the disk.
    let mut encoded: Vec<(&str, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.numel() != t.data.len() {
            return Err(CheckpointError::Shape { tensor: name.clone(), shape: t.shape.clone(), len: t.data.len() });
        }
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => bytemuck::cast_slice::<f32, u8>(&t.data).to_vec(),
            SaveDtype::Bf16 => t.data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        };
        encoded.push((name.as_str(), t.shape.clone(), bytes));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let p = path.display().to_string();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, shape, bytes) in &encoded {
        let view = TensorView::new(st_dtype, shape.clone(), bytes)
            .map_err(|e| CheckpointError::Corrupt { path: p.clone(), message: format!("tensor `{name}`: {e}") })?;
        views.push((*name, view));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::tensor::serialize(views, metadata)
        .map_err(|e| CheckpointError::Corrupt { path: p.clone(), message: e.to_string() })?;
    write_atomic(path, &bytes).map_err(io_err(path))
}

/// Writes `bytes` to a temp file next to `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.tmp-<pid>`: the same directory, so the rename never crosses file systems.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(tmp),
        _ => PathBuf::from(tmp),
    }
}
