//! The checker: turns a pipeline file into a checked [`Pipeline`] or the full list of its
//! problems. Structural problems come from `spec`; this module adds meaning: registered kinds,
//! typed parameters (defaults filled in), ports and references ("stage.output" or
//! "loop.carry"), artifact types, cycles outside loops, and loop rules. It never reads data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use crate::diag::{Diagnostic, LineIndex};
use crate::params::{ParamSpec, ParamType, ParamValue, Params};
use crate::spec::{self, RawValue, Sp, StageSpec};
use crate::stage::{closest, ArtifactType, Registry, Resources};

/// A checked pipeline. Every reference resolves, every parameter has its declared type.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub name: String,
    pub seed: u64,
    pub description: Option<String>,
    /// Stages in file order.
    pub stages: Vec<StageDecl>,
    pub loops: Vec<LoopDecl>,
}

/// A checked stage.
#[derive(Clone, Debug)]
pub struct StageDecl {
    pub name: String,
    pub kind: String,
    /// The per-stage seed override, if the file gives one.
    pub seed: Option<u64>,
    pub resources: Resources,
    pub params: Params,
    /// Connected input ports.
    pub inputs: BTreeMap<String, Ref>,
    /// Index into [`Pipeline::loops`] of the loop whose body holds this stage.
    pub in_loop: Option<usize>,
}

/// What an input port is wired to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ref {
    /// `stage.output`.
    Output { stage: String, output: String },
    /// `loop.carry`: the carried value at the start of the current round.
    Carry { loop_name: String, carry: String },
}

impl Ref {
    pub fn text(&self) -> String {
        match self {
            Ref::Output { stage, output } => format!("{stage}.{output}"),
            Ref::Carry { loop_name, carry } => format!("{loop_name}.{carry}"),
        }
    }
}

/// A checked loop.
#[derive(Clone, Debug)]
pub struct LoopDecl {
    pub name: String,
    pub rounds: u32,
    pub stages: Vec<String>,
    pub carries: Vec<CarryDecl>,
}

/// A checked carried artifact: `init` (outside the body, or absent) and `next` (a body output).
#[derive(Clone, Debug)]
pub struct CarryDecl {
    pub name: String,
    pub ty: ArtifactType,
    /// (stage, output) outside the loop body.
    pub init: Option<(String, String)>,
    /// (stage, output) of a body stage.
    pub next: (String, String),
}

/// Checks a pipeline file's text. All problems are reported, sorted by position.
pub fn check(text: &str, registry: &Registry) -> Result<Pipeline, Vec<Diagnostic>> {
    let (spec, structural) = spec::parse(text);
    let mut c = Checker { registry, problems: structural };
    let pipeline = c.pipeline(spec);
    if c.problems.is_empty() {
        if let Some(p) = pipeline {
            return Ok(p);
        }
    }
    let ix = LineIndex::new(text);
    let mut diags: Vec<Diagnostic> = c.problems.iter().map(|(span, m)| ix.diag(span, m.clone())).collect();
    diags.sort_by(|a, b| (a.line, a.col).cmp(&(b.line, b.col)));
    diags.dedup();
    if diags.is_empty() {
        diags.push(Diagnostic { line: 1, col: 1, message: "the pipeline is incomplete".into() });
    }
    Err(diags)
}

struct Checker<'r> {
    registry: &'r Registry,
    problems: Vec<spec::Problem>,
}

/// Splits "a.b" into its two halves, if it has exactly that form.
fn split_ref(text: &str) -> Option<(&str, &str)> {
    let (a, b) = text.split_once('.')?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (ok(a) && ok(b)).then_some((a, b))
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    fn pipeline(&mut self, spec: spec::PipelineSpec) -> Option<Pipeline> {
        let stage_index: HashMap<&str, &StageSpec> = spec.stages.iter().map(|s| (s.name.value.as_str(), s)).collect();

        // Loop membership first: references depend on which body a stage is in.
        let mut member: HashMap<String, usize> = HashMap::new();
        for (li, l) in spec.loops.iter().enumerate() {
            if stage_index.contains_key(l.name.value.as_str()) {
                self.problem(l.name.span.clone(), format!("loop `{}` has the name of a stage", l.name.value));
            }
            for s in &l.stages {
                if !stage_index.contains_key(s.value.as_str()) {
                    self.problem(s.span.clone(), format!("loop `{}` lists `{}`, which is not a stage", l.name.value, s.value));
                } else if let Some(&other) = member.get(&s.value) {
                    let msg = if other == li {
                        format!("stage `{}` is listed twice in loop `{}`", s.value, l.name.value)
                    } else {
                        format!("stage `{}` is already in loop `{}`; a stage belongs to one loop", s.value, spec.loops[other].name.value)
                    };
                    self.problem(s.span.clone(), msg);
                } else {
                    member.insert(s.value.clone(), li);
                }
            }
        }

        // Output types of every stage whose kind is known: (stage, output) -> type.
        let mut outputs: HashMap<(String, String), ArtifactType> = HashMap::new();
        for s in &spec.stages {
            if let Some(kind) = s.kind.as_ref().and_then(|k| self.registry.get(&k.value)) {
                for p in kind.outputs() {
                    outputs.insert((s.name.value.clone(), p.name.to_string()), p.ty);
                }
            }
        }

        let loops = self.loops(&spec, &member, &outputs);
        let carry_types: HashMap<(String, String), (ArtifactType, bool)> = loops
            .iter()
            .flat_map(|l| l.carries.iter().map(move |c| ((l.name.clone(), c.name.clone()), (c.ty, c.init.is_some()))))
            .collect();

        let mut stages = Vec::new();
        for s in &spec.stages {
            if let Some(d) = self.stage(s, &spec, &member, &outputs, &carry_types) {
                stages.push(d);
            }
        }
        self.cycles(&spec, &member);

        let name = spec.name?.value;
        let seed = spec.seed?.value;
        Some(Pipeline { name, seed, description: spec.description.map(|d| d.value), stages, loops })
    }

    fn loops(
        &mut self,
        spec: &spec::PipelineSpec,
        member: &HashMap<String, usize>,
        outputs: &HashMap<(String, String), ArtifactType>,
    ) -> Vec<LoopDecl> {
        let mut loops = Vec::new();
        for (li, l) in spec.loops.iter().enumerate() {
            let mut carries = Vec::new();
            for c in &l.carries {
                let Some(next) = &c.next else { continue };
                let next_res = match split_ref(&next.value) {
                    None => {
                        self.problem(next.span.clone(), format!("`next` {:?} is not of the form \"stage.output\"", next.value));
                        None
                    }
                    Some((st, out)) if member.get(st) != Some(&li) => {
                        self.problem(
                            next.span.clone(),
                            format!("`next` of carry `{}` is {:?}, but `{st}` is not a stage of loop `{}`'s body", c.name.value, next.value, l.name.value),
                        );
                        let _ = out;
                        None
                    }
                    Some((st, out)) => match outputs.get(&(st.to_string(), out.to_string())) {
                        Some(ty) => Some(((st.to_string(), out.to_string()), *ty)),
                        None => {
                            self.problem(next.span.clone(), format!("`next` {:?}: stage `{st}` has no output `{out}`", next.value));
                            None
                        }
                    },
                };
                let mut init_res = None;
                if let Some(init) = &c.init {
                    match split_ref(&init.value) {
                        None => self.problem(init.span.clone(), format!("`init` {:?} is not of the form \"stage.output\"", init.value)),
                        Some((st, _)) if member.get(st) == Some(&li) => self.problem(
                            init.span.clone(),
                            format!("`init` {:?} references `{st}`, a stage of the loop's own body; init must come from outside the loop", init.value),
                        ),
                        Some((st, out)) => match outputs.get(&(st.to_string(), out.to_string())) {
                            None if !spec.stages.iter().any(|s| s.name.value == st) => {
                                self.problem(init.span.clone(), format!("`init` {:?}: no stage named `{st}`", init.value))
                            }
                            None => self.problem(init.span.clone(), format!("`init` {:?}: stage `{st}` has no output `{out}`", init.value)),
                            Some(ty) => {
                                if let Some((_, nty)) = &next_res {
                                    if ty != nty {
                                        self.problem(
                                            init.span.clone(),
                                            format!("`init` {:?} is a {}, but `next` is a {}", init.value, ty.name(), nty.name()),
                                        );
                                    }
                                }
                                init_res = Some((st.to_string(), out.to_string()));
                            }
                        },
                    }
                }
                if let Some((next, ty)) = next_res {
                    carries.push(CarryDecl { name: c.name.value.clone(), ty, init: init_res, next });
                }
            }
            if let Some(rounds) = &l.rounds {
                loops.push(LoopDecl {
                    name: l.name.value.clone(),
                    rounds: rounds.value,
                    stages: l.stages.iter().map(|s| s.value.clone()).collect(),
                    carries,
                });
            }
        }
        loops
    }

    fn stage(
        &mut self,
        s: &StageSpec,
        spec: &spec::PipelineSpec,
        member: &HashMap<String, usize>,
        outputs: &HashMap<(String, String), ArtifactType>,
        carry_types: &HashMap<(String, String), (ArtifactType, bool)>,
    ) -> Option<StageDecl> {
        let kind_sp = s.kind.as_ref()?;
        let Some(kind) = self.registry.get(&kind_sp.value).cloned() else {
            let known: Vec<_> = self.registry.kinds().collect();
            let hint = match self.registry.closest(&kind_sp.value) {
                Some(c) => format!("did you mean `{c}`? "),
                None => String::new(),
            };
            self.problem(
                kind_sp.span.clone(),
                format!("unknown stage kind `{}`; {hint}known kinds: {}", kind_sp.value, known.join(", ")),
            );
            return None;
        };
        let place = format!("stage `{}` (kind {})", s.name.value, kind_sp.value);
        let params = self.params(s, &kind.params(), &place);

        let ports = kind.inputs();
        let mut inputs = BTreeMap::new();
        for (port_sp, r) in &s.inputs {
            let Some(port) = ports.iter().find(|p| p.name == port_sp.value) else {
                let names: Vec<_> = ports.iter().map(|p| p.name).collect();
                let hint = match closest(&port_sp.value, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None if names.is_empty() => "it has no inputs".to_string(),
                    None => format!("its inputs are: {}", names.join(", ")),
                };
                self.problem(port_sp.span.clone(), format!("unknown input port `{}` of {place}; {hint}", port_sp.value));
                continue;
            };
            let Some((a, b)) = split_ref(&r.value) else {
                self.problem(r.span.clone(), format!("input `{}`: {:?} is not a reference of the form \"stage.output\"", port.name, r.value));
                continue;
            };
            let (reference, found) = if let Some(&(ty, has_init)) = carry_types.get(&(a.to_string(), b.to_string())) {
                let li = spec.loops.iter().position(|l| l.name.value == a);
                if member.get(&s.name.value).copied() != li {
                    self.problem(r.span.clone(), format!("input `{}`: carry {:?} can only be read by stages of loop `{a}`'s body", port.name, r.value));
                    continue;
                }
                if !has_init && !port.optional {
                    self.problem(
                        r.span.clone(),
                        format!("input `{}` is required, but carry {:?} has no `init` and is absent in round 1", port.name, r.value),
                    );
                }
                (Ref::Carry { loop_name: a.into(), carry: b.into() }, ty)
            } else if let Some(ty) = outputs.get(&(a.to_string(), b.to_string())) {
                (Ref::Output { stage: a.into(), output: b.into() }, *ty)
            } else {
                let target = spec.stages.iter().find(|t| t.name.value == a);
                let msg = match (target, spec.loops.iter().find(|l| l.name.value == a)) {
                    (_, Some(_)) => format!("input `{}`: loop `{a}` has no carry `{b}`", port.name),
                    (None, None) => format!("input `{}`: dangling reference {:?}: no stage named `{a}`", port.name, r.value),
                    (Some(t), None) => match t.kind.as_ref().and_then(|k| self.registry.get(&k.value)) {
                        Some(k) => format!(
                            "input `{}`: dangling reference {:?}: stage `{a}` has no output `{b}`; its outputs are: {}",
                            port.name,
                            r.value,
                            k.outputs().iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                        ),
                        // The target's kind is itself wrong and reported there.
                        None => continue,
                    },
                };
                self.problem(r.span.clone(), msg);
                continue;
            };
            if found != port.ty {
                self.problem(
                    r.span.clone(),
                    format!("type mismatch: input `{}` expects a {}, but {:?} is a {}", port.name, port.ty.name(), r.value, found.name()),
                );
            }
            inputs.insert(port.name.to_string(), reference);
        }
        for p in ports.iter().filter(|p| !p.optional) {
            if !s.input_keys.iter().any(|k| k == p.name) {
                let at = s.kind_key.clone().unwrap_or(s.name.span.clone());
                self.problem(at, format!("{place} is missing required input `{}` (a {})", p.name, p.ty.name()));
            }
        }

        let default = kind.resources();
        let resources = Resources {
            cpus: s.cpus.as_ref().map_or(default.cpus, |c| c.value),
            gpus: s.gpus.as_ref().map_or(default.gpus, |g| g.value),
        };
        Some(StageDecl {
            name: s.name.value.clone(),
            kind: kind_sp.value.clone(),
            seed: s.seed.as_ref().map(|x| x.value),
            resources,
            params: params?,
            inputs,
            in_loop: member.get(&s.name.value).copied(),
        })
    }

    fn params(&mut self, s: &StageSpec, specs: &[ParamSpec], place: &str) -> Option<Params> {
        let mut values = BTreeMap::new();
        let mut ok = true;
        for (key, raw) in &s.params {
            let Some(ps) = specs.iter().find(|p| p.name == key.value) else {
                let names: Vec<_> = specs.iter().map(|p| p.name).collect();
                let hint = match closest(&key.value, names.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("known parameters: {}", names.join(", ")),
                };
                self.problem(key.span.clone(), format!("unknown parameter `{}` of {place}; {hint}", key.value));
                ok = false;
                continue;
            };
            match typed(&ps.ty, raw) {
                Ok(v) => {
                    values.insert(ps.name.to_string(), v);
                }
                Err((span, found)) => {
                    self.problem(span, format!("parameter `{}` of {place}: expected {}, found {found}", ps.name, ps.ty.describe()));
                    ok = false;
                }
            }
        }
        for ps in specs {
            if values.contains_key(ps.name) || s.params.iter().any(|(k, _)| k.value == ps.name) {
                continue;
            }
            match &ps.default {
                Some(d) => {
                    values.insert(ps.name.to_string(), d.clone());
                }
                None => {
                    self.problem(s.name.span.clone(), format!("{place} is missing required parameter `{}` ({})", ps.name, ps.ty.describe()));
                    ok = false;
                }
            }
        }
        ok.then_some(Params { values })
    }

    /// Reports every cycle among stages through `stage.output` references (carries are the
    /// only legal way around a loop). Each stage of a cycle gets one diagnostic.
    fn cycles(&mut self, spec: &spec::PipelineSpec, member: &HashMap<String, usize>) {
        let names: Vec<&str> = spec.stages.iter().map(|s| s.name.value.as_str()).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let edges: Vec<BTreeSet<usize>> = spec
            .stages
            .iter()
            .map(|s| {
                s.inputs
                    .iter()
                    .filter_map(|(_, r)| split_ref(&r.value).and_then(|(a, _)| index.get(a).copied()))
                    .collect()
            })
            .collect();
        for scc in strongly_connected(&edges) {
            let is_cycle = scc.len() > 1 || edges[scc[0]].contains(&scc[0]);
            if !is_cycle {
                continue;
            }
            let mut path: Vec<&str> = scc.iter().map(|&i| names[i]).collect();
            path.push(names[scc[0]]);
            let in_one_loop = scc.iter().all(|&i| member.get(names[i]).is_some() && member.get(names[i]) == member.get(names[scc[0]]));
            let why = if in_one_loop {
                "inside a loop body, read a later stage's output only through a carry"
            } else {
                "a stage cannot depend on its own output outside a loop"
            };
            for &i in &scc {
                self.problem(spec.stages[i].name.span.clone(), format!("dependency cycle: {} ({why})", path.join(" -> ")));
            }
        }
    }
}

/// Types a raw TOML value against a parameter type; on failure returns the span at fault and
/// what was found there.
fn typed(ty: &ParamType, raw: &Sp<RawValue>) -> Result<ParamValue, (Range<usize>, String)> {
    let found = || (raw.span.clone(), describe_found(&raw.value));
    match (ty, &raw.value) {
        (ParamType::Int { min, max }, RawValue::Int(v)) if v >= min && v <= max => Ok(ParamValue::Int(*v)),
        (ParamType::Float { min, max }, RawValue::Float(v)) if v >= min && v <= max => Ok(ParamValue::Float(*v)),
        // An integer written for a float parameter is that float (`lr = 1` means 1.0).
        (ParamType::Float { min, max }, RawValue::Int(v)) if (*v as f64) >= *min && (*v as f64) <= *max => {
            Ok(ParamValue::Float(*v as f64))
        }
        (ParamType::Bool, RawValue::Bool(v)) => Ok(ParamValue::Bool(*v)),
        (ParamType::Str, RawValue::Str(v)) => Ok(ParamValue::Str(v.clone())),
        (ParamType::StrList, RawValue::Array(items)) => items
            .iter()
            .map(|i| match &i.value {
                RawValue::Str(s) => Ok(ParamValue::Str(s.clone())),
                other => Err((i.span.clone(), describe_found(other))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(ParamValue::List),
        (ParamType::Table, RawValue::Table(_)) => untyped(&raw.value).ok_or_else(found),
        _ => Err(found()),
    }
}

fn describe_found(v: &RawValue) -> String {
    match v {
        RawValue::Int(n) => format!("integer {n}"),
        RawValue::BigInt(s) => format!("integer {s}"),
        RawValue::Float(f) => format!("float {f:?}"),
        RawValue::Str(s) => format!("string {s:?}"),
        other => other.type_name().to_string(),
    }
}

/// A free-form value (inside a `Table` parameter); datetimes and huge integers are refused.
fn untyped(v: &RawValue) -> Option<ParamValue> {
    Some(match v {
        RawValue::Int(n) => ParamValue::Int(*n),
        RawValue::Float(f) => ParamValue::Float(*f),
        RawValue::Bool(b) => ParamValue::Bool(*b),
        RawValue::Str(s) => ParamValue::Str(s.clone()),
        RawValue::Array(items) => ParamValue::List(items.iter().map(|i| untyped(&i.value)).collect::<Option<_>>()?),
        RawValue::Table(entries) => ParamValue::Table(
            entries.iter().map(|(k, v)| untyped(&v.value).map(|v| (k.value.clone(), v))).collect::<Option<_>>()?,
        ),
        RawValue::BigInt(_) | RawValue::Datetime(_) => return None,
    })
}

/// Tarjan's algorithm; components come out with their members in ascending index order.
fn strongly_connected(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    struct T<'a> {
        edges: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T<'_>, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on_stack[v] = true;
        for &w in t.edges[v].iter() {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on_stack[w] => t.low[v] = t.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on_stack[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            comp.sort();
            t.out.push(comp);
        }
    }
    let n = edges.len();
    let mut t = T { edges, index: vec![None; n], low: vec![0; n], on_stack: vec![false; n], stack: Vec::new(), next: 0, out: Vec::new() };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}
