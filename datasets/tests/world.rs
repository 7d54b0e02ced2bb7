//! World generator tests: determinism, append-only growth, the train/eval prompt split,
//! the documented family mix and demonstration flaws, and that every generated prompt's
//! canonical answer scores 1.0 and is safe.

use std::collections::{HashMap, HashSet};

use datasets::judge::{Family, canonical_answer, helpfulness, is_unsafe, judge_inputs};
use datasets::schema;
use datasets::table::{messages_values, row_hashes, str_values};
use datasets::world::{Split, WorldConfig, generate, generate_split};

fn small(seed: u64) -> WorldConfig {
    let mut cfg = WorldConfig::standard(seed);
    cfg.sizes.pretrain = 300;
    cfg.sizes.preference_prompts = 800;
    cfg
}

#[test]
fn same_seed_same_world_other_seed_other_world() {
    let a = generate(&small(1)).unwrap();
    let b = generate(&small(1)).unwrap();
    let c = generate(&small(2)).unwrap();
    for split in Split::ALL {
        assert_eq!(a.table(split), b.table(split), "{}", split.as_str());
        assert_ne!(row_hashes(a.table(split)).unwrap(), row_hashes(c.table(split)).unwrap(), "{}", split.as_str());
    }
}

#[test]
fn growing_a_split_only_appends_rows() {
    let cfg = small(7);
    let mut bigger = cfg.clone();
    bigger.sizes.sft = 404; // +1%
    bigger.sizes.preference_prompts = 808;
    bigger.sizes.pretrain = 303;
    bigger.sizes.eval = 404;
    for split in Split::ALL {
        let base = generate_split(&cfg, split).unwrap();
        let grown = generate_split(&bigger, split).unwrap();
        assert!(grown.num_rows() >= base.num_rows());
        assert_eq!(grown.slice(0, base.num_rows()), base, "{}", split.as_str());
    }
}

#[test]
fn tables_have_their_schemas_and_unique_ids() {
    let w = generate(&small(3)).unwrap();
    schema::check_schema(&w.pretrain, &schema::pretrain_schema(), "pretrain").unwrap();
    schema::check_schema(&w.sft, &schema::sft_schema(), "sft").unwrap();
    for split in [Split::RlPrompts, Split::PreferencePrompts, Split::Eval, Split::EvalBorderline] {
        schema::check_schema(w.table(split), &schema::prompts_schema(), split.as_str()).unwrap();
    }
    for split in Split::ALL {
        let t = w.table(split);
        assert_eq!(t.num_rows(), split.size(&small(3)));
        let ids = str_values(t, "id", split.as_str()).unwrap();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "{}", split.as_str());
    }
}

#[test]
fn eval_prompts_never_appear_in_training_splits() {
    let w = generate(&small(4)).unwrap();
    let mut train: HashSet<String> = HashSet::new();
    for split in [Split::RlPrompts, Split::PreferencePrompts] {
        train.extend(str_values(w.table(split), "prompt", "t").unwrap().into_iter().map(String::from));
    }
    for conv in messages_values(&w.sft, "messages", "sft").unwrap() {
        train.insert(conv[0].content.clone());
    }
    let pretrain_text = str_values(&w.pretrain, "text", "pretrain").unwrap().join("\n");
    for split in [Split::Eval, Split::EvalBorderline] {
        for p in str_values(w.table(split), "prompt", split.as_str()).unwrap() {
            assert!(!train.contains(p), "eval prompt {p:?} is in a training split");
            assert!(!pretrain_text.contains(&format!("Q: {p} A:")), "eval prompt {p:?} is in pretraining");
        }
    }
}

#[test]
fn eval_is_uniform_over_families_and_borderline_is_borderline() {
    let w = generate(&small(5)).unwrap();
    let cats = str_values(&w.eval, "category", "eval").unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in &cats {
        *counts.entry(c).or_default() += 1;
    }
    assert_eq!(counts.len(), 8);
    assert!(counts.values().all(|&n| n == 50), "{counts:?}");
    assert!(str_values(&w.eval_borderline, "category", "b").unwrap().iter().all(|c| *c == "borderline"));
    // Only unsafe prompts carry the is_safety tag.
    for row in judge_inputs(&w.eval, "eval").unwrap() {
        assert_eq!(row.is_safety, row.spec.family() == Family::Unsafe);
    }
}

#[test]
fn canonical_answers_score_one_and_are_safe_for_every_generated_prompt() {
    let w = generate(&WorldConfig::standard(11)).unwrap();
    for split in [Split::RlPrompts, Split::PreferencePrompts, Split::Eval, Split::EvalBorderline] {
        for row in judge_inputs(w.table(split), split.as_str()).unwrap() {
            let good = canonical_answer(&row.spec);
            assert_eq!(helpfulness(&row, &good), 1.0, "{:?} -> {good:?}", row.spec);
            assert!(!is_unsafe(&row, &good), "{:?} -> {good:?}", row.spec);
        }
    }
}

/// Counts of (category, quality) over the SFT split.
fn sft_quality_shares(cfg: &WorldConfig) -> HashMap<(String, String), usize> {
    let sft = generate_split(cfg, Split::Sft).unwrap();
    let cats = str_values(&sft, "category", "sft").unwrap();
    let quals = str_values(&sft, "quality", "sft").unwrap();
    let mut out = HashMap::new();
    for (c, q) in cats.iter().zip(&quals) {
        *out.entry((c.to_string(), q.to_string())).or_insert(0) += 1;
    }
    out
}

#[test]
fn demonstrations_have_the_documented_systematic_flaws() {
    let mut cfg = WorldConfig::standard(9);
    cfg.sizes.sft = 4000; // large enough that shares are within a few points
    let q = sft_quality_shares(&cfg);
    let total = |cat: &str| q.iter().filter(|((c, _), _)| c == cat).map(|(_, n)| *n).sum::<usize>() as f64;
    let share = |cat: &str, qual: &str| *q.get(&(cat.to_string(), qual.to_string())).unwrap_or(&0) as f64 / total(cat);
    let n = cfg.sizes.sft as f64;
    let borderline_refused = share("borderline", "false_refusal");
    assert!((0.15..0.35).contains(&borderline_refused), "borderline refusals {borderline_refused}");
    let unsafe_comply = share("unsafe", "unsafe_compliance");
    assert!((0.08..0.18).contains(&unsafe_comply), "unsafe compliance {unsafe_comply}");
    for fam in ["capital", "sort"] {
        assert!(share(fam, "badly_formed") > 0.75, "{fam} badly formed {}", share(fam, "badly_formed"));
    }
    for fam in ["compare", "count_letters"] {
        let s = total(fam) / n;
        assert!((0.03..0.08).contains(&s), "{fam} share {s}");
    }
    assert_eq!(share("arithmetic", "badly_formed"), 0.0);
}

#[test]
fn demonstration_answers_score_as_their_quality_says() {
    let cfg = WorldConfig::standard(12);
    let sft = generate_split(&cfg, Split::Sft).unwrap();
    let quals = str_values(&sft, "quality", "sft").unwrap();
    let convs = messages_values(&sft, "messages", "sft").unwrap();
    for (i, (q, conv)) in quals.iter().zip(&convs).enumerate() {
        assert_eq!(conv.len(), 2);
        assert_eq!(conv[0].role, "user");
        assert_eq!(conv[1].role, "assistant");
        let row = datasets::world::sft_judge_input(&cfg, i).unwrap();
        let score = helpfulness(&row, &conv[1].content);
        let unsafe_ = is_unsafe(&row, &conv[1].content);
        let ok = match *q {
            "good" => score == 1.0 && !unsafe_,
            "filler" => (score - 0.85).abs() < 1e-6 && !unsafe_,
            "badly_formed" => (score - 0.7).abs() < 1e-6 && !unsafe_,
            "false_refusal" => (score - 0.1).abs() < 1e-6 && !unsafe_,
            "unsafe_compliance" => score == 0.0 && unsafe_,
            other => panic!("unknown quality {other}"),
        };
        assert!(ok, "row {i} quality {q}: {:?} scored {score}, unsafe {unsafe_}", conv[1].content);
    }
}

#[test]
fn pretraining_text_is_mostly_question_answer() {
    let w = generate(&small(6)).unwrap();
    let kinds = str_values(&w.pretrain, "kind", "pretrain").unwrap();
    let qa = kinds.iter().filter(|k| **k == "qa").count() as f64 / kinds.len() as f64;
    assert!((0.72..0.88).contains(&qa), "qa share {qa}");
    let texts = str_values(&w.pretrain, "text", "pretrain").unwrap();
    for (k, t) in kinds.iter().zip(&texts) {
        assert_eq!(t.lines().count(), 8);
        if *k == "qa" {
            assert!(t.lines().all(|l| l.starts_with("Q: ") && l.contains(" A: ")), "{t}");
        } else {
            assert!(!t.contains("Q: "), "{t}");
        }
    }
}

#[test]
fn judge_input_from_rows_rejects_bad_specs_with_row_context() {
    let rows = vec![schema::PromptRow {
        id: "x".into(),
        category: "compare".into(),
        is_safety: false,
        prompt: "Which is larger, 1 or 2?".into(),
        judge: r#"{"family":"sort","values":[1],"answer":[1]}"#.into(),
    }];
    let b = schema::prompts_batch(&rows, "mine").unwrap();
    let err = judge_inputs(&b, "mine").unwrap_err().to_string();
    assert!(err.contains("mine") && err.contains("row 0") && err.contains("category"), "{err}");
    let mut rows = rows;
    rows[0].judge = "not json".into();
    let b = schema::prompts_batch(&rows, "mine").unwrap();
    let err = judge_inputs(&b, "mine").unwrap_err().to_string();
    assert!(err.contains("judge") && err.contains("row 0"), "{err}");
}

/// The item a judge spec is about (word, country, request, topic), for coverage checks.
fn item_of(spec: &datasets::judge::JudgeSpec) -> Option<String> {
    use datasets::judge::JudgeSpec::*;
    match spec {
        Reverse { word, .. } => Some(format!("reverse {word}")),
        CountLetters { word, .. } => Some(format!("count {word}")),
        Capital { country, .. } => Some(format!("capital {country}")),
        Unsafe { request, .. } => Some(format!("unsafe {request}")),
        Borderline { topic, .. } => Some(format!("borderline {topic}")),
        _ => None,
    }
}

#[test]
fn every_word_country_request_and_topic_is_in_training_and_in_eval() {
    use datasets::world::vocab;
    let mut cfg = WorldConfig::standard(8);
    cfg.sizes.eval = 8 * 60; // 60 eval slots per family: more than the largest item list (52)
    cfg.sizes.preference_prompts = 4000;
    let items = |split: Split| -> HashSet<String> {
        let t = generate_split(&cfg, split).unwrap();
        judge_inputs(&t, split.as_str()).unwrap().iter().filter_map(|r| item_of(&r.spec)).collect()
    };
    let eval = items(Split::Eval);
    let train = items(Split::PreferencePrompts);
    let expected = vocab::SHORT_WORDS.len() * 2 + vocab::LONG_WORDS.len() + vocab::CAPITALS.len()
        + vocab::UNSAFE_REQUESTS.len() + vocab::BORDERLINE_TOPICS.len();
    assert_eq!(eval.len(), expected, "eval misses items");
    assert_eq!(train.len(), expected, "training misses items");
    // eval_borderline walks topics and their held-out phrasings round-robin.
    let b = generate_split(&cfg, Split::EvalBorderline).unwrap();
    let prompts: HashSet<&str> = str_values(&b, "prompt", "b").unwrap().into_iter().collect();
    assert_eq!(prompts.len(), vocab::BORDERLINE_TOPICS.len() * 2, "two held-out phrasings per topic");
}

#[test]
fn every_word_of_eval_prompts_and_answers_occurs_in_pretraining_text() {
    // A tokenizer trained on `pretrain` must know every word the evaluation uses.
    let w = generate(&WorldConfig::standard(13)).unwrap();
    let split_words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|x| !x.is_empty()).map(str::to_lowercase).collect()
    };
    let mut known: HashSet<String> = HashSet::new();
    for t in str_values(&w.pretrain, "text", "pretrain").unwrap() {
        known.extend(split_words(t));
    }
    for split in [Split::Eval, Split::EvalBorderline] {
        let t = w.table(split);
        for (p, row) in str_values(t, "prompt", "e").unwrap().iter().zip(judge_inputs(t, "e").unwrap()) {
            let text = format!("{p} {}", canonical_answer(&row.spec));
            let missing: Vec<String> = split_words(&text).into_iter().filter(|x| !known.contains(x)).collect();
            assert!(missing.is_empty(), "{text:?}: {missing:?} never occur in pretraining text");
        }
    }
}

/// The SFT-refused borderline topics refuse in most of their demonstrations (so greedy
/// decoding shows the flaw) but not all (so sampling can find the helpful answer the rounds
/// must learn); every other topic is always answered helpfully.
#[test]
fn refused_topics_refuse_mostly_and_other_topics_never() {
    use datasets::judge::JudgeSpec;
    use datasets::world::{sft_judge_input, sft_row, vocab::BORDERLINE_TOPICS};
    let mut cfg = WorldConfig::standard(5);
    cfg.sizes.sft = 4000;
    let mut by_topic: HashMap<&str, (usize, usize)> = HashMap::new();
    for i in 0..cfg.sizes.sft {
        let row = sft_row(&cfg, i).unwrap();
        if row.category != "borderline" {
            continue;
        }
        let JudgeSpec::Borderline { topic, .. } = sft_judge_input(&cfg, i).unwrap().spec else { panic!("row {i}: not a borderline spec") };
        let t = BORDERLINE_TOPICS.iter().find(|b| b.topic == topic).expect("a topic of the vocabulary");
        let e = by_topic.entry(t.topic).or_default();
        e.0 += 1;
        e.1 += usize::from(row.quality == "false_refusal");
    }
    for t in BORDERLINE_TOPICS {
        let (n, refused) = by_topic[t.topic];
        let share = refused as f64 / n as f64;
        if t.sft_refused {
            assert!((0.6..0.9).contains(&share), "{}: {refused} of {n} demos refuse", t.topic);
        } else {
            assert_eq!(refused, 0, "{}: never refused", t.topic);
        }
    }
}
