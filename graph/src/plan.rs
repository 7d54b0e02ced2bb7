//! The plan: a checked pipeline unrolled into stage instances in a topological order. A stage
//! outside loops is one instance (round 0); a loop body stage is one instance per round
//! (`name@r`, r = 1..=rounds). Carries are resolved here: in round 1 a carry is its `init`
//! (or absent), in round r+1 it is the `next` output of round r. Outside the loop a reference
//! to a body stage means its last round. Each instance gets its seed and fingerprint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::check::{Pipeline, Ref};
use crate::fingerprint::{derive_u64, FpRecord};
use crate::stage::{Registry, StageError};

/// One unit of execution: a stage in a round.
#[derive(Clone, Debug)]
pub struct Instance {
    /// `stage` outside loops, `stage@round` inside.
    pub name: String,
    /// Index into `Pipeline::stages`.
    pub stage: usize,
    /// 1-based round inside a loop, 0 outside.
    pub round: u32,
    pub seed: u64,
    /// Connected ports -> the instance and output they read. A round-1 carry without `init`
    /// is simply absent.
    pub inputs: BTreeMap<String, Source>,
    /// Distinct upstream instances, ascending.
    pub deps: Vec<usize>,
    pub record: FpRecord,
    pub fingerprint: String,
}

/// Where an input comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub instance: usize,
    pub output: String,
}

/// A pipeline ready to run: instances in topological order (every dependency first).
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    pub instances: Vec<Instance>,
    /// Directory of the pipeline file (relative paths in parameters resolve here).
    pub base_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("dependency cycle between loops and stages involving {0}")]
    Cycle(String),
    #[error("stage `{stage}`: {source}")]
    External { stage: String, source: StageError },
    #[error("stage `{0}` has an unregistered kind")]
    UnknownKind(String),
}

/// Unit of ordering: a stage outside loops, or a whole loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Unit {
    Stage(usize),
    Loop(usize),
}

/// Builds the plan and every instance's fingerprint. Reads external files (source data) to
/// hash them, so it is not part of `check`.
pub fn plan(pipeline: Pipeline, registry: &Registry, base_dir: &Path) -> Result<Plan, PlanError> {
    let index: HashMap<&str, usize> = pipeline.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let unit_of = |stage: usize| match pipeline.stages[stage].in_loop {
        Some(l) => Unit::Loop(l),
        None => Unit::Stage(stage),
    };

    // Dependencies between units: stage references, plus carry inits for loops.
    let mut units: Vec<Unit> = Vec::new();
    for (i, s) in pipeline.stages.iter().enumerate() {
        let u = unit_of(i);
        if !units.contains(&u) {
            units.push(u);
        }
        let _ = s;
    }
    let mut deps: BTreeMap<Unit, BTreeSet<Unit>> = units.iter().map(|u| (*u, BTreeSet::new())).collect();
    for (i, s) in pipeline.stages.iter().enumerate() {
        for r in s.inputs.values() {
            if let Ref::Output { stage, .. } = r {
                let d = unit_of(index[stage.as_str()]);
                if d != unit_of(i) {
                    deps.get_mut(&unit_of(i)).expect("unit").insert(d);
                }
            }
        }
    }
    for (li, l) in pipeline.loops.iter().enumerate() {
        for c in &l.carries {
            if let Some((st, _)) = &c.init {
                let d = unit_of(index[st.as_str()]);
                deps.entry(Unit::Loop(li)).or_default().insert(d);
            }
        }
    }
    let order = topo(&units, |u| deps.get(u).cloned().unwrap_or_default().into_iter().collect())
        .map_err(|u| PlanError::Cycle(describe(&pipeline, u)))?;

    // Expand units into instances.
    let mut instances: Vec<Instance> = Vec::new();
    let mut at: HashMap<(usize, u32), usize> = HashMap::new();
    for unit in order {
        match unit {
            Unit::Stage(s) => {
                let idx = add_instance(&pipeline, registry, base_dir, &index, &mut instances, &at, s, 0)?;
                at.insert((s, 0), idx);
            }
            Unit::Loop(l) => {
                let body: Vec<usize> = pipeline.stages.iter().enumerate().filter(|(_, s)| s.in_loop == Some(l)).map(|(i, _)| i).collect();
                let body_order = topo(&body, |&s| {
                    pipeline.stages[s]
                        .inputs
                        .values()
                        .filter_map(|r| match r {
                            Ref::Output { stage, .. } => Some(index[stage.as_str()]),
                            Ref::Carry { .. } => None,
                        })
                        .filter(|d| pipeline.stages[*d].in_loop == Some(l))
                        .collect()
                })
                .map_err(|s| PlanError::Cycle(pipeline.stages[s].name.clone()))?;
                for round in 1..=pipeline.loops[l].rounds {
                    for &s in &body_order {
                        let idx = add_instance(&pipeline, registry, base_dir, &index, &mut instances, &at, s, round)?;
                        at.insert((s, round), idx);
                    }
                }
            }
        }
    }
    Ok(Plan { pipeline, instances, base_dir: base_dir.to_path_buf() })
}

fn describe(p: &Pipeline, u: Unit) -> String {
    match u {
        Unit::Stage(s) => format!("stage `{}`", p.stages[s].name),
        Unit::Loop(l) => format!("loop `{}`", p.loops[l].name),
    }
}

/// Kahn's algorithm, stable: among ready items the earliest in `items` goes first. On a cycle
/// returns one item on it.
fn topo<T: Copy + Eq + std::hash::Hash>(items: &[T], deps_of: impl Fn(&T) -> Vec<T>) -> Result<Vec<T>, T> {
    let mut done: std::collections::HashSet<T> = Default::default();
    let mut out = Vec::new();
    while out.len() < items.len() {
        let next = items.iter().find(|i| !done.contains(*i) && deps_of(i).iter().all(|d| done.contains(d) || !items.contains(d)));
        match next {
            Some(&i) => {
                done.insert(i);
                out.push(i);
            }
            None => return Err(*items.iter().find(|i| !done.contains(*i)).expect("an unplaced item")),
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn add_instance(
    p: &Pipeline,
    registry: &Registry,
    base_dir: &Path,
    index: &HashMap<&str, usize>,
    instances: &mut Vec<Instance>,
    at: &HashMap<(usize, u32), usize>,
    s: usize,
    round: u32,
) -> Result<usize, PlanError> {
    let decl = &p.stages[s];
    let kind = registry.get(&decl.kind).ok_or_else(|| PlanError::UnknownKind(decl.name.clone()))?;
    // A reference to stage `t` from this instance: same round inside the same loop, the last
    // round of t's loop from outside it, round 0 for stages outside loops.
    let resolve = |t: usize| -> usize {
        let r = match p.stages[t].in_loop {
            Some(l) if decl.in_loop == Some(l) => round,
            Some(l) => p.loops[l].rounds,
            None => 0,
        };
        at[&(t, r)]
    };
    let mut inputs = BTreeMap::new();
    for (port, r) in &decl.inputs {
        let src = match r {
            Ref::Output { stage, output } => Some(Source { instance: resolve(index[stage.as_str()]), output: output.clone() }),
            Ref::Carry { loop_name, carry } => {
                let l = p.loops.iter().find(|l| &l.name == loop_name).expect("checked loop");
                let c = l.carries.iter().find(|c| &c.name == carry).expect("checked carry");
                if round <= 1 {
                    c.init.as_ref().map(|(st, out)| Source { instance: resolve(index[st.as_str()]), output: out.clone() })
                } else {
                    let (st, out) = &c.next;
                    Some(Source { instance: at[&(index[st.as_str()], round - 1)], output: out.clone() })
                }
            }
        };
        if let Some(src) = src {
            inputs.insert(port.clone(), src);
        }
    }
    let stage_seed = decl.seed.unwrap_or_else(|| derive_u64(&[b"stage-seed", &p.seed.to_le_bytes(), decl.name.as_bytes()]));
    let seed = if round == 0 { stage_seed } else { derive_u64(&[b"round-seed", &stage_seed.to_le_bytes(), &round.to_le_bytes()]) };
    let external = kind
        .external_fingerprint(&decl.params, base_dir)
        .map_err(|source| PlanError::External { stage: decl.name.clone(), source })?
        .map(|h| blake3::Hash::from(h).to_hex().to_string());
    let record = FpRecord {
        kind: decl.kind.clone(),
        version: kind.version(),
        params: {
            // Parameters added to a kind later are left out at their default (ParamSpec::added_later).
            let specs = kind.params();
            let at_later_default = |k: &str, v: &crate::params::ParamValue| {
                specs.iter().any(|s| s.name == k && s.omit_default_from_fingerprint && s.default.as_ref().is_some_and(|d| d.canonical() == v.canonical()))
            };
            decl.params.values.iter().filter(|(k, v)| !at_later_default(k, v)).map(|(k, v)| (k.clone(), v.canonical())).collect()
        },
        seed,
        inputs: kind
            .inputs()
            .iter()
            .map(|port| {
                let v = match inputs.get(port.name) {
                    Some(Source { instance, output }) => format!("{}.{output}", instances[*instance].fingerprint),
                    None => "absent".to_string(),
                };
                (port.name.to_string(), v)
            })
            .collect(),
        external,
    };
    let deps: BTreeSet<usize> = inputs.values().map(|s| s.instance).collect();
    let name = if round == 0 { decl.name.clone() } else { format!("{}@{round}", decl.name) };
    instances.push(Instance {
        name,
        stage: s,
        round,
        seed,
        inputs,
        deps: deps.into_iter().collect(),
        fingerprint: record.fingerprint(),
        record,
    });
    Ok(instances.len() - 1)
}
