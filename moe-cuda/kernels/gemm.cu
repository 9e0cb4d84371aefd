// Masked grouped FP8 GEMM, "NT" (SPEC §5.3): d[e, t, n] = bf16_out(acc) for t < clamp(counts[e]),
// acc = fma(f32(sa[e, t, kb] * sb[e, n/128, kb]), p_kb, acc) over kb increasing, where p_kb is the
// partial over the 128-wide K block kb computed on the tensor cores (mma.sync m16n8k32 e4m3,
// f32 accumulate) starting from zero.
//
// Tiles of 64 rows x 64 columns; 4 warps, each 32 x 32. Only live row tiles are visited: the
// tile prefix (moe_counts_prefix with bm = 64) maps a flat live-tile index to (expert, row tile),
// and a fixed grid strides over them, so the launch can be captured in a CUDA graph.
// Rows of a live tile past the count are zero-filled in shared memory (never read from `a`) and
// never written. sa_packed: 0 = f32 scales (F32 / F32CeilUe8m0), 1 = packed UE8M0 words.
// CHAIN = true: the four k32 MMAs of a 128 block accumulate on the tensor cores (SPEC).
// CHAIN = false: each k32 MMA starts from zero and the four are summed in f32 (diagnostic).

#include "common.cuh"

#define BM 64
#define BN 64
#define BK 128
#define LDS (BK + 16)

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ float load_sa(const u32* sa, int sa_packed, int E_unused, int T, int KB, int e, int t, int kb) {
    (void)E_unused;
    if (sa_packed) {
        const int P = (KB + 3) / 4;
        const u32 w = sa[((long long)e * P + kb / 4) * T + t];
        return ue8m0_to_f32((w >> (8 * (kb % 4))) & 0xFFu);
    }
    return __uint_as_float(sa[((long long)e * KB + kb) * T + t]);
}

// Zeroes a warp's 2 x 4 fragments of 4 f32 accumulators.
__device__ __forceinline__ void zero_frags(float (&f)[2][4][4]) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) f[mi][ni][r] = 0.0f;
}

template <bool CHAIN>
__device__ __forceinline__ void gemm_body(const u8* __restrict__ a, const u32* __restrict__ sa, int sa_packed, const u8* __restrict__ b,
                                          const float* __restrict__ sb, u16* __restrict__ d, const int* __restrict__ counts,
                                          const int* __restrict__ tile_prefix, int E, int T, int N, int K) {
    __shared__ __align__(16) u8 sA[BM * LDS];
    __shared__ __align__(16) u8 sB[BN * LDS];
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;   // groupID
    const int tig = lane & 3;  // thread in group
    const int wm = warp >> 1;  // warp row (0..1)
    const int wn = warp & 1;   // warp col (0..1)
    const int KB = K / BK;
    const int tiles_n = N / BN;
    const long long total = (long long)tile_prefix[E] * tiles_n;
    for (long long tile = blockIdx.x; tile < total; tile += gridDim.x) {
        const int mtg = (int)(tile / tiles_n);
        const int nt = (int)(tile % tiles_n);
        const int e = find_expert(tile_prefix, E, mtg);
        const int m0 = (mtg - tile_prefix[e]) * BM;
        const int n0 = nt * BN;
        const int cnt = clamp_count(counts[e], T);
        float acc[2][4][4];
        zero_frags(acc);
        for (int kb = 0; kb < KB; ++kb) {
            // Stage the A and B tiles: 64 rows x 128 bytes each, 16 bytes per access.
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int idx = tid + i * 128;
                const int r = idx >> 3;
                const int c16 = idx & 7;
                uint4 va = make_uint4(0, 0, 0, 0);
                if (m0 + r < cnt) va = *reinterpret_cast<const uint4*>(a + ((long long)e * T + m0 + r) * K + (long long)kb * BK + c16 * 16);
                *reinterpret_cast<uint4*>(sA + r * LDS + c16 * 16) = va;
                const uint4 vb = *reinterpret_cast<const uint4*>(b + ((long long)e * N + n0 + r) * K + (long long)kb * BK + c16 * 16);
                *reinterpret_cast<uint4*>(sB + r * LDS + c16 * 16) = vb;
            }
            __syncthreads();
            float part[2][4][4];
            zero_frags(part);
#pragma unroll
            for (int ks = 0; ks < BK / 32; ++ks) {
                u32 af[2][4];
                u32 bfr[4][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const u8* base = sA + (wm * 32 + mi * 16 + g) * LDS + ks * 32 + tig * 4;
                    af[mi][0] = *reinterpret_cast<const u32*>(base);
                    af[mi][1] = *reinterpret_cast<const u32*>(base + 8 * LDS);
                    af[mi][2] = *reinterpret_cast<const u32*>(base + 16);
                    af[mi][3] = *reinterpret_cast<const u32*>(base + 8 * LDS + 16);
                }
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    const u8* base = sB + (wn * 32 + ni * 8 + g) * LDS + ks * 32 + tig * 4;
                    bfr[ni][0] = *reinterpret_cast<const u32*>(base);
                    bfr[ni][1] = *reinterpret_cast<const u32*>(base + 16);
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) {
                        if (CHAIN) {
                            mma_e4m3(part[mi][ni], af[mi], bfr[ni], part[mi][ni]);
                        } else {
                            const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                            float tmp[4];
                            mma_e4m3(tmp, af[mi], bfr[ni], zero);
#pragma unroll
                            for (int r = 0; r < 4; ++r) part[mi][ni][r] = __fadd_rn(part[mi][ni][r], tmp[r]);
                        }
                    }
            }
            // Promotion: acc = fma(f32(sa * sb), p, acc).
            const float sbv = sb[((long long)e * (N / BK) + n0 / BK) * KB + kb];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = m0 + wm * 32 + mi * 16 + g + h * 8;
                    const float sav = row < cnt ? load_sa(sa, sa_packed, E, T, KB, e, row, kb) : 0.0f;
                    const float sc = __fmul_rn(sav, sbv);
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                        for (int c = 0; c < 2; ++c) acc[mi][ni][h * 2 + c] = __fmaf_rn(sc, part[mi][ni][h * 2 + c], acc[mi][ni][h * 2 + c]);
                }
            __syncthreads();
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + wm * 32 + mi * 16 + g + h * 8;
                if (row < cnt) {
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) {
                        const int col = n0 + wn * 32 + ni * 8 + tig * 2;
                        const u32 lo = bf16_out(acc[mi][ni][h * 2]);
                        const u32 hi = bf16_out(acc[mi][ni][h * 2 + 1]);
                        *reinterpret_cast<u32*>(d + ((long long)e * T + row) * N + col) = lo | (hi << 16);
                    }
                }
            }
    }
}

extern "C" __global__ void __launch_bounds__(128) moe_grouped_gemm(const u8* __restrict__ a, const u32* __restrict__ sa, int sa_packed,
                                                                   const u8* __restrict__ b, const float* __restrict__ sb, u16* __restrict__ d,
                                                                   const int* __restrict__ counts, const int* __restrict__ tile_prefix,
                                                                   int E, int T, int N, int K) {
    gemm_body<true>(a, sa, sa_packed, b, sb, d, counts, tile_prefix, E, T, N, K);
}

extern "C" __global__ void __launch_bounds__(128) moe_grouped_gemm_k32(const u8* __restrict__ a, const u32* __restrict__ sa, int sa_packed,
                                                                       const u8* __restrict__ b, const float* __restrict__ sb,
                                                                       u16* __restrict__ d, const int* __restrict__ counts,
                                                                       const int* __restrict__ tile_prefix, int E, int T, int N, int K) {
    gemm_body<false>(a, sa, sa_packed, b, sb, d, counts, tile_prefix, E, T, N, K);
}
