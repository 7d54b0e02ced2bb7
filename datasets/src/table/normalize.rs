//! Type normalisation on read. Files from other tools spell the same logical column in
//! several physical ways: `LargeUtf8` or `Utf8View` strings (Polars), `LargeList` lists, list
//! children named `item` (arrow-rs) or `element` (pyarrow, Spark), dictionary-encoded strings
//! (pandas categoricals). Everything downstream sees one canonical form instead:
//! `Utf8`, `Binary`, `List` with a child named `element`, dictionaries decoded, recursively
//! inside lists and structs. Other types pass through unchanged.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, FieldRef, Fields, Schema};

use crate::error::{DataError, Result};

/// The canonical name of a list's child field (the Parquet spec's and pyarrow's).
pub const LIST_ITEM_NAME: &str = "element";

/// Normalises every column of `batch`; `table` names the table in errors.
pub fn normalize_batch(batch: &RecordBatch, table: &str) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let array = normalize_array(col, table, field.name())?;
        fields.push(Field::new(field.name(), array.data_type().clone(), field.is_nullable())
            .with_metadata(field.metadata().clone()));
        columns.push(array);
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, batch.schema().metadata().clone()));
    RecordBatch::try_new(schema, columns)
        .map_err(|e| DataError::arrow(format!("table `{table}`: rebuild normalised batch"), e))
}

/// Normalises one array; `table` and `column` (a dotted path inside structs) name it in errors.
pub fn normalize_array(array: &ArrayRef, table: &str, column: &str) -> Result<ArrayRef> {
    let context = format!("table `{table}`, column `{column}`");
    let context = context.as_str();
    let unsupported = |what: &str| DataError::Unsupported {
        table: table.to_string(),
        column: column.to_string(),
        data_type: what.to_string(),
    };
    Ok(match array.data_type() {
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            check_fits_i32(a.value_data().len(), table, column)?;
            Arc::new(a.iter().collect::<StringArray>())
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Arc::new(a.iter().collect::<StringArray>())
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            check_fits_i32(a.value_data().len(), table, column)?;
            Arc::new(a.iter().collect::<BinaryArray>())
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            Arc::new(a.iter().collect::<BinaryArray>())
        }
        DataType::List(item) => {
            let a = array.as_list::<i32>();
            let values = normalize_array(a.values(), table, column)?;
            let field = element_field(item, values.data_type());
            Arc::new(
                ListArray::try_new(field, a.offsets().clone(), values, a.nulls().cloned())
                    .map_err(|e| DataError::arrow(format!("{context}: normalise list"), e))?,
            )
        }
        DataType::LargeList(item) => {
            let a = array.as_list::<i64>();
            let values = normalize_array(a.values(), table, column)?;
            let mut offsets = Vec::with_capacity(a.offsets().len());
            for &o in a.offsets().iter() {
                offsets.push(i32::try_from(o).map_err(|_| unsupported("LargeList over 2^31 values"))?);
            }
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            let field = element_field(item, values.data_type());
            Arc::new(
                ListArray::try_new(field, offsets, values, a.nulls().cloned())
                    .map_err(|e| DataError::arrow(format!("{context}: normalise large list"), e))?,
            )
        }
        DataType::Struct(fields) => {
            let a = array.as_struct();
            let mut new_fields = Vec::with_capacity(fields.len());
            let mut new_cols = Vec::with_capacity(fields.len());
            for (f, c) in fields.iter().zip(a.columns()) {
                let c = normalize_array(c, table, &format!("{column}.{}", f.name()))?;
                new_fields.push(Field::new(f.name(), c.data_type().clone(), f.is_nullable()));
                new_cols.push(c);
            }
            Arc::new(
                StructArray::try_new(Fields::from(new_fields), new_cols, a.nulls().cloned())
                    .map_err(|e| DataError::arrow(format!("{context}: normalise struct"), e))?,
            )
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let keys = dict.normalized_keys();
            let indices = arrow_array::UInt32Array::from_iter(
                (0..array.len()).map(|i| (!array.is_null(i)).then(|| keys[i] as u32)),
            );
            let decoded = arrow_select::take::take(dict.values().as_ref(), &indices, None)
                .map_err(|e| DataError::arrow(format!("{context}: decode dictionary"), e))?;
            normalize_array(&decoded, table, column)?
        }
        _ => array.clone(),
    })
}

/// A list child field named `element`, keeping the source child's nullability.
fn element_field(source: &FieldRef, data_type: &DataType) -> FieldRef {
    Arc::new(Field::new(LIST_ITEM_NAME, data_type.clone(), source.is_nullable()))
}

fn check_fits_i32(bytes: usize, table: &str, column: &str) -> Result<()> {
    if bytes > i32::MAX as usize {
        return Err(DataError::Unsupported {
            table: table.to_string(),
            column: column.to_string(),
            data_type: format!("string data of {bytes} bytes in one batch (over 2 GiB)"),
        });
    }
    Ok(())
}
