//! Preference collection (Llama 2 §3.2.1): `collect_preferences` samples two answers per prompt
//! (two policy variants and/or two temperatures), asks the world's simulated annotator
//! (`datasets::annotate`: gold choice, four-level rating, label noise, safety bins and the
//! drop rule) and holds out a test split; `import_preferences` turns a user's TRL-style table
//! (`prompt`/`chosen`/`rejected`, optional `rating` or `margin`) into the same pair schema.
//!
//! Collection is row-wise over the prompt table: a prompt's pair depends only on the prompt,
//! the models, the parameters and the row seed, so the runtime memoises it. Both kinds take
//! an optional `previous` pair table and output all pairs so far (the paper's weekly batches
//! accumulate), which is how a `[loop]` carries the pairs from round to round.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use datasets::annotate::{annotate, is_test_pair, pair_row, AnnotatorConfig, PairContext, Rating};
use datasets::judge::JudgeInput;
use datasets::schema::{PreferencePairRow, PromptRow};
use graph::{ArtifactType, ParamSpec, Port, RowFn, RowId, RowTask, RunCtx, Stage, StageError};
use kernels::generate::SamplingParams;

use crate::common::{read_input_table, write_output_table};
use crate::rlhf::pairs::{decode_pair, encode_pair, merge_pairs, pairs_batch, read_pairs};
use crate::rlhf::policy::{sample_stream, Loaded};

pub struct CollectPreferences;

impl Stage for CollectPreferences {
    fn kind(&self) -> &'static str {
        "collect_preferences"
    }
    fn version(&self) -> u32 {
        // 3: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        3
    }
    fn doc(&self) -> &'static str {
        "Llama 2 preference collection: two sampled answers per prompt (policy at `temperature_a`, `policy_b` or the policy at `temperature_b`; answer B is drawn again, up to `redraws` times, while it is the same text as A), judged by the world's simulated annotator (gold choice with label noise, four-level rating, safety bins, chosen-unsafe/rejected-safe pairs dropped on the safety track), with a held-out test split; outputs all pairs so far (`previous` + new)."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("prompts", ArtifactType::Table, "prompt table (id, category, is_safety, prompt, judge)"),
            Port::new("policy", ArtifactType::Model, "the policy that writes answer A (and B unless `policy_b` is given)"),
            Port::optional("policy_b", ArtifactType::Model, "a second model variant for answer B"),
            Port::optional("previous", ArtifactType::Table, "pairs collected earlier (kept; output = previous + new)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("pairs", ArtifactType::Table, "every preference pair so far (preference_pairs_schema)"),
            Port::new("report", ArtifactType::Report, "counts by track, rating and safety bin; drops; flips; gold scores"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::float("temperature_a", 0.0, 10.0, Some(0.7), "sampling temperature of answer A (the world prototype's 0.7)"),
            ParamSpec::float("temperature_b", 0.0, 10.0, Some(1.2), "sampling temperature of answer B (the world prototype's 1.2)"),
            ParamSpec::float("top_p", 0.01, 1.0, Some(1.0), "nucleus sampling for both answers"),
            ParamSpec::int("max_new_tokens", 1, 4096, Some(48), "answer length cap in tokens"),
            ParamSpec::int("prompts_per_round", 0, i64::MAX, Some(0), "prompts used in round r: rows [(r-1)n, rn) of the table, wrapping (0 = every row every round)"),
            ParamSpec::float("test_share", 0.0, 1.0, Some(0.1), "share of pairs held out as test data (the paper: 1000 per weekly batch)"),
            ParamSpec::float("label_noise", 0.0, 1.6, Some(1.0), "multiplier on the annotator's flip probabilities (standard: 3/8/15/30% by rating)"),
            ParamSpec::str("annotator", Some("simulated"), "the `annotator` column of new pairs"),
            ParamSpec::str("human_answers", Some(""), "with annotator = \"human\": the folder (relative to the pipeline file) for the pairs to annotate (pairs_r<round>.parquet) and the answers `alignflow annotate` writes (answers.parquet); docs/annotation.md").added_later(),
            ParamSpec::int("quota", 0, i64::MAX, Some(0), "with annotator = \"human\": answers needed to this round's pairs before the stage completes (0 = all)").added_later(),
            ParamSpec::int("wait_seconds", 0, 7 * 24 * 3600, Some(0), "with annotator = \"human\": how long to wait for the quota before failing with what to run (0 = fail at once)").added_later(),
            ParamSpec::int("redraws", 0, 64, Some(4), "while answer B is the same text as answer A, draw B again (from the next sampling stream), at most this many times: nobody can prefer one of two identical texts, and such pairs teach a reward model nothing (0 = keep them)"),
            ParamSpec::bool("drop_identical", Some(true), "leave out prompts whose two answers are still identical after the redraws"),
        ]
    }
    fn row_port(&self) -> Option<&'static str> {
        Some("prompts")
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let table = read_input_table(ctx, "prompts")?;
        let prompts = datasets::schema::prompt_rows(&table, "prompts").map_err(|e| StageError::wrap("input `prompts`", e))?;
        let judges = datasets::judge::judge_inputs(&table, "prompts").map_err(|e| StageError::wrap("input `prompts`", e))?;
        let hashes = datasets::table::row_hashes(&table).map_err(|e| StageError::wrap("hashing input `prompts`", e))?;
        let round = ctx.round.max(1) as usize;
        let chosen = round_rows(prompts.len(), ctx.params.int("prompts_per_round")? as usize, round);
        let rows: Vec<RowId> = chosen.iter().map(|&i| RowId { key: prompts[i].id.clone(), hash: hashes[i] }).collect();
        let policy = Loaded::load(ctx.input("policy")?, "input `policy`")?;
        let policy_b = ctx.input_opt("policy_b").map(|d| Loaded::load(d, "input `policy_b`")).transpose()?;
        let mut annotator = AnnotatorConfig::standard(ctx.seed);
        let noise = ctx.params.float("label_noise")?;
        annotator.flip_prob = annotator.flip_prob.map(|p| (p * noise).min(0.5));
        let f = Arc::new(Collect {
            prompts: chosen.iter().map(|&i| prompts[i].clone()).collect(),
            judges: chosen.iter().map(|&i| judges[i].clone()).collect(),
            policy,
            policy_b,
            annotator,
            round: round as u32,
            temps: (ctx.params.float("temperature_a")? as f32, ctx.params.float("temperature_b")? as f32),
            top_p: ctx.params.float("top_p")? as f32,
            max_new_tokens: ctx.params.int("max_new_tokens")? as usize,
            test_share: ctx.params.float("test_share")?,
            holdout_seed: ctx.seed,
            name: ctx.params.str("annotator")?.to_string(),
            keep_all: ctx.params.str("annotator")? == datasets::human::HUMAN,
            redraws: ctx.params.int("redraws")? as u64,
            drop_identical: ctx.params.bool("drop_identical")?,
        });
        let results = ctx.map_rows(&rows, f)?;
        let mut new = Vec::new();
        let (mut dropped, mut identical) = (0usize, 0usize);
        for (r, bytes) in rows.iter().zip(&results) {
            if bytes.as_slice() == IDENTICAL {
                identical += 1;
                continue;
            }
            match decode_pair(bytes, &r.key)? {
                Some(p) => new.push(p),
                None => dropped += 1,
            }
        }
        if let Some(h) = crate::human_preferences::human_mode(ctx)? {
            new = h.collect(new, round)?;
        }
        let report = collection_report(&new, dropped, identical, round);
        let earlier = match ctx.input_opt("previous") {
            Some(_) => read_pairs(&read_input_table(ctx, "previous")?, "previous")?,
            None => Vec::new(),
        };
        let all = merge_pairs(earlier, new);
        write_output_table(ctx, "pairs", &pairs_batch(&all, "pairs")?)?;
        write_report(ctx, "report", &serde_json::json!({ "new": report, "total_pairs": all.len() }))
    }
}

/// The row indices a round uses: `per_round` rows starting at `(round - 1) · per_round`,
/// wrapping around the table; every row when `per_round` is 0 or covers the table.
pub fn round_rows(n: usize, per_round: usize, round: usize) -> Vec<usize> {
    if per_round == 0 || per_round >= n {
        return (0..n).collect();
    }
    let start = (round - 1) * per_round;
    let mut v: Vec<usize> = (start..start + per_round).map(|i| i % n).collect();
    v.sort_unstable();
    v
}

/// Writes `value` as the report artifact `name` (report.json).
pub fn write_report(ctx: &RunCtx<'_>, name: &str, value: &serde_json::Value) -> Result<(), StageError> {
    let path = ctx.output(name)?.join(ArtifactType::Report.main_file().expect("reports have a main file"));
    let text = serde_json::to_vec_pretty(value).map_err(|e| StageError::wrap("serialising the report", e))?;
    std::fs::write(&path, text).map_err(|source| StageError::Io { path, source })
}

/// Memo bytes of a prompt left out because its two answers stayed identical (`drop_identical`);
/// not a JSON pair, so [`decode_pair`] never sees it.
const IDENTICAL: &[u8] = b"=";

/// The per-row function of `collect_preferences`: rows are addressed by their index in the
/// stage's (round-selected) row list.
struct Collect {
    prompts: Vec<PromptRow>,
    judges: Vec<JudgeInput>,
    policy: Loaded,
    policy_b: Option<Loaded>,
    annotator: AnnotatorConfig,
    round: u32,
    temps: (f32, f32),
    top_p: f32,
    max_new_tokens: usize,
    test_share: f64,
    holdout_seed: u64,
    name: String,
    /// Human mode: keep every pair (people label it; the drop rule applies to their labels).
    keep_all: bool,
    redraws: u64,
    drop_identical: bool,
}

impl RowFn for Collect {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        let ids: Vec<Vec<u32>> = tasks.iter().map(|t| self.policy.prompt_ids(&self.prompts[t.index].prompt)).collect::<Result<_, _>>()?;
        // Each row samples from its own streams (row seed, answer index): batch-independent.
        let answers = |model: &Loaded, temperature: f32, rows: &[usize], k: u64| -> Result<Vec<String>, StageError> {
            let prompts: Vec<Vec<u32>> = rows.iter().map(|&i| ids[i].clone()).collect();
            let streams: Vec<u64> = rows.iter().map(|&i| sample_stream(tasks[i].seed, k)).collect();
            let sp = SamplingParams { max_new_tokens: self.max_new_tokens, temperature, top_p: self.top_p, seed: 0 };
            model.generate(&prompts, &streams, &sp)?.iter().map(|g| model.decode(g)).collect()
        };
        let all: Vec<usize> = (0..tasks.len()).collect();
        let a = answers(&self.policy, self.temps.0, &all, 0)?;
        let model_b = self.policy_b.as_ref().unwrap_or(&self.policy);
        let mut b = answers(model_b, self.temps.1, &all, 1)?;
        // Redraw B where it repeats A: draw j uses stream 1 + j, so a row's pair still depends
        // only on its own seed.
        for j in 1..=self.redraws {
            let same: Vec<usize> = all.iter().copied().filter(|&i| a[i] == b[i]).collect();
            if same.is_empty() {
                break;
            }
            for (i, text) in same.iter().zip(answers(model_b, self.temps.1, &same, 1 + j)?) {
                b[*i] = text;
            }
        }
        Ok(tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if self.drop_identical && a[i] == b[i] {
                    IDENTICAL.to_vec()
                } else {
                    encode_pair(self.pair(t, &a[i], &b[i]).as_ref())
                }
            })
            .collect())
    }
}

impl Collect {
    /// The annotated pair of one prompt, or None when the safety rule drops it.
    fn pair(&self, t: &RowTask, a: &str, b: &str) -> Option<PreferencePairRow> {
        let p = &self.prompts[t.index];
        let pair_id = format!("{}@r{}", p.id, self.round);
        let ann = annotate(&self.annotator, &pair_id, &self.judges[t.index], a, b);
        if !ann.kept() && !self.keep_all {
            return None;
        }
        let split = if is_test_pair(self.holdout_seed, &pair_id, self.test_share) { "test" } else { "train" };
        let ctx = PairContext { pair_id: &pair_id, prompt_id: &p.id, prompt: &p.prompt, annotator: &self.name, split };
        Some(pair_row(&ctx, a, b, &ann))
    }
}

/// Counts of one round's new pairs.
fn collection_report(pairs: &[PreferencePairRow], dropped: usize, identical: usize, round: usize) -> serde_json::Value {
    let count = |f: &dyn Fn(&PreferencePairRow) -> &str| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for p in pairs {
            *m.entry(f(p).to_string()).or_default() += 1;
        }
        m
    };
    let mean = |f: &dyn Fn(&PreferencePairRow) -> f32| {
        if pairs.is_empty() { 0.0 } else { pairs.iter().map(|p| f(p) as f64).sum::<f64>() / pairs.len() as f64 }
    };
    let gold_agrees = pairs.iter().filter(|p| p.chosen_score >= p.rejected_score).count();
    serde_json::json!({
        "round": round,
        "pairs": pairs.len(),
        "dropped_chosen_unsafe_rejected_safe": dropped,
        "dropped_identical": identical,
        "by_track": count(&|p| &p.track),
        "by_rating": count(&|p| &p.rating),
        "by_safety_bin": count(&|p| &p.safety_bin),
        "by_split": count(&|p| &p.split),
        "label_agrees_with_gold": if pairs.is_empty() { 0.0 } else { gold_agrees as f64 / pairs.len() as f64 },
        "mean_gold_chosen": mean(&|p| p.chosen_score),
        "mean_gold_rejected": mean(&|p| p.rejected_score),
    })
}

pub struct ImportPreferences;

impl Stage for ImportPreferences {
    fn kind(&self) -> &'static str {
        "import_preferences"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "Turns a TRL-style preference table (`prompt`, `chosen`, `rejected`; optional `rating` as one of the four levels, or numeric `margin`) into the preference-pair schema, with a seeded held-out test split; output = `previous` + imported pairs. Gold scores are unknown (NaN) and the safety bin is `unknown`."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("table", ArtifactType::Table, "prompt, chosen, rejected (strings); optional rating (string) or margin (number)"),
            Port::optional("previous", ArtifactType::Table, "pairs collected earlier (kept)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("pairs", ArtifactType::Table, "previous + imported pairs (preference_pairs_schema)")]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::str("track", Some("helpfulness"), "the `track` of imported pairs: helpfulness or safety"),
            ParamSpec::str("default_rating", Some("better"), "rating of rows with neither `rating` nor `margin`"),
            ParamSpec::float("test_share", 0.0, 1.0, Some(0.1), "share of pairs held out as test data"),
            ParamSpec::str("annotator", Some("import"), "the `annotator` column of imported pairs"),
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let table = read_input_table(ctx, "table")?;
        let track = ctx.params.str("track")?;
        if track != "helpfulness" && track != "safety" {
            return Err(StageError::Param { name: "track".into(), expected: "`helpfulness` or `safety`".into() });
        }
        let default_rating = Rating::parse(ctx.params.str("default_rating")?).ok_or_else(|| StageError::Param {
            name: "default_rating".into(),
            expected: "significantly_better, better, slightly_better or negligibly_better".into(),
        })?;
        let opts = ImportOptions {
            track: track.to_string(),
            default_rating,
            test_share: ctx.params.float("test_share")?,
            seed: ctx.seed,
            annotator: ctx.params.str("annotator")?.to_string(),
        };
        let new = import_trl(&table, &opts, "table")?;
        let earlier = match ctx.input_opt("previous") {
            Some(_) => read_pairs(&read_input_table(ctx, "previous")?, "previous")?,
            None => Vec::new(),
        };
        write_output_table(ctx, "pairs", &pairs_batch(&merge_pairs(earlier, new), "pairs")?)
    }
}

/// How imported rows are labelled.
pub struct ImportOptions {
    pub track: String,
    pub default_rating: Rating,
    pub test_share: f64,
    pub seed: u64,
    pub annotator: String,
}

/// The rating for a numeric margin: the nearest level of the paper's large margin table
/// (3, 2, 1, 0), so `margin` 2.2 is "better".
pub fn rating_for_margin(m: f64) -> Rating {
    let level = m.round().clamp(0.0, 3.0) as i32;
    Rating::ALL.into_iter().find(|r| r.margin_level() == level).expect("levels 0..=3 exist")
}

/// TRL-style rows -> pairs. Row ids: the table's `id` column when present, else `import-<row>`
/// keyed by the blake3 hash of (prompt, chosen, rejected), so re-importing a table gives the
/// same ids.
pub fn import_trl(batch: &RecordBatch, opts: &ImportOptions, table: &str) -> Result<Vec<PreferencePairRow>, StageError> {
    let wrap = |e| StageError::wrap(format!("table `{table}`"), e);
    let s = |c: &str| datasets::table::str_values(batch, c, table).map_err(wrap);
    let (prompt, chosen, rejected) = (s("prompt")?, s("chosen")?, s("rejected")?);
    let ids: Option<Vec<&str>> = batch.column_by_name("id").map(|_| s("id")).transpose()?;
    let ratings: Option<Vec<&str>> = batch.column_by_name("rating").map(|_| s("rating")).transpose()?;
    let margins: Option<Vec<f64>> = match batch.column_by_name("margin") {
        Some(c) => Some(numeric_values(c, table)?),
        None => None,
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let rating = match (&ratings, &margins) {
            (Some(r), _) => Rating::parse(r[i]).ok_or_else(|| StageError::Row {
                key: format!("{table} row {i}"),
                message: format!("column `rating`: {:?} is not one of significantly_better, better, slightly_better, negligibly_better", r[i]),
            })?,
            (None, Some(m)) => rating_for_margin(m[i]),
            (None, None) => opts.default_rating,
        };
        let id = match &ids {
            Some(v) => v[i].to_string(),
            None => {
                let h = blake3::hash(format!("{}\u{0}{}\u{0}{}", prompt[i], chosen[i], rejected[i]).as_bytes());
                format!("import-{}", &h.to_hex()[..16])
            }
        };
        let split = if is_test_pair(opts.seed, &id, opts.test_share) { "test" } else { "train" };
        out.push(PreferencePairRow {
            prompt_id: id.clone(),
            id,
            prompt: prompt[i].to_string(),
            chosen: chosen[i].to_string(),
            rejected: rejected[i].to_string(),
            rating: rating.as_str().to_string(),
            margin_level: rating.margin_level(),
            track: opts.track.clone(),
            safety_bin: "unknown".to_string(),
            chosen_score: f32::NAN,
            rejected_score: f32::NAN,
            annotator: opts.annotator.clone(),
            split: split.to_string(),
        });
    }
    Ok(out)
}

/// A numeric column (any integer or float type) as f64, nulls rejected.
fn numeric_values(c: &arrow_array::ArrayRef, table: &str) -> Result<Vec<f64>, StageError> {
    let f = arrow_cast_f64(c).ok_or_else(|| StageError::Message(format!("table `{table}`, column `margin`: expected a number column, found {}", c.data_type())))?;
    if f.iter().any(|x| x.is_none()) {
        return Err(StageError::Message(format!("table `{table}`, column `margin`: null values")));
    }
    Ok(f.into_iter().map(|x| x.expect("checked")).collect())
}

fn arrow_cast_f64(c: &arrow_array::ArrayRef) -> Option<Vec<Option<f64>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
    use arrow_array::Array;
    let n = c.len();
    let get = |i: usize, v: f64| if c.is_null(i) { None } else { Some(v) };
    Some(match c.data_type() {
        arrow_schema::DataType::Float64 => { let a = c.as_primitive::<Float64Type>(); (0..n).map(|i| get(i, a.value(i))).collect() }
        arrow_schema::DataType::Float32 => { let a = c.as_primitive::<Float32Type>(); (0..n).map(|i| get(i, a.value(i) as f64)).collect() }
        arrow_schema::DataType::Int64 => { let a = c.as_primitive::<Int64Type>(); (0..n).map(|i| get(i, a.value(i) as f64)).collect() }
        arrow_schema::DataType::Int32 => { let a = c.as_primitive::<Int32Type>(); (0..n).map(|i| get(i, a.value(i) as f64)).collect() }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::common::{table_file, testing};
    use crate::rlhf::policy::testing::{prompts, tiny_policy};

    fn write_table(dir: &std::path::Path, batch: &RecordBatch) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        datasets::table::write_parquet(&table_file(dir), batch).unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn round_rows_walk_the_table() {
        assert_eq!(round_rows(5, 0, 3), vec![0, 1, 2, 3, 4]);
        assert_eq!(round_rows(5, 2, 1), vec![0, 1]);
        assert_eq!(round_rows(5, 2, 3), vec![4, 0].into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    }

    /// Collects pairs from a tiny random policy, checks the annotator's invariants row by row
    /// against the gold judges, then accumulates: a second run with `previous` keeps the first.
    #[test]
    fn collects_annotated_pairs_and_accumulates() {
        let work = tempfile::tempdir().unwrap();
        let policy = work.path().join("policy");
        tiny_policy(&policy, 4);
        let batch = prompts(24);
        let prompts_dir = write_table(&work.path().join("prompts"), &batch);
        let stage = CollectPreferences;
        let params = testing::params(&stage, &[("max_new_tokens", graph::ParamValue::Int(6)), ("test_share", graph::ParamValue::Float(0.3))]);
        let inputs = BTreeMap::from([("prompts".to_string(), prompts_dir.clone()), ("policy".to_string(), policy.clone())]);
        let (out, stats) = testing::run(&stage, &params, work.path(), inputs.clone(), &work.path().join("w1"), 2).unwrap();
        assert_eq!(stats.unwrap().total, 24);
        let pairs = read_pairs(&datasets::table::read_parquet(&table_file(&out["pairs"])).unwrap(), "pairs").unwrap();
        assert!(!pairs.is_empty() && pairs.len() <= 24);
        let judges = datasets::judge::judge_inputs(&batch, "p").unwrap();
        let ids: Vec<&str> = datasets::table::str_values(&batch, "id", "p").unwrap();
        for p in &pairs {
            let j = &judges[ids.iter().position(|i| *i == p.prompt_id).unwrap()];
            assert_eq!(p.chosen_score, datasets::judge::helpfulness(j, &p.chosen));
            assert_eq!(p.rejected_score, datasets::judge::helpfulness(j, &p.rejected));
            assert!(!(p.track == "safety" && p.safety_bin == "chosen_unsafe_other_safe"));
            assert!(p.split == "train" || p.split == "test");
            assert_eq!(Rating::parse(&p.rating).unwrap().margin_level(), p.margin_level);
        }
        // Same inputs, same work dir: every row comes from the memo, same table.
        let (out2, stats2) = testing::run(&stage, &params, work.path(), inputs.clone(), &work.path().join("w1"), 1).unwrap();
        assert_eq!(stats2.unwrap().computed, 0);
        assert_eq!(read_pairs(&datasets::table::read_parquet(&table_file(&out2["pairs"])).unwrap(), "pairs").unwrap(), pairs);
        // Accumulation: previous pairs with other ids survive.
        let mut old = pairs[0].clone();
        old.id = "old-pair".into();
        let prev = write_table(&work.path().join("prev"), &pairs_batch(&[old.clone()], "prev").unwrap());
        let mut with_prev = inputs;
        with_prev.insert("previous".into(), prev);
        let (out3, _) = testing::run(&stage, &params, work.path(), with_prev, &work.path().join("w2"), 1).unwrap();
        let all = read_pairs(&datasets::table::read_parquet(&table_file(&out3["pairs"])).unwrap(), "pairs").unwrap();
        assert_eq!(all.len(), pairs.len() + 1);
        assert!(all.contains(&old));
    }

    /// Identical answers: greedy decoding gives A == B on every prompt, so with the default
    /// `drop_identical` every prompt is left out (and counted), and with it off they are kept as
    /// "negligibly better"; sampled, no kept pair has two identical texts, and the pairs do not
    /// depend on how rows were batched over workers.
    #[test]
    fn identical_answers_are_redrawn_or_left_out() {
        use graph::ParamValue as V;
        let work = tempfile::tempdir().unwrap();
        let policy = work.path().join("policy");
        tiny_policy(&policy, 5);
        let prompts_dir = write_table(&work.path().join("prompts"), &prompts(16));
        let inputs = BTreeMap::from([("prompts".to_string(), prompts_dir), ("policy".to_string(), policy)]);
        let stage = CollectPreferences;
        let run = |extra: &[(&str, V)], dir: &str, workers: usize| {
            let mut ps = vec![("max_new_tokens", V::Int(4))];
            ps.extend(extra.iter().cloned());
            let params = testing::params(&stage, &ps);
            let (out, _) = testing::run(&stage, &params, work.path(), inputs.clone(), &work.path().join(dir), workers).unwrap();
            let pairs = read_pairs(&datasets::table::read_parquet(&table_file(&out["pairs"])).unwrap(), "pairs").unwrap();
            let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out["report"].join("report.json")).unwrap()).unwrap();
            (pairs, report)
        };
        let greedy = [("temperature_a", V::Float(0.0)), ("temperature_b", V::Float(0.0))];
        let (pairs, report) = run(&greedy, "g", 1);
        assert!(pairs.is_empty(), "{pairs:?}");
        assert_eq!(report["new"]["dropped_identical"], 16);
        let mut keep = greedy.to_vec();
        keep.push(("drop_identical", V::Bool(false)));
        let (kept, report) = run(&keep, "k", 1);
        assert_eq!(report["new"]["dropped_identical"], 0);
        assert!(!kept.is_empty() && kept.iter().all(|p| p.chosen == p.rejected && p.rating == "negligibly_better"));
        let (sampled, _) = run(&[], "s1", 1);
        assert!(sampled.iter().all(|p| p.chosen != p.rejected));
        let (sampled2, _) = run(&[], "s2", 2);
        assert_eq!(sampled, sampled2);
    }

    #[test]
    fn imports_trl_tables() {
        use arrow_array::{Float64Array, StringArray};
        let col = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as arrow_array::ArrayRef;
        let batch = RecordBatch::try_from_iter(vec![
            ("prompt", col(&["p1", "p2", "p3"])),
            ("chosen", col(&["c1", "c2", "c3"])),
            ("rejected", col(&["r1", "r2", "r3"])),
            ("margin", Arc::new(Float64Array::from(vec![3.0, 1.2, 0.1])) as arrow_array::ArrayRef),
        ])
        .unwrap();
        let opts = ImportOptions { track: "helpfulness".into(), default_rating: Rating::Better, test_share: 0.0, seed: 1, annotator: "import".into() };
        let rows = import_trl(&batch, &opts, "t").unwrap();
        assert_eq!(rows.iter().map(|r| r.rating.as_str()).collect::<Vec<_>>(), ["significantly_better", "slightly_better", "negligibly_better"]);
        assert!(rows.iter().all(|r| r.split == "train" && r.id.starts_with("import-")));
        assert_eq!(import_trl(&batch, &opts, "t").unwrap()[0].id, rows[0].id);
        // The pairs table builds and reads back (NaN gold scores included).
        let back = read_pairs(&pairs_batch(&rows, "x").unwrap(), "x").unwrap();
        assert_eq!(back[1].chosen, "c2");
        // A bad rating names the row; a missing column names the table.
        let bad = RecordBatch::try_from_iter(vec![
            ("prompt", col(&["p"])), ("chosen", col(&["c"])), ("rejected", col(&["r"])), ("rating", col(&["great"])),
        ]).unwrap();
        let e = import_trl(&bad, &opts, "t").unwrap_err().to_string();
        assert!(e.contains("great") && e.contains("row 0"), "{e}");
        let missing = RecordBatch::try_from_iter(vec![("prompt", col(&["p"]))]).unwrap();
        assert!(import_trl(&missing, &opts, "t").unwrap_err().to_string().contains("chosen"));
    }
}
