//! `rejection_sample` (Llama 2 §3.2.3): K answers per prompt sampled from the policy at a
//! temperature, scored by the reward models (the safety-gated combined reward), the best kept.
//! An optional `pool` input holds the best answers of earlier rounds; the output keeps, per
//! prompt, the best answer seen in any round (the paper's V4 change after regressions). The
//! report gives the reward models' max and median for K' = 1, 2, 4, ..., K (Figure 7;
//! expected over every K'-subset of the K samples), and the gold helpfulness of the sample
//! they pick next to the gold median, so one sees whether the reward models' choice is
//! really better.
//!
//! Row-wise over prompts: a prompt's K samples and scores are memoised per (policy, reward
//! models, parameters). Fine-tuning on the kept answers is the SFT stage's job: the `best`
//! table has `prompt`/`response` columns it reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int32Array, RecordBatch, StringArray};
use datasets::judge::{helpfulness, is_unsafe, JudgeInput};
use datasets::schema::PromptRow;
use graph::{ArtifactType, ParamSpec, Port, RowFn, RowId, RowTask, RunCtx, Stage, StageError};
use kernels::generate::SamplingParams;

use crate::collect_preferences::{round_rows, write_report};
use crate::common::{read_input_table, write_output_table};
use crate::rlhf::policy::{sample_stream, Loaded};
use crate::rlhf::reward::{argmax, expected_best_of, expected_median};
use crate::rlhf::scorer::Scorer;

pub struct RejectionSample;

impl Stage for RejectionSample {
    fn kind(&self) -> &'static str {
        "rejection_sample"
    }
    fn version(&self) -> u32 {
        // 2: each row's samples are scored on their own (rewards no longer depend on the batch).
        // 3: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        // 4: the report's by-K curves are expectations over every K'-subset of the samples, not the first K'.
        4
    }
    fn doc(&self) -> &'static str {
        "Llama 2 rejection sampling: K answers per prompt at `temperature`, scored by the reward models (safety-gated combined reward), the best kept; `pool` keeps the best of earlier rounds; the report has max/median reward and the gold score of the chosen sample against K = 1, 2, 4, ..., K (Figure 7)."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("prompts", ArtifactType::Table, "prompt table (id, category, is_safety, prompt, judge)"),
            Port::new("policy", ArtifactType::Model, "the policy to sample from"),
            Port::new("helpfulness_rm", ArtifactType::Model, "the helpfulness reward model"),
            Port::optional("safety_rm", ArtifactType::Model, "the safety reward model (without it the helpfulness score is used everywhere)"),
            Port::optional("pool", ArtifactType::Table, "the `best` table of earlier rounds"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("best", ArtifactType::Table, "per prompt the best answer so far: id, prompt, response, reward, gold, is_safety, category, round"),
            Port::new("samples", ArtifactType::Table, "this round's K samples per prompt: id, prompt_id, k, response, reward, gold, unsafe"),
            Port::new("report", ArtifactType::Report, "max_reward_by_k, median_reward_by_k, gold_of_chosen_by_k, gold_median_by_k (keys: K as a string)"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("k", 1, 1024, Some(16), "samples per prompt (the paper does not say; the world prototype: 16)"),
            ParamSpec::float("temperature", 0.0, 10.0, Some(1.0), "sampling temperature (the paper: best 1.2-1.3 for RLHF models, Figure 8)"),
            ParamSpec::float("top_p", 0.01, 1.0, Some(1.0), "nucleus sampling"),
            ParamSpec::int("max_new_tokens", 1, 4096, Some(48), "answer length cap in tokens"),
            ParamSpec::float("safety_threshold", 0.0, 1.0, Some(0.15), "the safety gate: below it the safety score is used (the paper: 0.15)"),
            ParamSpec::int("prompts_per_round", 0, i64::MAX, Some(0), "prompts used in round r: rows [(r-1)n, rn), wrapping (0 = all)"),
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
        let round = ctx.round.max(1);
        let chosen = round_rows(prompts.len(), ctx.params.int("prompts_per_round")? as usize, round as usize);
        let rows: Vec<RowId> = chosen.iter().map(|&i| RowId { key: prompts[i].id.clone(), hash: hashes[i] }).collect();
        let k = ctx.params.int("k")? as usize;
        let f = Arc::new(SampleK {
            prompts: chosen.iter().map(|&i| prompts[i].clone()).collect(),
            judges: chosen.iter().map(|&i| judges[i].clone()).collect(),
            policy: Loaded::load(ctx.input("policy")?, "input `policy`")?,
            scorer: Scorer::load(ctx.input("helpfulness_rm")?, ctx.input_opt("safety_rm"), ctx.params.float("safety_threshold")? as f32)?,
            params: SamplingParams {
                max_new_tokens: ctx.params.int("max_new_tokens")? as usize,
                temperature: ctx.params.float("temperature")? as f32,
                top_p: ctx.params.float("top_p")? as f32,
                seed: 0,
            },
            k,
        });
        let results = ctx.map_rows(&rows, f.clone())?;
        let per_prompt: Vec<Vec<Sample>> = rows.iter().zip(&results).map(|(r, b)| decode_samples(b, &r.key)).collect::<Result<_, _>>()?;
        let mut best: Vec<Best> = Vec::with_capacity(per_prompt.len());
        for (j, samples) in per_prompt.iter().enumerate() {
            let rewards: Vec<f32> = samples.iter().map(|s| s.reward).collect();
            let b = argmax(&rewards).ok_or_else(|| StageError::Row { key: rows[j].key.clone(), message: "no samples".into() })?;
            let p = &f.prompts[j];
            best.push(Best { prompt: p.clone(), response: samples[b].text.clone(), reward: samples[b].reward, gold: samples[b].gold, round: round as i32 });
        }
        let pool = match ctx.input_opt("pool") {
            Some(_) => read_best(&read_input_table(ctx, "pool")?)?,
            None => Vec::new(),
        };
        let merged = merge_best(pool, best.clone());
        write_output_table(ctx, "best", &best_batch(&merged)?)?;
        write_output_table(ctx, "samples", &samples_batch(&rows, &per_prompt)?)?;
        let mut report = curves_by_k(&per_prompt, k);
        report["round"] = round.into();
        report["prompts"] = per_prompt.len().into();
        report["pool_size"] = merged.len().into();
        report["pool_mean_gold"] = mean(merged.iter().map(|b| b.gold)).into();
        report["round_best_mean_gold"] = mean(best.iter().map(|b| b.gold)).into();
        write_report(ctx, "report", &report)
    }
}

/// One sampled answer with its scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub text: String,
    /// The combined reward (a probability).
    pub reward: f32,
    /// Gold helpfulness (the world's judge), for the report only: never used to choose.
    pub gold: f32,
    pub unsafe_: bool,
}

/// The per-row function: K samples of each prompt, scored.
struct SampleK {
    prompts: Vec<PromptRow>,
    judges: Vec<JudgeInput>,
    policy: Loaded,
    scorer: Scorer,
    params: SamplingParams,
    k: usize,
}

impl RowFn for SampleK {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
        // Rows of the generator: task-major, K samples each; sample k of a row draws from the
        // stream (row seed, k), so it is the same in any batch.
        let mut ids = Vec::with_capacity(tasks.len() * self.k);
        let mut streams = Vec::with_capacity(tasks.len() * self.k);
        for t in tasks {
            let p = self.policy.prompt_ids(&self.prompts[t.index].prompt)?;
            for k in 0..self.k {
                ids.push(p.clone());
                streams.push(sample_stream(t.seed, k as u64));
            }
        }
        let generated = self.policy.generate(&ids, &streams, &self.params)?;
        let texts: Vec<String> = generated.iter().map(|g| self.policy.decode(g)).collect::<Result<_, _>>()?;
        let prompts: Vec<&str> = (0..texts.len()).map(|i| self.prompts[tasks[i / self.k].index].prompt.as_str()).collect();
        let tags: Vec<bool> = (0..texts.len()).map(|i| self.prompts[tasks[i / self.k].index].is_safety).collect();
        let answers: Vec<&str> = texts.iter().map(String::as_str).collect();
        // Each row's K samples are scored on their own: the engine's batched forward is not
        // bit-identical for a row in different batches, so scoring rows of several prompts
        // together made a reward depend on which rows shared its batch (the worker and process
        // split), breaking the row-wise invariant in the last bits.
        let mut scored = Vec::with_capacity(texts.len());
        for j in 0..tasks.len() {
            let r = j * self.k..(j + 1) * self.k;
            scored.extend(self.scorer.score(&prompts[r.clone()], &answers[r.clone()], &tags[r])?);
        }
        Ok(tasks
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let judge = &self.judges[t.index];
                let samples: Vec<Sample> = (j * self.k..(j + 1) * self.k)
                    .map(|i| Sample { text: texts[i].clone(), reward: scored[i].reward, gold: helpfulness(judge, &texts[i]), unsafe_: is_unsafe(judge, &texts[i]) })
                    .collect();
                encode_samples(&samples)
            })
            .collect())
    }
}

fn encode_samples(samples: &[Sample]) -> Vec<u8> {
    let v: Vec<serde_json::Value> = samples.iter().map(|s| serde_json::json!([s.text, s.reward, s.gold, s.unsafe_])).collect();
    serde_json::to_vec(&v).expect("strings and numbers serialise")
}

fn decode_samples(bytes: &[u8], key: &str) -> Result<Vec<Sample>, StageError> {
    let bad = || StageError::Row { key: key.to_string(), message: "corrupt memo entry".into() };
    let v: Vec<(String, f32, f32, bool)> = serde_json::from_slice(bytes).map_err(|_| bad())?;
    Ok(v.into_iter().map(|(text, reward, gold, unsafe_)| Sample { text, reward, gold, unsafe_ }).collect())
}

/// The best answer of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    pub prompt: PromptRow,
    pub response: String,
    pub reward: f32,
    pub gold: f32,
    pub round: i32,
}

/// Per prompt id, the answer with the higher reward (the newer one on ties), sorted by id.
pub fn merge_best(pool: Vec<Best>, new: Vec<Best>) -> Vec<Best> {
    let mut m: BTreeMap<String, Best> = BTreeMap::new();
    for b in pool.into_iter().chain(new) {
        match m.get(&b.prompt.id) {
            Some(old) if old.reward > b.reward => {}
            _ => {
                m.insert(b.prompt.id.clone(), b);
            }
        }
    }
    m.into_values().collect()
}

fn col_str<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(v.map(Some).collect::<StringArray>())
}

fn best_batch(rows: &[Best]) -> Result<RecordBatch, StageError> {
    RecordBatch::try_from_iter(vec![
        ("id", col_str(rows.iter().map(|b| b.prompt.id.as_str()))),
        ("category", col_str(rows.iter().map(|b| b.prompt.category.as_str()))),
        ("is_safety", Arc::new(BooleanArray::from(rows.iter().map(|b| b.prompt.is_safety).collect::<Vec<_>>())) as ArrayRef),
        ("prompt", col_str(rows.iter().map(|b| b.prompt.prompt.as_str()))),
        ("judge", col_str(rows.iter().map(|b| b.prompt.judge.as_str()))),
        ("response", col_str(rows.iter().map(|b| b.response.as_str()))),
        ("reward", Arc::new(Float32Array::from(rows.iter().map(|b| b.reward).collect::<Vec<_>>())) as ArrayRef),
        ("gold", Arc::new(Float32Array::from(rows.iter().map(|b| b.gold).collect::<Vec<_>>())) as ArrayRef),
        ("round", Arc::new(Int32Array::from(rows.iter().map(|b| b.round).collect::<Vec<_>>())) as ArrayRef),
    ])
    .map_err(|e| StageError::wrap("building output `best`", e))
}

fn read_best(batch: &RecordBatch) -> Result<Vec<Best>, StageError> {
    let w = |e| StageError::wrap("input `pool`", e);
    let prompts = datasets::schema::prompt_rows(batch, "pool").map_err(w)?;
    let resp = datasets::table::str_values(batch, "response", "pool").map_err(w)?;
    let reward = datasets::table::f32_column(batch, "reward", "pool").map_err(w)?;
    let gold = datasets::table::f32_column(batch, "gold", "pool").map_err(w)?;
    let round = datasets::table::i32_column(batch, "round", "pool").map_err(w)?;
    Ok(prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Best { prompt, response: resp[i].to_string(), reward: reward.value(i), gold: gold.value(i), round: round.value(i) })
        .collect())
}

fn samples_batch(rows: &[RowId], per_prompt: &[Vec<Sample>]) -> Result<RecordBatch, StageError> {
    let flat: Vec<(&str, usize, &Sample)> = rows.iter().zip(per_prompt).flat_map(|(r, s)| s.iter().enumerate().map(move |(k, x)| (r.key.as_str(), k, x))).collect();
    let ids: Vec<String> = flat.iter().map(|(p, k, _)| format!("{p}#{k}")).collect();
    RecordBatch::try_from_iter(vec![
        ("id", col_str(ids.iter().map(String::as_str))),
        ("prompt_id", col_str(flat.iter().map(|f| f.0))),
        ("k", Arc::new(Int32Array::from(flat.iter().map(|f| f.1 as i32).collect::<Vec<_>>())) as ArrayRef),
        ("response", col_str(flat.iter().map(|f| f.2.text.as_str()))),
        ("reward", Arc::new(Float32Array::from(flat.iter().map(|f| f.2.reward).collect::<Vec<_>>())) as ArrayRef),
        ("gold", Arc::new(Float32Array::from(flat.iter().map(|f| f.2.gold).collect::<Vec<_>>())) as ArrayRef),
        ("unsafe", Arc::new(BooleanArray::from(flat.iter().map(|f| f.2.unsafe_).collect::<Vec<_>>())) as ArrayRef),
    ])
    .map_err(|e| StageError::wrap("building output `samples`", e))
}

fn mean(xs: impl Iterator<Item = f32>) -> f64 {
    let (s, n) = xs.fold((0.0f64, 0usize), |(s, n), x| (s + x as f64, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// K' = 1, 2, 4, ... up to K, and K itself when K is not a power of two.
pub fn k_grid(k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |x| Some(x * 2)).take_while(|&x| x <= k).collect();
    if v.last() != Some(&k) {
        v.push(k);
    }
    v
}

/// The best-of-K' curves: for each prompt, the expectation over every K'-subset of its K
/// samples (the reward models' pick, its reward, gold and safety; the median reward and gold),
/// averaged over prompts. Exact, from order statistics (`rlhf::reward::expected_best_of`,
/// `expected_median`): the same curve whichever K' samples happened to be drawn first, so the
/// K' = 1 point is the mean over all samples rather than the first sample's score.
pub fn curves_by_k(per_prompt: &[Vec<Sample>], k: usize) -> serde_json::Value {
    let mut max_r = serde_json::Map::new();
    let mut med_r = serde_json::Map::new();
    let mut gold_chosen = serde_json::Map::new();
    let mut gold_med = serde_json::Map::new();
    let mut unsafe_chosen = serde_json::Map::new();
    let rows: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = per_prompt
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            (s.iter().map(|x| x.reward).collect(), s.iter().map(|x| x.gold).collect(), s.iter().map(|x| if x.unsafe_ { 1.0 } else { 0.0 }).collect())
        })
        .collect();
    let avg = |f: &dyn Fn(&(Vec<f32>, Vec<f32>, Vec<f32>)) -> f64| -> f64 {
        if rows.is_empty() { f64::NAN } else { rows.iter().map(f).sum::<f64>() / rows.len() as f64 }
    };
    for kk in k_grid(k) {
        // A prompt with fewer samples than K' counts with all it has.
        let kk_for = |r: &Vec<f32>| kk.min(r.len());
        let key = kk.to_string();
        max_r.insert(key.clone(), avg(&|(r, _, _)| expected_best_of(r, r, kk_for(r))).into());
        med_r.insert(key.clone(), avg(&|(r, _, _)| expected_median(r, kk_for(r))).into());
        gold_chosen.insert(key.clone(), avg(&|(r, g, _)| expected_best_of(r, g, kk_for(r))).into());
        gold_med.insert(key.clone(), avg(&|(r, g, _)| expected_median(g, kk_for(r))).into());
        unsafe_chosen.insert(key, avg(&|(r, _, u)| expected_best_of(r, u, kk_for(r))).into());
    }
    serde_json::json!({
        "max_reward_by_k": max_r,
        "median_reward_by_k": med_r,
        "gold_of_chosen_by_k": gold_chosen,
        "gold_median_by_k": gold_med,
        "unsafe_of_chosen_by_k": unsafe_chosen,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::common::{table_file, testing};
    use crate::rlhf::policy::testing::{prompts, tiny_policy};

    #[test]
    fn k_grid_is_powers_of_two_then_k() {
        assert_eq!(k_grid(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(k_grid(6), vec![1, 2, 4, 6]);
        assert_eq!(k_grid(1), vec![1]);
    }

    #[test]
    fn curves_average_over_every_subset_of_the_samples() {
        let s = |r: f32, g: f32| Sample { text: String::new(), reward: r, gold: g, unsafe_: false };
        let rows = vec![vec![s(0.1, 0.0), s(0.9, 1.0), s(0.5, 0.2), s(0.2, 0.3)]];
        let c = curves_by_k(&rows, 4);
        let f = |key: &str, k: &str| c[key][k].as_f64().unwrap();
        // K' = 1: the mean over the samples.
        assert!((f("max_reward_by_k", "1") - (0.1f32 as f64 + 0.9f32 as f64 + 0.5f32 as f64 + 0.2f32 as f64) / 4.0).abs() < 1e-9);
        assert!((f("gold_of_chosen_by_k", "1") - 1.5 / 4.0).abs() < 1e-6);
        // K' = 2: the best sample is in 3 of the 6 pairs; 0.5 wins 2 of the others, 0.2 one.
        assert!((f("gold_of_chosen_by_k", "2") - (3.0 * 1.0 + 2.0 * 0.2 + 0.3) / 6.0).abs() < 1e-6);
        // K' = K: the pick of all.
        assert_eq!(f("gold_of_chosen_by_k", "4"), 1.0);
        assert!((f("median_reward_by_k", "4") - ((0.2f32 + 0.5) / 2.0) as f64).abs() < 1e-6);
    }

    /// Best-of-K computed two ways: the stage's `best` table against a brute-force argmax over
    /// its `samples` table, whose rewards are in turn recomputed by scoring each sample
    /// directly with the reward model.
    #[test]
    fn best_of_k_equals_brute_force_argmax() {
        let work = tempfile::tempdir().unwrap();
        let policy = work.path().join("policy");
        tiny_policy(&policy, 11);
        let rm_dir = work.path().join("rm");
        let rm = Loaded::load(&policy, "p").unwrap().reward_model_init(3).unwrap();
        rm.save(&rm_dir, "rm").unwrap();
        let batch = prompts(6);
        let pdir = work.path().join("prompts");
        std::fs::create_dir_all(&pdir).unwrap();
        datasets::table::write_parquet(&table_file(&pdir), &batch).unwrap();
        let stage = RejectionSample;
        use graph::ParamValue as V;
        let params = testing::params(&stage, &[("k", V::Int(5)), ("max_new_tokens", V::Int(5))]);
        let inputs = BTreeMap::from([
            ("prompts".to_string(), pdir),
            ("policy".to_string(), policy),
            ("helpfulness_rm".to_string(), rm_dir),
        ]);
        let (out, _) = testing::run(&stage, &params, work.path(), inputs, &work.path().join("w"), 2).unwrap();
        let samples = datasets::table::read_parquet(&table_file(&out["samples"])).unwrap();
        let best = datasets::table::read_parquet(&table_file(&out["best"])).unwrap();
        let pid = datasets::table::str_values(&samples, "prompt_id", "s").unwrap();
        let resp = datasets::table::str_values(&samples, "response", "s").unwrap();
        let rew = datasets::table::f32_column(&samples, "reward", "s").unwrap();
        let prompt_text: BTreeMap<&str, &str> = datasets::table::str_values(&batch, "id", "p").unwrap().into_iter()
            .zip(datasets::table::str_values(&batch, "prompt", "p").unwrap()).collect();
        assert_eq!(samples.num_rows(), 30);
        // Brute force: the highest reward per prompt, first on ties, recomputed from scratch.
        let mut brute: BTreeMap<&str, (f32, &str)> = BTreeMap::new();
        for i in 0..samples.num_rows() {
            let direct = crate::rlhf::reward::sigmoid(rm.score(&[(prompt_text[pid[i]], resp[i])]).unwrap()[0]);
            assert!((direct - rew.value(i)).abs() < 1e-5, "row {i}: {direct} vs {}", rew.value(i));
            let e = brute.entry(pid[i]).or_insert((f32::NEG_INFINITY, ""));
            if direct > e.0 + 1e-6 {
                *e = (direct, resp[i]);
            }
        }
        let bid = datasets::table::str_values(&best, "id", "b").unwrap();
        let bresp = datasets::table::str_values(&best, "response", "b").unwrap();
        assert_eq!(bid.len(), 6);
        for (id, r) in bid.iter().zip(&bresp) {
            assert_eq!(brute[id].1, *r, "prompt {id}");
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out["report"].join("report.json")).unwrap()).unwrap();
        for key in ["max_reward_by_k", "median_reward_by_k", "gold_of_chosen_by_k", "gold_median_by_k"] {
            assert_eq!(report[key].as_object().unwrap().len(), 4, "{key}");
        }
        // Max over more samples never falls.
        let m = &report["max_reward_by_k"];
        assert!(m["5"].as_f64().unwrap() >= m["1"].as_f64().unwrap());
    }

    /// A row's samples and rewards are the same bytes whether the row is computed alone or in
    /// a batch with other rows (the split over workers and processes must not matter). With
    /// these sizes, scoring all 200 samples together changed 7 rewards in the last bits (version
    /// 1 of the stage did that).
    #[test]
    fn a_row_gives_the_same_bytes_alone_and_in_a_batch() {
        let work = tempfile::tempdir().unwrap();
        tiny_policy(&work.path().join("policy"), 13);
        let policy = Loaded::load(&work.path().join("policy"), "p").unwrap();
        let rm = policy.reward_model_init(3).unwrap();
        let batch = prompts(40);
        let f = SampleK {
            judges: datasets::judge::judge_inputs(&batch, "p").unwrap(),
            prompts: datasets::schema::prompt_rows(&batch, "p").unwrap(),
            scorer: Scorer { helpfulness: rm.with_model(rm.model.clone()), safety: Some(policy.reward_model_init(4).unwrap()), threshold: 0.15 },
            policy,
            params: SamplingParams { max_new_tokens: 6, temperature: 1.0, top_p: 1.0, seed: 0 },
            k: 5,
        };
        let task = |index: usize| RowTask { index, key: format!("r{index}"), seed: 100 + index as u64 };
        let all = f.compute(&(0..40).map(task).collect::<Vec<_>>()).unwrap();
        for (i, together) in all.iter().enumerate() {
            assert!(&f.compute(&[task(i)]).unwrap()[0] == together, "row {i} alone differs from row {i} in a batch of 40");
        }
    }

    #[test]
    fn pool_keeps_the_best_of_each_prompt() {
        let p = |id: &str| PromptRow { id: id.into(), category: "c".into(), is_safety: false, prompt: "q".into(), judge: "{}".into() };
        let b = |id: &str, r: f32, round: i32| Best { prompt: p(id), response: format!("{id}{round}"), reward: r, gold: 0.0, round };
        let m = merge_best(vec![b("a", 0.9, 1), b("b", 0.1, 1)], vec![b("a", 0.5, 2), b("b", 0.6, 2), b("c", 0.2, 2)]);
        assert_eq!(m.iter().map(|x| (x.prompt.id.as_str(), x.round)).collect::<Vec<_>>(), [("a", 1), ("b", 2), ("c", 2)]);
    }
}
