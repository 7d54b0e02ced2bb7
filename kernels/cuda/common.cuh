// Shared helpers for alignflow's CUDA kernels. The sources are compiled together by NVRTC at
// run time (kernels/src/cuda/mod.rs), once per device architecture, and cached on disk.
//
// No CUDA headers are included, so the kernels compile with NVRTC alone: bf16 values travel as
// `unsigned short` bit patterns and are converted by hand (round to nearest even, as
// __float2bfloat16 does), and the tensor-core products use inline PTX `mma.sync`.

typedef unsigned short bf16;
typedef unsigned int u32;
typedef long long i64;

#define FULL_MASK 0xffffffffu
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf2f(bf16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ bf16 f2bf(float x) {
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Two bf16 in one 32-bit register, `lo` in the low half (the element with the lower index).
__device__ __forceinline__ u32 pack_bf2(float lo, float hi) { return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum (MAX = false) or maximum (MAX = true) over the block (blockDim.x a multiple of 32, at
// most 1024) in a fixed order, so results are bit-identical run to run. `sh` holds 32 floats
// of shared memory.
template <bool MAX>
__device__ float block_reduce(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = (threadIdx.x < nw) ? sh[threadIdx.x] : (MAX ? NEG_INF : 0.f);
    if (w == 0) v = MAX ? warp_max(v) : warp_sum(v);
    if (threadIdx.x == 0) sh[0] = v;
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_sum(float v, float* sh) { return block_reduce<false>(v, sh); }
__device__ __forceinline__ float block_max(float v, float* sh) { return block_reduce<true>(v, sh); }

// Softmax numerators in place over p[0..len) (scores, one block): p[j] = exp(p[j] - max).
// `m` is this thread's running max of its own scores on entry and the block's max on return;
// returns the sum of the numerators.
__device__ float block_softmax_numerators(float* p, int len, float& m, float* sh) {
    m = block_max(m, sh);
    float sum = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = __expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    return block_sum(sum, sh);
}

// D = A·B + D on the tensor cores: A 16x16 (row), B 16x8 (col), bf16 in, f32 accumulate.
// Fragment layout (PTX ISA, mma.m16n8k16): with g = lane/4 and t = lane%4,
//   a0: A[g][2t..2t+1]   a1: A[g+8][2t..2t+1]   a2: A[g][2t+8..2t+9]   a3: A[g+8][2t+8..2t+9]
//   b0: B[2t..2t+1][g]   b1: B[2t+8..2t+9][g]
//   d0,d1: D[g][2t..2t+1]   d2,d3: D[g+8][2t..2t+1]
__device__ __forceinline__ void mma16816(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The accumulator tiles s[2kb] and s[2kb+1] of an m16n8 product (16 rows x 16 columns) as
// the A operand of the next product, rounded to bf16 (the flash-attention register reuse).
__device__ __forceinline__ void c_to_a(u32* a, const float (*s)[4], int kb) {
    a[0] = pack_bf2(s[2 * kb][0], s[2 * kb][1]);
    a[1] = pack_bf2(s[2 * kb][2], s[2 * kb][3]);
    a[2] = pack_bf2(s[2 * kb + 1][0], s[2 * kb + 1][1]);
    a[3] = pack_bf2(s[2 * kb + 1][2], s[2 * kb + 1][3]);
}

// Shared-memory address of a generic pointer, for ldmatrix.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}
