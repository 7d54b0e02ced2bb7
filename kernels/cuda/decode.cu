// Batched decoding: appending to the KV cache, attention of one new token per row over its
// cache, and picking the next token (greedy, or temperature + top-p) on the device.
//
// Caches are (B, max_len, Hkv·hd) bf16 per layer; row b holds pos[b] tokens before this step
// and its new token goes to position pos[b].

// Writes the (already rotated) k and v of each row's new token into the caches.
extern "C" __global__ void kv_append(bf16* kc, bf16* vc, const bf16* qkv, const int* pos, int b, int max_len,
                                     int hq, int hkv, int hd) {
    int kvd = hkv * hd, stride = (hq + 2 * hkv) * hd;
    i64 total = (i64)b * kvd;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        int r = (int)(i / kvd), c = (int)(i - (i64)r * kvd);
        i64 dst = ((i64)r * max_len + pos[r]) * kvd + c;
        kc[dst] = qkv[(i64)r * stride + hq * hd + c];
        vc[dst] = qkv[(i64)r * stride + (hq + hkv) * hd + c];
    }
}

// out (B, Hq·hd) = attention of each row's new query over its cache positions 0..=pos[b].
// grid (B, Hq), blockDim 128, dynamic shared memory (hd + max_len) floats.
extern "C" __global__ void decode_attn(bf16* out, const bf16* qkv, const bf16* kc, const bf16* vc, const int* pos,
                                       int max_len, int hq, int hkv, int hd, float scale) {
    extern __shared__ float fsm[];
    __shared__ float red[32];
    int r = blockIdx.x, h = blockIdx.y, kvh = h / (hq / hkv), kvd = hkv * hd, stride = (hq + 2 * hkv) * hd;
    int len = pos[r] + 1;
    float* q = fsm;
    float* p = fsm + hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = bf2f(qkv[(i64)r * stride + h * hd + d]);
    __syncthreads();
    const bf16* kr = kc + (i64)r * max_len * kvd + kvh * hd;
    const bf16* vr = vc + (i64)r * max_len * kvd + kvh * hd;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float s = 0.f;
        for (int d = 0; d < hd; d += 2) {
            u32 kk = *(const u32*)(kr + (i64)j * kvd + d);
            s += q[d] * bf2f((bf16)(kk & 0xffff)) + q[d + 1] * bf2f((bf16)(kk >> 16));
        }
        s *= scale;
        p[j] = s;
        m = fmaxf(m, s);
    }
    float sum = block_softmax_numerators(p, len, m, red);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        for (int j = 0; j < len; ++j) o += p[j] * bf2f(vr[(i64)j * kvd + d]);
        out[(i64)r * hq * hd + h * hd + d] = f2bf(o / sum);
    }
}

// Next token of each row from logits (B, V). greedy != 0: the arg-max (lowest index on ties).
// Otherwise p_j ∝ exp((l_j − max)/T); the nucleus is {j : p_j ≥ τ} with τ the largest value
// (found by bisection) whose set keeps at least top_p of the mass; the token is the first
// index, in vocabulary order, where the running nucleus mass exceeds u·(nucleus mass), with
// u = uniform[b] drawn on the host from the row's own seeded stream. blockDim 1024; the
// running sum goes chunk by chunk (chunk = ceil(V / 1024)), and kernels/src/cuda/mod.rs has
// the same algorithm on the CPU as the test reference.
extern "C" __global__ void __launch_bounds__(1024) sample_rows(int* out, const float* logits, const float* uniform, int v,
                                                                float inv_temp, float top_p, int greedy) {
    __shared__ float red[32];
    __shared__ float csum[1024];
    __shared__ int cidx[32];
    int r = blockIdx.x;
    const float* l = logits + (i64)r * v;
    float m = NEG_INF;
    int mi = 0x7fffffff;
    for (int j = threadIdx.x; j < v; j += blockDim.x)
        if (l[j] > m) { m = l[j]; mi = j; }
    // arg-max: first the max, then the lowest index holding it.
    float mx = block_max(m, red);
    int cand = (m == mx) ? mi : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) cand = min(cand, __shfl_xor_sync(FULL_MASK, cand, o));
    if ((threadIdx.x & 31) == 0) cidx[threadIdx.x >> 5] = cand;
    __syncthreads();
    if (greedy) {
        if (threadIdx.x == 0) {
            int best = 0x7fffffff;
            for (int w = 0; w < (int)(blockDim.x >> 5); ++w) best = min(best, cidx[w]);
            out[r] = best;
        }
        return;
    }
    int chunk = (v + blockDim.x - 1) / blockDim.x;
    int j0 = threadIdx.x * chunk, j1 = min(v, j0 + chunk);
    float z = 0.f;
    for (int j = j0; j < j1; ++j) z += __expf((l[j] - mx) * inv_temp);
    float total = block_sum(z, red);
    float tau = 0.f;
    if (top_p < 1.f) {
        float lo = 0.f, hi = 1.f;
        for (int it = 0; it < 32; ++it) {
            float mid = 0.5f * (lo + hi);
            float s = 0.f;
            for (int j = j0; j < j1; ++j) {
                float p = __expf((l[j] - mx) * inv_temp);
                if (p >= mid) s += p;
            }
            s = block_sum(s, red);
            if (s >= top_p * total) lo = mid; else hi = mid;
        }
        tau = lo;
    }
    float cs = 0.f;
    for (int j = j0; j < j1; ++j) {
        float p = __expf((l[j] - mx) * inv_temp);
        if (p >= tau) cs += p;
    }
    csum[threadIdx.x] = cs;
    __syncthreads();
    if (threadIdx.x == 0) {
        float nucleus = 0.f;
        for (int k = 0; k < (int)blockDim.x; ++k) nucleus += csum[k];
        float target = uniform[r] * nucleus, run = 0.f;
        int pick = -1;
        for (int k = 0; k < (int)blockDim.x && pick < 0; ++k) {
            if (run + csum[k] <= target) { run += csum[k]; continue; }
            int a = k * chunk, b = min(v, a + chunk);
            for (int j = a; j < b; ++j) {
                float p = __expf((l[j] - mx) * inv_temp);
                if (p < tau) continue;
                run += p;
                if (run > target) { pick = j; break; }
            }
        }
        // Rounding can leave the target at the very end: take the last nucleus token.
        for (int j = v - 1; j >= 0 && pick < 0; --j)
            if (__expf((l[j] - mx) * inv_temp) >= tau) pick = j;
        out[r] = pick < 0 ? cidx[0] : pick;
    }
}
