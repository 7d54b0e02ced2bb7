// AdamW with decoupled weight decay and the global gradient norm, on f32 master weights, with
// the bf16 copy the matrix products read written in the same pass.

// Per-block partial sums of g² (grid-stride, fixed grid): host adds the partials in order.
extern "C" __global__ void sumsq_partial(float* part, const float* g, i64 n) {
    __shared__ float sh[32];
    float s = 0.f;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) s += g[i] * g[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// p ← p·(1 − lr·wd); m ← β1 m + (1−β1) g̃; v ← β2 v + (1−β2) g̃²; p ← p − step·m / (sqrt(v·inv_bc2) + eps)
// with g̃ = gscale·g (clipping), step = lr / bc1; as kernels/src/optim.rs does on the CPU.
extern "C" __global__ void adamw(float* p, bf16* p_b, float* m, float* v, const float* g, i64 n, float decay,
                                 float step, float inv_bc2, float b1, float b2, float eps, float gscale) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i] * decay - step * mi / (sqrtf(vi * inv_bc2) + eps);
        p[i] = pi;
        p_b[i] = f2bf(pi);
    }
}

// g *= s
extern "C" __global__ void scale_inplace(float* g, float s, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) g[i] *= s;
}
