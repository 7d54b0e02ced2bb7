//! Batched KV-cache generation on the device, with the semantics of
//! [`crate::generate::generate_with`]: row r draws one uniform number per sampled token from
//! its own stream `(seed, row_ids[r])`, stops at any EOS id (included in the output) or after
//! `max_new_tokens`, and only the new tokens are returned.
//!
//! All rows advance in lockstep, one token per row per step: a row feeds its prompt tokens
//! first, then its own samples, so rows of different prompt lengths share every step's
//! products. Sampling runs on the device (`sample_rows`); the top-p rule picks from the same
//! nucleus as the CPU sampler, but the two do not draw bit-identical tokens.

use super::model::GpuLlama;
use super::{CudaError, dptr};
use crate::generate::SamplingParams;
use crate::model::ModelError;
use crate::rng::Rng;

/// What a generation call did, for benchmarks.
#[derive(Debug, Clone, Default)]
pub struct DecodeStats {
    /// Steps run (each feeds one token per row).
    pub steps: usize,
    /// Tokens produced across rows.
    pub new_tokens: usize,
    pub seconds: f64,
}

impl GpuLlama {
    /// Generates continuations of `prompts` (see the module doc).
    pub fn generate(&self, prompts: &[Vec<u32>], row_ids: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<(Vec<Vec<u32>>, DecodeStats), CudaError> {
        let t0 = std::time::Instant::now();
        let b = prompts.len();
        if row_ids.len() != b {
            return Err(ModelError::RowCount { op: "generate (row ids)", expected: b, got: row_ids.len() }.into());
        }
        if !(params.top_p > 0.0) || params.temperature.is_nan() {
            return Err(ModelError::Invalid { op: "generate", message: format!("top_p must be in (0, 1] and temperature >= 0 (got {}, {})", params.top_p, params.temperature) }.into());
        }
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        if b == 0 || params.max_new_tokens == 0 {
            return Ok((out, DecodeStats::default()));
        }
        self.check_prompts(prompts)?;
        let c = self.config.clone();
        let g = &**self.gpu();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        let max_len = (longest + params.max_new_tokens).min(self.max_positions());
        let (d, f, hd, v) = (c.hidden_size, c.intermediate_size, c.head_dim, c.vocab_size);
        let (hq, hkv) = (c.num_attention_heads, c.num_key_value_heads);
        let (qd, kvd) = (hq * hd, hkv * hd);
        let s = qd + 2 * kvd;
        let layers = c.num_hidden_layers;
        let kc: Vec<_> = (0..layers).map(|_| g.zeros::<u16>(b * max_len * kvd)).collect::<Result<_, _>>()?;
        let vc: Vec<_> = (0..layers).map(|_| g.zeros::<u16>(b * max_len * kvd)).collect::<Result<_, _>>()?;
        let x = g.zeros::<f32>(b * d)?;
        let h = g.zeros::<u16>(b * d)?;
        let rstd = g.zeros::<f32>(b)?;
        let qkv = g.zeros::<u16>(b * s)?;
        let att = g.zeros::<u16>(b * qd)?;
        let gu = g.zeros::<u16>(b * 2 * f)?;
        let a = g.zeros::<u16>(b * f)?;
        let logits = g.zeros::<f32>(b * v)?;
        let mut tok_dev = g.zeros::<i32>(b)?;
        let mut pos_dev = g.zeros::<i32>(b)?;
        let mut uni_dev = g.zeros::<f32>(b)?;
        let picked = g.zeros::<i32>(b)?;
        let mut rngs: Vec<Rng> = row_ids.iter().map(|&id| Rng::stream(params.seed, id)).collect();
        let greedy = params.temperature <= 0.0;
        let mut done = vec![false; b];
        let mut pos = vec![0i32; b];
        let mut stats = DecodeStats::default();
        for step in 0.. {
            // Each row's token and position for this step.
            let mut toks = vec![0i32; b];
            let mut unis = vec![0f32; b];
            for r in 0..b {
                let p = &prompts[r];
                if done[r] {
                    toks[r] = *out[r].last().unwrap_or(&p[p.len() - 1]) as i32;
                    continue;
                }
                toks[r] = if step < p.len() { p[step] as i32 } else { out[r][step - p.len()] as i32 };
                pos[r] = step as i32;
                if step + 1 >= p.len() && !greedy {
                    unis[r] = rngs[r].uniform() as f32;
                }
            }
            g.stream.memcpy_htod(&toks, &mut tok_dev).map_err(super::drv("cuMemcpyHtoD"))?;
            g.stream.memcpy_htod(&pos, &mut pos_dev).map_err(super::drv("cuMemcpyHtoD"))?;
            g.stream.memcpy_htod(&unis, &mut uni_dev).map_err(super::drv("cuMemcpyHtoD"))?;
            g.embedding_fwd(dptr(&x), self.master_ptr(0), dptr(&tok_dev), b, d)?;
            for l in 0..layers {
                g.rmsnorm_fwd(dptr(&h), dptr(&rstd), dptr(&x), self.master_ptr(self.layer_index(l, crate::model::ATTN_NORM)), b, d, c.rms_norm_eps)?;
                g.gemm(dptr(&qkv), false, dptr(&h), false, self.weight_ptr(self.layer_index(l, crate::model::WQ)), true, b, s, d, 0.0)?;
                let (cos, sin) = self.rope_ptrs();
                // q and k heads are adjacent in qkv: one rotary launch for both.
                g.rope(dptr(&qkv), s, 0, cos, sin, dptr(&pos_dev), b, hq + hkv, hd, false)?;
                g.kv_append(dptr(&kc[l]), dptr(&vc[l]), dptr(&qkv), dptr(&pos_dev), b, max_len, hq, hkv, hd)?;
                g.decode_attn(dptr(&att), dptr(&qkv), dptr(&kc[l]), dptr(&vc[l]), dptr(&pos_dev), b, max_len, hq, hkv, hd)?;
                g.gemm(dptr(&x), true, dptr(&att), false, self.weight_ptr(self.layer_index(l, crate::model::WO)), true, b, d, qd, 1.0)?;
                g.rmsnorm_fwd(dptr(&h), dptr(&rstd), dptr(&x), self.master_ptr(self.layer_index(l, crate::model::MLP_NORM)), b, d, c.rms_norm_eps)?;
                g.gemm(dptr(&gu), false, dptr(&h), false, self.weight_ptr(self.layer_index(l, crate::model::WG)), true, b, 2 * f, d, 0.0)?;
                g.swiglu_fwd(dptr(&a), dptr(&gu), b, f)?;
                g.gemm(dptr(&x), true, dptr(&a), false, self.weight_ptr(self.layer_index(l, crate::model::WD)), true, b, d, f, 1.0)?;
            }
            g.rmsnorm_fwd(dptr(&h), dptr(&rstd), dptr(&x), self.master_ptr(self.final_norm_index()), b, d, c.rms_norm_eps)?;
            g.gemm(dptr(&logits), true, dptr(&h), false, self.weight_ptr(self.head_index()), true, b, v, d, 0.0)?;
            g.sample_rows(dptr(&picked), dptr(&logits), dptr(&uni_dev), b, v, params.temperature, params.top_p.min(1.0), greedy)?;
            let next = g.download(&picked)?;
            stats.steps += 1;
            for r in 0..b {
                if done[r] || step + 1 < prompts[r].len() {
                    continue;
                }
                let t = next[r] as u32;
                out[r].push(t);
                stats.new_tokens += 1;
                let full = out[r].len() >= params.max_new_tokens || prompts[r].len() + out[r].len() >= max_len;
                if eos.contains(&t) || full {
                    done[r] = true;
                }
            }
            if done.iter().all(|&x| x) {
                break;
            }
        }
        stats.seconds = t0.elapsed().as_secs_f64();
        Ok((out, stats))
    }
}
