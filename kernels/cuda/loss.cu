// Fused log-softmax: per-token log p(target) and, for the backward of L = Σ coef·log p(target),
// dlogits = coef · (onehot(target) − softmax) written as bf16 for the head's matrix products.
// One block per token; targets < 0 are ignored (log-prob 0, zero gradient).
extern "C" __global__ void logprob_fwd_bwd(float* logp, bf16* dlogits, const float* logits, const int* targets,
                                           const float* coef, int n, int v, int write_grad) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    const float* l = logits + (i64)r * v;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, l[j]);
    m = block_max(m, sh);
    float s = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += __expf(l[j] - m);
    s = block_sum(s, sh);
    float lse = m + __logf(s);
    int t = targets[r];
    if (threadIdx.x == 0) logp[r] = t >= 0 ? l[t] - lse : 0.f;
    if (write_grad) {
        float c = t >= 0 ? coef[r] : 0.f;
        bf16* dl = dlogits + (i64)r * v;
        for (int j = threadIdx.x; j < v; j += blockDim.x) {
            float p = __expf(l[j] - lse);
            dl[j] = f2bf(c * ((j == t ? 1.f : 0.f) - p));
        }
    }
}
