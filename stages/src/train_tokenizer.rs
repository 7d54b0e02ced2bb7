//! `train_tokenizer`: trains a byte-level BPE tokenizer (kernels::tokenizer) on one text
//! column of a table. A global stage: the whole column decides every merge.

use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};
use kernels::tokenizer::{BpeOptions, Tokenizer};

use crate::common::{read_input_table, tokenizer_file};

pub struct TrainTokenizer;

impl Stage for TrainTokenizer {
    fn kind(&self) -> &'static str {
        "train_tokenizer"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "Byte-level BPE training on a text column. Special tokens get ids 0, 1, ... in order."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("text", ArtifactType::Table, "the table whose `column` is the training text")]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("tokenizer", ArtifactType::Tokenizer, "tokenizer.json")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("vocab_size", 260, 1_000_000, Some(2000), "final vocabulary size, special and byte tokens included"),
            ParamSpec::int("min_frequency", 1, i64::MAX, Some(2), "a pair is merged only if it occurs this often"),
            ParamSpec::str("column", Some("text"), "the text column"),
            ParamSpec::str_list("special_tokens", Some(&["<s>", "</s>", "<pad>"]), "special tokens, in id order"),
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let table = read_input_table(ctx, "text")?;
        let column = ctx.params.str("column")?;
        let texts = datasets::table::str_values(&table, column, "text").map_err(|e| StageError::wrap("input `text`", e))?;
        let opts = BpeOptions {
            vocab_size: ctx.params.int("vocab_size")? as usize,
            min_frequency: ctx.params.int("min_frequency")? as u64,
            special_tokens: ctx.params.str_list("special_tokens")?,
        };
        let mut it = texts.iter().map(|s| s.to_string());
        let tok = Tokenizer::train_bpe(&mut it, &opts).map_err(|e| StageError::wrap("training BPE", e))?;
        tok.save(&tokenizer_file(ctx.output("tokenizer")?)).map_err(|e| StageError::wrap("saving the tokenizer", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::testing;
    use graph::ParamValue;

    #[test]
    fn trains_a_tokenizer_that_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        let ids: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        let texts: Vec<String> = (0..40).map(|i| format!("the capital of land {i} is town {}", i * 7)).collect();
        let schema = datasets::schema::pretrain_schema();
        let kind: Vec<&str> = vec!["fact"; 40];
        let batch = arrow_array::RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(arrow_array::StringArray::from(ids)),
                std::sync::Arc::new(arrow_array::StringArray::from(kind)),
                std::sync::Arc::new(arrow_array::StringArray::from(texts)),
            ],
        )
        .unwrap();
        datasets::table::write_parquet(&crate::common::table_file(&input), &batch).unwrap();
        let params = testing::params(&TrainTokenizer, &[("vocab_size", ParamValue::Int(300))]);
        let inputs = [("text".to_string(), input)].into();
        let (outs, _) = testing::run(&TrainTokenizer, &params, d.path(), inputs, d.path(), 1).unwrap();
        let tok = Tokenizer::from_file(&tokenizer_file(&outs["tokenizer"])).unwrap();
        assert!(tok.vocab_size() <= 300);
        let ids = tok.encode("the capital of land 3").unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), "the capital of land 3");
    }
}
