//! The Llama architecture's shape, read from and written to a Hugging Face `config.json`.
//!
//! Two layers, as everywhere in alignflow: `HfConfig` mirrors the file (every field optional,
//! because real files differ across transformers releases), and `LlamaConfig` is the checked,
//! plain struct the engine uses. Both `rope_theta` (older files) and
//! `rope_parameters.rope_theta` (transformers 5) are accepted.

use std::path::Path;

/// What the last position of the network computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `lm_head` (or the tied embedding): next-token logits over the vocabulary.
    LanguageModel,
    /// `score.weight` of shape [num_labels, hidden]: `LlamaForSequenceClassification`,
    /// read at the last non-pad token of each row.
    Scalar { num_labels: usize },
}

/// The checked model shape. Plain data; the engine never sees the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width; `hidden_size / num_attention_heads` when the file does not say.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// All ids that end generation (HF allows a single id or a list).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub head: Head,
}

/// Errors reading or checking a config.json. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a valid config.json: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl LlamaConfig {
    /// Reads `config.json` (a file, or a model directory holding one).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let path = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let p = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Io { path: p.clone(), error })?;
        Self::from_json_str(&text, &p)
    }

    /// Parses the text of a config.json; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string() })?;
        let invalid = |message: String| ConfigError::Invalid { path: origin.to_string(), message };
        let obj = v.as_object().ok_or_else(|| invalid("the top level is not a JSON object".into()))?;
        let req = |k: &str| -> Result<usize, ConfigError> {
            match obj.get(k) {
                Some(x) => x.as_u64().filter(|&n| n > 0).map(|n| n as usize)
                    .ok_or_else(|| invalid(format!("`{k}` must be a positive integer, found {x}"))),
                None => Err(invalid(format!("missing `{k}`"))),
            }
        };
        let opt_u32 = |k: &str| -> Result<Option<u32>, ConfigError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|n| Some(n as u32)).ok_or_else(|| invalid(format!("`{k}` must be an integer"))),
            }
        };
        let vocab_size = req("vocab_size")?;
        let hidden_size = req("hidden_size")?;
        let intermediate_size = req("intermediate_size")?;
        let num_hidden_layers = req("num_hidden_layers")?;
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads = if obj.contains_key("num_key_value_heads") { req("num_key_value_heads")? } else { num_attention_heads };
        let head_dim = match obj.get("head_dim") {
            None | Some(serde_json::Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(invalid(format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} and no head_dim is given")));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => req("head_dim")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(invalid(format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}")));
        }
        let f = |x: &serde_json::Value, k: &str| x.as_f64().ok_or_else(|| invalid(format!("`{k}` must be a number")));
        let rms_norm_eps = match obj.get("rms_norm_eps") { Some(x) => f(x, "rms_norm_eps")? as f32, None => 1e-6 };
        let rope_theta = if let Some(rp) = obj.get("rope_parameters").filter(|x| !x.is_null()) {
            if let Some(t) = rp.get("rope_type").and_then(|t| t.as_str()).filter(|&t| t != "default") {
                return Err(invalid(format!("rope_parameters.rope_type `{t}` is not supported (only `default`)")));
            }
            match rp.get("rope_theta") { Some(x) => f(x, "rope_parameters.rope_theta")? as f32, None => 10000.0 }
        } else {
            if let Some(rs) = obj.get("rope_scaling").filter(|x| !x.is_null()) {
                let t = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|t| t.as_str()).unwrap_or("?");
                if t != "default" {
                    return Err(invalid(format!("rope_scaling type `{t}` is not supported (only `default`)")));
                }
            }
            match obj.get("rope_theta") { Some(x) => f(x, "rope_theta")? as f32, None => 10000.0 }
        };
        let max_position_embeddings = if obj.contains_key("max_position_embeddings") { req("max_position_embeddings")? } else { 2048 };
        let tie_word_embeddings = obj.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false);
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|n| n as u32))
                .collect::<Option<Vec<_>>>().ok_or_else(|| invalid("`eos_token_id` list must hold integers".into()))?,
            Some(x) => vec![x.as_u64().ok_or_else(|| invalid("`eos_token_id` must be an integer or a list".into()))? as u32],
        };
        let is_cls = obj.get("architectures").and_then(|a| a.as_array())
            .map(|a| a.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("ForSequenceClassification"))))
            .unwrap_or(false);
        let head = if is_cls {
            let n = obj.get("id2label").and_then(|m| m.as_object()).map(|m| m.len())
                .or_else(|| obj.get("num_labels").and_then(|n| n.as_u64()).map(|n| n as usize)).unwrap_or(1);
            Head::Scalar { num_labels: n.max(1) }
        } else {
            Head::LanguageModel
        };
        if let Some(act) = obj.get("hidden_act").and_then(|a| a.as_str()).filter(|&a| a != "silu") {
            return Err(invalid(format!("hidden_act `{act}` is not supported (only `silu`)")));
        }
        for k in ["attention_bias", "mlp_bias"] {
            if obj.get(k).and_then(|b| b.as_bool()) == Some(true) {
                return Err(invalid(format!("`{k}: true` is not supported (Llama has no biases)")));
            }
        }
        Ok(LlamaConfig {
            vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
            num_key_value_heads, head_dim, rms_norm_eps, rope_theta, max_position_embeddings,
            tie_word_embeddings, bos_token_id: opt_u32("bos_token_id")?, eos_token_ids,
            pad_token_id: opt_u32("pad_token_id")?, head,
        })
    }

    /// The config.json text transformers reads back to the same shape.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [match self.head { Head::LanguageModel => "LlamaForCausalLM", Head::Scalar { .. } => "LlamaForSequenceClassification" }],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": { "rope_theta": self.rope_theta, "rope_type": "default" },
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() { [] => serde_json::Value::Null, [one] => (*one).into(), many => many.into() },
        });
        if let Head::Scalar { num_labels } = self.head {
            let id2label: serde_json::Map<String, serde_json::Value> = (0..num_labels).map(|i| (i.to_string(), format!("LABEL_{i}").into())).collect();
            let label2id: serde_json::Map<String, serde_json::Value> = (0..num_labels).map(|i| (format!("LABEL_{i}"), i.into())).collect();
            v["id2label"] = id2label.into();
            v["label2id"] = label2id.into();
        }
        v
    }

    /// Number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
