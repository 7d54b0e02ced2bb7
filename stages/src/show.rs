//! `alignflow show`: a plain-text look at an artifact directory (or a Parquet file): the first
//! rows of a table, a tokenizer's size and first tokens, a report's JSON, a model's files.

use std::fmt::Write as _;
use std::path::Path;

use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray, StructArray};
use graph::StageError;

/// Renders the artifact at `path`, at most `rows` rows for tables.
pub fn render(path: &Path, rows: usize) -> Result<String, StageError> {
    let table = if path.is_dir() { path.join("table.parquet") } else { path.to_path_buf() };
    if table.extension().is_some_and(|e| e == "parquet") && table.is_file() {
        let batch = datasets::table::read_parquet(&table).map_err(|e| StageError::wrap("reading the table", e))?;
        return Ok(render_table(&batch, rows));
    }
    let tok = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
    if tok.file_name().is_some_and(|n| n == "tokenizer.json") && tok.is_file() {
        let t = kernels::tokenizer::Tokenizer::from_file(&tok).map_err(|e| StageError::wrap("reading the tokenizer", e))?;
        let first: Vec<String> = (0..t.vocab_size().min(rows.max(1) * 4) as u32).filter_map(|i| t.id_to_token(i)).map(|s| format!("{s:?}")).collect();
        return Ok(format!("tokenizer: {} tokens\nfirst tokens: {}\n", t.vocab_size(), first.join(" ")));
    }
    let report = path.join("report.json");
    if report.is_file() {
        return std::fs::read_to_string(&report).map_err(|source| StageError::Io { path: report, source });
    }
    if path.is_dir() {
        let mut out = format!("{}:\n", path.display());
        let mut names: Vec<_> = std::fs::read_dir(path).map_err(|source| StageError::Io { path: path.to_path_buf(), source })?.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = writeln!(out, "  {}  {len} bytes", e.file_name().to_string_lossy());
        }
        return Ok(out);
    }
    Err(StageError::Message(format!("{}: not an artifact (no table.parquet, tokenizer.json or report.json)", path.display())))
}

fn render_table(batch: &arrow_array::RecordBatch, rows: usize) -> String {
    let schema = batch.schema();
    let mut out = format!("{} rows; columns: {}\n", batch.num_rows(), schema.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", "));
    for r in 0..batch.num_rows().min(rows) {
        let _ = writeln!(out, "--- row {r}");
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            let _ = writeln!(out, "  {}: {}", f.name(), cell(col, r, 200));
        }
    }
    out
}

/// One value as short text; long values are cut at `max` characters.
fn cell(col: &ArrayRef, r: usize, max: usize) -> String {
    if col.is_null(r) {
        return "null".into();
    }
    let any = col.as_any();
    let s = if let Some(a) = any.downcast_ref::<StringArray>() {
        format!("{:?}", a.value(r))
    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
        a.value(r).to_string()
    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
        a.value(r).to_string()
    } else if let Some(a) = any.downcast_ref::<Float32Array>() {
        a.value(r).to_string()
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        a.value(r).to_string()
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        a.value(r).to_string()
    } else if let Some(a) = any.downcast_ref::<ListArray>() {
        let v = a.value(r);
        let items: Vec<String> = (0..v.len()).map(|i| cell(&v, i, max)).collect();
        format!("[{}] ({} items)", items.join(", "), v.len())
    } else if let Some(a) = any.downcast_ref::<StructArray>() {
        let names = a.column_names();
        let parts: Vec<String> = names.iter().zip(a.columns()).map(|(n, c)| format!("{n}={}", cell(c, r, max))).collect();
        format!("{{{}}}", parts.join(" "))
    } else {
        format!("<{}>", col.data_type())
    };
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}
