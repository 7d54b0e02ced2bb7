//! The two reward models together: score (prompt, answer) pairs with the helpfulness model
//! and, when given, the safety model, read the scores as probabilities (sigmoid), and combine
//! them with the safety gate of Llama 2 §3.2.3 (`reward::combined_reward`).

use std::path::Path;

use graph::StageError;

use super::policy::Loaded;
use super::reward::{combined_reward, sigmoid, RewardInputs};

/// Both reward models and the gate threshold.
pub struct Scorer {
    pub helpfulness: Loaded,
    pub safety: Option<Loaded>,
    /// The paper's 0.15: below it the safety score is used whatever the prompt's tag.
    pub threshold: f32,
}

/// One answer's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub inputs: RewardInputs,
    /// The combined reward Rc, a probability.
    pub reward: f32,
}

impl Scorer {
    /// Loads the models wired to `helpfulness_port` and (optional) `safety_port`.
    pub fn load(help: &Path, safety: Option<&Path>, threshold: f32) -> Result<Scorer, StageError> {
        Ok(Scorer {
            helpfulness: Loaded::load(help, "input `helpfulness_rm`")?,
            safety: safety.map(|p| Loaded::load(p, "input `safety_rm`")).transpose()?,
            threshold,
        })
    }

    /// Scores `answers[i]` to `prompts[i]`; `is_safety[i]` is the prompt's tag.
    pub fn score(&self, prompts: &[&str], answers: &[&str], is_safety: &[bool]) -> Result<Vec<Scored>, StageError> {
        let pairs: Vec<(&str, &str)> = prompts.iter().copied().zip(answers.iter().copied()).collect();
        let help = self.helpfulness.score(&pairs)?;
        let safe = match &self.safety {
            Some(m) => Some(m.score(&pairs)?),
            None => None,
        };
        Ok((0..pairs.len())
            .map(|i| {
                let inputs = RewardInputs { helpfulness: sigmoid(help[i]), safety: safe.as_ref().map(|s| sigmoid(s[i])), is_safety: is_safety[i] };
                Scored { inputs, reward: combined_reward(inputs, self.threshold) }
            })
            .collect())
    }
}
