//! Parity of the CUDA backend with the CPU reference (feature `cuda`).
//!
//! Every test skips with a printed reason when no GPU (or no NVRTC) is present, so the suite
//! passes on CPU-only machines; `scripts/gpu_check.sh` runs it on a GPU machine. Inputs are
//! fresh random numbers; tolerances are scaled to bf16 (8 mantissa bits): relative error
//! ‖gpu − cpu‖ / ‖cpu‖ under 1e-2 for single ops and 3e-2 for whole models.
#![cfg(feature = "cuda")]

use kernels::config::{Head, LlamaConfig};
use kernels::cuda::model::{GpuAdamW, GpuLlama};
use kernels::cuda::ops::{AttnImpl, PackedRows, TokenIndex, rmsnorm_scratch_len};
use kernels::cuda::{Gpu, dptr};
use kernels::model::Llama;
use kernels::ops::{attention, embedding, norm, rope, spans_of, swiglu};
use kernels::rng::Rng;
use std::sync::{Arc, OnceLock};

fn gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::open(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            eprintln!("SKIPPED: no usable CUDA device: {e}");
            None
        }
    }
}

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn bf(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
fn unbf(x: u16) -> f32 {
    half::bf16::from_bits(x).to_f32()
}
/// Rounds through bf16, as the device sees its inputs.
fn round_bf(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| unbf(bf(x))).collect()
}
fn to_bf(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf(x)).collect()
}
fn from_bf(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&x| unbf(x)).collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    eprintln!("{what}: relative error {e:.2e} (tolerance {tol:.0e})");
    assert!(e < tol, "{what}: relative error {e:.3e} over {tol:.0e}");
}

#[test]
fn nvrtc_compiles_every_kernel() {
    // Needs only libnvrtc (no GPU): catches compile errors on CPU machines that have it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        eprintln!("SKIPPED: libnvrtc.so.13 not found (pip install nvidia-cuda-nvrtc and set LD_LIBRARY_PATH)");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let cubin = kernels::cuda::compile_cubin(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{arch}: not an ELF cubin");
    }
}

#[test]
fn embedding_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(1);
    let (v, d, n) = (50, 24, 200);
    let table = randn(&mut rng, v * d, 1.0);
    let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let want = embedding::embedding_ref(&table, d, &tokens);
    let tdev = g.upload(&table).unwrap();
    let tok = g.upload(&tokens.iter().map(|&t| t as i32).collect::<Vec<_>>()).unwrap();
    let x = g.zeros::<f32>(n * d).unwrap();
    g.embedding_fwd(dptr(&x), dptr(&tdev), dptr(&tok), n, d).unwrap();
    check("embedding fwd", &g.download(&x).unwrap(), &want, 1e-7);
    let dx = randn(&mut rng, n * d, 1.0);
    let mut dt_want = vec![0.5f32; v * d];
    embedding::embedding_backward_ref(&mut dt_want, d, &tokens, &dx);
    let dt = g.upload(&vec![0.5f32; v * d]).unwrap();
    let dxd = g.upload(&dx).unwrap();
    let idx = TokenIndex::new(&g, &tokens).unwrap();
    g.embedding_bwd(dptr(&dt), dptr(&dxd), &idx, d).unwrap();
    check("embedding bwd", &g.download(&dt).unwrap(), &dt_want, 1e-6);
}

#[test]
fn rmsnorm_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2);
    let (n, d) = (300, 96);
    let x = randn(&mut rng, n * d, 2.0);
    let w = randn(&mut rng, d, 1.0);
    let (y_want, rstd_want) = norm::rmsnorm_ref(&x, &w, 1e-5);
    let (xd, wd) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
    let y = g.zeros::<u16>(n * d).unwrap();
    let rstd = g.zeros::<f32>(n).unwrap();
    g.rmsnorm_fwd(dptr(&y), dptr(&rstd), dptr(&xd), dptr(&wd), n, d, 1e-5).unwrap();
    check("rmsnorm fwd", &from_bf(&g.download(&y).unwrap()), &y_want, 1e-2);
    check("rmsnorm rstd", &g.download(&rstd).unwrap(), &rstd_want, 1e-5);
    let dy = round_bf(&randn(&mut rng, n * d, 1.0));
    let (dx_want, dw_want) = norm::rmsnorm_backward_ref(&dy, &x, &w, &rstd_want);
    let prior = randn(&mut rng, n * d, 1.0);
    let dx = g.upload(&prior).unwrap();
    let dx_b = g.zeros::<u16>(n * d).unwrap();
    let dw = g.zeros::<f32>(d).unwrap();
    let scratch = g.zeros::<f32>(rmsnorm_scratch_len(n, d)).unwrap();
    let dyd = g.upload(&to_bf(&dy)).unwrap();
    g.rmsnorm_bwd(dptr(&dx), dptr(&dx_b), dptr(&dw), dptr(&scratch), dptr(&dyd), dptr(&xd), dptr(&wd), dptr(&rstd), n, d, true).unwrap();
    let want_acc: Vec<f32> = prior.iter().zip(&dx_want).map(|(a, b)| a + b).collect();
    check("rmsnorm bwd dx (accumulated)", &g.download(&dx).unwrap(), &want_acc, 1e-5);
    check("rmsnorm bwd dx bf16 copy", &from_bf(&g.download(&dx_b).unwrap()), &want_acc, 1e-2);
    check("rmsnorm bwd dw", &g.download(&dw).unwrap(), &dw_want, 1e-5);
}

#[test]
fn rope_forward_and_inverse() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(3);
    let (heads, hd, stride, col0) = (3, 16, 80, 16);
    let lens = [5usize, 9, 1];
    let pos: Vec<usize> = lens.iter().flat_map(|&l| 0..l).collect();
    let n = pos.len();
    let rows = round_bf(&randn(&mut rng, n * stride, 1.0));
    let table = rope::RopeTable::new(hd, 10000.0, 64);
    let (cos, sin) = (g.upload(table.cos()).unwrap(), g.upload(table.sin()).unwrap());
    let posd = g.upload(&pos.iter().map(|&p| p as i32).collect::<Vec<_>>()).unwrap();
    for inverse in [false, true] {
        let mut part: Vec<f32> = (0..n).flat_map(|t| rows[t * stride + col0..t * stride + col0 + heads * hd].to_vec()).collect();
        let dir = if inverse { rope::Direction::Inverse } else { rope::Direction::Forward };
        rope::rope_ref(&mut part, &pos, heads, hd, 10000.0, dir);
        let xd = g.upload(&to_bf(&rows)).unwrap();
        g.rope(dptr(&xd), stride, col0, dptr(&cos), dptr(&sin), dptr(&posd), n, heads, hd, inverse).unwrap();
        let got = from_bf(&g.download(&xd).unwrap());
        let got_part: Vec<f32> = (0..n).flat_map(|t| got[t * stride + col0..t * stride + col0 + heads * hd].to_vec()).collect();
        check(&format!("rope (inverse = {inverse})"), &got_part, &part, 1e-2);
        // Columns outside the rotated heads are untouched.
        for t in 0..n {
            assert_eq!(&got[t * stride..t * stride + col0], &rows[t * stride..t * stride + col0]);
        }
    }
}

#[test]
fn swiglu_forward_and_backward() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(4);
    let (n, f) = (70, 40);
    let gate = round_bf(&randn(&mut rng, n * f, 2.0));
    let up = round_bf(&randn(&mut rng, n * f, 1.0));
    let gu: Vec<f32> = (0..n).flat_map(|r| gate[r * f..(r + 1) * f].iter().chain(&up[r * f..(r + 1) * f]).copied().collect::<Vec<_>>()).collect();
    let gud = g.upload(&to_bf(&gu)).unwrap();
    let a = g.zeros::<u16>(n * f).unwrap();
    g.swiglu_fwd(dptr(&a), dptr(&gud), n, f).unwrap();
    check("swiglu fwd", &from_bf(&g.download(&a).unwrap()), &swiglu::swiglu_ref(&gate, &up), 1e-2);
    let da = round_bf(&randn(&mut rng, n * f, 1.0));
    let (dg, du) = swiglu::swiglu_backward_ref(&da, &gate, &up);
    let dad = g.upload(&to_bf(&da)).unwrap();
    let dgu = g.zeros::<u16>(n * 2 * f).unwrap();
    g.swiglu_bwd(dptr(&dgu), dptr(&dad), dptr(&gud), n, f).unwrap();
    let got = from_bf(&g.download(&dgu).unwrap());
    let (gg, gu_): (Vec<f32>, Vec<f32>) = (
        (0..n).flat_map(|r| got[r * 2 * f..r * 2 * f + f].to_vec()).collect(),
        (0..n).flat_map(|r| got[r * 2 * f + f..(r + 1) * 2 * f].to_vec()).collect(),
    );
    check("swiglu bwd dg", &gg, &dg, 1e-2);
    check("swiglu bwd du", &gu_, &du, 1e-2);
}

#[test]
fn gemm_all_transposes() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    let (m, n, k) = (37, 29, 48);
    use kernels::ops::matmul::{MmShape, Tr, matmul_ref};
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = round_bf(&randn(&mut rng, m * k, 1.0));
        let b = round_bf(&randn(&mut rng, k * n, 1.0));
        let c0 = randn(&mut rng, m * n, 1.0);
        let mut want = c0.clone();
        let t = |x: bool| if x { Tr::T } else { Tr::N };
        matmul_ref(&mut want, &a, t(ta), &b, t(tb), MmShape { m, k, n }, true);
        let (ad, bd) = (g.upload(&to_bf(&a)).unwrap(), g.upload(&to_bf(&b)).unwrap());
        let c = g.upload(&c0).unwrap();
        g.gemm(dptr(&c), true, dptr(&ad), ta, dptr(&bd), tb, m, n, k, 1.0).unwrap();
        check(&format!("gemm f32 out ta={ta} tb={tb}"), &g.download(&c).unwrap(), &want, 1e-5);
        let cb = g.zeros::<u16>(m * n).unwrap();
        g.gemm(dptr(&cb), false, dptr(&ad), ta, dptr(&bd), tb, m, n, k, 0.0).unwrap();
        let mut want0 = vec![0.0; m * n];
        matmul_ref(&mut want0, &a, t(ta), &b, t(tb), MmShape { m, k, n }, false);
        check(&format!("gemm bf16 out ta={ta} tb={tb}"), &from_bf(&g.download(&cb).unwrap()), &want0, 1e-2);
    }
}

/// Attention forward and backward, every implementation, against the CPU reference on packed
/// rows of uneven lengths (partial tiles, rows longer than one tile) with grouped-query heads.
#[test]
fn attention_forward_and_backward() {
    let Some(g) = gpu() else { return };
    for (hd, hq, hkv, lens) in [
        (64usize, 4usize, 2usize, vec![1usize, 70, 130, 64]),
        (32, 6, 3, vec![17, 65]),
        (128, 2, 1, vec![100, 3]),
        (48, 2, 2, vec![20, 33]),
        // No groups (dK/dV straight into dqkv), and a long row: many tiles through the
        // double-buffered pipelines, in heaviest-first order next to short rows.
        (64, 2, 2, vec![5, 300, 64]),
        (128, 4, 4, vec![129, 2]),
        (32, 8, 2, vec![450, 1, 63]),
    ] {
        let mut rng = Rng::new(hd as u64 * 7 + hq as u64);
        let spans = spans_of(lens.iter().copied());
        let n: usize = lens.iter().sum();
        let (qd, kvd) = (hq * hd, hkv * hd);
        let s = qd + 2 * kvd;
        let q = round_bf(&randn(&mut rng, n * qd, 1.0));
        let k = round_bf(&randn(&mut rng, n * kvd, 1.0));
        let v = round_bf(&randn(&mut rng, n * kvd, 1.0));
        let sh = attention::AttnShape { heads: hq, kv_heads: hkv, head_dim: hd };
        let (out_want, probs) = attention::attention_ref(&q, &k, &v, &spans, sh);
        let qkv: Vec<f32> = (0..n).flat_map(|t| {
            let mut r = q[t * qd..(t + 1) * qd].to_vec();
            r.extend_from_slice(&k[t * kvd..(t + 1) * kvd]);
            r.extend_from_slice(&v[t * kvd..(t + 1) * kvd]);
            r
        }).collect();
        let rows = PackedRows::new(&g, &spans).unwrap();
        let qkvd = g.upload(&to_bf(&qkv)).unwrap();
        let dout = round_bf(&randn(&mut rng, n * qd, 1.0));
        let (dq_w, dk_w, dv_w) = attention::attention_backward_ref(&dout, &q, &k, &v, &probs, &spans, sh);
        for imp in [AttnImpl::Simple, AttnImpl::Fa2, AttnImpl::Auto] {
            let what = format!("attention hd={hd} hq={hq} hkv={hkv} lens={lens:?} {imp:?}");
            let out = g.zeros::<u16>(n * qd).unwrap();
            let lse = g.zeros::<f32>(hq * n).unwrap();
            g.attention_fwd(dptr(&out), dptr(&lse), dptr(&qkvd), &rows, hq, hkv, hd, imp).unwrap();
            let out_h = from_bf(&g.download(&out).unwrap());
            check(&format!("{what} fwd"), &out_h, &out_want, 1e-2);
            let doutd = g.upload(&to_bf(&dout)).unwrap();
            let dqkv = g.upload(&vec![bf(f32::NAN); n * s]).unwrap();
            let dsum = g.zeros::<f32>(hq * n).unwrap();
            g.attention_bwd(dptr(&dqkv), dptr(&dsum), dptr(&doutd), dptr(&out), dptr(&qkvd), dptr(&lse), &rows, hq, hkv, hd, imp).unwrap();
            let got = from_bf(&g.download(&dqkv).unwrap());
            let part = |c0: usize, w: usize| -> Vec<f32> { (0..n).flat_map(|t| got[t * s + c0..t * s + c0 + w].to_vec()).collect() };
            check(&format!("{what} dq"), &part(0, qd), &dq_w, 2e-2);
            check(&format!("{what} dk"), &part(qd, kvd), &dk_w, 2e-2);
            check(&format!("{what} dv"), &part(qd + kvd, kvd), &dv_w, 2e-2);
        }
    }
}

#[test]
fn logprob_and_its_gradient() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(6);
    let (n, v) = (33, 3001);
    let logits = randn(&mut rng, n * v, 3.0);
    let targets: Vec<i32> = (0..n).map(|i| if i % 5 == 4 { -100 } else { (rng.next_u64() % v as u64) as i32 }).collect();
    let coef = randn(&mut rng, n, 1.0);
    let want = kernels::ops::loss::token_logprobs_ref(&logits, v, &targets);
    let dwant = kernels::ops::loss::logprob_backward_ref(&logits, v, &targets, &coef);
    let (ld, td, cd) = (g.upload(&logits).unwrap(), g.upload(&targets).unwrap(), g.upload(&coef).unwrap());
    let lp = g.zeros::<f32>(n).unwrap();
    let dl = g.zeros::<u16>(n * v).unwrap();
    g.logprob(dptr(&lp), Some(dptr(&dl)), dptr(&ld), dptr(&td), dptr(&cd), n, v).unwrap();
    check("log-probs", &g.download(&lp).unwrap(), &want, 1e-5);
    check("log-prob gradient", &from_bf(&g.download(&dl).unwrap()), &dwant, 1e-2);
}

#[test]
fn sampling_matches_the_reference_rule() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(7);
    let (b, v) = (64, 5000);
    let logits = randn(&mut rng, b * v, 3.0);
    let uni: Vec<f32> = (0..b).map(|_| rng.uniform() as f32).collect();
    let (ld, ud) = (g.upload(&logits).unwrap(), g.upload(&uni).unwrap());
    let out = g.zeros::<i32>(b).unwrap();
    g.sample_rows(dptr(&out), dptr(&ld), dptr(&ud), b, v, 1.0, 1.0, true).unwrap();
    let greedy = g.download(&out).unwrap();
    for r in 0..b {
        assert_eq!(greedy[r] as u32, kernels::generate::argmax(&logits[r * v..(r + 1) * v]), "greedy row {r}");
    }
    for (t, p) in [(1.0f32, 0.9f32), (0.7, 1.0), (1.3, 0.5)] {
        g.sample_rows(dptr(&out), dptr(&ld), dptr(&ud), b, v, t, p, false).unwrap();
        let got = g.download(&out).unwrap();
        let same = (0..b).filter(|&r| got[r] as u32 == kernels::cuda::sample_top_p_ref(&logits[r * v..(r + 1) * v], uni[r], t, p)).count();
        eprintln!("sampling T={t} top_p={p}: {same}/{b} rows equal to the reference");
        assert!(same >= b - 1, "T={t} top_p={p}: only {same}/{b} rows agree with the reference");
    }
}

fn tiny_config(hd: usize, tie: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300, hidden_size: 4 * hd, intermediate_size: 136, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, head_dim: hd, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 256,
        tie_word_embeddings: tie, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head: Head::LanguageModel,
    }
}

fn batch(rng: &mut Rng, lens: &[usize], vocab: usize) -> (Vec<Vec<u32>>, Vec<Vec<i32>>, Vec<Vec<f32>>) {
    let rows: Vec<Vec<u32>> = lens.iter().map(|&l| (0..l).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()).collect();
    let targets = rows.iter().map(|r| {
        let mut t: Vec<i32> = r[1..].iter().map(|&x| x as i32).collect();
        t.push(-100);
        t
    }).collect::<Vec<_>>();
    let scored: usize = targets.iter().flatten().filter(|&&t| t >= 0).count();
    let weights = targets.iter().map(|t| t.iter().map(|&x| if x >= 0 { 1.0 / scored as f32 } else { 0.0 }).collect()).collect();
    (rows, targets, weights)
}

/// The whole model: logits, loss, every parameter's gradient, and an AdamW step, against the
/// CPU engine, for head sizes with (32, 64) and without (24) tensor-core attention, tied and
/// untied heads.
#[test]
fn model_logits_gradients_and_adamw_match_the_cpu() {
    let Some(g) = gpu() else { return };
    for (hd, tie) in [(32usize, false), (64, true), (24, false)] {
        let mut rng = Rng::new(100 + hd as u64);
        let cpu = Llama::new_random(tiny_config(hd, tie), 11);
        let dev = GpuLlama::from_cpu(g.clone(), &cpu).unwrap();
        let (rows, targets, weights) = batch(&mut rng, &[9, 130, 1, 64], 300);
        let want = cpu.logits(&rows).unwrap();
        let got = dev.logits(&rows).unwrap();
        check(&format!("model hd={hd} tie={tie} logits"), &got.concat(), &want.concat(), 3e-2);
        let lp_want = cpu.token_logprobs(&rows).unwrap();
        let lp_got = dev.token_logprobs(&rows).unwrap();
        check(&format!("model hd={hd} log-probs"), &lp_got.concat(), &lp_want.concat(), 3e-2);
        let (loss_w, grads_w) = cpu.weighted_nll_grads(&rows, &targets, &weights).unwrap();
        let (loss_g, grads_g) = dev.weighted_nll_grads(&rows, &targets, &weights).unwrap();
        eprintln!("model hd={hd}: loss cpu {loss_w} gpu {loss_g}");
        assert!((loss_w - loss_g).abs() < 1e-2 * loss_w.abs());
        for (spec, (a, b)) in cpu.specs().iter().zip(grads_g.tensors.iter().zip(&grads_w.tensors)) {
            check(&format!("model hd={hd} tie={tie} grad {}", spec.name), a, b, 5e-2);
        }
        // One AdamW step from the same gradients: weights move the same way.
        let mut cpu2 = cpu.clone();
        let mut opt = kernels::optim::AdamW::new(kernels::optim::AdamWConfig::llama2(0.1), &cpu2);
        let mut gcpu = grads_w.clone();
        let norm_w = kernels::optim::clip_grad_norm(&mut gcpu, 0.5);
        opt.update(&mut cpu2, &gcpu, 1e-3).unwrap();
        let mut dev2 = dev;
        let mut gopt = GpuAdamW::new(kernels::optim::AdamWConfig::llama2(0.1), &dev2).unwrap();
        // The device gradients are the GPU's own; the update rule is what is compared.
        let norm_g = gopt.update(&mut dev2, 1e-3, Some(0.5)).unwrap();
        assert!((norm_w - norm_g).abs() < 5e-2 * norm_w, "grad norm cpu {norm_w} gpu {norm_g}");
        let mut back = cpu.clone();
        dev2.download_into(&mut back).unwrap();
        let delta_w: Vec<f32> = cpu2.params().concat().iter().zip(cpu.params().concat()).map(|(a, b)| a - b).collect();
        let delta_g: Vec<f32> = back.params().concat().iter().zip(cpu.params().concat()).map(|(a, b)| a - b).collect();
        check(&format!("model hd={hd} AdamW step"), &delta_g, &delta_w, 5e-2);
    }
}

/// Training on the device is deterministic: two runs from the same start give bit-identical
/// weights; and the loss falls.
#[test]
fn training_is_deterministic_and_learns() {
    let Some(g) = gpu() else { return };
    let cpu = Llama::new_random(tiny_config(32, false), 5);
    let mut rng = Rng::new(9);
    let (rows, targets, weights) = batch(&mut rng, &[64, 64, 40], 300);
    let micro = vec![kernels::optim::LmMicroBatch { rows, targets, weights }];
    let run = || {
        let mut m = GpuLlama::from_cpu(g.clone(), &cpu).unwrap();
        let mut opt = GpuAdamW::new(kernels::optim::AdamWConfig::llama2(0.1), &m).unwrap();
        let losses: Vec<f32> = (0..20).map(|_| kernels::cuda::model::lm_train_step(&mut m, &mut opt, &micro, 3e-3, Some(1.0)).unwrap().loss).collect();
        let mut out = cpu.clone();
        m.download_into(&mut out).unwrap();
        (losses, out.params().concat())
    };
    let (l1, p1) = run();
    let (l2, p2) = run();
    eprintln!("losses: {:?}", l1);
    assert_eq!(p1, p2, "two runs gave different weights");
    assert_eq!(l1, l2);
    assert!(l1[19] < l1[0] - 0.5, "loss did not fall: {l1:?}");
}

/// Greedy generation on the device: every token is the arg-max of the CPU model's logits at
/// that point, up to bf16 rounding (near-ties may differ).
#[test]
fn greedy_decoding_agrees_with_the_cpu_model() {
    let Some(g) = gpu() else { return };
    let cpu = Llama::new_random(tiny_config(64, true), 21);
    let dev = GpuLlama::from_cpu(g.clone(), &cpu).unwrap();
    let prompts = vec![vec![1u32, 5, 9], vec![7u32; 20], vec![3u32]];
    let params = kernels::generate::SamplingParams { max_new_tokens: 12, temperature: 0.0, top_p: 1.0, seed: 0 };
    let (out, _) = dev.generate(&prompts, &[0, 1, 2], &params, &[]).unwrap();
    for (r, (p, o)) in prompts.iter().zip(&out).enumerate() {
        assert_eq!(o.len(), 12, "row {r}");
        let full: Vec<u32> = p.iter().chain(o).copied().collect();
        let logits = cpu.logits(&[full.clone()]).unwrap().remove(0);
        let v = cpu.config.vocab_size;
        for (i, &t) in o.iter().enumerate() {
            let row = &logits[(p.len() - 1 + i) * v..(p.len() + i) * v];
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let spread = row.iter().map(|x| (x - best).abs()).fold(0.0f32, f32::max);
            assert!(row[t as usize] >= best - 0.02 * spread.max(1.0), "row {r} token {i}: picked {t} with logit {} vs max {best}", row[t as usize]);
        }
    }
    // Sampling runs and respects EOS.
    let params = kernels::generate::SamplingParams { max_new_tokens: 30, temperature: 1.0, top_p: 0.9, seed: 4 };
    let (out, _) = dev.generate(&prompts, &[0, 1, 2], &params, &[5]).unwrap();
    for o in &out {
        assert!(!o.is_empty() && o.len() <= 30);
        assert!(o[..o.len() - 1].iter().all(|&t| t != 5), "tokens after EOS");
    }
}

/// The device-neutral trainer (`kernels::device::LmTrainer`, what the training stages use): on
/// the GPU it follows the CPU trainer's loss curve and weight updates within bf16 rounding, and
/// handing its state back to the CPU (as a checkpoint does) and resuming from it continues
/// bit-identically.
#[test]
fn device_trainer_matches_the_cpu_trainer_and_resumes_exactly() {
    use kernels::device::{Device, LmTrainer};
    use kernels::optim::{AdamW, AdamWConfig, LmMicroBatch};
    if gpu().is_none() {
        return;
    }
    let dev = Device::cuda(0).unwrap();
    let start = Llama::new_random(tiny_config(64, false), 17);
    let mut rng = Rng::new(23);
    // Three batches, each seen four times: learnable, so the loss falls.
    let batches: Vec<Vec<LmMicroBatch>> = (0..3)
        .map(|_| {
            let (rows, targets, weights) = batch(&mut rng, &[64, 50, 30], 300);
            vec![LmMicroBatch { rows, targets, weights }]
        })
        .collect();
    let steps: Vec<Vec<LmMicroBatch>> = (0..12).map(|i| batches[i % 3].clone()).collect();
    let run = |device: &Device, handover_at: Option<usize>| -> (Vec<f32>, Llama, AdamW) {
        let mut m = start.clone();
        let mut o = AdamW::new(AdamWConfig::llama2(0.1), &m);
        let mut t = LmTrainer::new(device, &m, &o).unwrap();
        let mut losses = vec![];
        for (i, micro) in steps.iter().enumerate() {
            if handover_at == Some(i) {
                t.sync(&mut m, &mut o).unwrap();
                t = LmTrainer::new(device, &m, &o).unwrap();
            }
            losses.push(t.step(&mut m, &mut o, micro, 3e-3, Some(1.0), 1).unwrap().loss);
        }
        t.sync(&mut m, &mut o).unwrap();
        (losses, m, o)
    };
    let (loss_cpu, m_cpu, _) = run(&Device::Cpu, None);
    let (loss_gpu, m_gpu, o_gpu) = run(&dev, None);
    eprintln!("trainer losses cpu {loss_cpu:?}\ntrainer losses gpu {loss_gpu:?}");
    for (s, (a, b)) in loss_cpu.iter().zip(&loss_gpu).enumerate() {
        assert!((a - b).abs() < 2e-2 * a.abs().max(1.0), "step {s}: loss cpu {a} gpu {b}");
    }
    assert!(loss_gpu[11] < loss_gpu[0], "the loss did not fall: {loss_gpu:?}");
    let w0 = start.params().concat();
    let delta = |m: &Llama| -> Vec<f32> { m.params().concat().iter().zip(&w0).map(|(a, b)| a - b).collect() };
    check("trainer: weight change after 12 steps", &delta(&m_gpu), &delta(&m_cpu), 1e-1);
    let (loss_res, m_res, o_res) = run(&dev, Some(6));
    assert_eq!(loss_gpu, loss_res, "resuming from the handed-back state changed the losses");
    assert_eq!(m_gpu.params().concat(), m_res.params().concat(), "resuming changed the weights");
    assert_eq!(o_gpu.moments(), o_res.moments(), "resuming changed the optimiser state");
    assert_eq!(o_gpu.step, o_res.step);
}
