// Causal self-attention with grouped-query heads over a packed batch of rows.
//
// Layout: qkv (N, stride) bf16 holds, per token, the q heads (Hq·hd), then the k heads
// (Hkv·hd), then the v heads; q head h reads kv head h / (Hq/Hkv). Rows are packed back to
// back; token i belongs to the row starting at row_start[i] and attends to the tokens of its
// own row up to itself. Outputs: out (N, Hq·hd) bf16 and the log-sum-exp lse (Hq, N) f32 that
// the backward uses to rebuild the probabilities.
//
// Two implementations: `*_simple` (one block per token and head, SIMT, obviously right; the
// reference the tensor-core kernels are tested against on the GPU, and the path for head sizes
// without a tensor-core kernel) and `*_mma_<hd>` (flash-attention style: 64-query by 64-key
// tiles, online softmax, the products on the tensor cores, nothing of size T² in memory; the
// backward recomputes the probabilities and splits into a dK/dV kernel over key tiles and a
// dQ kernel over query tiles, so no atomics and bit-identical results).

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

// ---------------------------------------------------------------- tensor-core kernels
//
// Tiles: tile t covers tokens tile_tok[t] .. +64 of a row that starts at tile_row[t] and has
// tile_len[t] tokens (the last tile of a row may be partial). 128 threads: warp w owns rows
// 16w .. 16w+15 of the tile.

#define BM 64
#define PAD 8

// acc (16 x HD) += C · M: C is the 16 x 64 accumulator of the previous product (rounded to
// bf16 as the A operand), M a 64 x HD tile in shared memory (rows of HD + PAD).
template <int HD, bool LDSM>
__device__ __forceinline__ void mma_acc_tile(float (*acc)[4], const float (*c)[4], const bf16* m) {
#pragma unroll
    for (int kb = 0; kb < 4; ++kb) {
        u32 a[4];
        c_to_a(a, c, kb);
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn) {
            u32 b0, b1;
            frag_b_kn<LDSM>(b0, b1, m, HD + PAD, kb * 16, dn * 8);
            mma16816(acc[dn], a, b0, b1);
        }
    }
}

template <int HD>
__device__ void load_tile(bf16* dst, const bf16* src, int stride, int col, int tok0, int valid) {
    // dst[64][HD+PAD] <- src rows tok0.. (zeros past `valid` rows), 4 bytes per thread and step.
    constexpr int W = HD / 2;
    for (int e = threadIdx.x; e < BM * W; e += blockDim.x) {
        int r = e / W, c = (e - r * W) * 2;
        u32 val = 0;
        if (r < valid) val = *(const u32*)(src + (i64)(tok0 + r) * stride + col + c);
        *(u32*)(dst + r * (HD + PAD) + c) = val;
    }
}

template <int HD, bool LDSM>
__device__ void attn_fwd_mma(bf16* out, float* lse, const bf16* qkv, const int* tile_row, const int* tile_tok,
                             const int* tile_len, int n, int hq, int hkv, float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Ks = (bf16*)smem;
    bf16* Vs = Ks + BM * (HD + PAD);
    const int t = blockIdx.x, h = blockIdx.y, stride = (hq + 2 * hkv) * HD, kvh = h / (hq / hkv);
    const int row0 = tile_row[t], len = tile_len[t], q0 = tile_tok[t] - row0;  // q0: first query, in-row index
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    // Q fragments of this warp's 16 rows, straight from global memory.
    u32 qa[HD / 16][4];
    int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const bf16* p = qkv + (i64)(row0 + qi[r]) * stride + h * HD + kk * 16 + 2 * tq;
            bool ok = qi[r] < len;
            qa[kk][r] = ok ? *(const u32*)p : 0u;
            qa[kk][r + 2] = ok ? *(const u32*)(p + 8) : 0u;
        }
    float o[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    int lim[2] = {min(qi[0], len - 1), min(qi[1], len - 1)};
    int last = min(q0 + BM, len) - 1;
    for (int k0 = 0; k0 <= last; k0 += BM) {
        int valid = min(BM, len - k0);
        __syncthreads();
        load_tile<HD>(Ks, qkv, stride, hq * HD + kvh * HD, row0 + k0, valid);
        load_tile<HD>(Vs, qkv, stride, (hq + hkv) * HD + kvh * HD, row0 + k0, valid);
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                u32 b0, b1;
                frag_b_nk<LDSM>(b0, b1, Ks, HD + PAD, nt * 8, kk * 16);
                mma16816(s[nt], qa[kk], b0, b1);
            }
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e >> 1, kj = k0 + nt * 8 + 2 * tq + (e & 1);
                float v = kj <= lim[r] ? s[nt][e] * c2 : NEG_INF;
                s[nt][e] = v;
                mx[r] = fmaxf(mx[r], v);
            }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            alpha[r] = exp2f(m[r] - mn);
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = exp2f(s[nt][e] - m[e >> 1]);
                s[nt][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn) {
            o[dn][0] *= alpha[0]; o[dn][1] *= alpha[0];
            o[dn][2] *= alpha[1]; o[dn][3] *= alpha[1];
        }
        mma_acc_tile<HD, LDSM>(o, s, Vs);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (qi[r] >= len) continue;
        i64 tok = row0 + qi[r];
        float inv = 1.f / l[r];
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn)
            *(u32*)(out + tok * hq * HD + h * HD + dn * 8 + 2 * tq) = pack_bf2(o[dn][2 * r] * inv, o[dn][2 * r + 1] * inv);
        if (tq == 0) lse[(i64)h * n + tok] = (m[r] + __log2f(l[r])) * LN2;
    }
}

// dK, dV of one 64-key tile and kv head, over the group's q heads and every later query.
template <int HD, bool LDSM>
__device__ void attn_bwd_dkdv_mma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum,
                                  const int* tile_row, const int* tile_tok, const int* tile_len, int n, int hq, int hkv,
                                  float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Ks = (bf16*)smem;
    bf16* Vs = Ks + BM * (HD + PAD);
    bf16* Qs = Vs + BM * (HD + PAD);
    bf16* Os = Qs + BM * (HD + PAD);
    float* Ls = (float*)(Os + BM * (HD + PAD));
    float* Ds = Ls + BM;
    const int t = blockIdx.x, gk = blockIdx.y, stride = (hq + 2 * hkv) * HD, grp = hq / hkv;
    const int row0 = tile_row[t], len = tile_len[t], k0 = tile_tok[t] - row0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    load_tile<HD>(Ks, qkv, stride, hq * HD + gk * HD, row0 + k0, min(BM, len - k0));
    load_tile<HD>(Vs, qkv, stride, (hq + hkv) * HD + gk * HD, row0 + k0, min(BM, len - k0));
    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[dn][e] = dv[dn][e] = 0.f;
    int kj[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};  // this thread's two keys (in-row)
    const bf16* Kw = Ks + (warp * 16) * (HD + PAD);
    const bf16* Vw = Vs + (warp * 16) * (HD + PAD);
    for (int h = gk * grp; h < (gk + 1) * grp; ++h) {
        for (int q0 = k0; q0 < len; q0 += BM) {
            int valid = min(BM, len - q0);
            __syncthreads();
            load_tile<HD>(Qs, qkv, stride, h * HD, row0 + q0, valid);
            load_tile<HD>(Os, dout, hq * HD, h * HD, row0 + q0, valid);
            for (int r = threadIdx.x; r < BM; r += blockDim.x) {
                Ls[r] = r < valid ? lse[(i64)h * n + row0 + q0 + r] * LOG2E : 0.f;
                Ds[r] = r < valid ? dsum[(i64)h * n + row0 + q0 + r] : 0.f;
            }
            __syncthreads();
            // Sᵀ (16 keys x 64 queries) and dPᵀ = V dOᵀ.
            float st[8][4], dp[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) st[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                // This warp's 16 keys of K and V as A operands, loaded once per k-step.
                u32 ka[4], va[4];
                frag_a<LDSM>(ka, Kw, HD + PAD, 0, kk * 16);
                frag_a<LDSM>(va, Vw, HD + PAD, 0, kk * 16);
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    u32 b0, b1;
                    frag_b_nk<LDSM>(b0, b1, Qs, HD + PAD, nt * 8, kk * 16);
                    mma16816(st[nt], ka, b0, b1);
                    frag_b_nk<LDSM>(b0, b1, Os, HD + PAD, nt * 8, kk * 16);
                    mma16816(dp[nt], va, b0, b1);
                }
            }
            // Pᵀ and dSᵀ = Pᵀ ∘ (dPᵀ − D).
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int qc = nt * 8 + 2 * tq + (e & 1);  // query column in the tile
                    int qi = q0 + qc, key = kj[e >> 1];
                    float p = (qi < len && key <= qi) ? exp2f(st[nt][e] * c2 - Ls[qc]) : 0.f;
                    st[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - Ds[qc]);
                }
            // dV += Pᵀ dO and dK += dSᵀ Q (k-dimension: the 64 queries). The two products stay
            // interleaved in one loop rather than two mma_acc_tile calls: split, ptxas gave the
            // ldmatrix build 248 registers instead of 220.
#pragma unroll
            for (int kb = 0; kb < 4; ++kb) {
                u32 pa[4], sa[4];
                c_to_a(pa, st, kb);
                c_to_a(sa, dp, kb);
#pragma unroll
                for (int dn = 0; dn < HD / 8; ++dn) {
                    u32 b0, b1;
                    frag_b_kn<LDSM>(b0, b1, Os, HD + PAD, kb * 16, dn * 8);
                    mma16816(dv[dn], pa, b0, b1);
                    frag_b_kn<LDSM>(b0, b1, Qs, HD + PAD, kb * 16, dn * 8);
                    mma16816(dk[dn], sa, b0, b1);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kj[r] >= len) continue;
        i64 tok = row0 + kj[r];
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn) {
            int c = dn * 8 + 2 * tq;
            *(u32*)(dqkv + tok * stride + hq * HD + gk * HD + c) = pack_bf2(dk[dn][2 * r] * scale, dk[dn][2 * r + 1] * scale);
            *(u32*)(dqkv + tok * stride + (hq + hkv) * HD + gk * HD + c) = pack_bf2(dv[dn][2 * r], dv[dn][2 * r + 1]);
        }
    }
}

// dQ of one 64-query tile and q head, over the key tiles up to the diagonal.
template <int HD, bool LDSM>
__device__ void attn_bwd_dq_mma(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum,
                                const int* tile_row, const int* tile_tok, const int* tile_len, int n, int hq, int hkv,
                                float scale) {
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* Ks = (bf16*)smem;
    bf16* Vs = Ks + BM * (HD + PAD);
    const int t = blockIdx.x, h = blockIdx.y, stride = (hq + 2 * hkv) * HD, kvh = h / (hq / hkv);
    const int row0 = tile_row[t], len = tile_len[t], q0 = tile_tok[t] - row0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    u32 qa[HD / 16][4], oa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            bool ok = qi[r] < len;
            const bf16* p = qkv + (i64)(row0 + qi[r]) * stride + h * HD + kk * 16 + 2 * tq;
            const bf16* po = dout + (i64)(row0 + qi[r]) * hq * HD + h * HD + kk * 16 + 2 * tq;
            qa[kk][r] = ok ? *(const u32*)p : 0u;
            qa[kk][r + 2] = ok ? *(const u32*)(p + 8) : 0u;
            oa[kk][r] = ok ? *(const u32*)po : 0u;
            oa[kk][r + 2] = ok ? *(const u32*)(po + 8) : 0u;
        }
    float L[2], D[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        bool ok = qi[r] < len;
        L[r] = ok ? lse[(i64)h * n + row0 + qi[r]] * LOG2E : 0.f;
        D[r] = ok ? dsum[(i64)h * n + row0 + qi[r]] : 0.f;
    }
    float dq[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.f;
    int last = min(q0 + BM, len) - 1;
    for (int k0 = 0; k0 <= last; k0 += BM) {
        int valid = min(BM, len - k0);
        __syncthreads();
        load_tile<HD>(Ks, qkv, stride, hq * HD + kvh * HD, row0 + k0, valid);
        load_tile<HD>(Vs, qkv, stride, (hq + hkv) * HD + kvh * HD, row0 + k0, valid);
        __syncthreads();
        float s[8][4], dp[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                u32 b0, b1;
                frag_b_nk<LDSM>(b0, b1, Ks, HD + PAD, nt * 8, kk * 16);
                mma16816(s[nt], qa[kk], b0, b1);
                frag_b_nk<LDSM>(b0, b1, Vs, HD + PAD, nt * 8, kk * 16);
                mma16816(dp[nt], oa[kk], b0, b1);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e >> 1, kj = k0 + nt * 8 + 2 * tq + (e & 1);
                float p = (qi[r] < len && kj <= qi[r]) ? exp2f(s[nt][e] * c2 - L[r]) : 0.f;
                s[nt][e] = p * (dp[nt][e] - D[r]);
            }
        mma_acc_tile<HD, LDSM>(dq, s, Ks);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (qi[r] >= len) continue;
        i64 tok = row0 + qi[r];
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn)
            *(u32*)(dqkv + tok * stride + h * HD + dn * 8 + 2 * tq) = pack_bf2(dq[dn][2 * r] * scale, dq[dn][2 * r + 1] * scale);
    }
}

#define ATTN_INSTANCES(HD, LDSM_, SUFFIX)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_fwd_##SUFFIX##_##HD(                                        \
        bf16* out, float* lse, const bf16* qkv, const int* tr, const int* tt, const int* tl, int n, int hq, int hkv,   \
        float scale) {                                                                                                  \
        attn_fwd_mma<HD, LDSM_>(out, lse, qkv, tr, tt, tl, n, hq, hkv, scale);                                              \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkdv_##SUFFIX##_##HD(                                   \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, const int* tr,             \
        const int* tt, const int* tl, int n, int hq, int hkv, float scale) {                                            \
        attn_bwd_dkdv_mma<HD, LDSM_>(dqkv, dout, qkv, lse, dsum, tr, tt, tl, n, hq, hkv, scale);                            \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_##SUFFIX##_##HD(                                     \
        bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, const int* tr,             \
        const int* tt, const int* tl, int n, int hq, int hkv, float scale) {                                            \
        attn_bwd_dq_mma<HD, LDSM_>(dqkv, dout, qkv, lse, dsum, tr, tt, tl, n, hq, hkv, scale);                              \
    }

// `mma`: fragments with plain 32/16-bit shared-memory loads (the default); `mmaldsm`: the same
// kernels with ldmatrix, which on an H100 (2026-11-27, head size 64) raised the registers
// (127 -> 230 in the forward) and ran 1.4x slower; kept for tuning (BENCHMARKS-cuda.md).
ATTN_INSTANCES(32, false, mma)
ATTN_INSTANCES(64, false, mma)
ATTN_INSTANCES(128, false, mma)
ATTN_INSTANCES(32, true, mmaldsm)
ATTN_INSTANCES(64, true, mmaldsm)
ATTN_INSTANCES(128, true, mmaldsm)
