//! A checkpoint saved by alignflow loads in transformers with the same outputs: random models
//! (grouped-query attention; untied, tied, and a scalar reward head; f32 and bf16 files) are
//! saved as model directories, their logits or scores computed by the engine, and
//! scripts/check_hf_roundtrip.py recomputes them with transformers' `from_pretrained`.
//! Skips (with the reason printed) when python3, torch or transformers is missing.

use std::path::Path;
use std::process::Command;

use kernels::checkpoint::{save_tensors, HostTensor, SaveDtype, TensorMap};
use kernels::config::{Head, LlamaConfig};
use kernels::model::Llama;
use kernels::model_dir::ModelDir;

fn config(tie: bool, head: Head) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 97,
        hidden_size: 48,
        intermediate_size: 80,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: tie,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        pad_token_id: Some(0),
        head,
    }
}

/// Saves `llama` to `dir` as `dtype`, reloads it (so bf16 rounding is in both sides), writes
/// the engine's outputs, and asks transformers to compare. `None` when the check was skipped.
fn check(llama: &Llama, dtype: SaveDtype, dir: &Path) -> Option<()> {
    let md = ModelDir { config: llama.config.clone(), tensors: llama.to_tensors(), tokenizer: None, chat: None };
    md.save(dir, dtype).unwrap();
    let back = ModelDir::load(dir).unwrap();
    let model = Llama::from_tensors(back.config.clone(), &back.tensors).unwrap();
    let rows: Vec<Vec<u32>> = vec![vec![1, 5, 9, 33, 96, 4, 4, 17], vec![1, 60, 2]];
    let mut out = TensorMap::new();
    let scalar = matches!(model.config.head, Head::Scalar { .. });
    let outs: Vec<Vec<f32>> = if scalar {
        model.scores(&rows).unwrap().into_iter().map(|s| vec![s]).collect()
    } else {
        model.logits(&rows).unwrap()
    };
    for (i, (r, o)) in rows.iter().zip(outs).enumerate() {
        out.insert(format!("row{i}.ids"), HostTensor { shape: vec![r.len()], data: r.iter().map(|&x| x as f32).collect() });
        out.insert(format!("row{i}.out"), HostTensor { shape: vec![o.len()], data: o });
    }
    let expected = dir.with_extension("alignflow.safetensors");
    save_tensors(&expected, &out, SaveDtype::F32).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_hf_roundtrip.py");
    let res = match Command::new("python3").arg(&script).arg("compare").arg(dir).arg(&expected).arg("1e-4").output() {
        Ok(r) => r,
        Err(e) => {
            println!("SKIP hf_roundtrip: cannot run python3: {e}");
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&res.stderr);
    if res.status.code() == Some(3) {
        println!("SKIP hf_roundtrip: {}", stderr.trim());
        return None;
    }
    let stdout = String::from_utf8_lossy(&res.stdout);
    println!("{}: {}", dir.display(), stdout.trim());
    assert!(res.status.success(), "transformers disagrees with alignflow on {}:\n{stdout}\n{stderr}", dir.display());
    Some(())
}

#[test]
fn transformers_loads_alignflow_checkpoints_with_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("untied_f32", config(false, Head::LanguageModel), SaveDtype::F32),
        ("tied_f32", config(true, Head::LanguageModel), SaveDtype::F32),
        ("untied_bf16", config(false, Head::LanguageModel), SaveDtype::Bf16),
        ("reward_f32", config(false, Head::Scalar { num_labels: 1 }), SaveDtype::F32),
    ];
    for (i, (name, cfg, dtype)) in cases.into_iter().enumerate() {
        let llama = Llama::new_random(cfg, 7 + i as u64);
        if check(&llama, dtype, &tmp.path().join(name)).is_none() {
            return;
        }
    }
}
