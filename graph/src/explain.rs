//! `alignflow plan`: for every instance, whether it is cached or why it will run. The reasons
//! come from diffing the instance's fingerprint inputs against those recorded by the last run
//! of the same pipeline in the workspace (like `dvc status`): which parameter, input, seed,
//! source file or code version changed.
//!
//! `plan` cannot know content before running: an instance whose only changes are inputs from
//! upstream instances that will run is reported as "will run unless its inputs come out
//! identical (early cut-off)": if those upstream instances produce byte-identical outputs, the
//! run finds the instance by its content key and reuses its artifact (docs/runtime.md).

use std::collections::HashMap;

use crate::plan::Plan;
use crate::store::Store;

/// One line of the plan.
#[derive(Clone, Debug)]
pub struct PlanEntry {
    pub name: String,
    pub kind: String,
    pub round: u32,
    pub fingerprint: String,
    pub cached: bool,
    /// Why it will run (empty when cached).
    pub reasons: Vec<String>,
    /// It will run only because upstream instances will run: if their outputs come out
    /// byte-identical to those it was computed from before, the run reuses its artifact
    /// (early cut-off) instead.
    pub cutoff_possible: bool,
}

/// The reason added to an instance that early cut-off may spare.
pub const CUTOFF_REASON: &str = "will run unless its inputs come out identical (early cut-off)";

impl PlanEntry {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "kind": self.kind, "round": self.round, "fingerprint": self.fingerprint,
            "status": if self.cached { "cached" } else { "will run" }, "reasons": self.reasons,
            "cutoff_possible": self.cutoff_possible,
        })
    }
}

/// Explains `plan` against the store's contents and last run record. Reads only.
pub fn explain(plan: &Plan, store: &Store) -> Vec<PlanEntry> {
    let last = store.last_run(&plan.pipeline.name).unwrap_or_default();
    let mut will_run: HashMap<usize, bool> = HashMap::new();
    let mut out = Vec::new();
    for (idx, inst) in plan.instances.iter().enumerate() {
        let decl = &plan.pipeline.stages[inst.stage];
        let cached = store.manifest(&inst.fingerprint).is_some();
        will_run.insert(idx, !cached);
        let mut reasons = Vec::new();
        let mut cutoff_possible = false;
        if !cached {
            match last.instances.get(&inst.name) {
                None => reasons.push("not run before in this workspace".to_string()),
                Some(prev) => {
                    let (old, new) = (&prev.inputs, &inst.record);
                    if old.kind != new.kind {
                        reasons.push(format!("kind changed ({} -> {})", old.kind, new.kind));
                    } else if old.version != new.version {
                        reasons.push(format!("code version of `{}` changed ({} -> {})", new.kind, old.version, new.version));
                    }
                    let mut other_change = !reasons.is_empty();
                    let mut upstream_runs = false;
                    let keys: std::collections::BTreeSet<&String> = old.params.keys().chain(new.params.keys()).collect();
                    for k in keys {
                        let (a, b) = (old.params.get(k), new.params.get(k));
                        if a != b {
                            other_change = true;
                            let show = |v: Option<&String>| v.map(|s| strip_tag(s)).unwrap_or_else(|| "unset".into());
                            reasons.push(format!("parameter `{k}` changed ({} -> {})", show(a), show(b)));
                        }
                    }
                    if old.seed != new.seed {
                        other_change = true;
                        reasons.push("seed changed".to_string());
                    }
                    if old.external != new.external {
                        other_change = true;
                        reasons.push("source data file changed".to_string());
                    }
                    for (port, v) in &new.inputs {
                        if old.inputs.get(port) != Some(v) {
                            let why = match inst.inputs.get(port).map(|s| s.instance) {
                                Some(up) if will_run.get(&up) == Some(&true) => {
                                    upstream_runs = true;
                                    format!("input `{port}` changed (upstream `{}` will run)", plan.instances[up].name)
                                }
                                Some(up) => {
                                    other_change = true;
                                    format!("input `{port}` changed (now `{}`)", plan.instances[up].name)
                                }
                                None => {
                                    other_change = true;
                                    format!("input `{port}` changed")
                                }
                            };
                            reasons.push(why);
                        }
                    }
                    if reasons.is_empty() {
                        reasons.push("outputs missing from the store".to_string());
                    }
                    // Only upstream instances that will run changed it: their outputs may
                    // come out the same, and then this one is reused by content.
                    if upstream_runs && !other_change {
                        cutoff_possible = true;
                        reasons.push(CUTOFF_REASON.to_string());
                    }
                }
            }
        }
        out.push(PlanEntry { name: inst.name.clone(), kind: decl.kind.clone(), round: inst.round, fingerprint: inst.fingerprint.clone(), cached, reasons, cutoff_possible });
    }
    out
}

/// "i:400" -> "400", "s:\"x\"" -> "\"x\"" (canonical text without its type tag).
fn strip_tag(s: &str) -> String {
    match s.split_once(':') {
        Some((tag, rest)) if tag.len() == 1 => rest.to_string(),
        _ => s.to_string(),
    }
}
