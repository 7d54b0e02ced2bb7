//! A model directory in Hugging Face layout, read and written as one unit: `config.json`,
//! `model.safetensors` (or shards), `tokenizer.json`, `tokenizer_config.json` (chat template,
//! BOS/EOS/PAD strings) and `generation_config.json`. What alignflow writes, transformers'
//! `from_pretrained` loads, and the other way round.
//!
//! Saving is atomic: everything goes to a temp directory next to the target, which is then
//! renamed into place, so a reader never sees a half-written model. The built-in Llama 2 chat
//! format is recorded as `alignflow_chat_format: "llama2"` plus the equivalent Jinja template,
//! so transformers users get the same prompts.

use std::path::{Path, PathBuf};

use crate::chat::{ChatError, ChatTemplate, LLAMA2_JINJA};
use crate::checkpoint::{load_tensors, save_tensors, CheckpointError, SaveDtype, TensorMap};
use crate::config::{ConfigError, LlamaConfig};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Everything a model directory holds that alignflow uses.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub config: LlamaConfig,
    pub tensors: TensorMap,
    pub tokenizer: Option<Tokenizer>,
    pub chat: Option<ChatTemplate>,
}

/// Errors loading or saving a model directory; the inner errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelDirError + '_ {
    move |error| ModelDirError::Io { path: path.display().to_string(), error }
}

impl ModelDir {
    /// Loads a model directory. The tokenizer and chat template are optional; config.json and
    /// weights are required.
    pub fn load(dir: &Path) -> Result<ModelDir, ModelDirError> {
        if !dir.is_dir() {
            return Err(ModelDirError::Invalid { path: dir.display().to_string(), message: "not a directory".into() });
        }
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let tensors = load_tensors(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.is_file() { Some(Tokenizer::from_file(&tok_path)?) } else { None };
        let chat = ChatTemplate::from_model_dir(dir)?;
        Ok(ModelDir { config, tensors, tokenizer, chat })
    }

    /// Writes the directory atomically: a temp sibling directory, then a rename over `dir`.
    pub fn save(&self, dir: &Path, dtype: SaveDtype) -> Result<(), ModelDirError> {
        let tmp = crate::checkpoint::temp_sibling(dir);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let written = self.write_files(&tmp, dtype);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        replace_dir(&tmp, dir)
    }

    /// Ids that end a reply: the config's EOS ids plus the id of the chat template's
    /// end-of-turn token (e.g. `<|im_end|>`), deduplicated and sorted.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        if let (Some(tok), Some(end)) = (&self.tokenizer, self.chat.as_ref().and_then(|c| c.end_of_turn())) {
            ids.extend(tok.token_to_id(end));
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn write_files(&self, dir: &Path, dtype: SaveDtype) -> Result<(), ModelDirError> {
        write_json(&dir.join("config.json"), &self.config.to_json())?;
        save_tensors(&dir.join(crate::checkpoint::SINGLE_FILE), &self.tensors, dtype)?;
        if let Some(tok) = &self.tokenizer {
            tok.save(&dir.join("tokenizer.json"))?;
        }
        if self.tokenizer.is_some() || self.chat.is_some() {
            write_json(&dir.join("tokenizer_config.json"), &self.tokenizer_config())?;
        }
        let generation = serde_json::json!({
            "bos_token_id": self.config.bos_token_id,
            "eos_token_id": match self.config.eos_token_ids.as_slice() { [one] => (*one).into(), many => serde_json::Value::from(many.to_vec()) },
            "pad_token_id": self.config.pad_token_id,
        });
        write_json(&dir.join("generation_config.json"), &generation)
    }

    /// tokenizer_config.json as transformers' `PreTrainedTokenizerFast` reads it.
    fn tokenizer_config(&self) -> serde_json::Value {
        let name = |id: Option<u32>| id.and_then(|i| self.tokenizer.as_ref()?.id_to_token(i));
        let mut v = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.config.max_position_embeddings,
            "clean_up_tokenization_spaces": false,
            "add_bos_token": false,
            "add_eos_token": false,
        });
        let mut bos = name(self.config.bos_token_id);
        let mut eos = name(self.config.eos_token_ids.first().copied());
        match &self.chat {
            Some(ChatTemplate::Llama2) => {
                v["chat_template"] = LLAMA2_JINJA.into();
                v["alignflow_chat_format"] = "llama2".into();
            }
            Some(ChatTemplate::Jinja { source, bos_token, eos_token }) => {
                v["chat_template"] = source.as_str().into();
                // The template was written for these strings; keep them.
                if !bos_token.is_empty() {
                    bos = Some(bos_token.clone());
                }
                if !eos_token.is_empty() {
                    eos = Some(eos_token.clone());
                }
            }
            None => {}
        }
        for (k, t) in [("bos_token", bos), ("eos_token", eos), ("pad_token", name(self.config.pad_token_id))] {
            if let Some(t) = t {
                v[k] = t.into();
            }
        }
        v
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ModelDirError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelDirError::Invalid { path: path.display().to_string(), message: e.to_string() })?;
    std::fs::write(path, text + "\n").map_err(io(path))
}

/// Moves the finished `tmp` directory to `dir`, replacing an existing one: the old directory
/// is first renamed aside, so `dir` is at every moment either the old or the new model.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<(), ModelDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if !dir.exists() {
        return std::fs::rename(tmp, dir).map_err(io(dir));
    }
    let old: PathBuf = {
        let mut s = crate::checkpoint::temp_sibling(dir).into_os_string();
        s.push(".old");
        s.into()
    };
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dir, &old).map_err(io(dir))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(io(dir)(e));
    }
    std::fs::remove_dir_all(&old).map_err(io(&old))
}
