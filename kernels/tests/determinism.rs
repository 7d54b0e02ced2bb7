//! Training is deterministic: the same seed gives bit-identical weights after several AdamW
//! steps with gradient accumulation and clipping, whether the step runs on 1, 2 or 3 threads.
//! Also: gradient accumulation over micro-batches equals one big batch (to rounding), the
//! optimiser state round-trips through tensors, and a few steps lower the loss (LM and
//! pairwise reward), and the baseline and AVX2 builds of the elementwise kernels agree.

use kernels::config::{Head, LlamaConfig};
use kernels::model::{Grads, Llama};
use kernels::optim::{AdamW, AdamWConfig, lm_train_step, lm_train_step_sharded, mean_ce_micro_batches};
use kernels::rng::Rng;
use kernels::schedule::Schedule;

fn config(head: Head) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 97, hidden_size: 128, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, head_dim: 32, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 128,
        tie_word_embeddings: false, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head,
    }
}

/// Rows of random lengths drawn from a toy "language" (next token = previous + 1 mod 97 most
/// of the time) so that training has something to learn; targets skip the first 2 positions.
fn data(seed: u64, rows: usize) -> (Vec<Vec<u32>>, Vec<Vec<i32>>) {
    let mut r = Rng::new(seed);
    let mut xs = Vec::new();
    let mut ts = Vec::new();
    for _ in 0..rows {
        let len = 20 + (r.next_u64() % 50) as usize;
        let mut row = vec![(r.next_u64() % 97) as u32];
        while row.len() < len {
            let prev = *row.last().unwrap();
            row.push(if r.uniform() < 0.9 { (prev + 1) % 97 } else { (r.next_u64() % 97) as u32 });
        }
        let t: Vec<i32> = (0..len).map(|i| if i < 2 || i + 1 == len { -100 } else { row[i + 1] as i32 }).collect();
        xs.push(row);
        ts.push(t);
    }
    (xs, ts)
}

fn train(threads: usize, steps: u64) -> (Llama, Vec<f32>) {
    train_sharded(threads, steps, 1)
}

fn train_sharded(threads: usize, steps: u64, shards: usize) -> (Llama, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut model = Llama::new_random(config(Head::LanguageModel), 42);
        let mut opt = AdamW::new(AdamWConfig::llama2(0.1), &model);
        let sched = Schedule::Cosine { warmup_steps: 2, total_steps: steps, floor: 0.1 };
        let mut losses = Vec::new();
        for step in 0..steps {
            let (rows, targets) = data(step, 8);
            let micro = mean_ce_micro_batches(&rows, &targets, 3);
            let rep = if shards == 1 {
                lm_train_step(&mut model, &mut opt, &micro, sched.lr(3e-3, step), Some(1.0)).unwrap()
            } else {
                lm_train_step_sharded(&mut model, &mut opt, &micro, sched.lr(3e-3, step), Some(1.0), shards).unwrap()
            };
            losses.push(rep.loss);
        }
        (model, losses)
    })
}

#[test]
fn same_seed_bit_identical_weights_on_1_2_and_3_threads() {
    let (m1, l1) = train(1, 4);
    let (m2, l2) = train(2, 4);
    let (m3, _) = train(3, 4);
    assert_eq!(l1, l2, "losses differ between 1 and 2 threads");
    for (i, s) in m1.specs().iter().enumerate() {
        let bits = |m: &Llama| m.params()[i].iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&m1) == bits(&m2), "{} differs between 1 and 2 threads", s.name);
        assert!(bits(&m1) == bits(&m3), "{} differs between 1 and 3 threads", s.name);
    }
    assert_ne!(m1.params(), Llama::new_random(config(Head::LanguageModel), 42).params(), "training moved the weights");
}

/// The elementwise kernels have a baseline, an AVX2+FMA and an AVX-512 version
/// (`simd_kernel!`): all give the same bits, so a run does not depend on the CPU it ran on. (On
/// a CPU without AVX2 or AVX-512 the runs take the widest version it has and the test holds
/// trivially for the others.)
#[test]
fn baseline_avx2_and_avx512_kernels_train_bit_identically() {
    use kernels::ops::{limit_kernels, KernelLevel};
    let mut runs = Vec::new();
    for level in [KernelLevel::Baseline, KernelLevel::Avx2, KernelLevel::Avx512] {
        limit_kernels(level);
        runs.push((level, train(2, 3)));
    }
    limit_kernels(KernelLevel::Avx512);
    let (_, (base, lb)) = &runs[0];
    for (level, (m, l)) in &runs[1..] {
        assert_eq!(lb, l, "losses differ between the baseline and {level:?} kernels");
        for (i, s) in base.specs().iter().enumerate() {
            let bits = |m: &Llama| m.params()[i].iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(base) == bits(m), "{} differs between the baseline and {level:?} kernels", s.name);
        }
    }
}

/// Row shards inside a step: the result depends on the shard count only, not on the threads,
/// and stays within rounding of the unsharded step.
#[test]
fn sharded_steps_are_bit_identical_across_thread_counts() {
    let (a1, l1) = train_sharded(1, 3, 2);
    let (a2, l2) = train_sharded(2, 3, 2);
    let (a3, _) = train_sharded(3, 3, 2);
    assert_eq!(l1, l2);
    assert_eq!(a1.params(), a2.params(), "2 shards: 1 vs 2 threads");
    assert_eq!(a1.params(), a3.params(), "2 shards: 1 vs 3 threads");
    let (u, lu) = train(2, 3);
    for (x, y) in l1.iter().zip(&lu) {
        assert!((x - y).abs() < 1e-4 * y.abs(), "sharded loss {x} vs unsharded {y}");
    }
    let diff: f32 = a1.params().concat().iter().zip(u.params().concat()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-3, "sharded weights drift {diff} from unsharded");
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let model = Llama::new_random(config(Head::LanguageModel), 1);
    let (rows, targets) = data(9, 6);
    let one = mean_ce_micro_batches(&rows, &targets, 6);
    let three = mean_ce_micro_batches(&rows, &targets, 2);
    assert_eq!((one.len(), three.len()), (1, 3));
    let sum = |mbs: &[kernels::optim::LmMicroBatch]| {
        let mut g = Grads::zeros(&model);
        let mut l = 0.0;
        for mb in mbs {
            let (li, gi) = model.weighted_nll_grads(&mb.rows, &mb.targets, &mb.weights).unwrap();
            l += li;
            g.add_assign(&gi);
        }
        (l, g)
    };
    let ((l1, g1), (l3, g3)) = (sum(&one), sum(&three));
    assert!((l1 - l3).abs() < 1e-5 * l1.abs(), "{l1} vs {l3}");
    let (ce, _) = model.cross_entropy_grads(&rows, &targets).unwrap();
    assert!((ce - l1).abs() < 1e-5 * ce.abs(), "mean CE {ce} vs accumulated {l1}");
    for (a, b) in g1.tensors.iter().zip(&g3.tensors) {
        let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        kernels::ops::check_close("accumulated grads", b, a, 1e-5 * scale, 0.0).unwrap();
    }
}

#[test]
fn training_lowers_the_loss() {
    let (_, losses) = train(2, 12);
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f32>() / 3.0;
    assert!(last < first - 0.3, "loss went from {first} to {last}: {losses:?}");
}

#[test]
fn adamw_state_round_trips_and_resumes_identically() {
    let (rows, targets) = data(3, 4);
    let micro = mean_ce_micro_batches(&rows, &targets, 4);
    let mut model = Llama::new_random(config(Head::LanguageModel), 5);
    let mut opt = AdamW::new(AdamWConfig::llama2(0.1), &model);
    lm_train_step(&mut model, &mut opt, &micro, 1e-3, Some(1.0)).unwrap();
    let saved = opt.to_tensors(&model);
    let mut resumed = AdamW::from_tensors(AdamWConfig::llama2(0.1), &model, &saved).unwrap();
    assert_eq!(resumed.step, 1);
    let mut m2 = model.clone();
    lm_train_step(&mut model, &mut opt, &micro, 1e-3, Some(1.0)).unwrap();
    lm_train_step(&mut m2, &mut resumed, &micro, 1e-3, Some(1.0)).unwrap();
    assert_eq!(model.params(), m2.params());
    let mut bad = saved.clone();
    bad.remove("adamw.v.model.norm.weight");
    let err = AdamW::from_tensors(AdamWConfig::llama2(0.1), &model, &bad).unwrap_err().to_string();
    assert!(err.contains("adamw.v.model.norm.weight"), "{err}");
}

#[test]
fn pairwise_reward_training_separates_chosen_from_rejected() {
    let mut model = Llama::new_random(config(Head::Scalar { num_labels: 1 }), 7);
    let mut opt = AdamW::new(AdamWConfig::llama2(0.0), &model);
    // "Chosen" rows count upwards, "rejected" rows repeat one token.
    let chosen: Vec<Vec<u32>> = (0..6).map(|i| (0..12).map(|t| (i + t) % 97).collect()).collect();
    let rejected: Vec<Vec<u32>> = (0..6).map(|i| vec![i * 5 % 97; 10]).collect();
    let margins = vec![0.0; 6];
    let (first, _, _) = model.pairwise_reward_grads(&chosen, &rejected, &margins).unwrap();
    let mut last = first;
    for _ in 0..15 {
        let (l, g, _) = model.pairwise_reward_grads(&chosen, &rejected, &margins).unwrap();
        opt.update(&mut model, &g, 2e-3).unwrap();
        last = l;
    }
    let (_, _, acc) = model.pairwise_reward_grads(&chosen, &rejected, &margins).unwrap();
    assert!(last < first * 0.5, "reward loss {first} -> {last}");
    assert_eq!(acc, 1.0);
}
