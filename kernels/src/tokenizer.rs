//! Tokenizers: a thin wrapper over the `tokenizers` crate (0.22, pure Rust with fancy-regex) so
//! that the rest of alignflow sees one small API with typed errors that name the file. It loads
//! and saves Hugging Face `tokenizer.json`, encodes without adding special tokens (chat
//! templates and stages place BOS/EOS themselves), decodes, and trains a byte-level BPE.
//!
//! Training is deterministic: the crate's BPE trainer breaks count ties by pair id and numbers
//! the initial alphabet in sorted order, so the same texts and options give the same JSON
//! (tested). Byte-level means every byte has a token, so no text is ever unknown.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};

/// Errors from loading, using, training or saving a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a valid tokenizer.json: {message}")]
    Parse { path: String, message: String },
    #[error("encoding {text:?}: {message}")]
    Encode { text: String, message: String },
    #[error("decoding: {message}")]
    Decode { message: String },
    #[error("training a BPE tokenizer: {message}")]
    Train { message: String },
    #[error("{path}: cannot save: {message}")]
    Save { path: String, message: String },
}

/// Settings of byte-level BPE training. No `Default`: every field changes the result.
#[derive(Debug, Clone, PartialEq)]
pub struct BpeOptions {
    /// Final vocabulary size, special tokens and the 256 byte tokens included.
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this often.
    pub min_frequency: u64,
    /// Special tokens, given ids 0, 1, ... in this order (e.g. `<s>`, `</s>`, `<pad>`).
    pub special_tokens: Vec<String>,
}

/// A loaded tokenizer. Cheap to share by reference; encoding takes `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer {{ vocab_size: {} }}", self.vocab_size())
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(p: &Path) -> Result<Tokenizer, TokenizerError> {
        let text = std::fs::read_to_string(p).map_err(|error| TokenizerError::Io { path: p.display().to_string(), error })?;
        Self::from_json_str(&text, &p.display().to_string())
    }

    /// Parses the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Tokenizer, TokenizerError> {
        let parse = |message: String| TokenizerError::Parse { path: origin.to_string(), message };
        // Check the JSON first: the crate's own message for broken JSON is less precise.
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| parse(format!("invalid JSON: {e}")))?;
        if v.get("model").is_none() {
            return Err(parse("no `model` section".into()));
        }
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e: tokenizers::Error| parse(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with no special tokens added (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode { text: clip(text), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::Decode { message: format!("id {bad} is not in the vocabulary (size {})", self.vocab_size()) });
        }
        self.inner.decode(ids, skip_special).map_err(|e| TokenizerError::Decode { message: e.to_string() })
    }

    /// The id of a token (added/special tokens included), if it exists.
    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    /// The token string of an id, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of the tokens marked special (e.g. `<s>`, `</s>`, `<|im_end|>`), sorted.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, p: &Path) -> Result<(), TokenizerError> {
        let save = |message: String| TokenizerError::Save { path: p.display().to_string(), message };
        let text = self.to_json_string()?;
        crate::checkpoint::write_atomic(p, text.as_bytes()).map_err(|e| save(e.to_string()))
    }

    /// The `tokenizer.json` text (pretty-printed, stable across runs).
    pub fn to_json_string(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(|e| TokenizerError::Save { path: "<memory>".into(), message: e.to_string() })
    }

    /// The wrapped `tokenizers` object, for what this wrapper does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Trains a byte-level BPE (GPT-2 pre-tokenizer regex, no prefix space) on `texts`.
    pub fn train_bpe(texts: &mut dyn Iterator<Item = String>, opts: &BpeOptions) -> Result<Tokenizer, TokenizerError> {
        let train = |message: String| TokenizerError::Train { message };
        let alphabet = ByteLevel::alphabet();
        let min_vocab = opts.special_tokens.len() + alphabet.len();
        if opts.vocab_size < min_vocab {
            return Err(train(format!(
                "vocab_size {} is below the {} special tokens plus 256 byte tokens",
                opts.vocab_size,
                opts.special_tokens.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &opts.special_tokens {
            if s.is_empty() || !seen.insert(s) {
                return Err(train(format!("special token {s:?} is empty or repeated")));
            }
        }
        let specials: Vec<AddedToken> = opts.special_tokens.iter().map(|s| AddedToken::from(s.clone(), true)).collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(opts.vocab_size)
            .min_frequency(opts.min_frequency)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(alphabet.into_iter().collect())
            .build();
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut tok = TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(byte_level.into()))
            .with_post_processor(Some(byte_level.into()))
            .with_decoder(Some(byte_level.into()))
            .build()
            .map_err(|e| train(e.to_string()))?;
        // The crate wants a Send iterator; the texts of one training run fit in memory.
        let texts: Vec<String> = texts.collect();
        tok.train(&mut trainer, texts.into_iter()).map_err(|e| train(e.to_string()))?;
        Ok(Tokenizer { inner: tok.into() })
    }
}

/// The first 60 characters of `text`, for error messages.
fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}
