//! Stage parameters: the typed values a pipeline file gives a stage, the specs a stage kind
//! declares for them (type, range, default, doc), and their canonical text. The canonical text
//! is what fingerprints hash: defaults filled in, keys sorted, floats in shortest round-trip
//! form with a type tag, so spelling a default out or reordering keys never changes a key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stage::StageError;

/// A parameter value after type checking against its [`ParamSpec`].
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<ParamValue>),
    Table(BTreeMap<String, ParamValue>),
}

impl ParamValue {
    /// Canonical text: unambiguous, stable across releases, and independent of map order.
    /// Floats carry an `f:` tag so that `1` (int) and `1.0` (float) hash differently only when
    /// the spec's types differ (the checker coerces an int written for a float parameter).
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        self.write_canonical(&mut s);
        s
    }

    fn write_canonical(&self, s: &mut String) {
        match self {
            ParamValue::Int(v) => write!(s, "i:{v}").unwrap(),
            // `{:?}` of f64 is the shortest text that reads back to the same bits.
            ParamValue::Float(v) => write!(s, "f:{v:?}").unwrap(),
            ParamValue::Bool(v) => write!(s, "b:{v}").unwrap(),
            ParamValue::Str(v) => write!(s, "s:{v:?}").unwrap(),
            ParamValue::List(items) => {
                s.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    item.write_canonical(s);
                }
                s.push(']');
            }
            ParamValue::Table(map) => {
                s.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    write!(s, "{k:?}=").unwrap();
                    v.write_canonical(s);
                }
                s.push('}');
            }
        }
    }

    /// Human-readable text for messages such as "parameter sft changed (400 -> 401)".
    pub fn display(&self) -> String {
        match self {
            ParamValue::Int(v) => v.to_string(),
            ParamValue::Float(v) => format!("{v:?}"),
            ParamValue::Bool(v) => v.to_string(),
            ParamValue::Str(v) => format!("{v:?}"),
            ParamValue::List(items) => {
                format!("[{}]", items.iter().map(|i| i.display()).collect::<Vec<_>>().join(", "))
            }
            ParamValue::Table(map) => format!(
                "{{{}}}",
                map.iter().map(|(k, v)| format!("{k} = {}", v.display())).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// A JSON rendering, for `plan --json` and the run records.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Int(v) => (*v).into(),
            ParamValue::Float(v) => (*v).into(),
            ParamValue::Bool(v) => (*v).into(),
            ParamValue::Str(v) => v.clone().into(),
            ParamValue::List(items) => items.iter().map(|i| i.to_json()).collect::<Vec<_>>().into(),
            ParamValue::Table(map) => {
                map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>().into()
            }
        }
    }
}

/// The type a stage kind declares for a parameter. Ranges are inclusive.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamType {
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    Bool,
    Str,
    /// A list of strings (e.g. special tokens).
    StrList,
    /// A table of string keys to values of any type (free-form options).
    Table,
}

impl ParamType {
    /// The name used in "expected ..." messages.
    pub fn describe(&self) -> String {
        match self {
            ParamType::Int { min, max } if *max == i64::MAX => format!("an integer >= {min}"),
            ParamType::Int { min, max } => format!("an integer in {min}..={max}"),
            ParamType::Float { min, max } => format!("a float in {min:?}..={max:?}"),
            ParamType::Bool => "a boolean".into(),
            ParamType::Str => "a string".into(),
            ParamType::StrList => "a list of strings".into(),
            ParamType::Table => "a table".into(),
        }
    }
}

/// One parameter a stage kind accepts. `default: None` means the parameter is required.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: Option<ParamValue>,
    pub doc: &'static str,
    /// A parameter added to a kind after pipelines using it existed: at its default value it
    /// is left out of the fingerprint, so those pipelines keep their fingerprints (and caches).
    /// Set by [`ParamSpec::added_later`].
    pub omit_default_from_fingerprint: bool,
}

impl ParamSpec {
    pub fn int(name: &'static str, min: i64, max: i64, default: Option<i64>, doc: &'static str) -> Self {
        ParamSpec { name, ty: ParamType::Int { min, max }, default: default.map(ParamValue::Int), doc, omit_default_from_fingerprint: false }
    }
    pub fn float(name: &'static str, min: f64, max: f64, default: Option<f64>, doc: &'static str) -> Self {
        ParamSpec { name, ty: ParamType::Float { min, max }, default: default.map(ParamValue::Float), doc, omit_default_from_fingerprint: false }
    }
    pub fn bool(name: &'static str, default: Option<bool>, doc: &'static str) -> Self {
        ParamSpec { name, ty: ParamType::Bool, default: default.map(ParamValue::Bool), doc, omit_default_from_fingerprint: false }
    }
    pub fn str(name: &'static str, default: Option<&str>, doc: &'static str) -> Self {
        ParamSpec { name, ty: ParamType::Str, default: default.map(|d| ParamValue::Str(d.into())), doc, omit_default_from_fingerprint: false }
    }
    pub fn str_list(name: &'static str, default: Option<&[&str]>, doc: &'static str) -> Self {
        let default = default.map(|d| ParamValue::List(d.iter().map(|s| ParamValue::Str((*s).into())).collect()));
        ParamSpec { name, ty: ParamType::StrList, default, doc, omit_default_from_fingerprint: false }
    }
    /// Marks a parameter added after pipelines existed (see `omit_default_from_fingerprint`).
    pub fn added_later(mut self) -> Self {
        self.omit_default_from_fingerprint = true;
        self
    }
    pub fn table(name: &'static str, doc: &'static str) -> Self {
        ParamSpec { name, ty: ParamType::Table, default: Some(ParamValue::Table(BTreeMap::new())), doc, omit_default_from_fingerprint: false }
    }
}

/// A stage instance's parameters after checking: every declared parameter present (given or
/// defaulted), each of its declared type. Accessors return a [`StageError`] instead of
/// panicking so that a stage used outside the checker still fails cleanly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    pub values: BTreeMap<String, ParamValue>,
}

impl Params {
    pub fn get(&self, name: &str) -> Result<&ParamValue, StageError> {
        self.values.get(name).ok_or_else(|| StageError::Param { name: name.into(), expected: "a value".into() })
    }
    pub fn int(&self, name: &str) -> Result<i64, StageError> {
        match self.get(name)? {
            ParamValue::Int(v) => Ok(*v),
            _ => Err(StageError::Param { name: name.into(), expected: "an integer".into() }),
        }
    }
    pub fn float(&self, name: &str) -> Result<f64, StageError> {
        match self.get(name)? {
            ParamValue::Float(v) => Ok(*v),
            ParamValue::Int(v) => Ok(*v as f64),
            _ => Err(StageError::Param { name: name.into(), expected: "a float".into() }),
        }
    }
    pub fn bool(&self, name: &str) -> Result<bool, StageError> {
        match self.get(name)? {
            ParamValue::Bool(v) => Ok(*v),
            _ => Err(StageError::Param { name: name.into(), expected: "a boolean".into() }),
        }
    }
    pub fn str(&self, name: &str) -> Result<&str, StageError> {
        match self.get(name)? {
            ParamValue::Str(v) => Ok(v),
            _ => Err(StageError::Param { name: name.into(), expected: "a string".into() }),
        }
    }
    pub fn str_list(&self, name: &str) -> Result<Vec<String>, StageError> {
        let err = || StageError::Param { name: name.into(), expected: "a list of strings".into() };
        match self.get(name)? {
            ParamValue::List(items) => items
                .iter()
                .map(|i| match i {
                    ParamValue::Str(s) => Ok(s.clone()),
                    _ => Err(err()),
                })
                .collect(),
            _ => Err(err()),
        }
    }

    /// Canonical text of all parameters (sorted by name), the input to fingerprints.
    pub fn canonical(&self) -> String {
        ParamValue::Table(self.values.clone()).canonical()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_is_order_independent_and_typed() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), ParamValue::Float(0.1));
        a.insert("a".to_string(), ParamValue::Int(1));
        let p = Params { values: a };
        assert_eq!(p.canonical(), "{\"a\"=i:1,\"b\"=f:0.1}");
        assert_ne!(ParamValue::Int(1).canonical(), ParamValue::Float(1.0).canonical());
        assert_eq!(ParamValue::Float(1e-5).canonical(), "f:1e-5");
    }
}
