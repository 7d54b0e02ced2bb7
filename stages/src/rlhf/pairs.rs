//! The preference-pair table (`datasets::schema::preference_pairs_schema`) read back into rows,
//! merged across rounds, and written; plus the memo encoding of one pair row, so that the
//! row-wise collection stage can store a pair (or "dropped") per prompt.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use datasets::schema::{preference_pairs_batch, preference_pairs_schema, PreferencePairRow};
use datasets::table::{f32_column, i32_column, str_values};
use graph::StageError;

/// The rows of a preference-pair table, checked against the schema. `table` names it in errors.
pub fn read_pairs(batch: &RecordBatch, table: &str) -> Result<Vec<PreferencePairRow>, StageError> {
    let wrap = |e| StageError::wrap(format!("table `{table}`"), e);
    datasets::schema::check_schema(batch, &preference_pairs_schema(), table).map_err(wrap)?;
    let s = |c: &str| str_values(batch, c, table).map_err(wrap);
    let (id, prompt_id, prompt, chosen, rejected) = (s("id")?, s("prompt_id")?, s("prompt")?, s("chosen")?, s("rejected")?);
    let (rating, track, bin, annotator, split) = (s("rating")?, s("track")?, s("safety_bin")?, s("annotator")?, s("split")?);
    let level = i32_column(batch, "margin_level", table).map_err(wrap)?;
    let cs = f32_column(batch, "chosen_score", table).map_err(wrap)?;
    let rs = f32_column(batch, "rejected_score", table).map_err(wrap)?;
    Ok((0..batch.num_rows())
        .map(|i| PreferencePairRow {
            id: id[i].to_string(),
            prompt_id: prompt_id[i].to_string(),
            prompt: prompt[i].to_string(),
            chosen: chosen[i].to_string(),
            rejected: rejected[i].to_string(),
            rating: rating[i].to_string(),
            margin_level: level.value(i),
            track: track[i].to_string(),
            safety_bin: bin[i].to_string(),
            chosen_score: cs.value(i),
            rejected_score: rs.value(i),
            annotator: annotator[i].to_string(),
            split: split[i].to_string(),
        })
        .collect())
}

/// `earlier` then `new`, one row per id (a new row replaces an earlier one with its id), sorted
/// by id so the table does not depend on the order rounds were merged in.
pub fn merge_pairs(earlier: Vec<PreferencePairRow>, new: Vec<PreferencePairRow>) -> Vec<PreferencePairRow> {
    let mut by_id: BTreeMap<String, PreferencePairRow> = BTreeMap::new();
    for r in earlier.into_iter().chain(new) {
        by_id.insert(r.id.clone(), r);
    }
    by_id.into_values().collect()
}

/// The batch for `rows`.
pub fn pairs_batch(rows: &[PreferencePairRow], table: &str) -> Result<RecordBatch, StageError> {
    preference_pairs_batch(rows, table).map_err(|e| StageError::wrap(format!("building table `{table}`"), e))
}

/// Memo bytes of an optional pair: empty for "no pair" (dropped by the safety rule), else a
/// JSON object of the row's fields.
pub fn encode_pair(row: Option<&PreferencePairRow>) -> Vec<u8> {
    let Some(r) = row else { return Vec::new() };
    let v = serde_json::json!({
        "id": r.id, "prompt_id": r.prompt_id, "prompt": r.prompt, "chosen": r.chosen,
        "rejected": r.rejected, "rating": r.rating, "margin_level": r.margin_level,
        "track": r.track, "safety_bin": r.safety_bin, "chosen_score": r.chosen_score,
        "rejected_score": r.rejected_score, "annotator": r.annotator, "split": r.split,
    });
    serde_json::to_vec(&v).expect("a JSON object of strings and numbers serialises")
}

/// Inverse of [`encode_pair`]; `None` inside `Ok` for a dropped pair.
pub fn decode_pair(bytes: &[u8], key: &str) -> Result<Option<PreferencePairRow>, StageError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = |m: String| StageError::Row { key: key.to_string(), message: format!("corrupt memo entry: {m}") };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| bad(format!("no `{k}`")));
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32).ok_or_else(|| bad(format!("no `{k}`")));
    Ok(Some(PreferencePairRow {
        id: s("id")?,
        prompt_id: s("prompt_id")?,
        prompt: s("prompt")?,
        chosen: s("chosen")?,
        rejected: s("rejected")?,
        rating: s("rating")?,
        margin_level: v.get("margin_level").and_then(|x| x.as_i64()).ok_or_else(|| bad("no `margin_level`".into()))? as i32,
        track: s("track")?,
        safety_bin: s("safety_bin")?,
        chosen_score: f("chosen_score")?,
        rejected_score: f("rejected_score")?,
        annotator: s("annotator")?,
        split: s("split")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn row(id: &str, split: &str) -> PreferencePairRow {
        PreferencePairRow {
            id: id.into(),
            prompt_id: "p".into(),
            prompt: "What is 1 + 2?".into(),
            chosen: "The answer is 3.".into(),
            rejected: "4".into(),
            rating: "better".into(),
            margin_level: 2,
            track: "helpfulness".into(),
            safety_bin: "both_safe".into(),
            chosen_score: 1.0,
            rejected_score: 0.3,
            annotator: "sim".into(),
            split: split.into(),
        }
    }

    #[test]
    fn memo_bytes_round_trip() {
        let r = row("a", "train");
        assert_eq!(decode_pair(&encode_pair(Some(&r)), "a").unwrap(), Some(r));
        assert_eq!(decode_pair(&encode_pair(None), "a").unwrap(), None);
        assert!(decode_pair(b"{", "a").is_err());
    }

    #[test]
    fn table_round_trip_and_merge() {
        let rows = vec![row("b", "train"), row("a", "test")];
        let batch = pairs_batch(&rows, "pairs").unwrap();
        assert_eq!(read_pairs(&batch, "pairs").unwrap(), rows);
        let mut newer = row("b", "test");
        newer.chosen = "3".into();
        let merged = merge_pairs(rows, vec![newer.clone(), row("c", "train")]);
        assert_eq!(merged.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(merged[1], newer);
    }
}
