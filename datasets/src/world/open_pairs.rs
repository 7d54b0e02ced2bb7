//! The world's "open-source" preference data: the counterpart of the public preference sets
//! (Anthropic Helpful and Harmless, Stanford SHP, ...) that Llama 2 mixes into its reward
//! models' training data (§3.2.2, "Training Data"). Row `i` is one prompt drawn like a
//! preference prompt (training phrasings only, never an eval prompt) with two responses
//! written by the world, not sampled from any model: the canonical answer, the answer with
//! filler or a stray tail of words, badly formed, the same forms with a wrong value, a
//! refusal, an answer to another prompt, or (unsafe prompts) harmful compliance. The world's
//! simulated annotator (`annotate`, with its label noise) chooses and rates the pair, so
//! the rows are ordinary preference pairs (`split` = `train`, `annotator` = `world/open`).
//!
//! Unlike pairs collected from a policy, these contrast answers that differ only in their
//! content (the right value against a wrong one in the same sentence) and show a helpful
//! answer to every borderline topic, including those the SFT demonstrations refuse.

use arrow_array::RecordBatch;

use super::rng::Rng;
use super::tasks::{Draw, Task, badly_formed_answer, compliance_answer, filler_answer, sample_task};
use super::vocab::{self, BORDERLINE_TOPICS, CAPITALS, SHORT_WORDS};
use super::{WorldConfig, row_id_str, train_draw};
use crate::annotate::{AnnotatorConfig, PairContext, annotate, pair_row};
use crate::error::Result;
use crate::judge::{Family, JudgeInput, JudgeSpec, canonical_answer};
use crate::schema::{PreferencePairRow, preference_pairs_batch};

/// The table (and row-id prefix) name.
pub const OPEN_PREFERENCES: &str = "open_preferences";

/// The annotator name written into the rows.
pub const OPEN_ANNOTATOR: &str = "world/open";

/// A wrong value for a task family, as a judge spec whose canonical sentence states it
/// (None for the families without a value).
fn wrong_spec(spec: &JudgeSpec, rng: &mut Rng) -> Option<JudgeSpec> {
    let off = |v: i64, rng: &mut Rng| {
        let d = rng.range(1, 6);
        if v - d >= 0 && rng.chance(0.5) { v - d } else { v + d }
    };
    Some(match spec {
        JudgeSpec::Arithmetic { a, b, op, answer } => JudgeSpec::Arithmetic { a: *a, b: *b, op: op.clone(), answer: off(*answer, rng) },
        JudgeSpec::Compare { a, b, answer } => {
            // The smaller operand (the usual mistake) or a number from the prompt's range.
            let wrong = if rng.chance(0.7) { (*a).min(*b) } else { off(*answer, rng) };
            JudgeSpec::Compare { a: *a, b: *b, answer: wrong }
        }
        JudgeSpec::Reverse { word, answer } => {
            // The word itself, another word reversed, or the reversal with two letters swapped.
            let chars: Vec<char> = answer.chars().collect();
            let wrong = match rng.below(3) {
                0 => word.clone(),
                1 if chars.len() >= 2 => {
                    let i = rng.below(chars.len() - 1);
                    let mut c = chars.clone();
                    c.swap(i, i + 1);
                    c.into_iter().collect()
                }
                _ => other_word(word, rng).chars().rev().collect(),
            };
            if wrong == *answer {
                return wrong_spec(spec, rng);
            }
            JudgeSpec::Reverse { word: word.clone(), answer: wrong }
        }
        JudgeSpec::CountLetters { word, answer } => {
            let d = rng.range(1, 3);
            let wrong = if *answer - d > 0 && rng.chance(0.5) { *answer - d } else { *answer + d };
            JudgeSpec::CountLetters { word: word.clone(), answer: wrong }
        }
        JudgeSpec::Capital { country, answer } => {
            let others: Vec<&str> = CAPITALS.iter().map(|(_, c)| *c).filter(|c| *c != answer).collect();
            JudgeSpec::Capital { country: country.clone(), answer: rng.pick(&others).to_string() }
        }
        JudgeSpec::Sort { values, answer } => {
            // The prompt's order, the reverse order, or two neighbours swapped.
            let mut wrong = match rng.below(3) {
                0 => values.clone(),
                1 => answer.iter().rev().copied().collect(),
                _ => {
                    let mut w = answer.clone();
                    let i = rng.below(w.len() - 1);
                    w.swap(i, i + 1);
                    w
                }
            };
            if wrong == *answer {
                wrong.swap(0, 1);
            }
            JudgeSpec::Sort { values: values.clone(), answer: wrong }
        }
        JudgeSpec::Unsafe { .. } | JudgeSpec::Borderline { .. } => return None,
    })
}

fn other_word<'a>(word: &str, rng: &mut Rng) -> &'a str {
    loop {
        let w = *rng.pick(&SHORT_WORDS);
        if w != word {
            return w;
        }
    }
}

/// `text` followed by a few stray words and numbers, the way a small model's sample can run on.
fn with_tail(text: &str, rng: &mut Rng) -> String {
    let n = rng.range(2, 5);
    let mut s = text.to_string();
    for _ in 0..n {
        s.push(' ');
        if rng.chance(0.3) {
            s.push_str(&rng.range(0, 40).to_string());
        } else {
            let w: &&str = rng.pick(&SHORT_WORDS);
            s.push_str(w);
        }
    }
    s
}

/// An answer written for another prompt of a different family (off topic).
fn off_topic(family: Family, d: &Draw, rng: &mut Rng) -> String {
    let others: Vec<Family> = Family::ALL.iter().copied().filter(|f| *f != family && !f.is_safety()).collect();
    let task = sample_task(*rng.pick(&others), d, rng);
    canonical_answer(&task.spec)
}

/// Every response the world writes for `spec` (distinct strings; at least two).
fn candidates(family: Family, spec: &JudgeSpec, item: usize, d: &Draw, rng: &mut Rng) -> Vec<String> {
    let good = canonical_answer(spec);
    let mut out = vec![good.clone(), filler_answer(spec, rng), with_tail(&good, rng), off_topic(family, d, rng)];
    match spec {
        JudgeSpec::Unsafe { area, .. } => {
            let other_area = vocab::RISK_AREAS.iter().find(|a| **a != area.as_str()).expect("three areas");
            out.push(vocab::refusal_for_area(other_area).to_string());
            out.push(vocab::FALSE_REFUSAL.to_string());
            out.push(compliance_answer(item));
            out.push(compliance_answer(item));
        }
        JudgeSpec::Borderline { .. } => {
            let other = loop {
                let j = rng.below(BORDERLINE_TOPICS.len());
                if j != item {
                    break BORDERLINE_TOPICS[j].answer.to_string();
                }
            };
            out.push(other);
            out.push(vocab::FALSE_REFUSAL.to_string());
            out.push(vocab::FALSE_REFUSAL.to_string());
        }
        _ => {
            out.push(badly_formed_answer(spec));
            out.push(vocab::FALSE_REFUSAL.to_string());
            // Wrong values, most often in the canonical sentence: these pairs differ only in content.
            for _ in 0..2 {
                let w = wrong_spec(spec, rng).expect("task families have a value");
                out.push(canonical_answer(&w));
            }
            let w = wrong_spec(spec, rng).expect("task families have a value");
            out.push(filler_answer(&w, rng));
            let w = wrong_spec(spec, rng).expect("task families have a value");
            out.push(with_tail(&canonical_answer(&w), rng));
        }
    }
    out
}

/// Row `index` of the open preference table (see the module docs). Deterministic from
/// `(cfg.seed, index)`; never a pair whose chosen answer is unsafe and rejected one safe.
pub fn open_preference_row(cfg: &WorldConfig, index: usize) -> Result<PreferencePairRow> {
    let (mut rng, d, family, task) = row_task(cfg, index);
    let cands = candidates(family, &task.spec, task.item, &d, &mut rng);
    let row = JudgeInput::new(task.spec.clone());
    let annotator = AnnotatorConfig::standard(cfg.seed);
    let id = row_id_str(OPEN_PREFERENCES, index);
    for attempt in 0.. {
        let i = rng.below(cands.len());
        let j = rng.below(cands.len());
        if cands[i] == cands[j] {
            continue;
        }
        let pair_id = if attempt == 0 { id.clone() } else { format!("{id}/{attempt}") };
        let ann = annotate(&annotator, &pair_id, &row, &cands[i], &cands[j]);
        if !ann.kept() {
            continue;
        }
        let ctx = PairContext { pair_id: &id, prompt_id: &id, prompt: &task.prompt, annotator: OPEN_ANNOTATOR, split: "train" };
        return Ok(pair_row(&ctx, &cands[i], &cands[j], &ann));
    }
    unreachable!("the loop returns")
}

/// Row `index`'s random stream, draw, family and task (the stream continues into its answers).
fn row_task(cfg: &WorldConfig, index: usize) -> (Rng, Draw, Family, Task) {
    let mut rng = Rng::for_key(cfg.seed, OPEN_PREFERENCES, index as u64);
    let d = train_draw(cfg);
    let family = *rng.pick(&Family::ALL);
    let task = sample_task(family, &d, &mut rng);
    (rng, d, family, task)
}

/// The first `n` rows of the open preference table.
pub fn open_preference_rows(cfg: &WorldConfig, n: usize) -> Result<Vec<PreferencePairRow>> {
    cfg.validate()?;
    (0..n).map(|i| open_preference_row(cfg, i)).collect()
}

/// The open preference table (`cfg.sizes.open_preferences` rows, preference-pair schema).
pub fn generate_open_preferences(cfg: &WorldConfig) -> Result<RecordBatch> {
    preference_pairs_batch(&open_preference_rows(cfg, cfg.sizes.open_preferences)?, OPEN_PREFERENCES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::{helpfulness, is_unsafe};

    #[test]
    fn rows_are_deterministic_append_only_and_annotated_by_gold() {
        let cfg = WorldConfig::standard(7);
        let a = open_preference_rows(&cfg, 400).unwrap();
        let b = open_preference_rows(&cfg, 200).unwrap();
        assert_eq!(&a[..200], &b[..]);
        let mut flipped = 0;
        for r in &a {
            assert_ne!(r.chosen, r.rejected, "{}", r.id);
            assert_eq!(r.split, "train");
            if r.chosen_score < r.rejected_score {
                flipped += 1;
            }
        }
        // The standard annotator flips 3-30% by level: some, not most.
        assert!(flipped > 0 && flipped < 80, "{flipped} flipped of 400");
    }

    #[test]
    fn wrong_values_score_below_right_ones_in_the_same_sentence() {
        let cfg = WorldConfig::standard(3);
        let d = train_draw(&cfg);
        let mut rng = Rng::for_key(3, "test", 0);
        for f in Family::ALL.into_iter().filter(|f| !matches!(f, Family::Unsafe | Family::Borderline)) {
            for _ in 0..50 {
                let task = sample_task(f, &d, &mut rng);
                let w = wrong_spec(&task.spec, &mut rng).unwrap();
                let row = JudgeInput::new(task.spec.clone());
                let (right, wrong) = (helpfulness(&row, &canonical_answer(&task.spec)), helpfulness(&row, &canonical_answer(&w)));
                assert_eq!(right, 1.0, "{}", task.prompt);
                assert!(wrong < 0.9, "{}: {} scored {wrong}", task.prompt, canonical_answer(&w));
            }
        }
    }

    #[test]
    fn every_borderline_topic_gets_a_helpful_answer_and_unsafe_pairs_keep_the_safety_rule() {
        let cfg = WorldConfig::standard(11);
        let rows = open_preference_rows(&cfg, 3000).unwrap();
        for t in BORDERLINE_TOPICS.iter() {
            assert!(rows.iter().any(|r| r.chosen == t.answer), "no helpful answer for {}", t.topic);
        }
        for r in &rows {
            assert!(r.safety_bin != "chosen_unsafe_other_safe", "{}", r.id);
        }
        let row = |r: &PreferencePairRow| {
            let spec = sample_like(&cfg, r);
            JudgeInput::new(spec)
        };
        // Scores recorded in the rows are the gold judge's.
        for r in rows.iter().take(50) {
            let j = row(r);
            assert_eq!(helpfulness(&j, &r.chosen), r.chosen_score, "{}", r.id);
            assert_eq!(helpfulness(&j, &r.rejected), r.rejected_score, "{}", r.id);
            let _ = is_unsafe(&j, &r.chosen);
        }
    }

    /// The task of a row, drawn again from its stream (the row keeps only the prompt).
    fn sample_like(cfg: &WorldConfig, r: &PreferencePairRow) -> JudgeSpec {
        let index: usize = r.id.rsplit('-').next().unwrap().parse().unwrap();
        row_task(cfg, index).3.spec
    }
}
