//! Tables of human preference annotation (docs/annotation.md): the *candidate* pairs a person
//! is shown (`collect_preferences` with `annotator = "human"` writes them; `alignflow annotate`
//! serves them) and the *answers* table the annotation server writes and `collect_preferences`
//! reads back. Both are ordinary Parquet files published atomically (temporary file in the same
//! folder, fsync, rename), so a reader never sees half a table.
//!
//! Candidates: `id, prompt_id, prompt, response_a, response_b, track, split, gold_a, gold_b`.
//! Answers: `pair_id, prompt_id, prompt, chosen, rejected, choice ("a"|"b"), rating,
//! unsafe_a, unsafe_b, safety_bin, annotator ("human"), annotator_name, answered_at_ms`; one
//! row per pair id (the server refuses a second answer to the same pair).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::annotate::{Choice, Rating, SafetyBin};
use crate::error::{DataError, Result};
use crate::schema::check_schema;
use crate::table::{bool_column, column, f32_column, i64_column, read_parquet, str_values, write_parquet};

/// The `annotator` column of every human answer and of the pairs made from them.
pub const HUMAN: &str = "human";

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// Schema of the candidate pairs shown to annotators.
pub fn candidates_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("id"),
        utf8("prompt_id"),
        utf8("prompt"),
        utf8("response_a"),
        utf8("response_b"),
        utf8("track"),
        utf8("split"),
        Field::new("gold_a", DataType::Float32, false),
        Field::new("gold_b", DataType::Float32, false),
    ]))
}

/// Schema of the human answers table.
pub fn answers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("pair_id"),
        utf8("prompt_id"),
        utf8("prompt"),
        utf8("chosen"),
        utf8("rejected"),
        utf8("choice"),
        utf8("rating"),
        Field::new("unsafe_a", DataType::Boolean, false),
        Field::new("unsafe_b", DataType::Boolean, false),
        utf8("safety_bin"),
        utf8("annotator"),
        utf8("annotator_name"),
        Field::new("answered_at_ms", DataType::Int64, false),
    ]))
}

/// One candidate pair: two responses to one prompt, in their stored (A, B) order.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateRow {
    pub id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
    /// `helpfulness` or `safety` (`unknown` for pairs loaded from other tables).
    pub track: String,
    /// `train` or `test`.
    pub split: String,
    /// Gold helpfulness of A and B (NaN when unknown); never shown to the annotator.
    pub gold_a: f32,
    pub gold_b: f32,
}

/// One human answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerRow {
    pub pair_id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub choice: Choice,
    pub rating: Rating,
    pub unsafe_a: bool,
    pub unsafe_b: bool,
    pub annotator_name: String,
    pub answered_at_ms: i64,
    /// The chosen and the rejected response's text (from the candidate pair).
    pub chosen: String,
    pub rejected: String,
}

impl AnswerRow {
    /// The Llama 2 safety bin of the answer (relative to the chosen response).
    pub fn safety_bin(&self) -> SafetyBin {
        match self.choice {
            Choice::A => SafetyBin::new(self.unsafe_a, self.unsafe_b),
            Choice::B => SafetyBin::new(self.unsafe_b, self.unsafe_a),
        }
    }
}

/// `"a"` or `"b"`.
pub fn choice_str(c: Choice) -> &'static str {
    match c {
        Choice::A => "a",
        Choice::B => "b",
    }
}

/// Parses `"a"` or `"b"`.
pub fn parse_choice(s: &str) -> Option<Choice> {
    match s {
        "a" => Some(Choice::A),
        "b" => Some(Choice::B),
        _ => None,
    }
}

fn strings<T>(rows: &[T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn build(schema: SchemaRef, columns: Vec<ArrayRef>, table: &str) -> Result<RecordBatch> {
    RecordBatch::try_new(schema, columns).map_err(|e| DataError::arrow(format!("table `{table}`: build"), e))
}

/// A candidates table from rows.
pub fn candidates_batch(rows: &[CandidateRow]) -> Result<RecordBatch> {
    build(
        candidates_schema(),
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.prompt_id),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.response_a),
            strings(rows, |r| &r.response_b),
            strings(rows, |r| &r.track),
            strings(rows, |r| &r.split),
            Arc::new(Float32Array::from(rows.iter().map(|r| r.gold_a).collect::<Vec<_>>())),
            Arc::new(Float32Array::from(rows.iter().map(|r| r.gold_b).collect::<Vec<_>>())),
        ],
        "candidates",
    )
}

/// An answers table from rows.
pub fn answers_batch(rows: &[AnswerRow]) -> Result<RecordBatch> {
    build(
        answers_schema(),
        vec![
            strings(rows, |r| &r.pair_id),
            strings(rows, |r| &r.prompt_id),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.chosen),
            strings(rows, |r| &r.rejected),
            strings(rows, |r| choice_str(r.choice)),
            strings(rows, |r| r.rating.as_str()),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.unsafe_a).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.unsafe_b).collect::<Vec<_>>())),
            strings(rows, |r| r.safety_bin().as_str()),
            strings(rows, |_| HUMAN),
            strings(rows, |r| &r.annotator_name),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.answered_at_ms).collect::<Vec<_>>())),
        ],
        "answers",
    )
}

fn bad(table: &str, column: &str, row: usize, msg: String) -> DataError {
    DataError::BadValue { table: table.to_string(), column: column.to_string(), row, msg }
}

/// Reads the pairs to show an annotator from `path`: a candidates table (`response_a`,
/// `response_b`) or a preference-pairs table (`chosen`, `rejected`; e.g. `collect.pairs` or an
/// `import_preferences` output), whose two responses are then A and B. Ids must be unique.
pub fn read_candidates(path: &Path) -> Result<Vec<CandidateRow>> {
    let batch = read_parquet(path)?;
    let table = path.display().to_string();
    let (a_col, b_col) = if column(&batch, "response_a", &table).is_ok() { ("response_a", "response_b") } else { ("chosen", "rejected") };
    let ids = str_values(&batch, "id", &table)?;
    let prompts = str_values(&batch, "prompt", &table)?;
    let a = str_values(&batch, a_col, &table)?;
    let b = str_values(&batch, b_col, &table)?;
    let opt_str = |name: &str| -> Result<Option<Vec<&str>>> {
        if column(&batch, name, &table).is_ok() { str_values(&batch, name, &table).map(Some) } else { Ok(None) }
    };
    let prompt_ids = opt_str("prompt_id")?;
    let tracks = opt_str("track")?;
    let splits = opt_str("split")?;
    let gold = |name: &str| -> Result<Option<Vec<f32>>> {
        if column(&batch, name, &table).is_ok() { Ok(Some(f32_column(&batch, name, &table)?.values().to_vec())) } else { Ok(None) }
    };
    let (ga, gb) = if a_col == "response_a" { (gold("gold_a")?, gold("gold_b")?) } else { (gold("chosen_score")?, gold("rejected_score")?) };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for i in 0..ids.len() {
        if ids[i].is_empty() {
            return Err(bad(&table, "id", i, "empty pair id".into()));
        }
        if !seen.insert(ids[i]) {
            return Err(bad(&table, "id", i, format!("duplicate pair id `{}`", ids[i])));
        }
        out.push(CandidateRow {
            id: ids[i].to_string(),
            prompt_id: prompt_ids.as_ref().map_or(ids[i], |v| v[i]).to_string(),
            prompt: prompts[i].to_string(),
            response_a: a[i].to_string(),
            response_b: b[i].to_string(),
            track: tracks.as_ref().map_or("unknown", |v| v[i]).to_string(),
            split: splits.as_ref().map_or("train", |v| v[i]).to_string(),
            gold_a: ga.as_ref().map_or(f32::NAN, |v| v[i]),
            gold_b: gb.as_ref().map_or(f32::NAN, |v| v[i]),
        });
    }
    Ok(out)
}

/// Reads a human answers table (checked against `answers_schema`). A missing file is an
/// empty table.
pub fn read_answers(path: &Path) -> Result<Vec<AnswerRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let batch = read_parquet(path)?;
    let table = path.display().to_string();
    check_schema(&batch, &answers_schema(), &table)?;
    let s = |name: &str| str_values(&batch, name, &table);
    let (pair_id, prompt_id, prompt, chosen, rejected) = (s("pair_id")?, s("prompt_id")?, s("prompt")?, s("chosen")?, s("rejected")?);
    let (choice, rating, names) = (s("choice")?, s("rating")?, s("annotator_name")?);
    let ua = bool_column(&batch, "unsafe_a", &table)?;
    let ub = bool_column(&batch, "unsafe_b", &table)?;
    let at = i64_column(&batch, "answered_at_ms", &table)?;
    let mut out = Vec::with_capacity(pair_id.len());
    for i in 0..pair_id.len() {
        out.push(AnswerRow {
            pair_id: pair_id[i].to_string(),
            prompt_id: prompt_id[i].to_string(),
            prompt: prompt[i].to_string(),
            choice: parse_choice(choice[i]).ok_or_else(|| bad(&table, "choice", i, format!("`{}` is not `a` or `b`", choice[i])))?,
            rating: Rating::parse(rating[i]).ok_or_else(|| bad(&table, "rating", i, format!("unknown rating `{}`", rating[i])))?,
            unsafe_a: ua.value(i),
            unsafe_b: ub.value(i),
            annotator_name: names[i].to_string(),
            answered_at_ms: at.value(i),
            chosen: chosen[i].to_string(),
            rejected: rejected[i].to_string(),
        });
    }
    Ok(out)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `batch` to `path` atomically: a temporary file in the same folder, fsynced, renamed
/// over `path`, then the folder fsynced. Readers see the old table or the new one, never a mix.
pub fn write_table_atomic(path: &Path, batch: &RecordBatch) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "table".into());
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    if let Err(e) = write_parquet(&tmp, batch) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DataError::Io { path: path.to_path_buf(), op: "rename into place", source }
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, choice: Choice) -> AnswerRow {
        AnswerRow {
            pair_id: id.into(),
            prompt_id: "p".into(),
            prompt: "hi".into(),
            choice,
            rating: Rating::Better,
            unsafe_a: true,
            unsafe_b: false,
            annotator_name: "ann".into(),
            answered_at_ms: 5,
            chosen: "x".into(),
            rejected: "y".into(),
        }
    }

    #[test]
    fn answers_round_trip_and_safety_bin_follows_the_choice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("answers.parquet");
        assert!(read_answers(&p).unwrap().is_empty());
        let rows = vec![answer("1", Choice::A), answer("2", Choice::B)];
        write_table_atomic(&p, &answers_batch(&rows).unwrap()).unwrap();
        assert_eq!(read_answers(&p).unwrap(), rows);
        assert_eq!(rows[0].safety_bin(), SafetyBin::ChosenUnsafeOtherSafe);
        assert_eq!(rows[1].safety_bin(), SafetyBin::ChosenSafeOtherUnsafe);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn candidates_round_trip_and_duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.parquet");
        let row = CandidateRow {
            id: "q@r1".into(),
            prompt_id: "q".into(),
            prompt: "hello".into(),
            response_a: "a".into(),
            response_b: "b".into(),
            track: "helpfulness".into(),
            split: "train".into(),
            gold_a: 0.5,
            gold_b: 0.25,
        };
        write_table_atomic(&p, &candidates_batch(std::slice::from_ref(&row)).unwrap()).unwrap();
        assert_eq!(read_candidates(&p).unwrap(), vec![row.clone()]);
        write_table_atomic(&p, &candidates_batch(&[row.clone(), row]).unwrap()).unwrap();
        let e = read_candidates(&p).unwrap_err().to_string();
        assert!(e.contains("duplicate pair id `q@r1`"), "{e}");
    }
}
