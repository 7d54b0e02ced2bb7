//! Token embedding: forward gathers rows of the table E (V, D); backward scatter-adds the
//! gradient rows into dE. The fast backward splits the D columns across threads and walks the
//! tokens in order inside each column block, so repeated tokens add up in the same order
//! whatever the thread count. Token ids are checked by the model before these run.

use rayon::prelude::*;

/// Reference forward: x (N, D) from tokens (N).
pub fn embedding_ref(table: &[f32], d: usize, tokens: &[u32]) -> Vec<f32> {
    let mut x = Vec::with_capacity(tokens.len() * d);
    for &t in tokens {
        x.extend_from_slice(&table[t as usize * d..(t as usize + 1) * d]);
    }
    x
}

/// Fast forward into x (N, D).
pub fn embedding(x: &mut [f32], table: &[f32], d: usize, tokens: &[u32]) {
    x.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(xr, &t)| {
        xr.copy_from_slice(&table[t as usize * d..(t as usize + 1) * d]);
    });
}

/// Reference backward: dtable (V, D) += scatter of dx (N, D).
pub fn embedding_backward_ref(dtable: &mut [f32], d: usize, tokens: &[u32], dx: &[f32]) {
    for (i, &t) in tokens.iter().enumerate() {
        for c in 0..d {
            dtable[t as usize * d + c] += dx[i * d + c];
        }
    }
}

/// Fast backward: column blocks in parallel, tokens in order within each block.
pub fn embedding_backward(dtable: &mut [f32], d: usize, tokens: &[u32], dx: &[f32]) {
    let v = dtable.len() / d;
    assert!(tokens.iter().all(|&t| (t as usize) < v), "embedding_backward: token id out of range");
    assert_eq!(dx.len(), tokens.len() * d, "embedding_backward: dx");
    let threads = rayon::current_num_threads().max(1);
    let block = d.div_ceil(threads).max(16);
    let blocks: Vec<usize> = (0..d).step_by(block).collect();
    let table_ptr = SendPtr(dtable.as_mut_ptr());
    blocks.par_iter().for_each(|&c0| {
        let c1 = (c0 + block).min(d);
        let p = &table_ptr;
        for (i, &t) in tokens.iter().enumerate() {
            let src = &dx[i * d + c0..i * d + c1];
            // SAFETY: each task writes only columns c0..c1, disjoint across tasks, and the
            // row index t < V was checked by the caller; dtable outlives the scope.
            let dst = unsafe { std::slice::from_raw_parts_mut(p.0.add(t as usize * d + c0), c1 - c0) };
            for (a, b) in dst.iter_mut().zip(src) {
                *a += b;
            }
        }
    });
}

struct SendPtr(*mut f32);
// SAFETY: used only for disjoint column blocks, see `embedding_backward`.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
