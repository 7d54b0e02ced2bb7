//! Data-parallel gradient reduction, shared by every trainer.
//!
//! A step's work is a list of parts (for language models: each micro-batch's row shards,
//! `kernels::optim::lm_step_parts`). Part `j` is computed by process `j mod N`; the processes
//! all-gather their parts' (loss, gradient) and every process adds all of them **in part
//! order**, then clips and takes the optimiser step. The sum is therefore the same sequence of
//! float additions as on one process, so N processes give bit-identical weights to one process
//! with the same configuration (shards included), and every process holds the same weights
//! after every step. The cost is that every process receives every other process's part
//! gradients (an all-gather, not a reduce-scatter): fine for the small models trained on CPU
//! here; docs/cluster.md describes the NCCL design for large ones.
//!
//! A trainer computes its owned parts however its loss demands (LM cross-entropy, reward-model
//! margin loss, PPO), hands them to [`GradReduce::gather`], and sums the result with
//! [`sum_in_order`] or `kernels::optim::lm_apply_parts`.

use std::sync::Arc;

use kernels::model::{Grads, Llama};

/// One part's contribution to a step.
#[derive(Clone, Debug, PartialEq)]
pub struct GradPart {
    /// The part's position in the step's summation order.
    pub index: usize,
    pub loss: f32,
    pub grads: Grads,
    /// Further per-part numbers a trainer sums in part order with the gradients (the reward
    /// model's accuracy, PPO's statistics); empty for language models.
    pub metrics: Vec<f64>,
}

impl GradPart {
    pub fn new(index: usize, loss: f32, grads: Grads) -> GradPart {
        GradPart { index, loss, grads, metrics: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    #[error("gradient all-gather: {0}")]
    Collective(String),
    #[error("process {process} sent a malformed gradient message")]
    Malformed { process: usize },
    #[error("part {index} of {parts} is missing or duplicated after the all-gather")]
    Parts { index: usize, parts: usize },
    #[error("the processes disagree on {what}: {values:?} (by process); is the workspace on a file system they all see?")]
    Disagree { what: String, values: Vec<u64> },
}

/// How a trainer's step parts are split over processes and their gradients brought together.
pub trait GradReduce: Send + Sync + std::fmt::Debug {
    /// This process's index.
    fn process(&self) -> usize;
    /// Data-parallel processes.
    fn processes(&self) -> usize;
    /// Whether this process computes part `part` (round-robin over processes).
    fn owns(&self, part: usize) -> bool {
        part % self.processes() == self.process()
    }
    /// Whether this process writes side effects such as checkpoints (process 0 only: every
    /// process holds the same state).
    fn writer(&self) -> bool {
        self.process() == 0
    }
    /// Every process's parts of a step of `parts` parts, sorted by index.
    fn gather(&self, mine: Vec<GradPart>, parts: usize) -> Result<Vec<GradPart>, ReduceError>;
    /// Checks that every process passes the same value (e.g. the step a resume starts at).
    fn agree(&self, what: &str, value: u64) -> Result<(), ReduceError>;
    /// Every process's bytes, in process order (for work split by row rather than by
    /// gradient, such as PPO's rollouts: each process samples the rows it owns).
    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>, ReduceError>;
}

/// One process: owns every part.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl GradReduce for Local {
    fn process(&self) -> usize {
        0
    }
    fn processes(&self) -> usize {
        1
    }
    fn gather(&self, mut mine: Vec<GradPart>, parts: usize) -> Result<Vec<GradPart>, ReduceError> {
        mine.sort_by_key(|p| p.index);
        check_complete(&mine, parts)?;
        Ok(mine)
    }
    fn agree(&self, _what: &str, _value: u64) -> Result<(), ReduceError> {
        Ok(())
    }
    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>, ReduceError> {
        Ok(vec![mine])
    }
}

/// The processes of a cluster run, through the runtime's all-gather (timely channels).
pub struct OverCollective(pub Arc<dyn graph::Collective>);

impl std::fmt::Debug for OverCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OverCollective(process {} of {})", self.0.process(), self.0.processes())
    }
}

/// The reduction for a stage run: over the run's processes when there are several.
pub fn for_collective(c: &Arc<dyn graph::Collective>) -> Arc<dyn GradReduce> {
    if c.processes() > 1 { Arc::new(OverCollective(c.clone())) } else { Arc::new(Local) }
}

impl GradReduce for OverCollective {
    fn process(&self) -> usize {
        self.0.process()
    }
    fn processes(&self) -> usize {
        self.0.processes()
    }
    fn gather(&self, mine: Vec<GradPart>, parts: usize) -> Result<Vec<GradPart>, ReduceError> {
        let all = self.0.all_gather(encode(&mine)).map_err(|e| ReduceError::Collective(e.to_string()))?;
        let mut out = Vec::with_capacity(parts);
        for (process, bytes) in all.iter().enumerate() {
            if process == self.process() {
                continue;
            }
            out.extend(decode(bytes).ok_or(ReduceError::Malformed { process })?);
        }
        out.extend(mine);
        out.sort_by_key(|p| p.index);
        check_complete(&out, parts)?;
        Ok(out)
    }
    fn agree(&self, what: &str, value: u64) -> Result<(), ReduceError> {
        let all = self.0.all_gather(value.to_le_bytes().to_vec()).map_err(|e| ReduceError::Collective(e.to_string()))?;
        let values: Vec<u64> = all.iter().map(|b| b.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX)).collect();
        if values.iter().any(|v| *v != value) {
            return Err(ReduceError::Disagree { what: what.to_string(), values });
        }
        Ok(())
    }
    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>, ReduceError> {
        self.0.all_gather(mine).map_err(|e| ReduceError::Collective(e.to_string()))
    }
}

fn check_complete(parts: &[GradPart], n: usize) -> Result<(), ReduceError> {
    if parts.len() != n {
        return Err(ReduceError::Parts { index: parts.len().min(n), parts: n });
    }
    for (i, p) in parts.iter().enumerate() {
        if p.index != i {
            return Err(ReduceError::Parts { index: i, parts: n });
        }
    }
    Ok(())
}

/// Adds the parts' gradients in the given order, starting from the first part's (so one part
/// gives exactly its own gradient, signed zeros included); None for no parts.
pub fn sum_grads(parts: Vec<GradPart>) -> Option<Grads> {
    let mut it = parts.into_iter();
    let mut total = it.next()?.grads;
    for p in it {
        total.add_assign(&p.grads);
    }
    Some(total)
}

/// Adds the parts' losses (in f64) and gradients in the given order.
pub fn sum_in_order(model: &Llama, parts: &[GradPart]) -> (f64, Grads) {
    let mut total = Grads::zeros(model);
    let mut loss = 0.0f64;
    for p in parts {
        loss += p.loss as f64;
        total.add_assign(&p.grads);
    }
    (loss, total)
}

/// Little-endian: count, then per part index, loss bits, metric count and values, tensor count,
/// and each tensor's length and values.
fn encode(parts: &[GradPart]) -> Vec<u8> {
    let floats: usize = parts.iter().map(|p| p.grads.tensors.iter().map(Vec::len).sum::<usize>()).sum();
    let mut out = Vec::with_capacity(16 + floats * 4 + parts.len() * 64);
    out.extend((parts.len() as u64).to_le_bytes());
    for p in parts {
        out.extend((p.index as u64).to_le_bytes());
        out.extend(p.loss.to_bits().to_le_bytes());
        out.extend((p.metrics.len() as u64).to_le_bytes());
        for m in &p.metrics {
            out.extend(m.to_bits().to_le_bytes());
        }
        out.extend((p.grads.tensors.len() as u64).to_le_bytes());
        for t in &p.grads.tensors {
            out.extend((t.len() as u64).to_le_bytes());
            for x in t {
                out.extend(x.to_le_bytes());
            }
        }
    }
    out
}

fn decode(mut b: &[u8]) -> Option<Vec<GradPart>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = b.split_at_checked(n)?;
        *b = t;
        Some(h)
    }
    let u64_of = |b: &mut &[u8]| take(b, 8).map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")));
    let n = u64_of(&mut b)?;
    let mut parts = Vec::new();
    for _ in 0..n {
        let index = u64_of(&mut b)? as usize;
        let loss = f32::from_bits(u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?));
        let m = u64_of(&mut b)? as usize;
        let raw = take(&mut b, m.checked_mul(8)?)?;
        let metrics = raw.chunks_exact(8).map(|c| f64::from_bits(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
        let count = u64_of(&mut b)?;
        let mut tensors = Vec::new();
        for _ in 0..count {
            let len = u64_of(&mut b)? as usize;
            let raw = take(&mut b, len.checked_mul(4)?)?;
            tensors.push(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect());
        }
        parts.push(GradPart { index, loss, grads: Grads { tensors }, metrics });
    }
    b.is_empty().then_some(parts)
}

/// An in-memory cluster for unit tests: `n` "processes" (threads) whose all-gather meets at a
/// barrier.
#[cfg(test)]
pub mod testing {
    use std::sync::{Arc, Barrier, Mutex};

    struct Shared {
        slots: Mutex<Vec<Option<Vec<u8>>>>,
        barrier: Barrier,
    }

    struct Member(Arc<Shared>, usize, usize);

    impl graph::Collective for Member {
        fn process(&self) -> usize {
            self.1
        }
        fn processes(&self) -> usize {
            self.2
        }
        fn all_gather(&self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, graph::StageError> {
            self.0.slots.lock().unwrap()[self.1] = Some(bytes);
            self.0.barrier.wait();
            let out: Vec<Vec<u8>> = self.0.slots.lock().unwrap().iter().map(|s| s.clone().unwrap()).collect();
            self.0.barrier.wait();
            Ok(out)
        }
    }

    /// The reductions of `n` processes, one per thread that uses it.
    pub fn processes(n: usize) -> Vec<Arc<dyn super::GradReduce>> {
        let shared = Arc::new(Shared { slots: Mutex::new(vec![None; n]), barrier: Barrier::new(n) });
        (0..n).map(|p| Arc::new(super::OverCollective(Arc::new(Member(shared.clone(), p, n)))) as Arc<dyn super::GradReduce>).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_bit_for_bit() {
        let parts = vec![
            GradPart { index: 3, loss: 0.1 + 0.2, grads: Grads { tensors: vec![vec![1.5, -0.0, f32::MIN_POSITIVE], vec![]] }, metrics: vec![0.1, -0.0] },
            GradPart::new(7, -2.0, Grads { tensors: vec![vec![f32::EPSILON]] }),
        ];
        let back = decode(&encode(&parts)).unwrap();
        assert_eq!(back, parts);
        assert_eq!(back[0].grads.tensors[0][1].to_bits(), (-0.0f32).to_bits());
        assert!(decode(&encode(&parts)[..20]).is_none());
    }

    #[test]
    fn local_gather_checks_that_every_part_is_there() {
        let p = |index| GradPart::new(index, 0.0, Grads { tensors: vec![] });
        assert_eq!(Local.gather(vec![p(1), p(0)], 2).unwrap().iter().map(|x| x.index).collect::<Vec<_>>(), [0, 1]);
        assert!(Local.gather(vec![p(0)], 2).is_err());
    }
}
