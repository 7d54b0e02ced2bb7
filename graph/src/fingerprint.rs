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

    /// The content key of an instance (early cut-off): like the fingerprint, but every input
    /// port that reads an artifact is identified by the content hash of the output it reads
    /// (`contents`: port -> hex blake3 from the upstream manifest) instead of the upstream
    /// fingerprint. Two instances with the same content key read byte-identical inputs with the
    /// same kind, version, parameters, seed and external files, so they produce the same
    /// result. Ports missing from `contents` keep their recorded value (`absent`). A key never
    /// equals a fingerprint or a memo key (different leading label).
    pub fn content_key(&self, contents: &BTreeMap<String, String>) -> String {
        self.by_content(contents).digest_as(b"content-v1", None)
    }

    /// The memo key of a row-wise stage by content: [`FpRecord::memo_key_without`] with the
    /// other inputs identified by content, so that the memo survives an upstream instance that
    /// re-ran with identical outputs (early cut-off).
    pub fn content_memo_key(&self, contents: &BTreeMap<String, String>, row_ports: &[&str]) -> String {
        self.by_content(contents).digest_as(b"content-memo-v1", Some(row_ports))
    }

    fn by_content(&self, contents: &BTreeMap<String, String>) -> FpRecord {
        let mut r = self.clone();
        for (port, hash) in contents {
            if let Some(v) = r.inputs.get_mut(port) {
                *v = format!("content:{hash}");
            }
        }
        r
    }

    fn digest(&self, skip_ports: Option<&[&str]>) -> String {
        self.digest_as(if skip_ports.is_some() { b"memo-v1" } else { b"stage-v1" }, skip_ports)
    }

    fn digest_as(&self, label: &[u8], skip_ports: Option<&[&str]>) -> String {
        let mut h = blake3::Hasher::new();
        let mut put = |tag: &str, bytes: &[u8]| {
            h.update(tag.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        put("alignflow-fingerprint", label);
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

    #[test]
    fn content_key_follows_input_content_not_upstream_fingerprints() {
        let contents: BTreeMap<String, String> = [("table".to_string(), "c1".to_string()), ("tokenizer".to_string(), "c2".to_string())].into();
        let r = record();
        // Another upstream fingerprint with the same content: same key, different fingerprint.
        let mut t = record();
        t.inputs.insert("table".into(), "zz.sft".into());
        assert_ne!(t.fingerprint(), r.fingerprint());
        assert_eq!(t.content_key(&contents), r.content_key(&contents));
        assert_ne!(r.content_key(&contents), r.fingerprint());
        // Other content, parameters or seed: another key.
        let mut other = contents.clone();
        other.insert("table".into(), "c3".into());
        assert_ne!(r.content_key(&other), r.content_key(&contents));
        let mut p = record();
        p.params.insert("column".into(), "s:\"prompt\"".into());
        assert_ne!(p.content_key(&contents), r.content_key(&contents));
        let mut s = record();
        s.seed = 8;
        assert_ne!(s.content_key(&contents), r.content_key(&contents));
        // The memo key by content ignores the row input, and differs from the other keys.
        let mut rows = contents.clone();
        rows.insert("table".into(), "c9".into());
        assert_eq!(t.content_memo_key(&rows, &["table"]), r.content_memo_key(&contents, &["table"]));
        assert_ne!(r.content_memo_key(&contents, &["table"]), r.memo_key("table"));
        assert_ne!(r.content_memo_key(&other, &["table"]), r.content_memo_key(&contents, &["tokenizer"]));
        // The stage fingerprint itself is unchanged by this feature (pinned encoding).
        assert_eq!(r.fingerprint(), record().digest_as(b"stage-v1", None));
    }
}
