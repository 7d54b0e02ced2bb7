//! `alignflow plan`: for every instance, whether it is cached or why it will run. The reasons
//! come from diffing the instance's fingerprint inputs against those recorded by the last run
//! of the same pipeline in the workspace (like `dvc status`): which parameter, input, seed,
//! source file or code version changed.

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
}

impl PlanEntry {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "kind": self.kind, "round": self.round, "fingerprint": self.fingerprint,
            "status": if self.cached { "cached" } else { "will run" }, "reasons": self.reasons,
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
                    let keys: std::collections::BTreeSet<&String> = old.params.keys().chain(new.params.keys()).collect();
                    for k in keys {
                        let (a, b) = (old.params.get(k), new.params.get(k));
                        if a != b {
                            let show = |v: Option<&String>| v.map(|s| strip_tag(s)).unwrap_or_else(|| "unset".into());
                            reasons.push(format!("parameter `{k}` changed ({} -> {})", show(a), show(b)));
                        }
                    }
                    if old.seed != new.seed {
                        reasons.push("seed changed".to_string());
                    }
                    if old.external != new.external {
                        reasons.push("source data file changed".to_string());
                    }
                    for (port, v) in &new.inputs {
                        if old.inputs.get(port) != Some(v) {
                            let why = match inst.inputs.get(port).map(|s| s.instance) {
                                Some(up) if will_run.get(&up) == Some(&true) => {
                                    format!("input `{port}` changed (upstream `{}` will run)", plan.instances[up].name)
                                }
                                Some(up) => format!("input `{port}` changed (now `{}`)", plan.instances[up].name),
                                None => format!("input `{port}` changed"),
                            };
                            reasons.push(why);
                        }
                    }
                    if reasons.is_empty() {
                        reasons.push("outputs missing from the store".to_string());
                    }
                }
            }
        }
        out.push(PlanEntry { name: inst.name.clone(), kind: decl.kind.clone(), round: inst.round, fingerprint: inst.fingerprint.clone(), cached, reasons });
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
