// Fused log-softmax: per-token log p(target) and, for the backward of L = Σ coef·log p(target),
// dlogits = coef · (onehot(target) − softmax) written as bf16 for the head's matrix products.
// One block per token; targets < 0 are ignored (log-prob 0, zero gradient).
extern "C" __global__ void logprob_fwd_bwd(float* logp, bf16* dlogits, const float* logits, const int* targets,
                                           const float* coef, int n, int v, int write_grad) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    const float* l = logits + (i64)r * v;
    const bool vec = (v & 3) == 0;  // 16-byte accesses
    // One pass for the log-sum-exp: each thread keeps its running max m and Σ exp(x − m).
    float m = NEG_INF, s = 0.f;
    auto add = [&](float x) {
        if (x > m) {
            s = s * __expf(m - x) + 1.f;
            m = x;
        } else if (x > NEG_INF) {
            s += __expf(x - m);
        }
    };
    if (vec) {
        for (int j = threadIdx.x; j < v / 4; j += blockDim.x) {
            float4 x = ((const float4*)l)[j];
            add(x.x);
            add(x.y);
            add(x.z);
            add(x.w);
        }
    } else {
        for (int j = threadIdx.x; j < v; j += blockDim.x) add(l[j]);
    }
    float mb = block_max(m, sh);
    s = s > 0.f ? s * __expf(m - mb) : 0.f;
    s = block_sum(s, sh);
    float lse = mb + __logf(s);
    int t = targets[r];
    if (threadIdx.x == 0) logp[r] = t >= 0 ? l[t] - lse : 0.f;
    if (write_grad) {
        float c = t >= 0 ? coef[r] : 0.f;
        bf16* dl = dlogits + (i64)r * v;
        if (vec) {
            for (int j = threadIdx.x; j < v / 4; j += blockDim.x) {
                float4 x = ((const float4*)l)[j];
                int j0 = 4 * j;
                float g0 = c * ((j0 == t ? 1.f : 0.f) - __expf(x.x - lse));
                float g1 = c * ((j0 + 1 == t ? 1.f : 0.f) - __expf(x.y - lse));
                float g2 = c * ((j0 + 2 == t ? 1.f : 0.f) - __expf(x.z - lse));
                float g3 = c * ((j0 + 3 == t ? 1.f : 0.f) - __expf(x.w - lse));
                ((uint2*)dl)[j] = make_uint2(pack_bf2(g0, g1), pack_bf2(g2, g3));
            }
        } else {
            for (int j = threadIdx.x; j < v; j += blockDim.x) {
                float p = __expf(l[j] - lse);
                dl[j] = f2bf(c * ((j == t ? 1.f : 0.f) - p));
            }
        }
    }
}
