//! `collect_preferences` with `annotator = "human"` (docs/annotation.md): the stage samples its
//! two answers per prompt as usual (row-wise, memoised), but people choose, rate and label
//! them. It publishes the round's pairs as a candidates table `HUMAN_ANSWERS/pairs_r<round>.parquet`
//! (what `alignflow annotate --pairs` serves), reads the answers table
//! `HUMAN_ANSWERS/answers.parquet` that the annotation server writes, and
//! - with at least `quota` answers to this round's pairs (0 = all of them) outputs those pairs,
//!   labelled by the people (`annotator = "human"`); gold scores still come from the world's
//!   judges, for the report only;
//! - otherwise waits up to `wait_seconds`, re-reading the table every 2 s, and then fails with
//!   "waiting for N more human answers: run `alignflow annotate ...`". The samples are in the row
//!   memo, so running the pipeline again after annotating costs no generation.
//!
//! Once the stage has succeeded its output is cached like any other; answers given later are
//! picked up when its fingerprint changes (e.g. a higher `quota`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use datasets::annotate::{Rating, SafetyBin, Track};
use datasets::human::{read_answers, read_candidates, write_table_atomic, CandidateRow, HUMAN};
use datasets::schema::PreferencePairRow;
use graph::{RunCtx, StageError};

/// How a human round is configured (from `collect_preferences`'s parameters).
pub struct HumanMode {
    pub dir: PathBuf,
    pub quota: usize,
    pub wait: Duration,
}

/// The human mode when the stage's `annotator` is `"human"`, else None.
pub fn human_mode(ctx: &RunCtx<'_>) -> Result<Option<HumanMode>, StageError> {
    if ctx.params.str("annotator")? != HUMAN {
        return Ok(None);
    }
    let dir = ctx.params.str("human_answers")?;
    if dir.is_empty() {
        return Err(StageError::Message(
            "annotator = \"human\" needs `human_answers`: the folder (relative to the pipeline file) that receives the pairs to annotate and holds answers.parquet".into(),
        ));
    }
    let p = Path::new(dir);
    Ok(Some(HumanMode {
        dir: if p.is_absolute() { p.to_path_buf() } else { ctx.base_dir.join(p) },
        quota: ctx.params.int("quota")? as usize,
        wait: Duration::from_secs(ctx.params.int("wait_seconds")? as u64),
    }))
}

impl HumanMode {
    pub fn candidates_path(&self, round: usize) -> PathBuf {
        self.dir.join(format!("pairs_r{round}.parquet"))
    }

    pub fn answers_path(&self) -> PathBuf {
        self.dir.join("answers.parquet")
    }

    /// Publishes `sampled` (the round's pairs, every one kept, labelled by the simulated
    /// annotator) as candidates, waits for the quota and returns the pairs as people labelled
    /// them.
    pub fn collect(&self, sampled: Vec<PreferencePairRow>, round: usize) -> Result<Vec<PreferencePairRow>, StageError> {
        let candidates: Vec<CandidateRow> = sampled.iter().map(candidate).collect();
        let path = self.candidates_path(round);
        std::fs::create_dir_all(&self.dir).map_err(|source| StageError::Io { path: self.dir.clone(), source })?;
        // Rewrite only when different, so a server already serving the file sees no change.
        if read_candidates(&path).ok().as_ref() != Some(&candidates) {
            let batch = datasets::human::candidates_batch(&candidates).map_err(|e| StageError::wrap("candidates table", e))?;
            write_table_atomic(&path, &batch).map_err(|e| StageError::wrap("writing the pairs to annotate", e))?;
        }
        let quota = if self.quota == 0 { candidates.len() } else { self.quota.min(candidates.len()) };
        let by_id: HashMap<&str, &CandidateRow> = candidates.iter().map(|c| (c.id.as_str(), c)).collect();
        let deadline = Instant::now() + self.wait;
        let answers = loop {
            let all = read_answers(&self.answers_path()).map_err(|e| StageError::wrap("reading the human answers", e))?;
            let mine: Vec<_> = all.into_iter().filter(|a| by_id.contains_key(a.pair_id.as_str())).collect();
            if mine.len() >= quota {
                break mine;
            }
            if Instant::now() >= deadline {
                return Err(StageError::Message(format!(
                    "waiting for {} more human answers ({} of quota {quota}; {} pairs to annotate): run `alignflow annotate --pairs {}`, then run the pipeline again (or set `wait_seconds` to wait here)",
                    quota - mine.len(),
                    mine.len(),
                    candidates.len(),
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50))));
        };
        Ok(answers
            .iter()
            .filter_map(|a| {
                let c = by_id[a.pair_id.as_str()];
                let (chosen_score, rejected_score) = match a.choice {
                    datasets::annotate::Choice::A => (c.gold_a, c.gold_b),
                    datasets::annotate::Choice::B => (c.gold_b, c.gold_a),
                };
                let bin = a.safety_bin();
                // Llama 2's rule: the safety track leaves out pairs whose chosen answer is unsafe
                // and the other safe.
                if c.track == Track::Safety.as_str() && bin == SafetyBin::ChosenUnsafeOtherSafe {
                    return None;
                }
                Some(PreferencePairRow {
                    id: c.id.clone(),
                    prompt_id: c.prompt_id.clone(),
                    prompt: c.prompt.clone(),
                    chosen: a.chosen.clone(),
                    rejected: a.rejected.clone(),
                    rating: a.rating.as_str().to_string(),
                    margin_level: Rating::margin_level(a.rating),
                    track: c.track.clone(),
                    safety_bin: bin.as_str().to_string(),
                    chosen_score,
                    rejected_score,
                    annotator: HUMAN.to_string(),
                    split: c.split.clone(),
                })
            })
            .collect())
    }
}

/// A sampled pair as a candidate: which answer is A is a blake3 coin of the pair id, so A is not
/// always the one the simulated annotator preferred.
fn candidate(p: &PreferencePairRow) -> CandidateRow {
    let swap = blake3::hash(format!("human-ab/{}", p.id).as_bytes()).as_bytes()[0] & 1 == 1;
    let (a, b, ga, gb) = if swap {
        (&p.rejected, &p.chosen, p.rejected_score, p.chosen_score)
    } else {
        (&p.chosen, &p.rejected, p.chosen_score, p.rejected_score)
    };
    CandidateRow {
        id: p.id.clone(),
        prompt_id: p.prompt_id.clone(),
        prompt: p.prompt.clone(),
        response_a: a.clone(),
        response_b: b.clone(),
        track: p.track.clone(),
        split: p.split.clone(),
        gold_a: ga,
        gold_b: gb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::annotate::Choice;
    use datasets::human::{answers_batch, AnswerRow};

    fn sampled(i: usize, track: &str) -> PreferencePairRow {
        PreferencePairRow {
            id: format!("q{i}@r1"),
            prompt_id: format!("q{i}"),
            prompt: format!("prompt {i}"),
            chosen: format!("good {i}"),
            rejected: format!("bad {i}"),
            rating: "better".into(),
            margin_level: 2,
            track: track.into(),
            safety_bin: "both_safe".into(),
            chosen_score: 0.9,
            rejected_score: 0.1,
            annotator: "simulated".into(),
            split: "train".into(),
        }
    }

    #[test]
    fn quota_then_human_labels_with_gold_scores_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mode = HumanMode { dir: dir.path().join("h"), quota: 2, wait: Duration::ZERO };
        let rows = vec![sampled(0, "helpfulness"), sampled(1, "safety"), sampled(2, "helpfulness")];
        let e = mode.collect(rows.clone(), 1).unwrap_err().to_string();
        assert!(e.contains("waiting for 2 more human answers (0 of quota 2; 3 pairs to annotate)"), "{e}");
        assert!(e.contains("alignflow annotate --pairs") && e.contains("pairs_r1.parquet"), "{e}");
        let cands = read_candidates(&mode.candidates_path(1)).unwrap();
        assert_eq!(cands.len(), 3);
        // People prefer "bad 0" (against gold) and, on the safety track, an unsafe chosen answer
        // with a safe other one (dropped by the Llama 2 rule).
        let answer = |c: &CandidateRow, pick: &str, unsafe_chosen: bool| {
            let choice = if c.response_a == pick { Choice::A } else { Choice::B };
            let (chosen, rejected) = if choice == Choice::A { (&c.response_a, &c.response_b) } else { (&c.response_b, &c.response_a) };
            AnswerRow {
                pair_id: c.id.clone(),
                prompt_id: c.prompt_id.clone(),
                prompt: c.prompt.clone(),
                choice,
                rating: Rating::SlightlyBetter,
                unsafe_a: unsafe_chosen && choice == Choice::A,
                unsafe_b: unsafe_chosen && choice == Choice::B,
                annotator_name: "ann".into(),
                answered_at_ms: 1,
                chosen: chosen.clone(),
                rejected: rejected.clone(),
            }
        };
        let answers = vec![answer(&cands[0], "bad 0", false), answer(&cands[1], "good 1", true)];
        write_table_atomic(&mode.answers_path(), &answers_batch(&answers).unwrap()).unwrap();
        let out = mode.collect(rows, 1).unwrap();
        assert_eq!(out.len(), 1, "the safety pair is dropped: {out:?}");
        let p = &out[0];
        assert_eq!((p.chosen.as_str(), p.rejected.as_str(), p.annotator.as_str()), ("bad 0", "good 0", "human"));
        assert_eq!((p.chosen_score, p.rejected_score), (0.1, 0.9));
        assert_eq!((p.rating.as_str(), p.margin_level), ("slightly_better", 1));
    }
}
