//! `jsonl`: a source stage reading a jsonl file named by `path` (relative to the pipeline
//! file). The file's content hash is part of the fingerprint, so editing the file re-runs the
//! source and, through the row memo, only the new or changed rows of row-wise stages below it.
//! An `id` row-key column is derived from the row hash when the file has none.

use std::path::Path;

use graph::{ArtifactType, ParamSpec, Params, Port, RunCtx, Stage, StageError};

use crate::common::{hash_file, run_source, source_path};

pub struct JsonlSource;

impl Stage for JsonlSource {
    fn kind(&self) -> &'static str {
        "jsonl"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "A JSON Lines file (one object per line) as a table."
    }
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("table", ArtifactType::Table, "the file's rows, with a string `id` column")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::str("path", None, "the file, relative to the pipeline file")]
    }
    fn external_fingerprint(&self, params: &Params, base_dir: &Path) -> Result<Option<[u8; 32]>, StageError> {
        hash_file(&source_path(params, base_dir)?).map(Some)
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        run_source(ctx, datasets::table::read_jsonl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{table_file, testing};
    use graph::ParamValue;

    #[test]
    fn reads_lines_and_derives_ids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.jsonl"), "{\"text\": \"a b\"}\n{\"text\": \"c\"}\n").unwrap();
        let params = testing::params(&JsonlSource, &[("path", ParamValue::Str("x.jsonl".into()))]);
        let fp = JsonlSource.external_fingerprint(&params, d.path()).unwrap();
        assert!(fp.is_some());
        let (outs, _) = testing::run(&JsonlSource, &params, d.path(), Default::default(), d.path(), 1).unwrap();
        let t = datasets::table::read_parquet(&table_file(&outs["table"])).unwrap();
        assert_eq!(t.num_rows(), 2);
        assert!(t.schema().index_of("id").is_ok());
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let params = testing::params(&JsonlSource, &[("path", ParamValue::Str("nope.jsonl".into()))]);
        let e = JsonlSource.external_fingerprint(&params, d.path()).unwrap_err();
        assert!(e.to_string().contains("nope.jsonl"), "{e}");
    }
}
