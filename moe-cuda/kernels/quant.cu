// Token-group quantization (SPEC §5.1, bit-exact) and 128x128 block quantization (SPEC §4).

#include "common.cuh"

// fmt: a MOE_FMT_* code (codes.cuh).
// One warp per item; an item is one group (f32 formats) or one packed word of up to 4 groups.
// Rows: E * T logical rows (e, t). When `prefix` is non-null only live rows t < clamp(counts[e])
// are visited (prefix from moe_counts_prefix); otherwise every row is live.
// `gather` (nullable, E*T entries) maps a logical row to its source row of `x` (prepare).
// Scales: MN-major index (e*cols + col)*T + t, or row-major (e*T + t)*cols + col.
extern "C" __global__ void __launch_bounds__(256) moe_token_group_quant(
    const void* __restrict__ x, int x_is_f32, const int* __restrict__ gather, u8* __restrict__ q, u32* __restrict__ s,
    int E, int T, int K, const int* __restrict__ prefix, int fmt, int mn_major) {
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    const int G = K / GROUP;
    const int cols = fmt == MOE_FMT_UE8M0_PACKED ? (G + 3) / 4 : G;
    const long long live = prefix ? (long long)prefix[E] : (long long)E * T;
    const long long items = live * cols;
    for (long long it = warp; it < items; it += nwarps) {
        const long long li = it / cols;
        const int col = (int)(it % cols);
        int e, t;
        if (prefix) {
            e = find_expert(prefix, E, li);
            t = (int)(li - prefix[e]);
        } else {
            e = (int)(li / T);
            t = (int)(li % T);
        }
        const long long row = (long long)e * T + t;
        const long long src = gather ? (long long)gather[row] : row;
        const int g0 = fmt == MOE_FMT_UE8M0_PACKED ? col * 4 : col;
        const int g1 = fmt == MOE_FMT_UE8M0_PACKED ? min(g0 + 4, G) : g0 + 1;
        u32 word = 0;
        float sval = 0.0f;
        for (int g = g0; g < g1; ++g) {
            const long long off = src * K + (long long)g * GROUP + lane * 4;
            float v[4];
            if (x_is_f32) {
                float4 f = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(x) + off);
                v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
            } else {
                uint2 h = *reinterpret_cast<const uint2*>(reinterpret_cast<const u16*>(x) + off);
                v[0] = bf16_to_f32((u16)(h.x & 0xFFFF));
                v[1] = bf16_to_f32((u16)(h.x >> 16));
                v[2] = bf16_to_f32((u16)(h.y & 0xFFFF));
                v[3] = bf16_to_f32((u16)(h.y >> 16));
            }
            float m = 0.0f;
            for (int i = 0; i < 4; ++i) m = max_num(m, fabsf(v[i]));
            m = warp_max(m);
            const float amax = max_num(1e-10f, m);
            float sc = __fdiv_rn(amax, 448.0f);
            if (fmt != MOE_FMT_F32) sc = ceil_pow2(sc);
            u32 packed = 0;
            for (int i = 0; i < 4; ++i) packed |= ((u32)e4m3_sat(__fdiv_rn(v[i], sc))) << (8 * i);
            *reinterpret_cast<u32*>(q + row * K + (long long)g * GROUP + lane * 4) = packed;
            word |= ue8m0_from_pow2(sc) << (8 * (g - g0));
            sval = sc;
        }
        if (lane == 0) {
            const long long si = mn_major ? ((long long)e * cols + col) * T + t : row * cols + col;
            s[si] = fmt == MOE_FMT_UE8M0_PACKED ? word : __float_as_uint(sval);
        }
    }
}

// Element i (0 .. 128*128, row-major) of 128x128 block (e, rb, cb) of a (E, R, C) matrix: its
// offset, or -1 past the matrix's edges.
__device__ __forceinline__ long long block_elem(long long e, long long rb, long long cb, int i, int R, int C) {
    const long long r = rb * GROUP + i / GROUP;
    const long long c = cb * GROUP + i % GROUP;
    return r < R && c < C ? (e * R + r) * C + c : -1;
}

// Element `off` of a bf16 (w_is_f32 = 0) or f32 tensor, as f32.
__device__ __forceinline__ float load_elem(const void* __restrict__ w, int w_is_f32, long long off) {
    return w_is_f32 ? reinterpret_cast<const float*>(w)[off] : bf16_to_f32(reinterpret_cast<const u16*>(w)[off]);
}

// One 256-thread block per 128x128 block (grid-stride over E * RB * CB blocks). Block and element
// indices are 64-bit, so `R + 127` cannot wrap for any R the host accepts (moe-cuda `limits`).
extern "C" __global__ void __launch_bounds__(256) moe_block_quant(const void* __restrict__ w, int w_is_f32, u8* __restrict__ q,
                                                                  float* __restrict__ s, int E, int R, int C, int pow2) {
    __shared__ float red[8];
    const long long RB = ((long long)R + GROUP - 1) / GROUP;
    const long long CB = ((long long)C + GROUP - 1) / GROUP;
    const long long nblocks = (long long)E * RB * CB;
    for (long long bi = blockIdx.x; bi < nblocks; bi += gridDim.x) {
        const long long cb = bi % CB;
        const long long rb = (bi / CB) % RB;
        const long long e = bi / (CB * RB);
        float m = 0.0f;
        for (int i = threadIdx.x; i < GROUP * GROUP; i += blockDim.x) {
            const long long off = block_elem(e, rb, cb, i, R, C);
            if (off >= 0) m = max_num(m, fabsf(load_elem(w, w_is_f32, off)));
        }
        m = warp_max(m);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
        __syncthreads();
        float amax = red[0];
        for (int i = 1; i < 8; ++i) amax = max_num(amax, red[i]);
        __syncthreads();
        amax = max_num(amax, 1e-4f);
        float sc = __fdiv_rn(amax, 448.0f);
        if (pow2) sc = ceil_pow2(sc);
        for (int i = threadIdx.x; i < GROUP * GROUP; i += blockDim.x) {
            const long long off = block_elem(e, rb, cb, i, R, C);
            if (off >= 0) q[off] = e4m3_sat(__fdiv_rn(load_elem(w, w_is_f32, off), sc));
        }
        if (threadIdx.x == 0) s[(e * RB + rb) * CB + cb] = sc;
    }
}
