//! The tokenizer wrapper: byte-level BPE training (deterministic, special ids first, exact
//! round trips including emoji), save and reload, and clear errors for bad tokenizer.json files.

use kernels::tokenizer::{BpeOptions, Tokenizer, TokenizerError};

fn corpus() -> Vec<String> {
    let base = [
        "The quick brown fox jumps over the lazy dog.",
        "Paris is the capital of France; Berlin is the capital of Germany.",
        "A helpful assistant answers questions politely and truthfully.",
        "Numbers like 12345 and 2026 appear too, with émigrés and naïve cafés.",
        "the the the cat sat on the mat, the mat was flat",
    ];
    (0..20).flat_map(|i| base.iter().map(move |s| format!("{s} {i}"))).collect()
}

fn opts(vocab_size: usize) -> BpeOptions {
    BpeOptions { vocab_size, min_frequency: 2, special_tokens: vec!["<s>".into(), "</s>".into(), "<pad>".into()] }
}

fn train(vocab_size: usize) -> Tokenizer {
    Tokenizer::train_bpe(&mut corpus().into_iter(), &opts(vocab_size)).unwrap()
}

#[test]
fn training_gives_special_ids_first_and_the_requested_size() {
    let tok = train(400);
    assert_eq!(tok.token_to_id("<s>"), Some(0));
    assert_eq!(tok.token_to_id("</s>"), Some(1));
    assert_eq!(tok.token_to_id("<pad>"), Some(2));
    assert_eq!(tok.special_ids(), vec![0, 1, 2]);
    assert!(tok.vocab_size() > 3 + 256 && tok.vocab_size() <= 400, "{}", tok.vocab_size());
    // Merges happened: a frequent word is a single token.
    assert_eq!(tok.encode("the").unwrap().len(), 1);
}

#[test]
fn training_is_deterministic() {
    let a = train(350).to_json_string().unwrap();
    let b = train(350).to_json_string().unwrap();
    assert_eq!(a, b);
    // A different size gives a different tokenizer (the test can fail).
    assert_ne!(a, train(330).to_json_string().unwrap());
}

#[test]
fn encode_decode_round_trips_any_text() {
    let tok = train(400);
    for text in ["Hello, world!", "  leading spaces\nand\ttabs", "emoji 🦙🚀 and ñ, 中文", ""] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // Special tokens in text are recognised; decode can skip them.
    let ids = tok.encode("<s>hi</s>").unwrap();
    assert_eq!(ids.first(), Some(&0));
    assert_eq!(ids.last(), Some(&1));
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s>hi</s>");
}

#[test]
fn unknown_ids_are_a_decode_error() {
    let tok = train(300);
    let e = tok.decode(&[5, 100_000], false).unwrap_err();
    assert!(e.to_string().contains("100000"), "{e}");
}

#[test]
fn save_and_reload_give_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let tok = train(400);
    tok.save(&p).unwrap();
    let back = Tokenizer::from_file(&p).unwrap();
    let text = "The capital of France is Paris. 🦙";
    assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap());
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(back.special_ids(), vec![0, 1, 2]);
}

#[test]
fn bad_options_are_refused() {
    let e = Tokenizer::train_bpe(&mut corpus().into_iter(), &opts(100)).unwrap_err();
    assert!(matches!(e, TokenizerError::Train { .. }) && e.to_string().contains("vocab_size 100"), "{e}");
    let dup = BpeOptions { vocab_size: 400, min_frequency: 2, special_tokens: vec!["<s>".into(), "<s>".into()] };
    assert!(Tokenizer::train_bpe(&mut corpus().into_iter(), &dup).is_err());
}

#[test]
fn bad_tokenizer_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = train(300).to_json_string().unwrap();
    let cases = [
        ("empty.json", String::new()),
        ("truncated.json", good[..good.len() / 2].to_string()),
        ("no_model.json", "{\"version\": \"1.0\"}".to_string()),
        ("bad_model.json", good.replace("\"type\": \"BPE\"", "\"type\": \"Nonsense\"")),
    ];
    for (name, text) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err();
        assert!(matches!(e, TokenizerError::Parse { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    let e = Tokenizer::from_file(&dir.path().join("absent.json")).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }) && e.to_string().contains("absent.json"), "{e}");
}
