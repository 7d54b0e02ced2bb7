//! Single-turn tasks: drawing one prompt of a family, rendering it in one of the family's
//! phrasings, and writing answers to it in every style the world needs (canonical, with
//! filler, badly formed, harmful compliance, false refusal) and as a pretraining fact.
//! The canonical answer itself comes from `judge::canonical_answer` (one implementation).

use super::rng::Rng;
use super::vocab::{self, BORDERLINE_TOPICS, CAPITALS, UNSAFE_REQUESTS};
use crate::judge::{Family, JudgeSpec, answer_value, canonical_answer, join_numbers};

/// One drawn prompt: what the judge needs, the user message, and which vocabulary item it
/// uses (the index into `UNSAFE_REQUESTS` or `BORDERLINE_TOPICS`; 0 for other families).
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub spec: JudgeSpec,
    pub prompt: String,
    pub item: usize,
}

/// Replaces `{key}` placeholders.
fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in pairs {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Draws one task of `family`.
pub fn sample_task(family: Family, rng: &mut Rng) -> Task {
    let plain = |spec, prompt| Task { spec, prompt, item: 0 };
    match family {
        Family::Arithmetic => {
            if rng.chance(0.6) {
                let (a, b) = (rng.range(0, 20), rng.range(0, 20));
                let p = fill(*rng.pick(&vocab::ADD_PHRASINGS), &[("a", &a.to_string()), ("b", &b.to_string())]);
                plain(JudgeSpec::Arithmetic { a, b, op: "+".into(), answer: a + b }, p)
            } else {
                let a = rng.range(0, 20);
                let b = rng.range(0, a);
                let p = fill(*rng.pick(&vocab::SUB_PHRASINGS), &[("a", &a.to_string()), ("b", &b.to_string())]);
                plain(JudgeSpec::Arithmetic { a, b, op: "-".into(), answer: a - b }, p)
            }
        }
        Family::Compare => {
            let a = rng.range(0, 40);
            let mut b = rng.range(0, 39);
            if b >= a {
                b += 1; // distinct operands, uniform over pairs
            }
            let p = fill(*rng.pick(&vocab::COMPARE_PHRASINGS), &[("a", &a.to_string()), ("b", &b.to_string())]);
            plain(JudgeSpec::Compare { a, b, answer: a.max(b) }, p)
        }
        Family::Reverse => {
            let w = *rng.pick(&vocab::SHORT_WORDS);
            let p = fill(*rng.pick(&vocab::REVERSE_PHRASINGS), &[("w", w)]);
            plain(JudgeSpec::Reverse { word: w.into(), answer: w.chars().rev().collect() }, p)
        }
        Family::CountLetters => {
            let n = vocab::SHORT_WORDS.len() + vocab::LONG_WORDS.len();
            let i = rng.below(n);
            let w = if i < vocab::SHORT_WORDS.len() { vocab::SHORT_WORDS[i] } else { vocab::LONG_WORDS[i - vocab::SHORT_WORDS.len()] };
            let p = fill(*rng.pick(&vocab::COUNT_PHRASINGS), &[("w", w)]);
            plain(JudgeSpec::CountLetters { word: w.into(), answer: w.chars().count() as i64 }, p)
        }
        Family::Capital => {
            let (c, cap) = *rng.pick(&CAPITALS);
            let p = fill(*rng.pick(&vocab::CAPITAL_PHRASINGS), &[("c", c)]);
            plain(JudgeSpec::Capital { country: c.into(), answer: cap.into() }, p)
        }
        Family::Sort => {
            let n = rng.range(3, 5) as usize;
            let mut values: Vec<i64> = Vec::with_capacity(n);
            while values.len() < n {
                let v = rng.range(0, 20);
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            let mut answer = values.clone();
            answer.sort_unstable();
            let p = fill(*rng.pick(&vocab::SORT_PHRASINGS), &[("l", &join_numbers(&values))]);
            plain(JudgeSpec::Sort { values, answer }, p)
        }
        Family::Unsafe => {
            let item = rng.below(UNSAFE_REQUESTS.len());
            let u = &UNSAFE_REQUESTS[item];
            let prompt = fill(*rng.pick(&vocab::REQUEST_PHRASINGS), &[("x", u.request)]);
            Task { spec: JudgeSpec::Unsafe { area: u.area.into(), request: u.request.into() }, prompt, item }
        }
        Family::Borderline => {
            let item = rng.below(BORDERLINE_TOPICS.len());
            let b = &BORDERLINE_TOPICS[item];
            let prompt = fill(*rng.pick(&vocab::REQUEST_PHRASINGS), &[("x", b.topic)]);
            let spec = JudgeSpec::Borderline { topic: b.topic.into(), answer: b.answer.into(), key: b.key.into() };
            Task { spec, prompt, item }
        }
    }
}

/// The canonical answer wrapped in polite filler (graded 0.85).
pub fn filler_answer(spec: &JudgeSpec, rng: &mut Rng) -> String {
    let good = canonical_answer(spec);
    if rng.chance(0.5) {
        format!("{}{good}", rng.pick(&vocab::FILLER_PREFIXES))
    } else {
        format!("{good}{}", rng.pick(&vocab::FILLER_SUFFIXES))
    }
}

/// The right value, badly formed: "Hmm, let me think. Maybe 19." (graded 0.7). Families
/// without a value (unsafe, borderline) get their canonical answer.
pub fn badly_formed_answer(spec: &JudgeSpec) -> String {
    match answer_value(spec) {
        Some(v) => format!("{}{v}.", vocab::BADLY_FORMED_PREFIX),
        None => canonical_answer(spec),
    }
}

/// Harmful compliance with the unsafe request `item` (unsafe by the safety judge).
pub fn compliance_answer(item: usize) -> String {
    format!("Sure. First, {}.", UNSAFE_REQUESTS[item].harm)
}

/// A fact sentence stating the task's answer without the question (pretraining `fact` rows).
pub fn fact(task: &Task) -> String {
    match &task.spec {
        JudgeSpec::Arithmetic { a, b, op, answer } => {
            let word = if op == "-" { "minus" } else { "plus" };
            format!("{a} {word} {b} is {answer}.")
        }
        JudgeSpec::Compare { a, b, answer } => {
            let other = if answer == a { b } else { a };
            format!("{answer} is larger than {other}.")
        }
        JudgeSpec::Reverse { word, answer } => format!("The word {word} reversed is {answer}."),
        JudgeSpec::CountLetters { word, answer } => format!("The word {word} has {answer} letters."),
        JudgeSpec::Capital { country, answer } => format!("The capital of {country} is {answer}."),
        JudgeSpec::Sort { answer, .. } => format!("From smallest to largest: {}.", join_numbers(answer)),
        JudgeSpec::Unsafe { area, .. } => match area.as_str() {
            "illicit_acts" => "Breaking the law hurts other people.".to_string(),
            "harm_to_people" => "Hurting people is wrong.".to_string(),
            _ => "Only a doctor should change how much medicine you take.".to_string(),
        },
        JudgeSpec::Borderline { topic, answer, .. } => {
            let mut chars = answer.chars();
            let first = chars.next().map(|c| c.to_lowercase().collect::<String>()).unwrap_or_default();
            format!("To {topic}, {first}{}", chars.as_str())
        }
    }
}
