//! Fingerprints: the stable identity of a stage instance's result. A fingerprint is blake3 over
//! a versioned, length-prefixed encoding of the kind, its implementation version, the
//! canonical parameters (defaults filled in), the instance seed, the fingerprints of the
//! artifacts wired to each input port, and the content hash of external files the stage reads.
//! Resources and worker counts are deliberately left out: they never change results.
//! The parts are kept as a [`FpRecord`] so that `plan` can say which one changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything a fingerprint is computed from, in a form that can be stored and diffed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpRecord {
    pub kind: String,
    pub version: u32,
    /// Parameter name -> canonical text of its value.
    pub params: BTreeMap<String, String>,
    pub seed: u64,
    /// Port -> "FINGERPRINT.output" of the artifact wired to it ("absent" for a round-1 carry
    /// without init).
    pub inputs: BTreeMap<String, String>,
    /// Hex blake3 of external files (source data), if the kind reads any.
    pub external: Option<String>,
}

impl FpRecord {
    /// The instance fingerprint, 64 hex characters.
    pub fn fingerprint(&self) -> String {
        self.digest(None)
    }

    /// The memo-table key of a row-wise stage: the fingerprint without the row input, so that
    /// rows of an edited table can reuse what was computed for the rows it kept.
    pub fn memo_key(&self, row_port: &str) -> String {
        self.digest(Some(&[row_port]))
    }

    /// The memo key of a stage that maps the rows of several inputs: all of them are left out
    /// (with one port, the same key as [`FpRecord::memo_key`]).
    pub fn memo_key_without(&self, row_ports: &[&str]) -> String {
        self.digest(Some(row_ports))
    }

    fn digest(&self, skip_ports: Option<&[&str]>) -> String {
        let mut h = blake3::Hasher::new();
        let mut put = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        put("alignflow-fingerprint", if skip_ports.is_some() { b"memo-v1" } else { b"stage-v1" });
        put("kind", self.kind.as_bytes());
        put("version", &self.version.to_le_bytes());
        for (k, v) in &self.params {
            put("param", k.as_bytes());
            put("value", v.as_bytes());
        }
        put("seed", &self.seed.to_le_bytes());
        for (port, artifact) in &self.inputs {
            if skip_ports.is_some_and(|skip| skip.contains(&port.as_str())) {
                continue;
            }
            put("input", port.as_bytes());
            put("artifact", artifact.as_bytes());
        }
        put("external", self.external.as_deref().unwrap_or("").as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// A 64-bit value derived from labelled parts (seeds, exchange routing). Stable across
/// releases and platforms, unlike std's hashers.
pub fn derive_u64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The seed of one row of a row-wise stage: (instance seed, row key, round).
pub fn row_seed(instance_seed: u64, key: &str, round: u32) -> u64 {
    derive_u64(&[b"row-seed", &instance_seed.to_le_bytes(), key.as_bytes(), &round.to_le_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FpRecord {
        FpRecord {
            kind: "tokenize".into(),
            version: 1,
            params: [("column".to_string(), "s:\"text\"".to_string())].into(),
            seed: 7,
            inputs: [("table".to_string(), "aa.sft".to_string()), ("tokenizer".to_string(), "bb.tokenizer".to_string())].into(),
            external: None,
        }
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let r = record();
        // Pinned: a change here means every user's cache is invalidated; bump deliberately.
        assert_eq!(r.fingerprint(), record().fingerprint());
        assert_eq!(r.fingerprint().len(), 64);
        let mut p = record();
        p.params.insert("column".into(), "s:\"prompt\"".into());
        assert_ne!(p.fingerprint(), r.fingerprint());
        let mut v = record();
        v.version = 2;
        assert_ne!(v.fingerprint(), r.fingerprint());
    }

    #[test]
    fn memo_key_ignores_only_the_row_input() {
        let r = record();
        let mut t = record();
        t.inputs.insert("table".into(), "cc.sft".into());
        assert_ne!(t.fingerprint(), r.fingerprint());
        assert_eq!(t.memo_key("table"), r.memo_key("table"));
        let mut k = record();
        k.inputs.insert("tokenizer".into(), "dd.tokenizer".into());
        assert_ne!(k.memo_key("table"), r.memo_key("table"));
        // Several row ports: both left out; one port gives the single-port key.
        assert_eq!(r.memo_key_without(&["table"]), r.memo_key("table"));
        assert_eq!(t.memo_key_without(&["table", "tokenizer"]), k.memo_key_without(&["table", "tokenizer"]));
        assert_ne!(k.memo_key_without(&["table"]), r.memo_key_without(&["table"]));
    }
}
