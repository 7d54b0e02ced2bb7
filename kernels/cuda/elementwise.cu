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

// y = x * rstd * w with rstd = 1/sqrt(mean(x²) + eps); one block per row. Returns rstd.
__device__ float rmsnorm_row(float* yf, bf16* yb, const float* x, const float* w, int r, int d, float eps) {
    __shared__ float sh[32];
    const float* xr = x + (i64)r * d;
    float ss = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, sh);
    float rs = rsqrtf(ss / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float y = xr[j] * rs * w[j];
        if (yb) yb[(i64)r * d + j] = f2bf(y); else yf[(i64)r * d + j] = y;
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
    float s = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += bf2f(dy[o + j]) * w[j] * x[o + j];
    s = block_sum(s, sh);
    float rs = rstd[r];
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
    int half = hd / 2;
    i64 total = (i64)n * heads * half;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        int k = (int)(i % half);
        i64 th = i / half;
        int h = (int)(th % heads);
        i64 t = th / heads;
        bf16* p = x + t * stride + col0 + h * hd;
        float c = cosv[(i64)pos[t] * half + k], s = sinv[(i64)pos[t] * half + k];
        if (inverse) s = -s;
        float a = bf2f(p[k]), b = bf2f(p[k + half]);
        p[k] = f2bf(a * c - b * s);
        p[k + half] = f2bf(b * c + a * s);
    }
}

// a = silu(g) * u with gu (n, 2f) holding [g | u] per row.
extern "C" __global__ void swiglu_fwd(bf16* a, const bf16* gu, int n, int f) {
    i64 total = (i64)n * f;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / f;
        int j = (int)(i - r * f);
        float g = bf2f(gu[r * 2 * f + j]), u = bf2f(gu[r * 2 * f + f + j]);
        a[i] = f2bf(g / (1.f + __expf(-g)) * u);
    }
}

// dgu = [da·u·silu'(g) | da·silu(g)].
extern "C" __global__ void swiglu_bwd(bf16* dgu, const bf16* da, const bf16* gu, int n, int f) {
    i64 total = (i64)n * f;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / f;
        int j = (int)(i - r * f);
        float g = bf2f(gu[r * 2 * f + j]), u = bf2f(gu[r * 2 * f + f + j]), d = bf2f(da[i]);
        float sg = 1.f / (1.f + __expf(-g));
        float silu = g * sg;
        dgu[r * 2 * f + j] = f2bf(d * u * sg * (1.f + g * (1.f - sg)));
        dgu[r * 2 * f + f + j] = f2bf(d * silu);
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
