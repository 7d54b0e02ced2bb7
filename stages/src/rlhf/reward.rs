//! Reward arithmetic of Llama 2 §3.2.2-3.2.3, as plain functions over slices so that tests
//! can compare them with direct formulas: the margin table (Table 27), the safety-gated
//! combined reward, `logit` and whitening (`R̃c = whiten(logit(Rc))`), the per-token KL
//! penalty, and generalised advantage estimation.

/// Which margin `m(rating)` the pairwise loss subtracts (Table 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginTable {
    /// m = 0 for every rating: the plain binary ranking loss.
    None,
    /// 1, 2/3, 1/3, 0.
    Small,
    /// 3, 2, 1, 0.
    Large,
}

impl MarginTable {
    pub fn parse(s: &str) -> Option<MarginTable> {
        match s {
            "none" => Some(MarginTable::None),
            "small" => Some(MarginTable::Small),
            "large" => Some(MarginTable::Large),
            _ => None,
        }
    }

    /// The margin for a rating given as its level (3 significantly better .. 0 negligibly).
    pub fn margin(self, level: i32) -> f32 {
        let level = level.clamp(0, 3) as f32;
        match self {
            MarginTable::None => 0.0,
            MarginTable::Small => level / 3.0,
            MarginTable::Large => level,
        }
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// log(p / (1 - p)), with p clamped to [eps, 1 - eps] so a saturated score stays finite.
pub fn logit(p: f32, eps: f32) -> f32 {
    let p = p.clamp(eps, 1.0 - eps);
    (p / (1.0 - p)).ln()
}

/// The reward models' scores for one (prompt, answer), read as probabilities (sigmoid of the
/// scalar head), and the prompt's `is_safety` tag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardInputs {
    pub helpfulness: f32,
    /// `None` when no safety model is wired: the helpfulness score is then used everywhere.
    pub safety: Option<f32>,
    pub is_safety: bool,
}

/// Llama 2's combined reward Rc (a probability): the safety score if the prompt is tagged
/// `is_safety` or the safety score is below `threshold` (0.15 in the paper), else the
/// helpfulness score.
pub fn combined_reward(x: RewardInputs, threshold: f32) -> f32 {
    match x.safety {
        Some(s) if x.is_safety || s < threshold => s,
        _ => x.helpfulness,
    }
}

/// Whitening: (x - mean) / (std + eps) over the batch (population std). A batch of one, or of
/// equal values, becomes zeros.
pub fn whiten(xs: &[f32], eps: f32) -> Vec<f32> {
    if xs.is_empty() {
        return Vec::new();
    }
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    xs.iter().map(|&x| ((x as f64 - mean) / (std + eps as f64)) as f32).collect()
}

/// The PPO reward of a batch of answers: `whiten(logit(Rc))`, one value per answer.
pub fn ppo_sequence_rewards(inputs: &[RewardInputs], threshold: f32) -> Vec<f32> {
    let l: Vec<f32> = inputs.iter().map(|&x| logit(combined_reward(x, threshold), 1e-6)).collect();
    whiten(&l, 1e-8)
}

/// Per-token rewards of one answer of T tokens: `-beta · (log π(a_t) - log π0(a_t))` at every
/// token (the sample estimate of the per-token KL to the initial policy), plus the sequence
/// reward at the last token.
pub fn token_rewards(logp: &[f32], logp_ref: &[f32], beta: f32, sequence_reward: f32) -> Vec<f32> {
    let mut r: Vec<f32> = logp.iter().zip(logp_ref).map(|(a, b)| -beta * (a - b)).collect();
    if let Some(last) = r.last_mut() {
        *last += sequence_reward;
    }
    r
}

/// Generalised advantage estimation over one answer (Schulman et al. 2016): with
/// `δ_t = r_t + γ V_{t+1} - V_t` (V after the last token is 0), `A_t = Σ_k (γλ)^k δ_{t+k}`;
/// returns are `A_t + V_t`. Returns (advantages, returns), each of length T.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> (Vec<f32>, Vec<f32>) {
    let t = rewards.len();
    let mut adv = vec![0.0f32; t];
    let mut next_adv = 0.0f32;
    for i in (0..t).rev() {
        let next_v = if i + 1 < t { values[i + 1] } else { 0.0 };
        let delta = rewards[i] + gamma * next_v - values[i];
        next_adv = delta + gamma * lambda * next_adv;
        adv[i] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// The median of `xs` (mean of the two middle values for an even count); NaN for none.
pub fn median(xs: &[f32]) -> f32 {
    if xs.is_empty() {
        return f32::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// The index of the largest value, the first on ties; None for an empty slice.
pub fn argmax(xs: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        if best.is_none_or(|b| x > xs[b]) {
            best = Some(i);
        }
    }
    best
}

/// ln C(n, k), summed term by term (exact enough for weights: n is a sample count).
fn ln_choose(n: usize, k: usize) -> f64 {
    if k > n {
        return f64::NEG_INFINITY;
    }
    // C(n, k) = C(n, k') with k' = min(k, n - k) = prod over j = 1..=k' of (n - k' + j) / j.
    let k = k.min(n - k);
    (1..=k).map(|j| ((n - k + j) as f64 / j as f64).ln()).sum()
}

/// The mean of `value[pick]` over every `k`-subset of the samples, where `pick` is the subset's
/// highest `reward` (the earliest sample on ties, as [`argmax`]): the expected outcome of
/// best-of-k when k of the samples are drawn, with no dependence on which k were drawn first.
/// Sorted ascending by reward, the sample at rank i (0-based) is the pick of C(i, k-1) of the
/// C(n, k) subsets. NaN when `k` is 0 or more than the samples.
pub fn expected_best_of(reward: &[f32], value: &[f32], k: usize) -> f64 {
    let n = reward.len();
    if k == 0 || k > n || value.len() != n {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Ascending reward; among equal rewards the earlier sample ranks higher (wins the argmax).
    order.sort_by(|&a, &b| reward[a].total_cmp(&reward[b]).then(b.cmp(&a)));
    let total = ln_choose(n, k);
    order.iter().enumerate().filter(|(rank, _)| *rank + 1 >= k).map(|(rank, &i)| value[i] as f64 * (ln_choose(rank, k - 1) - total).exp()).sum()
}

/// The mean of the median (as [`median`]) of `values` over every `k`-subset: the m-th smallest
/// of a subset is the value at sorted rank j in C(j, m-1) C(n-1-j, k-m) of the C(n, k) subsets.
/// NaN when `k` is 0 or more than the values.
pub fn expected_median(values: &[f32], k: usize) -> f64 {
    let n = values.len();
    if k == 0 || k > n {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let total = ln_choose(n, k);
    let order_stat = |m: usize| -> f64 {
        (m - 1..=n - 1 - (k - m)).map(|j| v[j] as f64 * (ln_choose(j, m - 1) + ln_choose(n - 1 - j, k - m) - total).exp()).sum()
    };
    if k % 2 == 1 { order_stat(k / 2 + 1) } else { 0.5 * (order_stat(k / 2) + order_stat(k / 2 + 1)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every k-subset of 0..n (as index lists), for brute-force checks.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n).filter(|m| m.count_ones() as usize == k).map(|m| (0..n).filter(|i| m >> i & 1 == 1).collect()).collect()
    }

    #[test]
    fn subset_expectations_equal_brute_force_over_every_subset() {
        let mut rng = datasets::world::Rng::for_key(7, "subsets", 0);
        for case in 0..40 {
            let n = 1 + case % 9;
            // Coarse values so that ties occur.
            let reward: Vec<f32> = (0..n).map(|_| (rng.below(5) as f32) / 4.0).collect();
            let value: Vec<f32> = (0..n).map(|_| rng.below(100) as f32 / 100.0).collect();
            for k in 1..=n {
                let subs = subsets(n, k);
                let best = subs.iter().map(|s| {
                    let r: Vec<f32> = s.iter().map(|&i| reward[i]).collect();
                    value[s[argmax(&r).unwrap()]] as f64
                }).sum::<f64>() / subs.len() as f64;
                let med = subs.iter().map(|s| median(&s.iter().map(|&i| value[i]).collect::<Vec<_>>()) as f64).sum::<f64>() / subs.len() as f64;
                let (eb, em) = (expected_best_of(&reward, &value, k), expected_median(&value, k));
                assert!((eb - best).abs() < 1e-9, "n {n} k {k}: best-of {eb} vs brute force {best}");
                assert!((em - med).abs() < 1e-6, "n {n} k {k}: median {em} vs brute force {med}");
            }
        }
        assert!(expected_best_of(&[1.0], &[1.0], 2).is_nan());
        assert!(expected_median(&[], 1).is_nan());
    }

    /// A small deterministic generator for the randomized checks.
    fn lcg(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32) / (1u64 << 24) as f32
    }

    #[test]
    fn margin_tables_match_table_27() {
        let levels = [3, 2, 1, 0];
        let small: Vec<f32> = levels.iter().map(|&l| MarginTable::Small.margin(l)).collect();
        let large: Vec<f32> = levels.iter().map(|&l| MarginTable::Large.margin(l)).collect();
        assert_eq!(large, vec![3.0, 2.0, 1.0, 0.0]);
        for (got, want) in small.iter().zip([1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]) {
            assert!((got - want).abs() < 1e-6);
        }
        assert!(levels.iter().all(|&l| MarginTable::None.margin(l) == 0.0));
        assert_eq!(MarginTable::parse("large"), Some(MarginTable::Large));
        assert_eq!(MarginTable::parse("huge"), None);
    }

    /// The combined reward against the paper's formula written out directly, on random inputs.
    #[test]
    fn combined_reward_equals_the_direct_formula() {
        let mut s = 7u64;
        for _ in 0..2000 {
            let h = lcg(&mut s);
            let sf = lcg(&mut s);
            let tag = lcg(&mut s) < 0.3;
            let direct = if tag || sf < 0.15 { sf } else { h };
            let got = combined_reward(RewardInputs { helpfulness: h, safety: Some(sf), is_safety: tag }, 0.15);
            assert_eq!(got, direct);
            // Without a safety model the helpfulness score is used everywhere.
            assert_eq!(combined_reward(RewardInputs { helpfulness: h, safety: None, is_safety: tag }, 0.15), h);
        }
        // And the whitened-logit pipeline equals its formula.
        let inputs: Vec<RewardInputs> =
            (0..50).map(|_| RewardInputs { helpfulness: lcg(&mut s), safety: Some(lcg(&mut s)), is_safety: lcg(&mut s) < 0.5 }).collect();
        let got = ppo_sequence_rewards(&inputs, 0.15);
        let l: Vec<f64> = inputs
            .iter()
            .map(|x| {
                let p = if x.is_safety || x.safety.unwrap() < 0.15 { x.safety.unwrap() } else { x.helpfulness } as f64;
                (p / (1.0 - p)).ln()
            })
            .collect();
        let mean = l.iter().sum::<f64>() / l.len() as f64;
        let std = (l.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / l.len() as f64).sqrt();
        for (g, x) in got.iter().zip(&l) {
            assert!((*g as f64 - (x - mean) / std).abs() < 1e-3, "{g} vs {}", (x - mean) / std);
        }
    }

    #[test]
    fn whitening_gives_zero_mean_unit_variance() {
        let w = whiten(&[1.0, 2.0, 3.0, 10.0], 1e-8);
        let mean: f32 = w.iter().sum::<f32>() / 4.0;
        let var: f32 = w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "{mean} {var}");
        assert_eq!(whiten(&[5.0], 1e-8), vec![0.0]);
    }

    #[test]
    fn logit_inverts_sigmoid_and_stays_finite() {
        for x in [-5.0f32, -0.3, 0.0, 2.5] {
            assert!((logit(sigmoid(x), 1e-7) - x).abs() < 1e-3);
        }
        assert!(logit(1.0, 1e-6).is_finite() && logit(0.0, 1e-6).is_finite());
    }

    /// GAE against its definition as a double sum, on random inputs.
    #[test]
    fn gae_equals_the_explicit_sum() {
        let mut s = 3u64;
        for len in [1usize, 2, 5, 17] {
            let r: Vec<f32> = (0..len).map(|_| lcg(&mut s) - 0.5).collect();
            let v: Vec<f32> = (0..len).map(|_| lcg(&mut s)).collect();
            let (gamma, lambda) = (0.9f32, 0.95f32);
            let (adv, ret) = gae(&r, &v, gamma, lambda);
            for t in 0..len {
                let mut a = 0.0f64;
                for k in t..len {
                    let next_v = if k + 1 < len { v[k + 1] } else { 0.0 };
                    let delta = r[k] as f64 + gamma as f64 * next_v as f64 - v[k] as f64;
                    a += ((gamma * lambda) as f64).powi((k - t) as i32) * delta;
                }
                assert!((adv[t] as f64 - a).abs() < 1e-5, "len {len} t {t}");
                assert!((ret[t] - adv[t] - v[t]).abs() < 1e-6);
            }
        }
        // λ = 1, γ = 1: the advantage is the reward-to-go minus the value.
        let (adv, _) = gae(&[1.0, 2.0, 3.0], &[0.5, 0.5, 0.5], 1.0, 1.0);
        assert_eq!(adv, vec![5.5, 4.5, 2.5]);
    }

    #[test]
    fn token_rewards_put_the_score_on_the_last_token() {
        let r = token_rewards(&[-1.0, -2.0], &[-1.5, -1.0], 0.1, 2.0);
        assert!((r[0] - (-0.05)).abs() < 1e-6 && (r[1] - (0.1 + 2.0)).abs() < 1e-6);
    }

    #[test]
    fn median_and_argmax() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 0.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
