//! The runtime: runs a plan on timely dataflow. Each stage instance is one operator of a
//! dataflow whose edges are the plan's dependencies; an operator waits until its input
//! frontier is empty (every upstream instance is finished), then either finds its fingerprint
//! in the store (cached) or starts its job on a thread of its own, holding its capability until
//! the job reports back through a `SyncActivator`. Ready operators start as long as the run's
//! CPU and GPU budget (`--cpus/--gpus`) covers their declared resources, so independent stages
//! run at the same time. Row-wise stages further split their rows over `--workers` timely
//! workers (see `rows`). A failed instance fails its downstream instances (skipped); the others
//! still run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline as Pipe};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concatenate, Inspect, Probe, ToStream};
use timely::dataflow::Stream;
use timely::scheduling::Activator;

use crate::cluster::{ClusterConfig, Collective, Mailbox, Msg, Solo, TaggedCollective};
use crate::plan::Plan;
use crate::rows::MemoRowEngine;
use crate::stage::{Registry, Resources, RowStats, RunCtx, StageError};
use crate::store::{InstanceRecord, Store, StoreError};

/// Run-level settings. None of them enters a fingerprint: they never change results.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Timely worker threads for row-wise stages.
    pub workers: usize,
    /// CPU budget shared by concurrently running stages.
    pub cpus: u32,
    /// GPU budget shared by concurrently running stages.
    pub gpus: u32,
    /// This process's place in a cluster run; None for a one-process run.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Computed in full.
    Ran,
    /// Found in the store; nothing ran.
    Cached,
    /// Row-wise stage that reused some rows from its memo and computed the rest.
    Partial,
    Failed,
    /// Not run because an upstream instance failed.
    Skipped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Cached => "cached",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
    fn ok(self) -> bool {
        matches!(self, Status::Ran | Status::Cached | Status::Partial)
    }
}

/// What happened to one instance.
#[derive(Clone, Debug)]
pub struct StageReport {
    pub name: String,
    pub stage: String,
    pub kind: String,
    pub round: u32,
    pub fingerprint: String,
    pub status: Status,
    /// Row counts of row-wise stages; None for other stages. A cached row-wise instance
    /// reports the row total recorded in its manifest, all of it reused.
    pub rows: Option<RowStats>,
    pub seconds: f64,
    pub error: Option<String>,
    /// Early cut-off: set when a `cached` instance was not in the store under its fingerprint
    /// but its inputs were byte-identical to those of an instance computed before, whose
    /// artifact was reused; says which ("inputs identical by content to `collect@1`
    /// (3f2a9c1b0d4e)").
    pub cutoff: Option<String>,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub pipeline: String,
    pub seconds: f64,
    /// In plan order.
    pub stages: Vec<StageReport>,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        self.stages.iter().any(|s| !s.status.ok())
    }

    /// The `run --json` object.
    pub fn to_json(&self) -> serde_json::Value {
        let stages: Vec<serde_json::Value> = self
            .stages
            .iter()
            .map(|s| {
                let rows = |f: fn(&RowStats) -> u64| s.rows.as_ref().map(f).map(serde_json::Value::from).unwrap_or(serde_json::Value::Null);
                let mut o = serde_json::json!({
                    "name": s.stage,
                    "kind": s.kind,
                    "round": s.round,
                    "fingerprint": s.fingerprint,
                    "status": s.status.name(),
                    "rows_total": rows(|r| r.total),
                    "rows_computed": rows(|r| r.computed),
                    "rows_reused": rows(|r| r.reused),
                    "seconds": s.seconds,
                });
                if let Some(e) = &s.error {
                    o["error"] = e.clone().into();
                }
                o["cutoff"] = s.cutoff.is_some().into();
                if let Some(r) = &s.cutoff {
                    o["reason"] = r.clone().into();
                }
                o
            })
            .collect();
        serde_json::json!({ "pipeline": self.pipeline, "seconds": self.seconds, "stages": stages })
    }
}

/// Progress callbacks (the CLI draws bars or prints lines). Called from several threads.
pub trait Progress: Send + Sync {
    fn started(&self, _instance: &str, _kind: &str) {}
    fn rows(&self, _instance: &str, _done: u64, _total: u64) {}
    fn finished(&self, _report: &StageReport) {}
}

/// A [`Progress`] that shows nothing.
pub struct Silent;
impl Progress for Silent {}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster could not start, or a worker died (a peer process failed or was killed).
    #[error("cluster: {0}")]
    Cluster(String),
    /// The other processes of a cluster run did not all connect within the connect timeout.
    #[error(
        "cluster: process {process} of {processes}: the other processes did not all connect within {seconds} s \
         (hosts {hosts}). Start the same command with every --process-id from 0 to {last}, check the hostfile's \
         host:port lines and that those ports are reachable, or raise --connect-timeout"
    )]
    ConnectTimeout { process: usize, processes: usize, last: usize, seconds: u64, hosts: String },
}

/// Connects this process to the others of a cluster run (timely's TCP mesh: it connects to
/// lower-numbered processes, retrying every second, and accepts the higher-numbered ones), on a
/// thread of its own so that a peer that never starts ends in [`RunError::ConnectTimeout`]
/// instead of a wait for ever. On a timeout the connecting thread is left behind, blocked: the
/// caller is expected to end the process.
fn connect(communication: timely::CommunicationConfig, cluster: Option<&ClusterConfig>) -> Result<(Vec<timely::communication::AllocatorBuilder>, Box<dyn std::any::Any + Send>), RunError> {
    let Some(c) = cluster else {
        return communication.try_build().map_err(|e| RunError::Cluster(format!("starting timely: {e}")));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("cluster-connect".into())
        .spawn(move || {
            let _ = tx.send(communication.try_build());
        })
        .map_err(|e| RunError::Cluster(format!("starting the connection thread: {e}")))?;
    match rx.recv_timeout(c.connect_timeout) {
        Ok(built) => built.map_err(|e| RunError::Cluster(format!("connecting to the other processes: {e}"))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(RunError::ConnectTimeout {
            process: c.process,
            processes: c.processes(),
            last: c.processes().saturating_sub(1),
            seconds: c.connect_timeout.as_secs(),
            hosts: c.addresses.join(" "),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(RunError::Cluster("the connection thread stopped (it panicked)".into())),
    }
}

/// The shared CPU/GPU budget of the operators of one worker, and who waits for it. GPUs are
/// handed out by ordinal (lowest free first), so concurrent stages never share a device.
struct Pool {
    free: Resources,
    total: Resources,
    free_gpus: Vec<u32>,
    waiting: Vec<Activator>,
}

impl Pool {
    /// A stage asking for more than the whole budget gets the whole budget (it could never
    /// start otherwise).
    fn clamp(&self, r: Resources) -> Resources {
        Resources { cpus: r.cpus.min(self.total.cpus), gpus: r.gpus.min(self.total.gpus) }
    }
    fn new(total: Resources) -> Pool {
        Pool { free: total, total, free_gpus: (0..total.gpus).collect(), waiting: Vec::new() }
    }
    /// The GPU ordinals taken when `r` fits.
    fn try_take(&mut self, r: Resources) -> Option<Vec<u32>> {
        if r.cpus <= self.free.cpus && r.gpus <= self.free.gpus {
            self.free.cpus -= r.cpus;
            self.free.gpus -= r.gpus;
            Some(self.free_gpus.drain(..r.gpus as usize).collect())
        } else {
            None
        }
    }
    fn give_back(&mut self, r: Resources, gpus: &[u32]) {
        self.free.cpus += r.cpus;
        self.free.gpus += r.gpus;
        self.free_gpus.extend_from_slice(gpus);
        self.free_gpus.sort_unstable();
        for a in self.waiting.drain(..) {
            a.activate();
        }
    }
}

/// A status as it travels between workers (broadcast, so every process knows every outcome).
fn status_code(s: Status) -> u8 {
    match s {
        Status::Ran => 0,
        Status::Cached => 1,
        Status::Partial => 2,
        Status::Failed => 3,
        Status::Skipped => 4,
    }
}

fn status_from(code: u8) -> Status {
    [Status::Ran, Status::Cached, Status::Partial, Status::Failed, Status::Skipped][code.min(4) as usize]
}

/// Runs `plan`: takes the workspace lock, runs every instance that is not in the store, and
/// records the run. Stage failures are reported in the result, not as an error.
///
/// With `opts.cluster`, this process is one of several (same plan, same workspace on a shared
/// file system): process 0 takes the lock, runs the stages that are neither row-wise nor
/// data-parallel, commits every result and records the run; row-wise and data-parallel
/// instances run on every process, which split their rows (or gradient shards) and
/// all-gather results over timely. Other processes report what process 0 reported.
pub fn run(plan: &Plan, registry: &Registry, store: &Store, opts: &RunOptions, progress: Arc<dyn Progress>) -> Result<RunReport, RunError> {
    let cluster = opts.cluster.clone().filter(|c| c.processes() > 1);
    let process = cluster.as_ref().map_or(0, |c| c.process);
    let _lock = if process == 0 { Some(store.lock()?) } else { None };
    let start = Instant::now();
    let plan = Arc::new(plan.clone());
    let registry = Arc::new(registry.clone());
    let store = Arc::new(store.clone());
    let opts = opts.clone();
    let threads = if cluster.is_some() { opts.workers.max(1) } else { 1 };
    let mailbox = cluster.as_ref().map(|c| Mailbox::new(c.process, c.processes()));
    let mailbox_here = mailbox.clone();
    let config = match &cluster {
        None => timely::Config::thread(),
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster { threads, process: c.process, addresses: c.addresses.clone(), report: false, zerocopy: false },
            worker: timely::WorkerConfig::default(),
        },
    };
    let park = cluster.as_ref().map(|_| Duration::from_millis(100));
    let (p2, r2, s2, o2, g2) = (plan.clone(), registry.clone(), store.clone(), opts.clone(), progress.clone());
    let (builders, others) = connect(config.communication, cluster.as_ref())?;
    let guards = timely::execute::execute_from(builders, others, config.worker, move |worker| {
        let (p2, r2, s2, o2, g2, mailbox) = (p2.clone(), r2.clone(), s2.clone(), o2.clone(), g2.clone(), mailbox.clone());
        let n = p2.instances.len();
        // Only the first worker of each process runs stage jobs; the others only take part
        // in the dataflow's progress (rows and shards use the process's threads).
        let leader = worker.index() % threads == 0;
        let reports: Rc<RefCell<Vec<Option<StageReport>>>> = Rc::new(RefCell::new(vec![None; n]));
        let statuses: Rc<RefCell<Vec<Option<u8>>>> = Rc::new(RefCell::new(vec![None; n]));
        let total = Resources { cpus: o2.cpus.max(1), gpus: o2.gpus };
        let pool = Rc::new(RefCell::new(Pool::new(total)));
        let closed = Rc::new(Cell::new(false));
        let closer: Rc<RefCell<Option<Activator>>> = Rc::default();
        let (mb, closed2, closer2, statuses2, reports2) = (mailbox.clone(), closed.clone(), closer.clone(), statuses.clone(), reports.clone());
        let (p3, r3, s3, o3, g3) = (p2.clone(), r2.clone(), s2.clone(), o2.clone(), g2.clone());
        let probe = worker.dataflow::<u64, _, _>(move |scope| {
            if let Some(mb) = mb.clone() {
                // The collective: job threads put messages in the mailbox's outbox, this
                // source sends them, the exchange takes each to its destination process's
                // first worker, and the sink puts it in that process's mailbox.
                let (mb_send, mb_recv) = (mb.clone(), mb);
                let sent = source::<_, CapacityContainerBuilder<Vec<Msg>>, _, _>(scope, "CollectiveSend", move |cap, info| {
                    if leader {
                        *mb_send.wake.lock().expect("wake") = Some(scope.worker().sync_activator_for(info.address.to_vec()));
                    }
                    *closer2.borrow_mut() = Some(scope.worker().activator_for(info.address.clone()));
                    let mut cap = Some(cap);
                    move |output| {
                        if let Some(c) = cap.as_ref() {
                            let msgs = mb_send.take_outbox();
                            if !msgs.is_empty() {
                                let mut session = output.session(c);
                                for m in msgs {
                                    session.give(m);
                                }
                            }
                        }
                        if closed2.get() {
                            cap = None;
                        }
                    }
                });
                sent.sink(Exchange::new(move |m: &Msg| m.0 * threads as u64), "CollectiveRecv", move |(input, _frontier)| {
                    input.for_each(|_, data| {
                        for m in data.drain(..) {
                            mb_recv.deliver(m);
                        }
                    });
                });
            }
            // Each instance's stream carries (instance index, status code) once it is finished,
            // broadcast to every worker.
            let mut streams: Vec<Stream<'_, u64, Vec<(usize, u8)>>> = Vec::with_capacity(n);
            for idx in 0..n {
                let input: Stream<'_, u64, Vec<(usize, u8)>> = if p2.instances[idx].deps.is_empty() {
                    Vec::<(usize, u8)>::new().to_stream(scope)
                } else {
                    scope.concatenate(p2.instances[idx].deps.iter().map(|d| streams[*d].clone()))
                };
                let ctx = JobCtx { plan: p2.clone(), registry: r2.clone(), store: s2.clone(), opts: o2.clone(), progress: g2.clone(), process };
                let distributed = ctx.distributed(idx);
                let clustered = mailbox.is_some();
                let collective: Arc<dyn Collective> = match &mailbox {
                    Some(m) if distributed => Arc::new(TaggedCollective { mailbox: m.clone(), tag: idx as u64, seq: AtomicU64::new(0) }),
                    _ => Arc::new(Solo),
                };
                // What this worker does for the instance: run it (possibly with the other
                // processes), or only wait for it to finish elsewhere.
                let runs_here = leader && (process == 0 || distributed);
                let (reports, pool) = (reports2.clone(), pool.clone());
                let out = input.unary_frontier::<CapacityContainerBuilder<Vec<(usize, u8)>>, _, _, _>(Pipe, &p2.instances[idx].name.clone(), move |cap, info| {
                    let activator = scope.worker().activator_for(info.address.clone());
                    let wake = scope.worker().sync_activator_for(info.address.to_vec());
                    let mut cap = Some(cap);
                    let mut upstream_failed = false;
                    let mut running: Option<(mpsc::Receiver<StageReport>, Resources, Vec<u32>)> = None;
                    move |(input, frontier), output| {
                        input.for_each(|_, data| upstream_failed |= data.iter().any(|(_, st)| !status_from(*st).ok()));
                        let Some(c) = cap.as_ref() else { return };
                        if !runs_here {
                            if frontier.frontier().is_empty() {
                                cap = None;
                            }
                            return;
                        }
                        let finished = match running.as_ref() {
                            Some((rx, res, gpus)) => match rx.try_recv() {
                                Ok(report) => {
                                    pool.borrow_mut().give_back(*res, gpus);
                                    Some(report)
                                }
                                Err(mpsc::TryRecvError::Empty) => None,
                                Err(mpsc::TryRecvError::Disconnected) => {
                                    pool.borrow_mut().give_back(*res, gpus);
                                    Some(ctx.report(idx, Status::Failed, None, 0.0, Some("the stage's thread died".into())))
                                }
                            },
                            None if !frontier.frontier().is_empty() => None,
                            None if upstream_failed => Some(ctx.report(idx, Status::Skipped, None, 0.0, Some("an upstream stage failed".into()))),
                            // In a cluster, the instances every process runs decide "cached" in
                            // their job, all processes following process 0's view.
                            None if !(clustered && distributed) && ctx.cached(idx).is_some() => ctx.cached(idx),
                            None => {
                                // Instances every process runs bypass the budget in a cluster:
                                // the processes could otherwise start them in different orders
                                // and wait for each other for ever.
                                let want = if clustered && distributed { Resources { cpus: 0, gpus: 0 } } else { pool.borrow().clamp(ctx.resources(idx)) };
                                let taken = pool.borrow_mut().try_take(want);
                                if let Some(gpus) = taken {
                                    let (tx, rx) = mpsc::channel();
                                    let (job, wake, coll, granted) = (ctx.clone(), wake.clone(), collective.clone(), gpus.clone());
                                    std::thread::spawn(move || {
                                        let _ = tx.send(job.execute(idx, coll, clustered && distributed, granted));
                                        let _ = wake.activate();
                                    });
                                    running = Some((rx, want, gpus));
                                } else {
                                    pool.borrow_mut().waiting.push(activator.clone());
                                }
                                None
                            }
                        };
                        if let Some(report) = finished {
                            let st = report.status;
                            ctx.progress.finished(&report);
                            reports.borrow_mut()[idx] = Some(report);
                            output.session(c).give((idx, status_code(st)));
                            cap = None;
                            running = None;
                        }
                    }
                });
                streams.push(out.broadcast());
            }
            let (probe, _) = scope
                .concatenate(streams)
                .inspect(move |(idx, st)| {
                    statuses2.borrow_mut()[*idx].get_or_insert(*st);
                })
                .probe();
            probe
        });
        while !probe.done() {
            worker.step_or_park(park);
        }
        // Let the collective's dataflow finish (every message was delivered: each job returned
        // only after its gathers completed).
        closed.set(true);
        if let Some(a) = closer.borrow().as_ref() {
            a.activate();
        }
        let until = Instant::now() + Duration::from_secs(30);
        while worker.step_or_park(Some(Duration::from_millis(10))) && Instant::now() < until {}
        if !leader {
            return None;
        }
        let ctx = JobCtx { plan: p3, registry: r3, store: s3, opts: o3, progress: g3, process };
        let own = reports.borrow().clone();
        let statuses = statuses.borrow().clone();
        let out: Vec<Option<StageReport>> = own
            .into_iter()
            .enumerate()
            .map(|(idx, r)| r.or_else(|| statuses[idx].map(|st| ctx.report(idx, status_from(st), None, 0.0, None))))
            .collect();
        Some(out)
    })
    .map_err(|e| RunError::Cluster(format!("starting timely: {e}")))?;
    let mut reports = None;
    for r in guards.join() {
        match r {
            Ok(Some(v)) => reports = reports.or(Some(v)),
            Ok(None) => {}
            Err(e) => {
                let message = format!("a timely worker of process {process} stopped: {e} (a peer process failed or was killed)");
                if let Some(m) = &mailbox_here {
                    m.fail(message.clone());
                }
                return Err(RunError::Cluster(message));
            }
        }
    }
    let stages: Vec<StageReport> = reports.unwrap_or_default().into_iter().flatten().collect();
    let report = RunReport { pipeline: plan.pipeline.name.clone(), seconds: start.elapsed().as_secs_f64(), stages };
    if process == 0 {
        record_run(&plan, &registry, &store, &report)?;
    }
    Ok(report)
}

/// The content key of instance `idx` (see [`crate::fingerprint::FpRecord::content_key`]):
/// its fingerprint inputs with every wired input identified by the content hash of the output
/// it reads, taken from the upstream manifest. None if an upstream artifact is not complete in
/// the store (then there is nothing to compare by content).
pub fn content_key(plan: &Plan, store: &Store, idx: usize) -> Option<String> {
    input_contents(plan, store, idx).map(|c| plan.instances[idx].record.content_key(&c))
}

/// Port -> content hash of the upstream output wired to it, for every wired port of instance
/// `idx`; None if an upstream artifact is not complete in the store.
fn input_contents(plan: &Plan, store: &Store, idx: usize) -> Option<BTreeMap<String, String>> {
    let mut contents = BTreeMap::new();
    for (port, src) in &plan.instances[idx].inputs {
        let m = store.manifest(&plan.instances[src.instance].fingerprint)?;
        contents.insert(port.clone(), m.content_of(&src.output)?);
    }
    Some(contents)
}

/// Merges this run's successful instances into the pipeline's run record.
fn record_run(plan: &Plan, registry: &Registry, store: &Store, report: &RunReport) -> Result<(), StoreError> {
    let mut record = store.last_run(&plan.pipeline.name).unwrap_or_default();
    record.pipeline = plan.pipeline.name.clone();
    let status: std::collections::HashMap<&str, Status> = report.stages.iter().map(|s| (s.name.as_str(), s.status)).collect();
    let ok: std::collections::HashSet<&str> = report.stages.iter().filter(|s| s.status.ok()).map(|s| s.name.as_str()).collect();
    // Instances that no longer exist (renamed stages, fewer rounds) are dropped.
    let names: std::collections::HashSet<&str> = plan.instances.iter().map(|i| i.name.as_str()).collect();
    record.instances.retain(|k, _| names.contains(k.as_str()));
    for inst in plan.instances.iter().filter(|i| ok.contains(i.name.as_str())) {
        let decl = &plan.pipeline.stages[inst.stage];
        let outputs = registry
            .get(&decl.kind)
            .map(|k| k.outputs().iter().map(|p| (p.name.to_string(), p.ty.name().to_string())).collect())
            .unwrap_or_default();
        record.instances.insert(
            inst.name.clone(),
            InstanceRecord {
                stage: decl.name.clone(),
                round: inst.round,
                fingerprint: inst.fingerprint.clone(),
                inputs: inst.record.clone(),
                outputs,
                status: status.get(inst.name.as_str()).map(|s| s.name().to_string()),
            },
        );
    }
    // Every instance in the store gets its content index entry (instances cached from a store
    // written before early cut-off existed have none yet; ran ones already have theirs).
    for (idx, inst) in plan.instances.iter().enumerate().filter(|(_, i)| ok.contains(i.name.as_str())) {
        if let Some(key) = content_key(plan, store, idx) {
            let current = store.content_entry(&key).is_some_and(|e| store.manifest(&e.fingerprint).is_some());
            if !current && store.manifest(&inst.fingerprint).is_some() {
                store.put_content_entry(&key, &inst.fingerprint, &inst.name)?;
            }
        }
    }
    // An instance this run did not produce keeps its earlier record, marked failed or skipped.
    for (name, r) in record.instances.iter_mut().filter(|(n, _)| !ok.contains(n.as_str())) {
        if let Some(s) = status.get(name.as_str()) {
            r.status = Some(s.name().to_string());
        }
    }
    store.write_run(&record)
}

/// What a job thread needs; cheap to clone.
#[derive(Clone)]
struct JobCtx {
    plan: Arc<Plan>,
    registry: Arc<Registry>,
    store: Arc<Store>,
    opts: RunOptions,
    progress: Arc<dyn Progress>,
    /// This process's index in a cluster run (0 otherwise).
    process: usize,
}

impl JobCtx {
    /// Whether the instance runs on every process of a cluster: row-wise or data-parallel kinds.
    fn distributed(&self, idx: usize) -> bool {
        self.registry.get(&self.kind(idx)).is_some_and(|k| k.row_port().is_some() || k.data_parallel())
    }

    /// The cached report of the instance, if its fingerprint has a complete artifact.
    fn cached(&self, idx: usize) -> Option<StageReport> {
        let m = self.store.manifest_with(&self.plan.instances[idx].fingerprint, &self.output_names(idx))?;
        // A cached row-wise instance reused all its rows.
        let rows = m.rows.map(|total| RowStats { total, computed: 0, reused: total });
        Some(self.report(idx, Status::Cached, rows, 0.0, None))
    }

    /// The outputs the instance's kind declares now.
    fn output_names(&self, idx: usize) -> Vec<&'static str> {
        self.registry.get(&self.kind(idx)).map(|k| k.outputs().iter().map(|p| p.name).collect()).unwrap_or_default()
    }

    fn kind(&self, idx: usize) -> String {
        self.plan.pipeline.stages[self.plan.instances[idx].stage].kind.clone()
    }

    fn resources(&self, idx: usize) -> Resources {
        self.plan.pipeline.stages[self.plan.instances[idx].stage].resources
    }

    fn report(&self, idx: usize, status: Status, rows: Option<RowStats>, seconds: f64, error: Option<String>) -> StageReport {
        let inst = &self.plan.instances[idx];
        let decl = &self.plan.pipeline.stages[inst.stage];
        StageReport {
            name: inst.name.clone(),
            stage: decl.name.clone(),
            kind: decl.kind.clone(),
            round: inst.round,
            fingerprint: inst.fingerprint.clone(),
            status,
            rows,
            seconds,
            error,
            cutoff: None,
        }
    }

    /// Early cut-off: the instance is not in the store under its fingerprint, but if its
    /// content key (its inputs by content) names a complete artifact, that artifact becomes
    /// this instance's (see [`Store::reuse`]) and the instance is reported `cached`. None when
    /// there is no such artifact or it cannot be reused; the instance then runs.
    fn cut_off(&self, idx: usize, start: Instant) -> Option<StageReport> {
        let inst = &self.plan.instances[idx];
        let key = content_key(&self.plan, &self.store, idx)?;
        let entry = self.store.content_entry(&key)?;
        if entry.fingerprint == inst.fingerprint {
            return None;
        }
        let manifest = self.store.reuse(&entry.fingerprint, &inst.fingerprint, &inst.name, &self.output_names(idx)).ok()??;
        self.store.remove_scratch(&inst.fingerprint);
        let rows = manifest.rows.map(|total| RowStats { total, computed: 0, reused: total });
        let mut report = self.report(idx, Status::Cached, rows, start.elapsed().as_secs_f64(), None);
        let short = entry.fingerprint.get(..12).unwrap_or(&entry.fingerprint);
        report.cutoff = Some(format!("inputs identical by content to `{}` ({short})", entry.instance));
        Some(report)
    }

    /// Runs one instance to completion on the calling thread and commits its outputs. With
    /// `decide_cache` (an instance every process of a cluster runs), the processes first agree
    /// on whether it is cached: process 0's view wins.
    fn execute(&self, idx: usize, collective: Arc<dyn Collective>, decide_cache: bool, gpus: Vec<u32>) -> StageReport {
        let start = Instant::now();
        if decide_cache {
            // Process 0 alone writes the store, so it alone may reuse an artifact by content.
            let mine = self.cached(idx).or_else(|| if self.process == 0 { self.cut_off(idx, start) } else { None });
            match collective.all_gather(vec![u8::from(mine.is_some())]) {
                Ok(all) if all.first().is_some_and(|b| b.first() == Some(&1)) => {
                    return mine.unwrap_or_else(|| self.report(idx, Status::Cached, None, 0.0, None));
                }
                Ok(_) => {}
                Err(e) => {
                    let name = &self.plan.instances[idx].name;
                    return self.report(idx, Status::Failed, None, start.elapsed().as_secs_f64(), Some(format!("stage `{name}`: {e}")));
                }
            }
        } else if self.process == 0 {
            if let Some(report) = self.cut_off(idx, start) {
                return report;
            }
        }
        match self.try_execute(idx, collective, gpus) {
            Ok(rows) => {
                let status = match rows {
                    Some(r) if r.reused > 0 => Status::Partial,
                    _ => Status::Ran,
                };
                self.report(idx, status, rows, start.elapsed().as_secs_f64(), None)
            }
            Err(e) => {
                let name = &self.plan.instances[idx].name;
                self.report(idx, Status::Failed, None, start.elapsed().as_secs_f64(), Some(format!("stage `{name}`: {e}")))
            }
        }
    }

    fn try_execute(&self, idx: usize, collective: Arc<dyn Collective>, gpus: Vec<u32>) -> Result<Option<RowStats>, StageError> {
        let inst = &self.plan.instances[idx];
        let decl = &self.plan.pipeline.stages[inst.stage];
        let kind = self.registry.get(&decl.kind).ok_or_else(|| StageError::Message(format!("unknown kind {}", decl.kind)))?;
        let outputs = kind.outputs();
        let names: Vec<&str> = outputs.iter().map(|p| p.name).collect();
        // Process 0 stages in the store and commits; the others write their (identical)
        // outputs to a private directory that is dropped afterwards.
        let (staging, private) = if self.process == 0 {
            (Some(self.store.stage(&inst.fingerprint, &names).map_err(|e| StageError::wrap("staging outputs", e))?), None)
        } else {
            let dir = std::env::temp_dir().join(format!("alignflow-p{}-{}-{}", self.process, std::process::id(), inst.fingerprint));
            let _ = std::fs::remove_dir_all(&dir);
            for n in &names {
                std::fs::create_dir_all(dir.join(n)).map_err(|source| StageError::Io { path: dir.join(n), source })?;
            }
            (None, Some(PrivateDir(dir)))
        };
        let staging_dir = staging.as_ref().map(|s| s.dir.clone()).or_else(|| private.as_ref().map(|p| p.0.clone())).expect("one of them");
        let inputs: BTreeMap<String, PathBuf> = inst
            .inputs
            .iter()
            .map(|(port, src)| (port.clone(), self.store.output_dir(&self.plan.instances[src.instance].fingerprint, &src.output)))
            .collect();
        let out_dirs: BTreeMap<String, PathBuf> = names.iter().map(|n| (n.to_string(), staging_dir.join(n))).collect();
        // The memo key goes by the content of the other inputs where their manifests are there
        // (so the memo survives an early cut-off upstream); the fingerprint-based key is read
        // too (memos written before content keys existed, or without manifests to read).
        let contents = input_contents(&self.plan, &self.store, idx);
        let (memo_key, legacy_key) = match kind.row_port() {
            None => (None, None),
            Some(p) => {
                let mut ports = vec![p];
                ports.extend_from_slice(kind.extra_row_ports());
                let legacy = inst.record.memo_key_without(&ports);
                match &contents {
                    Some(c) => (Some(inst.record.content_memo_key(c, &ports)), Some(legacy)),
                    None => (Some(legacy), None),
                }
            }
        };
        let (progress, name) = (self.progress.clone(), inst.name.clone());
        let row_progress: crate::rows::RowProgress = Arc::new(move |done, total| progress.rows(&name, done, total));
        let engine = MemoRowEngine::new(&self.store, memo_key, inst.seed, inst.round, self.opts.workers, Some(row_progress))
            .with_collective(collective.clone())
            .also_reading(legacy_key.into_iter().collect());
        // The content key is fixed before the stage runs (its inputs are complete and immutable);
        // it is recorded only after the outputs are committed.
        let key = contents.as_ref().filter(|_| self.process == 0).map(|c| inst.record.content_key(c));
        let scratch = self.store.scratch_dir(&inst.fingerprint).map_err(|e| StageError::wrap("creating the scratch directory", e))?;
        let mut ctx = RunCtx::new(&inst.name, inst.round, inst.seed, &decl.params, &self.plan.base_dir, inputs, out_dirs, &engine)
            .with_scratch(scratch)
            .with_collective(collective)
            .with_gpus(gpus);
        kind.run(&mut ctx)?;
        let rows = ctx.row_stats();
        for p in &outputs {
            if let Some(file) = p.ty.main_file() {
                if !staging_dir.join(p.name).join(file).is_file() {
                    return Err(StageError::Message(format!("the stage did not write output `{}` ({file})", p.name)));
                }
            }
        }
        let Some(staging) = staging else { return Ok(rows) };
        let types = outputs.iter().map(|p| (p.name.to_string(), p.ty.name().to_string())).collect();
        self.store.commit(staging, &inst.name, &decl.kind, types, rows.map(|r| r.total)).map_err(|e| StageError::wrap("committing outputs", e))?;
        self.store.remove_scratch(&inst.fingerprint);
        if let Some(key) = key {
            self.store.put_content_entry(&key, &inst.fingerprint, &inst.name).map_err(|e| StageError::wrap("recording the content index", e))?;
        }
        Ok(rows)
    }
}

/// A directory removed when dropped (the outputs of a process other than 0).
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
