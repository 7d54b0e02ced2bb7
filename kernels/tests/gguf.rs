//! GGUF import: the reference dequantizers on hand-made blocks, the fast ones against the
//! reference, the Q/K un-permutation, and whole-file imports of the fixtures that
//! scripts/make_gguf_fixture.py built with llama.cpp's own Python package (values compared with
//! that package's dequantization), plus truncated and corrupted files.

use std::path::{Path, PathBuf};

use kernels::checkpoint::{load_tensors, SaveDtype};
use kernels::chat::{ChatTemplate, Message};
use kernels::gguf::{dequantize, import, reference, unpermute_qk, GgmlType, GgufError, GgufFile, GgufValue};
use kernels::model_dir::ModelDir;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

#[test]
fn reference_q4_0_on_a_hand_made_block() {
    // d = 0.5; byte j = (hi << 4) | lo with lo = j, hi = 15 - j.
    let mut b = f16(0.5).to_vec();
    b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
    let got = reference::dequantize(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(got[j], 0.5 * (j as f32 - 8.0), "low nibble {j}");
        assert_eq!(got[j + 16], 0.5 * ((15 - j) as f32 - 8.0), "high nibble {j}");
    }
    assert_eq!(dequantize(GgmlType::Q4_0, &b).unwrap(), got);
}

#[test]
fn reference_q4_1_on_a_hand_made_block() {
    // d = 0.25, m = -1: x = 0.25 * q - 1.
    let mut b = f16(0.25).to_vec();
    b.extend(f16(-1.0));
    b.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
    let got = reference::dequantize(GgmlType::Q4_1, &b, 32);
    assert_eq!(got[0], 0.25 * 15.0 - 1.0);
    assert_eq!(got[15], -1.0);
    assert_eq!(got[16], -1.0);
    assert_eq!(got[31], 0.25 * 15.0 - 1.0);
    assert_eq!(dequantize(GgmlType::Q4_1, &b).unwrap(), got);
}

#[test]
fn reference_q8_0_on_a_hand_made_block() {
    let mut b = f16(2.0).to_vec();
    b.extend((0..32).map(|k| (k as i8 - 16) as u8));
    let got = reference::dequantize(GgmlType::Q8_0, &b, 32);
    let want: Vec<f32> = (0..32).map(|k| 2.0 * (k as f32 - 16.0)).collect();
    assert_eq!(got, want);
    assert_eq!(dequantize(GgmlType::Q8_0, &b).unwrap(), want);
}

/// Deterministic pseudo-random bytes (a 64-bit LCG), with finite f16 scales put in place.
fn random_blocks(ty: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
    let (_, bb) = ty.block().unwrap();
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as u8
    };
    let mut out: Vec<u8> = (0..blocks * bb).map(|_| next()).collect();
    let n_scales = match ty {
        GgmlType::Q4_1 => 2,
        GgmlType::Q4_0 | GgmlType::Q8_0 => 1,
        _ => 0,
    };
    for b in 0..blocks {
        for k in 0..n_scales {
            let v = (next() as f32 - 128.0) / 64.0;
            out[b * bb + 2 * k..b * bb + 2 * k + 2].copy_from_slice(&f16(v));
        }
    }
    if matches!(ty, GgmlType::F16) {
        for c in out.chunks_exact_mut(2) {
            let v = (c[0] as f32 - 128.0) / 16.0;
            c.copy_from_slice(&f16(v));
        }
    }
    if matches!(ty, GgmlType::F32) {
        for (i, c) in out.chunks_exact_mut(4).enumerate() {
            c.copy_from_slice(&(i as f32 * 0.37 - 3.0).to_le_bytes());
        }
    }
    out
}

#[test]
fn fast_dequantizers_equal_the_reference() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let (per, _) = ty.block().unwrap();
        let bytes = random_blocks(ty, 7 * 32 / per, 42);
        let n = 7 * 32;
        let fast = dequantize(ty, &bytes).unwrap();
        let slow = reference::dequantize(ty, &bytes, n);
        assert_eq!(fast.len(), n, "{ty:?}");
        for i in 0..n {
            assert!(fast[i] == slow[i] || (fast[i].is_nan() && slow[i].is_nan()), "{ty:?} element {i}: {} vs {}", fast[i], slow[i]);
        }
    }
    // A byte count that is not a whole number of blocks is refused.
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 19]).is_none());
    assert!(dequantize(GgmlType::Other(12), &[0u8; 144]).is_none());
}

/// convert_hf_to_gguf.py's permute, written independently: per head, reshape the rows to
/// (2, hd/2), swap the axes, flatten.
fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for r in 0..hd {
            let (i, j) = (r / (hd / 2), r % (hd / 2));
            let dst = h * hd + j * 2 + i;
            out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[(h * hd + r) * cols..(h * hd + r + 1) * cols]);
        }
    }
    out
}

#[test]
fn unpermute_inverts_the_converters_permutation() {
    // 2 heads of head_dim 4, 1 column: HF rows [0..8) become GGUF rows [0,2,1,3, 4,6,5,7].
    let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
    let g = permute(&hf, 8, 1, 2);
    assert_eq!(g, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert_eq!(unpermute_qk(&g, 8, 1, 2), hf);
    let big: Vec<f32> = (0..48 * 5).map(|x| x as f32).collect();
    assert_eq!(unpermute_qk(&permute(&big, 48, 5, 3), 48, 5, 3), big);
}

#[test]
fn header_and_metadata_of_every_type() {
    let g = GgufFile::open(&fixture("tiny.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get("general.architecture"), Some(&GgufValue::String("llama".into())));
    assert_eq!(g.get("test.i8"), Some(&GgufValue::I8(-3)));
    assert_eq!(g.get("test.u16"), Some(&GgufValue::U16(65000)));
    assert_eq!(g.get("test.i16"), Some(&GgufValue::I16(-300)));
    assert_eq!(g.get("test.i64"), Some(&GgufValue::I64(-(1 << 40))));
    assert_eq!(g.get("test.u64"), Some(&GgufValue::U64(1 << 40)));
    assert_eq!(g.get("test.f64"), Some(&GgufValue::F64(0.125)));
    assert_eq!(g.get("test.bool"), Some(&GgufValue::Bool(true)));
    assert_eq!(g.get("llama.rope.freq_base"), Some(&GgufValue::F32(50000.0)));
    let nested = g.get("test.nested").and_then(|v| v.as_array()).unwrap();
    assert_eq!(nested.len(), 2);
    assert_eq!(nested[1], GgufValue::Array(vec![GgufValue::I32(3)]));
    let types: std::collections::BTreeSet<String> = g.tensors.iter().map(|t| format!("{:?}", t.ty)).collect();
    for t in ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"] {
        assert!(types.contains(t), "fixture lacks {t}: {types:?}");
    }
    let emb = g.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![64, 275], "GGUF dims are innermost first");
}

fn assert_close_to_expected(dir: &ModelDir, expected: &str) {
    let want = load_tensors(&fixture(expected)).unwrap();
    assert_eq!(dir.tensors.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, w) in &want {
        let g = &dir.tensors[name];
        assert_eq!(g.shape, w.shape, "{name}");
        let worst = g.data.iter().zip(&w.data).map(|(a, b)| (a - b).abs() / (1e-6 + b.abs())).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: worst relative difference {worst}");
    }
}

#[test]
fn import_matches_the_gguf_packages_dequantization_and_unpermutes_q_k() {
    let m = import(&fixture("tiny.gguf")).unwrap();
    let c = &m.config;
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers), (275, 64, 96, 2));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 2, 16));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.max_position_embeddings), (50000.0, 1e-5, 512));
    assert!(!c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id), (Some(1), vec![2], Some(0)));
    assert_close_to_expected(&m, "tiny.expected.safetensors");
    assert_eq!(m.tensors["model.layers.0.self_attn.q_proj.weight"].shape, vec![64, 64]);
    assert_eq!(m.tensors["model.layers.1.self_attn.k_proj.weight"].shape, vec![32, 64]);
    assert_eq!(m.tensors["model.layers.0.mlp.down_proj.weight"].shape, vec![64, 96]);
}

#[test]
fn missing_output_means_tied_embeddings() {
    let m = import(&fixture("tiny_tied.gguf")).unwrap();
    assert!(m.config.tie_word_embeddings);
    assert!(!m.tensors.contains_key("lm_head.weight"));
    assert_close_to_expected(&m, "tiny_tied.expected.safetensors");
}

#[test]
fn tokenizer_and_chat_template_come_along() {
    let m = import(&fixture("tiny.gguf")).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    assert_eq!(tok.vocab_size(), 275);
    assert_eq!(tok.special_ids(), vec![0, 1, 2]);
    let ids = tok.encode(" the cat sat on the mat").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["Ġthe", "Ġcat", "Ġsat", "Ġ", "on", "Ġthe", "Ġmat"]);
    for text in ["Hello, world! 123", "emoji 🦙 ünïcode", "<|im_start|>user\nhi<|im_end|>"] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap(), false).unwrap(), text);
    }
    // smollm pre-tokenizer: digits split one by one.
    assert_eq!(tok.encode("2026").unwrap().len(), 4);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    let chat = m.chat.clone().unwrap();
    assert!(matches!(&chat, ChatTemplate::Jinja { bos_token, eos_token, .. } if bos_token == "<|im_start|>" && eos_token == "<|im_end|>"));
    let msgs = vec![Message::new("user", "hi"), Message::new("assistant", "the cat")];
    let ct = chat.encode(tok, &msgs, false, None, None).unwrap();
    let masked: Vec<u32> = ct.ids.iter().zip(&ct.assistant_mask).filter(|&(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&masked, false).unwrap(), "the cat<|im_end|>");
}

#[test]
fn imported_directory_saves_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let m = import(&fixture("tiny.gguf")).unwrap();
    m.save(&out, SaveDtype::F32).unwrap();
    let back = ModelDir::load(&out).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.tensors, m.tensors);
    assert_eq!(back.chat, m.chat);
    assert_eq!(back.stop_ids(), vec![2]);
    let t = back.tokenizer.unwrap();
    assert_eq!(t.encode(" the cat").unwrap(), m.tokenizer.unwrap().encode(" the cat").unwrap());
}

#[test]
fn the_engine_accepts_the_imported_weights() {
    let m = import(&fixture("tiny.gguf")).unwrap();
    let llama = kernels::model::Llama::from_tensors(m.config.clone(), &m.tensors).unwrap();
    let lp = llama.token_logprobs(&[vec![1, 50, 60, 70]]).unwrap();
    assert_eq!(lp[0].len(), 3);
    assert!(lp[0].iter().all(|x| x.is_finite() && *x <= 0.0));
}

#[test]
fn version_2_files_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let p = dir.path().join("v2.gguf");
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(import(&p).unwrap().tensors, import(&fixture("tiny.gguf")).unwrap().tensors);
}

fn expect_err(bytes: &[u8], name: &str) -> GgufError {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let e = match import(&p) {
        Ok(_) => panic!("{name}: imported a broken file"),
        Err(e) => e,
    };
    assert!(e.to_string().contains(name), "{name}: error does not name the file: {e}");
    e
}

#[test]
fn every_truncation_is_a_clear_error() {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let mut cuts: Vec<usize> = (0..400).collect();
    cuts.extend((400..bytes.len()).step_by(331));
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let e = expect_err(&bytes[..cut], "cut.gguf");
        assert!(matches!(e, GgufError::Corrupt { .. }), "cut at {cut}: {e}");
    }
}

/// Byte offset of the type field of tensor `name` in the header.
fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let pos = bytes.windows(name.len()).rposition(|w| w == name.as_bytes()).unwrap();
    let after = pos + name.len();
    let n_dims = u32::from_le_bytes(bytes[after..after + 4].try_into().unwrap()) as usize;
    after + 4 + 8 * n_dims
}

#[test]
fn corrupt_headers_and_unsupported_content_are_clear_errors() {
    let good = std::fs::read(fixture("tiny.gguf")).unwrap();
    let patch = |at: usize, with: &[u8]| {
        let mut b = good.clone();
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    let e = expect_err(&patch(0, b"GGML"), "magic.gguf");
    assert!(e.to_string().contains("magic"), "{e}");
    let e = expect_err(&patch(4, &1u32.to_le_bytes()), "v1.gguf");
    assert!(matches!(e, GgufError::Unsupported { .. }) && e.to_string().contains("version 1"), "{e}");
    let e = expect_err(&patch(8, &u64::MAX.to_le_bytes()), "count.gguf");
    assert!(e.to_string().contains("tensor count"), "{e}");
    let e = expect_err(&patch(16, &(1u64 << 50).to_le_bytes()), "kvcount.gguf");
    assert!(e.to_string().contains("metadata count"), "{e}");
    // A K-quant tensor type: listed by name as unsupported.
    let at = tensor_type_offset(&good, "blk.0.attn_q.weight");
    let e = expect_err(&patch(at, &12u32.to_le_bytes()), "q4k.gguf");
    assert!(matches!(e, GgufError::Unsupported { .. }) && e.to_string().contains("blk.0.attn_q.weight"), "{e}");
    // A tensor offset past the end of the file.
    let e = expect_err(&patch(at + 4, &(1u64 << 40).to_le_bytes()), "offset.gguf");
    assert!(e.to_string().contains("past the end"), "{e}");
    // A tensor llama.cpp names but Llama does not have.
    let name_at = good.windows(17).position(|w| w == b"output_norm.weig\x68").unwrap();
    let e = expect_err(&patch(name_at, b"output_xorm"), "name.gguf");
    assert!(e.to_string().contains("output_xorm.weight"), "{e}");
    let e = expect_err(b"", "empty.gguf");
    assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
}
