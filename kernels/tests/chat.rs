//! Chat templates: the built-in Llama 2 format token by token, Jinja templates (ChatML as
//! SmolLM2 ships it, and the Llama 2 Jinja template), template discovery in a model directory,
//! and the assistant mask, which must cover exactly the assistant contents and their EOS.

use kernels::chat::{ChatError, ChatTemplate, Message};
use kernels::tokenizer::{BpeOptions, Tokenizer};

fn tokenizer() -> Tokenizer {
    let texts = [
        "[INST] <<SYS>> You are helpful. <</SYS>> What is the capital of France? [/INST] Paris is.",
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\nHi! How can I help?<|im_end|>",
        "The capital of France is Paris. Thanks, and the capital of Italy is Rome.",
    ];
    let opts = BpeOptions {
        vocab_size: 420,
        min_frequency: 2,
        special_tokens: vec!["<s>".into(), "</s>".into(), "<|im_start|>".into(), "<|im_end|>".into()],
    };
    let mut it = (0..10).flat_map(|_| texts.iter().map(|s| s.to_string()));
    Tokenizer::train_bpe(&mut it, &opts).unwrap()
}

fn chat() -> Vec<Message> {
    vec![
        Message::new("system", "You are helpful."),
        Message::new("user", "  What is the capital of France?  "),
        Message::new("assistant", "Paris."),
        Message::new("user", "And of Italy?"),
        Message::new("assistant", "Rome, of course."),
        Message::new("user", "Thanks"),
    ]
}

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The Llama 2 Jinja template as Meta's HF repos ship it (whitespace-stripped user contents).
const LLAMA2_JINJA: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

#[test]
fn llama2_render_matches_the_paper_format() {
    let text = ChatTemplate::Llama2.render(&chat(), true).unwrap();
    assert_eq!(
        text,
        "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat is the capital of France? [/INST] Paris. </s>\
         <s>[INST] And of Italy? [/INST] Rome, of course. </s><s>[INST] Thanks [/INST]"
    );
}

#[test]
fn llama2_encode_puts_bos_eos_ids_per_segment_and_masks_answers() {
    let tok = tokenizer();
    let ct = ChatTemplate::Llama2.encode(&tok, &chat(), true, Some(0), Some(1)).unwrap();
    assert_eq!(ct.ids.len(), ct.assistant_mask.len());
    assert_eq!(ct.ids.iter().filter(|&&i| i == 0).count(), 3, "one BOS per segment");
    assert_eq!(ct.ids.iter().filter(|&&i| i == 1).count(), 2, "one EOS per answered segment");
    assert_eq!(ct.ids[0], 0);
    // Exact ids: each segment is encoded on its own.
    let enc = |s: &str| tok.encode(s).unwrap();
    let mut want = vec![0];
    want.extend(enc("[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"));
    want.extend(enc(" Paris. "));
    want.push(1);
    want.push(0);
    want.extend(enc("[INST] And of Italy? [/INST]"));
    want.extend(enc(" Rome, of course. "));
    want.push(1);
    want.push(0);
    want.extend(enc("[INST] Thanks [/INST]"));
    assert_eq!(ct.ids, want);
    // The mask selects exactly the answers and their EOS.
    let masked: Vec<u32> = ct.ids.iter().zip(&ct.assistant_mask).filter(|&(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&masked, false).unwrap(), " Paris. </s> Rome, of course. </s>");
    assert!(!ct.assistant_mask[*ct.ids.iter().rposition(|&i| i == 0).as_ref().unwrap()]);
}

#[test]
fn llama2_falls_back_to_the_tokenizers_bos_eos_and_checks_roles() {
    let tok = tokenizer();
    let a = ChatTemplate::Llama2.encode(&tok, &chat(), true, None, None).unwrap();
    let b = ChatTemplate::Llama2.encode(&tok, &chat(), true, Some(0), Some(1)).unwrap();
    assert_eq!(a, b);
    let bad = vec![Message::new("user", "a"), Message::new("user", "b")];
    let e = ChatTemplate::Llama2.encode(&tok, &bad, true, None, None).unwrap_err();
    assert!(matches!(e, ChatError::Conversation(_)) && e.to_string().contains("expected `assistant`"), "{e}");
    let e = ChatTemplate::Llama2.render(&[Message::new("system", "s")], true).unwrap_err();
    assert!(e.to_string().contains("no user"), "{e}");
}

fn jinja(source: &str, bos: &str, eos: &str) -> ChatTemplate {
    ChatTemplate::Jinja { source: source.into(), bos_token: bos.into(), eos_token: eos.into() }
}

#[test]
fn chatml_renders_like_transformers() {
    let t = jinja(CHATML, "", "<|im_end|>");
    let msgs = vec![Message::new("user", "Hi"), Message::new("assistant", "Hello!")];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    assert!(t.render(&msgs[..1], true).unwrap().ends_with("<|im_start|>assistant\n"));
}

/// The assistant mask must be neither all-true nor all-false and cover exactly the assistant
/// contents plus the end marker that closes each of them.
fn check_mask(t: &ChatTemplate, tok: &Tokenizer, want: &str) {
    let msgs: Vec<Message> = chat()[1..5].to_vec();
    let ct = t.encode(tok, &msgs, false, None, None).unwrap();
    assert_eq!(ct.ids.len(), ct.assistant_mask.len());
    assert!(ct.assistant_mask.iter().any(|&m| m) && !ct.assistant_mask.iter().all(|&m| m));
    let masked: Vec<u32> = ct.ids.iter().zip(&ct.assistant_mask).filter(|&(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&masked, false).unwrap(), want);
    // The unmasked tokens and the masked ones together are the whole rendered text.
    assert_eq!(tok.decode(&ct.ids, false).unwrap(), t.render(&msgs, false).unwrap());
}

#[test]
fn chatml_mask_covers_exactly_the_assistant_contents() {
    check_mask(&jinja(CHATML, "", "<|im_end|>"), &tokenizer(), "Paris.<|im_end|>Rome, of course.<|im_end|>");
}

#[test]
fn llama2_jinja_mask_and_text_agree_with_the_builtin_format() {
    let tok = tokenizer();
    let t = jinja(LLAMA2_JINJA, "<s>", "</s>");
    check_mask(&t, &tok, " Paris. </s> Rome, of course. </s>");
    // Same text as the built-in format (system merged into the first user turn, stripped).
    // Meta's template strips only the merged text, so the first user turn is unpadded here.
    let mut msgs = chat();
    msgs[1].content = msgs[1].content.trim().to_string();
    assert_eq!(t.render(&msgs, true).unwrap(), ChatTemplate::Llama2.render(&chat(), true).unwrap());
    // The template alignflow writes into tokenizer_config.json matches the built-in format exactly.
    let ours = jinja(kernels::chat::LLAMA2_JINJA, "<s>", "</s>");
    assert_eq!(ours.render(&chat(), true).unwrap(), ChatTemplate::Llama2.render(&chat(), true).unwrap());
    // raise_exception surfaces as an error, not a panic.
    let bad = vec![Message::new("user", "a"), Message::new("user", "b")];
    let e = t.render(&bad, true).unwrap_err();
    assert!(e.to_string().contains("must alternate"), "{e}");
}

#[test]
fn python_string_methods_work_in_templates() {
    let src = "{{ messages[0].content.strip() }}|{{ messages[0].content.lstrip().upper() }}|{{ 'a,b'.split(',')|length }}|{{ messages[0].content.strip().startswith('x') }}|{{ 'ab'.replace('a','z') }}";
    let out = jinja(src, "", "").render(&[Message::new("user", "  xy  ")], false).unwrap();
    assert_eq!(out, "xy|XY  |2|True|zb");
    let e = jinja("{{ messages[0].content.nosuch() }}", "", "").render(&[Message::new("user", "a")], false).unwrap_err();
    assert!(e.to_string().contains("nosuch"), "{e}");
    let e = jinja("{% for %}", "", "").render(&[], false).unwrap_err();
    assert!(matches!(e, ChatError::Template(_)), "{e}");
}

#[test]
fn templates_are_found_in_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ChatTemplate::from_model_dir(dir.path()).unwrap(), None);
    let cfg = serde_json::json!({ "chat_template": CHATML, "bos_token": "<s>", "eos_token": { "content": "<|im_end|>" } });
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    assert_eq!(ChatTemplate::from_model_dir(dir.path()).unwrap(), Some(jinja(CHATML, "<s>", "<|im_end|>")));
    // chat_template.jinja takes precedence over tokenizer_config.json.
    std::fs::write(dir.path().join("chat_template.jinja"), LLAMA2_JINJA).unwrap();
    assert_eq!(ChatTemplate::from_model_dir(dir.path()).unwrap(), Some(jinja(LLAMA2_JINJA, "<s>", "<|im_end|>")));
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"alignflow_chat_format": "llama2"}"#).unwrap();
    assert_eq!(ChatTemplate::from_model_dir(dir.path()).unwrap(), Some(ChatTemplate::Llama2));
    std::fs::write(dir.path().join("tokenizer_config.json"), "{ broken").unwrap();
    let e = ChatTemplate::from_model_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tokenizer_config.json"), "{e}");
}

#[test]
fn an_assistant_reply_that_repeats_the_user_is_masked_in_its_own_turn() {
    let tok = tokenizer();
    let t = jinja(CHATML, "", "<|im_end|>");
    let msgs = vec![Message::new("user", "Paris."), Message::new("assistant", "Paris.")];
    let ct = t.encode(&tok, &msgs, false, None, None).unwrap();
    let first_masked = ct.assistant_mask.iter().position(|&m| m).unwrap();
    let prefix = tok.decode(&ct.ids[..first_masked], false).unwrap();
    assert!(prefix.ends_with("<|im_start|>assistant\n"), "{prefix:?}");
    let masked: Vec<u32> = ct.ids.iter().zip(&ct.assistant_mask).filter(|&(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&masked, false).unwrap(), "Paris.<|im_end|>");
}
