//! The pipeline file as written: a spanned mirror of the TOML (`[pipeline]`, `[stages.NAME]`,
//! `[loop.NAME]`) built by walking toml's spanned document tree. A serde derive with
//! `deny_unknown_fields` stops at the first problem; walking the tree ourselves rejects unknown
//! keys just the same but collects every structural problem of the file in one pass, each at
//! the byte span of the key or value at fault. Meaning (kinds, parameters, references, cycles)
//! is checked afterwards by `check`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// A value with the byte span it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sp<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> Sp<T> {
    pub fn new(value: T, span: Range<usize>) -> Self {
        Sp { value, span }
    }
}

/// A TOML value with spans, owned, before it is typed against a parameter spec.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    Int(i64),
    /// An integer that does not fit i64 (kept as text for the message).
    BigInt(String),
    Float(f64),
    Bool(bool),
    Str(String),
    Datetime(String),
    Array(Vec<Sp<RawValue>>),
    Table(Vec<(Sp<String>, Sp<RawValue>)>),
}

impl RawValue {
    /// The TOML type name, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            RawValue::Int(_) | RawValue::BigInt(_) => "integer",
            RawValue::Float(_) => "float",
            RawValue::Bool(_) => "boolean",
            RawValue::Str(_) => "string",
            RawValue::Datetime(_) => "datetime",
            RawValue::Array(_) => "array",
            RawValue::Table(_) => "table",
        }
    }
}

/// `[pipeline]` plus all stages and loops, each part present only if it was well-formed.
#[derive(Clone, Debug, Default)]
pub struct PipelineSpec {
    pub name: Option<Sp<String>>,
    pub seed: Option<Sp<u64>>,
    pub description: Option<Sp<String>>,
    /// Stages in file order.
    pub stages: Vec<StageSpec>,
    /// Loops in file order.
    pub loops: Vec<LoopSpec>,
}

/// One `[stages.NAME]` table.
#[derive(Clone, Debug)]
pub struct StageSpec {
    /// The stage name, spanned at its key in the header.
    pub name: Sp<String>,
    pub kind: Option<Sp<String>>,
    /// The span of the `kind` key (missing-input problems are reported there).
    pub kind_key: Option<Range<usize>>,
    pub seed: Option<Sp<u64>>,
    pub cpus: Option<Sp<u32>>,
    pub gpus: Option<Sp<u32>>,
    /// Port name (spanned at its key) -> reference text (spanned at its value).
    pub inputs: Vec<(Sp<String>, Sp<String>)>,
    /// Every key of `inputs`, including those whose value was not a string (already reported),
    /// so that a mistyped input is not also reported as missing.
    pub input_keys: Vec<String>,
    /// Parameter name (spanned at its key) -> raw value.
    pub params: Vec<(Sp<String>, Sp<RawValue>)>,
}

/// One `[loop.NAME]` table.
#[derive(Clone, Debug)]
pub struct LoopSpec {
    pub name: Sp<String>,
    pub rounds: Option<Sp<u32>>,
    pub stages: Vec<Sp<String>>,
    pub carries: Vec<CarrySpec>,
}

/// One `[loop.NAME.carry.CARRY]` table.
#[derive(Clone, Debug)]
pub struct CarrySpec {
    pub name: Sp<String>,
    pub init: Option<Sp<String>>,
    pub next: Option<Sp<String>>,
}

/// A structural problem at a byte span.
pub type Problem = (Range<usize>, String);

/// The largest number of loop rounds a file may ask for.
pub const MAX_ROUNDS: u32 = 100;

/// Parses `text` into a spec and the list of problems found. On a TOML syntax error only the
/// syntax errors are returned (the recovered tree would produce misleading follow-up errors).
pub fn parse(text: &str) -> (PipelineSpec, Vec<Problem>) {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let problems = errors
            .iter()
            .map(|e| (e.span().unwrap_or(0..0), format!("TOML syntax: {}", e.message().trim())))
            .collect();
        return (PipelineSpec::default(), problems);
    }
    let mut w = Walker { problems: Vec::new() };
    let spec = w.document(doc.get_ref());
    (spec, w.problems)
}

struct Walker {
    problems: Vec<Problem>,
}

type Entry<'a, 'i> = (&'a toml::Spanned<std::borrow::Cow<'i, str>>, &'a toml::Spanned<DeValue<'i>>);

/// Entries of a table in file order (the map itself is sorted by key).
fn entries<'a, 'i>(t: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

fn key_sp(k: &toml::Spanned<std::borrow::Cow<'_, str>>) -> Sp<String> {
    Sp::new(k.get_ref().to_string(), k.span())
}

fn is_name(s: &str, first_digit_ok: bool) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || (first_digit_ok && (c.is_ascii_digit() || c == '_')) => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Walker {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    fn unknown_key(&mut self, key: &Sp<String>, place: &str, known: &[&str]) {
        let hint = match crate::stage::closest(&key.value, known.iter().copied()) {
            Some(c) => format!("; did you mean `{c}`?"),
            None => format!("; expected one of: {}", known.join(", ")),
        };
        self.problem(key.span.clone(), format!("unknown key `{}` in {place}{hint}", key.value));
    }

    fn table<'a, 'i>(&mut self, v: &'a toml::Spanned<DeValue<'i>>, what: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.problem(v.span(), format!("{what} must be a table, found {}", other.type_str()));
                None
            }
        }
    }

    fn string(&mut self, v: &toml::Spanned<DeValue<'_>>, what: &str) -> Option<Sp<String>> {
        match v.get_ref() {
            DeValue::String(s) => Some(Sp::new(s.to_string(), v.span())),
            other => {
                self.problem(v.span(), format!("{what} must be a string, found {}", other.type_str()));
                None
            }
        }
    }

    /// A non-negative integer that fits `u64`.
    fn uint(&mut self, v: &toml::Spanned<DeValue<'_>>, what: &str, max: u64) -> Option<Sp<u64>> {
        let raw = raw_value(v);
        match raw.value {
            RawValue::Int(i) if i >= 0 && (i as u64) <= max => Some(Sp::new(i as u64, raw.span)),
            RawValue::BigInt(ref s) if max == u64::MAX && s.parse::<u64>().is_ok() => {
                Some(Sp::new(s.parse().unwrap_or(0), raw.span))
            }
            RawValue::Int(_) | RawValue::BigInt(_) => {
                self.problem(raw.span, format!("{what} must be an integer in 0..={max}"));
                None
            }
            ref other => {
                self.problem(raw.span, format!("{what} must be a non-negative integer, found {}", other.type_name()));
                None
            }
        }
    }

    fn document(&mut self, doc: &DeTable<'_>) -> PipelineSpec {
        let mut spec = PipelineSpec::default();
        let mut saw_pipeline = false;
        for (k, v) in entries(doc) {
            let key = key_sp(k);
            match key.value.as_str() {
                "pipeline" => {
                    saw_pipeline = true;
                    if let Some(t) = self.table(v, "[pipeline]") {
                        self.pipeline(&key, t, &mut spec);
                    }
                }
                "stages" => {
                    if let Some(t) = self.table(v, "[stages]") {
                        for (sk, sv) in entries(t) {
                            if let Some(s) = self.stage(key_sp(sk), sv) {
                                spec.stages.push(s);
                            }
                        }
                    }
                }
                "loop" => {
                    if let Some(t) = self.table(v, "[loop]") {
                        for (lk, lv) in entries(t) {
                            if let Some(l) = self.loop_(key_sp(lk), lv) {
                                spec.loops.push(l);
                            }
                        }
                    }
                }
                _ => self.unknown_key(&key, "the pipeline file", &["pipeline", "stages", "loop"]),
            }
        }
        if !saw_pipeline {
            self.problem(0..0, "missing [pipeline] table (with `name` and `seed`)");
        }
        spec
    }

    fn pipeline(&mut self, header: &Sp<String>, t: &DeTable<'_>, spec: &mut PipelineSpec) {
        for (k, v) in entries(t) {
            let key = key_sp(k);
            match key.value.as_str() {
                "name" => {
                    if let Some(name) = self.string(v, "pipeline `name`") {
                        if is_name(&name.value, true) {
                            spec.name = Some(name);
                        } else {
                            self.problem(name.span, format!("pipeline `name` {:?} must match [a-z0-9_]+", name.value));
                        }
                    }
                }
                "seed" => spec.seed = self.uint(v, "pipeline `seed`", u64::MAX),
                "description" => spec.description = self.string(v, "pipeline `description`"),
                _ => self.unknown_key(&key, "[pipeline]", &["name", "seed", "description"]),
            }
        }
        for (field, present) in [("name", t.get("name").is_some()), ("seed", t.get("seed").is_some())] {
            if !present {
                self.problem(header.span.clone(), format!("[pipeline] is missing `{field}`"));
            }
        }
    }

    fn stage(&mut self, name: Sp<String>, v: &toml::Spanned<DeValue<'_>>) -> Option<StageSpec> {
        if !is_name(&name.value, false) {
            self.problem(name.span.clone(), format!("stage name `{}` must match [a-z][a-z0-9_]*", name.value));
        }
        let t = self.table(v, &format!("stage `{}`", name.value))?;
        let mut s = StageSpec {
            name,
            kind: None,
            kind_key: None,
            seed: None,
            cpus: None,
            gpus: None,
            inputs: Vec::new(),
            input_keys: Vec::new(),
            params: Vec::new(),
        };
        let place = format!("stage `{}`", s.name.value);
        for (k, v) in entries(t) {
            let key = key_sp(k);
            match key.value.as_str() {
                "kind" => {
                    s.kind_key = Some(key.span.clone());
                    s.kind = self.string(v, &format!("`kind` of {place}"));
                }
                "seed" => s.seed = self.uint(v, &format!("`seed` of {place}"), u64::MAX),
                "resources" => {
                    if let Some(rt) = self.table(v, &format!("`resources` of {place}")) {
                        for (rk, rv) in entries(rt) {
                            let rkey = key_sp(rk);
                            let what = format!("resources `{}` of {place}", rkey.value);
                            let n = |w: &mut Self| w.uint(rv, &what, u32::MAX as u64).map(|n| Sp::new(n.value as u32, n.span));
                            match rkey.value.as_str() {
                                "cpus" => s.cpus = n(self),
                                "gpus" => s.gpus = n(self),
                                _ => self.unknown_key(&rkey, &format!("`resources` of {place}"), &["cpus", "gpus"]),
                            }
                        }
                    }
                }
                "inputs" => {
                    if let Some(it) = self.table(v, &format!("`inputs` of {place}")) {
                        for (ik, iv) in entries(it) {
                            let port = key_sp(ik);
                            s.input_keys.push(port.value.clone());
                            let what = format!("input `{}` of {place} (a \"stage.output\" reference)", port.value);
                            if let Some(r) = self.string(iv, &what) {
                                s.inputs.push((port, r));
                            }
                        }
                    }
                }
                "params" => {
                    if let Some(pt) = self.table(v, &format!("`params` of {place}")) {
                        for (pk, pv) in entries(pt) {
                            s.params.push((key_sp(pk), raw_value(pv)));
                        }
                    }
                }
                _ => self.unknown_key(&key, &place, &["kind", "seed", "resources", "inputs", "params"]),
            }
        }
        if t.get("kind").is_none() {
            self.problem(s.name.span.clone(), format!("{place} has no `kind`"));
        }
        Some(s)
    }

    fn loop_(&mut self, name: Sp<String>, v: &toml::Spanned<DeValue<'_>>) -> Option<LoopSpec> {
        if !is_name(&name.value, false) {
            self.problem(name.span.clone(), format!("loop name `{}` must match [a-z][a-z0-9_]*", name.value));
        }
        let t = self.table(v, &format!("loop `{}`", name.value))?;
        let place = format!("loop `{}`", name.value);
        let mut l = LoopSpec { name, rounds: None, stages: Vec::new(), carries: Vec::new() };
        for (k, v) in entries(t) {
            let key = key_sp(k);
            match key.value.as_str() {
                "rounds" => {
                    let raw = raw_value(v);
                    match raw.value {
                        RawValue::Int(n) if (1..=MAX_ROUNDS as i64).contains(&n) => {
                            l.rounds = Some(Sp::new(n as u32, raw.span))
                        }
                        _ => self.problem(
                            raw.span,
                            format!("`rounds` of {place} must be an integer in 1..={MAX_ROUNDS}"),
                        ),
                    }
                }
                "stages" => match v.get_ref() {
                    DeValue::Array(items) => {
                        for item in items.iter() {
                            if let Some(s) = self.string(item, &format!("an entry of `stages` of {place}")) {
                                l.stages.push(s);
                            }
                        }
                    }
                    other => self.problem(
                        v.span(),
                        format!("`stages` of {place} must be an array of stage names, found {}", other.type_str()),
                    ),
                },
                "carry" => {
                    if let Some(ct) = self.table(v, &format!("`carry` of {place}")) {
                        for (ck, cv) in entries(ct) {
                            if let Some(c) = self.carry(key_sp(ck), cv, &place) {
                                l.carries.push(c);
                            }
                        }
                    }
                }
                _ => self.unknown_key(&key, &place, &["rounds", "stages", "carry"]),
            }
        }
        if t.get("rounds").is_none() {
            self.problem(l.name.span.clone(), format!("{place} is missing `rounds`"));
        }
        if t.get("stages").is_none() {
            self.problem(l.name.span.clone(), format!("{place} is missing `stages`"));
        }
        Some(l)
    }

    fn carry(&mut self, name: Sp<String>, v: &toml::Spanned<DeValue<'_>>, place: &str) -> Option<CarrySpec> {
        let place = format!("carry `{}` of {place}", name.value);
        let t = self.table(v, &place)?;
        let mut c = CarrySpec { name, init: None, next: None };
        for (k, v) in entries(t) {
            let key = key_sp(k);
            match key.value.as_str() {
                "init" => c.init = self.string(v, &format!("`init` of {place}")),
                "next" => c.next = self.string(v, &format!("`next` of {place}")),
                _ => self.unknown_key(&key, &place, &["init", "next"]),
            }
        }
        if t.get("next").is_none() {
            self.problem(c.name.span.clone(), format!("{place} has no `next` (the value for the following round)"));
        }
        Some(c)
    }
}

/// Converts a spanned TOML value into an owned [`RawValue`].
fn raw_value(v: &toml::Spanned<DeValue<'_>>) -> Sp<RawValue> {
    let value = match v.get_ref() {
        DeValue::String(s) => RawValue::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => RawValue::Int(n),
            Err(_) => RawValue::BigInt(i.to_string()),
        },
        DeValue::Float(f) => RawValue::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => RawValue::Bool(*b),
        DeValue::Datetime(d) => RawValue::Datetime(d.to_string()),
        DeValue::Array(items) => RawValue::Array(items.iter().map(raw_value).collect()),
        DeValue::Table(t) => RawValue::Table(entries(t).into_iter().map(|(k, v)| (key_sp(k), raw_value(v))).collect()),
    };
    Sp::new(value, v.span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::LineIndex;

    fn positions(text: &str) -> Vec<(usize, usize, String)> {
        let (_, problems) = parse(text);
        let ix = LineIndex::new(text);
        problems
            .iter()
            .map(|(s, m)| {
                let (l, c) = ix.position(s.start);
                (l, c, m.clone())
            })
            .collect()
    }

    #[test]
    fn well_formed_file_has_no_problems() {
        let text = "[pipeline]\nname = \"p\"\nseed = 1\n[stages.a]\nkind = \"k\"\nparams = { x = 1 }\n\
                    inputs = { t = \"b.c\" }\n[loop.l]\nrounds = 2\nstages = [\"a\"]\n[loop.l.carry.c]\nnext = \"a.x\"\n";
        let (spec, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(spec.stages.len(), 1);
        assert_eq!(spec.stages[0].inputs[0].1.value, "b.c");
        assert_eq!(spec.loops[0].rounds.as_ref().unwrap().value, 2);
    }

    #[test]
    fn unknown_keys_are_reported_at_the_key_and_all_at_once() {
        let text = "[pipeline]\nname = \"p\"\nseed = 1\ncolour = 1\n[stages.a]\nkind = \"k\"\nretries = 3\n";
        let p = positions(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].0, p[0].1), (4, 1));
        assert!(p[0].2.contains("colour"));
        assert_eq!((p[1].0, p[1].1), (7, 1));
    }

    #[test]
    fn mistyped_values_are_reported_at_the_value() {
        let text = "[pipeline]\nname = \"p\"\nseed = -4\n[stages.a]\nkind = \"k\"\nresources = { cpus = \"two\" }\n";
        let p = positions(text);
        assert_eq!((p[0].0, p[0].1), (3, 8));
        assert_eq!((p[1].0, p[1].1), (6, 22));
        assert!(p[1].2.contains("cpus"));
    }
}
