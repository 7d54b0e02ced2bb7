//! `onnx_judge`: scores the responses of a table (an `eval` stage's `results`, or any table
//! with an `id` and a text column) with a user's ONNX classifier, e.g. a toxicity or safety
//! classifier, and its tokenizer (`tokenizer.json`); docs/annotation.md, "ONNX judges".
//!
//! The classifier takes `input_ids` (int64, [batch, tokens]) and optionally `attention_mask`
//! (int64, same shape; 1 = token, 0 = padding) and `token_type_ids` (zeros); its first output
//! is float logits [batch, classes] (the score is the softmax probability of class `label`) or
//! [batch] / [batch, 1] (the score is the sigmoid). ONNX Runtime is loaded at run time
//! (`ort`, feature `load-dynamic`) from `ORT_DYLIB_PATH`, or else from the PyPI package
//! `onnxruntime` that `python3` finds (scripts/setup.sh installs it).
//!
//! Outputs: `scores` (id, category when the input has one, the text, `score`, `flagged` =
//! score >= `threshold`) and `report`: `{"metric", "column", "label", "threshold", "n", "mean",
//! "flagged_rate", "by_category": {CATEGORY: {"n", "mean", "flagged_rate"}}}`, which
//! `alignflow report` shows under `onnx_judges`. The model and tokenizer files' contents are part
//! of the fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow_array::{ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use graph::{ArtifactType, ParamSpec, Params, Port, RunCtx, Stage, StageError};

use crate::collect_preferences::write_report;
use crate::common::{hash_file, read_input_table, write_output_table};

pub struct OnnxJudge;

impl Stage for OnnxJudge {
    fn kind(&self) -> &'static str {
        "onnx_judge"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "Scores a table's responses (an `eval` stage's `results`, column `column`) with a user's ONNX classifier (`model`, e.g. toxicity or safety) and its `tokenizer` (tokenizer.json) through ONNX Runtime; writes per-row scores and a report with the mean score and the share at or above `threshold` (overall and by category), shown by `alignflow report` under `onnx_judges`."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("results", ArtifactType::Table, "the table to score: `id`, the text column, optional `category` (an `eval` stage's `results`)")]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("scores", ArtifactType::Table, "id, category, text, score, flagged"),
            Port::new("report", ArtifactType::Report, "metric, n, mean, flagged_rate, threshold, by_category"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut v = classifier_params();
        v.extend([
            ParamSpec::str("column", Some("greedy_response"), "the text column to score"),
            ParamSpec::str("metric", Some("onnx_score"), "the metric's name in the report"),
            ParamSpec::float("threshold", 0.0, 1.0, Some(0.5), "a score at or above this counts as flagged"),
        ]);
        v
    }
    fn external_fingerprint(&self, params: &Params, base_dir: &Path) -> Result<Option<[u8; 32]>, StageError> {
        classifier_fingerprint(params, base_dir)
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let table = read_input_table(ctx, "results")?;
        let column = ctx.params.str("column")?.to_string();
        let texts = datasets::table::str_values(&table, &column, "results").map_err(|e| StageError::wrap("input `results`", e))?;
        let ids = datasets::table::str_values(&table, "id", "results").map_err(|e| StageError::wrap("input `results`", e))?;
        let categories = if datasets::table::column(&table, "category", "results").is_ok() {
            datasets::table::str_values(&table, "category", "results").map_err(|e| StageError::wrap("input `results`", e))?
        } else {
            vec![""; ids.len()]
        };
        let scores = Classifier::from_params(ctx.params, ctx.base_dir)?.score_all(&texts, ctx.params.int("batch_size")? as usize)?;
        let threshold = ctx.params.float("threshold")? as f32;
        let flagged: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("category", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("score", DataType::Float32, false),
            Field::new("flagged", DataType::Boolean, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids.clone())),
            Arc::new(StringArray::from(categories.clone())),
            Arc::new(StringArray::from(texts.clone())),
            Arc::new(Float32Array::from(scores.clone())),
            Arc::new(BooleanArray::from(flagged.clone())),
        ];
        let out = RecordBatch::try_new(schema, cols).map_err(|e| StageError::wrap("building the `scores` table", e))?;
        write_output_table(ctx, "scores", &out)?;
        let summary = |idx: &[usize]| {
            let n = idx.len();
            let mean = if n == 0 { None } else { Some(idx.iter().map(|&i| scores[i] as f64).sum::<f64>() / n as f64) };
            let rate = if n == 0 { None } else { Some(idx.iter().filter(|&&i| flagged[i]).count() as f64 / n as f64) };
            (n, mean, rate)
        };
        let all: Vec<usize> = (0..scores.len()).collect();
        let (n, mean, rate) = summary(&all);
        let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, c) in categories.iter().enumerate() {
            if !c.is_empty() {
                by_cat.entry(c).or_default().push(i);
            }
        }
        let by_category: serde_json::Map<String, serde_json::Value> = by_cat
            .iter()
            .map(|(c, idx)| {
                let (n, mean, rate) = summary(idx);
                (c.to_string(), serde_json::json!({"n": n, "mean": mean, "flagged_rate": rate}))
            })
            .collect();
        let report = serde_json::json!({
            "metric": ctx.params.str("metric")?,
            "column": column,
            "label": ctx.params.int("label")?,
            "threshold": threshold,
            "n": n,
            "mean": mean,
            "flagged_rate": rate,
            "by_category": by_category,
        });
        write_report(ctx, "report", &report)
    }
}

fn file_param(params: &Params, base_dir: &Path, name: &str) -> Result<PathBuf, StageError> {
    let p = Path::new(params.str(name)?);
    Ok(if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) })
}

/// ONNX Runtime's one environment per process, loaded on first use.
static ORT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime shared library is: `ORT_DYLIB_PATH`, else the `onnxruntime` Python
/// package's `capi/libonnxruntime.so*`.
pub fn find_onnxruntime() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
        .output()
        .map_err(|e| format!("ONNX Runtime not found: ORT_DYLIB_PATH is not set and python3 could not be run ({e})"))?;
    if !out.status.success() {
        return Err("ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so, or `pip install onnxruntime` (scripts/setup.sh does)".into());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    libs.sort();
    libs.pop().ok_or_else(|| format!("{}: no libonnxruntime.so* in the onnxruntime package", dir.display()))
}

fn environment() -> Result<&'static ort::environment::Environment, StageError> {
    let env = ORT.get_or_init(|| {
        let lib = find_onnxruntime()?;
        let builder = ort::init_from(&lib).map_err(|e| format!("loading ONNX Runtime from {}: {e}", lib.display()))?;
        builder.with_name("alignflow").build().map_err(|e| format!("ONNX Runtime environment: {e}"))
    });
    env.as_ref().map_err(|e| StageError::wrap("onnx_judge", e.clone()))
}

/// A loaded classifier and its tokenizer.
/// The parameters of every stage that runs a user's classifier (`onnx_judge`, `onnx_annotate`).
pub(crate) fn classifier_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::str("model", None, "the ONNX classifier, relative to the pipeline file"),
        ParamSpec::str("tokenizer", None, "its tokenizer.json (Hugging Face tokenizers format), relative to the pipeline file"),
        ParamSpec::int("label", 0, 1 << 20, Some(1), "with [batch, classes] logits: the class whose softmax probability is the score"),
        ParamSpec::int("max_tokens", 1, 1 << 16, Some(256), "texts longer than this many tokens keep their first tokens"),
        ParamSpec::int("batch_size", 1, 4096, Some(16), "texts per ONNX Runtime call"),
    ]
}

/// The classifier's files (model and tokenizer) as a stage's external fingerprint: editing
/// either re-runs the stage.
pub(crate) fn classifier_fingerprint(params: &Params, base_dir: &Path) -> Result<Option<[u8; 32]>, StageError> {
    let mut h = blake3::Hasher::new();
    h.update(&hash_file(&file_param(params, base_dir, "model")?)?);
    h.update(&hash_file(&file_param(params, base_dir, "tokenizer")?)?);
    Ok(Some(*h.finalize().as_bytes()))
}

pub struct Classifier {
    session: Mutex<ort::session::Session>,
    tokenizer: tokenizers::Tokenizer,
    inputs: Vec<String>,
    label: usize,
    max_tokens: usize,
}

impl Classifier {
    pub fn load(model: &Path, tokenizer: &Path, label: usize, max_tokens: usize) -> Result<Classifier, StageError> {
        let env = environment()?;
        let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer).map_err(|e| StageError::wrap(ctx("reading the tokenizer", tokenizer), e.to_string()))?;
        let builder = ort::session::Session::builder(env).map_err(|e| StageError::wrap("ONNX Runtime session", e))?;
        let session = builder
            .with_intra_threads(1)
            .map_err(|e| StageError::wrap("ONNX Runtime session options", e.to_string()))?
            .commit_from_file(model)
            .map_err(|e| StageError::wrap(ctx("loading the ONNX model", model), e))?;
        let inputs: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        if let Some(bad) = inputs.iter().find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str())) {
            return Err(StageError::wrap(
                ctx("the ONNX model", model),
                format!("has an input `{bad}`; a classifier takes input_ids and optionally attention_mask and token_type_ids"),
            ));
        }
        if !inputs.iter().any(|n| n == "input_ids") {
            return Err(StageError::wrap(ctx("the ONNX model", model), "has no `input_ids` input"));
        }
        Ok(Classifier { session: Mutex::new(session), tokenizer, inputs, label, max_tokens })
    }

    /// The classifier named by [`classifier_params`].
    pub(crate) fn from_params(params: &Params, base_dir: &Path) -> Result<Classifier, StageError> {
        Classifier::load(&file_param(params, base_dir, "model")?, &file_param(params, base_dir, "tokenizer")?, params.int("label")? as usize, params.int("max_tokens")? as usize)
    }

    /// [`Classifier::score`] over `texts` in calls of at most `batch` texts.
    pub(crate) fn score_all<S: AsRef<str>>(&self, texts: &[S], batch: usize) -> Result<Vec<f32>, StageError> {
        let refs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let mut scores = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(batch.max(1)) {
            scores.extend(self.score(chunk)?);
        }
        Ok(scores)
    }

    /// One score in [0, 1] per text.
    pub fn score(&self, texts: &[&str]) -> Result<Vec<f32>, StageError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: Vec<Vec<i64>> = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self.tokenizer.encode(*t, true).map_err(|e| StageError::wrap("tokenizing a text", e.to_string()))?;
            let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
            // An empty text keeps no token: its row is padding only (mask 0).
            ids.truncate(self.max_tokens);
            rows.push(ids);
        }
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let b = rows.len();
        let (mut ids, mut mask) = (vec![0i64; b * len], vec![0i64; b * len]);
        for (i, r) in rows.iter().enumerate() {
            ids[i * len..i * len + r.len()].copy_from_slice(r);
            mask[i * len..i * len + r.len()].iter_mut().for_each(|m| *m = 1);
        }
        let tensor = |v: Vec<i64>| -> Result<ort::value::DynValue, StageError> {
            let a = ndarray::Array2::from_shape_vec((b, len), v).map_err(|e| StageError::wrap("input tensor", e))?;
            Ok(ort::value::Tensor::from_array(a).map_err(|e| StageError::wrap("input tensor", e))?.into_dyn())
        };
        let mut feed: Vec<(String, ort::value::DynValue)> = Vec::new();
        for name in &self.inputs {
            let v = match name.as_str() {
                "input_ids" => ids.clone(),
                "attention_mask" => mask.clone(),
                _ => vec![0i64; b * len],
            };
            feed.push((name.clone(), tensor(v)?));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(feed).map_err(|e| StageError::wrap("running the ONNX model", e))?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| StageError::wrap("the ONNX model's first output (expected float logits)", e))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        let classes = match dims.as_slice() {
            [n] if *n as usize == b => 1,
            [n, c] if *n as usize == b => *c as usize,
            _ => return Err(StageError::wrap("the ONNX model's first output", format!("shape {dims:?}; expected [{b}] or [{b}, classes]"))),
        };
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        if classes == 1 {
            return Ok(data.iter().map(|&x| sigmoid(x)).collect());
        }
        if self.label >= classes {
            return Err(StageError::wrap("onnx_judge", format!("label {} but the model has {classes} classes", self.label)));
        }
        Ok(data
            .chunks(classes)
            .map(|row| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = row.iter().map(|&x| (x - m).exp()).sum();
                (row[self.label] - m).exp() / z
            })
            .collect())
    }
}
