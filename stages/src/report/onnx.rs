//! ONNX judges in `alignflow report`: each `onnx_judge` instance's metric (mean classifier score
//! and the share at or above its threshold, overall and by category), named after the model whose
//! eval table it scored (the `eval` instance wired to its `results` port, and that eval's model).

use graph::store::{InstanceRecord, RunRecord};
use graph::Store;

use super::ReportError;

/// One `onnx_judge` instance.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxJudge {
    pub instance: String,
    /// The instance whose table it scored (an `eval` instance), when it is in the run.
    pub scored: Option<String>,
    /// The stage that produced the model that `scored` evaluated.
    pub model: Option<String>,
    pub report: serde_json::Value,
}

/// The instance of `record` whose output `port` of `r` reads.
fn upstream<'a>(record: &'a RunRecord, r: &InstanceRecord, port: &str) -> Option<(&'a String, &'a InstanceRecord)> {
    let fp = r.inputs.inputs.get(port)?.split('.').next()?;
    record.instances.iter().find(|(_, i)| i.fingerprint == fp)
}

/// Reads the report of the `onnx_judge` instance `name`.
pub fn judge(store: &Store, record: &RunRecord, name: &str, r: &InstanceRecord) -> Result<OnnxJudge, ReportError> {
    let path = store.output_dir(&r.fingerprint, "report").join("report.json");
    let report = super::read_json(&path)?;
    let scored = upstream(record, r, "results");
    let model = scored.and_then(|(_, e)| upstream(record, e, "model")).map(|(n, _)| n.clone());
    Ok(OnnxJudge { instance: name.to_string(), scored: scored.map(|(n, _)| n.clone()), model, report })
}

/// `{INSTANCE: {"metric", "model", "eval_stage", "column", "n", "mean", "flagged_rate",
/// "threshold", "by_category"}}`.
pub fn to_json(judges: &[OnnxJudge]) -> serde_json::Value {
    let keys = ["metric", "column", "n", "mean", "flagged_rate", "threshold", "by_category"];
    judges
        .iter()
        .map(|j| {
            let mut v = super::pick(&j.report, &keys);
            v["model"] = j.model.clone().into();
            v["eval_stage"] = j.scored.clone().into();
            (j.instance.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The "ONNX judges" section (nothing when there is none).
pub fn markdown(judges: &[OnnxJudge], s: &mut String) {
    if judges.is_empty() {
        return;
    }
    let num = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
    s.push_str("\n## ONNX judges\n\n| judge | model | scored | metric | n | mean score | flagged (>= threshold) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for j in judges {
        let r = &j.report;
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} (>= {}) |\n",
            j.instance,
            j.model.as_deref().unwrap_or("-"),
            j.scored.as_deref().unwrap_or("-"),
            r["metric"].as_str().unwrap_or("-"),
            r["n"],
            num(&r["mean"]),
            num(&r["flagged_rate"]),
            num(&r["threshold"]),
        ));
    }
}
