//! Packing (Llama 2 §3.1): examples are concatenated, each closed by a separator (EOS), and the
//! stream is cut into rows of `seq_len` tokens so no compute goes to padding. Row k reads
//! stream tokens [k·L, k·L + L) and predicts tokens [k·L + 1, k·L + L + 1): every token of the
//! stream after the first is a target exactly once, unless its mask says otherwise.
//!
//! The example order is shuffled per epoch from (seed, epoch) alone, so any step's data can be
//! recomputed from the step number: this is what lets a resumed run see exactly the batches
//! an uninterrupted run sees.

use kernels::ops::loss::IGNORE;
use kernels::rng::Rng;

use super::examples::Example;

/// One packed row: input ids (len ≤ L) and, per position, the target id or `IGNORE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    pub targets: Vec<i32>,
}

impl PackedRow {
    /// Positions that carry loss.
    pub fn scored(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// A permutation of 0..n from (seed, epoch): Fisher-Yates over the engine's seeded generator.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::stream(seed, epoch);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The token stream of examples in `order`: each example's ids and masks, followed by the
/// separator when the example does not already end with it (the added separator is a target
/// only where the example's own last token is).
fn stream(examples: &[Example], order: &[usize], separator: Option<u32>) -> (Vec<u32>, Vec<bool>) {
    let total: usize = examples.iter().map(|e| e.ids.len() + 1).sum();
    let (mut ids, mut mask) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for &i in order {
        let e = &examples[i];
        ids.extend_from_slice(&e.ids);
        mask.extend_from_slice(&e.mask);
        if let Some(sep) = separator {
            if e.ids.last() != Some(&sep) {
                ids.push(sep);
                mask.push(e.mask.last().copied().unwrap_or(false));
            }
        }
    }
    (ids, mask)
}

/// Packs examples in `order` into rows of at most `seq_len` tokens (the last row may be
/// shorter). Examples longer than a row simply continue in the next row.
pub fn pack(examples: &[Example], order: &[usize], seq_len: usize, separator: Option<u32>) -> Vec<PackedRow> {
    assert!(seq_len > 0, "seq_len is checked by the caller");
    let (ids, mask) = stream(examples, order, separator);
    if ids.len() < 2 {
        return Vec::new();
    }
    let last = ids.len() - 1; // positions that have a next token
    (0..last)
        .step_by(seq_len)
        .map(|start| {
            let end = (start + seq_len).min(last);
            let targets = (start..end).map(|t| if mask[t + 1] { ids[t + 1] as i32 } else { IGNORE }).collect();
            PackedRow { ids: ids[start..end].to_vec(), targets }
        })
        .collect()
}

/// The packed rows of one epoch.
pub fn pack_epoch(examples: &[Example], seq_len: usize, separator: Option<u32>, seed: u64, epoch: u64) -> Vec<PackedRow> {
    pack(examples, &epoch_order(examples.len(), seed, epoch), seq_len, separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], mask: &[bool]) -> Example {
        Example { ids: ids.to_vec(), mask: mask.to_vec() }
    }

    #[test]
    fn every_target_appears_once_and_rows_have_seq_len_tokens() {
        let es = vec![ex(&[1, 5, 6, 2], &[false, true, true, true]), ex(&[1, 7, 2], &[false, false, true])];
        let rows = pack(&es, &[0, 1], 3, Some(2));
        // Stream 1 5 6 2 1 7 2; 6 positions with a successor -> rows of 3 and 3.
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, vec![1, 5, 6]);
        assert_eq!(rows[0].targets, vec![5, 6, 2]);
        assert_eq!(rows[1].ids, vec![2, 1, 7]);
        assert_eq!(rows[1].targets, vec![IGNORE, IGNORE, 2]);
    }

    #[test]
    fn separator_is_added_when_missing() {
        let es = vec![ex(&[5, 6], &[true, true]), ex(&[7], &[true])];
        let rows = pack(&es, &[0, 1], 16, Some(2));
        assert_eq!(rows[0].ids, vec![5, 6, 2, 7]);
        assert_eq!(rows[0].targets, vec![6, 2, 7, 2]);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
    }
}
