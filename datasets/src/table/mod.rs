//! Table IO and table-level helpers: every table in alignflow is one Arrow `RecordBatch` in
//! memory and one Parquet file on disk. This module owns how they are written (ZSTD, list
//! children named `element` so pyarrow, Spark and Hugging Face read them), how they are read
//! (all batches concatenated, types normalised to one canonical form), how JSONL files become
//! tables, the typed column accessors that turn a wrong column into a clear error, and the
//! canonical row hash the runtime uses to memoise row-wise work.

mod columns;
mod hash;
mod jsonl;
mod normalize;
mod parquet_io;

pub use columns::{
    bool_column, column, f32_column, f64_column, i32_column, i32_lists, i64_column, list_column,
    messages_values, str_column, str_values,
};
pub use hash::{ROW_HASH_CONTEXT, ensure_id_column, row_hashes, table_hash};
pub use jsonl::read_jsonl;
pub use normalize::{normalize_array, normalize_batch};
pub use parquet_io::{read_parquet, write_parquet};
