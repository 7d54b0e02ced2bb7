//! The workspace store (`.alignflow/` by default): content-addressed artifacts, row memo
//! tables, the last run's records, and the workspace lock.
//!
//! Layout:
//! ```text
//! lock                                 exclusive lock (holds the pid of the running process)
//! artifacts/<fingerprint>/<output>/…   one directory per stage instance result
//! artifacts/<fingerprint>/MANIFEST.json  written last; lists every file with size and blake3
//! memo/<memo key>/seg-<blake3>.bin     row memo segments, each immutable and self-checking
//! runs/<pipeline>.json                 the last run's instances and fingerprint inputs
//! runs/LATEST                          name of the pipeline run last (for `show`)
//! tmp/                                 staging; anything here is garbage after a crash
//! scratch/<fingerprint>/               a running instance's resumable state (training
//!                                      checkpoints); kept across crashes, removed on commit
//! index/content/<content key>          early cut-off: the fingerprint whose artifact was
//!                                      computed from inputs with this content (JSON)
//! ```
//! Every write is atomic: files are written under a temporary name, fsynced and renamed;
//! artifact directories are staged in `tmp/` and renamed into place after their manifest is
//! written. An artifact directory without a manifest whose files match is never trusted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::fingerprint::FpRecord;
use crate::stage::RowId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("workspace {workspace} is locked by pid {pid} (another alignflow run is using it); wait for it to finish")]
    Locked { workspace: PathBuf, pid: String },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A file of an artifact, as recorded in its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the artifact directory, with `/` separators.
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// The manifest of one stage instance's result; its presence (with matching files) is what
/// makes an artifact trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub fingerprint: String,
    pub instance: String,
    pub kind: String,
    /// Output name -> artifact type name.
    pub outputs: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
    /// Rows of a row-wise stage's run (so a cached instance can report them); absent for
    /// other stages and in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Output name -> content hash of the output's files ([`content_hash`]). Absent in
    /// manifests written before it existed; [`Manifest::content_of`] then derives it from
    /// `files`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub content: BTreeMap<String, String>,
}

impl Manifest {
    /// The content hash of one output: recorded, or derived from the file list (older
    /// manifests). None if the artifact has no such output.
    pub fn content_of(&self, output: &str) -> Option<String> {
        if let Some(h) = self.content.get(output) {
            return Some(h.clone());
        }
        self.outputs.contains_key(output).then(|| content_hash(&self.files, output))
    }
}

/// The content hash of output `output` of an artifact with these files: blake3 over the
/// output's files in the order of their paths relative to the output directory, each as its
/// length-prefixed relative path, its size and the blake3 of its bytes. It depends only on the
/// bytes and relative paths, never on the fingerprint, instance name, times or workspace.
pub fn content_hash(files: &[FileEntry], output: &str) -> String {
    let prefix = format!("{output}/");
    let mut own: Vec<(&str, &FileEntry)> = files.iter().filter_map(|f| f.path.strip_prefix(&prefix).map(|rel| (rel, f))).collect();
    own.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = blake3::Hasher::new();
    h.update(b"alignflow-content-v1");
    for (rel, f) in own {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update(&f.bytes.to_le_bytes());
        h.update(f.blake3.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// An entry of the content index: the artifact computed from inputs with a given content key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentEntry {
    pub fingerprint: String,
    /// The instance that computed it (for the "identical by content to" reason).
    pub instance: String,
}

/// What `plan` and `show` need from the last run of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pipeline: String,
    /// Instance name -> its record.
    pub instances: BTreeMap<String, InstanceRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub stage: String,
    pub round: u32,
    pub fingerprint: String,
    pub inputs: FpRecord,
    /// Output name -> artifact type name.
    pub outputs: BTreeMap<String, String>,
    /// What the run that last recorded this instance did with it: `ran`, `cached` or
    /// `partial`; `failed` or `skipped` when the last run did not produce it (the fingerprint
    /// and outputs are then an earlier run's). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A workspace directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Held for the duration of a run; dropping it (or the process dying) releases the lock.
pub struct WorkspaceLock {
    _file: File,
}

/// A staging directory for one artifact, renamed into place by [`Store::commit`].
pub struct Staging {
    pub dir: PathBuf,
    fingerprint: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path`, unique within this process and across processes.
fn temp_name(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_name(path);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // Directories can be opened and fsynced on Unix; elsewhere this is best effort.
    match File::open(dir) {
        Ok(d) => {
            let _ = d.sync_all();
            Ok(())
        }
        Err(e) => Err(StoreError::Io { path: dir.to_path_buf(), source: e }),
    }
}

fn hash_file(path: &Path) -> Result<(u64, String), StoreError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Every regular file under `dir`, as paths relative to it, sorted.
fn list_files(dir: &Path) -> Result<Vec<String>, StoreError> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
        for e in fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p.strip_prefix(base).expect("under base");
                out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

impl Store {
    /// A store rooted at `root`. Nothing is created until [`Store::lock`].
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the workspace if needed and takes its exclusive lock, failing at once if
    /// another process holds it. Leftover staging directories of crashed runs are removed.
    pub fn lock(&self) -> Result<WorkspaceLock, StoreError> {
        for sub in ["artifacts", "memo", "runs", "tmp"] {
            let d = self.root.join(sub);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let path = self.root.join("lock");
        let mut file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() { "unknown".to_string() } else { pid.trim().to_string() };
                return Err(StoreError::Locked { workspace: self.root.clone(), pid });
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::Io { path, source: e }),
        }
        file.set_len(0).map_err(io(&path))?;
        file.write_all(std::process::id().to_string().as_bytes()).map_err(io(&path))?;
        let _ = file.sync_all();
        // Under the lock nobody else is staging: whatever is in tmp/ is from a dead run.
        let tmp = self.root.join("tmp");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(WorkspaceLock { _file: file })
    }

    pub fn artifact_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join("artifacts").join(fingerprint)
    }

    /// The directory of one output of a stage instance.
    pub fn output_dir(&self, fingerprint: &str, output: &str) -> PathBuf {
        self.artifact_dir(fingerprint).join(output)
    }

    /// The manifest of a complete artifact: present, parseable, for this fingerprint, and every
    /// listed file present with its recorded size. Anything else is "not in the store".
    pub fn manifest(&self, fingerprint: &str) -> Option<Manifest> {
        let dir = self.artifact_dir(fingerprint);
        let text = fs::read(dir.join("MANIFEST.json")).ok()?;
        let m: Manifest = serde_json::from_slice(&text).ok()?;
        if m.fingerprint != fingerprint {
            return None;
        }
        let all_there = m.files.iter().all(|f| fs::metadata(dir.join(&f.path)).map(|md| md.len() == f.bytes).unwrap_or(false));
        all_there.then_some(m)
    }

    /// The manifest, if complete and listing every output in `outputs` (a kind that gained an
    /// output since the artifact was written must run again; with the same fingerprint, its
    /// other outputs come out the same, so nothing downstream reruns).
    pub fn manifest_with(&self, fingerprint: &str, outputs: &[&str]) -> Option<Manifest> {
        self.manifest(fingerprint).filter(|m| outputs.iter().all(|o| m.outputs.contains_key(*o)))
    }

    /// Verifies every file of an artifact against its recorded blake3 (slow; for tests/fsck).
    pub fn verify(&self, fingerprint: &str) -> Result<bool, StoreError> {
        let Some(m) = self.manifest(fingerprint) else { return Ok(false) };
        let dir = self.artifact_dir(fingerprint);
        for f in &m.files {
            if hash_file(&dir.join(&f.path))?.1 != f.blake3 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A fresh staging directory with one empty subdirectory per output.
    pub fn stage(&self, fingerprint: &str, outputs: &[&str]) -> Result<Staging, StoreError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("tmp").join(format!("{fingerprint}.{}.{n}", std::process::id()));
        for o in outputs {
            let d = dir.join(o);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Staging { dir, fingerprint: fingerprint.to_string() })
    }

    /// Seals a staging directory: fsyncs its files, writes the manifest last, and renames the
    /// directory to `artifacts/<fingerprint>`, replacing any untrusted leftover there.
    pub fn commit(&self, staging: Staging, instance: &str, kind: &str, outputs: BTreeMap<String, String>, rows: Option<u64>) -> Result<Manifest, StoreError> {
        let mut files = Vec::new();
        for rel in list_files(&staging.dir)? {
            let p = staging.dir.join(&rel);
            File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p))?;
            let (bytes, blake3) = hash_file(&p)?;
            files.push(FileEntry { path: rel, bytes, blake3 });
        }
        let content = outputs.keys().map(|o| (o.clone(), content_hash(&files, o))).collect();
        let manifest = Manifest { fingerprint: staging.fingerprint.clone(), instance: instance.into(), kind: kind.into(), outputs, files, rows, content };
        self.seal(staging, manifest)
    }

    /// Early cut-off: makes the complete artifact `from` (listing every output in `outputs`)
    /// the artifact of fingerprint `to` as well, for instance `instance`. Every file is
    /// hard-linked (copied where links fail) into a staging directory and checked against the
    /// source manifest's size and blake3; the new manifest (same files, rows and content
    /// hashes, the new fingerprint and instance) is written last and the directory renamed into
    /// place, exactly like [`Store::commit`]. Artifacts are never modified after commit, so the
    /// shared files are safe; every reader sees an ordinary artifact. Ok(None) when the source
    /// is missing, incomplete or does not match its manifest (the caller then runs the stage).
    pub fn reuse(&self, from: &str, to: &str, instance: &str, outputs: &[&str]) -> Result<Option<Manifest>, StoreError> {
        let Some(src) = self.manifest_with(from, outputs) else { return Ok(None) };
        let src_dir = self.artifact_dir(from);
        let staging = self.stage(to, &[])?;
        fs::create_dir_all(&staging.dir).map_err(io(&staging.dir))?;
        for o in src.outputs.keys() {
            let d = staging.dir.join(o);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        for f in &src.files {
            let (a, b) = (src_dir.join(&f.path), staging.dir.join(&f.path));
            if let Some(parent) = b.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            if fs::hard_link(&a, &b).is_err() {
                fs::copy(&a, &b).map_err(io(&b))?;
            }
            let (bytes, blake3) = hash_file(&b)?;
            if bytes != f.bytes || blake3 != f.blake3 {
                let _ = fs::remove_dir_all(&staging.dir);
                return Ok(None);
            }
        }
        let content = src.outputs.keys().filter_map(|o| src.content_of(o).map(|h| (o.clone(), h))).collect();
        let manifest = Manifest { fingerprint: to.to_string(), instance: instance.to_string(), kind: src.kind.clone(), outputs: src.outputs.clone(), files: src.files.clone(), rows: src.rows, content };
        self.seal(staging, manifest).map(Some)
    }

    /// Writes the manifest into the staging directory (last) and renames it into place.
    fn seal(&self, staging: Staging, manifest: Manifest) -> Result<Manifest, StoreError> {
        let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_atomic(&staging.dir.join("MANIFEST.json"), &text)?;
        let target = self.artifact_dir(&staging.fingerprint);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        fs::rename(&staging.dir, &target).map_err(io(&target))?;
        sync_dir(&self.root.join("artifacts"))?;
        Ok(manifest)
    }

    /// The scratch directory of a stage instance, created if needed. Unlike `tmp/` it is kept
    /// when a run dies, so that the next run of the same fingerprint can resume from it.
    pub fn scratch_dir(&self, fingerprint: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("scratch").join(fingerprint);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Drops an instance's scratch directory once its result is committed (best effort: a
    /// leftover only costs disk, never correctness, since resumes check what they load).
    pub fn remove_scratch(&self, fingerprint: &str) {
        let _ = fs::remove_dir_all(self.root.join("scratch").join(fingerprint));
    }

    fn content_index_path(&self, key: &str) -> Option<PathBuf> {
        // Keys are hex digests; anything else never names a file.
        (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.root.join("index").join("content").join(key))
    }

    /// The content index entry of `key`, if any (an unreadable entry counts as none). The
    /// entry says only where to look: callers check the artifact it names.
    pub fn content_entry(&self, key: &str) -> Option<ContentEntry> {
        let text = fs::read(self.content_index_path(key)?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records that the artifact `fingerprint` (of `instance`) was computed from inputs with
    /// content key `key`. Written atomically and only after the artifact's manifest, so an
    /// entry never names an artifact that was not committed.
    pub fn put_content_entry(&self, key: &str, fingerprint: &str, instance: &str) -> Result<(), StoreError> {
        let Some(path) = self.content_index_path(key) else {
            return Err(StoreError::Corrupt { path: self.root.join("index/content"), message: format!("bad content key {key:?}") });
        };
        if self.content_entry(key).is_some_and(|e| e.fingerprint == fingerprint) {
            return Ok(());
        }
        let dir = path.parent().expect("index/content");
        fs::create_dir_all(dir).map_err(io(dir))?;
        let entry = ContentEntry { fingerprint: fingerprint.to_string(), instance: instance.to_string() };
        write_atomic(&path, &serde_json::to_vec(&entry).expect("entry serialises"))
    }

    fn memo_dir(&self, key: &str) -> PathBuf {
        self.root.join("memo").join(key)
    }

    /// All memo entries of a row-wise stage's memo key. Segments that fail their checksum are
    /// skipped (they cannot come from a completed write).
    pub fn load_memo(&self, key: &str) -> Result<HashMap<RowId, Vec<u8>>, StoreError> {
        let dir = self.memo_dir(key);
        let mut out = HashMap::new();
        let Ok(rd) = fs::read_dir(&dir) else { return Ok(out) };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect();
        names.sort();
        for p in names {
            let bytes = fs::read(&p).map_err(io(&p))?;
            if let Some(entries) = decode_segment(&bytes) {
                out.extend(entries);
            }
        }
        Ok(out)
    }

    /// Adds entries to a memo table as one new immutable segment.
    pub fn add_memo(&self, key: &str, entries: &[(RowId, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let dir = self.memo_dir(key);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let bytes = encode_segment(entries);
        let name = blake3::hash(&bytes).to_hex();
        write_atomic(&dir.join(format!("seg-{}.bin", &name[..32])), &bytes)
    }

    /// The last run of `pipeline` in this workspace, if any.
    pub fn last_run(&self, pipeline: &str) -> Option<RunRecord> {
        let text = fs::read(self.root.join("runs").join(format!("{pipeline}.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The name of the pipeline run last in this workspace.
    pub fn latest_pipeline(&self) -> Option<String> {
        fs::read_to_string(self.root.join("runs").join("LATEST")).ok().map(|s| s.trim().to_string())
    }

    /// Records a run (merged over the previous record, so a failed stage keeps its old entry).
    pub fn write_run(&self, record: &RunRecord) -> Result<(), StoreError> {
        let dir = self.root.join("runs");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let text = serde_json::to_vec_pretty(record).expect("run record serialises");
        write_atomic(&dir.join(format!("{}.json", record.pipeline)), &text)?;
        write_atomic(&dir.join("LATEST"), record.pipeline.as_bytes())
    }
}

const MEMO_MAGIC: &[u8; 8] = b"AFMEMO1\n";

/// Segment: magic, then per entry (u32 key length, key, 32-byte hash, u32 value length,
/// value), then the blake3 of everything before it.
fn encode_segment(entries: &[(RowId, Vec<u8>)]) -> Vec<u8> {
    let mut b = MEMO_MAGIC.to_vec();
    for (id, v) in entries {
        b.extend_from_slice(&(id.key.len() as u32).to_le_bytes());
        b.extend_from_slice(id.key.as_bytes());
        b.extend_from_slice(&id.hash);
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v);
    }
    let sum = blake3::hash(&b);
    b.extend_from_slice(sum.as_bytes());
    b
}

fn decode_segment(bytes: &[u8]) -> Option<Vec<(RowId, Vec<u8>)>> {
    if bytes.len() < MEMO_MAGIC.len() + 32 || &bytes[..8] != MEMO_MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut at = 8;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = body.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let mut out = Vec::new();
    loop {
        let Some(len) = take(4) else { break };
        let klen = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let key = String::from_utf8(take(klen)?.to_vec()).ok()?;
        let hash: [u8; 32] = take(32)?.try_into().ok()?;
        let vlen = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let value = take(vlen)?.to_vec();
        out.push((RowId { key, hash }, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_round_trips_and_rejects_corruption() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        let _l = s.lock().unwrap();
        let e = vec![(RowId { key: "a".into(), hash: [1; 32] }, vec![1, 2, 3]), (RowId { key: "b".into(), hash: [2; 32] }, vec![])];
        s.add_memo("k", &e).unwrap();
        let m = s.load_memo("k").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&e[0].0], vec![1, 2, 3]);
        let mut seg = encode_segment(&e);
        seg[10] ^= 1;
        assert!(decode_segment(&seg).is_none());
    }

    #[test]
    fn artifact_without_manifest_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        let _l = s.lock().unwrap();
        let st = s.stage("fp1", &["out"]).unwrap();
        fs::write(st.dir.join("out/table.parquet"), b"data").unwrap();
        // Not committed: the staging dir is not an artifact.
        assert!(s.manifest("fp1").is_none());
        let outputs = [("out".to_string(), "table".to_string())].into();
        s.commit(st, "x", "k", outputs, None).unwrap();
        assert!(s.manifest("fp1").is_some());
        assert!(s.verify("fp1").unwrap());
        // A truncated file makes the artifact untrusted again.
        fs::write(s.output_dir("fp1", "out").join("table.parquet"), b"da").unwrap();
        assert!(s.manifest("fp1").is_none());
    }

    #[test]
    fn content_hash_depends_on_bytes_and_paths_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        let _l = s.lock().unwrap();
        let outputs: BTreeMap<String, String> = [("out".to_string(), "table".to_string()), ("report".to_string(), "report".to_string())].into();
        let write = |fp: &str, data: &[u8], report: &[u8]| {
            let st = s.stage(fp, &["out", "report"]).unwrap();
            fs::write(st.dir.join("out/table.parquet"), data).unwrap();
            fs::write(st.dir.join("report/report.json"), report).unwrap();
            s.commit(st, fp, "k", outputs.clone(), None).unwrap()
        };
        let a = write("fpa", b"rows", b"{}");
        let b = write("fpb", b"rows", b"{\"x\": 1}");
        let c = write("fpc", b"rows!", b"{}");
        assert_eq!(a.content["out"], b.content["out"]);
        assert_ne!(a.content["report"], b.content["report"]);
        assert_ne!(a.content["out"], c.content["out"]);
        // An older manifest without content hashes gets the same ones, derived from its files.
        let mut old = a.clone();
        old.content.clear();
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("\"content\""));
        let parsed: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.content_of("out"), Some(a.content["out"].clone()));
        assert_eq!(parsed.content_of("missing"), None);
    }

    #[test]
    fn reuse_links_a_checked_copy_and_refuses_a_corrupt_source() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        let _l = s.lock().unwrap();
        let outputs: BTreeMap<String, String> = [("out".to_string(), "table".to_string())].into();
        let st = s.stage("fp1", &["out"]).unwrap();
        fs::create_dir_all(st.dir.join("out/sub")).unwrap();
        fs::write(st.dir.join("out/table.parquet"), b"data").unwrap();
        fs::write(st.dir.join("out/sub/extra.bin"), b"more").unwrap();
        let m1 = s.commit(st, "a", "k", outputs.clone(), Some(3)).unwrap();
        let key = "ab".repeat(32);
        assert!(s.content_entry(&key).is_none());
        s.put_content_entry(&key, "fp1", "a").unwrap();
        assert_eq!(s.content_entry(&key).unwrap().fingerprint, "fp1");
        assert!(s.put_content_entry("../x", "fp1", "a").is_err());

        let m2 = s.reuse("fp1", "fp2", "a@2", &["out"]).unwrap().expect("reused");
        assert_eq!((m2.fingerprint.as_str(), m2.instance.as_str(), m2.rows), ("fp2", "a@2", Some(3)));
        assert_eq!((m2.files.clone(), m2.content.clone()), (m1.files.clone(), m1.content.clone()));
        assert!(s.verify("fp2").unwrap());
        assert_eq!(fs::read(s.output_dir("fp2", "out").join("sub/extra.bin")).unwrap(), b"more");
        // A missing source, a source without a required output, or one whose bytes no longer
        // match its manifest is not reused.
        assert!(s.reuse("nope", "fp3", "a", &["out"]).unwrap().is_none());
        assert!(s.reuse("fp1", "fp3", "a", &["out", "other"]).unwrap().is_none());
        let p = s.output_dir("fp1", "out").join("table.parquet");
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"dAta").unwrap();
        assert!(s.reuse("fp1", "fp3", "a", &["out"]).unwrap().is_none());
        assert!(s.manifest("fp3").is_none());
        // The reused artifact kept its own (linked, then unlinked) file intact.
        assert!(s.verify("fp2").unwrap());
    }

    #[test]
    fn second_lock_fails_with_pid() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::at(d.path());
        let _l = s.lock().unwrap();
        match Store::at(d.path()).lock() {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("second lock succeeded"),
        }
    }
}
