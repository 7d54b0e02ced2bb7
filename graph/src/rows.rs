//! Row-wise execution: memo lookup, the worker split, and the memo update.
//!
//! A row-wise stage gives the runtime its rows as (key, content hash) pairs and a pure
//! per-row function. Here a timely computation with `--workers` threads decides what to
//! compute with differential dataflow (rows antijoined with the memo table on (key, hash),
//! which also drops duplicate rows' work), exchanges the misses by a stable hash of the row key
//! so each worker owns a shard, and computes each shard in a frontier-aware operator once its
//! input is complete — never inside a differential `map`, which can see transient updates.
//! New results are appended to the memo table as one segment, so the next run reuses them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;

use crate::cluster::{Collective, Solo};
use crate::fingerprint::{derive_u64, row_seed};
use crate::stage::{RowEngine, RowFn, RowId, RowStats, RowTask, StageError};
use crate::store::Store;

/// Rows computed per call of [`RowFn::compute`].
const BATCH: usize = 256;

/// Called with (rows computed so far, rows to compute).
pub type RowProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// The runtime's [`RowEngine`] for one stage instance.
pub struct MemoRowEngine<'a> {
    pub store: &'a Store,
    /// The memo key (fingerprint without the row input); None for stages that are not
    /// row-wise, which then compute every row without memoising.
    pub memo_key: Option<String>,
    /// Earlier memo keys of the same rows (the fingerprint-based key, from before memo keys
    /// went by content): their entries are read too, new entries go to `memo_key` only.
    pub also_read: Vec<String>,
    pub seed: u64,
    pub round: u32,
    pub workers: usize,
    pub progress: Option<RowProgress>,
    /// Distinguishes several `map_rows` calls of one stage run in the memo.
    calls: AtomicU64,
    /// The processes of a cluster run (each computes the rows of its workers; results are
    /// all-gathered); [`Solo`] otherwise.
    pub collective: Arc<dyn Collective>,
}

impl<'a> MemoRowEngine<'a> {
    pub fn new(store: &'a Store, memo_key: Option<String>, seed: u64, round: u32, workers: usize, progress: Option<RowProgress>) -> Self {
        MemoRowEngine { store, memo_key, also_read: Vec::new(), seed, round, workers: workers.max(1), progress, calls: AtomicU64::new(0), collective: Arc::new(Solo) }
    }

    /// Also reads the memo entries stored under `keys` (equivalent keys of the same rows).
    pub fn also_reading(mut self, keys: Vec<String>) -> Self {
        self.also_read = keys;
        self
    }

    /// Splits rows over the processes of a cluster run too.
    pub fn with_collective(mut self, c: Arc<dyn Collective>) -> Self {
        self.collective = c;
        self
    }
}

impl RowEngine for MemoRowEngine<'_> {
    fn map_rows(&self, rows: &[RowId], f: Arc<dyn RowFn>) -> Result<(Vec<Vec<u8>>, RowStats), StageError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let key = self.memo_key.as_ref().map(|k| if call == 0 { k.clone() } else { format!("{k}-{call}") });
        let suffixed = |k: &String| if call == 0 { k.clone() } else { format!("{k}-{call}") };
        let mut memo = HashMap::new();
        if key.is_some() {
            for k in self.also_read.iter().map(suffixed).chain(key.clone()) {
                memo.extend(self.store.load_memo(&k).map_err(|e| StageError::wrap("reading the row memo", e))?);
            }
        }
        let hits: Vec<RowId> = rows.iter().filter(|r| memo.contains_key(*r)).cloned().collect();
        let share = Share { process: self.collective.process(), processes: self.collective.processes() };
        let computed = compute_misses_shared(rows, &hits, f, self.seed, self.round, self.workers, share, self.progress.clone());
        let computed = if share.processes > 1 {
            // Every process gets every process's results (or the first error, in process order).
            let parts = self.collective.all_gather(encode_results(&computed))?;
            // A local error is returned as is; the other processes see it through the gather.
            let mut all = computed?;
            for (p, bytes) in parts.iter().enumerate().filter(|(p, _)| *p != share.process) {
                match decode_results(bytes) {
                    Some(Ok(mut v)) => all.append(&mut v),
                    Some(Err(m)) => return Err(StageError::Message(format!("process {p}: {m}"))),
                    None => return Err(StageError::Message(format!("process {p} sent malformed row results"))),
                }
            }
            all.sort_by_key(|(i, _)| *i);
            all
        } else {
            computed?
        };

        let mut out: Vec<Option<Vec<u8>>> = rows.iter().map(|r| memo.get(r).cloned()).collect();
        let mut fresh = Vec::with_capacity(computed.len());
        for (index, bytes) in computed {
            fresh.push((rows[index].clone(), bytes.clone()));
            out[index] = Some(bytes);
        }
        // Duplicate rows (same key and hash) are computed once; copy the result to the others.
        let mut by_id: HashMap<&RowId, Vec<u8>> = HashMap::new();
        for (r, o) in rows.iter().zip(&out) {
            if let Some(b) = o {
                by_id.entry(r).or_insert_with(|| b.clone());
            }
        }
        let out: Vec<Vec<u8>> = rows
            .iter()
            .zip(out.iter())
            .map(|(r, o)| o.clone().or_else(|| by_id.get(r).cloned()).ok_or_else(|| StageError::Row { key: r.key.clone(), message: "no result computed".into() }))
            .collect::<Result<_, _>>()?;
        // In a cluster run only process 0 writes (every process holds the same results).
        if let Some(k) = key.as_ref().filter(|_| self.collective.process() == 0) {
            self.store.add_memo(k, &fresh).map_err(|e| StageError::wrap("writing the row memo", e))?;
        }
        let computed = fresh.len() as u64;
        let total = rows.len() as u64;
        Ok((out, RowStats { total, computed, reused: total - computed }))
    }
}

/// Routes a row to a worker by a stable hash of its key.
fn route(key: &str) -> u64 {
    derive_u64(&[b"row-route", key.as_bytes()])
}

/// Which process this is, of how many. With W workers per process the global worker of a row
/// is `route(key) % (processes·W)`; a process computes the rows of its own W workers.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub process: usize,
    pub processes: usize,
}

/// The results of one process (or its error) as bytes for the all-gather.
fn encode_results(r: &Result<Vec<(usize, Vec<u8>)>, StageError>) -> Vec<u8> {
    let mut out = Vec::new();
    match r {
        Ok(v) => {
            out.push(0u8);
            out.extend((v.len() as u64).to_le_bytes());
            for (i, b) in v {
                out.extend((*i as u64).to_le_bytes());
                out.extend((b.len() as u64).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
        Err(e) => {
            out.push(1u8);
            out.extend(e.to_string().into_bytes());
        }
    }
    out
}

fn decode_results(b: &[u8]) -> Option<Result<Vec<(usize, Vec<u8>)>, String>> {
    let (&tag, mut rest) = b.split_first()?;
    if tag == 1 {
        return Some(Err(String::from_utf8_lossy(rest).into_owned()));
    }
    let u64_at = |rest: &mut &[u8]| -> Option<u64> {
        let (h, t) = rest.split_at_checked(8)?;
        *rest = t;
        Some(u64::from_le_bytes(h.try_into().ok()?))
    };
    let n = u64_at(&mut rest)?;
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let i = u64_at(&mut rest)? as usize;
        let len = u64_at(&mut rest)? as usize;
        let (body, t) = rest.split_at_checked(len)?;
        rest = t;
        v.push((i, body.to_vec()));
    }
    rest.is_empty().then_some(Ok(v))
}

type Key = (String, [u8; 32]);

/// Computes every row of `rows` whose (key, hash) is not in `memo`, split across `workers`
/// timely workers. Returns (row index, result) for each computed row (one per distinct row).
pub fn compute_misses(
    rows: &[RowId],
    memo: &[RowId],
    f: Arc<dyn RowFn>,
    seed: u64,
    round: u32,
    workers: usize,
    progress: Option<RowProgress>,
) -> Result<Vec<(usize, Vec<u8>)>, StageError> {
    compute_misses_shared(rows, memo, f, seed, round, workers, Share { process: 0, processes: 1 }, progress)
}

/// [`compute_misses`] for one process of a cluster run: only the rows whose global worker
/// (`route(key) % (processes·workers)`) belongs to this process.
#[allow(clippy::too_many_arguments)]
pub fn compute_misses_shared(
    rows: &[RowId],
    memo: &[RowId],
    f: Arc<dyn RowFn>,
    seed: u64,
    round: u32,
    workers: usize,
    share: Share,
    progress: Option<RowProgress>,
) -> Result<Vec<(usize, Vec<u8>)>, StageError> {
    let workers = workers.max(1);
    let global = (share.processes.max(1) * workers) as u64;
    let global_worker = move |key: &str| route(key) % global;
    let mine = |key: &str| global_worker(key) / workers as u64 == share.process as u64;
    let rows: Arc<Vec<(Key, usize)>> =
        Arc::new(rows.iter().enumerate().filter(|(_, r)| mine(&r.key)).map(|(i, r)| ((r.key.clone(), r.hash), i)).collect());
    let memo: Arc<Vec<Key>> = Arc::new(memo.iter().map(|r| (r.key.clone(), r.hash)).collect());
    let results: Arc<Mutex<Vec<(usize, Vec<u8>)>>> = Arc::default();
    let error: Arc<Mutex<Option<StageError>>> = Arc::default();
    let done = Arc::new(AtomicU64::new(0));
    let to_do = Arc::new(AtomicU64::new(0));
    let (res2, err2) = (results.clone(), error.clone());

    let config = timely::Config::process(workers.max(1));
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let (results, error, f, done, to_do, progress) = (res2.clone(), err2.clone(), f.clone(), done.clone(), to_do.clone(), progress.clone());
        let (mut rows_in, mut memo_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (rows_in, rows_c) = scope.new_collection::<(Key, usize), isize>();
            let (memo_in, memo_c) = scope.new_collection::<Key, isize>();
            // Relational glue: rows that have no memo entry. `distinct` makes the memo a set.
            let misses = rows_c.antijoin(memo_c.distinct());
            let pact = Exchange::new(move |u: &((Key, usize), u64, isize)| global_worker(&(u.0).0.0) % workers as u64);
            let stream = misses.inner.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(pact, "ComputeRows", move |cap, _info| {
                let mut cap = Some(cap);
                let mut pending: Vec<((Key, usize), isize)> = Vec::new();
                move |(input, frontier), _output| {
                    input.for_each(|_, data| pending.extend(data.drain(..).map(|(d, _t, r)| (d, r))));
                    if cap.is_none() || !frontier.frontier().is_empty() {
                        return;
                    }
                    // Input complete: settle the updates, then compute this worker's shard.
                    let mut counts: HashMap<(Key, usize), isize> = HashMap::new();
                    for (d, r) in pending.drain(..) {
                        *counts.entry(d).or_default() += r;
                    }
                    let mut mine: Vec<(usize, Key)> = counts.into_iter().filter(|(_, r)| *r > 0).map(|((k, i), _)| (i, k)).collect();
                    mine.sort();
                    // One computation per distinct row: keep the first index of each (key, hash).
                    let mut seen = std::collections::HashSet::new();
                    mine.retain(|(_, k)| seen.insert(k.clone()));
                    to_do.fetch_add(mine.len() as u64, Ordering::Relaxed);
                    for chunk in mine.chunks(BATCH) {
                        if error.lock().expect("error lock").is_some() {
                            break;
                        }
                        let tasks: Vec<RowTask> =
                            chunk.iter().map(|(i, (k, _))| RowTask { index: *i, key: k.clone(), seed: row_seed(seed, k, round) }).collect();
                        match f.compute(&tasks) {
                            Ok(out) if out.len() == tasks.len() => {
                                let mut res = results.lock().expect("results lock");
                                res.extend(tasks.iter().map(|t| t.index).zip(out));
                            }
                            Ok(out) => {
                                *error.lock().expect("error lock") = Some(StageError::Message(format!(
                                    "row function returned {} results for {} rows",
                                    out.len(),
                                    tasks.len()
                                )));
                            }
                            Err(e) => *error.lock().expect("error lock") = Some(e),
                        }
                        let n = done.fetch_add(tasks.len() as u64, Ordering::Relaxed) + tasks.len() as u64;
                        if let Some(p) = &progress {
                            p(n, to_do.load(Ordering::Relaxed));
                        }
                    }
                    cap = None;
                }
            });
            let (probe, _) = stream.probe();
            (rows_in, memo_in, probe)
        });
        // Only worker 0 feeds the inputs; the exchange spreads the rows.
        if index == 0 {
            for r in rows.iter() {
                rows_in.insert(r.clone());
            }
            for m in memo.iter() {
                memo_in.insert(m.clone());
            }
        }
        rows_in.close();
        memo_in.close();
        // Park between steps (at most 1 ms): a worker whose shard is done would otherwise
        // spin on its channels and take a core from the workers still computing.
        while !probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
    })
    .map_err(|e| StageError::Message(format!("starting {workers} timely workers: {e}")))?;
    for r in guards.join() {
        r.map_err(|e| StageError::Message(format!("a timely worker failed: {e}")))?;
    }
    if let Some(e) = error.lock().expect("error lock").take() {
        return Err(e);
    }
    let mut out = std::mem::take(&mut *results.lock().expect("results lock"));
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Len;
    impl RowFn for Len {
        fn compute(&self, tasks: &[RowTask]) -> Result<Vec<Vec<u8>>, StageError> {
            Ok(tasks.iter().map(|t| format!("{}:{}", t.key, t.seed % 1000).into_bytes()).collect())
        }
    }

    fn rows(n: usize) -> Vec<RowId> {
        (0..n).map(|i| RowId { key: format!("r{i}"), hash: *blake3::hash(format!("c{i}").as_bytes()).as_bytes() }).collect()
    }

    #[test]
    fn workers_agree_and_memo_skips_known_rows() {
        let all = rows(50);
        let one = compute_misses(&all, &[], Arc::new(Len), 9, 1, 1, None).unwrap();
        let three = compute_misses(&all, &[], Arc::new(Len), 9, 1, 3, None).unwrap();
        assert_eq!(one.len(), 50);
        assert_eq!(one, three);
        let part = compute_misses(&all, &all[..45], Arc::new(Len), 9, 1, 2, None).unwrap();
        assert_eq!(part.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (45..50).collect::<Vec<_>>());
        assert_eq!(part[..], one[45..]);
    }

    #[test]
    fn engine_reuses_memo_across_calls() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        let _l = store.lock().unwrap();
        let e = MemoRowEngine::new(&store, Some("k".into()), 3, 0, 2, None);
        let (first, s1) = e.map_rows(&rows(20), Arc::new(Len)).unwrap();
        assert_eq!(s1, RowStats { total: 20, computed: 20, reused: 0 });
        let e = MemoRowEngine::new(&store, Some("k".into()), 3, 0, 2, None);
        let (second, s2) = e.map_rows(&rows(22), Arc::new(Len)).unwrap();
        assert_eq!(s2, RowStats { total: 22, computed: 2, reused: 20 });
        assert_eq!(second[..20], first[..]);
    }
}
