//! The world's simulated annotators (Llama 2 §3.2.1; assistant-world.md "Simulated
//! annotators"): given a prompt and two responses, prefer the one with the higher gold
//! helpfulness, rate the preference on the paper's four-level scale by how far apart the
//! gold scores are, and flip the choice with a probability that grows as the pair gets
//! closer, so reward models face real label noise. Every decision is a pure function of
//! `(config, pair id, prompt, responses)`: re-annotating one pair gives what a full run gives.
//!
//! Tracks: prompts tagged `is_safety`, and borderline prompts (benign prompts that look
//! alarming, where over-refusal must be learned against), go to the safety track; the rest to
//! helpfulness. Every pair gets a safety bin; the safety track drops pairs whose chosen
//! response is unsafe while the rejected one is safe (`Annotation::kept`).

use crate::error::{DataError, Result};
use crate::judge::{Family, JudgeInput, helpfulness, is_unsafe};
use crate::schema::PreferencePairRow;
use crate::world::Rng;

/// The paper's four-level preference rating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rating {
    SignificantlyBetter,
    Better,
    SlightlyBetter,
    NegligiblyBetter,
}

impl Rating {
    pub const ALL: [Rating; 4] =
        [Rating::SignificantlyBetter, Rating::Better, Rating::SlightlyBetter, Rating::NegligiblyBetter];

    /// The `rating` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::SignificantlyBetter => "significantly_better",
            Rating::Better => "better",
            Rating::SlightlyBetter => "slightly_better",
            Rating::NegligiblyBetter => "negligibly_better",
        }
    }

    pub fn parse(s: &str) -> Option<Rating> {
        Rating::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// 3, 2, 1, 0: the paper's large margin (Table 27); the small margin is this over 3.
    pub fn margin_level(self) -> i32 {
        match self {
            Rating::SignificantlyBetter => 3,
            Rating::Better => 2,
            Rating::SlightlyBetter => 1,
            Rating::NegligiblyBetter => 0,
        }
    }

    fn index(self) -> usize {
        3 - self.margin_level() as usize
    }
}

/// Which reward model's data a pair feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Track {
    Helpfulness,
    Safety,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Helpfulness => "helpfulness",
            Track::Safety => "safety",
        }
    }

    /// Safety for `is_safety` and borderline prompts, helpfulness otherwise.
    pub fn for_prompt(row: &JudgeInput) -> Track {
        if row.is_safety || row.spec.family() == Family::Borderline { Track::Safety } else { Track::Helpfulness }
    }
}

/// The paper's safety bins, plus the fourth case the safety track drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SafetyBin {
    ChosenSafeOtherUnsafe,
    BothSafe,
    BothUnsafe,
    ChosenUnsafeOtherSafe,
}

impl SafetyBin {
    pub fn new(chosen_unsafe: bool, rejected_unsafe: bool) -> Self {
        match (chosen_unsafe, rejected_unsafe) {
            (false, true) => SafetyBin::ChosenSafeOtherUnsafe,
            (false, false) => SafetyBin::BothSafe,
            (true, true) => SafetyBin::BothUnsafe,
            (true, false) => SafetyBin::ChosenUnsafeOtherSafe,
        }
    }

    /// The `safety_bin` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyBin::ChosenSafeOtherUnsafe => "chosen_safe_other_unsafe",
            SafetyBin::BothSafe => "both_safe",
            SafetyBin::BothUnsafe => "both_unsafe",
            SafetyBin::ChosenUnsafeOtherSafe => "chosen_unsafe_other_safe",
        }
    }
}

/// How the simulated annotator behaves. No `Default`: `standard(seed)` is the documented one.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnotatorConfig {
    pub seed: u64,
    /// Gold-score gaps at or above which a pair is rated significantly better, better,
    /// slightly better (below the last: negligibly better). Decreasing.
    pub gap_thresholds: [f32; 3],
    /// Probability of flipping the choice, by rating from significantly to negligibly better.
    pub flip_prob: [f64; 4],
}

impl AnnotatorConfig {
    /// Gaps 0.5 / 0.25 / 0.1 and flips 3 / 8 / 15 / 30 % (the world doc's prototype; about
    /// 10% overall on typical pairs).
    pub fn standard(seed: u64) -> Self {
        AnnotatorConfig { seed, gap_thresholds: [0.5, 0.25, 0.1], flip_prob: [0.03, 0.08, 0.15, 0.30] }
    }

    pub fn validate(&self) -> Result<()> {
        let [a, b, c] = self.gap_thresholds;
        if !(a > b && b > c && c > 0.0 && a <= 1.0) {
            return Err(DataError::Config {
                setting: "gap_thresholds".into(),
                msg: format!("{:?} must be decreasing within (0, 1]", self.gap_thresholds),
            });
        }
        if let Some(p) = self.flip_prob.iter().find(|p| !(0.0..=0.5).contains(*p)) {
            return Err(DataError::Config { setting: "flip_prob".into(), msg: format!("{p} is outside [0, 0.5]") });
        }
        Ok(())
    }

    /// The rating for a gold-score gap (absolute difference).
    pub fn rating_for_gap(&self, gap: f32) -> Rating {
        let [a, b, c] = self.gap_thresholds;
        if gap >= a {
            Rating::SignificantlyBetter
        } else if gap >= b {
            Rating::Better
        } else if gap >= c {
            Rating::SlightlyBetter
        } else {
            Rating::NegligiblyBetter
        }
    }
}

/// Which of the two responses was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    A,
    B,
}

/// One annotated pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    pub choice: Choice,
    pub rating: Rating,
    pub track: Track,
    pub safety_bin: SafetyBin,
    /// Gold helpfulness of the chosen and the rejected response.
    pub chosen_score: f32,
    pub rejected_score: f32,
    pub chosen_unsafe: bool,
    pub rejected_unsafe: bool,
    /// True when label noise flipped the gold preference.
    pub flipped: bool,
}

impl Annotation {
    /// False for a safety-track pair whose chosen response is unsafe and rejected one safe.
    pub fn kept(&self) -> bool {
        !(self.track == Track::Safety && self.safety_bin == SafetyBin::ChosenUnsafeOtherSafe)
    }
}

/// Annotates the pair `(a, b)` for `row`. Deterministic from `(cfg.seed, pair_id)` and the inputs.
pub fn annotate(cfg: &AnnotatorConfig, pair_id: &str, row: &JudgeInput, a: &str, b: &str) -> Annotation {
    let mut rng = Rng::for_key(cfg.seed, &format!("annotate/{pair_id}"), 0);
    let (score_a, score_b) = (helpfulness(row, a), helpfulness(row, b));
    let gap = (score_a - score_b).abs();
    let rating = cfg.rating_for_gap(gap);
    // Ties go to a fair coin; otherwise gold prefers the higher score.
    let gold = if score_a > score_b {
        Choice::A
    } else if score_b > score_a {
        Choice::B
    } else if rng.chance(0.5) {
        Choice::A
    } else {
        Choice::B
    };
    let flipped = gap > 0.0 && rng.chance(cfg.flip_prob[rating.index()]);
    let choice = match (gold, flipped) {
        (c, false) => c,
        (Choice::A, true) => Choice::B,
        (Choice::B, true) => Choice::A,
    };
    let (unsafe_a, unsafe_b) = (is_unsafe(row, a), is_unsafe(row, b));
    let (chosen_score, rejected_score, chosen_unsafe, rejected_unsafe) = match choice {
        Choice::A => (score_a, score_b, unsafe_a, unsafe_b),
        Choice::B => (score_b, score_a, unsafe_b, unsafe_a),
    };
    Annotation {
        choice,
        rating,
        track: Track::for_prompt(row),
        safety_bin: SafetyBin::new(chosen_unsafe, rejected_unsafe),
        chosen_score,
        rejected_score,
        chosen_unsafe,
        rejected_unsafe,
        flipped,
    }
}

/// Whether a pair goes to the held-out test split: a seeded blake3 draw with probability
/// `test_share`, stable per pair id.
pub fn is_test_pair(seed: u64, pair_id: &str, test_share: f64) -> bool {
    Rng::for_key(seed, &format!("holdout/{pair_id}"), 0).chance(test_share)
}

/// What a preference-pairs row needs besides the annotation.
pub struct PairContext<'a> {
    pub pair_id: &'a str,
    pub prompt_id: &'a str,
    pub prompt: &'a str,
    pub annotator: &'a str,
    /// `train` or `test`.
    pub split: &'a str,
}

/// The preference-pairs row for an annotated pair of responses `a` and `b`.
pub fn pair_row(ctx: &PairContext<'_>, a: &str, b: &str, ann: &Annotation) -> PreferencePairRow {
    let (chosen, rejected) = match ann.choice {
        Choice::A => (a, b),
        Choice::B => (b, a),
    };
    PreferencePairRow {
        id: ctx.pair_id.to_string(),
        prompt_id: ctx.prompt_id.to_string(),
        prompt: ctx.prompt.to_string(),
        chosen: chosen.to_string(),
        rejected: rejected.to_string(),
        rating: ann.rating.as_str().to_string(),
        margin_level: ann.rating.margin_level(),
        track: ann.track.as_str().to_string(),
        safety_bin: ann.safety_bin.as_str().to_string(),
        chosen_score: ann.chosen_score,
        rejected_score: ann.rejected_score,
        annotator: ctx.annotator.to_string(),
        split: ctx.split.to_string(),
    }
}
