//! Generation computed two ways: batched equals row by row (greedy and sampled, with each
//! row's random stream keyed by its row id), and greedy decoding with the KV cache equals the
//! argmax of a full forward recomputation at every step. Also EOS stops, token caps, top-p
//! edge cases, seeds, errors, the bf16-weight option staying close to f32, and sessions (a
//! prompt that extends an earlier prompt and its answer runs only its new tokens) giving what
//! a fresh prefill gives; and top-p sampling, which orders only the likeliest tokens when their
//! mass suffices, equal to sorting the whole vocabulary (and plain sampling at top_p 1 to a walk in
//! id order).

use kernels::config::{Head, LlamaConfig};
use kernels::generate::{DecodeWeights, KvCache, SamplingParams, Session, WeightPrecision, argmax, forward_cached, generate, generate_in_sessions, generate_with, sample};
use kernels::rng::Rng;
use kernels::model::Llama;

fn model() -> Llama {
    let c = LlamaConfig {
        vocab_size: 61, hidden_size: 48, intermediate_size: 80, num_hidden_layers: 2, num_attention_heads: 6,
        num_key_value_heads: 2, head_dim: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 64,
        tie_word_embeddings: true, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head: Head::LanguageModel,
    };
    let mut m = Llama::new_random(c, 11);
    // Larger weights give peaked, varied distributions instead of near-uniform ones.
    for p in m.params_mut() {
        p.iter_mut().for_each(|x| *x *= 20.0);
    }
    m
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 2, 3], vec![40], vec![5, 9, 9, 30, 12, 0, 7], vec![60, 59]]
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_new_tokens: n, temperature: 0.0, top_p: 1.0, seed: 0 }
}

#[test]
fn greedy_with_cache_equals_argmax_of_full_recomputation() {
    let m = model();
    let got = generate(&m, &prompts(), &greedy(10), &[]).unwrap();
    for (p, g) in prompts().iter().zip(&got) {
        let mut seq = p.clone();
        for _ in 0..10 {
            let logits = m.logits(&[seq.clone()]).unwrap().remove(0);
            let v = m.config.vocab_size;
            seq.push(argmax(&logits[logits.len() - v..]));
        }
        assert_eq!(&seq[p.len()..], g.as_slice(), "prompt {p:?}");
    }
}

#[test]
fn batched_equals_row_by_row_greedy_and_sampled() {
    let m = model();
    let dw = DecodeWeights::new(&m, WeightPrecision::F32);
    for params in [greedy(9), SamplingParams { max_new_tokens: 9, temperature: 0.9, top_p: 0.95, seed: 77 }] {
        let ps = prompts();
        let ids: Vec<u64> = (0..ps.len() as u64).map(|i| 100 + i).collect();
        let batched = generate_with(&dw, &ps, &ids, &params, &[]).unwrap();
        for (r, p) in ps.iter().enumerate() {
            let alone = generate_with(&dw, &[p.clone()], &[ids[r]], &params, &[]).unwrap();
            assert_eq!(alone[0], batched[r], "row {r} with {params:?}");
        }
    }
}

#[test]
fn seeds_and_top_p_behave() {
    let m = model();
    // A high temperature flattens these peaked toy distributions so that seeds matter.
    let s = |seed, top_p| SamplingParams { max_new_tokens: 12, temperature: 5.0, top_p, seed };
    let a = generate(&m, &prompts(), &s(1, 1.0), &[]).unwrap();
    assert_eq!(a, generate(&m, &prompts(), &s(1, 1.0), &[]).unwrap(), "same seed, same tokens");
    assert_ne!(a, generate(&m, &prompts(), &s(2, 1.0), &[]).unwrap(), "another seed, other tokens");
    // A nucleus this small holds only the most likely token: sampling is greedy.
    assert_eq!(generate(&m, &prompts(), &s(3, 1e-6), &[]).unwrap(), generate(&m, &prompts(), &greedy(12), &[]).unwrap());
}

#[test]
fn eos_stops_a_row_and_is_included() {
    let m = model();
    let free = generate(&m, &prompts(), &greedy(8), &[]).unwrap();
    let eos = free[2][3];
    let stopped = generate(&m, &prompts(), &greedy(8), &[eos]).unwrap();
    let cut = free[2].iter().position(|&t| t == eos).unwrap();
    assert_eq!(stopped[2], free[2][..=cut].to_vec());
    for (f, s) in free.iter().zip(&stopped) {
        assert!(s.len() <= 8 && f.starts_with(s));
        match f.iter().position(|&t| t == eos) {
            Some(i) => assert_eq!(s.len(), i + 1),
            None => assert_eq!(s, f),
        }
    }
    assert!(generate(&m, &prompts(), &greedy(0), &[]).unwrap().iter().all(|r| r.is_empty()));
}

#[test]
fn bad_prompts_are_errors() {
    let m = model();
    let e = generate(&m, &[vec![1], vec![]], &greedy(3), &[]).unwrap_err().to_string();
    assert!(e.contains("row 1"), "{e}");
    let e = generate(&m, &[vec![1], vec![2, 61]], &greedy(3), &[]).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("61"), "{e}");
    let e = generate(&m, &[vec![1; 60]], &greedy(10), &[]).unwrap_err().to_string();
    assert!(e.contains("64"), "{e}");
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let m = model();
    let (f, b) = (DecodeWeights::new(&m, WeightPrecision::F32), DecodeWeights::new(&m, WeightPrecision::Bf16));
    assert_eq!(f.bytes_per_token(), 2 * b.bytes_per_token());
    let p = [5u32, 9, 9, 30];
    let lf = forward_cached(&f, &[&p], &mut [&mut KvCache::new(2)]).unwrap().remove(0);
    let lb = forward_cached(&b, &[&p], &mut [&mut KvCache::new(2)]).unwrap().remove(0);
    let scale = lf.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    kernels::ops::check_close("bf16 logits", &lb, &lf, 0.03 * scale, 0.0).unwrap();
}

/// Two "turns" per row in one session each: the second prompt is the first prompt, its
/// answer and more tokens. The session runs only the new tokens and gives the tokens a fresh
/// generation from the whole second prompt gives; a prompt that departs from the session
/// keeps the common prefix only.
#[test]
fn sessions_continue_like_fresh_prefills() {
    let m = model();
    let dw = DecodeWeights::new(&m, WeightPrecision::F32);
    let ps = prompts();
    let ids: Vec<u64> = (0..ps.len() as u64).collect();
    for params in [greedy(6), SamplingParams { max_new_tokens: 6, temperature: 0.9, top_p: 0.95, seed: 5 }] {
        let mut sessions = vec![Session::default(); ps.len()];
        let first = generate_in_sessions(&dw, &mut sessions, &ps, &ids, &params, &[]).unwrap();
        assert_eq!(first, generate_with(&dw, &ps, &ids, &params, &[]).unwrap(), "a fresh session is a plain generation");
        for ((s, p), out) in sessions.iter().zip(&ps).zip(&first) {
            let fed: Vec<u32> = p.iter().chain(&out[..out.len() - 1]).copied().collect();
            assert_eq!(s.cached_tokens(), fed.as_slice(), "the session holds the prompt and the answer fed back");
        }
        let second: Vec<Vec<u32>> = ps.iter().zip(&first).map(|(p, out)| p.iter().chain(out).chain(&[7, 8]).copied().collect()).collect();
        let continued = generate_in_sessions(&dw, &mut sessions, &second, &ids, &params, &[]).unwrap();
        assert_eq!(continued, generate_with(&dw, &second, &ids, &params, &[]).unwrap(), "{params:?}");
        // A third prompt sharing only the first two tokens of row 2's history.
        let departed = vec![ps[2][0], ps[2][1], 33, 34];
        let mut one = vec![sessions[2].clone()];
        let got = generate_in_sessions(&dw, &mut one, &[departed.clone()], &[ids[2]], &params, &[]).unwrap();
        assert_eq!(got, generate_with(&dw, &[departed.clone()], &[ids[2]], &params, &[]).unwrap());
        assert_eq!(&one[0].cached_tokens()[..departed.len()], departed.as_slice());
    }
}

/// Decode attention has AVX2 kernels for heads of 32, 64 and 128 values and a plain loop for
/// the rest; both do the same operations in the same order, so forcing the plain loops
/// (`force_baseline_kernels`) changes no bit. (The decode-time projections' AVX2+FMA kernels,
/// `linear_few_rows`, are not under that switch: they fuse multiply-adds, so a CPU without
/// AVX2 decodes with other roundings.)
#[test]
fn baseline_and_avx2_decoding_agree_bit_for_bit() {
    for head_dim in [32, 64] {
        let c = LlamaConfig {
            vocab_size: 61, hidden_size: 2 * head_dim, intermediate_size: 80, num_hidden_layers: 2, num_attention_heads: 2,
            num_key_value_heads: 1, head_dim, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 64,
            tie_word_embeddings: true, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head: Head::LanguageModel,
        };
        // Unscaled random weights: moderate attention scores, so that the last bit of a score
        // reaches the softmax (peaked toy weights would make it one-hot and hide it).
        let m = Llama::new_random(c, 3);
        let dw = DecodeWeights::new(&m, WeightPrecision::F32);
        let ids: Vec<u64> = (0..prompts().len() as u64).collect();
        let params = SamplingParams { max_new_tokens: 20, temperature: 1.0, top_p: 1.0, seed: 9 };
        let logits = |ps: &[u32]| forward_cached(&dw, &[ps], &mut [&mut KvCache::new(2)]).unwrap().remove(0);
        kernels::ops::force_baseline_kernels(true);
        let (base, base_logits) = (generate_with(&dw, &prompts(), &ids, &params, &[]).unwrap(), logits(&prompts()[2]));
        kernels::ops::force_baseline_kernels(false);
        let (fast, fast_logits) = (generate_with(&dw, &prompts(), &ids, &params, &[]).unwrap(), logits(&prompts()[2]));
        assert_eq!(base, fast, "head_dim {head_dim}: tokens");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&base_logits), bits(&fast_logits), "head_dim {head_dim}: logits");
    }
}

/// The obvious sampler: plain (id order) at top_p 1, else sort the whole vocabulary and walk
/// to top_p.
fn sample_by_full_sort(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    let t = params.temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(f64, u32)> = logits.iter().enumerate().map(|(i, &x)| (((x as f64 - max) / t).exp(), i as u32)).collect();
    let z: f64 = probs.iter().map(|p| p.0).sum();
    if params.top_p >= 1.0 {
        let mut u = rng.uniform() * z;
        for &(p, id) in &probs {
            if u < p {
                return id;
            }
            u -= p;
        }
        return probs[probs.len() - 1].1;
    }
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let (mut kept, mut cum) = (0, 0.0);
    for (p, _) in &probs {
        cum += p / z;
        kept += 1;
        if cum >= params.top_p as f64 {
            break;
        }
    }
    let mass: f64 = probs[..kept].iter().map(|p| p.0).sum();
    let mut u = rng.uniform() * mass;
    for &(p, id) in &probs[..kept] {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs[kept - 1].1
}

#[test]
fn sampling_equals_the_obvious_sampler() {
    // Peaked and flat distributions (nucleus inside and far outside the partial sort), ties,
    // tiny vocabularies, and top_p at its ends.
    let mut noise = Rng::new(11);
    for case in 0..400 {
        let vocab = [3, 50, 64, 65, 2000][case % 5];
        let spread = [0.1f32, 1.0, 4.0, 12.0][case / 5 % 4];
        let mut logits: Vec<f32> = (0..vocab).map(|_| (noise.uniform() as f32 - 0.5) * spread).collect();
        if case % 7 == 0 {
            for l in logits.iter_mut().step_by(3) {
                *l = 1.0; // ties, broken by id
            }
        }
        let top_p = [0.0f32, 0.5, 0.9, 0.99, 1.0][case / 20 % 5];
        let params = SamplingParams { max_new_tokens: 1, temperature: [0.6f32, 1.0, 1.3][case % 3], top_p, seed: 0 };
        let (mut a, mut b) = (Rng::new(case as u64), Rng::new(case as u64));
        for draw in 0..20 {
            assert_eq!(sample(&logits, &params, &mut a), sample_by_full_sort(&logits, &params, &mut b), "case {case} draw {draw}");
        }
    }
}

/// Few-row decoding steps run on a team of the pool's threads (`decode_team`), with the
/// features and heads split among them; one thread takes the fork/join path. Every logit must
/// be the same bits on 1, 2 and 3 threads, for f32 and bf16 weights, for single-token steps of
/// several rows and for short prefills (causal attention inside the step), on a shape whose
/// widths are not multiples of the 64-feature blocks.
#[test]
fn decode_team_matches_the_fork_join_path() {
    let c = LlamaConfig {
        vocab_size: 97, hidden_size: 136, intermediate_size: 200, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, head_dim: 34, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 64,
        tie_word_embeddings: false, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head: Head::LanguageModel,
    };
    let m = Llama::new_random(c, 5);
    let run = |threads: usize, precision: WeightPrecision| -> Vec<Vec<u32>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let dw = DecodeWeights::new(&m, precision);
            let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(2)).collect();
            let mut bits = Vec::new();
            // Prefills of 5, 1 and 8 tokens (each at most 8: the team path), then steps of 3 rows.
            for (r, len) in [5usize, 1, 8].into_iter().enumerate() {
                let p: Vec<u32> = (0..len as u32).map(|i| (i * 7 + r as u32 * 13) % 97).collect();
                let out = forward_cached(&dw, &[&p], &mut [&mut caches[r]]).unwrap();
                bits.push(out[0].iter().map(|x| x.to_bits()).collect());
            }
            for step in 0..4u32 {
                let toks: Vec<[u32; 1]> = (0..3u32).map(|r| [(step * 31 + r * 17) % 97]).collect();
                let new: Vec<&[u32]> = toks.iter().map(|t| t.as_slice()).collect();
                let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                for row in forward_cached(&dw, &new, &mut refs).unwrap() {
                    bits.push(row.iter().map(|x| x.to_bits()).collect());
                }
            }
            bits
        })
    };
    for precision in [WeightPrecision::F32, WeightPrecision::Bf16] {
        let one = run(1, precision);
        assert_eq!(one.len(), 15);
        for threads in [2, 3] {
            assert!(one == run(threads, precision), "{threads} threads ({precision:?}) differ from one thread");
        }
    }
}
