// SiLU-and-multiply + FP8 group quantization (SPEC §5.2, bit-exact), both numerics.
// fmt: a MOE_FMT_* code, numerics: a MOE_NUMERICS_* code (codes.cuh).
//
// Measured on an H200 (2026-12-01, `moe bench --suite silu`, docs/benchmarks.md): 1.09 TB/s at
// E16 T512 H7168, 1.19 TB/s at E256 T128, 8.0 us at E8 T64 H2048: bound by the exact arithmetic
// (exp_f32 ~30 instructions and one or two IEEE divisions per element), not by memory. Two
// savings that keep every byte (next steps): in the ceil formats of the F32 numerics, `v / sc`
// equals `v * (1/sc)` bit for bit because sc is a power of two (one division less per element);
// in the VllmBf16 ceil formats, vllm_ceil_pow2_bf16 is computed by every lane of a group and
// could be computed once per group (or tabulated over its 2^15 inputs).
//
// Bytes per live row: 4H read (H bf16 gate + H bf16 up), H written (E4M3), plus the scales
// (4 bytes per group, or 4 bytes per 4 groups when packed). Dead rows are never touched.
//
// Design (only the data movement and the work split differ from a per-(row, column) kernel:
// every element goes through the same helper calls in the same order, so the bytes are the
// same):
// - Work unit: (live row, chunk of 2*gph groups of 128). Half-warp h of a warp takes groups
//   chunk*2*gph + h*gph + i, i < gph; each lane owns 8 consecutive elements of a group (one
//   16-byte load of gate and one of up), so 16 lanes cover a group and the group max is a
//   __shfl_xor over 16 lanes (max_num over the same set of values as any other order: every
//   operand is fabsf of a value or the initial +0, NaN loses, so the order does not matter).
//   All 2*gph 16-byte loads of a lane are issued before the first arithmetic, with
//   ld.global.nc.L1::no_allocate (the input is read once).
// - gph (groups per half-warp) is 4, 2 or 1, chosen on the device from the live row count so
//   that there are at least as many units as warps when rows are few (decode) and as many
//   groups in flight per warp as possible otherwise; packed scales need gph >= 2 so that one
//   warp writes a whole 4-group word (gph 4: each half-warp one word; gph 2: the two halves'
//   bytes ORed through one shuffle). The choice changes only who computes a group, not how.
// - Persistent grid fixed by the shape (launch.rs: at most 3 blocks of 8 warps per SM), never
//   by the counts, so a CUDA graph replay with other counts stays valid. The units
//   live_rows * units_per_row are split into contiguous ranges, one per warp, warps numbered
//   block-minor (warp w of block b is warp w * gridDim + b) so that little work still spreads
//   over every SM. A warp finds the expert of its first row with a 32-ary search of the
//   device prefix (one load per lane per round) and then walks rows incrementally, searching
//   again only when it crosses into the next non-empty expert.
// - Stores: 8 bytes of q per lane per group (a half-warp writes the group's 128 bytes), the
//   scale word by lane 0 of the half-warp (packed, gph 2: lane 0 of the warp), MN-major
//   (E, cols, T) as before.

#include "common.cuh"

// 8 warps per block, 3 blocks resident per SM (so at most 80 registers per thread); launch.rs
// launches 3 blocks per SM at most, so every warp of the grid is resident at once and the
// static split of the units over the warps has no second wave.
#define SILU_THREADS 256
#define SILU_MIN_BLOCKS 3
#define SILU_GPH_MAX 4

// 16-byte streaming load of read-only data (not kept in L1).
__device__ __forceinline__ uint4 silu_ld16(const u16* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

// max_num over the 16 lanes of each half-warp (xor offsets below 16 stay in the half).
__device__ __forceinline__ float silu_half_warp_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = max_num(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

// The expert owning live row li: the largest e in [lo, E-1] with prefix[e] <= li, given
// prefix[lo] <= li. Called by the whole warp (uniform arguments, uniform result). 32-ary
// search: each round probes 32 evenly spaced entries (one load per lane) and keeps the
// interval after the last entry <= li (prefix is non-decreasing, so the passing lanes form a
// prefix of the ballot). The result stays in [lo, E-1] whatever the prefix holds.
__device__ __forceinline__ int silu_find_expert(const int* __restrict__ prefix, int lo, int E, int li, int lane) {
    int n = E - lo;
    while (n > 1) {
        const int step = (n + 31) >> 5;
        const int j = lo + step * lane;
        const bool ok = lane == 0 || (j < lo + n && __ldg(prefix + j) <= li);
        const unsigned b = __ballot_sync(0xFFFFFFFFu, ok);
        const int k = 31 - __clz((int)b);
        lo += step * k;
        n = min(step, n - step * k);
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(SILU_THREADS, SILU_MIN_BLOCKS) moe_silu_mul_quant(const u16* __restrict__ y, u8* __restrict__ q, u32* __restrict__ s,
                                                                              int E, int T, int H, const int* __restrict__ prefix, int fmt,
                                                                              int numerics) {
    const int lane = threadIdx.x & 31;
    const int hw = lane >> 4;
    const int hl = lane & 15;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    const long long vw = (long long)(threadIdx.x >> 5) * gridDim.x + blockIdx.x;
    const int G = H / GROUP;
    const bool packed = fmt == MOE_FMT_UE8M0_PACKED;
    const int cols = packed ? (G + 3) / 4 : G;
    const int live = __ldg(prefix + E);

    // Groups per half-warp per unit (uniform over the grid: a function of live, G, the grid).
    int gph = SILU_GPH_MAX;
    const int gph_min = packed ? 2 : 1;
    while (gph > gph_min && (long long)live * ((G + 2 * gph - 1) / (2 * gph)) < nwarps) gph >>= 1;
    const int gpu = 2 * gph;  // groups per unit
    const int upr = (G + gpu - 1) / gpu;  // units per row
    const long long units = (long long)live * upr;
    const long long per = units / nwarps;
    const long long rem = units % nwarps;
    long long u = vw * per + (vw < rem ? vw : rem);
    const long long uend = u + per + (vw < rem ? 1 : 0);
    if (u >= uend) return;  // warp-uniform

    const float BF16_1E_10 = bf16_to_f32((u16)0x2EDC);
    const float BF16_INV448 = bf16_to_f32((u16)0x3B12);

    int li = (int)(u / upr);
    int c = (int)(u - (long long)li * upr);
    int e = silu_find_expert(prefix, 0, E, li, lane);
    int pbeg = __ldg(prefix + e);
    int pend = __ldg(prefix + e + 1);

    for (;;) {
        const int t = li - pbeg;
        const long long row = (long long)e * T + t;
        const int gw0 = c * gpu;           // first group of the unit (half-warp 0's)
        const int gh0 = gw0 + hw * gph;    // first group of this half-warp
        const u16* yr = y + row * 2 * H + hl * 8;

        uint4 gv[SILU_GPH_MAX], uv[SILU_GPH_MAX];
#pragma unroll
        for (int i = 0; i < SILU_GPH_MAX; ++i) {
            const int g = gh0 + i;
            if (i < gph && g < G) {
                gv[i] = silu_ld16(yr + (long long)g * GROUP);
                uv[i] = silu_ld16(yr + (long long)g * GROUP + H);
            } else {
                gv[i] = make_uint4(0u, 0u, 0u, 0u);
                uv[i] = make_uint4(0u, 0u, 0u, 0u);
            }
        }

        u32 word = 0;
#pragma unroll
        for (int i = 0; i < SILU_GPH_MAX; ++i) {
            if (i < gph && gw0 + i < G) {  // warp-uniform: half-warp 0 has a group here
                const int g = gh0 + i;
                const bool valid = g < G;
                const u32 gw[4] = {gv[i].x, gv[i].y, gv[i].z, gv[i].w};
                const u32 uw[4] = {uv[i].x, uv[i].y, uv[i].z, uv[i].w};
                float v[8];
                float m = 0.0f;
                u32 lo = 0, hi = 0;
                float sc;
                if (numerics == MOE_NUMERICS_VLLM_BF16) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const u16 gb = (u16)(gw[k >> 1] >> (16 * (k & 1)));
                        const u16 ub = (u16)(uw[k >> 1] >> (16 * (k & 1)));
                        const float a = round_bf16(silu_f32(bf16_to_f32(gb)));
                        v[k] = round_bf16(__fmul_rn(a, bf16_to_f32(ub)));
                        m = max_num(m, fabsf(v[k]));
                    }
                    m = silu_half_warp_max(m);
                    const float amax = max_num(BF16_1E_10, m);
                    u16 sb = bf16_bits_rn(__fmul_rn(amax, BF16_INV448));
                    if (fmt != MOE_FMT_F32) sb = vllm_ceil_pow2_bf16(sb);
                    sc = bf16_to_f32(sb);
                    const float inv = round_bf16(__fdiv_rn(1.0f, sc));
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const float r = clamp_rs(round_bf16(__fmul_rn(v[k], inv)), -448.0f, 448.0f);
                        const u32 b = (u32)e4m3_sat(r) << (8 * (k & 3));
                        if (k < 4) lo |= b; else hi |= b;
                    }
                } else {
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const u16 gb = (u16)(gw[k >> 1] >> (16 * (k & 1)));
                        const u16 ub = (u16)(uw[k >> 1] >> (16 * (k & 1)));
                        v[k] = __fmul_rn(silu_f32(bf16_to_f32(gb)), bf16_to_f32(ub));
                        m = max_num(m, fabsf(v[k]));
                    }
                    m = silu_half_warp_max(m);
                    const float amax = max_num(1e-10f, m);
                    sc = __fdiv_rn(amax, 448.0f);
                    if (fmt != MOE_FMT_F32) sc = ceil_pow2(sc);
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const u32 b = (u32)e4m3_sat(__fdiv_rn(v[k], sc)) << (8 * (k & 3));
                        if (k < 4) lo |= b; else hi |= b;
                    }
                }
                if (valid) {
                    *reinterpret_cast<uint2*>(q + row * H + (long long)g * GROUP + hl * 8) = make_uint2(lo, hi);
                    if (packed) {
                        word |= ue8m0_from_pow2(sc) << (8 * (g & 3));
                    } else if (hl == 0) {
                        s[((long long)e * cols + g) * T + t] = __float_as_uint(sc);
                    }
                }
            }
        }
        if (packed) {
            // gph 4: each half-warp holds the whole word of groups gh0..gh0+3 (bytes past G
            // are 0); gph 2: the unit's 4 groups are one word, half of it in each half-warp.
            if (gph < SILU_GPH_MAX) word |= __shfl_xor_sync(0xFFFFFFFFu, word, 16);
            const int gword = gph < SILU_GPH_MAX ? gw0 : gh0;
            const bool writer = gph < SILU_GPH_MAX ? lane == 0 : hl == 0;
            if (writer && gword < G) s[((long long)e * cols + gword / 4) * T + t] = word;
        }

        if (++u >= uend) break;
        if (++c == upr) {
            c = 0;
            ++li;
            // li < live here (u < uend <= units), so a next non-empty expert exists.
            if (li >= pend) {
                e = silu_find_expert(prefix, e + 1, E, li, lane);
                pbeg = __ldg(prefix + e);
                pend = __ldg(prefix + e + 1);
            }
        }
    }
}
