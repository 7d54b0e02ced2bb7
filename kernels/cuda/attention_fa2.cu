// Causal GQA attention, second generation of the tensor-core kernels (`fa2_*`; the default for
// head sizes 32, 64 and 128). Same layout, outputs and numerics as the `attn_*_mma_*` kernels
// of attention.cu (which stay, selectable, as the comparison point), with the changes that the
// H100 profile of 2026-11-27 pointed at (BENCHMARKS-cuda.md):
//
// - Tiles move global -> shared with `cp.async` (16 bytes per instruction, no register staging),
//   double-buffered: the next key (or query) tile is in flight while the current one is
//   multiplied. The old kernels loaded 4 bytes per thread and step, synchronously.
// - Every mma fragment comes from shared memory through `ldmatrix` (x4: two fragments per
//   instruction). Addresses are formed from one per-iteration base register made opaque to the
//   compiler (`opaque`), so it cannot hoist dozens of loop-invariant addresses into registers
//   (what made the first ldmatrix attempt slower: 127 -> 230 registers).
// - The causal mask is applied only on the diagonal tile (and on a partial last tile).
// - dK/dV runs one block per (key tile, q head) instead of per (key tile, kv head): GQA groups no
//   longer serialise 8 heads in one block. With groups (hq > hkv) each q head's dK, dV go to an
//   f32 scratch and `fa2_dkdv_reduce` adds the group's heads in head order (deterministic).
// - Blocks are ordered heaviest first (`order`: tiles by descending work, computed on the host),
//   so the causal triangle's long blocks do not start last and form a tail.
//
// Block: 128 threads, 4 warps; a tile is 64 tokens, warp w owns tile rows 16w .. 16w+15.
// Grid: (q heads, tiles); blockIdx.y indexes `order`.

#define FA_BM 64
#define FA_PAD 8
#define FA_NT 128
#define FA_DQ_MINB 1

// 16 bytes global -> shared, asynchronously; zero-filled (source not read) when !valid.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared, asynchronously; zero-filled when !valid.
__device__ __forceinline__ void cp_async4(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// A value the compiler must treat as unknown (it cannot fold or hoist arithmetic through it).
__device__ __forceinline__ u32 opaque(u32 x) {
    u32 r;
    asm volatile("mov.b32 %0, %1;\n" : "=r"(r) : "r"(x));
    return r;
}

__device__ __forceinline__ void ldsm_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(u32& b0, u32& b1, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

// Per-lane byte offsets into a row-major bf16 tile with LD elements per row (lane l supplies the
// address of row l%8 of matrix l/8):
//  - lane_off_b: B operand with k contiguous (B[k][n] = M[n0+n][k0+k]); x4 at (n0, k0) gives
//    b0,b1 of k-block k0 and b0,b1 of k-block k0+16 (x2: the first pair).
//  - lane_off_a: A operand (A[r][k] = M[r0+r][k0+k]); x4 at (r0, k0) gives a0..a3. The same
//    offsets with .trans give a B operand with n contiguous (B[k][n] = M[k0+k][n0+n]): x4 at
//    (k0, n0) gives b0,b1 of n-block n0 and b0,b1 of n-block n0+8.
template <int LD>
__device__ __forceinline__ u32 lane_off_b() {
    int l = threadIdx.x & 31;
    return (u32)(((l & 7) * LD + (l >> 3) * 8) * 2);
}
template <int LD>
__device__ __forceinline__ u32 lane_off_a() {
    int l = threadIdx.x & 31;
    return (u32)((((l >> 3) & 1) * 8 + (l & 7)) * LD * 2 + (l >> 4) * 16);
}
// Byte offset of element (r, c) of a tile with LD elements per row.
#define FA_AT(LD, r, c) ((u32)(((r) * (LD) + (c)) * 2))

// Starts copying a 64 x HD tile (rows tok0 .. tok0+63 of src, columns col .. col+HD) into dst
// (rows of HD + FA_PAD); rows at or past `valid` become zeros.
template <int HD>
__device__ __forceinline__ void fa_load_tile(u32 dst, const bf16* src, int stride, int col, int tok0, int valid) {
    constexpr int C = HD / 8;  // 16-byte chunks per row
#pragma unroll
    for (int e = threadIdx.x; e < FA_BM * C; e += FA_NT) {
        int r = e / C, c = (e % C) * 8;
        bool ok = r < valid;
        cp_async16(dst + FA_AT(HD + FA_PAD, r, c), src + (i64)(tok0 + (ok ? r : 0)) * stride + col + c, ok);
    }
}

// This thread's A-operand fragments (mma16816 layout) of rows qi[0], qi[1] of a row-major
// bf16 matrix: columns col .. col+HD of rows row0 + qi[r]; zeros for rows at or past `len`.
template <int HD>
__device__ __forceinline__ void fa_row_frags(u32 (*a)[4], const bf16* m, int stride, int col, int row0, const int* qi, int len) {
    const int tq = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const bf16* p = m + (i64)(row0 + qi[r]) * stride + col + kk * 16 + 2 * tq;
            bool ok = qi[r] < len;
            a[kk][r] = ok ? *(const u32*)p : 0u;
            a[kk][r + 2] = ok ? *(const u32*)(p + 8) : 0u;
        }
}

// One step of the query-tile kernels' K/V pipeline: starts loading key tile kt+1 (K at kcol,
// V at vcol) into the other stage, waits until tile kt has landed, and syncs the block.
template <int HD>
__device__ __forceinline__ void fa_kv_step(u32 sbase, const bf16* qkv, int stride, int kcol, int vcol, int row0, int len, int kt, int nkt) {
    constexpr int TILE = FA_BM * (HD + FA_PAD) * 2;
    if (kt + 1 < nkt) {
        u32 nxt = sbase + ((kt + 1) & 1) * 2 * TILE;
        int k1 = (kt + 1) * FA_BM;
        fa_load_tile<HD>(nxt, qkv, stride, kcol, row0 + k1, min(FA_BM, len - k1));
        fa_load_tile<HD>(nxt + TILE, qkv, stride, vcol, row0 + k1, min(FA_BM, len - k1));
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// acc (16 x HD) += C·M: C is this warp's 16 x 64 accumulator of the previous product (rounded
// to bf16 as the A operand), M a 64 x HD tile read with ldmatrix.trans from `mb` (its base
// plus lane_off_a): P·V in the forward, dS·K in dQ.
template <int HD>
__device__ __forceinline__ void fa_acc_cm(float (*acc)[4], const float (*c)[4], u32 mb) {
    constexpr int LD = HD + FA_PAD;
#pragma unroll
    for (int kb2 = 0; kb2 < 4; ++kb2) {
        u32 a[4];
        c_to_a(a, c, kb2);
#pragma unroll
        for (int dd = 0; dd < HD / 16; ++dd) {
            u32 b[4];
            ldsm_x4_t(b, mb + FA_AT(LD, kb2 * 16, dd * 16));
            mma16816(acc[2 * dd], a, b[0], b[1]);
            mma16816(acc[2 * dd + 1], a, b[2], b[3]);
        }
    }
}

// ---------------------------------------------------------------- forward

template <int HD>
__device__ void fa2_fwd(bf16* out, float* lse, const bf16* qkv, const int* tile_row, const int* tile_tok,
                        const int* tile_len, const int* order, int n, int hq, int hkv, float scale) {
    constexpr int LD = HD + FA_PAD, TILE = FA_BM * LD * 2;  // bytes per tile
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 sbase = smem_addr(smem);  // stage s: K at sbase + 2s·TILE, V after it
    const int h = blockIdx.x, t = order[blockIdx.y];
    const int stride = (hq + 2 * hkv) * HD, kvh = h / (hq / hkv);
    const int row0 = tile_row[t], len = tile_len[t], q0 = tile_tok[t] - row0;
    const int kcol = hq * HD + kvh * HD, vcol = (hq + hkv) * HD + kvh * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    const int nkt = q0 / FA_BM + 1;  // key tiles 0 .. the diagonal one

    fa_load_tile<HD>(sbase, qkv, stride, kcol, row0, min(FA_BM, len));
    fa_load_tile<HD>(sbase + TILE, qkv, stride, vcol, row0, min(FA_BM, len));
    cp_async_commit();

    u32 qa[HD / 16][4];
    int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    fa_row_frags<HD>(qa, qkv, stride, h * HD, row0, qi, len);
    float o[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    int lim[2] = {min(qi[0], len - 1), min(qi[1], len - 1)};

    for (int kt = 0; kt < nkt; ++kt) {
        fa_kv_step<HD>(sbase, qkv, stride, kcol, vcol, row0, len, kt, nkt);
        const u32 kb = opaque(sbase + (kt & 1) * 2 * TILE + lane_off_b<LD>());
        const u32 vb = opaque(sbase + (kt & 1) * 2 * TILE + TILE + lane_off_a<LD>());
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kp = 0; kp < HD / 32; ++kp) {
                u32 b[4];
                ldsm_x4(b, kb + FA_AT(LD, nt * 8, kp * 32));
                mma16816(s[nt], qa[2 * kp], b[0], b[1]);
                mma16816(s[nt], qa[2 * kp + 1], b[2], b[3]);
            }
        }
        const int k0 = kt * FA_BM;
        float mx[2] = {NEG_INF, NEG_INF};
        if (kt == nkt - 1) {  // the diagonal tile: causal mask (and keys past the row's end)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int r = e >> 1, kj = k0 + nt * 8 + 2 * tq + (e & 1);
                    float v = kj <= lim[r] ? s[nt][e] * c2 : NEG_INF;
                    s[nt][e] = v;
                    mx[r] = fmaxf(mx[r], v);
                }
        } else {
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float v = s[nt][e] * c2;
                    s[nt][e] = v;
                    mx[e >> 1] = fmaxf(mx[e >> 1], v);
                }
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
            o[dn][0] *= alpha[0];
            o[dn][1] *= alpha[0];
            o[dn][2] *= alpha[1];
            o[dn][3] *= alpha[1];
        }
        // O += P·V: P (16 x 64) from the registers, V fragments by ldmatrix.trans.
        fa_acc_cm<HD>(o, s, vb);
        __syncthreads();  // every warp is done with this stage before it is refilled
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

// ---------------------------------------------------------------- backward

// Σ of the products of two pairs of packed bf16.
__device__ __forceinline__ float dot_bf2(u32 a, u32 b) {
    return bf2f((bf16)(a & 0xffff)) * bf2f((bf16)(b & 0xffff)) + bf2f((bf16)(a >> 16)) * bf2f((bf16)(b >> 16));
}

// dQ of one 64-query tile and q head, over the key tiles up to the diagonal. Also computes
// D = rowsum(dO ∘ O) of its queries (from the dO fragments it holds) and writes it to dsum for
// the dK/dV kernel, which therefore runs after this one.
template <int HD>
__device__ void fa2_bwd_dq(bf16* dqkv, float* dsum, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse,
                           const int* tile_row, const int* tile_tok, const int* tile_len, const int* order, int n,
                           int hq, int hkv, float scale) {
    constexpr int LD = HD + FA_PAD, TILE = FA_BM * LD * 2;
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 sbase = smem_addr(smem);
    const int h = blockIdx.x, t = order[blockIdx.y];
    const int stride = (hq + 2 * hkv) * HD, kvh = h / (hq / hkv);
    const int row0 = tile_row[t], len = tile_len[t], q0 = tile_tok[t] - row0;
    const int kcol = hq * HD + kvh * HD, vcol = (hq + hkv) * HD + kvh * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    const int nkt = q0 / FA_BM + 1;

    fa_load_tile<HD>(sbase, qkv, stride, kcol, row0, min(FA_BM, len));
    fa_load_tile<HD>(sbase + TILE, qkv, stride, vcol, row0, min(FA_BM, len));
    cp_async_commit();

    int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    u32 qa[HD / 16][4], oa[HD / 16][4];
    fa_row_frags<HD>(qa, qkv, stride, h * HD, row0, qi, len);
    fa_row_frags<HD>(oa, dout, hq * HD, h * HD, row0, qi, len);
    float L[2], D[2] = {0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const bf16* p = out + (i64)(row0 + qi[r]) * hq * HD + h * HD + kk * 16 + 2 * tq;
            if (qi[r] < len) D[r] += dot_bf2(oa[kk][r], *(const u32*)p) + dot_bf2(oa[kk][r + 2], *(const u32*)(p + 8));
        }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        bool ok = qi[r] < len;
        D[r] += __shfl_xor_sync(FULL_MASK, D[r], 1);
        D[r] += __shfl_xor_sync(FULL_MASK, D[r], 2);
        L[r] = ok ? lse[(i64)h * n + row0 + qi[r]] * LOG2E : 0.f;
        if (ok && tq == 0) dsum[(i64)h * n + row0 + qi[r]] = D[r];
    }
    float dq[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.f;

    for (int kt = 0; kt < nkt; ++kt) {
        fa_kv_step<HD>(sbase, qkv, stride, kcol, vcol, row0, len, kt, nkt);
        const u32 st = sbase + (kt & 1) * 2 * TILE;
        const u32 kb = opaque(st + lane_off_b<LD>());
        const u32 ka = opaque(st + lane_off_a<LD>());  // K through .trans for dS·K
        float s[8][4], dp[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
            for (int kp = 0; kp < HD / 32; ++kp) {
                u32 b[4];
                ldsm_x4(b, kb + FA_AT(LD, nt * 8, kp * 32));
                mma16816(s[nt], qa[2 * kp], b[0], b[1]);
                mma16816(s[nt], qa[2 * kp + 1], b[2], b[3]);
                ldsm_x4(b, kb + TILE + FA_AT(LD, nt * 8, kp * 32));
                mma16816(dp[nt], oa[2 * kp], b[0], b[1]);
                mma16816(dp[nt], oa[2 * kp + 1], b[2], b[3]);
            }
        }
        const int k0 = kt * FA_BM;
        if (kt == nkt - 1) {
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int r = e >> 1, kj = k0 + nt * 8 + 2 * tq + (e & 1);
                    float p = (qi[r] < len && kj <= qi[r]) ? exp2f(s[nt][e] * c2 - L[r]) : 0.f;
                    s[nt][e] = p * (dp[nt][e] - D[r]);
                }
        } else {
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int r = e >> 1;
                    float p = exp2f(s[nt][e] * c2 - L[r]);
                    s[nt][e] = p * (dp[nt][e] - D[r]);
                }
        }
        // dQ += dS·K: K fragments with n (the head dimension) contiguous: ldmatrix.trans.
        fa_acc_cm<HD>(dq, s, ka);
        __syncthreads();
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

// dK, dV of one 64-key tile for one q head h, over the query tiles from the diagonal to the
// row's end. With hq == hkv the result goes straight into dqkv (bf16); otherwise into the f32
// scratch dkh / dvh (hq, n, HD) for fa2_dkdv_reduce.
template <int HD>
__device__ void fa2_bwd_dkdv(bf16* dqkv, float* dkh, float* dvh, const bf16* dout, const bf16* qkv, const float* lse,
                             const float* dsum, const int* tile_row, const int* tile_tok, const int* tile_len,
                             const int* order, int n, int hq, int hkv, float scale) {
    constexpr int LD = HD + FA_PAD, TILE = FA_BM * LD * 2;
    constexpr int STAGE = 2 * TILE + 2 * FA_BM * 4;  // Q tile, dO tile, L, D
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 sbase = smem_addr(smem);  // K, V tiles, then two stages
    const u32 stages = sbase + 2 * TILE;
    const float* fsm = (const float*)smem;
    const int h = blockIdx.x, t = order[blockIdx.y];
    const int stride = (hq + 2 * hkv) * HD, kvh = h / (hq / hkv);
    const int row0 = tile_row[t], len = tile_len[t], k0 = tile_tok[t] - row0;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const float c2 = scale * LOG2E;
    const int qt0 = k0 / FA_BM, nqt = (len - 1) / FA_BM + 1;

    auto load_stage = [&](int qt) {
        u32 sd = stages + (qt & 1) * STAGE;
        int q0 = qt * FA_BM, valid = min(FA_BM, len - q0);
        fa_load_tile<HD>(sd, qkv, stride, h * HD, row0 + q0, valid);
        fa_load_tile<HD>(sd + TILE, dout, hq * HD, h * HD, row0 + q0, valid);
        int r = threadIdx.x & (FA_BM - 1);
        bool ok = r < valid;
        const float* src = (threadIdx.x < FA_BM ? lse : dsum) + (i64)h * n + row0 + q0 + (ok ? r : 0);
        cp_async4(sd + 2 * TILE + (threadIdx.x < FA_BM ? 0 : FA_BM * 4) + r * 4, src, ok);
    };

    fa_load_tile<HD>(sbase, qkv, stride, hq * HD + kvh * HD, row0 + k0, min(FA_BM, len - k0));
    fa_load_tile<HD>(sbase + TILE, qkv, stride, (hq + hkv) * HD + kvh * HD, row0 + k0, min(FA_BM, len - k0));
    load_stage(qt0);
    cp_async_commit();

    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[dn][e] = dv[dn][e] = 0.f;
    int kj[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};  // this thread's two keys (in-row)

    for (int qt = qt0; qt < nqt; ++qt) {
        if (qt + 1 < nqt) {
            load_stage(qt + 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const int q0 = qt * FA_BM;
        const u32 sd = stages + (qt & 1) * STAGE;
        const float* Ls = fsm + (sd - sbase + 2 * TILE) / 4;
        const float* Ds = Ls + FA_BM;
        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (16 keys x 64 queries per warp). This warp's K and V rows
        // are the A operands, loaded per k-block (they are reused over the 8 query n-tiles).
        const u32 kva = opaque(sbase + FA_AT(LD, warp * 16, 0) + lane_off_a<LD>());
        const u32 qb = opaque(sd + lane_off_b<LD>());
        float st[8][4], dpt[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 ka[4], va[4];
            ldsm_x4(ka, kva + FA_AT(LD, 0, kk * 16));
            ldsm_x4(va, kva + TILE + FA_AT(LD, 0, kk * 16));
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                u32 b0, b1;
                ldsm_x2(b0, b1, qb + FA_AT(LD, nt * 8, kk * 16));
                mma16816(st[nt], ka, b0, b1);
                ldsm_x2(b0, b1, qb + TILE + FA_AT(LD, nt * 8, kk * 16));
                mma16816(dpt[nt], va, b0, b1);
            }
        }
        // Pᵀ and dSᵀ = Pᵀ ∘ (dPᵀ − D); masked on the diagonal tile and past the row's end.
        const bool edge = qt == qt0 || q0 + FA_BM > len;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int qc = nt * 8 + 2 * tq + (e & 1);
                float p = exp2f(st[nt][e] * c2 - Ls[qc] * LOG2E);
                if (edge) {
                    int qi = q0 + qc;
                    p = (qi < len && kj[e >> 1] <= qi) ? p : 0.f;
                }
                st[nt][e] = p;
                dpt[nt][e] = p * (dpt[nt][e] - Ds[qc]);
            }
        // dV += Pᵀ·dO and dK += dSᵀ·Q (k-dimension: the 64 queries; B through .trans).
        const u32 qt_ = opaque(sd + lane_off_a<LD>());
#pragma unroll
        for (int kb2 = 0; kb2 < 4; ++kb2) {
            u32 pa[4], sa[4];
            c_to_a(pa, st, kb2);
            c_to_a(sa, dpt, kb2);
#pragma unroll
            for (int dd = 0; dd < HD / 16; ++dd) {
                u32 b[4];
                ldsm_x4_t(b, qt_ + TILE + FA_AT(LD, kb2 * 16, dd * 16));
                mma16816(dv[2 * dd], pa, b[0], b[1]);
                mma16816(dv[2 * dd + 1], pa, b[2], b[3]);
                ldsm_x4_t(b, qt_ + FA_AT(LD, kb2 * 16, dd * 16));
                mma16816(dk[2 * dd], sa, b[0], b[1]);
                mma16816(dk[2 * dd + 1], sa, b[2], b[3]);
            }
        }
        __syncthreads();
    }
    const bool direct = hq == hkv;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (kj[r] >= len) continue;
        i64 tok = row0 + kj[r];
#pragma unroll
        for (int dn = 0; dn < HD / 8; ++dn) {
            int c = dn * 8 + 2 * tq;
            if (direct) {
                *(u32*)(dqkv + tok * stride + hq * HD + kvh * HD + c) = pack_bf2(dk[dn][2 * r] * scale, dk[dn][2 * r + 1] * scale);
                *(u32*)(dqkv + tok * stride + (hq + hkv) * HD + kvh * HD + c) = pack_bf2(dv[dn][2 * r], dv[dn][2 * r + 1]);
            } else {
                i64 o = ((i64)h * n + tok) * HD + c;
                *(float2*)(dkh + o) = make_float2(dk[dn][2 * r] * scale, dk[dn][2 * r + 1] * scale);
                *(float2*)(dvh + o) = make_float2(dv[dn][2 * r], dv[dn][2 * r + 1]);
            }
        }
    }
}

// dqkv's k and v columns = Σ over each kv head's group of q heads (in head order) of dkh, dvh.
extern "C" __global__ void fa2_dkdv_reduce(bf16* dqkv, const float* dkh, const float* dvh, int n, int hq, int hkv, int hd) {
    int grp = hq / hkv, stride = (hq + 2 * hkv) * hd;
    i64 total = (i64)n * hkv * hd;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        i64 i = e / (hkv * hd);
        int rem = (int)(e - i * hkv * hd), gk = rem / hd, c = rem - gk * hd;
        float sk = 0.f, sv = 0.f;
        for (int j = 0; j < grp; ++j) {
            i64 o = ((i64)(gk * grp + j) * n + i) * hd + c;
            sk += dkh[o];
            sv += dvh[o];
        }
        dqkv[i * stride + hq * hd + gk * hd + c] = f2bf(sk);
        dqkv[i * stride + (hq + hkv) * hd + gk * hd + c] = f2bf(sv);
    }
}

#define FA2_INSTANCES(HD)                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_NT) fa2_fwd_##HD(bf16* out, float* lse, const bf16* qkv,          \
                                                                      const int* tr, const int* tt, const int* tl,    \
                                                                      const int* ord, int n, int hq, int hkv,         \
                                                                      float scale) {                                  \
        fa2_fwd<HD>(out, lse, qkv, tr, tt, tl, ord, n, hq, hkv, scale);                                               \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_NT, FA_DQ_MINB) fa2_bwd_dq_##HD(                                  \
        bf16* dqkv, float* dsum, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse, const int* tr,  \
        const int* tt, const int* tl, const int* ord, int n, int hq, int hkv, float scale) {                           \
        fa2_bwd_dq<HD>(dqkv, dsum, dout, out, qkv, lse, tr, tt, tl, ord, n, hq, hkv, scale);                          \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_NT) fa2_bwd_dkdv_##HD(                                            \
        bf16* dqkv, float* dkh, float* dvh, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum,   \
        const int* tr, const int* tt, const int* tl, const int* ord, int n, int hq, int hkv, float scale) {            \
        fa2_bwd_dkdv<HD>(dqkv, dkh, dvh, dout, qkv, lse, dsum, tr, tt, tl, ord, n, hq, hkv, scale);                   \
    }

FA2_INSTANCES(32)
FA2_INSTANCES(64)
FA2_INSTANCES(128)
