//! The answers store: every accepted answer is in the Parquet table on disk before the request
//! that gave it is answered. One mutex serialises answers; each write publishes the whole table
//! atomically (temporary file + rename), and a pair id can be answered once, so concurrent
//! annotators can neither lose nor duplicate an answer. A lock file next to the table keeps a
//! second server (another process) off the same table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datasets::annotate::{Choice, Rating};
use datasets::human::{answers_batch, read_answers, write_table_atomic, AnswerRow, CandidateRow};

use crate::AnnotateError;

/// How long a pair handed to one annotator is kept from the others.
pub const LEASE: Duration = Duration::from_secs(120);

/// A validated answer, as the server receives it.
#[derive(Clone, Debug)]
pub struct NewAnswer {
    pub pair_id: String,
    pub choice: Choice,
    pub rating: Rating,
    pub unsafe_a: bool,
    pub unsafe_b: bool,
    pub annotator_name: String,
}

/// Why an answer was refused (each maps to a 4xx status; 5xx for `Write`).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown pair id `{0}`")]
    UnknownPair(String),
    #[error("pair `{0}` is already answered")]
    AlreadyAnswered(String),
    #[error("could not save the answer: {0}")]
    Write(datasets::DataError),
}

/// Progress over the served pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub done: usize,
    pub remaining: usize,
    pub total: usize,
}

pub struct Store {
    path: PathBuf,
    pairs: Vec<CandidateRow>,
    index: HashMap<String, usize>,
    /// Every row of the table, including answers to pairs not served now (other rounds).
    answers: BTreeMap<String, AnswerRow>,
    leases: HashMap<String, (String, Instant)>,
    /// How many of `pairs` are answered.
    done: usize,
    _lock: File,
}

impl Store {
    /// Opens the table at `path` (absent = empty) for the pairs `pairs`, taking the lock file
    /// `<path>.lock`.
    pub fn open(path: &Path, pairs: Vec<CandidateRow>) -> Result<Store, AnnotateError> {
        let lock_path = lock_path(path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| AnnotateError::Io { path: lock_path.clone(), op: "open lock file", source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AnnotateError::Locked(path.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(AnnotateError::Io { path: lock_path, op: "lock", source });
            }
        }
        let answers: BTreeMap<String, AnswerRow> = read_answers(path)?.into_iter().map(|a| (a.pair_id.clone(), a)).collect();
        let index = pairs.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        let done = pairs.iter().filter(|p| answers.contains_key(&p.id)).count();
        Ok(Store { path: path.to_path_buf(), pairs, index, answers, leases: HashMap::new(), done, _lock: lock })
    }

    pub fn progress(&self) -> Progress {
        Progress { done: self.done, remaining: self.pairs.len() - self.done, total: self.pairs.len() }
    }

    /// The next pair for `client`: the first unanswered pair not in `skip` that no other client
    /// holds a lease on (failing that, one another client holds, so nobody waits forever). The
    /// pair is leased to `client`.
    pub fn next(&mut self, client: &str, skip: &HashSet<String>) -> Option<CandidateRow> {
        let now = Instant::now();
        self.leases.retain(|_, (_, t)| now.duration_since(*t) < LEASE);
        let open = |p: &&CandidateRow| !self.answers.contains_key(&p.id) && !skip.contains(&p.id);
        let free = self.pairs.iter().filter(open).find(|p| self.leases.get(&p.id).is_none_or(|(c, _)| c == client));
        let pick = free.or_else(|| self.pairs.iter().find(open)).cloned()?;
        self.leases.retain(|_, (c, _)| c != client);
        self.leases.insert(pick.id.clone(), (client.to_string(), now));
        Some(pick)
    }

    /// Records `a`: checks the pair, appends the row, publishes the table. On a write failure
    /// the answer is not kept (the table on disk is unchanged).
    pub fn submit(&mut self, a: NewAnswer, now_ms: i64) -> Result<Progress, SubmitError> {
        let &i = self.index.get(&a.pair_id).ok_or_else(|| SubmitError::UnknownPair(a.pair_id.clone()))?;
        if self.answers.contains_key(&a.pair_id) {
            return Err(SubmitError::AlreadyAnswered(a.pair_id));
        }
        let p = &self.pairs[i];
        let (chosen, rejected) = match a.choice {
            Choice::A => (&p.response_a, &p.response_b),
            Choice::B => (&p.response_b, &p.response_a),
        };
        let row = AnswerRow {
            pair_id: p.id.clone(),
            prompt_id: p.prompt_id.clone(),
            prompt: p.prompt.clone(),
            choice: a.choice,
            rating: a.rating,
            unsafe_a: a.unsafe_a,
            unsafe_b: a.unsafe_b,
            annotator_name: a.annotator_name,
            answered_at_ms: now_ms,
            chosen: chosen.clone(),
            rejected: rejected.clone(),
        };
        self.answers.insert(row.pair_id.clone(), row);
        let rows: Vec<AnswerRow> = self.answers.values().cloned().collect();
        let written = answers_batch(&rows).and_then(|b| write_table_atomic(&self.path, &b));
        if let Err(e) = written {
            self.answers.remove(&a.pair_id);
            return Err(SubmitError::Write(e));
        }
        self.leases.remove(&a.pair_id);
        self.done += 1;
        Ok(self.progress())
    }
}

/// `<answers>.lock`, the file a server holds locked while it runs.
pub fn lock_path(answers: &Path) -> PathBuf {
    let mut s = answers.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}
