//! Canonical row hashes, the table hash built from them, and row keys derived from them.
//!
//! The runtime memoises row-wise work by `row_hashes`, so the hash must depend on a row's
//! values and nothing else. The encoding (version 1, documented in docs/datasets.md) is:
//! blake3 in derive-key mode with context `ROW_HASH_CONTEXT` over
//! `'R' u64(ncols)` then, for every column in byte order of its NAME, `str(name) value`, where
//!
//! | value | bytes |
//! | --- | --- |
//! | null | `'N'` |
//! | boolean | `'B' u8(0/1)` |
//! | any integer type | `'I' i128` (so Int32 7 and Int64 7 hash equal) |
//! | any float type | `'F' f64 bits` (f16/f32 widened exactly; every NaN as the one canonical NaN) |
//! | any string type | `'S' u64(len) bytes` |
//! | any binary type | `'Y' u64(len) bytes` |
//! | any list type | `'L' u64(n) value*` |
//! | struct | `'T' u64(nfields)` then `str(name) value` per field in byte order of name |
//! | dictionary | the value the key points at |
//!
//! with `str(s) = u64(len) bytes` and all integers little-endian. So the hash is independent
//! of batch boundaries, compression, column order, Utf8/LargeUtf8/Utf8View, List/LargeList,
//! list child names (`item`/`element`), nullability flags, integer widths and dictionary
//! encoding; it changes with any value, any column name and the set of columns.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::error::{DataError, Result};

/// blake3 derive-key context of the row hash; bump the version if the encoding changes.
pub const ROW_HASH_CONTEXT: &str = "alignflow datasets row hash v1";
const TABLE_HASH_CONTEXT: &str = "alignflow datasets table hash v1";

/// One 32-byte blake3 hash per row of `batch` (encoding in the module docs).
/// Errors name the column whose type cannot be hashed.
pub fn row_hashes(batch: &RecordBatch) -> Result<Vec<[u8; 32]>> {
    let schema = batch.schema();
    let mut order: Vec<usize> = (0..batch.num_columns()).collect();
    order.sort_by(|&a, &b| schema.field(a).name().as_bytes().cmp(schema.field(b).name().as_bytes()));
    for &c in &order {
        check_hashable(batch.column(c).data_type(), schema.field(c).name())?;
    }
    let mut buf = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        buf.clear();
        buf.push(b'R');
        put_u64(&mut buf, order.len() as u64);
        for &c in &order {
            put_str(&mut buf, schema.field(c).name().as_bytes());
            encode_value(batch.column(c).as_ref(), row, &mut buf);
        }
        let mut hasher = blake3::Hasher::new_derive_key(ROW_HASH_CONTEXT);
        hasher.update(&buf);
        out.push(*hasher.finalize().as_bytes());
    }
    Ok(out)
}

/// A hash of the whole table: its sorted column names and its row hashes in row order.
/// Equal for the same rows in the same order however the table was batched or stored.
pub fn table_hash(batch: &RecordBatch) -> Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new_derive_key(TABLE_HASH_CONTEXT);
    let schema = batch.schema();
    let mut names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.sort_unstable();
    let mut head = Vec::new();
    put_u64(&mut head, names.len() as u64);
    for n in names {
        put_str(&mut head, n.as_bytes());
    }
    put_u64(&mut head, batch.num_rows() as u64);
    hasher.update(&head);
    for h in row_hashes(batch)? {
        hasher.update(&h);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Returns `batch` with a unique, non-null `Utf8` row key column `id`.
///
/// - An existing `Utf8` `id` column is checked (no nulls, no duplicates) and kept in place.
/// - An existing integer `id` column is converted to decimal strings.
/// - Without one, `id` is derived from the row hash: the first 8 bytes in lower-case hex
///   (16 characters). A repeated row gets `-2`, `-3`, ... appended in order of appearance, so
///   appending rows never changes earlier rows' ids. The new column is placed first.
pub fn ensure_id_column(batch: &RecordBatch, table: &str) -> Result<RecordBatch> {
    let schema = batch.schema();
    match schema.index_of("id") {
        Ok(idx) => {
            let ids = id_strings(batch.column(idx), table)?;
            check_unique(&ids, table)?;
            let mut columns = batch.columns().to_vec();
            columns[idx] = Arc::new(StringArray::from(ids));
            let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[idx] = Field::new("id", DataType::Utf8, false);
            rebuild(fields, columns, schema.as_ref(), table)
        }
        Err(_) => {
            let hashes = row_hashes(batch).map_err(|e| retable(e, table))?;
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut ids = Vec::with_capacity(hashes.len());
            for h in &hashes {
                let base: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
                let n = seen.entry(base.clone()).or_insert(0);
                *n += 1;
                ids.push(if *n == 1 { base } else { format!("{base}-{n}") });
            }
            let mut fields = vec![Field::new("id", DataType::Utf8, false)];
            fields.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
            let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ids))];
            columns.extend(batch.columns().iter().cloned());
            rebuild(fields, columns, schema.as_ref(), table)
        }
    }
}

fn retable(e: DataError, table: &str) -> DataError {
    match e {
        DataError::Unsupported { column, data_type, .. } => {
            DataError::Unsupported { table: table.to_string(), column, data_type }
        }
        other => other,
    }
}

fn rebuild(fields: Vec<Field>, columns: Vec<ArrayRef>, old: &Schema, table: &str) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new_with_metadata(fields, old.metadata().clone()));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| DataError::arrow(format!("table `{table}`: add id column"), e))
}

fn id_strings(col: &ArrayRef, table: &str) -> Result<Vec<String>> {
    let null = |row| DataError::BadValue {
        table: table.to_string(),
        column: "id".to_string(),
        row,
        msg: "null row key".to_string(),
    };
    let mut out = Vec::with_capacity(col.len());
    for row in 0..col.len() {
        if col.is_null(row) {
            return Err(null(row));
        }
        let s = match col.data_type() {
            DataType::Utf8 => col.as_string::<i32>().value(row).to_string(),
            DataType::LargeUtf8 => col.as_string::<i64>().value(row).to_string(),
            DataType::Utf8View => col.as_string_view().value(row).to_string(),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8
            | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                integer_at(col.as_ref(), row).to_string()
            }
            other => {
                return Err(DataError::ColumnType {
                    table: table.to_string(),
                    column: "id".to_string(),
                    found: other.to_string(),
                    expected: "Utf8 or an integer type".to_string(),
                });
            }
        };
        out.push(s);
    }
    Ok(out)
}

fn check_unique(ids: &[String], table: &str) -> Result<()> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(prev) = first.insert(id.as_str(), row) {
            return Err(DataError::BadValue {
                table: table.to_string(),
                column: "id".to_string(),
                row,
                msg: format!("duplicate row key {id:?} (first at row {prev})"),
            });
        }
    }
    Ok(())
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s);
}

/// Rejects types the encoding does not cover, before any row is hashed.
fn check_hashable(dt: &DataType, column: &str) -> Result<()> {
    let ok = |inner: &DataType| check_hashable(inner, column);
    match dt {
        DataType::Null | DataType::Boolean | DataType::Int8 | DataType::Int16 | DataType::Int32
        | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32
        | DataType::UInt64 | DataType::Float16 | DataType::Float32 | DataType::Float64
        | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Binary
        | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => Ok(()),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => ok(f.data_type()),
        DataType::Struct(fields) => fields.iter().try_for_each(|f| ok(f.data_type())),
        DataType::Dictionary(_, v) => ok(v),
        other => Err(DataError::Unsupported {
            table: String::from("(row hash)"),
            column: column.to_string(),
            data_type: other.to_string(),
        }),
    }
}

fn integer_at(a: &dyn Array, i: usize) -> i128 {
    match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i) as i128,
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i) as i128,
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i) as i128,
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i) as i128,
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i) as i128,
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i) as i128,
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i) as i128,
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i) as i128,
        _ => unreachable!("integer_at is only called on integer types"),
    }
}

fn put_float(buf: &mut Vec<u8>, v: f64) {
    buf.push(b'F');
    let bits = if v.is_nan() { f64::NAN.to_bits() } else { v.to_bits() };
    buf.extend_from_slice(&bits.to_le_bytes());
}

/// Appends the encoding of `a[i]`. Types were checked by `check_hashable`.
fn encode_value(a: &dyn Array, i: usize, buf: &mut Vec<u8>) {
    if matches!(a.data_type(), DataType::Null) || a.is_null(i) {
        buf.push(b'N');
        return;
    }
    match a.data_type() {
        DataType::Boolean => {
            buf.push(b'B');
            buf.push(a.as_boolean().value(i) as u8);
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8
        | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            buf.push(b'I');
            buf.extend_from_slice(&integer_at(a, i).to_le_bytes());
        }
        DataType::Float16 => put_float(buf, a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => put_float(buf, a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => put_float(buf, a.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => put_tagged(buf, b'S', a.as_string::<i32>().value(i).as_bytes()),
        DataType::LargeUtf8 => put_tagged(buf, b'S', a.as_string::<i64>().value(i).as_bytes()),
        DataType::Utf8View => put_tagged(buf, b'S', a.as_string_view().value(i).as_bytes()),
        DataType::Binary => put_tagged(buf, b'Y', a.as_binary::<i32>().value(i)),
        DataType::LargeBinary => put_tagged(buf, b'Y', a.as_binary::<i64>().value(i)),
        DataType::BinaryView => put_tagged(buf, b'Y', a.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => put_tagged(buf, b'Y', a.as_fixed_size_binary().value(i)),
        DataType::List(_) => encode_list(a.as_list::<i32>().value(i).as_ref(), buf),
        DataType::LargeList(_) => encode_list(a.as_list::<i64>().value(i).as_ref(), buf),
        DataType::FixedSizeList(_, _) => encode_list(a.as_fixed_size_list().value(i).as_ref(), buf),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            let mut order: Vec<usize> = (0..fields.len()).collect();
            order.sort_by(|&x, &y| fields[x].name().as_bytes().cmp(fields[y].name().as_bytes()));
            buf.push(b'T');
            put_u64(buf, fields.len() as u64);
            for f in order {
                put_str(buf, fields[f].name().as_bytes());
                encode_value(s.column(f).as_ref(), i, buf);
            }
        }
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            // Keys are an integer array; a valid dictionary's keys are non-negative indices.
            let key = integer_at(d.keys(), i) as usize;
            encode_value(d.values().as_ref(), key, buf);
        }
        _ => unreachable!("check_hashable admits only the types above"),
    }
}

fn put_tagged(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    put_str(buf, bytes);
}

fn encode_list(items: &dyn Array, buf: &mut Vec<u8>) {
    buf.push(b'L');
    put_u64(buf, items.len() as u64);
    for j in 0..items.len() {
        encode_value(items, j, buf);
    }
}
