//! The one list of stage kinds. Adding a kind = one file + one line here.

use std::sync::Arc;

use graph::Registry;

/// Every registered stage kind.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(crate::assistant_world::AssistantWorld));
    r.register(Arc::new(crate::parquet::PARQUET));
    r.register(Arc::new(crate::jsonl::JSONL));
    r.register(Arc::new(crate::train_tokenizer::TrainTokenizer));
    r.register(Arc::new(crate::tokenize::Tokenize));
    r.register(Arc::new(crate::collect_preferences::CollectPreferences));
    r.register(Arc::new(crate::collect_preferences::ImportPreferences));
    r.register(Arc::new(crate::train_reward::TrainReward));
    r.register(Arc::new(crate::rejection_sample::RejectionSample));
    r.register(Arc::new(crate::ppo::Ppo));
    r.register(Arc::new(crate::sft::Sft));
    r.register(Arc::new(crate::eval::Eval));
    r.register(Arc::new(crate::gatt::Gatt));
    r.register(Arc::new(crate::eval_dialogue::EvalDialogue));
    r.register(Arc::new(crate::onnx_judge::OnnxJudge));
    r.register(Arc::new(crate::onnx_annotate::OnnxAnnotate));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_well_formed() {
        let r = registry();
        for kind in ["assistant_world", "parquet", "jsonl", "train_tokenizer", "tokenize"] {
            assert!(r.get(kind).is_some(), "{kind} is not registered");
        }
        for s in r.stages() {
            let mut names: Vec<_> = s.params().iter().map(|p| p.name).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "{}: duplicate parameter", s.kind());
            assert!(!s.outputs().is_empty(), "{} has no outputs", s.kind());
            if let Some(p) = s.row_port() {
                assert!(s.inputs().iter().any(|i| i.name == p), "{}: row port {p} is not an input", s.kind());
            }
            for p in s.extra_row_ports() {
                assert!(s.row_port().is_some(), "{}: extra row ports without a row port", s.kind());
                assert!(s.inputs().iter().any(|i| i.name == *p), "{}: row port {p} is not an input", s.kind());
            }
        }
    }
}
