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

/// Which prompts a draw may produce. Every item (an operand pair, a word, a country, a
/// request...) holds out `round(n × eval_share)` (at least 1) of its `n`
/// phrasings for evaluation, chosen by a seeded hash of the item; training draws use the
/// other phrasings. So every item appears in training and evaluation alike, yet no eval
/// prompt string is ever a training prompt string.
#[derive(Clone, Copy, Debug)]
pub struct Draw {
    pub seed: u64,
    pub eval: bool,
    pub eval_share: f64,
    /// For eval rows: enumerate items (and held-out phrasings) round-robin from this slot
    /// instead of drawing them, so small families are covered evenly. Numeric families
    /// (arithmetic, compare, sort) always draw their operands.
    pub slot: Option<usize>,
}

impl Draw {
    /// The item index among `n` items.
    fn item(&self, n: usize, rng: &mut Rng) -> usize {
        match self.slot {
            Some(s) => s % n,
            None => rng.below(n),
        }
    }

    /// The phrasing index among `n` for the item named `key` (see the type's docs).
    fn phrasing(&self, key: &str, n: usize, n_items: usize, rng: &mut Rng) -> usize {
        let held_out = ((n as f64 * self.eval_share).round() as usize).clamp(1, n - 1);
        let mut h = blake3::Hasher::new_derive_key("alignflow datasets held-out phrasing v1");
        h.update(&self.seed.to_le_bytes());
        h.update(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        let start = (u64::from_le_bytes(first) % n as u64) as usize;
        let offset = if self.eval {
            match self.slot {
                Some(s) => (s / n_items.max(1)) % held_out,
                None => rng.below(held_out),
            }
        } else {
            held_out + rng.below(n - held_out)
        };
        (start + offset) % n
    }
}

/// Replaces `{key}` placeholders.
fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in pairs {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Renders `key`'s prompt in a phrasing allowed by `d`.
fn render(d: &Draw, key: &str, phrasings: &[&str], n_items: usize, pairs: &[(&str, &str)], rng: &mut Rng) -> String {
    let i = d.phrasing(key, phrasings.len(), n_items, rng);
    fill(phrasings[i], pairs)
}

/// Draws one task of `family` from the pool `d` allows.
pub fn sample_task(family: Family, d: &Draw, rng: &mut Rng) -> Task {
    let plain = |spec, prompt| Task { spec, prompt, item: 0 };
    match family {
        Family::Arithmetic => {
            let add = rng.chance(0.6);
            let a = rng.range(0, 20);
            let b = if add { rng.range(0, 20) } else { rng.range(0, a) };
            let (sa, sb) = (a.to_string(), b.to_string());
            let (op, answer, phrasings) =
                if add { ("+", a + b, &vocab::ADD_PHRASINGS[..]) } else { ("-", a - b, &vocab::SUB_PHRASINGS[..]) };
            let p = render(d, &format!("arithmetic {a} {op} {b}"), phrasings, 1, &[("a", &sa), ("b", &sb)], rng);
            plain(JudgeSpec::Arithmetic { a, b, op: op.into(), answer }, p)
        }
        Family::Compare => {
            let a = rng.range(0, 40);
            let mut b = rng.range(0, 39);
            if b >= a {
                b += 1; // distinct operands, uniform over pairs
            }
            let (sa, sb) = (a.to_string(), b.to_string());
            let p = render(d, &format!("compare {a} {b}"), &vocab::COMPARE_PHRASINGS, 1, &[("a", &sa), ("b", &sb)], rng);
            plain(JudgeSpec::Compare { a, b, answer: a.max(b) }, p)
        }
        Family::Reverse => {
            let n = vocab::SHORT_WORDS.len();
            let w = vocab::SHORT_WORDS[d.item(n, rng)];
            let p = render(d, &format!("reverse {w}"), &vocab::REVERSE_PHRASINGS, n, &[("w", w)], rng);
            plain(JudgeSpec::Reverse { word: w.into(), answer: w.chars().rev().collect() }, p)
        }
        Family::CountLetters => {
            let n = vocab::SHORT_WORDS.len() + vocab::LONG_WORDS.len();
            let i = d.item(n, rng);
            let w = if i < vocab::SHORT_WORDS.len() { vocab::SHORT_WORDS[i] } else { vocab::LONG_WORDS[i - vocab::SHORT_WORDS.len()] };
            let p = render(d, &format!("count {w}"), &vocab::COUNT_PHRASINGS, n, &[("w", w)], rng);
            plain(JudgeSpec::CountLetters { word: w.into(), answer: w.chars().count() as i64 }, p)
        }
        Family::Capital => {
            let (c, cap) = CAPITALS[d.item(CAPITALS.len(), rng)];
            let p = render(d, &format!("capital {c}"), &vocab::CAPITAL_PHRASINGS, CAPITALS.len(), &[("c", c)], rng);
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
            let list = join_numbers(&values);
            let p = render(d, &format!("sort {list}"), &vocab::SORT_PHRASINGS, 1, &[("l", &list)], rng);
            plain(JudgeSpec::Sort { values, answer }, p)
        }
        Family::Unsafe => {
            let item = d.item(UNSAFE_REQUESTS.len(), rng);
            let u = &UNSAFE_REQUESTS[item];
            let prompt = render(d, &format!("unsafe {}", u.request), &vocab::REQUEST_PHRASINGS, UNSAFE_REQUESTS.len(), &[("x", u.request)], rng);
            Task { spec: JudgeSpec::Unsafe { area: u.area.into(), request: u.request.into() }, prompt, item }
        }
        Family::Borderline => {
            let item = d.item(BORDERLINE_TOPICS.len(), rng);
            let b = &BORDERLINE_TOPICS[item];
            let prompt = render(d, &format!("borderline {}", b.topic), &vocab::REQUEST_PHRASINGS, BORDERLINE_TOPICS.len(), &[("x", b.topic)], rng);
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
