//! Typed column accessors. Stages read columns by name; a missing column, a column of the
//! wrong type or a null where a value is required becomes a `DataError` naming the table,
//! the column and (for values) the row, never a panic or an `unwrap` on a downcast.
//! The accessors expect the canonical types that `read_parquet`/`normalize_batch` produce
//! (`Utf8`, `List` with any child name).

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray,
};
use arrow_schema::DataType;

use crate::error::{DataError, Result};
use crate::schema::ChatMessage;

/// The column `name` of `batch`, or `MissingColumn` naming `table` and the columns present.
pub fn column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| DataError::MissingColumn {
        table: table.to_string(),
        column: name.to_string(),
        present: batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn type_error(table: &str, name: &str, found: &DataType, expected: &str) -> DataError {
    DataError::ColumnType {
        table: table.to_string(),
        column: name.to_string(),
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

fn null_error(table: &str, name: &str, row: usize) -> DataError {
    DataError::BadValue {
        table: table.to_string(),
        column: name.to_string(),
        row,
        msg: "null where a value is required".to_string(),
    }
}

/// A `Utf8` column.
pub fn str_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a StringArray> {
    let c = column(batch, name, table)?;
    c.as_string_opt::<i32>().ok_or_else(|| type_error(table, name, c.data_type(), "Utf8"))
}

/// A `Utf8` column as `&str` per row; a null is an error naming the row.
pub fn str_values<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<Vec<&'a str>> {
    let c = str_column(batch, name, table)?;
    (0..c.len())
        .map(|i| if c.is_null(i) { Err(null_error(table, name, i)) } else { Ok(c.value(i)) })
        .collect()
}

/// A `Boolean` column.
pub fn bool_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a BooleanArray> {
    let c = column(batch, name, table)?;
    c.as_boolean_opt().ok_or_else(|| type_error(table, name, c.data_type(), "Boolean"))
}

/// An `Int32` column.
pub fn i32_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a Int32Array> {
    let c = column(batch, name, table)?;
    c.as_primitive_opt::<Int32Type>().ok_or_else(|| type_error(table, name, c.data_type(), "Int32"))
}

/// An `Int64` column.
pub fn i64_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a Int64Array> {
    let c = column(batch, name, table)?;
    c.as_primitive_opt::<Int64Type>().ok_or_else(|| type_error(table, name, c.data_type(), "Int64"))
}

/// A `Float32` column.
pub fn f32_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a Float32Array> {
    let c = column(batch, name, table)?;
    c.as_primitive_opt::<Float32Type>()
        .ok_or_else(|| type_error(table, name, c.data_type(), "Float32"))
}

/// A `Float64` column.
pub fn f64_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a Float64Array> {
    let c = column(batch, name, table)?;
    c.as_primitive_opt::<Float64Type>()
        .ok_or_else(|| type_error(table, name, c.data_type(), "Float64"))
}

/// A `List` column (any child type and name).
pub fn list_column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a ListArray> {
    let c = column(batch, name, table)?;
    c.as_list_opt::<i32>().ok_or_else(|| type_error(table, name, c.data_type(), "List"))
}

/// A `List<Int32>` column (token ids) as one `Vec<i32>` per row; null lists or null items are
/// errors naming the row.
pub fn i32_lists(batch: &RecordBatch, name: &str, table: &str) -> Result<Vec<Vec<i32>>> {
    let lists = list_column(batch, name, table)?;
    if lists.value_type() != DataType::Int32 {
        return Err(type_error(table, name, lists.data_type(), "List<Int32>"));
    }
    let mut out = Vec::with_capacity(lists.len());
    for row in 0..lists.len() {
        if lists.is_null(row) {
            return Err(null_error(table, name, row));
        }
        let v = lists.value(row);
        let v = v.as_primitive::<Int32Type>();
        if v.null_count() > 0 {
            return Err(DataError::BadValue {
                table: table.to_string(),
                column: name.to_string(),
                row,
                msg: "null token id inside the list".to_string(),
            });
        }
        out.push(v.values().to_vec());
    }
    Ok(out)
}

/// A `List<Struct<role: Utf8, content: Utf8>>` column (TRL's `messages`) as one conversation
/// per row. Extra struct fields are ignored; a missing `role`/`content` or a null is an error.
pub fn messages_values(batch: &RecordBatch, name: &str, table: &str) -> Result<Vec<Vec<ChatMessage>>> {
    let expected = "List<Struct<role: Utf8, content: Utf8>>";
    let lists = list_column(batch, name, table)?;
    let DataType::Struct(fields) = lists.value_type() else {
        return Err(type_error(table, name, lists.data_type(), expected));
    };
    let find = |f: &str| fields.iter().position(|x| x.name() == f && x.data_type() == &DataType::Utf8);
    let (Some(ri), Some(ci)) = (find("role"), find("content")) else {
        return Err(type_error(table, name, lists.data_type(), expected));
    };
    let mut out = Vec::with_capacity(lists.len());
    for row in 0..lists.len() {
        if lists.is_null(row) {
            return Err(null_error(table, name, row));
        }
        let conv = lists.value(row);
        let conv = conv.as_struct();
        let roles = conv.column(ri).as_string::<i32>();
        let contents = conv.column(ci).as_string::<i32>();
        let mut messages = Vec::with_capacity(conv.len());
        for m in 0..conv.len() {
            if conv.is_null(m) || roles.is_null(m) || contents.is_null(m) {
                return Err(DataError::BadValue {
                    table: table.to_string(),
                    column: name.to_string(),
                    row,
                    msg: format!("message {m} is null or lacks role/content"),
                });
            }
            messages.push(ChatMessage::new(roles.value(m), contents.value(m)));
        }
        out.push(messages);
    }
    Ok(out)
}
