//! Golden tests against Hugging Face transformers (fixtures/golden/README.md): the tiny GQA
//! Llama's logits, loss, per-token log-probs, every parameter gradient, greedy tokens with the
//! KV cache, and the reward model's scores on right-padded rows, each within the tolerances
//! the README gives for a correct float32 implementation.

use kernels::checkpoint::load_tensors;
use kernels::config::LlamaConfig;
use kernels::generate::{SamplingParams, generate};
use kernels::model::{Llama, shift_labels, trim_right_padding};
use kernels::ops::check_close;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(p)
}

struct Case {
    bytes: Vec<u8>,
}

impl Case {
    fn load() -> Case {
        Case { bytes: std::fs::read(fixture("case.safetensors")).expect("read case.safetensors") }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("parse case.safetensors")
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
    fn i64s(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        (t.shape().to_vec(), t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect())
    }
    /// A (rows, cols) int64 tensor as rows.
    fn rows(&self, name: &str) -> Vec<Vec<i64>> {
        let (shape, v) = self.i64s(name);
        v.chunks(shape[1]).map(|r| r.to_vec()).collect()
    }
    fn token_rows(&self, name: &str) -> Vec<Vec<u32>> {
        self.rows(name).into_iter().map(|r| r.into_iter().map(|t| t as u32).collect()).collect()
    }
}

fn load_model(dir: &str) -> Llama {
    let config = LlamaConfig::from_file(&fixture(dir)).expect("config");
    let tensors = load_tensors(&fixture(dir).join("model.safetensors")).expect("tensors");
    Llama::from_tensors(config, &tensors).expect("model")
}

#[test]
fn logits_match_transformers() {
    let (case, model) = (Case::load(), load_model("model"));
    let rows = case.token_rows("input_ids");
    assert!(case.rows("attention_mask").iter().flatten().all(|&m| m == 1), "the LM case has no padding");
    let got: Vec<f32> = model.logits(&rows).unwrap().concat();
    check_close("logits", &got, &case.f32s("logits"), 1e-4, 0.0).unwrap();
}

#[test]
fn token_logprobs_match_transformers() {
    let (case, model) = (Case::load(), load_model("model"));
    let got: Vec<f32> = model.token_logprobs(&case.token_rows("input_ids")).unwrap().concat();
    check_close("token_logprobs", &got, &case.f32s("token_logprobs"), 1e-4, 0.0).unwrap();
}

#[test]
fn loss_and_every_gradient_match_transformers() {
    let (case, model) = (Case::load(), load_model("model"));
    let rows = case.token_rows("input_ids");
    let targets: Vec<Vec<i32>> = case.rows("labels").iter().map(|r| shift_labels(&r.iter().map(|&x| x as i32).collect::<Vec<_>>())).collect();
    let (loss, grads) = model.cross_entropy_grads(&rows, &targets).unwrap();
    let want = case.f32s("loss")[0];
    assert!(((loss - want) / want).abs() <= 1e-5, "loss {loss} vs transformers {want}");
    let by_name = grads.to_tensor_map(&model);
    assert_eq!(by_name.len(), model.specs().len());
    for (name, g) in &by_name {
        let want = case.f32s(&format!("grad.{name}"));
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        check_close(&format!("grad.{name}"), &g.data, &want, 1e-4 * scale, 0.0).unwrap();
    }
}

#[test]
fn greedy_tokens_match_transformers() {
    let (case, model) = (Case::load(), load_model("model"));
    let prompt: Vec<u32> = case.i64s("greedy_prompt").1.iter().map(|&t| t as u32).collect();
    let want: Vec<u32> = case.i64s("greedy_tokens").1.iter().map(|&t| t as u32).collect();
    let params = SamplingParams { max_new_tokens: want.len(), temperature: 0.0, top_p: 1.0, seed: 0 };
    let got = generate(&model, &[prompt], &params, &[]).unwrap();
    assert_eq!(got[0], want);
}

#[test]
fn reward_scores_on_right_padded_rows_match_transformers() {
    let (case, model) = (Case::load(), load_model("rm"));
    let rows = case.token_rows("rm_input_ids");
    let lengths: Vec<usize> = case.rows("rm_attention_mask").iter().map(|m| m.iter().filter(|&&x| x == 1).count()).collect();
    assert_eq!(lengths, vec![19, 11, 15]);
    let got = model.scores(&trim_right_padding(&rows, &lengths).unwrap()).unwrap();
    check_close("rm_scores", &got, &case.f32s("rm_scores"), 1e-4, 0.0).unwrap();
}

#[test]
fn tensors_round_trip_and_bad_tensors_are_named() {
    let model = load_model("model");
    let tensors = model.to_tensors();
    let again = Llama::from_tensors(model.config.clone(), &tensors).unwrap();
    assert_eq!(again.params(), model.params());
    let mut bad = tensors.clone();
    bad.get_mut("model.layers.1.mlp.up_proj.weight").unwrap().shape = vec![172, 63];
    let err = Llama::from_tensors(model.config.clone(), &bad).unwrap_err().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    let mut missing = tensors.clone();
    missing.remove("lm_head.weight");
    let err = Llama::from_tensors(model.config.clone(), &missing).unwrap_err().to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
    let err = model.logits(&[vec![1, 300]]).unwrap_err().to_string();
    assert!(err.contains("300"), "{err}");
}
