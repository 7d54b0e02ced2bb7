//! Pipeline commands: `run`, `plan`, `show`, `check`. Parsing and printing only; the work is in
//! `graph` (check, plan, store, runtime) and `stages` (kinds, progress, rendering).
//!
//! Exit status: 2 for a bad pipeline file (every problem printed as
//! `FILE:LINE:COL: error: MESSAGE`), 1 when a stage fails or the workspace is locked, else 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// The workspace used when `--workspace` is not given (relative to the current directory).
const DEFAULT_WORKSPACE: &str = ".alignflow";

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Run a pipeline: stages whose fingerprint is in the workspace are skipped, row-wise
    /// stages compute only new or changed rows.
    Run(RunArgs),
    /// For every stage: cached, or why it will run (which input, parameter or code version
    /// changed since the last run in this workspace). Runs nothing.
    Plan {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Workspace directory holding artifacts, memo tables and run records.
        #[arg(long, default_value = DEFAULT_WORKSPACE)]
        workspace: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print an artifact: "stage.output" (or "stage@round.output") of the last run in the
    /// workspace, or a path to an artifact directory or Parquet file.
    Show {
        artifact: String,
        /// How many table rows to print.
        #[arg(long, default_value_t = 5)]
        rows: usize,
        #[arg(long, default_value = DEFAULT_WORKSPACE)]
        workspace: PathBuf,
        /// Which pipeline's last run resolves "stage.output" (default: the latest run).
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// Check a pipeline file without reading any data; report every problem with
    /// FILE:LINE:COL (exit status 2 if there is any).
    Check {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    file: PathBuf,
    /// Workspace directory holding artifacts, memo tables and run records.
    #[arg(long, default_value = DEFAULT_WORKSPACE)]
    workspace: PathBuf,
    /// Timely worker threads that row-wise stages split their rows over (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// CPUs shared by stages running at the same time (default: all cores).
    #[arg(long)]
    cpus: Option<u32>,
    /// GPUs shared by stages running at the same time.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Print one JSON object describing the run on stdout at the end.
    #[arg(long)]
    json: bool,
    /// Cluster run: how many processes (one per machine, each with --workers threads). Every
    /// process runs the same command with the same pipeline file and workspace (a shared file
    /// system) and its own --process-id.
    #[arg(long, requires_all = ["process_id", "hostfile"], conflicts_with = "slurm")]
    processes: Option<usize>,
    /// Cluster run: this process's index, 0..processes (process 0 holds the workspace lock).
    #[arg(long, requires = "processes")]
    process_id: Option<usize>,
    /// Cluster run: one host:port per line, in process order.
    #[arg(long, requires = "processes")]
    hostfile: Option<PathBuf>,
    /// Cluster run under Slurm (srun): rank from SLURM_PROCID, size from SLURM_NTASKS, hosts
    /// from SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST), each listening on --port.
    #[arg(long)]
    slurm: bool,
    /// The port processes listen on with --slurm (k tasks per node use port..port+k-1).
    #[arg(long, default_value_t = 2101)]
    port: u16,
    /// Cluster run: seconds to wait for every other process to connect at start; a process
    /// whose peers do not all start in time stops with an error.
    #[arg(long, default_value_t = graph::cluster::DEFAULT_CONNECT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,
}

/// The cluster this process belongs to, from the flags or Slurm's environment.
fn cluster_config(a: &RunArgs) -> anyhow::Result<Option<graph::ClusterConfig>> {
    if a.slurm {
        let env = |k: &str| std::env::var(k).ok();
        let mut c = graph::cluster::from_slurm(&env, a.port)?;
        c.connect_timeout = std::time::Duration::from_secs(a.connect_timeout);
        return Ok(Some(c));
    }
    let Some(n) = a.processes else { return Ok(None) };
    let (Some(process), Some(hostfile)) = (a.process_id, a.hostfile.as_ref()) else { bail!("--processes needs --process-id and --hostfile") };
    if n == 0 {
        bail!("--processes must be at least 1");
    }
    if process >= n {
        return Err(graph::ClusterError::BadIndex { process, processes: n }.into());
    }
    let addresses = graph::cluster::read_hostfile(hostfile, n)?;
    Ok(Some(graph::ClusterConfig { process, addresses, connect_timeout: std::time::Duration::from_secs(a.connect_timeout) }))
}

/// In a cluster run any failure stops this process at once, so that the others lose their
/// connection to it and stop too (timely is fail-stop): a stage failure, or a panic anywhere,
/// including timely's network threads when a peer process dies.
fn fail_fast(process: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if msg.contains("timely communication error") || msg.contains("MergeQueue poisoned") {
            eprintln!(
                "error: process {process}: lost the connection to another process of the cluster run ({msg}); \
                 that process failed or was killed. Stopping. Run the same command on every process again: \
                 finished stages, rows and training checkpoints are reused."
            );
        } else {
            default(info);
            eprintln!("error: process {process}: a thread panicked; stopping the cluster run");
        }
        std::process::exit(1);
    }));
}

/// Forwards progress; on a failed stage in a cluster run, reports it and exits.
struct FailFast {
    inner: std::sync::Arc<dyn graph::Progress>,
    process: usize,
}

impl graph::Progress for FailFast {
    fn started(&self, instance: &str, kind: &str) {
        self.inner.started(instance, kind);
    }
    fn rows(&self, instance: &str, done: u64, total: u64) {
        self.inner.rows(instance, done, total);
    }
    fn finished(&self, report: &graph::StageReport) {
        self.inner.finished(report);
        if report.status == graph::Status::Failed {
            eprintln!(
                "error: process {}: {}; stopping the cluster run (the other processes stop when they lose the connection)",
                self.process,
                report.error.as_deref().unwrap_or("a stage failed")
            );
            std::process::exit(1);
        }
    }
}

pub fn run(c: PipelineCommand) -> anyhow::Result<ExitCode> {
    match c {
        PipelineCommand::Check { file } => Ok(match load(&file) {
            Ok(p) => {
                println!("{}: ok ({} stages, {} loops)", file.display(), p.stages.len(), p.loops.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        PipelineCommand::Plan { file, workspace, json } => plan(&file, &workspace, json),
        PipelineCommand::Run(args) => run_pipeline(&args),
        PipelineCommand::Show { artifact, rows, workspace, pipeline } => show(&artifact, rows, &workspace, pipeline.as_deref()),
    }
}

/// Reads and checks a pipeline file; on problems prints them all and yields exit status 2.
fn load(file: &Path) -> Result<graph::Pipeline, ExitCode> {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}:1:1: error: cannot read the pipeline file: {e}");
            return Err(ExitCode::from(2));
        }
    };
    graph::check(&text, &stages::registry()).map_err(|diags| {
        for d in &diags {
            eprintln!("{}", d.render(&name));
        }
        eprintln!("{name}: {} problem{}", diags.len(), if diags.len() == 1 { "" } else { "s" });
        ExitCode::from(2)
    })
}

fn make_plan(file: &Path, pipeline: graph::Pipeline) -> anyhow::Result<graph::Plan> {
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    graph::plan(pipeline, &stages::registry(), base).with_context(|| format!("planning {}", file.display()))
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn run_pipeline(a: &RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = match load(&a.file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let plan = make_plan(&a.file, pipeline)?;
    let opts = graph::RunOptions {
        workers: a.workers.unwrap_or_else(cores).max(1),
        cpus: a.cpus.unwrap_or(cores() as u32).max(1),
        gpus: a.gpus,
        cluster: cluster_config(a)?,
    };
    let mut progress = stages::progress::for_stderr();
    if let Some(c) = opts.cluster.as_ref().filter(|c| c.processes() > 1) {
        eprintln!(
            "cluster: process {} of {} ({} workers each; hosts {}); workspace {} must be the same directory for every process",
            c.process,
            c.processes(),
            opts.workers,
            c.addresses.join(" "),
            a.workspace.display()
        );
        fail_fast(c.process);
        progress = std::sync::Arc::new(FailFast { inner: progress, process: c.process });
    }
    let store = graph::Store::at(&a.workspace);
    let report = graph::run(&plan, &stages::registry(), &store, &opts, progress)?;
    if a.json {
        println!("{}", serde_json::to_string(&report.to_json())?);
    }
    let count = |s: graph::Status| report.stages.iter().filter(|r| r.status == s).count();
    eprintln!(
        "{}: {} ran, {} partial, {} cached, {} failed, {} skipped in {:.2} s",
        report.pipeline,
        count(graph::Status::Ran),
        count(graph::Status::Partial),
        count(graph::Status::Cached),
        count(graph::Status::Failed),
        count(graph::Status::Skipped),
        report.seconds
    );
    for r in report.stages.iter().filter(|r| r.status == graph::Status::Failed) {
        eprintln!("error: {}", r.error.as_deref().unwrap_or("failed"));
    }
    Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn plan(file: &Path, workspace: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let pipeline = match load(file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let plan = make_plan(file, pipeline)?;
    let entries = graph::explain(&plan, &graph::Store::at(workspace));
    if json {
        let stages: Vec<_> = entries.iter().map(|e| e.to_json()).collect();
        println!("{}", serde_json::json!({ "pipeline": plan.pipeline.name, "stages": stages }));
    } else {
        for e in &entries {
            if e.cached {
                println!("cached    {} ({})", e.name, e.kind);
            } else {
                println!("will run  {} ({}): {}", e.name, e.kind, e.reasons.join("; "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(artifact: &str, rows: usize, workspace: &Path, pipeline: Option<&str>) -> anyhow::Result<ExitCode> {
    let path = Path::new(artifact);
    let dir = if path.exists() { path.to_path_buf() } else { resolve(artifact, workspace, pipeline)? };
    print!("{}", stages::show::render(&dir, rows)?);
    Ok(ExitCode::SUCCESS)
}

/// "stage.output" or "stage@round.output" -> the artifact directory of the last run. Without a
/// round, a loop stage resolves to its last round.
pub(crate) fn resolve(artifact: &str, workspace: &Path, pipeline: Option<&str>) -> anyhow::Result<PathBuf> {
    let store = graph::Store::at(workspace);
    let Some((stage, output)) = artifact.rsplit_once('.') else {
        bail!("{artifact:?} is neither a path nor a \"stage.output\" reference");
    };
    let name = match pipeline.map(String::from).or_else(|| store.latest_pipeline()) {
        Some(n) => n,
        None => bail!("no run recorded in workspace {}", workspace.display()),
    };
    let Some(record) = store.last_run(&name) else { bail!("no run of pipeline `{name}` in workspace {}", workspace.display()) };
    let inst = record
        .instances
        .iter()
        .filter(|(k, r)| k.as_str() == stage || (r.stage == stage && !stage.contains('@')))
        .max_by_key(|(_, r)| r.round)
        .map(|(_, r)| r);
    let Some(inst) = inst else { bail!("pipeline `{name}` has no stage `{stage}` in its last run") };
    if !inst.outputs.contains_key(output) {
        let known: Vec<_> = inst.outputs.keys().cloned().collect();
        bail!("stage `{stage}` has no output `{output}`; its outputs are: {}", known.join(", "));
    }
    if store.manifest(&inst.fingerprint).is_none() {
        bail!("the artifact of `{stage}` is no longer complete in the store; run the pipeline again");
    }
    Ok(store.output_dir(&inst.fingerprint, output))
}
