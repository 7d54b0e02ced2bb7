//! `ppo` (Llama 2 §3.2.3): proximal policy optimisation against the reward models. Each
//! iteration samples answers to a batch of prompts from the current policy, scores them with
//! the combined reward (the safety model's score if the prompt is `is_safety` or that score is
//! below 0.15, else helpfulness; scores read as probabilities, then logit, then whitening over
//! the batch), subtracts β times the per-token KL to the initial policy, estimates advantages
//! with GAE from a value model (initialised from a reward model), and takes one clipped
//! policy step and one clipped value step per mini-batch. Curves: reward, KL, entropy, clip
//! fraction. Early stopping on the reward of held-out prompts keeps the best policy seen.
//!
//! Shapes: a row is `prompt ids (P) ++ answer ids (T)`; the answer's token j is predicted at
//! packed position P - 1 + j, where also its value V_j (the state before emitting it) is read.

use std::sync::Arc;

use datasets::schema::PromptRow;
use graph::{ArtifactType, ParamSpec, Port, RunCtx, Stage, StageError};
use kernels::generate::SamplingParams;
use kernels::model::{Grads, HeadGrad, Llama};
use kernels::ops::loss::IGNORE;
use kernels::optim::{AdamW, AdamWConfig};

use crate::collect_preferences::write_report;
use crate::common::read_input_table;
use crate::rlhf::policy::{clip_grads, sample_stream, Loaded};
use crate::rlhf::reward::{gae, logit, token_rewards, whiten};
use crate::rlhf::scorer::Scorer;
use crate::train::reduce::{sum_grads, GradPart, GradReduce, ReduceError};

pub struct Ppo;

impl Stage for Ppo {
    fn kind(&self) -> &'static str {
        "ppo"
    }
    fn version(&self) -> u32 {
        // 2: the gold judge grades text glued to an answer's period as text after the sentence (0.85), not as an exact answer.
        // 3: the report says whether the KL budget (`max_kl`) stopped the run.
        3
    }
    fn data_parallel(&self) -> bool {
        true
    }
    fn doc(&self) -> &'static str {
        "Llama 2 PPO: combined safety-gated reward (whiten(logit(Rc))) minus β·per-token KL to the initial policy; value model from a reward model; GAE; clipped policy and value losses over mini-batches; reward/KL/entropy/clip-fraction curves; early stopping on held-out reward (the best policy is kept)."
    }
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("prompts", ArtifactType::Table, "RL prompt table (id, category, is_safety, prompt, judge)"),
            Port::new("policy", ArtifactType::Model, "the policy to improve; also the KL reference π0"),
            Port::new("helpfulness_rm", ArtifactType::Model, "the helpfulness reward model"),
            Port::optional("safety_rm", ArtifactType::Model, "the safety reward model (without it: helpfulness everywhere)"),
            Port::optional("value_init", ArtifactType::Model, "the value model's start (default: the helpfulness reward model)"),
            Port::optional("heldout", ArtifactType::Table, "prompts for early stopping (without: no early stopping)"),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("model", ArtifactType::Model, "the policy after PPO (the best by held-out reward)"),
            Port::new("value", ArtifactType::Model, "the value model after PPO"),
            Port::new("report", ArtifactType::Report, "per-iteration curves (reward, kl, entropy, clip_fraction, losses, gold) and held-out evaluations"),
        ]
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("iterations", 1, 100_000, Some(200), "PPO iterations (the paper: 200-400)"),
            ParamSpec::int("batch_prompts", 1, i64::MAX, Some(512), "prompts (answers) per iteration (the paper: 512)"),
            ParamSpec::int("minibatch", 1, i64::MAX, Some(64), "answers per gradient step; one step per mini-batch (the paper: 64)"),
            ParamSpec::int("ppo_epochs", 1, 100, Some(1), "passes over each iteration's batch (the paper: one step per mini-batch, so 1)"),
            ParamSpec::float("clip", 0.0, 10.0, Some(0.2), "PPO ratio clip ε (the paper: 0.2)"),
            ParamSpec::float("value_clip", 0.0, 100.0, Some(0.2), "value clip around the old values (common practice: = ε)"),
            ParamSpec::float("beta", 0.0, 10.0, Some(0.01), "KL penalty β (the paper: 0.01 for 7B/13B, 0.005 for 34B/70B)"),
            ParamSpec::float("gamma", 0.0, 1.0, Some(1.0), "GAE discount γ (not in the paper; common practice 1)"),
            ParamSpec::float("lambda", 0.0, 1.0, Some(0.95), "GAE λ (not in the paper; common practice 0.95)"),
            ParamSpec::bool("whiten_advantages", Some(true), "whiten advantages over the batch (common practice)"),
            ParamSpec::float("lr", 0.0, 1.0, Some(1e-6), "policy learning rate, constant (the paper: 1e-6)"),
            ParamSpec::float("value_lr", 0.0, 1.0, Some(1e-5), "value-model learning rate, constant (not in the paper)"),
            ParamSpec::float("weight_decay", 0.0, 1.0, Some(0.1), "AdamW weight decay (the paper: 0.1)"),
            ParamSpec::float("grad_clip", 0.0, 1e6, Some(1.0), "global gradient-norm clip (the paper: 1.0)"),
            ParamSpec::float("temperature", 0.0, 10.0, Some(1.0), "sampling temperature of the rollouts (not in the paper)"),
            ParamSpec::float("top_p", 0.01, 1.0, Some(1.0), "nucleus sampling of the rollouts"),
            ParamSpec::int("max_new_tokens", 1, 4096, Some(48), "answer length cap (not in the paper)"),
            ParamSpec::float("safety_threshold", 0.0, 1.0, Some(0.15), "the safety gate (the paper: 0.15)"),
            ParamSpec::int("eval_every", 1, 100_000, Some(10), "iterations between held-out evaluations"),
            ParamSpec::int("patience", 1, 1000, Some(3), "stop after this many evaluations without a better held-out reward"),
            ParamSpec::int("heldout_prompts", 1, i64::MAX, Some(200), "held-out prompts used per evaluation (the first n)"),
            ParamSpec::float("max_kl", 0.0, 1e9, Some(0.0), "stop once an iteration's rollouts are further than this from the initial policy (their mean KL, nats per answer summed over its tokens), before updating on them; the returned policy is then the best evaluated, the stopping one evaluated too (0 = no limit; not in the paper)").added_later(),
            ParamSpec::int("shards", 1, 1024, Some(1), "each mini-batch's answers are split into this many row shards whose gradients are summed in order (the parts a cluster run splits over its processes); changes results only by float summation order").added_later(),
        ]
    }
    fn run(&self, ctx: &mut RunCtx<'_>) -> Result<(), StageError> {
        let cfg = PpoConfig::from_params(ctx)?;
        let prompts = datasets::schema::prompt_rows(&read_input_table(ctx, "prompts")?, "prompts").map_err(|e| StageError::wrap("input `prompts`", e))?;
        if prompts.is_empty() {
            return Err(StageError::Message("input `prompts` has no rows".into()));
        }
        let heldout = match ctx.input_opt("heldout") {
            Some(_) => {
                let rows = datasets::schema::prompt_rows(&read_input_table(ctx, "heldout")?, "heldout").map_err(|e| StageError::wrap("input `heldout`", e))?;
                Some(rows.into_iter().take(cfg.heldout_prompts).collect::<Vec<_>>())
            }
            None => None,
        };
        let mut policy = Loaded::load(ctx.input("policy")?, "input `policy`")?;
        let reference = policy.model.clone();
        let scorer = Scorer::load(ctx.input("helpfulness_rm")?, ctx.input_opt("safety_rm"), cfg.safety_threshold)?;
        let mut value = match ctx.input_opt("value_init") {
            Some(d) => Loaded::load(d, "input `value_init`")?,
            None => scorer.helpfulness.with_model(scorer.helpfulness.model.clone()),
        };
        let reduce = crate::train::reduce::for_collective(ctx.collective());
        let outcome = train_ppo(&mut policy, &reference, &mut value, &scorer, &prompts, heldout.as_deref(), &cfg, ctx.seed, reduce.as_ref())?;
        policy.save(ctx.output("model")?, "output `model`")?;
        value.save(ctx.output("value")?, "output `value`")?;
        write_report(ctx, "report", &outcome)
    }
}

/// PPO's result-changing settings.
#[derive(Clone, Debug)]
pub struct PpoConfig {
    pub iterations: usize,
    pub batch_prompts: usize,
    pub minibatch: usize,
    pub ppo_epochs: usize,
    pub clip: f32,
    pub value_clip: f32,
    pub beta: f32,
    pub gamma: f32,
    pub lambda: f32,
    pub whiten_advantages: bool,
    pub lr: f64,
    pub value_lr: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub sampling: SamplingParams,
    pub safety_threshold: f32,
    pub eval_every: usize,
    pub patience: usize,
    pub heldout_prompts: usize,
    /// KL budget (0 = none): see the `max_kl` parameter.
    pub max_kl: f64,
    /// Row shards per mini-batch: the step's parts (see `train::reduce`).
    pub shards: usize,
}

impl PpoConfig {
    fn from_params(ctx: &RunCtx<'_>) -> Result<PpoConfig, StageError> {
        let p = ctx.params;
        let u = |n: &str| p.int(n).map(|v| v as usize);
        let f = |n: &str| p.float(n).map(|v| v as f32);
        Ok(PpoConfig {
            iterations: u("iterations")?,
            batch_prompts: u("batch_prompts")?,
            minibatch: u("minibatch")?,
            ppo_epochs: u("ppo_epochs")?,
            clip: f("clip")?,
            value_clip: f("value_clip")?,
            beta: f("beta")?,
            gamma: f("gamma")?,
            lambda: f("lambda")?,
            whiten_advantages: p.bool("whiten_advantages")?,
            lr: p.float("lr")?,
            value_lr: p.float("value_lr")?,
            weight_decay: p.float("weight_decay")?,
            grad_clip: p.float("grad_clip")?,
            sampling: SamplingParams { max_new_tokens: u("max_new_tokens")?, temperature: f("temperature")?, top_p: f("top_p")?, seed: 0 },
            safety_threshold: f("safety_threshold")?,
            eval_every: u("eval_every")?,
            patience: u("patience")?,
            heldout_prompts: u("heldout_prompts")?,
            max_kl: p.float("max_kl")?,
            shards: u("shards")?,
        })
    }
}

/// One iteration's rollouts, everything per answer token (index j of answer i).
struct Rollout {
    rows: Vec<Vec<u32>>,
    prompt_len: Vec<usize>,
    old_logp: Vec<Vec<f32>>,
    old_values: Vec<Vec<f32>>,
    advantages: Vec<Vec<f32>>,
    returns: Vec<Vec<f32>>,
    /// Curves: mean combined reward (probability), mean KL (sum over tokens), mean gold.
    reward: f64,
    kl: f64,
    gold: f64,
    length: f64,
}

/// The prompts of iteration `it`: a seeded permutation of the table per pass, cut in batches.
fn batch_indices(n: usize, batch: usize, it: usize, seed: u64) -> Vec<usize> {
    (it * batch..(it + 1) * batch)
        .map(|g| {
            let (pass, pos) = (g / n, g % n);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| {
                let mut h = blake3::Hasher::new();
                h.update(&seed.to_le_bytes());
                h.update(&(pass as u64).to_le_bytes());
                h.update(&(i as u64).to_le_bytes());
                *h.finalize().as_bytes()
            });
            order[pos]
        })
        .collect()
}

/// Samples answers and returns (rows, prompt lengths, texts). Answer i samples from its own
/// stream and does not depend on the batch it is generated in, so in a cluster run each process
/// generates the answers it owns (i mod N) and the processes exchange them.
fn sample(policy: &Loaded, prompts: &[&PromptRow], sp: &SamplingParams, stream_seed: u64, reduce: &dyn GradReduce) -> Result<(Vec<Vec<u32>>, Vec<usize>, Vec<String>), StageError> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| policy.prompt_ids(&p.prompt)).collect::<Result<_, _>>()?;
    let streams: Vec<u64> = (0..prompts.len()).map(|i| sample_stream(stream_seed, i as u64)).collect();
    let generated = if reduce.processes() == 1 {
        policy.generate(&ids, &streams, sp)?
    } else {
        let mine: Vec<usize> = (0..ids.len()).filter(|&i| reduce.owns(i)).collect();
        let pick = |v: &[u64]| mine.iter().map(|&i| v[i]).collect::<Vec<u64>>();
        let my_ids: Vec<Vec<u32>> = mine.iter().map(|&i| ids[i].clone()).collect();
        let out = policy.generate(&my_ids, &pick(&streams), sp)?;
        let all = reduce.exchange(encode_answers(&mine, &out)).map_err(|e| StageError::wrap("PPO rollouts", e))?;
        let mut slots: Vec<Option<Vec<u32>>> = vec![None; ids.len()];
        for (process, bytes) in all.iter().enumerate() {
            for (i, answer) in decode_answers(bytes).ok_or_else(|| StageError::wrap("PPO rollouts", ReduceError::Malformed { process }))? {
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(answer);
                }
            }
        }
        slots.into_iter().enumerate().map(|(i, a)| a.ok_or_else(|| StageError::Message(format!("PPO rollouts: answer {i} is missing after the exchange")))).collect::<Result<_, _>>()?
    };
    let texts: Vec<String> = generated.iter().map(|g| policy.decode(g)).collect::<Result<_, _>>()?;
    let plen = ids.iter().map(Vec::len).collect();
    let rows = ids.into_iter().zip(generated).map(|(mut p, g)| {
        p.extend(g);
        p
    }).collect();
    Ok((rows, plen, texts))
}

/// Little-endian (index, length, token ids) per answer.
fn encode_answers(index: &[usize], answers: &[Vec<u32>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in index.iter().zip(answers) {
        out.extend((*i as u64).to_le_bytes());
        out.extend((a.len() as u64).to_le_bytes());
        for t in a {
            out.extend(t.to_le_bytes());
        }
    }
    out
}

fn decode_answers(mut b: &[u8]) -> Option<Vec<(usize, Vec<u32>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (head, rest) = b.split_at_checked(16)?;
        let i = u64::from_le_bytes(head[..8].try_into().ok()?) as usize;
        let n = u64::from_le_bytes(head[8..].try_into().ok()?) as usize;
        let (body, rest) = rest.split_at_checked(n.checked_mul(4)?)?;
        out.push((i, body.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()));
        b = rest;
    }
    Some(out)
}

/// Log-probs of the answer tokens of each row under `model`.
fn answer_logprobs(model: &Llama, rows: &[Vec<u32>], plen: &[usize]) -> Result<Vec<Vec<f32>>, StageError> {
    let lp = model.token_logprobs(rows).map_err(|e| StageError::wrap("PPO log-probs", e))?;
    Ok(lp.into_iter().zip(plen).map(|(r, &p)| r[p - 1..].to_vec()).collect())
}

/// Values V_j of the answer tokens (the value head at the position before each token).
fn answer_values(model: &Llama, rows: &[Vec<u32>], plen: &[usize]) -> Result<Vec<Vec<f32>>, StageError> {
    let fwd = model.forward(rows, false).map_err(|e| StageError::wrap("PPO values", e))?;
    Ok((0..rows.len())
        .map(|r| {
            let out = fwd.row_out(r);
            (plen[r] - 1..rows[r].len() - 1).map(|t| out[t * fwd.out_width]).collect()
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn rollout(policy: &Loaded, reference: &Llama, value: &Loaded, scorer: &Scorer, prompts: &[&PromptRow], cfg: &PpoConfig, stream_seed: u64, reduce: &dyn GradReduce) -> Result<Rollout, StageError> {
    let (rows, plen, texts) = sample(policy, prompts, &cfg.sampling, stream_seed, reduce)?;
    let old_logp = answer_logprobs(&policy.model, &rows, &plen)?;
    let ref_logp = answer_logprobs(reference, &rows, &plen)?;
    let old_values = answer_values(&value.model, &rows, &plen)?;
    let ptexts: Vec<&str> = prompts.iter().map(|p| p.prompt.as_str()).collect();
    let tags: Vec<bool> = prompts.iter().map(|p| p.is_safety).collect();
    let answers: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scored = scorer.score(&ptexts, &answers, &tags)?;
    // R̃c = whiten(logit(Rc)) over the batch.
    let seq = whiten(&scored.iter().map(|s| logit(s.reward, 1e-6)).collect::<Vec<_>>(), 1e-8);
    let mut advantages = Vec::with_capacity(rows.len());
    let mut returns = Vec::with_capacity(rows.len());
    let mut kl = 0.0f64;
    for i in 0..rows.len() {
        kl += old_logp[i].iter().zip(&ref_logp[i]).map(|(a, b)| (a - b) as f64).sum::<f64>();
        let r = token_rewards(&old_logp[i], &ref_logp[i], cfg.beta, seq[i]);
        let (a, ret) = gae(&r, &old_values[i], cfg.gamma, cfg.lambda);
        advantages.push(a);
        returns.push(ret);
    }
    if cfg.whiten_advantages {
        let flat: Vec<f32> = advantages.iter().flatten().copied().collect();
        let w = whiten(&flat, 1e-8);
        let mut k = 0;
        for a in advantages.iter_mut() {
            for x in a.iter_mut() {
                *x = w[k];
                k += 1;
            }
        }
    }
    let n = rows.len() as f64;
    let gold = prompts.iter().zip(&texts).map(|(p, t)| {
        let j = serde_json::from_str(&p.judge).ok().map(|spec| datasets::judge::JudgeInput { spec, is_safety: p.is_safety, instruction: None });
        j.map(|j| datasets::judge::helpfulness(&j, t) as f64).unwrap_or(f64::NAN)
    }).sum::<f64>() / n;
    Ok(Rollout {
        length: rows.iter().zip(&plen).map(|(r, p)| (r.len() - p) as f64).sum::<f64>() / n,
        reward: scored.iter().map(|s| s.reward as f64).sum::<f64>() / n,
        kl: kl / n,
        gold,
        rows,
        prompt_len: plen,
        old_logp,
        old_values,
        advantages,
        returns,
    })
}

/// Per-step statistics of a mini-batch update.
#[derive(Default, Clone, Copy)]
struct StepStats {
    policy_loss: f64,
    value_loss: f64,
    entropy: f64,
    clip_fraction: f64,
}

/// The clipped surrogate for one token: returns (loss term, dLoss/dlogp, clipped?) for ratio
/// r = exp(logp - old_logp) and advantage a: L = -min(r·a, clip(r, 1-ε, 1+ε)·a).
pub fn clipped_policy_term(logp: f32, old_logp: f32, a: f32, eps: f32) -> (f32, f32, bool) {
    let r = (logp - old_logp).exp();
    let rc = r.clamp(1.0 - eps, 1.0 + eps);
    let (un, cl) = (r * a, rc * a);
    let clipped = (r - 1.0).abs() > eps;
    if un <= cl { (-un, -un, clipped) } else { (-cl, 0.0, clipped) }
}

/// The clipped value loss for one token: 0.5·max((v - R)², (v_old + clip(v - v_old, ±c) - R)²);
/// returns (loss, dLoss/dv).
pub fn clipped_value_term(v: f32, v_old: f32, ret: f32, c: f32) -> (f32, f32) {
    let vc = v_old + (v - v_old).clamp(-c, c);
    let (lu, lc) = ((v - ret).powi(2), (vc - ret).powi(2));
    if lu >= lc {
        (0.5 * lu, v - ret)
    } else {
        let inside = (v - v_old).abs() < c;
        (0.5 * lc, if inside { vc - ret } else { 0.0 })
    }
}

/// Entropy of softmax(logits).
fn entropy(logits: &[f32]) -> f32 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let z: f32 = logits.iter().map(|&x| (x - m).exp()).sum();
    let lz = z.ln();
    -logits.iter().map(|&x| {
        let lp = x - m - lz;
        lp.exp() * lp
    }).sum::<f32>()
}

impl StepStats {
    fn to_metrics(self) -> Vec<f64> {
        vec![self.policy_loss, self.value_loss, self.entropy, self.clip_fraction]
    }
    fn add_metrics(&mut self, m: &[f64]) {
        if let [p, v, e, c] = m {
            self.policy_loss += p;
            self.value_loss += v;
            self.entropy += e;
            self.clip_fraction += c;
        }
    }
}

/// The policy and value gradients of the answers `part` of a mini-batch whose answer tokens
/// each weigh `w` (1 / the mini-batch's answer tokens), and the part's statistics.
fn part_grads(policy: &Llama, value: &Llama, ro: &Rollout, part: &[usize], w: f32, cfg: &PpoConfig) -> Result<(Grads, Grads, StepStats), StageError> {
    let rows: Vec<Vec<u32>> = part.iter().map(|&i| ro.rows[i].clone()).collect();
    let mut st = StepStats::default();
    // Policy: targets only at answer positions.
    let fwd = policy.forward(&rows, true).map_err(|e| StageError::wrap("PPO policy forward", e))?;
    let mut targets = vec![IGNORE; fwd.batch.tokens.len()];
    for (k, &i) in part.iter().enumerate() {
        let s = fwd.batch.spans[k];
        for j in 0..ro.advantages[i].len() {
            let t = ro.prompt_len[i] - 1 + j;
            targets[s.offset + t] = ro.rows[i][t + 1] as i32;
        }
    }
    let lp = fwd.target_logprobs(&targets);
    let mut coef = vec![0.0f32; lp.len()];
    for (k, &i) in part.iter().enumerate() {
        let s = fwd.batch.spans[k];
        for j in 0..ro.advantages[i].len() {
            let pos = s.offset + ro.prompt_len[i] - 1 + j;
            let (l, g, clipped) = clipped_policy_term(lp[pos], ro.old_logp[i][j], ro.advantages[i][j], cfg.clip);
            st.policy_loss += (l * w) as f64;
            st.clip_fraction += if clipped { w as f64 } else { 0.0 };
            coef[pos] = g * w;
            st.entropy += (entropy(&fwd.out[pos * fwd.out_width..(pos + 1) * fwd.out_width]) * w) as f64;
        }
    }
    let pg = policy.backward(&fwd, HeadGrad::Logprobs { targets: &targets, coef: &coef }).map_err(|e| StageError::wrap("PPO policy backward", e))?;
    drop(fwd);
    // Value model: the head's output at the answer positions.
    let vf = value.forward(&rows, true).map_err(|e| StageError::wrap("PPO value forward", e))?;
    let mut ds = vec![0.0f32; vf.out.len()];
    for (k, &i) in part.iter().enumerate() {
        let s = vf.batch.spans[k];
        for j in 0..ro.advantages[i].len() {
            let pos = s.offset + ro.prompt_len[i] - 1 + j;
            let (l, g) = clipped_value_term(vf.out[pos * vf.out_width], ro.old_values[i][j], ro.returns[i][j], cfg.value_clip);
            st.value_loss += (l * w) as f64;
            ds[pos * vf.out_width] = g * w;
        }
    }
    let vg: Grads = value.backward(&vf, HeadGrad::Scores { dscores: &ds }).map_err(|e| StageError::wrap("PPO value backward", e))?;
    Ok((pg, vg, st))
}

/// One policy and one value gradient step on the answers `idx` of the rollout. The answers are
/// split into `cfg.shards` row shards, the step's parts: in a cluster run each process computes
/// the parts it owns, and every process adds all parts' gradients and statistics in part order
/// (the same float operations as one process), then clips and takes both AdamW steps.
#[allow(clippy::too_many_arguments)]
fn minibatch_step(
    policy: &mut Llama,
    value: &mut Llama,
    opt_p: &mut AdamW,
    opt_v: &mut AdamW,
    ro: &Rollout,
    idx: &[usize],
    cfg: &PpoConfig,
    reduce: &dyn GradReduce,
) -> Result<StepStats, StageError> {
    let tokens: usize = idx.iter().map(|&i| ro.advantages[i].len()).sum();
    let w = 1.0 / tokens.max(1) as f32;
    let parts: Vec<&[usize]> = idx.chunks(idx.len().div_ceil(cfg.shards.max(1)).max(1)).collect();
    let (mut mine_p, mut mine_v) = (Vec::new(), Vec::new());
    for (j, part) in parts.iter().enumerate().filter(|(j, _)| reduce.owns(*j)) {
        let (pg, vg, st) = part_grads(policy, value, ro, part, w, cfg)?;
        mine_p.push(GradPart { index: j, loss: 0.0, grads: pg, metrics: st.to_metrics() });
        mine_v.push(GradPart::new(j, 0.0, vg));
    }
    let gather = |mine, what: &str| reduce.gather(mine, parts.len()).map_err(|e| StageError::wrap(format!("PPO {what} gradients"), e));
    let all_p = gather(mine_p, "policy")?;
    let all_v = gather(mine_v, "value")?;
    let mut st = StepStats::default();
    for p in &all_p {
        st.add_metrics(&p.metrics);
    }
    let empty = || StageError::Message("PPO: a mini-batch without answers".into());
    let mut grads = sum_grads(all_p).ok_or_else(empty)?;
    clip_grads(&mut grads, cfg.grad_clip);
    opt_p.update(policy, &grads, cfg.lr as f32).map_err(|e| StageError::wrap("PPO policy update", e))?;
    drop(grads);
    let mut vg = sum_grads(all_v).ok_or_else(empty)?;
    clip_grads(&mut vg, cfg.grad_clip);
    opt_v.update(value, &vg, cfg.value_lr as f32).map_err(|e| StageError::wrap("PPO value update", e))?;
    Ok(st)
}

/// Mean combined reward of the policy's answers to the held-out prompts (fixed sampling
/// streams, so evaluations differ only by the policy).
fn heldout_reward(policy: &Loaded, scorer: &Scorer, heldout: &[PromptRow], cfg: &PpoConfig, seed: u64, reduce: &dyn GradReduce) -> Result<f64, StageError> {
    let refs: Vec<&PromptRow> = heldout.iter().collect();
    let (_, _, texts) = sample(policy, &refs, &cfg.sampling, seed ^ 0x4845_4C44, reduce)?;
    let p: Vec<&str> = heldout.iter().map(|p| p.prompt.as_str()).collect();
    let tags: Vec<bool> = heldout.iter().map(|p| p.is_safety).collect();
    let a: Vec<&str> = texts.iter().map(String::as_str).collect();
    let s = scorer.score(&p, &a, &tags)?;
    Ok(s.iter().map(|x| x.reward as f64).sum::<f64>() / s.len().max(1) as f64)
}

/// Makes `(reward, iteration, model)` the best evaluated policy when its held-out reward is
/// higher than the best so far (or there is none); says whether it did.
fn keep_if_better(best: &mut Option<(f64, usize, Arc<Llama>)>, reward: f64, iteration: usize, model: &Llama) -> bool {
    let better = best.as_ref().is_none_or(|b| reward > b.0);
    if better {
        *best = Some((reward, iteration, Arc::new(model.clone())));
    }
    better
}

/// The PPO loop. Leaves the best policy (by held-out reward, when held-out prompts are given;
/// else the last) in `policy`; returns the report. `reduce` splits rollouts and gradient parts
/// over the processes of a cluster run (every process ends with the same models).
#[allow(clippy::too_many_arguments)]
pub fn train_ppo(
    policy: &mut Loaded,
    reference: &Llama,
    value: &mut Loaded,
    scorer: &Scorer,
    prompts: &[PromptRow],
    heldout: Option<&[PromptRow]>,
    cfg: &PpoConfig,
    seed: u64,
    reduce: &dyn GradReduce,
) -> Result<serde_json::Value, StageError> {
    let mut opt_p = AdamW::new(AdamWConfig::llama2(cfg.weight_decay as f32), &policy.model);
    let mut opt_v = AdamW::new(AdamWConfig::llama2(cfg.weight_decay as f32), &value.model);
    let mut curve = Vec::new();
    let mut evals = Vec::new();
    let mut best: Option<(f64, usize, Arc<Llama>)> = None;
    let mut since_best = 0usize;
    let mut stopped_early = false;
    let mut kl_stop: Option<f64> = None;
    let evaluate = |policy: &Loaded, it: usize, evals: &mut Vec<serde_json::Value>| -> Result<Option<f64>, StageError> {
        let Some(h) = heldout else { return Ok(None) };
        let r = heldout_reward(policy, scorer, h, cfg, seed, reduce)?;
        evals.push(serde_json::json!({ "iteration": it, "heldout_reward": r }));
        Ok(Some(r))
    };
    if let Some(r) = evaluate(policy, 0, &mut evals)? {
        keep_if_better(&mut best, r, 0, &policy.model);
    }
    for it in 0..cfg.iterations {
        let idx = batch_indices(prompts.len(), cfg.batch_prompts, it, seed);
        let batch: Vec<&PromptRow> = idx.iter().map(|&i| &prompts[i]).collect();
        let ro = rollout(policy, reference, value, scorer, &batch, cfg, sample_stream(seed, it as u64), reduce)?;
        if cfg.max_kl > 0.0 && ro.kl > cfg.max_kl {
            // The policy after `it` updates has left the KL budget: no update on these
            // rollouts. It competes with the evaluated ones (evaluated now unless it just was).
            kl_stop = Some(ro.kl);
            let evaluated = it > 0 && it % cfg.eval_every == 0;
            if !evaluated {
                if let Some(r) = evaluate(policy, it, &mut evals)? {
                    keep_if_better(&mut best, r, it, &policy.model);
                }
            }
            break;
        }
        let mut agg = StepStats::default();
        let mut steps = 0usize;
        for _ in 0..cfg.ppo_epochs {
            let order: Vec<usize> = (0..ro.rows.len()).collect();
            for mb in order.chunks(cfg.minibatch) {
                let s = minibatch_step(&mut policy.model, &mut value.model, &mut opt_p, &mut opt_v, &ro, mb, cfg, reduce)?;
                agg.policy_loss += s.policy_loss;
                agg.value_loss += s.value_loss;
                agg.entropy += s.entropy;
                agg.clip_fraction += s.clip_fraction;
                steps += 1;
            }
        }
        let d = steps.max(1) as f64;
        if !(agg.policy_loss.is_finite() && agg.value_loss.is_finite()) {
            return Err(StageError::Message(format!("PPO iteration {}: loss is not finite", it + 1)));
        }
        curve.push(serde_json::json!({
            "iteration": it + 1, "reward": ro.reward, "kl": ro.kl, "gold": ro.gold, "answer_tokens": ro.length,
            "entropy": agg.entropy / d, "clip_fraction": agg.clip_fraction / d,
            "policy_loss": agg.policy_loss / d, "value_loss": agg.value_loss / d,
        }));
        let last = it + 1 == cfg.iterations;
        if (it + 1) % cfg.eval_every == 0 || last {
            if let Some(r) = evaluate(policy, it + 1, &mut evals)? {
                if keep_if_better(&mut best, r, it + 1, &policy.model) {
                    since_best = 0;
                } else {
                    since_best += 1;
                    if since_best >= cfg.patience {
                        stopped_early = !last;
                        break;
                    }
                }
            }
        }
    }
    let best_iteration = match &best {
        Some((_, it, model)) => {
            policy.model = (**model).clone();
            *it
        }
        None => curve.len(),
    };
    Ok(serde_json::json!({
        "iterations_run": curve.len(),
        "best_iteration": best_iteration,
        "stopped_early": stopped_early,
        "stopped_on_kl": kl_stop.is_some(),
        "kl_at_stop": kl_stop,
        "curve": curve,
        "heldout": evals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rlhf::policy::testing::{prompts, tiny_policy};

    /// A PPO configuration for tiny test runs: a few answers of 5 tokens, an evaluation every
    /// iteration, no KL budget.
    fn tiny_cfg() -> PpoConfig {
        PpoConfig {
            iterations: 1, batch_prompts: 4, minibatch: 2, ppo_epochs: 1, clip: 0.2, value_clip: 0.2, beta: 0.01,
            gamma: 1.0, lambda: 0.95, whiten_advantages: true, lr: 1e-3, value_lr: 1e-3, weight_decay: 0.0, grad_clip: 1.0,
            sampling: SamplingParams { max_new_tokens: 5, temperature: 1.0, top_p: 1.0, seed: 0 },
            safety_threshold: 0.15, eval_every: 1, patience: 5, heldout_prompts: 4, max_kl: 0.0, shards: 1,
        }
    }

    /// A tiny policy (kept in the returned temporary directory), its copy as the reference,
    /// reward models initialised from it (a safety model when asked) and the value model.
    fn tiny_setup(with_safety: bool) -> (tempfile::TempDir, Loaded, Llama, Scorer, Loaded) {
        let work = tempfile::tempdir().unwrap();
        tiny_policy(&work.path().join("policy"), 13);
        let policy = Loaded::load(&work.path().join("policy"), "p").unwrap();
        let reference = policy.model.clone();
        let rm = policy.reward_model_init(5).unwrap();
        let safety = with_safety.then(|| policy.reward_model_init(6).unwrap());
        let scorer = Scorer { helpfulness: rm.with_model(rm.model.clone()), safety, threshold: 0.15 };
        let value = rm.with_model(rm.model.clone());
        (work, policy, reference, scorer, value)
    }

    #[test]
    fn clipped_policy_gradient_matches_finite_differences() {
        for &(lp, old, a) in &[(-1.0f32, -1.1f32, 0.7f32), (-1.0, -1.5, 0.7), (-1.0, -0.5, -0.4), (-2.0, -2.0, 1.0), (-1.0, -1.5, -0.7)] {
            let (_, g, _) = clipped_policy_term(lp, old, a, 0.2);
            let h = 1e-3;
            let (lplus, _, _) = clipped_policy_term(lp + h, old, a, 0.2);
            let (lminus, _, _) = clipped_policy_term(lp - h, old, a, 0.2);
            assert!(((lplus - lminus) / (2.0 * h) - g).abs() < 1e-2, "{lp} {old} {a}: {g}");
        }
        // Outside the clip range in the direction of the advantage: no gradient.
        let (_, g, clipped) = clipped_policy_term(-1.0, -1.5, 1.0, 0.2);
        assert_eq!(g, 0.0);
        assert!(clipped);
    }

    #[test]
    fn clipped_value_gradient_matches_finite_differences() {
        for &(v, old, ret) in &[(0.5f32, 0.4f32, 1.0f32), (1.0, 0.0, 0.1), (0.0, 1.0, 0.9), (0.3, 0.3, -1.0)] {
            let (_, g) = clipped_value_term(v, old, ret, 0.2);
            let h = 1e-3;
            let num = (clipped_value_term(v + h, old, ret, 0.2).0 - clipped_value_term(v - h, old, ret, 0.2).0) / (2.0 * h);
            assert!((num - g).abs() < 1e-2, "{v} {old} {ret}: {g} vs {num}");
        }
    }

    #[test]
    fn batches_cover_the_prompts_once_per_pass() {
        let mut all: Vec<usize> = (0..5).flat_map(|it| batch_indices(10, 2, it, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_indices(10, 4, 1, 3), batch_indices(10, 4, 1, 3));
    }

    /// PPO over two "processes" (threads with an in-memory all-gather): rollouts split by
    /// answer, mini-batch shards split by part; both processes end with the policy, the value
    /// model and the report of one process, bit for bit (with 3 shards, and with 1, where
    /// process 1 only samples).
    #[test]
    fn two_processes_give_the_one_process_result_bit_for_bit() {
        let work = tempfile::tempdir().unwrap();
        tiny_policy(&work.path().join("policy"), 13);
        let start = Loaded::load(&work.path().join("policy"), "p").unwrap();
        let rm = start.reward_model_init(5).unwrap();
        let scorer = Scorer { helpfulness: rm.with_model(rm.model.clone()), safety: Some(start.reward_model_init(6).unwrap()), threshold: 0.15 };
        let rows = datasets::schema::prompt_rows(&prompts(14), "p").unwrap();
        for shards in [3, 1] {
            let cfg = PpoConfig { iterations: 2, batch_prompts: 7, minibatch: 5, heldout_prompts: 3, shards, ..tiny_cfg() };
            let run = |reduce: &dyn GradReduce| {
                let mut policy = start.with_model(start.model.clone());
                let mut value = rm.with_model(rm.model.clone());
                let report = train_ppo(&mut policy, &start.model, &mut value, &scorer, &rows[..10], Some(&rows[10..]), &cfg, 1, reduce).unwrap();
                let params = |m: &Llama| m.params().iter().map(|t| t.to_vec()).collect::<Vec<Vec<f32>>>();
                (params(&policy.model), params(&value.model), report.to_string())
            };
            let one = run(&crate::train::Local);
            let runs: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = crate::train::reduce::testing::processes(2).into_iter().map(|r| s.spawn(move || run(r.as_ref()))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (p, r) in runs.iter().enumerate() {
                assert!(r.0 == one.0, "shards {shards}, process {p}: policy differs from one process");
                assert!(r.1 == one.1, "shards {shards}, process {p}: value model differs");
                assert_eq!(r.2, one.2, "shards {shards}, process {p}: report differs");
            }
        }
    }

    /// A short PPO run on a tiny model: finite curves with every field, KL starts at zero (the
    /// first rollout's policy is the reference), the policy changes, and with a held-out set
    /// the returned policy is the best evaluated.
    #[test]
    fn short_run_produces_curves_and_moves_the_policy() {
        let (_work, mut policy, reference, scorer, mut value) = tiny_setup(true);
        let rows = datasets::schema::prompt_rows(&prompts(12), "p").unwrap();
        let cfg = PpoConfig { iterations: 3, ..tiny_cfg() };
        let report = train_ppo(&mut policy, &reference, &mut value, &scorer, &rows[..8], Some(&rows[8..]), &cfg, 1, &crate::train::Local).unwrap();
        let curve = report["curve"].as_array().unwrap();
        assert_eq!(curve.len(), 3);
        assert!(curve[0]["kl"].as_f64().unwrap().abs() < 1e-4, "{}", curve[0]);
        for p in curve {
            for k in ["reward", "kl", "entropy", "clip_fraction", "policy_loss", "value_loss"] {
                assert!(p[k].as_f64().unwrap().is_finite(), "{k}: {p}");
            }
            assert!(p["entropy"].as_f64().unwrap() > 0.0);
        }
        assert_eq!(report["heldout"].as_array().unwrap().len(), 4);
        let best_it = report["best_iteration"].as_u64().unwrap() as usize;
        let rewards: Vec<f64> = report["heldout"].as_array().unwrap().iter().map(|e| e["heldout_reward"].as_f64().unwrap()).collect();
        let top = rewards.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(rewards[best_it], top);
        if best_it > 0 {
            assert_ne!(policy.model.params(), reference.params());
        }
    }

    /// With a KL budget the run stops at the first rollout past it, before updating on it:
    /// every recorded iteration's rollouts were within the budget, and the stopping policy
    /// was evaluated beside the others.
    #[test]
    fn a_kl_budget_stops_before_the_policy_leaves_it() {
        let (_work, mut policy, reference, scorer, mut value) = tiny_setup(false);
        let rows = datasets::schema::prompt_rows(&prompts(12), "p").unwrap();
        let max_kl = 1e-3;
        let cfg = PpoConfig { iterations: 8, lr: 3e-3, eval_every: 3, patience: 100, max_kl, ..tiny_cfg() };
        let report = train_ppo(&mut policy, &reference, &mut value, &scorer, &rows[..8], Some(&rows[8..]), &cfg, 1, &crate::train::Local).unwrap();
        assert_eq!(report["stopped_on_kl"], true, "{report}");
        let at_stop = report["kl_at_stop"].as_f64().unwrap();
        assert!(at_stop > max_kl);
        let curve = report["curve"].as_array().unwrap();
        assert!(curve.len() < 8, "stopped before the last iteration");
        for p in curve {
            assert!(p["kl"].as_f64().unwrap() <= max_kl, "an update on rollouts past the budget: {p}");
        }
        // The stopping policy (after `curve.len()` updates) was evaluated.
        let evals = report["heldout"].as_array().unwrap();
        assert_eq!(evals.last().unwrap()["iteration"].as_u64().unwrap() as usize, curve.len());
    }
}
