//! The crate's one error type. Every variant carries the context a user needs to find the
//! problem without a debugger: the file and line for input files, the table and column for
//! schema problems, the row for bad values. Library code never panics on bad input; it
//! returns one of these.

use std::path::PathBuf;

/// Everything that can go wrong while reading, writing, checking or generating tables.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, created or read.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The Parquet reader or writer failed on this file.
    #[error("{}: parquet {op}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow operation failed; `context` says which table and operation.
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// A JSONL line is not valid JSON or not a JSON object.
    #[error("{}:{line}: {msg}", path.display())]
    JsonLine { path: PathBuf, line: usize, msg: String },

    /// A JSONL field has a value whose type conflicts with the type inferred from earlier lines.
    #[error("{}:{line}: field `{field}`: {msg}", path.display())]
    JsonField { path: PathBuf, line: usize, field: String, msg: String },

    /// A column the caller needs is absent.
    #[error("table `{table}`: missing column `{column}` (columns present: {present})")]
    MissingColumn { table: String, column: String, present: String },

    /// A column exists but has the wrong Arrow type.
    #[error("table `{table}`: column `{column}` has type {found}, expected {expected}")]
    ColumnType { table: String, column: String, found: String, expected: String },

    /// A value in a column is invalid (null where not allowed, duplicate key, unparsable JSON, ...).
    #[error("table `{table}`: column `{column}`, row {row}: {msg}")]
    BadValue { table: String, column: String, row: usize, msg: String },

    /// A column type that row hashing or normalisation does not support.
    #[error("table `{table}`: column `{column}`: unsupported type {data_type}")]
    Unsupported { table: String, column: String, data_type: String },

    /// A configuration value is out of range.
    #[error("invalid setting `{setting}`: {msg}")]
    Config { setting: String, msg: String },
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// Wraps an Arrow error with the table and operation it came from.
    pub fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        DataError::Arrow { context: context.into(), source }
    }
}
