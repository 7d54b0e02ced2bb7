//! Fast CPU ops against their slow references (house style: compute the same answer two
//! ways), on shapes that exercise edges: rows of different lengths, a length-1 row, grouped
//! heads, widths not a multiple of the SIMD lanes. Tolerances grow with magnitude
//! (`|got - ref| <= atol + rtol·|ref|`) and failures name the worst index.

use kernels::ops::attention::{AttnShape, attention, attention_backward, attention_backward_ref, attention_ref, probs_len};
use kernels::ops::matmul::{FewRows, MmShape, Tr, WeightRef, linear_few_rows, linear_few_rows_many, matmul, matmul_ref, pack_rows, packed_row, to_bf16_bits};
use kernels::ops::{check_close, embedding, loss, norm, rope, spans_of, swiglu};
use kernels::rng::Rng;

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * scale).collect()
}

#[test]
fn matmul_all_transposes_and_accumulate() {
    for (i, &(m, k, n)) in [(1, 1, 1), (7, 13, 5), (64, 33, 70), (130, 96, 65)].iter().enumerate() {
        for ta in [Tr::N, Tr::T] {
            for tb in [Tr::N, Tr::T] {
                for acc in [false, true] {
                    let s = MmShape { m, k, n };
                    let a = randn(m * k, 1 + i as u64, 1.0);
                    let b = randn(k * n, 2 + i as u64, 1.0);
                    let c0 = randn(m * n, 3, 1.0);
                    let (mut want, mut got) = (c0.clone(), c0.clone());
                    matmul_ref(&mut want, &a, ta, &b, tb, s, acc);
                    matmul(&mut got, &a, ta, &b, tb, s, acc);
                    check_close(&format!("matmul {s:?} {ta:?}{tb:?} acc={acc}"), &got, &want, 1e-4, 1e-4).unwrap();
                }
            }
        }
    }
}

#[test]
fn linear_few_rows_f32_and_bf16() {
    let (m, k, n) = (3, 100, 150);
    let x = randn(m * k, 4, 1.0);
    let w = randn(n * k, 5, 0.1);
    let mut want = vec![0.0; m * n];
    matmul_ref(&mut want, &x, Tr::N, &w, Tr::T, MmShape { m, k, n }, false);
    let mut got = vec![0.0; m * n];
    linear_few_rows(&mut got, &x, WeightRef::F32(&w), m, k, n);
    check_close("linear_few_rows f32", &got, &want, 1e-4, 1e-4).unwrap();
    let wb: Vec<u16> = w.iter().map(|&v| to_bf16_bits(v)).collect();
    let wr: Vec<f32> = wb.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect();
    matmul_ref(&mut want, &x, Tr::N, &wr, Tr::T, MmShape { m, k, n }, false);
    linear_few_rows(&mut got, &x, WeightRef::Bf16(&wb), m, k, n);
    check_close("linear_few_rows bf16", &got, &want, 1e-4, 1e-4).unwrap();
}

/// The decoding products give each row the same bits alone, in a batch, or sharing a pass
/// with other products, and on any thread count (the 4-row kernel and the 1-row tail sum
/// each row in the same order).
#[test]
fn linear_few_rows_many_is_batch_and_grouping_independent() {
    let (m, k) = (3, 203);
    let x = randn(m * k, 6, 1.0);
    let ws: Vec<Vec<f32>> = [131usize, 64, 7].iter().enumerate().map(|(i, &n)| randn(n * k, 10 + i as u64, 0.1)).collect();
    let wbs: Vec<Vec<u16>> = ws.iter().map(|w| w.iter().map(|&v| to_bf16_bits(v)).collect()).collect();
    for bf16 in [false, true] {
        let wr = |i: usize| if bf16 { WeightRef::Bf16(&wbs[i]) } else { WeightRef::F32(&ws[i]) };
        let ns: Vec<usize> = ws.iter().map(|w| w.len() / k).collect();
        // All three products, all rows, one pass.
        let mut ys: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0.0; m * n]).collect();
        {
            let mut outs: Vec<FewRows<'_>> = ys.iter_mut().zip(&ns).enumerate().map(|(i, (y, &n))| FewRows { y, w: wr(i), n }).collect();
            linear_few_rows_many(&x, m, k, &mut outs);
        }
        for (i, &n) in ns.iter().enumerate() {
            let mut want = vec![0.0; m * n];
            let w32: Vec<f32> = if bf16 { wbs[i].iter().map(|&b| f32::from_bits((b as u32) << 16)).collect() } else { ws[i].clone() };
            matmul_ref(&mut want, &x, Tr::N, &w32, Tr::T, MmShape { m, k, n }, false);
            check_close("linear_few_rows_many", &ys[i], &want, 1e-4, 1e-4).unwrap();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for r in 0..m {
                    let mut one = vec![0.0; n];
                    pool.install(|| linear_few_rows(&mut one, &x[r * k..(r + 1) * k], wr(i), 1, k, n));
                    let same = one.iter().zip(&ys[i][r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "product {i} row {r} (bf16 {bf16}, {threads} threads) differs alone and in the batch");
                }
            }
        }
    }
}

/// Decoding streams each matrix in the packed layout (`pack_rows`): the same rows, and the same
/// sums bit for bit as over the plain layout, for every n mod 4 and k mod 16, f32 and bf16, one
/// row or several, one thread or two.
#[test]
fn packed_weights_give_the_plain_layouts_bits() {
    for (n, k) in [(8usize, 32usize), (131, 203), (66, 48), (7, 17), (3, 40)] {
        let w = randn(n * k, n as u64, 0.1);
        let wb: Vec<u16> = w.iter().map(|&v| to_bf16_bits(v)).collect();
        let (pw, pwb) = (pack_rows(&w, k), pack_rows(&wb, k));
        assert_eq!(pw.len(), w.len());
        for row in 0..n {
            assert_eq!(packed_row(&pw, k, row), w[row * k..(row + 1) * k].to_vec(), "row {row} of ({n}, {k})");
            assert_eq!(packed_row(&pwb, k, row), wb[row * k..(row + 1) * k].to_vec());
        }
        for m in [1usize, 3] {
            let x = randn(m * k, 99, 1.0);
            for (dtype, plain, packed) in [("f32", WeightRef::F32(&w), WeightRef::F32Packed(&pw)), ("bf16", WeightRef::Bf16(&wb), WeightRef::Bf16Packed(&pwb))] {
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
                    pool.install(|| {
                        linear_few_rows(&mut a, &x, plain, m, k, n);
                        linear_few_rows(&mut b, &x, packed, m, k, n);
                    });
                    let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "({n}, {k}), {m} rows, {threads} threads, {dtype}: packed and plain sums differ");
                }
            }
        }
    }
}

#[test]
fn rmsnorm_forward_and_backward() {
    let (n, d) = (70, 37);
    let x = randn(n * d, 6, 2.0);
    let w = randn(d, 7, 1.0);
    let (y_ref, r_ref) = norm::rmsnorm_ref(&x, &w, 1e-5);
    let (mut y, mut r) = (vec![0.0; n * d], vec![0.0; n]);
    norm::rmsnorm(&mut y, &mut r, &x, &w, 1e-5);
    check_close("rmsnorm y", &y, &y_ref, 1e-5, 1e-5).unwrap();
    check_close("rmsnorm rstd", &r, &r_ref, 1e-6, 1e-5).unwrap();
    let dy = randn(n * d, 8, 1.0);
    let (dx_ref, dw_ref) = norm::rmsnorm_backward_ref(&dy, &x, &w, &r_ref);
    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    norm::rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &r);
    check_close("rmsnorm dx", &dx, &dx_ref, 1e-5, 1e-4).unwrap();
    check_close("rmsnorm dw", &dw, &dw_ref, 1e-4, 1e-4).unwrap();
}

#[test]
fn rope_table_matches_direct_angles_both_directions() {
    let (n, heads, hd) = (9, 3, 8);
    let pos: Vec<usize> = vec![0, 1, 2, 5, 0, 40, 41, 3, 100];
    let table = rope::RopeTable::new(hd, 10000.0, 128);
    for dir in [rope::Direction::Forward, rope::Direction::Inverse] {
        let x = randn(n * heads * hd, 9, 1.0);
        let (mut a, mut b) = (x.clone(), x.clone());
        rope::rope_ref(&mut a, &pos, heads, hd, 10000.0, dir);
        rope::rope(&mut b, &pos, heads, &table, dir);
        check_close(&format!("rope {dir:?}"), &b, &a, 1e-5, 1e-5).unwrap();
    }
}

#[test]
fn attention_forward_and_backward_with_gqa_and_ragged_rows() {
    check_attention(&[5, 1, 17, 8], AttnShape { heads: 6, kv_heads: 2, head_dim: 12 });
}

/// Rows longer than the causal tile (64), ending inside a tile and on its edge.
#[test]
fn attention_over_several_causal_tiles() {
    check_attention(&[130, 64, 1, 65], AttnShape { heads: 4, kv_heads: 2, head_dim: 8 });
}

fn check_attention(lens: &[usize], sh: AttnShape) {
    let spans = spans_of(lens.iter().copied());
    let n: usize = lens.iter().sum();
    let (qw, kw) = (sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    let q = randn(n * qw, 10, 1.0);
    let k = randn(n * kw, 11, 1.0);
    let v = randn(n * kw, 12, 1.0);
    let (out_ref, p_ref) = attention_ref(&q, &k, &v, &spans, sh);
    // Start from garbage: every saved element (zeros above the diagonal too) must be written.
    let (mut out, mut p) = (vec![7.0; n * qw], vec![7.0; probs_len(&spans, sh)]);
    attention(&mut out, &mut p, &q, &k, &v, &spans, sh);
    check_close("attention out", &out, &out_ref, 1e-5, 1e-4).unwrap();
    check_close("attention probs", &p, &p_ref, 1e-6, 1e-4).unwrap();
    let dout = randn(n * qw, 13, 1.0);
    let (dq_r, dk_r, dv_r) = attention_backward_ref(&dout, &q, &k, &v, &p_ref, &spans, sh);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &p, &spans, sh);
    check_close("attention dq", &dq, &dq_r, 1e-5, 1e-4).unwrap();
    check_close("attention dk", &dk, &dk_r, 1e-5, 1e-4).unwrap();
    check_close("attention dv", &dv, &dv_r, 1e-5, 1e-4).unwrap();
}

#[test]
fn swiglu_forward_and_backward() {
    let n = 5000; // more than one parallel chunk
    let g = randn(n, 14, 3.0);
    let u = randn(n, 15, 1.0);
    let mut a = vec![0.0; n];
    swiglu::swiglu(&mut a, &g, &u);
    check_close("swiglu", &a, &swiglu::swiglu_ref(&g, &u), 1e-6, 1e-5).unwrap();
    let da = randn(n, 16, 1.0);
    let (dg_r, du_r) = swiglu::swiglu_backward_ref(&da, &g, &u);
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    swiglu::swiglu_backward(&mut dg, &mut du, &da, &g, &u);
    check_close("swiglu dg", &dg, &dg_r, 1e-6, 1e-5).unwrap();
    check_close("swiglu du", &du, &du_r, 1e-6, 1e-5).unwrap();
}

#[test]
fn embedding_forward_and_backward_with_repeated_tokens() {
    let (v, d) = (11, 40);
    let table = randn(v * d, 17, 1.0);
    let tokens = vec![3, 3, 0, 10, 3, 7];
    let mut x = vec![0.0; tokens.len() * d];
    embedding::embedding(&mut x, &table, d, &tokens);
    assert_eq!(x, embedding::embedding_ref(&table, d, &tokens));
    let dx = randn(tokens.len() * d, 18, 1.0);
    let (mut a, mut b) = (vec![0.0; v * d], vec![0.0; v * d]);
    embedding::embedding_backward_ref(&mut a, d, &tokens, &dx);
    embedding::embedding_backward(&mut b, d, &tokens, &dx);
    assert_eq!(a, b, "same order of additions gives identical bits");
}

#[test]
fn logprobs_cross_entropy_and_fused_backward() {
    let (n, v) = (9, 50);
    let logits = randn(n * v, 19, 4.0);
    let targets = vec![3, -100, 49, 0, 7, -100, 12, 12, 1];
    let lp = loss::token_logprobs(&logits, v, &targets);
    check_close("logprobs", &lp, &loss::token_logprobs_ref(&logits, v, &targets), 1e-5, 1e-5).unwrap();
    assert_eq!(lp[1], 0.0);
    let coef = randn(n, 20, 1.0);
    let mut d = vec![1.0; n * v];
    loss::logprob_backward(&mut d, &logits, v, &targets, &coef);
    check_close("dlogits", &d, &loss::logprob_backward_ref(&logits, v, &targets, &coef), 1e-6, 1e-5).unwrap();
    let (l, dl) = loss::cross_entropy(&logits, v, &targets);
    let (l_r, dl_r) = loss::cross_entropy_ref(&logits, v, &targets);
    assert!((l - l_r).abs() <= 1e-5 * l_r.abs(), "{l} vs {l_r}");
    check_close("ce dlogits", &dl, &dl_r, 1e-7, 1e-5).unwrap();
    let (l0, d0) = loss::cross_entropy(&logits, v, &[-100; 9]);
    assert_eq!(l0, 0.0);
    assert!(d0.iter().all(|&x| x == 0.0), "no scored token, no gradient");
}

#[test]
fn vectorised_exp_matches_libm() {
    let mut xs: Vec<f32> = (0..4000).map(|i| -90.0 + i as f32 * 0.045).collect();
    xs.retain(|&x| x <= 88.3);
    xs.extend([0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0]);
    let want: Vec<f32> = xs.iter().map(|&x| (x as f64).exp() as f32).collect();
    let mut got = xs.clone();
    kernels::ops::exp_inplace(&mut got);
    // Below the clamp (-87.3) the result is ~1e-38 instead of a denormal or 0.
    check_close("exp", &got, &want, 2e-38, 3e-7).unwrap();
}

/// The fused-layout versions the model runs (q/k/v and gate/up side by side in one buffer)
/// against the references on separate tensors.
#[test]
fn fused_layouts_match_the_references() {
    use kernels::ops::attention::{Cols, attention_backward_cols, attention_cols};
    let (n, f) = (23, 37);
    let gu = randn(n * 2 * f, 20, 2.0);
    let g: Vec<f32> = (0..n).flat_map(|r| gu[r * 2 * f..r * 2 * f + f].to_vec()).collect();
    let u: Vec<f32> = (0..n).flat_map(|r| gu[r * 2 * f + f..(r + 1) * 2 * f].to_vec()).collect();
    let mut a = vec![0.0; n * f];
    swiglu::swiglu_packed(&mut a, &gu, f);
    check_close("swiglu packed", &a, &swiglu::swiglu_ref(&g, &u), 1e-6, 1e-5).unwrap();
    let da = randn(n * f, 21, 1.0);
    let (dg_r, du_r) = swiglu::swiglu_backward_ref(&da, &g, &u);
    let mut dgu = vec![f32::NAN; n * 2 * f];
    swiglu::swiglu_backward_packed(&mut dgu, &da, &gu, f);
    let dg: Vec<f32> = (0..n).flat_map(|r| dgu[r * 2 * f..r * 2 * f + f].to_vec()).collect();
    let du: Vec<f32> = (0..n).flat_map(|r| dgu[r * 2 * f + f..(r + 1) * 2 * f].to_vec()).collect();
    check_close("swiglu packed dg", &dg, &dg_r, 1e-6, 1e-5).unwrap();
    check_close("swiglu packed du", &du, &du_r, 1e-6, 1e-5).unwrap();

    // Attention and rotary on the columns of one (N, q | k | v) buffer.
    let spans = spans_of([5, 1, 17, 8]);
    let n: usize = 31;
    let sh = AttnShape { heads: 6, kv_heads: 2, head_dim: 12 };
    let (qd, kvd) = (72, 24);
    let w = qd + 2 * kvd;
    let qkv = randn(n * w, 22, 1.0);
    let part = |x: &[f32], c0: usize, cw: usize| -> Vec<f32> { (0..n).flat_map(|t| x[t * w + c0..t * w + c0 + cw].to_vec()).collect() };
    let (q, k, v) = (part(&qkv, 0, qd), part(&qkv, qd, kvd), part(&qkv, qd + kvd, kvd));
    let pos: Vec<usize> = (0..n).map(|i| i % 9).collect();
    let table = rope::RopeTable::new(12, 10000.0, 64);
    let mut rot = qkv.clone();
    rope::rope_cols(&mut rot, w, qd, &pos, 2, &table, rope::Direction::Forward);
    let mut k_ref = k.clone();
    rope::rope_ref(&mut k_ref, &pos, 2, 12, 10000.0, rope::Direction::Forward);
    check_close("rope cols", &part(&rot, qd, kvd), &k_ref, 1e-5, 1e-5).unwrap();
    assert_eq!(part(&rot, 0, qd), q, "rope_cols touched other columns");
    let (out_ref, p_ref) = attention_ref(&q, &k, &v, &spans, sh);
    let (mut out, mut p) = (vec![0.0; n * qd], vec![0.0; probs_len(&spans, sh)]);
    let col = |c0| Cols { data: &qkv, width: w, col0: c0 };
    attention_cols(&mut out, &mut p, col(0), col(qd), col(qd + kvd), &spans, sh);
    check_close("attention cols out", &out, &out_ref, 1e-5, 1e-4).unwrap();
    let dout = randn(n * qd, 23, 1.0);
    let (dq_r, dk_r, dv_r) = attention_backward_ref(&dout, &q, &k, &v, &p_ref, &spans, sh);
    let mut dqkv = vec![f32::NAN; n * w];
    attention_backward_cols(&mut dqkv, w, &dout, col(0), col(qd), col(qd + kvd), &p, &spans, sh);
    check_close("attention cols dq", &part(&dqkv, 0, qd), &dq_r, 1e-5, 1e-4).unwrap();
    check_close("attention cols dk", &part(&dqkv, qd, kvd), &dk_r, 1e-5, 1e-4).unwrap();
    check_close("attention cols dv", &part(&dqkv, qd + kvd, kvd), &dv_r, 1e-5, 1e-4).unwrap();
}
