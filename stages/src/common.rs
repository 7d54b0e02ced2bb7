//! Helpers every stage kind shares: reading and writing the table artifact of a port, and
//! turning the data crates' errors into `StageError`s that name the stage's file.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use graph::{ArtifactType, RunCtx, StageError};

/// The Parquet file of a table artifact directory.
pub fn table_file(dir: &Path) -> PathBuf {
    dir.join(ArtifactType::Table.main_file().expect("tables have a main file"))
}

/// The tokenizer.json of a tokenizer artifact directory.
pub fn tokenizer_file(dir: &Path) -> PathBuf {
    dir.join(ArtifactType::Tokenizer.main_file().expect("tokenizers have a main file"))
}

/// Reads the table wired to input `port`.
pub fn read_input_table(ctx: &RunCtx<'_>, port: &str) -> Result<RecordBatch, StageError> {
    let path = table_file(ctx.input(port)?);
    datasets::table::read_parquet(&path).map_err(|e| StageError::wrap(format!("reading input `{port}`"), e))
}

/// Writes `batch` as output `name` (a table).
pub fn write_output_table(ctx: &RunCtx<'_>, name: &str, batch: &RecordBatch) -> Result<(), StageError> {
    let path = table_file(ctx.output(name)?);
    datasets::table::write_parquet(&path, batch).map_err(|e| StageError::wrap(format!("writing output `{name}`"), e))
}

/// blake3 of a file's bytes (sources put it in their fingerprint, so an edited file re-runs).
pub fn hash_file(path: &Path) -> Result<[u8; 32], StageError> {
    let bytes = std::fs::read(path).map_err(|source| StageError::Io { path: path.to_path_buf(), source })?;
    Ok(*blake3::hash(&bytes).as_bytes())
}

#[cfg(test)]
pub mod testing {
    //! Running a stage outside a pipeline, for the tests beside each stage.

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use graph::rows::MemoRowEngine;
    use graph::{Params, Stage, StageError, Store};

    /// Fills the stage's defaults, then applies `overrides`.
    pub fn params(stage: &dyn Stage, overrides: &[(&str, graph::ParamValue)]) -> Params {
        let mut values: BTreeMap<String, graph::ParamValue> =
            stage.params().into_iter().filter_map(|p| p.default.map(|d| (p.name.to_string(), d))).collect();
        for (k, v) in overrides {
            values.insert(k.to_string(), v.clone());
        }
        Params { values }
    }

    /// Runs `stage` with `inputs` (port -> artifact dir); returns output dirs under `work`.
    pub fn run(
        stage: &dyn Stage,
        params: &Params,
        base_dir: &Path,
        inputs: BTreeMap<String, PathBuf>,
        work: &Path,
        workers: usize,
    ) -> Result<(BTreeMap<String, PathBuf>, Option<graph::RowStats>), StageError> {
        let store = Store::at(work.join("store"));
        let _lock = store.lock().map_err(|e| StageError::wrap("lock", e))?;
        let mut outputs = BTreeMap::new();
        for p in stage.outputs() {
            let d = work.join("out").join(p.name);
            std::fs::create_dir_all(&d).unwrap();
            outputs.insert(p.name.to_string(), d);
        }
        let engine = MemoRowEngine::new(&store, stage.row_port().map(|_| "test-memo".to_string()), 11, 0, workers, None);
        let mut ctx = graph::RunCtx::new("test", 0, 11, params, base_dir, inputs, outputs.clone(), &engine);
        stage.run(&mut ctx)?;
        Ok((outputs, ctx.row_stats()))
    }
}

/// The `path` parameter of a source, resolved against the pipeline file's directory.
pub fn source_path(params: &graph::Params, base_dir: &Path) -> Result<PathBuf, StageError> {
    let p = Path::new(params.str("path")?);
    Ok(if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) })
}

/// Shared body of the file sources: read with `read`, make sure the `id` row key exists
/// (derived from the row hash when absent), write the `table` output.
pub fn run_source(
    ctx: &RunCtx<'_>,
    read: fn(&Path) -> datasets::Result<RecordBatch>,
) -> Result<(), StageError> {
    let path = source_path(ctx.params, ctx.base_dir)?;
    let batch = read(&path).map_err(|e| StageError::wrap("reading the source file", e))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let batch = datasets::table::ensure_id_column(&batch, &name).map_err(|e| StageError::wrap("row keys", e))?;
    write_output_table(ctx, "table", &batch)
}
