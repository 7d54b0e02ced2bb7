//! The Arrow schemas of alignflow's tables, one function per table kind, plus the row types
//! and builders that produce batches of exactly those schemas. docs/datasets.md describes
//! every column. Every table has a unique, non-null `Utf8` row key `id` first.
//!
//! List children are named `element` (the Parquet spec's name, which `write_parquet` also
//! writes), so a table built here equals the same table read back from disk.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int32Builder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};

use crate::error::{DataError, Result};
use crate::table::{self, str_values};

/// One chat message, as in TRL's `messages` column and Hugging Face chat templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn element(dt: DataType) -> FieldRef {
    Arc::new(Field::new("element", dt, false))
}

/// `List<Int32>` with non-null items: token ids.
pub fn i32_list_type() -> DataType {
    DataType::List(element(DataType::Int32))
}

/// `List<Boolean>` with non-null items: loss masks.
pub fn bool_list_type() -> DataType {
    DataType::List(element(DataType::Boolean))
}

fn message_fields() -> Fields {
    Fields::from(vec![utf8("role"), utf8("content")])
}

/// `List<Struct<role: Utf8, content: Utf8>>`: TRL's `messages`.
pub fn messages_type() -> DataType {
    DataType::List(element(DataType::Struct(message_fields())))
}

/// Prompt tables (`rl_prompts`, `preference_prompts`, `eval`, `eval_borderline`):
/// `id, category, is_safety, prompt, judge` (judge = JSON for the gold judge, see `judge`).
pub fn prompts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("category"),
        Field::new("is_safety", DataType::Boolean, false),
        utf8("prompt"),
        utf8("judge"),
    ]))
}

/// SFT demonstrations: `id, category, is_safety, messages, quality`
/// (quality: `good`, `filler`, `badly_formed`, `false_refusal` or `unsafe_compliance`).
pub fn sft_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("category"),
        Field::new("is_safety", DataType::Boolean, false),
        Field::new("messages", messages_type(), false),
        utf8("quality"),
    ]))
}

/// Pretraining text: `id, kind (qa | fact), text`.
pub fn pretrain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![utf8("id"), utf8("kind"), utf8("text")]))
}

/// Tokenized rows: `id, input_ids: List<Int32>` and, if `with_loss_mask`, `loss_mask: List<Boolean>`
/// (one flag per token, true where the loss counts).
pub fn tokenized_schema(with_loss_mask: bool) -> SchemaRef {
    let mut fields = vec![utf8("id"), Field::new("input_ids", i32_list_type(), false)];
    if with_loss_mask {
        fields.push(Field::new("loss_mask", bool_list_type(), false));
    }
    Arc::new(Schema::new(fields))
}

/// Preference pairs (Llama 2 §3.2.1): `id, prompt_id, prompt, chosen, rejected, rating,
/// margin_level, track, safety_bin, chosen_score, rejected_score, annotator, split`.
/// `margin_level` is 3, 2, 1, 0 for the four ratings (the paper's large margin table; the small
/// one is `margin_level / 3`). `safety_bin` is always filled (see `annotate::SafetyBin`).
pub fn preference_pairs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("prompt_id"),
        utf8("prompt"),
        utf8("chosen"),
        utf8("rejected"),
        utf8("rating"),
        Field::new("margin_level", DataType::Int32, false),
        utf8("track"),
        utf8("safety_bin"),
        Field::new("chosen_score", DataType::Float32, false),
        Field::new("rejected_score", DataType::Float32, false),
        utf8("annotator"),
        utf8("split"),
    ]))
}

/// Logical type equality: list child names and nullability are ignored, recursively.
fn same_logical_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => same_logical_type(x.data_type(), y.data_type()),
        (DataType::Struct(xs), DataType::Struct(ys)) => {
            xs.len() == ys.len()
                && xs.iter().zip(ys.iter()).all(|(x, y)| {
                    x.name() == y.name() && same_logical_type(x.data_type(), y.data_type())
                })
        }
        _ => a == b,
    }
}

/// Checks that `batch` has every column of `expected` with the same logical type (list child
/// names and nullability ignored; extra columns allowed). Call it on normalised batches.
pub fn check_schema(batch: &RecordBatch, expected: &Schema, table: &str) -> Result<()> {
    for f in expected.fields() {
        let col = table::column(batch, f.name(), table)?;
        if !same_logical_type(col.data_type(), f.data_type()) {
            return Err(DataError::ColumnType {
                table: table.to_string(),
                column: f.name().clone(),
                found: col.data_type().to_string(),
                expected: f.data_type().to_string(),
            });
        }
    }
    Ok(())
}

/// Builds a `messages` column from one conversation per row.
pub fn messages_array(rows: &[Vec<ChatMessage>]) -> ArrayRef {
    let DataType::List(item) = messages_type() else { unreachable!("messages_type is a List") };
    let mut b = ListBuilder::new(StructBuilder::from_fields(message_fields(), 0)).with_field(item);
    for conv in rows {
        for m in conv {
            let s = b.values();
            append_str(s, 0, &m.role);
            append_str(s, 1, &m.content);
            s.append(true);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn append_str(s: &mut StructBuilder, field: usize, value: &str) {
    s.field_builder::<StringBuilder>(field)
        .expect("message fields are both Utf8 (built by message_fields)")
        .append_value(value);
}

/// Builds a `List<Int32>` column (non-null items) from one token list per row.
pub fn i32_list_array(rows: &[Vec<i32>]) -> ArrayRef {
    let mut b = ListBuilder::new(Int32Builder::new()).with_field(element(DataType::Int32));
    for r in rows {
        b.append_value(r.iter().map(|&v| Some(v)));
    }
    Arc::new(b.finish())
}

/// Builds a `List<Boolean>` column (non-null items) from one mask per row.
pub fn bool_list_array(rows: &[Vec<bool>]) -> ArrayRef {
    let mut b = ListBuilder::new(BooleanBuilder::new()).with_field(element(DataType::Boolean));
    for r in rows {
        b.append_value(r.iter().map(|&v| Some(v)));
    }
    Arc::new(b.finish())
}

fn strings<T>(rows: &[T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>, table: &str) -> Result<RecordBatch> {
    RecordBatch::try_new(schema, columns).map_err(|e| DataError::arrow(format!("table `{table}`: build"), e))
}

/// One row of a prompt table.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRow {
    pub id: String,
    pub category: String,
    pub is_safety: bool,
    pub prompt: String,
    /// JSON text of a `judge::JudgeSpec`.
    pub judge: String,
}

/// A prompt table from rows.
pub fn prompts_batch(rows: &[PromptRow], table: &str) -> Result<RecordBatch> {
    batch(
        prompts_schema(),
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.category),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.is_safety).collect::<Vec<_>>())),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.judge),
        ],
        table,
    )
}

/// The rows of a prompt table (checked against `prompts_schema`).
pub fn prompt_rows(batch: &RecordBatch, table: &str) -> Result<Vec<PromptRow>> {
    check_schema(batch, &prompts_schema(), table)?;
    let ids = str_values(batch, "id", table)?;
    let cats = str_values(batch, "category", table)?;
    let safety = table::bool_column(batch, "is_safety", table)?;
    let prompts = str_values(batch, "prompt", table)?;
    let judges = str_values(batch, "judge", table)?;
    Ok((0..batch.num_rows())
        .map(|i| PromptRow {
            id: ids[i].to_string(),
            category: cats[i].to_string(),
            is_safety: safety.value(i),
            prompt: prompts[i].to_string(),
            judge: judges[i].to_string(),
        })
        .collect())
}

/// One SFT demonstration.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRow {
    pub id: String,
    pub category: String,
    pub is_safety: bool,
    pub messages: Vec<ChatMessage>,
    pub quality: String,
}

/// An SFT table from rows.
pub fn sft_batch(rows: &[SftRow], table: &str) -> Result<RecordBatch> {
    let conversations: Vec<Vec<ChatMessage>> = rows.iter().map(|r| r.messages.clone()).collect();
    batch(
        sft_schema(),
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.category),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.is_safety).collect::<Vec<_>>())),
            messages_array(&conversations),
            strings(rows, |r| &r.quality),
        ],
        table,
    )
}

/// One pretraining document.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainRow {
    pub id: String,
    /// `qa` or `fact`.
    pub kind: String,
    pub text: String,
}

/// A pretraining table from rows.
pub fn pretrain_batch(rows: &[PretrainRow], table: &str) -> Result<RecordBatch> {
    batch(
        pretrain_schema(),
        vec![strings(rows, |r| &r.id), strings(rows, |r| &r.kind), strings(rows, |r| &r.text)],
        table,
    )
}

/// A tokenized table: `ids[i]` owns `input_ids[i]` and, if given, `loss_mask[i]` (same length).
pub fn tokenized_batch(
    ids: &[String],
    input_ids: &[Vec<i32>],
    loss_mask: Option<&[Vec<bool>]>,
    table: &str,
) -> Result<RecordBatch> {
    let bad = |row: usize, msg: String| DataError::BadValue {
        table: table.to_string(),
        column: "loss_mask".to_string(),
        row,
        msg,
    };
    if ids.len() != input_ids.len() {
        return Err(DataError::BadValue {
            table: table.to_string(),
            column: "input_ids".to_string(),
            row: ids.len().min(input_ids.len()),
            msg: format!("{} ids but {} token lists", ids.len(), input_ids.len()),
        });
    }
    let mut columns = vec![strings(ids, |s| s.as_str()), i32_list_array(input_ids)];
    if let Some(mask) = loss_mask {
        if mask.len() != ids.len() {
            return Err(bad(mask.len().min(ids.len()), format!("{} masks for {} rows", mask.len(), ids.len())));
        }
        for (row, (m, t)) in mask.iter().zip(input_ids).enumerate() {
            if m.len() != t.len() {
                return Err(bad(row, format!("mask of {} flags for {} tokens", m.len(), t.len())));
            }
        }
        columns.push(bool_list_array(mask));
    }
    batch(tokenized_schema(loss_mask.is_some()), columns, table)
}

/// One preference pair (column meanings in `preference_pairs_schema`).
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePairRow {
    pub id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub rating: String,
    pub margin_level: i32,
    pub track: String,
    pub safety_bin: String,
    pub chosen_score: f32,
    pub rejected_score: f32,
    pub annotator: String,
    pub split: String,
}

/// A preference-pair table from rows.
pub fn preference_pairs_batch(rows: &[PreferencePairRow], table: &str) -> Result<RecordBatch> {
    batch(
        preference_pairs_schema(),
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.prompt_id),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.chosen),
            strings(rows, |r| &r.rejected),
            strings(rows, |r| &r.rating),
            Arc::new(Int32Array::from(rows.iter().map(|r| r.margin_level).collect::<Vec<_>>())),
            strings(rows, |r| &r.track),
            strings(rows, |r| &r.safety_bin),
            Arc::new(Float32Array::from(rows.iter().map(|r| r.chosen_score).collect::<Vec<_>>())),
            Arc::new(Float32Array::from(rows.iter().map(|r| r.rejected_score).collect::<Vec<_>>())),
            strings(rows, |r| &r.annotator),
            strings(rows, |r| &r.split),
        ],
        table,
    )
}
