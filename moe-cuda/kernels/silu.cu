// SiLU-and-multiply + FP8 group quantization (SPEC §5.2, bit-exact), both numerics.
// Persistent: launched with a fixed grid whatever the counts; every block reads the device
// prefix of the clamped counts (moe_counts_prefix) and walks the live (row, column) items
// with one warp per item, so the launch can be captured in a CUDA graph.
// fmt: a MOE_FMT_* code, numerics: a MOE_NUMERICS_* code (codes.cuh).

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) moe_silu_mul_quant(const u16* __restrict__ y, u8* __restrict__ q, u32* __restrict__ s,
                                                                     int E, int T, int H, const int* __restrict__ prefix, int fmt,
                                                                     int numerics) {
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    const int G = H / GROUP;
    const int cols = fmt == MOE_FMT_UE8M0_PACKED ? (G + 3) / 4 : G;
    const long long items = (long long)prefix[E] * cols;
    const float BF16_1E_10 = bf16_to_f32((u16)0x2EDC);
    const float BF16_INV448 = bf16_to_f32((u16)0x3B12);
    for (long long it = warp; it < items; it += nwarps) {
        const long long li = it / cols;
        const int col = (int)(it % cols);
        const int e = find_expert(prefix, E, li);
        const int t = (int)(li - prefix[e]);
        const long long row = (long long)e * T + t;
        const int g0 = fmt == MOE_FMT_UE8M0_PACKED ? col * 4 : col;
        const int g1 = fmt == MOE_FMT_UE8M0_PACKED ? min(g0 + 4, G) : g0 + 1;
        u32 word = 0;
        float sval = 0.0f;
        for (int g = g0; g < g1; ++g) {
            const long long goff = row * 2 * H + (long long)g * GROUP + lane * 4;
            const uint2 gh = *reinterpret_cast<const uint2*>(y + goff);
            const uint2 uh = *reinterpret_cast<const uint2*>(y + goff + H);
            const u16 gb[4] = {(u16)(gh.x & 0xFFFF), (u16)(gh.x >> 16), (u16)(gh.y & 0xFFFF), (u16)(gh.y >> 16)};
            const u16 ub[4] = {(u16)(uh.x & 0xFFFF), (u16)(uh.x >> 16), (u16)(uh.y & 0xFFFF), (u16)(uh.y >> 16)};
            float v[4];
            float m = 0.0f;
            u32 packed = 0;
            float sc;
            if (numerics == MOE_NUMERICS_VLLM_BF16) {
                for (int i = 0; i < 4; ++i) {
                    const float a = round_bf16(silu_f32(bf16_to_f32(gb[i])));
                    v[i] = round_bf16(__fmul_rn(a, bf16_to_f32(ub[i])));
                    m = max_num(m, fabsf(v[i]));
                }
                m = warp_max(m);
                const float amax = max_num(BF16_1E_10, m);
                u16 sb = bf16_bits_rn(__fmul_rn(amax, BF16_INV448));
                if (fmt != MOE_FMT_F32) sb = vllm_ceil_pow2_bf16(sb);
                sc = bf16_to_f32(sb);
                const float inv = round_bf16(__fdiv_rn(1.0f, sc));
                for (int i = 0; i < 4; ++i) {
                    const float r = clamp_rs(round_bf16(__fmul_rn(v[i], inv)), -448.0f, 448.0f);
                    packed |= ((u32)e4m3_sat(r)) << (8 * i);
                }
            } else {
                for (int i = 0; i < 4; ++i) {
                    v[i] = __fmul_rn(silu_f32(bf16_to_f32(gb[i])), bf16_to_f32(ub[i]));
                    m = max_num(m, fabsf(v[i]));
                }
                m = warp_max(m);
                const float amax = max_num(1e-10f, m);
                sc = __fdiv_rn(amax, 448.0f);
                if (fmt != MOE_FMT_F32) sc = ceil_pow2(sc);
                for (int i = 0; i < 4; ++i) packed |= ((u32)e4m3_sat(__fdiv_rn(v[i], sc))) << (8 * i);
            }
            *reinterpret_cast<u32*>(q + row * H + (long long)g * GROUP + lane * 4) = packed;
            word |= ue8m0_from_pow2(sc) << (8 * (g - g0));
            sval = sc;
        }
        if (lane == 0) {
            const long long si = ((long long)e * cols + col) * T + t;
            s[si] = fmt == MOE_FMT_UE8M0_PACKED ? word : __float_as_uint(sval);
        }
    }
}
