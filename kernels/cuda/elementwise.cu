// Embedding, RMSNorm, rotary, SwiGLU and casts: forward and backward. Every reduction runs in
// a fixed order (no atomics), so results are bit-identical from run to run.

// x (n, d) f32 = table[tokens] (f32 master weights).
extern "C" __global__ void embedding_fwd(float* x, const float* table, const int* tokens, int n, int d) {
    i64 total = (i64)n * d;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / d;
        int j = (int)(i - r * d);
        x[i] = table[(i64)tokens[r] * d + j];
    }
}

// dtable[tok] += Σ dx[p] over the positions p holding tok, in position order. Block u handles
// the unique token uniq[u], whose positions are pos[start[u] .. start[u+1]].
extern "C" __global__ void embedding_bwd(float* dtable, const float* dx, const int* uniq, const int* start,
                                         const int* pos, int d) {
    int u = blockIdx.x;
    i64 tok = uniq[u];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (int k = start[u]; k < start[u + 1]; ++k) s += dx[(i64)pos[k] * d + j];
        dtable[tok * d + j] += s;
    }
}

// Four consecutive bf16 (8 bytes) as floats, and back.
__device__ __forceinline__ float4 bf4_to_f4(uint2 v) {
    return make_float4(bf2f((bf16)(v.x & 0xffff)), bf2f((bf16)(v.x >> 16)), bf2f((bf16)(v.y & 0xffff)), bf2f((bf16)(v.y >> 16)));
}
__device__ __forceinline__ uint2 f4_to_bf4(float4 v) { return make_uint2(pack_bf2(v.x, v.y), pack_bf2(v.z, v.w)); }

// y = x * rstd * w with rstd = 1/sqrt(mean(x²) + eps); one block per row. Returns rstd.
// Rows whose width is a multiple of 4 move 16 bytes (f32) / 8 bytes (bf16) per access.
__device__ float rmsnorm_row(float* yf, bf16* yb, const float* x, const float* w, int r, int d, float eps) {
    __shared__ float sh[32];
    const float* xr = x + (i64)r * d;
    float ss = 0.f;
    if ((d & 3) == 0) {
        const float4* x4 = (const float4*)xr;
        for (int j = threadIdx.x; j < d / 4; j += blockDim.x) {
            float4 v = x4[j];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    }
    ss = block_sum(ss, sh);
    float rs = rsqrtf(ss / d + eps);
    if ((d & 3) == 0) {
        const float4* x4 = (const float4*)xr;
        const float4* w4 = (const float4*)w;
        for (int j = threadIdx.x; j < d / 4; j += blockDim.x) {
            float4 v = x4[j], wv = w4[j];
            float4 y = make_float4(v.x * rs * wv.x, v.y * rs * wv.y, v.z * rs * wv.z, v.w * rs * wv.w);
            if (yb) ((uint2*)(yb + (i64)r * d))[j] = f4_to_bf4(y); else ((float4*)(yf + (i64)r * d))[j] = y;
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float y = xr[j] * rs * w[j];
            if (yb) yb[(i64)r * d + j] = f2bf(y); else yf[(i64)r * d + j] = y;
        }
    }
    return rs;
}

// bf16 output and the saved rstd (training).
extern "C" __global__ void rmsnorm_fwd(bf16* y, float* rstd, const float* x, const float* w, int n, int d, float eps) {
    float rs = rmsnorm_row(nullptr, y, x, w, blockIdx.x, d, eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
}

// f32 output (decoding and tests).
extern "C" __global__ void rmsnorm_fwd_f32(float* y, const float* x, const float* w, int n, int d, float eps) {
    rmsnorm_row(y, nullptr, x, w, blockIdx.x, d, eps);
}

// Backward of rmsnorm for the input: dx (+)= rstd·(dy∘w) − rstd³/d · x · Σ(dy∘w∘x), and a bf16
// copy of the updated dx for the next matrix product. One block per row.
extern "C" __global__ void rmsnorm_bwd(float* dx, bf16* dx_b, const bf16* dy, const float* x, const float* w,
                                       const float* rstd, int n, int d, int accumulate) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    i64 o = (i64)r * d;
    float rs = rstd[r];
    if ((d & 3) == 0) {
        const float4* x4 = (const float4*)(x + o);
        const float4* w4 = (const float4*)w;
        const uint2* g4 = (const uint2*)(dy + o);
        float s = 0.f;
        for (int j = threadIdx.x; j < d / 4; j += blockDim.x) {
            float4 xv = x4[j], wv = w4[j], gv = bf4_to_f4(g4[j]);
            s += gv.x * wv.x * xv.x + gv.y * wv.y * xv.y + gv.z * wv.z * xv.z + gv.w * wv.w * xv.w;
        }
        s = block_sum(s, sh);
        float c = rs * rs * rs * s / d;
        float4* dx4 = (float4*)(dx + o);
        uint2* db4 = (uint2*)(dx_b + o);
        for (int j = threadIdx.x; j < d / 4; j += blockDim.x) {
            float4 xv = x4[j], wv = w4[j], gv = bf4_to_f4(g4[j]);
            float4 v = make_float4(rs * gv.x * wv.x - c * xv.x, rs * gv.y * wv.y - c * xv.y, rs * gv.z * wv.z - c * xv.z,
                                   rs * gv.w * wv.w - c * xv.w);
            if (accumulate) {
                float4 a = dx4[j];
                v.x += a.x; v.y += a.y; v.z += a.z; v.w += a.w;
            }
            dx4[j] = v;
            db4[j] = f4_to_bf4(v);
        }
        return;
    }
    float s = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += bf2f(dy[o + j]) * w[j] * x[o + j];
    s = block_sum(s, sh);
    float c = rs * rs * rs * s / d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float g = rs * bf2f(dy[o + j]) * w[j] - c * x[o + j];
        float v = accumulate ? dx[o + j] + g : g;
        dx[o + j] = v;
        dx_b[o + j] = f2bf(v);
    }
}

// Partial sums of dw[j] = Σ_r dy[r][j]·x[r][j]·rstd[r] over chunks of `rows` rows:
// part[chunk][j]; grid (ceil(d / blockDim.x), chunks).
extern "C" __global__ void rmsnorm_dw_partial(float* part, const bf16* dy, const float* x, const float* rstd,
                                              int n, int d, int rows) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    int r0 = blockIdx.y * rows, r1 = min(n, r0 + rows);
    float s = 0.f;
#pragma unroll 8
    for (int r = r0; r < r1; ++r) s += bf2f(dy[(i64)r * d + j]) * x[(i64)r * d + j] * rstd[r];
    part[(i64)blockIdx.y * d + j] = s;
}

// out[j] += Σ_c part[c][j], chunks in order.
extern "C" __global__ void sum_rows_add(float* out, const float* part, int chunks, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float s = 0.f;
    for (int c = 0; c < chunks; ++c) s += part[(i64)c * d + j];
    out[j] += s;
}

// Rotary embedding in Hugging Face's rotate-half layout, in place on bf16 x whose rows have
// `stride` elements; the rotated heads start at column `col0`. cos/sin are (positions, hd/2).
// inverse != 0 rotates by the negative angle (the backward).
extern "C" __global__ void rope(bf16* x, int stride, int col0, const float* cosv, const float* sinv, const int* pos,
                                int n, int heads, int hd, int inverse) {
    // One warp per (token, head): lane k rotates the pairs (k, k + hd/2), k = lane, lane + 32, ...
    int half = hd / 2, lane = threadIdx.x & 31, wpb = blockDim.x >> 5;
    i64 total = (i64)n * heads;
    for (i64 th = (i64)blockIdx.x * wpb + (threadIdx.x >> 5); th < total; th += (i64)gridDim.x * wpb) {
        i64 t = th / heads;
        int h = (int)(th - t * heads);
        bf16* p = x + t * stride + col0 + h * hd;
        const float* cr = cosv + (i64)pos[t] * half;
        const float* sr = sinv + (i64)pos[t] * half;
        for (int k = lane; k < half; k += 32) {
            float c = cr[k], s = inverse ? -sr[k] : sr[k];
            float a = bf2f(p[k]), b = bf2f(p[k + half]);
            p[k] = f2bf(a * c - b * s);
            p[k + half] = f2bf(b * c + a * s);
        }
    }
}

// a = silu(g) * u with gu (n, 2f) holding [g | u] per row.
extern "C" __global__ void swiglu_fwd(bf16* a, const bf16* gu, int n, int f) {
    // Row r by block (grid-stride); with f even, two columns per thread and access.
    for (i64 r = blockIdx.x; r < n; r += gridDim.x) {
        const bf16* g = gu + r * 2 * f;
        bf16* ar = a + r * f;
        if ((f & 1) == 0) {
            for (int j = threadIdx.x; j < f / 2; j += blockDim.x) {
                u32 gv = ((const u32*)g)[j], uv = ((const u32*)(g + f))[j];
                float g0 = bf2f((bf16)(gv & 0xffff)), g1 = bf2f((bf16)(gv >> 16));
                float u0 = bf2f((bf16)(uv & 0xffff)), u1 = bf2f((bf16)(uv >> 16));
                ((u32*)ar)[j] = pack_bf2(g0 / (1.f + __expf(-g0)) * u0, g1 / (1.f + __expf(-g1)) * u1);
            }
        } else {
            for (int j = threadIdx.x; j < f; j += blockDim.x) {
                float gj = bf2f(g[j]), u = bf2f(g[f + j]);
                ar[j] = f2bf(gj / (1.f + __expf(-gj)) * u);
            }
        }
    }
}

// dgu = [da·u·silu'(g) | da·silu(g)].
__device__ __forceinline__ void swiglu_bwd_one(float g, float u, float d, float& dg, float& du) {
    float sg = 1.f / (1.f + __expf(-g));
    dg = d * u * sg * (1.f + g * (1.f - sg));
    du = d * (g * sg);
}

extern "C" __global__ void swiglu_bwd(bf16* dgu, const bf16* da, const bf16* gu, int n, int f) {
    for (i64 r = blockIdx.x; r < n; r += gridDim.x) {
        const bf16* g = gu + r * 2 * f;
        const bf16* dr = da + r * f;
        bf16* o = dgu + r * 2 * f;
        if ((f & 1) == 0) {
            for (int j = threadIdx.x; j < f / 2; j += blockDim.x) {
                u32 gv = ((const u32*)g)[j], uv = ((const u32*)(g + f))[j], dv = ((const u32*)dr)[j];
                float dg0, du0, dg1, du1;
                swiglu_bwd_one(bf2f((bf16)(gv & 0xffff)), bf2f((bf16)(uv & 0xffff)), bf2f((bf16)(dv & 0xffff)), dg0, du0);
                swiglu_bwd_one(bf2f((bf16)(gv >> 16)), bf2f((bf16)(uv >> 16)), bf2f((bf16)(dv >> 16)), dg1, du1);
                ((u32*)o)[j] = pack_bf2(dg0, dg1);
                ((u32*)(o + f))[j] = pack_bf2(du0, du1);
            }
        } else {
            for (int j = threadIdx.x; j < f; j += blockDim.x) {
                float dg, du;
                swiglu_bwd_one(bf2f(g[j]), bf2f(g[f + j]), bf2f(dr[j]), dg, du);
                o[j] = f2bf(dg);
                o[f + j] = f2bf(du);
            }
        }
    }
}

extern "C" __global__ void cast_f32_bf16(bf16* out, const float* in, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = f2bf(in[i]);
}

extern "C" __global__ void cast_bf16_f32(float* out, const bf16* in, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) out[i] = bf2f(in[i]);
}

// y += x (f32), e.g. the residual connection.
extern "C" __global__ void add_inplace(float* y, const float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) y[i] += x[i];
}
