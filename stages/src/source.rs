//! File sources (`parquet`, `jsonl`): a stage reading a user's file named by `path` (relative to
//! the pipeline file) as a table. One type serves every format; a kind differs only in its name,
//! its doc and its reader. The file's content hash is part of the fingerprint, so editing the
//! file re-runs the source and, through the row memo, only the new or changed rows of row-wise
//! stages below it. An `id` row-key column is derived from the row hash when the file has none.

use std::path::Path;

use arrow_array::RecordBatch;
use graph::{ArtifactType, ParamSpec, Params, Port, RunCtx, Stage, StageError};

use crate::common::{hash_file, run_source, source_path};

pub struct FileSource {
    pub kind: &'static str,
    pub doc: &'static str,
    pub read: fn(&Path) -> datasets::Result<RecordBatch>,
}

impl Stage for FileSource {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        self.doc
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
        run_source(ctx, self.read)
    }
}
