//! The stage contract: what a stage kind declares (typed ports, typed parameters with defaults
//! and docs, default resources, an implementation version) and how the runtime calls it. The
//! graph crate never looks inside an artifact: a stage reads its inputs from directories and
//! fills its output directories; a row-wise stage hands the runtime (row key, content hash)
//! pairs and a pure per-row function returning opaque bytes, and the runtime memoises, splits
//! rows across workers and calls the function only for new or changed rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::params::{ParamSpec, Params};

/// The kinds of artifacts that flow between stages. Each is a directory in the store; the
/// main file of the directory (if any) is named by [`ArtifactType::main_file`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArtifactType {
    /// A Parquet table with a string `id` row-key column: `<dir>/table.parquet`.
    Table,
    /// A model directory in Hugging Face layout (config.json, model.safetensors, ...).
    Model,
    /// A tokenizer: `<dir>/tokenizer.json`.
    Tokenizer,
    /// Metrics and plots: `<dir>/report.json` plus anything else.
    Report,
}

impl ArtifactType {
    pub fn name(self) -> &'static str {
        match self {
            ArtifactType::Table => "table",
            ArtifactType::Model => "model",
            ArtifactType::Tokenizer => "tokenizer",
            ArtifactType::Report => "report",
        }
    }

    /// The file inside the artifact directory that holds the artifact, where there is one.
    pub fn main_file(self) -> Option<&'static str> {
        match self {
            ArtifactType::Table => Some("table.parquet"),
            ArtifactType::Tokenizer => Some("tokenizer.json"),
            ArtifactType::Report => Some("report.json"),
            ArtifactType::Model => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [ArtifactType::Table, ArtifactType::Model, ArtifactType::Tokenizer, ArtifactType::Report]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// An input or output port of a stage kind.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: &'static str,
    pub ty: ArtifactType,
    /// Optional inputs may be left unwired (or wired to a carry that is absent in round 1).
    pub optional: bool,
    pub doc: &'static str,
}

impl Port {
    pub fn new(name: &'static str, ty: ArtifactType, doc: &'static str) -> Self {
        Port { name, ty, optional: false, doc }
    }
    pub fn optional(name: &'static str, ty: ArtifactType, doc: &'static str) -> Self {
        Port { name, ty, optional: true, doc }
    }
}

/// What a stage instance occupies while it runs. The scheduler never runs stages whose sum
/// exceeds the run's `--cpus/--gpus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub gpus: u32,
}

/// Why a stage failed. Carries the stage-level context; the runtime adds the instance name.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("parameter `{name}`: expected {expected}")]
    Param { name: String, expected: String },
    #[error("input port `{port}` is not connected")]
    MissingInput { port: String },
    #[error("no output named `{name}`")]
    UnknownOutput { name: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("row `{key}`: {message}")]
    Row { key: String, message: String },
    #[error("{context}: {source}")]
    Wrapped { context: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{0}")]
    Message(String),
}

impl StageError {
    /// Wraps any error with a short description of what was being done.
    pub fn wrap(context: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StageError::Wrapped { context: context.into(), source: source.into() }
    }
}

/// A row of a row-wise stage's input: its key (the table's `id`) and the blake3 hash of the
/// columns the stage consumes. The memo table is keyed by exactly this pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId {
    pub key: String,
    pub hash: [u8; 32],
}

/// One row to compute: its position in the stage's row list, its key, and its seed, derived
/// from (stage seed, row key, round) so that computing a row alone gives what a full run gives.
#[derive(Clone, Debug)]
pub struct RowTask {
    pub index: usize,
    pub key: String,
    pub seed: u64,
}

/// The pure per-row function of a row-wise stage. `compute` gets a batch of rows and returns
/// one opaque result per row, in the same order. It must depend only on the row's content, the
/// stage's parameters and non-row inputs, and the task's seed: never on the batch it is in.
pub trait RowFn: Send + Sync + 'static {
    fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError>;
}

/// Counts of a row-wise stage run, as `run --json` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowStats {
    pub total: u64,
    pub computed: u64,
    pub reused: u64,
}

/// The runtime's side of row-wise execution (memo lookup, worker split, memo update).
pub trait RowEngine {
    /// Returns one result per row of `rows`, in order, computing only memo misses.
    fn map_rows(&self, rows: &[RowId], f: Arc<dyn RowFn>) -> Result<(Vec<Vec<u8>>, RowStats), StageError>;
}

/// Everything a stage instance sees while it runs.
pub struct RunCtx<'a> {
    /// Instance name, e.g. `tokens` or `collect@2`.
    pub instance: &'a str,
    /// Loop round (1-based), or 0 outside loops.
    pub round: u32,
    /// The instance's seed (pipeline seed, stage name and round folded in).
    pub seed: u64,
    pub params: &'a Params,
    /// The directory of the pipeline file; relative paths in parameters resolve against it.
    pub base_dir: &'a Path,
    pub(crate) inputs: BTreeMap<String, PathBuf>,
    pub(crate) outputs: BTreeMap<String, PathBuf>,
    pub(crate) rows: &'a dyn RowEngine,
    pub(crate) row_stats: Option<RowStats>,
    pub(crate) scratch: Option<PathBuf>,
    pub(crate) collective: Arc<dyn crate::cluster::Collective>,
    pub(crate) gpus: Vec<u32>,
}

impl<'a> RunCtx<'a> {
    /// Builds a context by hand: for stage unit tests, which run a stage without a pipeline.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: &'a str,
        round: u32,
        seed: u64,
        params: &'a Params,
        base_dir: &'a Path,
        inputs: BTreeMap<String, PathBuf>,
        outputs: BTreeMap<String, PathBuf>,
        rows: &'a dyn RowEngine,
    ) -> Self {
        RunCtx { instance, round, seed, params, base_dir, inputs, outputs, rows, row_stats: None, scratch: None, collective: Arc::new(crate::cluster::Solo), gpus: Vec::new() }
    }

    /// Gives the stage a persistent scratch directory (see [`RunCtx::scratch_dir`]).
    pub fn with_scratch(mut self, dir: PathBuf) -> Self {
        self.scratch = Some(dir);
        self
    }

    /// Sets the collective of a cluster run (see [`RunCtx::collective`]).
    pub fn with_collective(mut self, c: Arc<dyn crate::cluster::Collective>) -> Self {
        self.collective = c;
        self
    }

    /// Grants GPUs (device ordinals) to the stage (see [`RunCtx::gpus`]).
    pub fn with_gpus(mut self, gpus: Vec<u32>) -> Self {
        self.gpus = gpus;
        self
    }

    /// The GPUs (device ordinals) the scheduler granted this instance for its run: as many as
    /// its `resources.gpus` (at most the run's `--gpus`), none by default. A stage that can use
    /// a GPU does so when granted one; granted none, it runs on the CPU.
    pub fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    /// The processes running this instance together: in a cluster run, a row-wise or
    /// data-parallel stage runs on every process (same inputs, same code) and this all-gathers
    /// between them; elsewhere it is a one-process collective. Only process 0's outputs are
    /// committed, so stages write outputs everywhere but side effects (checkpoints in the
    /// scratch directory) only where `collective().process() == 0`.
    pub fn collective(&self) -> &Arc<dyn crate::cluster::Collective> {
        &self.collective
    }

    /// A directory private to this stage instance (keyed by its fingerprint) that survives a
    /// crash or kill of the run, for resumable work such as training checkpoints. The runtime
    /// removes it once the instance's outputs are committed. None when the stage runs outside
    /// a workspace (unit tests).
    pub fn scratch_dir(&self) -> Option<&Path> {
        self.scratch.as_deref()
    }

    /// The artifact directory wired to input `port`.
    pub fn input(&self, port: &str) -> Result<&Path, StageError> {
        self.inputs.get(port).map(|p| p.as_path()).ok_or_else(|| StageError::MissingInput { port: port.into() })
    }

    /// The artifact directory wired to an optional input, if any.
    pub fn input_opt(&self, port: &str) -> Option<&Path> {
        self.inputs.get(port).map(|p| p.as_path())
    }

    /// The (already created, empty) directory the stage fills for output `name`.
    pub fn output(&self, name: &str) -> Result<&Path, StageError> {
        self.outputs.get(name).map(|p| p.as_path()).ok_or_else(|| StageError::UnknownOutput { name: name.into() })
    }

    /// Maps `f` over `rows`, computing only rows missing from the memo table. Records the
    /// row counts for the run report.
    pub fn map_rows(&mut self, rows: &[RowId], f: Arc<dyn RowFn>) -> Result<Vec<Vec<u8>>, StageError> {
        let (out, stats) = self.rows.map_rows(rows, f)?;
        let acc = self.row_stats.get_or_insert_with(RowStats::default);
        acc.total += stats.total;
        acc.computed += stats.computed;
        acc.reused += stats.reused;
        Ok(out)
    }

    /// Row counts recorded so far (None if the stage never called [`RunCtx::map_rows`]).
    pub fn row_stats(&self) -> Option<RowStats> {
        self.row_stats
    }
}

/// A stage kind. Small types behind this one trait, listed in one registry (stages crate).
pub trait Stage: Send + Sync + 'static {
    /// The `kind` string of pipeline files.
    fn kind(&self) -> &'static str;
    /// Implementation version: bump it when results change for the same inputs; it is part of
    /// every fingerprint, so a bump re-runs the stage everywhere.
    fn version(&self) -> u32;
    /// One paragraph for docs/pipeline-format.md and `--help`.
    fn doc(&self) -> &'static str;
    fn inputs(&self) -> Vec<Port>;
    fn outputs(&self) -> Vec<Port>;
    fn params(&self) -> Vec<ParamSpec>;
    /// Resources one instance occupies unless the pipeline file says otherwise.
    fn resources(&self) -> Resources {
        Resources { cpus: 1, gpus: 0 }
    }
    /// Row-wise stages name the input port whose rows they map (its fingerprint is left out of
    /// the memo key, so that new rows of that table reuse the memo of old ones).
    fn row_port(&self) -> Option<&'static str> {
        None
    }
    /// Further inputs whose rows a row-wise stage also maps (each row keyed and hashed by its
    /// content, e.g. an eval stage's second prompt table). Like the row port, they are left out
    /// of the memo key, so editing one of their rows recomputes only that row.
    fn extra_row_ports(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the stage trains data-parallel over the processes of a cluster run (it then runs
    /// on every process and reduces gradients through [`RunCtx::collective`]). Row-wise stages
    /// run on every process anyway; other stages run on process 0 only.
    fn data_parallel(&self) -> bool {
        false
    }
    /// A content hash of files outside the store that the stage reads (a source's data file).
    /// Called when planning and running, never when only checking.
    fn external_fingerprint(&self, _params: &Params, _base_dir: &Path) -> Result<Option<[u8; 32]>, StageError> {
        Ok(None)
    }
    /// Runs the stage: reads `ctx.input(..)` directories and fills `ctx.output(..)` directories.
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError>;
}

/// The registered stage kinds, by kind name.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn register(&mut self, stage: Arc<dyn Stage>) {
        self.kinds.insert(stage.kind(), stage);
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Stage>> {
        self.kinds.get(kind)
    }

    /// Kind names, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    pub fn stages(&self) -> impl Iterator<Item = &Arc<dyn Stage>> + '_ {
        self.kinds.values()
    }

    /// The registered kind closest to `name` (edit distance at most 3), for "did you mean".
    pub fn closest(&self, name: &str) -> Option<&'static str> {
        closest(name, self.kinds())
    }
}

/// The candidate closest to `name` by edit distance, if within 3 edits.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_kind_suggestion() {
        let names = ["assistant_world", "tokenize", "train_tokenizer"];
        assert_eq!(closest("assistant_wrld", names.into_iter()), Some("assistant_world"));
        assert_eq!(closest("trane_tokenizer", names.into_iter()), Some("train_tokenizer"));
        assert_eq!(closest("zzzzzzzzzz", names.into_iter()), None);
    }
}
