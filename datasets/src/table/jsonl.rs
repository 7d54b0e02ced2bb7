//! JSON Lines files as tables. One JSON object per line (blank lines skipped). The schema is
//! inferred over ALL lines, not the first few: a field's type is the join of what every line
//! holds, in this small lattice:
//!
//! - `null` joins with anything (the column becomes nullable);
//! - integers join with floats as `Float64`; integers alone are `Int64`;
//! - strings are `Utf8`, booleans `Boolean`;
//! - arrays are `List<element>` of the join of all their elements;
//! - objects are `Struct` with the union of their keys (first-seen order), each nullable,
//!   which makes a list of `{role, content}` objects TRL's `messages` column.
//!
//! A field that is null on every line becomes a null `Utf8` column. Any other conflict
//! (a string where earlier lines had a number, ...) is an error naming the file, the line
//! and the field path (`messages[].content`). Column order is first appearance.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch,
    RecordBatchOptions, StringArray, StructArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{Field, Fields, Schema};
use serde_json::{Map, Value};

use super::normalize::LIST_ITEM_NAME;
use crate::error::{DataError, Result};

/// The inferred type of a JSON field.
#[derive(Clone, Debug, PartialEq)]
enum JType {
    Null,
    Bool,
    Int,
    Float,
    Str,
    List(Box<JType>),
    Struct(Vec<(String, JType)>),
}

impl JType {
    fn name(&self) -> String {
        match self {
            JType::Null => "null".into(),
            JType::Bool => "boolean".into(),
            JType::Int => "integer".into(),
            JType::Float => "number".into(),
            JType::Str => "string".into(),
            JType::List(t) => format!("array of {}", t.name()),
            JType::Struct(_) => "object".into(),
        }
    }
}

/// A type conflict found while joining: the path inside the field and a message.
struct Conflict {
    path: String,
    msg: String,
}

fn infer(v: &Value) -> std::result::Result<JType, Conflict> {
    Ok(match v {
        Value::Null => JType::Null,
        Value::Bool(_) => JType::Bool,
        Value::Number(n) if n.is_i64() => JType::Int,
        Value::Number(_) => JType::Float,
        Value::String(_) => JType::Str,
        Value::Array(items) => {
            let mut t = JType::Null;
            for (k, item) in items.iter().enumerate() {
                let it = infer(item).map_err(|c| Conflict { path: format!("[{k}]{}", c.path), ..c })?;
                t = join(&t, &it).map_err(|c| Conflict {
                    path: format!("[{k}]{}", c.path),
                    msg: format!("{} (earlier elements of this array differ)", c.msg),
                })?;
            }
            JType::List(Box::new(t))
        }
        Value::Object(map) => {
            let mut fields = Vec::with_capacity(map.len());
            for (k, v) in map {
                let t = infer(v).map_err(|c| Conflict { path: format!(".{k}{}", c.path), ..c })?;
                fields.push((k.clone(), t));
            }
            JType::Struct(fields)
        }
    })
}

/// The least type holding both, or the conflict.
fn join(a: &JType, b: &JType) -> std::result::Result<JType, Conflict> {
    use JType::*;
    Ok(match (a, b) {
        (Null, t) | (t, Null) => t.clone(),
        (Int, Float) | (Float, Int) => Float,
        (x, y) if x == y && !matches!(x, List(_) | Struct(_)) => x.clone(),
        (List(x), List(y)) => {
            List(Box::new(join(x, y).map_err(|c| Conflict { path: format!("[]{}", c.path), ..c })?))
        }
        (Struct(xs), Struct(ys)) => {
            let mut out = xs.clone();
            for (k, yt) in ys {
                match out.iter_mut().find(|(name, _)| name == k) {
                    Some((_, xt)) => {
                        *xt = join(xt, yt).map_err(|c| Conflict { path: format!(".{k}{}", c.path), ..c })?
                    }
                    None => out.push((k.clone(), yt.clone())),
                }
            }
            Struct(out)
        }
        (x, y) => {
            return Err(Conflict {
                path: String::new(),
                msg: format!("found {} where earlier values were {}", y.name(), x.name()),
            });
        }
    })
}

/// Reads a JSON Lines file into one `RecordBatch` (schema rules in the module docs).
pub fn read_jsonl(path: &Path) -> Result<RecordBatch> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| DataError::Io { path: path.to_path_buf(), op: "read", source })?;
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    let mut columns: Vec<(String, JType)> = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::JsonLine {
            path: path.to_path_buf(),
            line: line_no,
            msg: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(DataError::JsonLine {
                path: path.to_path_buf(),
                line: line_no,
                msg: "expected a JSON object on every line".to_string(),
            });
        };
        for (k, v) in &map {
            let field_err = |c: Conflict| DataError::JsonField {
                path: path.to_path_buf(),
                line: line_no,
                field: format!("{k}{}", c.path),
                msg: c.msg,
            };
            let t = infer(v).map_err(field_err)?;
            match columns.iter_mut().find(|(name, _)| name == k) {
                Some((_, known)) => *known = join(known, &t).map_err(field_err)?,
                None => columns.push((k.clone(), t)),
            }
        }
        rows.push(map);
    }
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for (name, ty) in &columns {
        let vals: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name)).collect();
        let array = build(ty, &vals);
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)
        .map_err(|e| DataError::arrow(format!("{}: build table", path.display()), e))
}

/// Present, non-null values only.
fn present<'a>(v: &Option<&'a Value>) -> Option<&'a Value> {
    v.filter(|v| !v.is_null())
}

/// Builds the array of `ty` from one optional value per row. The values were all joined into
/// `ty`, so every present value has a matching shape.
fn build(ty: &JType, vals: &[Option<&Value>]) -> ArrayRef {
    match ty {
        JType::Null => Arc::new(StringArray::from(vec![None::<&str>; vals.len()])),
        JType::Bool => Arc::new(vals.iter().map(|v| present(v).and_then(Value::as_bool)).collect::<BooleanArray>()),
        JType::Int => Arc::new(vals.iter().map(|v| present(v).and_then(Value::as_i64)).collect::<Int64Array>()),
        JType::Float => Arc::new(vals.iter().map(|v| present(v).and_then(Value::as_f64)).collect::<Float64Array>()),
        JType::Str => Arc::new(vals.iter().map(|v| present(v).and_then(Value::as_str)).collect::<StringArray>()),
        JType::List(inner) => {
            let mut lengths = Vec::with_capacity(vals.len());
            let mut valid = Vec::with_capacity(vals.len());
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in vals {
                match present(v).and_then(Value::as_array) {
                    Some(a) => {
                        lengths.push(a.len());
                        valid.push(true);
                        items.extend(a.iter().map(Some));
                    }
                    None => {
                        lengths.push(0);
                        valid.push(false);
                    }
                }
            }
            let child = build(inner, &items);
            let field = Arc::new(Field::new(LIST_ITEM_NAME, child.data_type().clone(), true));
            Arc::new(ListArray::new(
                field,
                OffsetBuffer::from_lengths(lengths),
                child,
                Some(NullBuffer::from(valid)),
            ))
        }
        JType::Struct(fields) => {
            let objs: Vec<Option<&Map<String, Value>>> =
                vals.iter().map(|v| present(v).and_then(Value::as_object)).collect();
            let mut arrow_fields = Vec::with_capacity(fields.len());
            let mut children = Vec::with_capacity(fields.len());
            for (name, t) in fields {
                let sub: Vec<Option<&Value>> = objs.iter().map(|o| o.and_then(|o| o.get(name))).collect();
                let child = build(t, &sub);
                arrow_fields.push(Field::new(name, child.data_type().clone(), true));
                children.push(child);
            }
            let nulls = NullBuffer::from(objs.iter().map(Option::is_some).collect::<Vec<_>>());
            if arrow_fields.is_empty() {
                return Arc::new(StructArray::new_empty_fields(vals.len(), Some(nulls)));
            }
            Arc::new(StructArray::new(Fields::from(arrow_fields), children, Some(nulls)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::DataType;
    use std::io::Write;

    fn write_tmp(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn joins_int_and_float_and_nulls_over_all_lines() {
        let f = write_tmp("{\"a\": 1, \"b\": null}\n\n{\"a\": 2.5, \"b\": \"x\"}\n{\"c\": [1, 2]}\n");
        let b = read_jsonl(f.path()).unwrap();
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.schema().field(0).data_type(), &DataType::Float64);
        assert_eq!(b.schema().field(1).data_type(), &DataType::Utf8);
        assert!(b.column(1).is_null(0));
        assert!(b.column(2).is_null(0));
        assert!(!b.column(2).is_null(2));
    }

    #[test]
    fn conflict_names_file_line_and_nested_field() {
        let f = write_tmp(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": 3}]}\n",
        );
        let err = read_jsonl(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        assert!(err.contains("messages[].content"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn bad_json_and_non_objects_name_the_line() {
        let f = write_tmp("{\"a\": 1}\n{\"a\": \n");
        let err = read_jsonl(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("invalid JSON"), "{err}");
        let f = write_tmp("{\"a\": 1}\n\n[1, 2]\n");
        let err = read_jsonl(f.path()).unwrap_err().to_string();
        assert!(err.contains(":3:") && err.contains("object"), "{err}");
    }
}
