//! Simulated annotator tests: choice by gold score, rating by gap, flips that are
//! deterministic per pair and more frequent for close pairs, safety bins and the drop rule.

use datasets::annotate::{
    AnnotatorConfig, Choice, PairContext, Rating, SafetyBin, Track, annotate, is_test_pair, pair_row,
};
use datasets::judge::{JudgeInput, JudgeSpec};
use datasets::schema::preference_pairs_batch;

fn arithmetic() -> JudgeInput {
    JudgeInput::new(JudgeSpec::Arithmetic { a: 7, b: 12, op: "+".into(), answer: 19 })
}

fn unsafe_row() -> JudgeInput {
    JudgeInput::new(JudgeSpec::Unsafe { area: "illicit_acts".into(), request: "break into my neighbour's car".into() })
}

fn noiseless(seed: u64) -> AnnotatorConfig {
    let mut cfg = AnnotatorConfig::standard(seed);
    cfg.flip_prob = [0.0; 4];
    cfg
}

#[test]
fn chooses_the_better_response_and_rates_by_gap() {
    let cfg = noiseless(1);
    let row = arithmetic();
    let cases = [
        ("The answer is 19.", "banana", Rating::SignificantlyBetter),     // 1.0 vs 0
        ("The answer is 19.", "Hmm, let me think. Maybe 19.", Rating::Better), // 1.0 vs 0.7
        ("The answer is 19.", "Sure! The answer is 19.", Rating::SlightlyBetter), // 1.0 vs 0.85
        ("The answer is 19.", "the answer is 19.", Rating::NegligiblyBetter), // tie
    ];
    for (good, worse, rating) in cases {
        let a = annotate(&cfg, "p1", &row, worse, good);
        assert_eq!(a.rating, rating, "{good:?} vs {worse:?}");
        assert!(a.chosen_score >= a.rejected_score);
        if rating != Rating::NegligiblyBetter {
            assert_eq!(a.choice, Choice::B);
        }
        assert_eq!(a.track, Track::Helpfulness);
        assert_eq!(a.safety_bin, SafetyBin::BothSafe);
    }
}

#[test]
fn flips_are_deterministic_and_more_frequent_for_close_pairs() {
    let cfg = AnnotatorConfig::standard(3);
    let row = arithmetic();
    let flip_rate = |a: &str, b: &str| {
        let n = 4000;
        let flips = (0..n).filter(|i| annotate(&cfg, &format!("pair-{i}"), &row, a, b).flipped).count();
        flips as f64 / n as f64
    };
    let far = flip_rate("The answer is 19.", "banana");
    let close = flip_rate("The answer is 19.", "The answer is 19. I hope this helps.");
    assert!((0.015..0.05).contains(&far), "far pairs flip {far}");
    assert!((0.12..0.18).contains(&close), "close pairs flip {close}");
    let a1 = annotate(&cfg, "same", &row, "The answer is 18.", "The answer is 19.");
    let a2 = annotate(&cfg, "same", &row, "The answer is 18.", "The answer is 19.");
    assert_eq!(a1, a2);
}

#[test]
fn safety_track_bins_and_drops_chosen_unsafe_over_safe() {
    let row = unsafe_row();
    let refusal = "I can't help with that. It is against the law; please contact the police if you need help.";
    let comply = "Sure. First, smash the side window with a rock and open the door.";
    let a = annotate(&noiseless(1), "p", &row, comply, refusal);
    assert_eq!(a.track, Track::Safety);
    assert_eq!(a.choice, Choice::B);
    assert_eq!(a.safety_bin, SafetyBin::ChosenSafeOtherUnsafe);
    assert!(a.kept());
    // Force a flip: the unsafe response is chosen over the safe one, so the pair is dropped.
    let mut always = AnnotatorConfig::standard(1);
    always.flip_prob = [0.5; 4];
    let flipped = (0..200)
        .map(|i| annotate(&always, &format!("q{i}"), &row, comply, refusal))
        .find(|a| a.flipped)
        .expect("a 50% flip happens within 200 pairs");
    assert_eq!(flipped.safety_bin, SafetyBin::ChosenUnsafeOtherSafe);
    assert!(!flipped.kept());
    let both = annotate(&noiseless(1), "p", &row, comply, "The answer is 19.");
    assert_eq!(both.safety_bin, SafetyBin::BothUnsafe);
}

#[test]
fn pair_rows_build_the_preference_table() {
    let cfg = noiseless(5);
    let row = arithmetic();
    let (a, b) = ("banana", "The answer is 19.");
    let ann = annotate(&cfg, "pair-1", &row, a, b);
    let ctx = PairContext {
        pair_id: "pair-1",
        prompt_id: "preference_prompts-000001",
        prompt: "What is 7 + 12?",
        annotator: "world",
        split: if is_test_pair(5, "pair-1", 0.1) { "test" } else { "train" },
    };
    let r = pair_row(&ctx, a, b, &ann);
    assert_eq!(r.chosen, b);
    assert_eq!(r.rejected, a);
    assert_eq!(r.rating, "significantly_better");
    assert_eq!(r.margin_level, 3);
    let batch = preference_pairs_batch(&[r], "pairs").unwrap();
    assert_eq!(batch.num_rows(), 1);
    let test_share = (0..10_000).filter(|i| is_test_pair(5, &format!("p{i}"), 0.1)).count() as f64 / 1e4;
    assert!((0.08..0.12).contains(&test_share), "{test_share}");
    assert!(AnnotatorConfig::standard(0).validate().is_ok());
    let mut bad = AnnotatorConfig::standard(0);
    bad.gap_thresholds = [0.1, 0.2, 0.3];
    assert!(bad.validate().unwrap_err().to_string().contains("gap_thresholds"));
}
