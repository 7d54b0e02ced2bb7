//! `train_reward` (Llama 2 §3.2.2): one stage kind, used by two nodes (helpfulness and
//! safety). The reward model starts from the current policy with its next-token head replaced
//! by a fresh scalar head, and is trained on the binary ranking loss with a margin,
//! `-log σ(r(x, y_c) - r(x, y_r) - m(rating))` (margin table none, small or large: Table 27),
//! over the node's track mixed with other pairs (helpfulness: an equal amount of other data;
//! safety: 90/10). One epoch by default. The report gives held-out accuracy by rating level,
//! against the gold preference (the world's gold scores) and against the annotators' labels.

use std::collections::BTreeMap;

use datasets::annotate::Rating;
use datasets::schema::PreferencePairRow;
use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};
use kernels::model::Grads;
use kernels::optim::{AdamW, AdamWConfig};
use kernels::schedule::Schedule;

use crate::collect_preferences::write_report;
use crate::common::read_input_table;
use crate::rlhf::pairs::read_pairs;
use crate::rlhf::policy::{clip_grads, Loaded};
use crate::rlhf::reward::MarginTable;
use crate::train::reduce::{GradPart, GradReduce};

pub struct TrainReward;

impl Stage for TrainReward {
    fn kind(&self) -> &'static str {
        "train_reward"
    }
    fn version(&self) -> u32 {
        // 2: the report counts the held-out pairs behind each accuracy (`gold_pairs_by_rating`).
        // 3: the `extra` input; the report's `mix` counts extra pairs.
        3
    }
    fn data_parallel(&self) -> bool {
        true
    }
    fn doc(&self) -> &'static str {
        "Llama 2 reward model: initialised from the policy with a fresh scalar head (`score.weight`), trained with -log σ(r_c - r_r - m(rating)) (margin none|small|large, Table 27) on the node's track plus other pairs (helpfulness ~50/50, safety 90/10), 1 epoch by default; reports held-out accuracy by rating level against the gold preference and the labels."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("pairs", ArtifactType::Table, "preference pairs (train and test splits)"),
            Port::new("init", ArtifactType::Model, "the policy the reward model starts from"),
            Port::optional("prompts", ArtifactType::Table, "prompt tables with `id` and `category`, for accuracy per family"),
            Port::optional(
                "extra",
                ArtifactType::Table,
                "more preference pairs from elsewhere (the paper's open-source data; e.g. `assistant_world.open_preferences` or an imported table): their `train` rows join the other-data share of the mix",
            ),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the reward model (LlamaForSequenceClassification layout, one label)"),
            Port::new("report", ArtifactType::Report, "accuracy_by_rating (gold), label_accuracy_by_rating, per-family accuracy, loss curve, data mix"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::str("track", None, "which reward model: `helpfulness` or `safety`"),
            ParamSpec::str("margin", Some("small"), "margin table: none, small (1, 2/3, 1/3, 0) or large (3, 2, 1, 0)"),
            ParamSpec::float("other_ratio", -1.0, 100.0, Some(-1.0), "other-track train pairs per own-track pair; -1 = the paper's mix (helpfulness 1.0, safety 1/9)"),
            ParamSpec::int("epochs", 1, 1000, Some(1), "passes over the mixed data (the paper: 1; longer overfits)"),
            ParamSpec::float("lr", 0.0, 1.0, Some(1e-5), "peak learning rate (the paper: 1e-5; 5e-6 for 70B)"),
            ParamSpec::float("min_lr_ratio", 0.0, 1.0, Some(0.1), "cosine schedule floor as a share of the peak (the paper: 10%)"),
            ParamSpec::float("warmup_share", 0.0, 1.0, Some(0.03), "warm-up steps as a share of all steps (the paper: 3%), at least `min_warmup`"),
            ParamSpec::int("min_warmup", 0, i64::MAX, Some(5), "the least number of warm-up steps (the paper: 5)"),
            ParamSpec::int("batch_pairs", 1, i64::MAX, Some(512), "pairs per optimiser step (the paper: 512)"),
            ParamSpec::int("micro_pairs", 1, i64::MAX, Some(32), "pairs per forward/backward (memory only: the gradient is the same)"),
            ParamSpec::float("weight_decay", 0.0, 1.0, Some(0.1), "AdamW weight decay"),
            ParamSpec::float("clip", 0.0, 1e6, Some(1.0), "global gradient-norm clip (0 = none)"),
            ParamSpec::int("max_tokens", 8, 1 << 20, Some(256), "chats longer than this keep their last tokens"),
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let cfg = RmConfig::from_params(ctx)?;
        let pairs = read_pairs(&read_input_table(ctx, "pairs")?, "pairs")?;
        let families = match ctx.input_opt("prompts") {
            Some(_) => prompt_families(&read_input_table(ctx, "prompts")?)?,
            None => BTreeMap::new(),
        };
        let policy = Loaded::load(ctx.input("init")?, "input `init`")?;
        let mut rm = policy.reward_model_init(ctx.seed)?;
        let extra = match ctx.input_opt("extra") {
            Some(_) => read_pairs(&read_input_table(ctx, "extra")?, "extra")?,
            None => Vec::new(),
        };
        let (train_set, mix) = training_mix(&pairs, &extra, &cfg.track, cfg.other_ratio, ctx.seed);
        if train_set.is_empty() {
            return Err(StageError::Message(format!("no `train` pairs for the {} reward model (of {} pairs)", cfg.track, pairs.len())));
        }
        let reduce = crate::train::reduce::for_collective(ctx.collective());
        let curve = train_rm(&mut rm, &train_set, &cfg, ctx.seed, ctx.instance, reduce.as_ref())?;
        let test: Vec<&PreferencePairRow> = pairs.iter().filter(|p| p.split == "test" && p.track == cfg.track).collect();
        let eval = evaluate(&rm, &test, &families)?;
        rm.save(ctx.output("model")?, "output `model`")?;
        let report = serde_json::json!({
            "track": cfg.track,
            "margin": ctx.params.str("margin")?,
            "train_pairs": train_set.len(),
            "mix": mix,
            "test_pairs": test.len(),
            "accuracy": eval.overall,
            "accuracy_by_rating": eval.by_rating,
            "gold_pairs_by_rating": eval.gold_pairs_by_rating,
            "label_accuracy_by_rating": eval.label_by_rating,
            "accuracy_by_family": eval.by_family,
            "loss_curve": curve,
        });
        write_report(ctx, "report", &report)
    }
}

/// The stage's result-changing settings, checked.
struct RmConfig {
    track: String,
    margin: MarginTable,
    other_ratio: f64,
    epochs: usize,
    lr: f64,
    min_lr_ratio: f64,
    warmup_share: f64,
    min_warmup: usize,
    batch_pairs: usize,
    micro_pairs: usize,
    weight_decay: f64,
    clip: f64,
    max_tokens: usize,
}

impl RmConfig {
    fn from_params(ctx: &RunCtx<'_>) -> Result<RmConfig, StageError> {
        let p = ctx.params;
        let track = p.str("track")?.to_string();
        if track != "helpfulness" && track != "safety" {
            return Err(StageError::Param { name: "track".into(), expected: "`helpfulness` or `safety`".into() });
        }
        let margin = MarginTable::parse(p.str("margin")?)
            .ok_or_else(|| StageError::Param { name: "margin".into(), expected: "none, small or large".into() })?;
        let ratio = p.float("other_ratio")?;
        let other_ratio = if ratio < 0.0 { paper_other_ratio(&track) } else { ratio };
        Ok(RmConfig {
            margin,
            other_ratio,
            epochs: p.int("epochs")? as usize,
            lr: p.float("lr")?,
            min_lr_ratio: p.float("min_lr_ratio")?,
            warmup_share: p.float("warmup_share")?,
            min_warmup: p.int("min_warmup")? as usize,
            batch_pairs: p.int("batch_pairs")? as usize,
            micro_pairs: p.int("micro_pairs")? as usize,
            weight_decay: p.float("weight_decay")?,
            clip: p.float("clip")?,
            max_tokens: p.int("max_tokens")? as usize,
            track,
        })
    }
}

/// The paper's mix: helpfulness takes an equal amount of other data (1.0 other per own pair);
/// safety is 90% safety, 10% helpfulness (1/9 other per own pair).
pub fn paper_other_ratio(track: &str) -> f64 {
    if track == "safety" { 1.0 / 9.0 } else { 1.0 }
}

/// A seeded, stable order key for a pair id (blake3, never std's hasher).
fn order_key(seed: u64, salt: &str, id: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(salt.as_bytes());
    h.update(id.as_bytes());
    *h.finalize().as_bytes()
}

/// The training pairs of a node: every collected `train` pair of its track plus `other_ratio`
/// times as many "other" pairs, drawn from the collected `train` pairs of the other track and
/// the `train` rows of `extra` (the paper's open-source data, any track) together: a seeded
/// choice, stable per pair id, so that adding pairs changes the choice little. As in the paper,
/// helpfulness takes its own data and an equal amount of everything else; safety 90/10.
/// Returns the pairs and the counts.
pub fn training_mix(
    pairs: &[PreferencePairRow],
    extra: &[PreferencePairRow],
    track: &str,
    other_ratio: f64,
    seed: u64,
) -> (Vec<PreferencePairRow>, serde_json::Value) {
    let train: Vec<&PreferencePairRow> = pairs.iter().filter(|p| p.split == "train").collect();
    let own: Vec<PreferencePairRow> = train.iter().filter(|p| p.track == track).map(|p| (*p).clone()).collect();
    let mut other: Vec<(&PreferencePairRow, bool)> = train.iter().filter(|p| p.track != track).map(|p| (*p, false)).collect();
    other.extend(extra.iter().filter(|p| p.split == "train").map(|p| (p, true)));
    other.sort_by_key(|(p, from_extra)| order_key(seed, if *from_extra { "mix/extra" } else { "mix" }, &p.id));
    let n_other = ((own.len() as f64 * other_ratio).round() as usize).min(other.len());
    let chosen = &other[..n_other];
    let mix = serde_json::json!({
        "own": own.len(),
        "other": n_other,
        "other_from_extra": chosen.iter().filter(|(_, e)| *e).count(),
        "other_available": other.len(),
        "extra_available": other.iter().filter(|(_, e)| *e).count(),
        "other_ratio": other_ratio,
    });
    let mut all = own;
    all.extend(chosen.iter().map(|(p, _)| (*p).clone()));
    (all, mix)
}

/// One point of the reward model's training curve.
#[derive(serde::Serialize)]
struct RmPoint {
    step: usize,
    loss: f32,
    accuracy: f32,
    lr: f32,
    grad_norm: f32,
}

/// Trains `rm` in place: seeded shuffle per epoch, steps of `batch_pairs` pairs (the last
/// step of the run may be smaller), each the mean loss over its pairs (micro-batches weighted
/// by their share of the step), clipped, AdamW with warm-up and cosine. The micro-batches are
/// the step's parts for `reduce` (data-parallel over the processes of a cluster run, bit-identical
/// to one process).
fn train_rm(rm: &mut Loaded, pairs: &[PreferencePairRow], cfg: &RmConfig, seed: u64, label: &str, reduce: &dyn GradReduce) -> Result<Vec<RmPoint>, StageError> {
    let encode = |p: &PreferencePairRow| -> Result<(Vec<u32>, Vec<u32>, f32), StageError> {
        let cut = |ids: Vec<u32>| ids[ids.len().saturating_sub(cfg.max_tokens)..].to_vec();
        let level = Rating::parse(&p.rating).map(|r| r.margin_level()).unwrap_or(p.margin_level);
        Ok((cut(rm.chat_ids(&p.prompt, &p.chosen)?), cut(rm.chat_ids(&p.prompt, &p.rejected)?), cfg.margin.margin(level)))
    };
    let encoded: Vec<(Vec<u32>, Vec<u32>, f32)> = pairs.iter().map(encode).collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = Vec::with_capacity(encoded.len() * cfg.epochs);
    for e in 0..cfg.epochs {
        let mut idx: Vec<usize> = (0..encoded.len()).collect();
        idx.sort_by_key(|&i| order_key(seed, &format!("epoch{e}"), &pairs[i].id));
        order.extend(idx);
    }
    let steps: Vec<&[usize]> = order.chunks(cfg.batch_pairs).collect();
    let total = steps.len();
    let warmup = ((total as f64 * cfg.warmup_share).ceil() as usize).max(cfg.min_warmup).min(total);
    let schedule = Schedule::Cosine { warmup_steps: warmup as u64, total_steps: total as u64, floor: cfg.min_lr_ratio as f32 };
    let mut opt = AdamW::new(AdamWConfig::llama2(cfg.weight_decay as f32), &rm.model);
    let mut curve = Vec::with_capacity(total);
    for (step, batch) in steps.iter().enumerate() {
        // The step's parts are its micro-batches; in a cluster run each process computes the
        // ones it owns and the parts are all-gathered, then every process adds them in part
        // order: the same float operations as on one process.
        let micros: Vec<&[usize]> = batch.chunks(cfg.micro_pairs).collect();
        let mut mine = Vec::new();
        for (j, micro) in micros.iter().enumerate().filter(|(j, _)| reduce.owns(*j)) {
            let share = micro.len() as f32 / batch.len() as f32;
            let c: Vec<Vec<u32>> = micro.iter().map(|&i| encoded[i].0.clone()).collect();
            let r: Vec<Vec<u32>> = micro.iter().map(|&i| encoded[i].1.clone()).collect();
            let m: Vec<f32> = micro.iter().map(|&i| encoded[i].2).collect();
            let (l, mut g, a) = rm.model.pairwise_reward_grads(&c, &r, &m).map_err(|e| StageError::wrap(format!("{label}: reward-model step {step}"), e))?;
            g.scale(share);
            mine.push(GradPart { index: j, loss: l * share, grads: g, metrics: vec![f64::from(a * share)] });
        }
        let parts = reduce.gather(mine, micros.len()).map_err(|e| StageError::wrap(format!("{label}: reward-model step {step}"), e))?;
        let mut grads = Grads::zeros(&rm.model);
        let (mut loss, mut acc) = (0.0f32, 0.0f32);
        for p in &parts {
            grads.add_assign(&p.grads);
            loss += p.loss;
            acc += p.metrics.first().copied().unwrap_or(0.0) as f32;
        }
        if !loss.is_finite() {
            return Err(StageError::Message(format!("{label}: reward-model loss is not finite at step {step}")));
        }
        let grad_norm = clip_grads(&mut grads, cfg.clip);
        let lr = schedule.lr(cfg.lr as f32, step as u64);
        opt.update(&mut rm.model, &grads, lr).map_err(|e| StageError::wrap(format!("{label}: reward-model update {step}"), e))?;
        curve.push(RmPoint { step: step + 1, loss, accuracy: acc, lr, grad_norm });
    }
    Ok(curve)
}

/// Held-out accuracy of a reward model.
pub struct RmEval {
    pub overall: f64,
    /// Against the gold preference (chosen_score vs rejected_score; gold ties and unknown gold
    /// scores left out), by rating name.
    pub by_rating: BTreeMap<String, f64>,
    /// How many held-out pairs each `by_rating` fraction is over (pairs gold prefers one
    /// answer of), by rating name.
    pub gold_pairs_by_rating: BTreeMap<String, usize>,
    /// Against the annotators' labels (the chosen answer), by rating name.
    pub label_by_rating: BTreeMap<String, f64>,
    /// Against gold, by prompt family (when prompt tables were given), then by rating.
    pub by_family: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Whether the reward model agrees with gold on a pair: `None` when gold has no preference.
pub fn agrees_with_gold(p: &PreferencePairRow, r_chosen: f32, r_rejected: f32) -> Option<bool> {
    if !(p.chosen_score.is_finite() && p.rejected_score.is_finite()) || p.chosen_score == p.rejected_score {
        return None;
    }
    Some((p.chosen_score > p.rejected_score) == (r_chosen > r_rejected))
}

fn evaluate(rm: &Loaded, test: &[&PreferencePairRow], families: &BTreeMap<String, String>) -> Result<RmEval, StageError> {
    let chosen: Vec<(&str, &str)> = test.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect();
    let rejected: Vec<(&str, &str)> = test.iter().map(|p| (p.prompt.as_str(), p.rejected.as_str())).collect();
    let (rc, rr) = (rm.score(&chosen)?, rm.score(&rejected)?);
    let mut gold: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut label: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut fam: BTreeMap<String, BTreeMap<String, (usize, usize)>> = BTreeMap::new();
    let (mut right, mut n) = (0usize, 0usize);
    for (i, p) in test.iter().enumerate() {
        let l = label.entry(p.rating.clone()).or_default();
        l.0 += usize::from(rc[i] > rr[i]);
        l.1 += 1;
        if let Some(ok) = agrees_with_gold(p, rc[i], rr[i]) {
            let g = gold.entry(p.rating.clone()).or_default();
            g.0 += usize::from(ok);
            g.1 += 1;
            right += usize::from(ok);
            n += 1;
            if let Some(f) = families.get(&p.prompt_id) {
                let e = fam.entry(f.clone()).or_default().entry(p.rating.clone()).or_default();
                e.0 += usize::from(ok);
                e.1 += 1;
            }
        }
    }
    let frac = |m: BTreeMap<String, (usize, usize)>| m.into_iter().map(|(k, (a, b))| (k, a as f64 / b as f64)).collect();
    Ok(RmEval {
        overall: if n == 0 { f64::NAN } else { right as f64 / n as f64 },
        gold_pairs_by_rating: gold.iter().map(|(k, &(_, b))| (k.clone(), b)).collect(),
        by_rating: frac(gold),
        label_by_rating: frac(label),
        by_family: fam.into_iter().map(|(k, m)| (k, frac(m))).collect(),
    })
}

/// prompt id -> category of a prompt table.
fn prompt_families(batch: &arrow_array::RecordBatch) -> Result<BTreeMap<String, String>, StageError> {
    let ids = datasets::table::str_values(batch, "id", "prompts").map_err(|e| StageError::wrap("input `prompts`", e))?;
    let cats = datasets::table::str_values(batch, "category", "prompts").map_err(|e| StageError::wrap("input `prompts`", e))?;
    Ok(ids.into_iter().zip(cats).map(|(a, b)| (a.to_string(), b.to_string())).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::common::{table_file, testing};
    use crate::rlhf::pairs::pairs_batch;
    use crate::rlhf::policy::testing::tiny_policy;

    fn pair(id: &str, track: &str, split: &str, chosen: &str, rejected: &str, rating: Rating, scores: (f32, f32)) -> PreferencePairRow {
        PreferencePairRow {
            id: id.into(),
            prompt_id: id.into(),
            prompt: "What is 3 + 4?".into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            rating: rating.as_str().into(),
            margin_level: rating.margin_level(),
            track: track.into(),
            safety_bin: "both_safe".into(),
            chosen_score: scores.0,
            rejected_score: scores.1,
            annotator: "t".into(),
            split: split.into(),
        }
    }

    #[test]
    fn mix_follows_the_paper_ratios() {
        let mut pairs = Vec::new();
        for i in 0..90 {
            pairs.push(pair(&format!("s{i}"), "safety", "train", "a", "b", Rating::Better, (1.0, 0.0)));
        }
        for i in 0..200 {
            pairs.push(pair(&format!("h{i}"), "helpfulness", "train", "a", "b", Rating::Better, (1.0, 0.0)));
        }
        pairs.push(pair("t", "safety", "test", "a", "b", Rating::Better, (1.0, 0.0)));
        let (s, _) = training_mix(&pairs, &[], "safety", paper_other_ratio("safety"), 1);
        assert_eq!(s.len(), 100);
        assert_eq!(s.iter().filter(|p| p.track == "helpfulness").count(), 10);
        let (h, mix) = training_mix(&pairs, &[], "helpfulness", paper_other_ratio("helpfulness"), 1);
        // Equal amount wanted (200) but only 90 safety pairs exist.
        assert_eq!(h.len(), 290);
        assert_eq!(mix["other"], 90);
        assert!(h.iter().all(|p| p.split == "train"));

        // Extra pairs (any track, `train` rows only) fill the other share beside the other track.
        let mut extra: Vec<PreferencePairRow> =
            (0..300).map(|i| pair(&format!("open-{i}"), if i % 3 == 0 { "safety" } else { "helpfulness" }, "train", "a", "b", Rating::Better, (1.0, 0.0))).collect();
        extra.push(pair("open-test", "helpfulness", "test", "a", "b", Rating::Better, (1.0, 0.0)));
        let (h2, mix2) = training_mix(&pairs, &extra, "helpfulness", 1.0, 1);
        assert_eq!(h2.len(), 400);
        assert_eq!(mix2["other"], 200);
        assert_eq!(mix2["extra_available"], 300);
        let from_extra = h2.iter().filter(|p| p.id.starts_with("open-")).count();
        assert_eq!(mix2["other_from_extra"], from_extra);
        // Drawn from both sources in proportion (300 of 390), not one source first.
        assert!((120..=190).contains(&from_extra), "{from_extra} of 200 from extra");
        assert!(h2.iter().all(|p| p.id != "open-test"));
        // The collected pairs the mix picks without extra data keep their order among themselves.
        let first_safety = |v: &[PreferencePairRow]| v.iter().find(|p| p.track == "safety" && !p.id.starts_with("open-")).map(|p| p.id.clone());
        assert_eq!(first_safety(&h2), first_safety(&h));
    }

    #[test]
    fn gold_agreement_skips_ties_and_unknown_scores() {
        let p = pair("a", "helpfulness", "test", "x", "y", Rating::Better, (0.9, 0.2));
        assert_eq!(agrees_with_gold(&p, 1.0, 0.0), Some(true));
        assert_eq!(agrees_with_gold(&p, 0.0, 1.0), Some(false));
        // A flipped label: gold prefers the rejected answer.
        let flipped = pair("b", "helpfulness", "test", "x", "y", Rating::Better, (0.2, 0.9));
        assert_eq!(agrees_with_gold(&flipped, 0.0, 1.0), Some(true));
        assert_eq!(agrees_with_gold(&pair("c", "h", "t", "x", "y", Rating::Better, (0.5, 0.5)), 1.0, 0.0), None);
        assert_eq!(agrees_with_gold(&pair("d", "h", "t", "x", "y", Rating::Better, (f32::NAN, 0.5)), 1.0, 0.0), None);
    }

    /// Data-parallel training over two "processes" (threads with an in-memory all-gather)
    /// ends with weights and a curve bit-identical to one process: the micro-batches are the
    /// parts, added in order everywhere.
    #[test]
    fn two_processes_train_the_same_reward_model_bit_for_bit() {
        let work = tempfile::tempdir().unwrap();
        tiny_policy(&work.path().join("policy"), 7);
        let policy = Loaded::load(&work.path().join("policy"), "p").unwrap();
        let pairs: Vec<PreferencePairRow> = (0..22)
            .map(|i| {
                let mut p = pair(&format!("p{i}"), "helpfulness", "train", &format!("The answer is {}.", i % 9), "I can't help with that.", Rating::Better, (1.0, 0.1));
                p.prompt = format!("What is {} + 1?", i % 9);
                p
            })
            .collect();
        let cfg = RmConfig {
            track: "helpfulness".into(), margin: MarginTable::Small, other_ratio: 1.0, epochs: 2, lr: 3e-3, min_lr_ratio: 0.1, warmup_share: 0.03,
            min_warmup: 1, batch_pairs: 10, micro_pairs: 3, weight_decay: 0.1, clip: 1.0, max_tokens: 32,
        };
        let train = |reduce: &dyn GradReduce| {
            let mut rm = policy.reward_model_init(3).unwrap();
            let curve = train_rm(&mut rm, &pairs, &cfg, 5, "rm", reduce).unwrap();
            let curve: Vec<(f32, f32, f32)> = curve.iter().map(|p| (p.loss, p.accuracy, p.grad_norm)).collect();
            (rm.model.params().iter().map(|t| t.to_vec()).collect::<Vec<Vec<f32>>>(), curve)
        };
        let one = train(&crate::train::Local);
        let runs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = crate::train::reduce::testing::processes(2).into_iter().map(|r| s.spawn(move || train(r.as_ref()))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (p, run) in runs.iter().enumerate() {
            assert!(run.0 == one.0, "process {p}: weights differ from one process");
            assert_eq!(run.1, one.1, "process {p}: curve differs");
        }
    }

    /// A reward model learns a clearly separable preference (a right answer over a refusal),
    /// reaching full held-out accuracy, and its report has every field.
    #[test]
    fn learns_a_separable_preference() {
        let work = tempfile::tempdir().unwrap();
        let policy = work.path().join("policy");
        tiny_policy(&policy, 7);
        let mut pairs = Vec::new();
        for i in 0..40 {
            let (a, b) = (i % 9, i % 7 + 1);
            let mut p = pair(&format!("p{i}"), "helpfulness", if i % 5 == 0 { "test" } else { "train" }, &format!("The answer is {}.", a + b), "I can't help with that.", Rating::SignificantlyBetter, (1.0, 0.1));
            p.prompt = format!("What is {a} + {b}?");
            pairs.push(p);
        }
        let pdir = work.path().join("pairs");
        std::fs::create_dir_all(&pdir).unwrap();
        datasets::table::write_parquet(&table_file(&pdir), &pairs_batch(&pairs, "pairs").unwrap()).unwrap();
        let stage = TrainReward;
        use graph::ParamValue as V;
        let params = testing::params(&stage, &[
            ("track", V::Str("helpfulness".into())), ("epochs", V::Int(4)), ("lr", V::Float(3e-3)),
            ("batch_pairs", V::Int(8)), ("micro_pairs", V::Int(4)), ("min_warmup", V::Int(2)),
        ]);
        let inputs = BTreeMap::from([("pairs".to_string(), pdir), ("init".to_string(), policy)]);
        let (out, _) = testing::run(&stage, &params, work.path(), inputs, &work.path().join("w"), 1).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out["report"].join("report.json")).unwrap()).unwrap();
        assert_eq!(report["test_pairs"], 8);
        assert_eq!(report["accuracy_by_rating"]["significantly_better"], 1.0, "{report}");
        assert_eq!(report["gold_pairs_by_rating"]["significantly_better"], 8, "{report}");
        assert_eq!(report["loss_curve"].as_array().unwrap().len(), 16);
        let rm = Loaded::load(&out["model"], "rm").unwrap();
        let s = rm.score(&[("What is 2 + 2?", "The answer is 4."), ("What is 2 + 2?", "I can't help with that.")]).unwrap();
        assert!(s[0] > s[1]);
    }
}
