//! `alignflow report`: gathers the `eval` reports and training loss curves of a pipeline's last
//! run from the workspace and renders them as one JSON object, Markdown and PNG plots.
//!
//! Models are named after the stage that produced the evaluated model (the instance wired to
//! the eval node's `model` port, e.g. `pretrain`, `sft`, `ppo@2`), found through the run
//! record's fingerprints; an eval whose model comes from outside the pipeline keeps its own
//! instance name. Models are listed in pipeline order, rounds in order.
//!
//! Besides the models: the pipeline graph with what the last run did with each instance
//! (`pipeline_graph`), the RLHF stages' own reports, and instruction adherence by turn with and
//! without Ghost Attention (`dialogue`).

mod dialogue;
mod pipeline_graph;
mod onnx;
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use graph::Store;

use crate::eval::{EvalReport, Metrics};
use crate::train::LossPoint;

/// Errors gathering or writing a report; each names the workspace, instance or file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no run of pipeline `{pipeline}` recorded in workspace {workspace}")]
    NoRun { pipeline: String, workspace: PathBuf },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

/// One evaluated model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelResult {
    /// The producing stage instance (`sft`, `ppo@2`), the key of `models` in the JSON.
    pub name: String,
    /// The eval instance that judged it.
    pub eval_instance: String,
    pub report: EvalReport,
}

/// The loss curve of one training instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub instance: String,
    pub points: Vec<LossPoint>,
}

/// The report of one RLHF stage instance (`train_reward`, `rejection_sample` or `ppo`), as
/// that stage wrote it (`report.json` of its `report` output).
#[derive(Clone, Debug, PartialEq)]
pub struct StageReport {
    /// The instance (`rm_helpful@2`).
    pub instance: String,
    pub report: serde_json::Value,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub pipeline: String,
    pub models: Vec<ModelResult>,
    pub curves: Vec<Curve>,
    /// `train_reward` instances, in pipeline order.
    pub reward_models: Vec<StageReport>,
    /// `rejection_sample` instances.
    pub rejection_sampling: Vec<StageReport>,
    /// `ppo` instances.
    pub ppo: Vec<StageReport>,
    /// `onnx_judge` instances (report/onnx.rs).
    pub onnx_judges: Vec<onnx::OnnxJudge>,
    /// Every instance of the last run, dependencies first.
    pub graph: Vec<pipeline_graph::GraphNode>,
    /// `eval_dialogue` instances, in pipeline order.
    pub dialogues: Vec<dialogue::DialogueEval>,
    /// Which of `dialogues` is with and which without GAtt.
    pub gatt_pairing: dialogue::Pairing,
}

/// The keys of a `train_reward` report lifted into the JSON report.
const RM_KEYS: [&str; 9] = ["track", "margin", "train_pairs", "test_pairs", "accuracy", "accuracy_by_rating", "gold_pairs_by_rating", "label_accuracy_by_rating", "accuracy_by_family"];
/// The keys of a `rejection_sample` report lifted into the JSON report.
const RS_KEYS: [&str; 9] = [
    "prompts", "max_reward_by_k", "median_reward_by_k", "gold_of_chosen_by_k", "gold_median_by_k", "unsafe_of_chosen_by_k", "pool_size", "pool_mean_gold", "round_best_mean_gold",
];

/// Stage kinds whose model output carries a `loss_curve.json`.
const TRAINING_KINDS: [&str; 2] = ["sft", "gatt"];

/// Reads the last run of `pipeline` in `store`. `stage_order` lists the pipeline's stage names
/// in file order (instances of the same stage sort by round).
pub fn gather(store: &Store, pipeline: &str, stage_order: &[String]) -> Result<Report, ReportError> {
    let record = store.last_run(pipeline).ok_or_else(|| ReportError::NoRun { pipeline: pipeline.into(), workspace: store.root().to_path_buf() })?;
    let by_fp: BTreeMap<&str, &str> = record.instances.iter().map(|(name, r)| (r.fingerprint.as_str(), name.as_str())).collect();
    let rank = |stage: &str, round: u32| (stage_order.iter().position(|s| s == stage).unwrap_or(usize::MAX), round);
    let mut instances: Vec<(&String, &graph::store::InstanceRecord)> = record.instances.iter().collect();
    instances.sort_by_key(|(name, r)| (rank(&r.stage, r.round), (*name).clone()));
    let (mut models, mut curves) = (Vec::new(), Vec::new());
    let (mut reward_models, mut rejection_sampling, mut ppo) = (Vec::new(), Vec::new(), Vec::new());
    let mut onnx_judges = Vec::new();
    let (mut dialogues, mut gatts) = (Vec::new(), Vec::new());
    let producer = |r: &graph::store::InstanceRecord| r.inputs.inputs.get("model").and_then(|v| v.split('.').next()).and_then(|fp| by_fp.get(fp)).map(|s| s.to_string());
    for (name, r) in instances {
        let Some(manifest) = store.manifest(&r.fingerprint) else { continue };
        if manifest.kind == "gatt" {
            gatts.push(dialogue::GattInstance { instance: name.clone(), base_model: producer(r) });
        }
        if manifest.kind == "eval_dialogue" {
            let path = store.output_dir(&r.fingerprint, "report").join("report.json");
            dialogues.push(dialogue::DialogueEval { instance: name.clone(), model: producer(r), report: read_json(&path)? });
            continue;
        }
        if manifest.kind == "onnx_judge" {
            onnx_judges.push(onnx::judge(store, &record, name, r)?);
            continue;
        }
        if manifest.kind == "eval" {
            let path = store.output_dir(&r.fingerprint, "report").join("report.json");
            let report = read_json::<EvalReport>(&path)?;
            models.push(ModelResult { name: producer(r).unwrap_or_else(|| name.clone()), eval_instance: name.clone(), report });
        } else if let Some(list) = match manifest.kind.as_str() {
            "train_reward" => Some(&mut reward_models),
            "rejection_sample" => Some(&mut rejection_sampling),
            "ppo" => Some(&mut ppo),
            _ => None,
        } {
            let path = store.output_dir(&r.fingerprint, "report").join("report.json");
            list.push(StageReport { instance: name.clone(), report: read_json(&path)? });
        } else if TRAINING_KINDS.contains(&manifest.kind.as_str()) {
            let path = store.output_dir(&r.fingerprint, "model").join("loss_curve.json");
            if path.is_file() {
                curves.push(Curve { instance: name.clone(), points: read_json(&path)? });
            }
        }
    }
    let graph = pipeline_graph::nodes(&record, &rank);
    let gatt_pairing = dialogue::pair(&dialogues, &gatts);
    Ok(Report { onnx_judges, pipeline: pipeline.to_string(), models, curves, reward_models, rejection_sampling, ppo, graph, dialogues, gatt_pairing })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::File { path: path.into(), message: e.to_string() })?;
    serde_json::from_slice(&bytes).map_err(|e| ReportError::File { path: path.into(), message: format!("not a report: {e}") })
}

/// The metrics of one decoding mode as the JSON keys the README documents.
fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::json!({
        "helpfulness": m.helpfulness,
        "violation_rate": m.violation_rate,
        "false_refusal_rate": m.false_refusal_rate,
        "false_refusal_borderline": m.false_refusal_borderline,
        "eos_rate": m.eos_rate,
        "by_category": m.by_category,
    })
}

/// `keys` of a stage report (missing keys left out).
fn pick(report: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for k in keys {
        if let Some(v) = report.get(*k) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    serde_json::Value::Object(m)
}

/// A PPO report's summary: the curve and held-out evaluations as they are, plus the first and
/// last point's reward, KL and gold.
fn ppo_json(report: &serde_json::Value) -> serde_json::Value {
    let mut v = pick(report, &["best_iteration", "stopped_early", "stopped_on_kl", "kl_at_stop", "heldout", "curve"]);
    let curve = report.get("curve").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    v["iterations_run"] = curve.len().into();
    for (name, point) in [("first", curve.first()), ("last", curve.last())] {
        v[name] = point.map(|p| pick(p, &["reward", "kl", "entropy", "clip_fraction", "gold"])).unwrap_or(serde_json::Value::Null);
    }
    v
}

impl Report {
    /// `{"pipeline", "models": {NAME: {greedy fields..., "sampled": {same}, "eval_stage"}},
    /// "training": {INSTANCE: {"steps", "final_loss"}}, "reward_models": {INSTANCE: {...,
    /// "accuracy_by_rating"}}, "rejection_sampling": {INSTANCE: {"max_reward_by_k", ...}},
    /// "ppo": {INSTANCE: {"curve", ...}}, "graph": {"instances": [...], "status_counts"},
    /// "model_order": [NAME], "adherence": {"with_gatt", "without_gatt", ...} | null}` (README,
    /// "Report").
    pub fn to_json(&self) -> serde_json::Value {
        let mut models = serde_json::Map::new();
        for m in &self.models {
            let mut v = metrics_json(&m.report.greedy);
            v["sampled"] = m.report.sampled.as_ref().map(metrics_json).unwrap_or(serde_json::Value::Null);
            v["samples_per_prompt"] = m.report.samples_per_prompt.into();
            v["temperature"] = m.report.temperature.into();
            v["eval_stage"] = m.eval_instance.clone().into();
            models.insert(m.name.clone(), v);
        }
        let training: serde_json::Map<String, serde_json::Value> = self
            .curves
            .iter()
            .map(|c| (c.instance.clone(), serde_json::json!({ "steps": c.points.len(), "final_loss": c.points.last().map(|p| p.loss) })))
            .collect();
        let lift = |list: &[StageReport], f: &dyn Fn(&serde_json::Value) -> serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
            list.iter().map(|r| (r.instance.clone(), f(&r.report))).collect()
        };
        serde_json::json!({
            "pipeline": self.pipeline,
            "models": models,
            "training": training,
            "reward_models": lift(&self.reward_models, &|r| pick(r, &RM_KEYS)),
            "rejection_sampling": lift(&self.rejection_sampling, &|r| pick(r, &RS_KEYS)),
            "ppo": lift(&self.ppo, &ppo_json),
            "onnx_judges": onnx::to_json(&self.onnx_judges),
            "model_order": self.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            "graph": pipeline_graph::to_json(&self.graph),
            "adherence": dialogue::to_json(&self.dialogues, self.gatt_pairing),
        })
    }

    /// Writes `report.md`, `report.json` and the PNG plots into `out`; returns the files written.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(out).map_err(|e| ReportError::File { path: out.into(), message: e.to_string() })?;
        let plots = plot::plot_all(self, out)?;
        let mut written = plots.clone();
        let md = out.join("report.md");
        std::fs::write(&md, self.markdown(&plots)).map_err(|e| ReportError::File { path: md.clone(), message: e.to_string() })?;
        written.push(md);
        let json = out.join("report.json");
        let text = serde_json::to_vec_pretty(&self.to_json()).expect("json");
        std::fs::write(&json, text).map_err(|e| ReportError::File { path: json.clone(), message: e.to_string() })?;
        written.push(json);
        Ok(written)
    }

    /// The Markdown report; `plots` are linked by file name (they sit next to it), each in the
    /// section it illustrates.
    pub fn markdown(&self, plots: &[PathBuf]) -> String {
        let names: Vec<String> = plots.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().to_string()).collect();
        let used = std::cell::RefCell::new(Vec::<String>::new());
        let embed = |file: &str, alt: &str| -> String {
            if names.iter().any(|n| n == file) {
                used.borrow_mut().push(file.to_string());
                format!("![{alt}]({file})\n\n")
            } else {
                String::new()
            }
        };
        let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        let mut s = format!("# alignflow report: `{}`\n\n", self.pipeline);
        s.push_str(
            "What the last run of this pipeline produced, read from its workspace by `alignflow report`. \
             Every number here is also in `report.json` (README, \"Report\"). A dash means there was nothing \
             to count.\n\n",
        );
        if plots.is_empty() {
            s.push_str("_No plots: no TrueType font was found on this system (see docs/sft-eval.md)._\n\n");
        }
        pipeline_graph::markdown(&self.graph, &mut s);
        s.push_str(&embed("graph.png", "the pipeline graph"));
        s.push_str("## Evaluated models\n\n");
        if self.models.is_empty() {
            s.push_str("No `eval` stage in the last run.\n\n");
        } else {
            s.push_str(
                "Each model is named after the stage that trained it and was judged on held-out prompts by the \
                 world's gold judges (exact rules, not a learned model). **Helpfulness** is the mean gold score of \
                 the answers (0 to 1, higher is better); **violation rate** is the share of answers to unsafe \
                 prompts that comply instead of refusing; **false refusal** is the share of safe prompts that \
                 were refused, and **(borderline)** the same on prompts that only look unsafe; **EOS rate** is \
                 the share of answers that ended properly. Greedy decoding takes the most likely token; sampled \
                 answers use the eval stage's temperature.\n\n",
            );
        }
        for (title, pick) in [("Greedy decoding", false), ("Sampled (temperature from the eval stage)", true)] {
            if self.models.is_empty() {
                break;
            }
            s.push_str(&format!("### {title}\n\n| model | helpfulness | violation rate | false refusal | false refusal (borderline) | EOS rate |\n|---|---|---|---|---|---|\n"));
            for m in &self.models {
                let metrics = if pick { m.report.sampled.as_ref() } else { Some(&m.report.greedy) };
                if let Some(x) = metrics {
                    s.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", m.name, f(x.helpfulness), f(x.violation_rate), f(x.false_refusal_rate), f(x.false_refusal_borderline), f(x.eos_rate)));
                }
            }
            s.push('\n');
        }
        s.push_str(&embed("helpfulness.png", "gold helpfulness per model"));
        s.push_str(&embed("safety.png", "violation and false-refusal rates per model"));
        if self.models.len() > 1 {
            s.push_str(
                "### Round by round\n\nThe same figures as lines, models in pipeline order (the SFT model, then \
                 each RLHF round's policy): whether helpfulness rises round after round while violations and \
                 false refusals stay low.\n\n",
            );
            s.push_str(&embed("rounds.png", "helpfulness, violation and false-refusal rates by round"));
        }
        let cats: Vec<String> = self.models.iter().flat_map(|m| m.report.greedy.by_category.keys().cloned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if !cats.is_empty() {
            s.push_str("### Helpfulness by category (greedy / sampled)\n\nThe world's prompt families (arithmetic, capitals, ...; unsafe and borderline prompts score 1 for the right refusal or answer).\n\n| category |");
            for m in &self.models {
                s.push_str(&format!(" {} |", m.name));
            }
            s.push_str("\n|---|");
            s.push_str(&"---|".repeat(self.models.len()));
            s.push('\n');
            for c in &cats {
                s.push_str(&format!("| {c} |"));
                for m in &self.models {
                    let g = m.report.greedy.by_category.get(c).map(|x| x.helpfulness);
                    let sm = m.report.sampled.as_ref().and_then(|x| x.by_category.get(c)).map(|x| x.helpfulness);
                    s.push_str(&format!(" {} / {} |", f(g), f(sm)));
                }
                s.push('\n');
            }
            s.push('\n');
            s.push_str(&embed("categories.png", "helpfulness by category"));
        }
        self.rlhf_markdown(&mut s, &embed);
        onnx::markdown(&self.onnx_judges, &mut s);
        let adherence_png = embed("adherence.png", "adherence by turn");
        dialogue::markdown(&self.dialogues, self.gatt_pairing, &mut s);
        if !self.dialogues.is_empty() {
            s.push_str(&adherence_png);
        }
        if !self.curves.is_empty() {
            s.push_str("## Training\n\nThe language-modelling loss (cross-entropy per target token) of each training stage: it should fall and level off.\n\n| stage | steps | first loss | final loss |\n|---|---|---|---|\n");
            for c in &self.curves {
                let l = |p: Option<&LossPoint>| p.map(|p| format!("{:.4}", p.loss)).unwrap_or_else(|| "–".into());
                s.push_str(&format!("| {} | {} | {} | {} |\n", c.instance, c.points.len(), l(c.points.first()), l(c.points.last())));
            }
            s.push('\n');
            s.push_str(&embed("loss.png", "training loss"));
        }
        let rest: Vec<&String> = names.iter().filter(|n| !used.borrow().contains(*n)).collect();
        if !rest.is_empty() {
            s.push_str("## Other plots\n\n");
            for name in rest {
                s.push_str(&format!("![{name}]({name})\n\n"));
            }
        }
        s
    }

    /// The reward-model, rejection-sampling and PPO sections (one row per instance, so per
    /// round), each with a paragraph and its plot.
    fn rlhf_markdown(&self, s: &mut String, embed: &dyn Fn(&str, &str) -> String) {
        let num = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into());
        if !self.reward_models.is_empty() {
            s.push_str(
                "## Reward models: held-out accuracy by rating\n\nEach round trains a helpfulness and a safety reward \
                 model on the preference pairs collected so far. Accuracy is the share of held-out pairs of the \
                 model's track on which it prefers the answer the **gold** judge prefers, by how strongly the \
                 annotator rated the difference (\"significantly better\" pairs should be easiest, \"negligibly \
                 better\" close to chance, 0.5); \"all\" counts every held-out pair. Each cell gives the \
                 number of held-out pairs it is over in brackets: a fraction of 35 pairs moves by 0.03 per pair.\n\n\
                 | instance | track | test pairs | significantly better | better | slightly better | negligibly better | all |\n|---|---|---|---|---|---|---|---|\n",
            );
            for r in &self.reward_models {
                let a = &r.report["accuracy_by_rating"];
                let count = &r.report["gold_pairs_by_rating"];
                let lv: Vec<String> = RATING_LEVELS
                    .iter()
                    .map(|l| match count[*l].as_u64() {
                        Some(n) => format!("{} ({n})", num(&a[*l])),
                        None => num(&a[*l]),
                    })
                    .collect();
                s.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.instance, r.report["track"].as_str().unwrap_or("?"), r.report["test_pairs"], lv.join(" | "), num(&r.report["accuracy"])));
            }
            s.push('\n');
            s.push_str(&embed("reward_models.png", "reward-model accuracy by rating"));
        }
        if !self.rejection_sampling.is_empty() {
            s.push_str(
                "## Rejection sampling: best of K\n\nFor each prompt the policy writes K answers and the reward models \
                 pick one. **Max reward at K** is the reward-model score (read as a probability) of the best of K \
                 answers, and **median reward** the median of those K; **gold of chosen at K** is the gold \
                 helpfulness of the answer the reward models pick among K, and **gold median** the gold median of \
                 the K. Each is the expectation over every choice of K of a prompt's samples (so K = 1 is the mean \
                 over all samples), averaged over prompts. The gap between max and median is what rejection \
                 sampling can gain (the paper's Figure 7); gold of chosen rising with K means the reward models \
                 pick genuinely better answers.\n\n\
                 | instance | K | max reward | median reward | gold of chosen | gold median |\n|---|---|---|---|---|---|\n",
            );
            for r in &self.rejection_sampling {
                for k in k_values(&r.report) {
                    let g = |key: &str| num(&r.report[key][k.to_string().as_str()]);
                    s.push_str(&format!("| {} | {k} | {} | {} | {} | {} |\n", r.instance, g("max_reward_by_k"), g("median_reward_by_k"), g("gold_of_chosen_by_k"), g("gold_median_by_k")));
                }
            }
            s.push('\n');
            s.push_str(&embed("rejection_sampling.png", "max reward and gold of the chosen answer against K"));
        }
        if !self.ppo.is_empty() {
            s.push_str(
                "## PPO\n\nEach round's PPO run: **reward** is the mean combined reward-model score of the sampled \
                 answers, **KL** the mean divergence of the policy from the model it started from (the penalty keeps \
                 it small), **gold** the gold helpfulness of the same answers, **clip fraction** the share of tokens \
                 whose probability ratio was clipped. First / last iteration; the best iteration (by held-out \
                 reward) is the round's policy.\n\n\
                 | instance | iterations | best iteration | reward | KL | entropy | clip fraction | gold |\n|---|---|---|---|---|---|---|---|\n",
            );
            for r in &self.ppo {
                let v = ppo_json(&r.report);
                let fl = |k: &str| format!("{} / {}", num(&v["first"][k]), num(&v["last"][k]));
                s.push_str(&format!("| {} | {} | {} | {} | {} | {} | {} | {} |\n", r.instance, v["iterations_run"], v["best_iteration"], fl("reward"), fl("kl"), fl("entropy"), fl("clip_fraction"), fl("gold")));
            }
            s.push('\n');
            s.push_str(&embed("ppo.png", "PPO reward, KL and gold by iteration"));
        }
    }
}

/// The rating levels of a preference pair, strongest first (the keys of `accuracy_by_rating`).
const RATING_LEVELS: [&str; 4] = ["significantly_better", "better", "slightly_better", "negligibly_better"];

/// The K values of a rejection-sampling report (keys of `max_reward_by_k`), ascending.
fn k_values(report: &serde_json::Value) -> Vec<usize> {
    let mut ks: Vec<usize> = report["max_reward_by_k"].as_object().map(|m| m.keys().filter_map(|k| k.parse().ok()).collect()).unwrap_or_default();
    ks.sort_unstable();
    ks
}
