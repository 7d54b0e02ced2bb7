//! Cluster runs: N processes (one per machine), W timely workers each, connected by timely's
//! TCP communication. This module holds the configuration (hostfile, Slurm environment) and the
//! one collective the stages use, an all-gather of bytes between processes, carried by a small
//! timely dataflow next to the stage operators (see `runtime`).
//!
//! The collective is SPMD: every process calls `all_gather` the same number of times, in the
//! same order, for the same stage instance (calls of different instances are kept apart by a
//! tag, so instances running at the same time do not mix). Each call returns every process's
//! bytes in process order, so anything a caller derives from them (a sum in a fixed order) is
//! the same on every process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::stage::StageError;

/// Where this process sits in a cluster run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This process's index, 0-based. Process 0 holds the workspace lock and commits results.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
    /// How long this process waits for the connections to every other process at start
    /// before it gives up with [`crate::RunError::ConnectTimeout`].
    pub connect_timeout: Duration,
}

/// The default of [`ClusterConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

impl ClusterConfig {
    /// A cluster with the default connect timeout.
    pub fn new(process: usize, addresses: Vec<String>) -> ClusterConfig {
        ClusterConfig { process, addresses, connect_timeout: DEFAULT_CONNECT_TIMEOUT }
    }

    pub fn processes(&self) -> usize {
        self.addresses.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Hostfile { path: PathBuf, line: usize, message: String },
    #[error("{path}: {message}")]
    HostCount { path: PathBuf, message: String },
    #[error("--process-id {process} is out of range for --processes {processes} (0..{processes})")]
    BadIndex { process: usize, processes: usize },
    #[error("Slurm environment: {0}")]
    Slurm(String),
    #[error("node list {list:?}: {message}")]
    NodeList { list: String, message: String },
}

/// Reads a hostfile: one `host:port` per line, in process order; blank lines and `#` comments
/// are skipped. It must name exactly `processes` hosts.
pub fn read_hostfile(path: &Path, processes: usize) -> Result<Vec<String>, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io { path: path.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| ClusterError::Hostfile { path: path.to_path_buf(), line: i + 1, message };
        let Some((host, port)) = line.rsplit_once(':') else {
            return Err(bad(format!("expected host:port, found {line:?}")));
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad(format!("bad host name {host:?} in {line:?}")));
        }
        if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err(bad(format!("bad port {port:?} in {line:?} (expected 1-65535)")));
        }
        out.push(line.to_string());
    }
    if out.len() != processes {
        return Err(ClusterError::HostCount {
            path: path.to_path_buf(),
            message: format!("names {} host{} but --processes is {processes} (one host:port line per process)", out.len(), if out.len() == 1 { "" } else { "s" }),
        });
    }
    Ok(out)
}

/// Expands a Slurm node list such as `node[01-03,07],gpu5,rack[1-2]` into host names in
/// order (ranges keep their zero padding). Nested or multiple bracket groups per name are not
/// supported (use `scontrol show hostnames` to write a hostfile then).
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, ClusterError> {
    let err = |message: &str| ClusterError::NodeList { list: list.to_string(), message: message.to_string() };
    // Split on commas outside brackets.
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(err("unbalanced or nested brackets"));
        }
    }
    if depth != 0 {
        return Err(err("unbalanced brackets"));
    }
    items.push(&list[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let Some(open) = item.find('[') else {
            out.push(item.to_string());
            continue;
        };
        let close = item.find(']').ok_or_else(|| err("missing ]"))?;
        let (prefix, ranges, suffix) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
        if suffix.contains('[') {
            return Err(err("more than one bracket group in a name"));
        }
        for r in ranges.split(',') {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (lo, hi) = (a.trim().parse::<u64>().map_err(|_| err("bad range"))?, b.trim().parse::<u64>().map_err(|_| err("bad range"))?);
            if hi < lo {
                return Err(err("range runs backwards"));
            }
            let width = a.trim().len();
            for n in lo..=hi {
                out.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
    }
    if out.is_empty() {
        return Err(err("no hosts"));
    }
    Ok(out)
}

/// The cluster of a Slurm job step: rank from `SLURM_PROCID`, size from `SLURM_NTASKS`, hosts
/// from `SLURM_STEP_NODELIST` (else `SLURM_JOB_NODELIST`). With one task per node every process
/// listens on `port`; with k tasks per node (block distribution) the tasks of a node use
/// `port`, `port+1`, ... `port+k-1`.
pub fn from_slurm(env: &dyn Fn(&str) -> Option<String>, port: u16) -> Result<ClusterConfig, ClusterError> {
    let get = |k: &str| env(k).ok_or_else(|| ClusterError::Slurm(format!("{k} is not set (run under srun, or give --processes/--process-id/--hostfile)")));
    let num = |k: &str| -> Result<usize, ClusterError> { get(k)?.trim().parse().map_err(|_| ClusterError::Slurm(format!("{k} is not a number"))) };
    let process = num("SLURM_PROCID")?;
    let tasks = num("SLURM_NTASKS")?;
    let list = env("SLURM_STEP_NODELIST").or_else(|| env("SLURM_JOB_NODELIST")).ok_or_else(|| ClusterError::Slurm("neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set".into()))?;
    let nodes = expand_nodelist(&list)?;
    if tasks == 0 || tasks % nodes.len() != 0 {
        return Err(ClusterError::Slurm(format!("{tasks} tasks on {} nodes: use the same number of tasks on every node (srun --ntasks-per-node=1)", nodes.len())));
    }
    let per = tasks / nodes.len();
    let addresses = (0..tasks).map(|t| format!("{}:{}", nodes[t / per], port as usize + t % per)).collect();
    if process >= tasks {
        return Err(ClusterError::BadIndex { process, processes: tasks });
    }
    Ok(ClusterConfig::new(process, addresses))
}

/// An all-gather between the processes of a run (see the module docs).
pub trait Collective: Send + Sync {
    /// This process's index.
    fn process(&self) -> usize;
    /// How many processes take part.
    fn processes(&self) -> usize;
    /// Every process passes its bytes; every process gets all of them, in process order.
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, StageError>;
}

/// The collective of a one-process run.
pub struct Solo;

impl Collective for Solo {
    fn process(&self) -> usize {
        0
    }
    fn processes(&self) -> usize {
        1
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, StageError> {
        Ok(vec![bytes])
    }
}

/// One message of the collective dataflow: (destination process, tag, sequence number,
/// source process, payload).
pub(crate) type Msg = (u64, u64, u64, u64, Vec<u8>);

#[derive(Default)]
struct MailState {
    /// (tag, seq) -> one slot per process.
    slots: HashMap<(u64, u64), Vec<Option<Vec<u8>>>>,
    /// Messages for other processes, taken by the dataflow's source operator.
    outbox: Vec<Msg>,
    failed: Option<String>,
}

/// The process-wide end of the collective: job threads put messages in, the leader worker's
/// dataflow sends them and delivers what arrives.
pub(crate) struct Mailbox {
    pub process: usize,
    pub processes: usize,
    state: Mutex<MailState>,
    arrived: Condvar,
    /// Wakes the source operator (set by the leader worker when it builds the dataflow).
    pub wake: Mutex<Option<timely::scheduling::SyncActivator>>,
}

impl Mailbox {
    pub fn new(process: usize, processes: usize) -> Arc<Mailbox> {
        Arc::new(Mailbox { process, processes, state: Mutex::default(), arrived: Condvar::new(), wake: Mutex::new(None) })
    }

    /// Messages waiting to be sent.
    pub fn take_outbox(&self) -> Vec<Msg> {
        std::mem::take(&mut self.state.lock().expect("mailbox").outbox)
    }

    /// A message arrived from another process.
    pub fn deliver(&self, m: Msg) {
        let (_, tag, seq, src, bytes) = m;
        let mut st = self.state.lock().expect("mailbox");
        let slot = st.slots.entry((tag, seq)).or_insert_with(|| vec![None; self.processes]);
        slot[src as usize] = Some(bytes);
        self.arrived.notify_all();
    }

    /// Fails every waiting and later call (the run is going down).
    pub fn fail(&self, message: String) {
        self.state.lock().expect("mailbox").failed.get_or_insert(message);
        self.arrived.notify_all();
    }

    fn gather(&self, tag: u64, seq: u64, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, StageError> {
        {
            let mut st = self.state.lock().expect("mailbox");
            for dest in (0..self.processes).filter(|d| *d != self.process) {
                st.outbox.push((dest as u64, tag, seq, self.process as u64, bytes.clone()));
            }
            let n = self.processes;
            st.slots.entry((tag, seq)).or_insert_with(|| vec![None; n])[self.process] = Some(bytes);
        }
        if let Some(w) = self.wake.lock().expect("wake").as_ref() {
            let _ = w.activate();
        }
        let mut st = self.state.lock().expect("mailbox");
        loop {
            if let Some(f) = &st.failed {
                return Err(StageError::Message(f.clone()));
            }
            if st.slots.get(&(tag, seq)).is_some_and(|s| s.iter().all(Option::is_some)) {
                let slot = st.slots.remove(&(tag, seq)).expect("just seen");
                return Ok(slot.into_iter().map(|b| b.expect("complete")).collect());
            }
            st = self.arrived.wait_timeout(st, Duration::from_millis(200)).expect("mailbox").0;
        }
    }
}

/// The collective handed to one stage instance: the process's mailbox and a tag of its own.
pub(crate) struct TaggedCollective {
    pub mailbox: Arc<Mailbox>,
    pub tag: u64,
    pub seq: AtomicU64,
}

impl Collective for TaggedCollective {
    fn process(&self) -> usize {
        self.mailbox.process
    }
    fn processes(&self) -> usize {
        self.mailbox.processes
    }
    fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, StageError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.mailbox.gather(self.tag, seq, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodelists_expand_in_order() {
        assert_eq!(expand_nodelist("node[01-03],other").unwrap(), ["node01", "node02", "node03", "other"]);
        assert_eq!(expand_nodelist("a[1,3-4]x,b").unwrap(), ["a1x", "a3x", "a4x", "b"]);
        assert_eq!(expand_nodelist("solo").unwrap(), ["solo"]);
        assert!(expand_nodelist("n[1-").is_err());
        assert!(expand_nodelist("n[3-1]").is_err());
    }

    #[test]
    fn slurm_environment_gives_rank_and_hosts() {
        let env = |k: &str| match k {
            "SLURM_PROCID" => Some("2".to_string()),
            "SLURM_NTASKS" => Some("3".to_string()),
            "SLURM_JOB_NODELIST" => Some("gpu[7-8],cpu1".to_string()),
            _ => None,
        };
        let c = from_slurm(&env, 2101).unwrap();
        assert_eq!(c, ClusterConfig::new(2, vec!["gpu7:2101".into(), "gpu8:2101".into(), "cpu1:2101".into()]));
        let none = |_: &str| None;
        assert!(from_slurm(&none, 2101).unwrap_err().to_string().contains("SLURM_PROCID"));
    }

    #[test]
    fn hostfile_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        std::fs::write(&p, "# cluster\nlocalhost:2101\n\nlocalhost\n").unwrap();
        let e = read_hostfile(&p, 2).unwrap_err().to_string();
        assert!(e.ends_with(":4: expected host:port, found \"localhost\""), "{e}");
        std::fs::write(&p, "a:1\nb:2 # second\n").unwrap();
        assert_eq!(read_hostfile(&p, 2).unwrap(), ["a:1", "b:2"]);
        assert!(read_hostfile(&p, 3).unwrap_err().to_string().contains("names 2 hosts but --processes is 3"));
        std::fs::write(&p, "a:1\nb:99999\n").unwrap();
        assert!(read_hostfile(&p, 2).unwrap_err().to_string().contains(":2: bad port"));
    }
}
