//! Parquet files in and out. Writing uses ZSTD level 3 and `coerce_types`, which names list
//! children `element` as the Parquet spec, pyarrow and Spark expect (arrow-rs would otherwise
//! write `item`). Reading concatenates every record batch of the file into one and normalises
//! the types (see `normalize`), so a file written by pyarrow, Polars or this crate reads the same.

use std::fs::File;
use std::path::Path;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::normalize::normalize_batch;
use crate::error::{DataError, Result};

/// Batch size when reading: large enough that small tables come back as one batch anyway.
const READ_BATCH_ROWS: usize = 16 * 1024;

/// Writes `batch` to exactly `path` (created or truncated) as a ZSTD-compressed Parquet file
/// and fsyncs it. Atomic publication (temporary name, then rename) is the caller's job.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let pq_err = |op, source| DataError::Parquet { path: path.to_path_buf(), op, source };
    let zstd = ZstdLevel::try_new(3).map_err(|e| pq_err("compression level", e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        // Spec-compliant list layout: children named `element`, readable by pyarrow.
        .set_coerce_types(true)
        .build();
    let file = File::create(path)
        .map_err(|source| DataError::Io { path: path.to_path_buf(), op: "create", source })?;
    let handle = file
        .try_clone()
        .map_err(|source| DataError::Io { path: path.to_path_buf(), op: "clone handle", source })?;
    let mut writer = ArrowWriter::try_new(handle, batch.schema(), Some(props))
        .map_err(|e| pq_err("open writer", e))?;
    writer.write(batch).map_err(|e| pq_err("write", e))?;
    writer.close().map_err(|e| pq_err("close", e))?;
    file.sync_all()
        .map_err(|source| DataError::Io { path: path.to_path_buf(), op: "fsync", source })
}

/// Reads a whole Parquet file into one `RecordBatch` with normalised types
/// (Utf8 strings, `List` with `element` children; see `normalize_batch`).
pub fn read_parquet(path: &Path) -> Result<RecordBatch> {
    let pq_err = |op, source| DataError::Parquet { path: path.to_path_buf(), op, source };
    let file = File::open(path)
        .map_err(|source| DataError::Io { path: path.to_path_buf(), op: "open", source })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err("read footer", e))?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(READ_BATCH_ROWS).build().map_err(|e| pq_err("open reader", e))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::arrow(format!("{}: read batch", path.display()), e))?;
        batches.push(batch);
    }
    let whole = arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| DataError::arrow(format!("{}: concatenate batches", path.display()), e))?;
    normalize_batch(&whole, &path.display().to_string())
}
