//! Multi-turn rollouts shared by `gatt` and `eval_dialogue`: a batch of dialogues is answered
//! turn by turn, each turn one batched generation over the dialogues that still have a user
//! turn left; turn t of a dialogue draws from its own stream (dialogue seed, t), so an answer
//! does not depend on the batch it was generated in.

use kernels::chat::{ChatTemplate, Message};
use kernels::generate::{generate_in_sessions, DecodeWeights, SamplingParams, Session, WeightPrecision};
use kernels::model::Llama;
use kernels::tokenizer::Tokenizer;

use graph::StageError;

/// The seed of every generation call; dialogues differ by their stream ids.
const GENERATION_SEED: u64 = 0x5EED_D1A1;

/// A conversation to roll out: an optional system message and the user turns. `users[t]` is
/// shown as is (a caller that concatenates an instruction to every user turn does it here).
#[derive(Clone, Debug)]
pub(crate) struct Convo {
    pub key: String,
    pub system: Option<String>,
    pub users: Vec<String>,
    pub seed: u64,
}

/// One generated assistant turn.
#[derive(Clone, Debug)]
pub(crate) struct Turn {
    pub text: String,
    /// Ended with a stop id (not cut by max_new_tokens).
    pub eos: bool,
    /// Tokens of the prompt this turn was generated from.
    pub prompt_tokens: usize,
    /// Earlier turn pairs left out of that prompt to fit the model's positions.
    pub dropped_turns: usize,
}

pub(crate) struct Roller<'a> {
    pub model: &'a Llama,
    pub tok: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub stop: &'a [u32],
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
}

/// The stream id of turn `t` of a dialogue with seed `seed`.
fn turn_stream(seed: u64, t: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"dialogue-turn");
    h.update(&seed.to_le_bytes());
    h.update(&(t as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The messages of a conversation up to and including user turn `t`, with the answers so far,
/// leaving out the `dropped` earliest turn pairs after the first (the first pair, which
/// carries the instruction, always stays).
pub(crate) fn messages_upto(c: &Convo, answers: &[String], t: usize, dropped: usize) -> Vec<Message> {
    let mut msgs = Vec::with_capacity(2 * t + 2);
    if let Some(s) = c.system.as_deref().filter(|s| !s.is_empty()) {
        msgs.push(Message::new("system", s));
    }
    for s in (0..t).filter(|&s| s == 0 || s > dropped) {
        msgs.push(Message::new("user", &c.users[s]));
        msgs.push(Message::new("assistant", &answers[s]));
    }
    msgs.push(Message::new("user", &c.users[t]));
    msgs
}

impl Roller<'_> {
    /// Answers every user turn of every conversation; `out[i][t]` is turn t of `convos[i]`.
    /// A prompt that would not fit the model's positions is an error naming the dialogue.
    pub fn roll(&self, convos: &[Convo]) -> Result<Vec<Vec<Turn>>, StageError> {
        let dw = DecodeWeights::new(self.model, WeightPrecision::F32);
        let max_pos = self.model.config.max_position_embeddings;
        let mut out: Vec<Vec<Turn>> = convos.iter().map(|c| Vec::with_capacity(c.users.len())).collect();
        let max_turns = convos.iter().map(|c| c.users.len()).max().unwrap_or(0);
        let params = SamplingParams { max_new_tokens: self.max_new_tokens, temperature: self.temperature, top_p: self.top_p, seed: GENERATION_SEED };
        // One decoding session per dialogue: turn t runs only the previous answer's end and
        // the new user turn, not turns 1..t-1 again (a windowed prompt keeps what it shares).
        let mut sessions = vec![Session::default(); convos.len()];
        for t in 0..max_turns {
            let active: Vec<usize> = (0..convos.len()).filter(|&i| convos[i].users.len() > t).collect();
            let mut prompts = Vec::with_capacity(active.len());
            let mut streams = Vec::with_capacity(active.len());
            let mut drops = Vec::with_capacity(active.len());
            for &i in &active {
                let c = &convos[i];
                let answers: Vec<String> = out[i].iter().map(|a| a.text.clone()).collect();
                // A prompt that does not fit the model's positions drops its earliest turns
                // after the first (a window that keeps the instruction's turn).
                let mut dropped = 0;
                let enc = loop {
                    let msgs = messages_upto(c, &answers, t, dropped);
                    let enc = self
                        .template
                        .encode(self.tok, &msgs, true, None, None)
                        .map_err(|e| StageError::Row { key: c.key.clone(), message: e.to_string() })?;
                    if enc.ids.len() + self.max_new_tokens <= max_pos || dropped + 1 >= t {
                        break enc;
                    }
                    dropped += 1;
                };
                if enc.ids.len() + self.max_new_tokens > max_pos {
                    return Err(StageError::Row {
                        key: c.key.clone(),
                        message: format!(
                            "turn {}: the prompt has {} tokens; with max_new_tokens {} it does not fit the model's {max_pos} positions",
                            t + 1,
                            enc.ids.len(),
                            self.max_new_tokens
                        ),
                    });
                }
                prompts.push(enc.ids);
                drops.push(dropped);
                streams.push(turn_stream(c.seed, t));
            }
            let mut turn_sessions: Vec<Session> = active.iter().map(|&i| std::mem::take(&mut sessions[i])).collect();
            let generated = generate_in_sessions(&dw, &mut turn_sessions, &prompts, &streams, &params, self.stop)
                .map_err(|e| StageError::wrap("generating", e))?;
            for (&i, session) in active.iter().zip(turn_sessions) {
                sessions[i] = session;
            }
            for (((&i, ids), prompt), &dropped_turns) in active.iter().zip(generated).zip(&prompts).zip(&drops) {
                let eos = ids.last().is_some_and(|x| self.stop.contains(x));
                let text = self.tok.decode(&ids, true).map_err(|e| StageError::Row { key: convos[i].key.clone(), message: e.to_string() })?;
                out[i].push(Turn { text: text.trim().to_string(), eos, prompt_tokens: prompt.len(), dropped_turns });
            }
        }
        Ok(out)
    }
}

/// A dialogue's seed from the stage seed and its id.
pub(crate) fn dialogue_seed(stage_seed: u64, id: &str) -> u64 {
    graph::fingerprint::derive_u64(&[b"dialogue-seed", &stage_seed.to_le_bytes(), id.as_bytes()])
}
