// Masked grouped FP8 GEMM on Hopper's asynchronous tensor cores (SPEC §5.3 arithmetic with the
// tensor cores' own partial), and the three probe kernels that pin its encodings one at a time
// (tests/wgmma.rs runs each against the CPU).
//
// d[e, t, n] = bf16_out(acc) for t < clamp(counts[e], 0, T); rows t >= counts[e] are never
// written. acc = fma(f32(sa[e, t, kb] * sb[e, n/128, kb]), p_kb, acc) over kb increasing, where
// p_kb is the partial over the 128-wide K block kb: four wgmma m64n128k32 e4m3 instructions
// chained on the tensor cores, the first with scale-d = 0 (it ignores the accumulator's old
// value) -- DeepGEMM's "promotion". The tensor cores keep about 14 significant bits inside a
// partial (measured: docs/numerics.md), so this kernel has its own, looser GEMM contract.
//
// Tiles of 128 rows (BM) x 128 columns (BN), K blocks of 128 (BK). One CTA = 3 warpgroups:
// warpgroup 0 is the producer (it gives its registers away with setmaxnreg; thread 0 issues
// every TMA load), warpgroups 1 and 2 are the consumers (setmaxnreg up; each owns 64 rows of the
// tile: wgmma, promotion, epilogue). The CTAs walk the fixed tile space E x ceil(T/128) x N/128
// (n fastest) with a stride of gridDim.x; producer and consumers read counts[e] on the device
// and skip the dead row tiles (m0 >= counts[e]) identically, so the grid depends on the shape
// only. A consumer warpgroup whose 64 rows are all dead waits and releases the stages but
// issues no wgmma and stores nothing.
//
// Shared memory (dynamic, rounded up to 1024 B): STAGES x [A box 128x128 B | B box 128x128 B],
// both loaded by TMA with the 128-byte swizzle, then the full[STAGES] and empty[STAGES] mbarriers.
// Barrier protocol, for the i-th K block a CTA handles (stage s = i % STAGES, phase
// ph = (i / STAGES) & 1):
//   producer: wait empty[s] with parity ph ^ 1 (a fresh barrier passes parity 1 at once);
//             arrive.expect_tx(full[s], 32768); TMA A and B into stage s completing on full[s].
//   consumer: wait full[s] with parity ph; 4 wgmma; wait_group 0; lane 0 of each of the 8
//             consumer warps arrives on empty[s] (count 8); promotion in registers.
// A and B come through 3-D tensor maps (K, T, E) and (K, N, E) with boxes (128, 128, 1): a box
// never crosses into the next expert, and rows past T are zero-filled by the TMA unit (the
// transaction count is still the whole box). Rows in [counts[e], T) of a live tile are loaded
// and computed but never stored.
// A barrier wait that lasts more than 10 s traps (a protocol bug is a launch error, not a hang).
//
// Activation scales: f32 (F32 or F32CeilUe8m0) MN-major (E, K/128, T); packed UE8M0 is not
// taken here (the host falls back to gemm.cu). Weight scales (E, N/128, K/128) f32.

#include "common.cuh"

#define WG_BM 128
#define WG_BN 128
#define WG_BK 128
#define WG_STAGES 6
#define WG_A_BYTES (WG_BM * WG_BK)
#define WG_B_BYTES (WG_BN * WG_BK)
#define WG_STAGE_BYTES (WG_A_BYTES + WG_B_BYTES)
#define WG_CONSUMER_WGS 2
#define WG_THREADS (128 * (1 + WG_CONSUMER_WGS))
#define WG_PRODUCER_REGS 40
#define WG_CONSUMER_REGS 232
#define WG_SCALE_AHEAD 4
// The probes: boxes of 64 rows, a 4-stage ring, one consumer warpgroup and one producer warp.
#define PB_ROWS 64
#define PB_BOX_BYTES (PB_ROWS * WG_BK)
#define PB_STAGES 4
#define PB_CONSUMERS 128
#define PB_THREADS (PB_CONSUMERS + 32)
#define WG_HANG_NS 10000000000ull

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned, passed by value.
struct __align__(64) TmaMap {
    u64 opaque[16];
};

// ---- shared memory, mbarriers, TMA ---------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{\n .reg .u64 t;\n cvta.to.shared.u64 t, %1;\n cvt.u32.u64 %0, t;\n}\n" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialized barriers visible to the async proxy (TMA) and the other threads
// (followed by __syncthreads()).
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }

__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
    u32 ok;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}

__device__ __forceinline__ u64 global_timer_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Waits until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    if (mbar_try_wait(bar, parity)) return;
    const u64 t0 = global_timer_ns();
    u32 n = 0;
    while (!mbar_try_wait(bar, parity)) {
        if ((++n & 1023u) == 0 && global_timer_ns() - t0 > WG_HANG_NS) asm volatile("trap;");
    }
}

__device__ __forceinline__ void tma_prefetch_map(const TmaMap* map) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(map)) : "memory");
}

// One 3-D box of `map` at coordinates (c0, c1, c2) (innermost first) into shared memory at
// `dst`, completing `bytes = box size` transactions on `bar`.
__device__ __forceinline__ void tma_load_3d(u32 dst, const TmaMap* map, u32 bar, int c0, int c1, int c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

// The 1024-byte-aligned start of the dynamic shared memory (the launch adds 1024 B of slack).
__device__ __forceinline__ u32 aligned_smem_base(u8* raw, u8** generic) {
    const u32 r = smem_addr(raw);
    const u32 b = (r + 1023u) & ~1023u;
    *generic = raw + (b - r);
    return b;
}

// Byte offset of logical element (row r, byte k < 128) of a K-major tile of 128-byte rows
// written with the 128-byte swizzle from a 1024-byte-aligned base: the 16-byte chunk index is
// XORed with r % 8.
__device__ __forceinline__ u32 sw128_offset(u32 r, u32 k) { return r * 128u + ((((k >> 4) ^ r) & 7u) << 4) + (k & 15u); }

// ---- the ring of stages ----------------------------------------------------------------------

// Position in a ring of S stages: stage index and phase parity of the current K block.
template <u32 S>
struct RingPos {
    u32 stage;
    u32 phase;
    __device__ __forceinline__ void advance() {
        if (++stage == S) {
            stage = 0;
            phase ^= 1u;
        }
    }
};

template <u32 S>
__device__ __forceinline__ u32 full_bar(u32 bars, u32 s) {
    return bars + 8u * s;
}
template <u32 S>
__device__ __forceinline__ u32 empty_bar(u32 bars, u32 s) {
    return bars + 8u * (S + s);
}

// Thread 0 initializes full[s] (one arrival: the producer's expect_tx) and empty[s]
// (`consumer_warps` arrivals); then every thread of the block synchronizes.
template <u32 S>
__device__ __forceinline__ void ring_init(u32 bars, u32 consumer_warps) {
    if (threadIdx.x == 0) {
        for (u32 s = 0; s < S; ++s) {
            mbar_init(full_bar<S>(bars, s), 1);
            mbar_init(empty_bar<S>(bars, s), consumer_warps);
        }
        mbar_init_fence();
    }
    __syncthreads();
}

// Producer side: waits for the stage to be free and announces `bytes` of TMA transactions.
template <u32 S>
__device__ __forceinline__ void ring_produce(u32 bars, RingPos<S> p, u32 bytes) {
    mbar_wait(empty_bar<S>(bars, p.stage), p.phase ^ 1u);
    mbar_arrive_expect_tx(full_bar<S>(bars, p.stage), bytes);
}

// Consumer side: waits for the stage's data; `ring_release` (one call per consumer warp, all
// lanes) hands it back once the warp no longer reads it.
template <u32 S>
__device__ __forceinline__ void ring_consume(u32 bars, RingPos<S> p) {
    mbar_wait(full_bar<S>(bars, p.stage), p.phase);
}

template <u32 S>
__device__ __forceinline__ void ring_release(u32 bars, RingPos<S> p) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(empty_bar<S>(bars, p.stage));
}

// Moves registers between warpgroups (every warp of the warpgroup executes it).
template <u32 R>
__device__ __forceinline__ void regs_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}
template <u32 R>
__device__ __forceinline__ void regs_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}

// ---- wgmma -------------------------------------------------------------------------------------

// Shared-memory matrix descriptor of a K-major tile with 128-byte rows and the 128-byte swizzle
// at shared address `addr` (1024-aligned for the tile; +32 B per k32 step): start address >> 4
// (bits 0-13), leading byte offset 16 B >> 4 (bits 16-29, unused for swizzled K-major tiles),
// stride byte offset 1024 B >> 4 (bits 32-45: 8 rows x 128 B), base offset 0, swizzle 1 = 128B
// (bits 62-63).
__device__ __forceinline__ u64 sw128_desc(u32 addr) {
    u64 d = (u64)((addr & 0x3FFFFu) >> 4);
    d |= (u64)1 << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }

// Pins the accumulator registers at this point of the instruction stream, so that no ordinary
// read or write of them moves across a wgmma fence or wait.
__device__ __forceinline__ void pin_accumulators(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x 128, f32) = A (64 x 32, e4m3, K-major) * B^T (128 x 32, e4m3, K-major) + (scale_d ? d : 0).
// Thread l of warp w of the warpgroup holds d[4j + 2h + c] = D[16w + l/4 + 8h][8j + 2(l%4) + c].
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], u64 desc_a, u64 desc_b, int scale_d) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),
          "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
          "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
          "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),
          "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
          "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// The partial of one 128-wide K block of a 64-row slice: four k32 wgmma chained in the tensor
// cores' accumulator, the first with scale-d = 0 (DeepGEMM's order). Issued back to back and
// waited for once; returns when the tensor cores are done (shared memory may be reused).
// Measured on an H200 (docs/numerics.md): the chained partial keeps about 14 significant bits;
// summing the four k32 partials in f32 instead was not more accurate (2.9e-4 vs 2.7e-4 x
// sum|a*b| at worst on random operands) and serializes the tensor cores.
__device__ __forceinline__ void block_partial(float (&part)[64], u32 a_tile, u32 b_tile) {
    const u64 da = sw128_desc(a_tile);
    const u64 db = sw128_desc(b_tile);
    pin_accumulators(part);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < WG_BK / 32; ++k) wgmma_m64n128k32_e4m3(part, da + 2 * k, db + 2 * k, k > 0);
    wgmma_commit();
    wgmma_wait_all();
    pin_accumulators(part);
}

// ---- the grouped GEMM --------------------------------------------------------------------------

// The activation scales of rows lo and hi and the weight scale of one K block.
struct Scales3 {
    float lo, hi, b;
};

// Loads the scales of K block kb of a tile (zeros past the last block and for dead rows).
struct ScaleLoader {
    const float* sa_e;
    const float* sb_t;
    int T, KB, cnt, row_lo, row_hi;
    __device__ __forceinline__ Scales3 at(int kb) const {
        Scales3 s = {0.0f, 0.0f, 0.0f};
        if (kb < KB) {
            if (row_lo < cnt) s.lo = sa_e[(long long)kb * T + row_lo];
            if (row_hi < cnt) s.hi = sa_e[(long long)kb * T + row_hi];
            s.b = sb_t[kb];
        }
        return s;
    }
};

__device__ __forceinline__ void decode_tile(long long tile, int MT, int NT, int* e, int* mt, int* nt) {
    *nt = (int)(tile % NT);
    const long long rest = tile / NT;
    *mt = (int)(rest % MT);
    *e = (int)(rest / MT);
}

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
    moe_grouped_gemm_wgmma(const __grid_constant__ TmaMap map_a, const __grid_constant__ TmaMap map_b, const float* __restrict__ sa,
                           const float* __restrict__ sb, u16* __restrict__ d, const int* __restrict__ counts, int E, int T, int N, int K) {
    extern __shared__ __align__(1024) u8 smem_raw[];
    u8* smem;
    const u32 base = aligned_smem_base(smem_raw, &smem);
    const u32 bars = base + WG_STAGES * WG_STAGE_BYTES;
    ring_init<WG_STAGES>(bars, WG_CONSUMER_WGS * 4);
    const int wg = threadIdx.x >> 7;
    const int KB = K / WG_BK;
    const int MT = (T + WG_BM - 1) / WG_BM;
    const int NT = N / WG_BN;
    const long long tiles = (long long)E * MT * NT;
    RingPos<WG_STAGES> pos = {0u, 0u};
    if (wg == 0) {
        // Producer: one thread issues every load; the others give their registers away.
        regs_dec<WG_PRODUCER_REGS>();
        if (threadIdx.x != 0) return;
        tma_prefetch_map(&map_a);
        tma_prefetch_map(&map_b);
        for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            int e, mt, nt;
            decode_tile(tile, MT, NT, &e, &mt, &nt);
            if (mt * WG_BM >= clamp_count(counts[e], T)) continue;
            for (int kb = 0; kb < KB; ++kb) {
                const u32 a_tile = base + pos.stage * WG_STAGE_BYTES;
                ring_produce<WG_STAGES>(bars, pos, WG_STAGE_BYTES);
                const u32 full = full_bar<WG_STAGES>(bars, pos.stage);
                tma_load_3d(a_tile, &map_a, full, kb * WG_BK, mt * WG_BM, e);
                tma_load_3d(a_tile + WG_A_BYTES, &map_b, full, kb * WG_BK, nt * WG_BN, e);
                pos.advance();
            }
        }
        return;
    }
    regs_inc<WG_CONSUMER_REGS>();
    // Consumer warpgroup cw owns rows 64 cw .. 64 cw + 63 of the tile; thread (warp w, lane l)
    // rows r0 and r0 + 8, columns 8j + 2(l % 4) + {0, 1}.
    const int cw = wg - 1;
    const int warp = (threadIdx.x >> 5) & 3;
    const int lane = threadIdx.x & 31;
    const int r0 = 64 * cw + 16 * warp + (lane >> 2);
    float part[64];
    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) part[i] = 0.0f;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int e, mt, nt;
        decode_tile(tile, MT, NT, &e, &mt, &nt);
        const int cnt = clamp_count(counts[e], T);
        const int m0 = mt * WG_BM;
        if (m0 >= cnt) continue;
        // Uniform across the warpgroup (wgmma is warpgroup-collective).
        const bool live = m0 + 64 * cw < cnt;
        const int row_lo = m0 + r0;
        const int row_hi = row_lo + 8;
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
        const float* sa_e = sa + (long long)e * KB * T;
        const float* sb_t = sb + ((long long)e * NT + nt) * KB;
        // Scales WG_SCALE_AHEAD K blocks ahead, rotated through registers (plain loads, in flight
        // while the tensor cores run: Nsight Compute showed the consumers stalled on them with a
        // distance of one block). Rows past the count are never stored; their scale is 0 and
        // never read from memory.
        const ScaleLoader ld = {sa_e, sb_t, T, KB, cnt, row_lo, row_hi};
        Scales3 sc[WG_SCALE_AHEAD];
#pragma unroll
        for (int i = 0; i < WG_SCALE_AHEAD; ++i) sc[i] = ld.at(i);
        for (int kb = 0; kb < KB; ++kb) {
            const float sa_lo = sc[0].lo;
            const float sa_hi = sc[0].hi;
            const float sbv = sc[0].b;
#pragma unroll
            for (int i = 0; i + 1 < WG_SCALE_AHEAD; ++i) sc[i] = sc[i + 1];
            sc[WG_SCALE_AHEAD - 1] = ld.at(kb + WG_SCALE_AHEAD);
            const u32 a_tile = base + pos.stage * WG_STAGE_BYTES;
            ring_consume<WG_STAGES>(bars, pos);
            if (live) block_partial(part, a_tile + 64 * WG_BK * cw, a_tile + WG_A_BYTES);
            ring_release<WG_STAGES>(bars, pos);
            pos.advance();
            // Promotion (SPEC §5.3): acc = fma(f32(sa * sb), p, acc).
            const float s_lo = __fmul_rn(sa_lo, sbv);
            const float s_hi = __fmul_rn(sa_hi, sbv);
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                acc[4 * j + 0] = __fmaf_rn(s_lo, part[4 * j + 0], acc[4 * j + 0]);
                acc[4 * j + 1] = __fmaf_rn(s_lo, part[4 * j + 1], acc[4 * j + 1]);
                acc[4 * j + 2] = __fmaf_rn(s_hi, part[4 * j + 2], acc[4 * j + 2]);
                acc[4 * j + 3] = __fmaf_rn(s_hi, part[4 * j + 3], acc[4 * j + 3]);
            }
        }
        if (!live) continue;
        // Epilogue: bf16 (RNE, canonical NaN), two columns per 32-bit store, live rows only.
        const int col0 = nt * WG_BN + 2 * (lane & 3);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = h ? row_hi : row_lo;
            if (row < cnt) {
                u16* out = d + ((long long)e * T + row) * N + col0;
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    const u32 lo = bf16_out(acc[4 * j + 2 * h]);
                    const u32 hi = bf16_out(acc[4 * j + 2 * h + 1]);
                    *reinterpret_cast<u32*>(out + 8 * j) = lo | (hi << 16);
                }
            }
        }
    }
}

// ---- probes (test support: tests/wgmma.rs) -----------------------------------------------------

// (a) One TMA box (128 B x 64 rows x 1) of `map` at (c0, c1, c2) into 1024-aligned shared
// memory; the 8192 raw bytes (still swizzled) are copied to out[0..8192). 128 threads.
extern "C" __global__ void __launch_bounds__(128) moe_wgmma_probe_tma(const __grid_constant__ TmaMap map, int c0, int c1, int c2, u8* out) {
    extern __shared__ __align__(1024) u8 smem_raw[];
    u8* smem;
    const u32 base = aligned_smem_base(smem_raw, &smem);
    const u32 bar = base + PB_BOX_BYTES;
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        mbar_init_fence();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        mbar_arrive_expect_tx(bar, PB_BOX_BYTES);
        tma_load_3d(base, &map, bar, c0, c1, c2);
    }
    mbar_wait(bar, 0);
    for (int i = threadIdx.x; i < PB_BOX_BYTES / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(smem)[i];
}

// (b) One 64 x 128 tile over K = 128: a (64 x 128 B) and b (128 x 128 B) row-major E4M3 are
// written by the threads into shared memory with the 128-byte swizzle, then block_partial (the
// GEMM's own four wgmma k32, the first with scale-d = 0) runs on an accumulator preset to NaN
// (which scale-d = 0 must ignore); out[row * 128 + col] = the f32 partial. 128 threads.
extern "C" __global__ void __launch_bounds__(128) moe_wgmma_probe_mma(const u8* __restrict__ a, const u8* __restrict__ b, float* __restrict__ out) {
    extern __shared__ __align__(1024) u8 smem_raw[];
    u8* smem;
    const u32 base = aligned_smem_base(smem_raw, &smem);
    for (int i = threadIdx.x; i < (PB_BOX_BYTES + WG_B_BYTES) / 16; i += blockDim.x) {
        const bool is_a = i < PB_BOX_BYTES / 16;
        const int j = is_a ? i : i - PB_BOX_BYTES / 16;
        const uint4 v = reinterpret_cast<const uint4*>(is_a ? a : b)[j];
        const u32 r = (u32)j >> 3;
        const u32 k = ((u32)j & 7u) << 4;
        *reinterpret_cast<uint4*>(smem + (is_a ? 0 : PB_BOX_BYTES) + sw128_offset(r, k)) = v;
    }
    // Ordinary stores, read next by the tensor cores (async proxy).
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    float part[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) part[i] = __int_as_float(0x7FC00000);
    block_partial(part, base, base + PB_BOX_BYTES);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int row = warp * 16 + (lane >> 2) + 8 * h;
                const int col = 8 * j + 2 * (lane & 3) + c;
                out[row * WG_BN + col] = part[4 * j + 2 * h + c];
            }
}

// (c) The GEMM's ring alone: a producer lane loads `ntiles` A boxes (tile i: kb = i % KB,
// row tile (i / KB) % MT, expert (i / (KB * MT)) % E) through the STAGES-deep ring; the consumer
// warpgroup un-swizzles each into out[i * 8192 + r * 128 + k] and releases the stage. 160 threads.
extern "C" __global__ void __launch_bounds__(PB_THREADS)
    moe_wgmma_probe_ring(const __grid_constant__ TmaMap map, int E, int T, int K, int ntiles, u8* __restrict__ out) {
    extern __shared__ __align__(1024) u8 smem_raw[];
    u8* smem;
    const u32 base = aligned_smem_base(smem_raw, &smem);
    const u32 bars = base + PB_STAGES * PB_BOX_BYTES;
    ring_init<PB_STAGES>(bars, PB_CONSUMERS / 32);
    const int KB = K / WG_BK;
    const int MT = (T + PB_ROWS - 1) / PB_ROWS;
    RingPos<PB_STAGES> pos = {0u, 0u};
    if ((int)threadIdx.x >= PB_CONSUMERS) {
        if (threadIdx.x != PB_CONSUMERS) return;
        tma_prefetch_map(&map);
        for (int i = 0; i < ntiles; ++i) {
            ring_produce<PB_STAGES>(bars, pos, PB_BOX_BYTES);
            tma_load_3d(base + pos.stage * PB_BOX_BYTES, &map, full_bar<PB_STAGES>(bars, pos.stage), (i % KB) * WG_BK, ((i / KB) % MT) * PB_ROWS,
                        (i / (KB * MT)) % E);
            pos.advance();
        }
        return;
    }
    for (int i = 0; i < ntiles; ++i) {
        ring_consume<PB_STAGES>(bars, pos);
        const u8* tile = smem + pos.stage * PB_BOX_BYTES;
        for (int c = threadIdx.x; c < PB_BOX_BYTES / 16; c += PB_CONSUMERS) {
            const u32 r = (u32)c >> 3;
            const u32 k = ((u32)c & 7u) << 4;
            reinterpret_cast<uint4*>(out + (long long)i * PB_BOX_BYTES)[c] = *reinterpret_cast<const uint4*>(tile + sw128_offset(r, k));
        }
        ring_release<PB_STAGES>(bars, pos);
        pos.advance();
    }
}
