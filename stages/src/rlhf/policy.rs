//! Models as the RLHF stages use them: a model directory (policy or reward model) loaded with
//! its tokenizer and chat template; a prompt turned into the ids of a one-turn chat with the
//! generation prompt; answers sampled with per-row random streams; answers decoded to text;
//! (prompt, answer) pairs scored by a reward model; and a reward model initialised from a
//! policy with a fresh scalar head (`score.weight`, HF `LlamaForSequenceClassification`).
//!
//! Reward models always see an answer as text re-encoded through the chat template, whether
//! it came from a table or was just generated, so training and scoring see the same ids.

use std::path::Path;

use graph::StageError;
use kernels::chat::{ChatTemplate, Message};
use kernels::checkpoint::{HostTensor, SaveDtype};
use kernels::config::{Head, LlamaConfig};
use kernels::generate::{generate_with, DecodeWeights, SamplingParams, WeightPrecision};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;
use kernels::rng::Rng;
use kernels::tokenizer::Tokenizer;

/// Rows per forward call when scoring: bounds memory, never changes a score (rows are
/// independent in the packed forward).
const SCORE_CHUNK: usize = 32;

/// A model directory in memory: the network plus what is needed to talk to it.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Ids that end an answer.
    pub stop: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn wrap(what: &str) -> impl Fn(Box<dyn std::error::Error + Send + Sync>) -> StageError + '_ {
    move |e| StageError::wrap(what.to_string(), e)
}

impl Loaded {
    /// Loads the model directory `dir`; `what` names it in errors (e.g. "input `policy`"). The
    /// directory must carry a tokenizer; a missing chat template means the Llama 2 format.
    pub fn load(dir: &Path, what: &str) -> Result<Loaded, StageError> {
        let md = ModelDir::load(dir).map_err(|e| wrap(what)(e.into()))?;
        let stop = md.stop_ids();
        let model = Llama::from_tensors(md.config.clone(), &md.tensors).map_err(|e| wrap(what)(e.into()))?;
        let tokenizer = md.tokenizer.ok_or_else(|| StageError::Message(format!("{what}: the model directory has no tokenizer.json")))?;
        let chat = md.chat.unwrap_or(ChatTemplate::Llama2);
        let bos = md.config.bos_token_id.or_else(|| tokenizer.token_to_id("<s>"));
        let eos = md.config.eos_token_ids.first().copied().or_else(|| tokenizer.token_to_id("</s>"));
        Ok(Loaded { model, tokenizer, chat, stop, bos, eos })
    }

    /// Writes the model with this tokenizer and chat template to `dir` (atomically).
    pub fn save(&self, dir: &Path, what: &str) -> Result<(), StageError> {
        let md = ModelDir {
            config: self.model.config.clone(),
            tensors: self.model.to_tensors(),
            tokenizer: Some(self.tokenizer.clone()),
            chat: Some(self.chat.clone()),
        };
        md.save(dir, SaveDtype::F32).map_err(|e| wrap(what)(e.into()))
    }

    /// Ids of the one-turn chat `[user: prompt]` ending with the generation prompt.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, StageError> {
        let enc = self.chat.encode(&self.tokenizer, &[Message::new("user", prompt)], true, self.bos, self.eos);
        enc.map(|c| c.ids).map_err(|e| StageError::wrap("encoding a prompt", e))
    }

    /// Ids of the finished chat `[user: prompt, assistant: answer]` (the reward models' input).
    pub fn chat_ids(&self, prompt: &str, answer: &str) -> Result<Vec<u32>, StageError> {
        let msgs = [Message::new("user", prompt), Message::new("assistant", answer)];
        let enc = self.chat.encode(&self.tokenizer, &msgs, false, self.bos, self.eos);
        enc.map(|c| c.ids).map_err(|e| StageError::wrap("encoding a (prompt, answer) chat", e))
    }

    /// Samples one answer per prompt; row r draws from the stream (seed, row_ids[r]), so an
    /// answer depends only on its prompt, its row id and the parameters.
    pub fn generate(&self, prompts: &[Vec<u32>], row_ids: &[u64], params: &SamplingParams) -> Result<Vec<Vec<u32>>, StageError> {
        let dw = DecodeWeights::new(&self.model, WeightPrecision::F32);
        generate_with(&dw, prompts, row_ids, params, &self.stop).map_err(|e| StageError::wrap("generating answers", e))
    }

    /// The text of generated ids, without the stop token and special tokens, trimmed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, StageError> {
        let body: Vec<u32> = ids.iter().copied().filter(|t| !self.stop.contains(t)).collect();
        let text = self.tokenizer.decode(&body, true).map_err(|e| StageError::wrap("decoding an answer", e))?;
        Ok(text.trim().to_string())
    }

    /// Raw scalar-head scores of (prompt, answer) pairs; the model must be a reward model.
    /// Chats longer than the model's positions are cut to their last `max_position_embeddings`
    /// tokens (the score is read at the last token).
    pub fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, StageError> {
        let max = self.model.config.max_position_embeddings;
        let rows: Vec<Vec<u32>> = pairs
            .iter()
            .map(|(p, a)| self.chat_ids(p, a).map(|ids| ids[ids.len().saturating_sub(max)..].to_vec()))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(SCORE_CHUNK) {
            out.extend(self.model.scores(chunk).map_err(|e| StageError::wrap("scoring answers", e))?);
        }
        Ok(out)
    }

    /// A reward model initialised from this policy: every weight but the next-token head, plus
    /// a scalar head `score.weight` of shape [1, hidden] drawn from normal(0, 0.02) (HF's
    /// initialiser) with `seed`.
    pub fn reward_model_init(&self, seed: u64) -> Result<Loaded, StageError> {
        let mut config: LlamaConfig = self.model.config.clone();
        config.head = Head::Scalar { num_labels: 1 };
        config.tie_word_embeddings = false;
        let mut tensors = self.model.to_tensors();
        tensors.remove("lm_head.weight");
        let d = config.hidden_size;
        let mut rng = Rng::new(seed);
        let head: Vec<f32> = (0..d).map(|_| (rng.normal() * 0.02) as f32).collect();
        tensors.insert("score.weight".into(), HostTensor { shape: vec![1, d], data: head });
        let model = Llama::from_tensors(config, &tensors).map_err(|e| StageError::wrap("building the reward model", e))?;
        Ok(Loaded { model, tokenizer: self.tokenizer.clone(), chat: self.chat.clone(), stop: self.stop.clone(), bos: self.bos, eos: self.eos })
    }

    /// A copy with other weights (same tokenizer and template).
    pub fn with_model(&self, model: Llama) -> Loaded {
        Loaded { model, tokenizer: self.tokenizer.clone(), chat: self.chat.clone(), stop: self.stop.clone(), bos: self.bos, eos: self.eos }
    }
}

/// Global gradient-norm clipping where `max_norm` 0 means none; returns the norm before.
pub fn clip_grads(grads: &mut kernels::model::Grads, max_norm: f64) -> f32 {
    if max_norm > 0.0 { kernels::optim::clip_grad_norm(grads, max_norm as f32) } else { grads.global_norm() }
}

/// A u64 row id for the generator from a row's seed and a sample index: sample k of a row
/// draws from its own stream.
pub fn sample_stream(row_seed: u64, k: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&row_seed.to_le_bytes());
    h.update(&k.to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
pub mod testing {
    //! A tiny policy model directory for the RLHF stage tests: a BPE tokenizer trained on a
    //! few hundred world prompts and answers, and a random two-layer Llama.

    use std::path::Path;

    use kernels::chat::ChatTemplate;
    use kernels::checkpoint::SaveDtype;
    use kernels::config::{Head, LlamaConfig};
    use kernels::model::Llama;
    use kernels::model_dir::ModelDir;
    use kernels::tokenizer::{BpeOptions, Tokenizer};

    /// The world's prompt table for tests (`n` rows of `preference_prompts`).
    pub fn prompts(n: usize) -> arrow_array::RecordBatch {
        let mut cfg = datasets::world::WorldConfig::standard(5);
        cfg.sizes.preference_prompts = n;
        datasets::world::generate_split(&cfg, datasets::world::Split::PreferencePrompts).unwrap()
    }

    /// Writes a random tiny policy to `dir`.
    pub fn tiny_policy(dir: &Path, seed: u64) {
        let batch = prompts(300);
        let texts: Vec<String> = datasets::table::str_values(&batch, "prompt", "p").unwrap().into_iter().map(String::from).collect();
        let extra = ["The answer is 12.", "I can't help with that.", "[INST]", "[/INST]"].map(String::from);
        let opts = BpeOptions { vocab_size: 400, min_frequency: 2, special_tokens: vec!["<s>".into(), "</s>".into(), "<pad>".into()] };
        let tok = Tokenizer::train_bpe(&mut texts.into_iter().chain(extra), &opts).unwrap();
        let config = LlamaConfig {
            vocab_size: tok.vocab_size(),
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            bos_token_id: tok.token_to_id("<s>"),
            eos_token_ids: vec![tok.token_to_id("</s>").unwrap()],
            pad_token_id: tok.token_to_id("<pad>"),
            head: Head::LanguageModel,
        };
        let model = Llama::new_random(config.clone(), seed);
        let md = ModelDir { config, tensors: model.to_tensors(), tokenizer: Some(tok), chat: Some(ChatTemplate::Llama2) };
        md.save(dir, SaveDtype::F32).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_model_init_keeps_the_trunk_and_adds_a_scalar_head() {
        let dir = tempfile::tempdir().unwrap();
        testing::tiny_policy(dir.path(), 1);
        let policy = Loaded::load(dir.path(), "policy").unwrap();
        let rm = policy.reward_model_init(9).unwrap();
        let t = rm.model.to_tensors();
        assert!(!t.contains_key("lm_head.weight"));
        assert_eq!(t["score.weight"].shape, vec![1, 32]);
        assert_eq!(t["model.layers.1.mlp.up_proj.weight"], policy.model.to_tensors()["model.layers.1.mlp.up_proj.weight"]);
        let s = rm.score(&[("What is 1 + 2?", "The answer is 3."), ("What is 1 + 2?", "4")]).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|x| x.is_finite()));
        assert_ne!(s[0], s[1]);
        // Saved and loaded back, it scores the same.
        let out = tempfile::tempdir().unwrap();
        rm.save(&out.path().join("rm"), "rm").unwrap();
        let back = Loaded::load(&out.path().join("rm"), "rm").unwrap();
        assert_eq!(back.score(&[("What is 1 + 2?", "The answer is 3.")]).unwrap()[0], s[0]);
    }

    #[test]
    fn generation_is_per_row_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        testing::tiny_policy(dir.path(), 2);
        let p = Loaded::load(dir.path(), "policy").unwrap();
        let a = p.prompt_ids("What is 7 + 12?").unwrap();
        let b = p.prompt_ids("Reverse the word \"stone\".").unwrap();
        let sp = SamplingParams { max_new_tokens: 8, temperature: 1.0, top_p: 1.0, seed: 3 };
        let both = p.generate(&[a.clone(), b], &[sample_stream(5, 0), sample_stream(6, 0)], &sp).unwrap();
        let alone = p.generate(&[a], &[sample_stream(5, 0)], &sp).unwrap();
        assert_eq!(both[0], alone[0]);
        assert!(p.decode(&both[1]).is_ok());
    }
}
