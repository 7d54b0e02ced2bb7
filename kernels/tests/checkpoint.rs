//! Safetensors checkpoints and config.json: round trips in f32 and bf16, sharded directories,
//! and the errors for missing, truncated, garbled and mislabelled files (each must name the file
//! and must not panic). Config parsing is checked on transformers' own golden config files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kernels::checkpoint::{load_tensors, save_tensors, CheckpointError, HostTensor, SaveDtype, TensorMap};
use kernels::config::{Head, LlamaConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io").join(name)
}

/// A small map with an odd-length tensor, so bf16 offsets are not all 4-aligned.
fn sample() -> TensorMap {
    let mut m = TensorMap::new();
    let a: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.37).collect();
    m.insert("model.embed_tokens.weight".into(), HostTensor { shape: vec![3, 4], data: a });
    m.insert("model.norm.weight".into(), HostTensor { shape: vec![5], data: vec![1.0, -2.0, 3.5, 1e-3, 65504.0] });
    m.insert("lm_head.weight".into(), HostTensor { shape: vec![1, 3], data: vec![0.1, 0.2, 0.3] });
    m
}

#[test]
fn f32_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    save_tensors(&p, &sample(), SaveDtype::F32).unwrap();
    assert_eq!(load_tensors(&p).unwrap(), sample());
    // No temp file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn bf16_round_trip_is_within_bf16_precision_and_carries_format_pt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    save_tensors(&p, &sample(), SaveDtype::Bf16).unwrap();
    let back = load_tensors(&p).unwrap();
    for (name, t) in sample() {
        let b = &back[&name];
        assert_eq!(b.shape, t.shape);
        for (x, y) in t.data.iter().zip(&b.data) {
            // bf16 keeps 8 significant bits: relative error at most 2^-8.
            assert!((x - y).abs() <= x.abs() / 256.0, "{name}: {x} vs {y}");
        }
    }
    let bytes = std::fs::read(&p).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(md.metadata().as_ref().unwrap().get("format").map(String::as_str), Some("pt"));
    // bf16 is half the size of f32 (plus the header).
    assert!(bytes.len() < 8 * 20 + 400);
}

#[test]
fn reads_f16_tensors_written_by_another_writer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.safetensors");
    let vals = [0.5f32, -1.25, 3.0];
    let bytes: Vec<u8> = vals.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3], &bytes).unwrap();
    safetensors::serialize_to_file(vec![("w", view)], None, &p).unwrap();
    assert_eq!(load_tensors(&p).unwrap()["w"].data, vals);
}

#[test]
fn integer_tensors_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i.safetensors");
    let bytes: Vec<u8> = [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &bytes).unwrap();
    safetensors::serialize_to_file(vec![("ids", view)], None, &p).unwrap();
    let e = load_tensors(&p).unwrap_err();
    assert!(matches!(e, CheckpointError::Dtype { .. }), "{e}");
    assert!(e.to_string().contains("`ids`") && e.to_string().contains("i.safetensors"), "{e}");
}

#[test]
fn model_dir_with_single_file_and_missing_weights() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_tensors(dir.path()).unwrap_err();
    assert!(matches!(e, CheckpointError::NoWeights { .. }), "{e}");
    save_tensors(&dir.path().join("model.safetensors"), &sample(), SaveDtype::F32).unwrap();
    assert_eq!(load_tensors(dir.path()).unwrap(), sample());
}

#[test]
fn missing_file_names_the_file() {
    let e = load_tensors(Path::new("/nonexistent/dir/x.safetensors")).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/x.safetensors"), "{e}");
}

#[test]
fn truncated_and_garbled_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_tensors(&good, &sample(), SaveDtype::F32).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", bytes[..5].to_vec()),
        ("cut_header", bytes[..20].to_vec()),
        ("cut_data", bytes[..bytes.len() - 7].to_vec()),
        ("garbled_header", {
            let mut b = bytes.clone();
            for x in &mut b[8..30] {
                *x = b'#';
            }
            b
        }),
        ("huge_header_len", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (name, data) in cases {
        let p = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let e = load_tensors(&p).unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{name}: {e}");
        assert!(e.to_string().contains(&format!("{name}.safetensors")), "{name}: {e}");
    }
}

#[test]
fn save_refuses_a_shape_that_does_not_match_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = sample();
    m.insert("bad".into(), HostTensor { shape: vec![2, 2], data: vec![1.0; 3] });
    let p = dir.path().join("m.safetensors");
    let e = save_tensors(&p, &m, SaveDtype::F32).unwrap_err();
    assert!(e.to_string().contains("`bad`"), "{e}");
    assert!(!p.exists(), "nothing is written when a tensor is bad");
}

/// Writes `sample()` split over two shards with an index, as transformers does for big models.
fn write_sharded(dir: &Path, weight_map: serde_json::Value) {
    let all = sample();
    let (a, b): (TensorMap, TensorMap) = all.into_iter().partition(|(k, _)| k.starts_with("model."));
    save_tensors(&dir.join("model-00001-of-00002.safetensors"), &a, SaveDtype::F32).unwrap();
    save_tensors(&dir.join("model-00002-of-00002.safetensors"), &b, SaveDtype::Bf16).unwrap();
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_directory_loads_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), serde_json::json!({
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
    }));
    let m = load_tensors(dir.path()).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m["model.norm.weight"], sample()["model.norm.weight"]);
    assert!((m["lm_head.weight"].data[2] - 0.3).abs() < 2e-3);
}

#[test]
fn sharded_index_that_lies_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path(), serde_json::json!({
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
    }));
    let e = load_tensors(dir.path()).unwrap_err();
    assert!(matches!(e, CheckpointError::Index { .. }), "{e}");
    assert!(e.to_string().contains("model.norm.weight"), "{e}");

    std::fs::write(dir.path().join("model.safetensors.index.json"), "{ not json").unwrap();
    let e = load_tensors(dir.path()).unwrap_err();
    assert!(e.to_string().contains("model.safetensors.index.json") && e.to_string().contains("JSON"), "{e}");

    std::fs::write(dir.path().join("model.safetensors.index.json"), r#"{"weight_map": {"x": "missing.safetensors"}}"#).unwrap();
    let e = load_tensors(dir.path()).unwrap_err();
    assert!(e.to_string().contains("missing.safetensors"), "{e}");
}

#[test]
fn golden_causal_lm_config_parses() {
    let c = LlamaConfig::from_file(&fixture("config_causal_lm.json")).unwrap();
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size), (300, 64, 172));
    assert_eq!((c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim), (2, 4, 2, 16));
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.max_position_embeddings, 256);
    assert!(!c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id), (Some(1), vec![2], Some(0)));
    assert_eq!(c.head, Head::LanguageModel);
    assert_eq!(c.group_size(), 2);
    // to_json reads back to the same config.
    let again = LlamaConfig::from_json_str(&c.to_json().to_string(), "again").unwrap();
    assert_eq!(again, c);
}

#[test]
fn golden_reward_model_config_has_a_scalar_head() {
    let c = LlamaConfig::from_file(&fixture("config_reward_model.json")).unwrap();
    assert_eq!(c.head, Head::Scalar { num_labels: 1 });
    let again = LlamaConfig::from_json_str(&c.to_json().to_string(), "again").unwrap();
    assert_eq!(again, c);
}

#[test]
fn old_style_rope_theta_and_eos_list() {
    let text = r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "rope_theta": 500000.0, "eos_token_id": [2, 7], "tie_word_embeddings": true}"#;
    let c = LlamaConfig::from_json_str(text, "inline").unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert_eq!((c.num_key_value_heads, c.head_dim), (2, 4));
    assert!(c.tie_word_embeddings);
}

#[test]
fn bad_configs_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: HashMap<&str, (&str, &str)> = HashMap::from([
        ("not_json", ("{\"vocab_size\": ", "not a valid config.json")),
        ("array", ("[1, 2]", "not a JSON object")),
        ("missing_hidden", (r#"{"vocab_size": 10}"#, "missing `hidden_size`")),
        ("negative", (r#"{"vocab_size": -3, "hidden_size": 8}"#, "`vocab_size` must be a positive integer")),
        ("gqa", (r#"{"vocab_size": 10, "hidden_size": 12, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2}"#, "not a multiple")),
        ("rope", (r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "llama3"}}"#, "llama3")),
        ("act", (r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_act": "gelu"}"#, "gelu")),
    ]);
    for (name, (text, want)) in cases {
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, text).unwrap();
        let e = LlamaConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}.json")) && e.contains(want), "{name}: {e}");
    }
    let e = LlamaConfig::from_file(&dir.path().join("absent")).unwrap_err().to_string();
    assert!(e.contains("absent"), "{e}");
}

mod model_dir {
    //! ModelDir: a whole Hugging Face directory saved and loaded as one unit.

    use super::*;
    use kernels::chat::ChatTemplate;
    use kernels::model_dir::{ModelDir, ModelDirError};
    use kernels::tokenizer::{BpeOptions, Tokenizer};

    fn tiny() -> ModelDir {
        let config = LlamaConfig::from_file(&fixture("config_causal_lm.json")).unwrap();
        let texts = ["hello world", "the capital of France is Paris", "hello Paris"];
        let opts = BpeOptions { vocab_size: 300, min_frequency: 1, special_tokens: vec!["<pad>".into(), "<s>".into(), "</s>".into()] };
        let tok = Tokenizer::train_bpe(&mut texts.iter().map(|s| s.to_string()), &opts).unwrap();
        ModelDir { config, tensors: sample(), tokenizer: Some(tok), chat: Some(ChatTemplate::Llama2) }
    }

    #[test]
    fn save_then_load_gives_the_same_model() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out/model");
        let m = tiny();
        m.save(&dir, SaveDtype::F32).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        let back = ModelDir::load(&dir).unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.tensors, m.tensors);
        assert_eq!(back.chat, Some(ChatTemplate::Llama2));
        let (a, b) = (back.tokenizer.unwrap(), m.tokenizer.unwrap());
        assert_eq!(a.to_json_string().unwrap(), b.to_json_string().unwrap());
        // tokenizer_config.json names the special tokens by string, as transformers wants.
        let tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
        assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str(), tc["pad_token"].as_str()), (Some("<s>"), Some("</s>"), Some("<pad>")));
        assert!(tc["chat_template"].as_str().unwrap().contains("[INST]"));
        // Nothing but the model directory is left in its parent.
        assert_eq!(std::fs::read_dir(root.path().join("out")).unwrap().count(), 1);
    }

    #[test]
    fn save_replaces_an_existing_directory_and_keeps_the_jinja_template() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        tiny().save(&dir, SaveDtype::F32).unwrap();
        std::fs::write(dir.join("stale.txt"), "old").unwrap();
        let mut m = tiny();
        m.chat = Some(ChatTemplate::Jinja { source: "{{ messages[0].content }}".into(), bos_token: "<s>".into(), eos_token: "</s>".into() });
        m.save(&dir, SaveDtype::Bf16).unwrap();
        assert!(!dir.join("stale.txt").exists());
        let back = ModelDir::load(&dir).unwrap();
        assert_eq!(back.chat, m.chat);
        assert_eq!(back.stop_ids(), vec![2]);
        assert!((back.tensors["lm_head.weight"].data[0] - 0.1).abs() < 1e-3);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn broken_directories_are_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let e = ModelDir::load(&root.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        let dir = root.path().join("m");
        tiny().save(&dir, SaveDtype::F32).unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{ nope").unwrap();
        let e = ModelDir::load(&dir).unwrap_err();
        assert!(matches!(e, ModelDirError::Tokenizer(_)) && e.to_string().contains("tokenizer.json"), "{e}");
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let e = ModelDir::load(&dir).unwrap_err();
        assert!(matches!(e, ModelDirError::Checkpoint(_)), "{e}");
        std::fs::write(dir.join("config.json"), "[]").unwrap();
        let e = ModelDir::load(&dir).unwrap_err();
        assert!(matches!(e, ModelDirError::Config(_)) && e.to_string().contains("config.json"), "{e}");
    }
}

mod transformers_written {
    //! Directories written by transformers' `save_pretrained` (the golden fixtures) load as is,
    //! and survive an alignflow save/load unchanged.

    use super::*;
    use kernels::model_dir::ModelDir;

    fn golden(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name)
    }

    #[test]
    fn golden_causal_lm_and_reward_model_load_and_round_trip() {
        let lm = ModelDir::load(&golden("model")).unwrap();
        assert_eq!(lm.tensors.len(), 3 + 2 * 9, "{:?}", lm.tensors.keys().collect::<Vec<_>>());
        assert_eq!(lm.tensors["model.layers.1.self_attn.k_proj.weight"].shape, vec![32, 64]);
        assert_eq!(lm.tensors["lm_head.weight"].shape, vec![300, 64]);
        assert!(lm.tokenizer.is_none() && lm.chat.is_none());
        let rm = ModelDir::load(&golden("rm")).unwrap();
        assert_eq!(rm.config.head, Head::Scalar { num_labels: 1 });
        assert_eq!(rm.tensors["score.weight"].shape, vec![1, 64]);
        let dir = tempfile::tempdir().unwrap();
        for (name, m) in [("lm", lm), ("rm", rm)] {
            m.save(&dir.path().join(name), SaveDtype::F32).unwrap();
            let back = ModelDir::load(&dir.path().join(name)).unwrap();
            assert_eq!(back.config, m.config, "{name}");
            assert_eq!(back.tensors, m.tensors, "{name}");
        }
    }
}
