// Causal self-attention with grouped-query heads over a packed batch of rows.
//
// Layout: qkv (N, stride) bf16 holds, per token, the q heads (Hq·hd), then the k heads
// (Hkv·hd), then the v heads; q head h reads kv head h / (Hq/Hkv). Rows are packed back to
// back; token i belongs to the row starting at row_start[i] and attends to the tokens of its
// own row up to itself. Outputs: out (N, Hq·hd) bf16 and the log-sum-exp lse (Hq, N) f32 that
// the backward uses to rebuild the probabilities.
//
// Here: the simple kernels (`*_simple`: one block per token and head, SIMT, obviously right),
// the reference the tensor-core kernels of attention_fa2.cu (flash-attention style, the
// default for head sizes 32, 64 and 128) are tested against on the GPU, and the path for other
// head sizes. (The first-generation tensor-core kernels that lived here were removed once
// attention_fa2.cu measured 1.5x faster end to end; BENCHMARKS-cuda.md keeps their numbers.)

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---------------------------------------------------------------- simple (reference) kernels

// grid (N, Hq), blockDim 128, dynamic shared memory: (hd + max_row_len) floats.
extern "C" __global__ void attn_fwd_simple(bf16* out, float* lse, const bf16* qkv, const int* row_start, int n,
                                           int hq, int hkv, int hd, float scale) {
    extern __shared__ float fsm[];
    __shared__ float red[32];
    int i = blockIdx.x, h = blockIdx.y, stride = (hq + 2 * hkv) * hd;
    int kvh = h / (hq / hkv);
    int rs = row_start[i], len = i - rs + 1;
    float* q = fsm;
    float* p = fsm + hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = bf2f(qkv[(i64)i * stride + h * hd + d]);
    __syncthreads();
    float m = NEG_INF;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const bf16* k = qkv + (i64)(rs + j) * stride + hq * hd + kvh * hd;
        float s = 0.f;
        for (int d = 0; d < hd; ++d) s += q[d] * bf2f(k[d]);
        s *= scale;
        p[j] = s;
        m = fmaxf(m, s);
    }
    float sum = block_softmax_numerators(p, len, m, red);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        for (int j = 0; j < len; ++j) o += p[j] * bf2f(qkv[(i64)(rs + j) * stride + (hq + hkv) * hd + kvh * hd + d]);
        out[(i64)i * hq * hd + h * hd + d] = f2bf(o / sum);
    }
    if (threadIdx.x == 0) lse[(i64)h * n + i] = m + __logf(sum);
}

// D[h][i] = Σ_d dout[i][h][d] · out[i][h][d]; one warp per (token, head), grid (N, Hq).
extern "C" __global__ void attn_bwd_prep(float* dsum, const bf16* dout, const bf16* out, int n, int hq, int hd) {
    int i = blockIdx.x, h = blockIdx.y;
    float s = 0.f;
    for (int d = threadIdx.x; d < hd; d += 32) {
        i64 o = (i64)i * hq * hd + h * hd + d;
        s += bf2f(dout[o]) * bf2f(out[o]);
    }
    s = warp_sum(s);
    if (threadIdx.x == 0) dsum[(i64)h * n + i] = s;
}

// dq for token i, head h: scale · Σ_j P_ij (dP_ij − D_i) k_j. grid (N, Hq), blockDim 128,
// dynamic shared memory: (2·hd + max_row_len) floats. Writes the q columns of dqkv.
extern "C" __global__ void attn_bwd_dq_simple(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                              const float* dsum, const int* row_start, int n, int hq, int hkv, int hd,
                                              float scale) {
    extern __shared__ float fsm[];
    int i = blockIdx.x, h = blockIdx.y, stride = (hq + 2 * hkv) * hd;
    int kvh = h / (hq / hkv);
    int rs = row_start[i], len = i - rs + 1;
    float* q = fsm;
    float* go = fsm + hd;
    float* ds = fsm + 2 * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        q[d] = bf2f(qkv[(i64)i * stride + h * hd + d]);
        go[d] = bf2f(dout[(i64)i * hq * hd + h * hd + d]);
    }
    __syncthreads();
    float l = lse[(i64)h * n + i], di = dsum[(i64)h * n + i];
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const bf16* k = qkv + (i64)(rs + j) * stride + hq * hd + kvh * hd;
        const bf16* v = qkv + (i64)(rs + j) * stride + (hq + hkv) * hd + kvh * hd;
        float s = 0.f, dp = 0.f;
        for (int d = 0; d < hd; ++d) {
            s += q[d] * bf2f(k[d]);
            dp += go[d] * bf2f(v[d]);
        }
        float p = __expf(s * scale - l);
        ds[j] = p * (dp - di);
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < len; ++j) acc += ds[j] * bf2f(qkv[(i64)(rs + j) * stride + hq * hd + kvh * hd + d]);
        dqkv[(i64)i * stride + h * hd + d] = f2bf(acc * scale);
    }
}

// dk, dv for token j (a key), kv head g, summed over the group's q heads and the row's
// queries i ≥ j. grid (N, Hkv), blockDim = hd rounded up to 32 (one thread per column).
// row_end[j] is one past the last token of j's row.
extern "C" __global__ void attn_bwd_dkdv_simple(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                                const float* dsum, const int* row_end, int n, int hq, int hkv, int hd,
                                                float scale) {
    __shared__ float red[32];
    int j = blockIdx.x, g = blockIdx.y, stride = (hq + 2 * hkv) * hd, grp = hq / hkv;
    int d = threadIdx.x;
    bool on = d < hd;
    float kd = on ? bf2f(qkv[(i64)j * stride + hq * hd + g * hd + d]) : 0.f;
    float vd = on ? bf2f(qkv[(i64)j * stride + (hq + hkv) * hd + g * hd + d]) : 0.f;
    float dk = 0.f, dv = 0.f;
    for (int h = g * grp; h < (g + 1) * grp; ++h) {
        for (int i = j; i < row_end[j]; ++i) {
            float qd = on ? bf2f(qkv[(i64)i * stride + h * hd + d]) : 0.f;
            float god = on ? bf2f(dout[(i64)i * hq * hd + h * hd + d]) : 0.f;
            float s = block_sum(qd * kd, red);
            float dp = block_sum(god * vd, red);
            float p = __expf(s * scale - lse[(i64)h * n + i]);
            dv += p * god;
            dk += p * (dp - dsum[(i64)h * n + i]) * qd;
        }
    }
    if (on) {
        dqkv[(i64)j * stride + hq * hd + g * hd + d] = f2bf(dk * scale);
        dqkv[(i64)j * stride + (hq + hkv) * hd + g * hd + d] = f2bf(dv);
    }
}
