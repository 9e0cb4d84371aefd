// Router (SPEC §5.6, bit-exact given the logits): topk_ids and topk_weights (M, k) from
// logits (M, Eg) f32 and an optional bias (Eg) f32 (null: none, zeros added).
// scoring: a MOE_SCORING_* code (codes.cuh).
//
// Design: one warp per token (grid-stride over tokens; warps numbered block-major), each with
// (Eg + G) floats of dynamic shared memory: the choice scores c[Eg], then the group scores
// gscore[G]. Lane i handles experts i, i + 32, ...
// 1. NaN: the lowest expert with a NaN logit (each lane's first, then a warp minimum); if there
//    is one, lane 0 records (token * Eg + expert) with atomicMin into `nan_at` (initialized to
//    all ones by the host, which turns the smallest into moe-core's NanLogit error, the first NaN
//    in (token, expert) order, and discards every output) and the warp skips the token.
// 2. Scores exactly as moe-ref-cpu: sigmoid 1 / (1 + exp_f32(-l)); softmax with the maximum by
//    fmaxf (maxNum: order-independent, and no NaN is left), z = exp_f32(l - max), and the sum of
//    z in increasing e by lane 0 alone (a tree sum would round differently), s = z / Z. Every
//    operation is an explicit round-to-nearest intrinsic and exp_f32 is common.cuh's (compiled
//    with --fmad=false as well), so nothing is contracted. c = s + bias (or + 0).
// 3. Groups (G > 1): lane g scans group g, keeping its two first-ranked experts; the group score
//    is their sum (bias) or the first one's c. TG rounds of a warp maximum over the group keys
//    leave the threshold: group g is kept iff its key is at least the TG-th largest.
// 4. Selection: k rounds of a warp maximum of the keys of kept experts below the previous
//    round's key (keys are distinct, so each round takes the next expert in rank order).
//    route_key is moe_core::rank_key: c descending (-0 == +0, NaN below every number), then
//    the lower index. Lane 0 writes the id and the score s of the chosen expert (recomputed
//    from its logit by the same operations as in step 2).
// 5. Lane 0 finishes the k weights as moe-ref-cpu does: divided by their sum in j order when
//    renormalizing, times routed_scaling_factor (passed as its bits), NaN written as 0x7FC00000.
//
// Work per token is O(Eg) exp_f32 plus O((k + TG) * Eg / 32) comparisons per lane; the router
// is a tiny part of a layer, so the kernel favours a plain structure over speed.

#include "common.cuh"

extern __shared__ float route_smem[];

// The score order of moe_core::rank_key (the high half of a key).
__device__ __forceinline__ u32 route_order(float c) {
    if (c != c) return 0u;
    const u32 bits = c == 0.0f ? 0u : __float_as_uint(c);
    return (bits >> 31) ? ~bits : (bits | 0x80000000u);
}

// moe_core::rank_key: a larger key ranks first; 0 is below every key of an index < 2^32 - 1.
__device__ __forceinline__ u64 route_key(float c, int index) { return ((u64)route_order(c) << 32) | (u64)(~(u32)index); }

// moe_core::rank_index.
__device__ __forceinline__ int route_index(u64 key) { return (int)(~(u32)key); }

__device__ __forceinline__ u64 route_warp_max(u64 v) {
    for (int o = 16; o > 0; o >>= 1) {
        const u64 x = __shfl_xor_sync(0xFFFFFFFFu, v, o);
        v = x > v ? x : v;
    }
    return v;
}

// The score s of one logit (step 2); mx and z_sum are the softmax's maximum and sum.
__device__ __forceinline__ float route_score(float l, int scoring, float mx, float z_sum) {
    if (scoring == MOE_SCORING_SOFTMAX) return __fdiv_rn(exp_f32(__fsub_rn(l, mx)), z_sum);
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-l)));
}

extern "C" __global__ void __launch_bounds__(256) moe_route(const float* __restrict__ logits, const float* __restrict__ bias,
                                                            int* __restrict__ ids, float* __restrict__ w, u64* __restrict__ nan_at,
                                                            long long M, int Eg, int topk, int scoring, int G, int TG, int renormalize,
                                                            u32 scale_bits) {
    const int lane = threadIdx.x & 31;
    const int wib = threadIdx.x >> 5;
    const long long warp = (long long)blockIdx.x * (blockDim.x >> 5) + wib;
    const long long nwarps = (long long)gridDim.x * (blockDim.x >> 5);
    float* c = route_smem + (long long)wib * (Eg + G);
    float* gscore = c + Eg;
    const int gs = Eg / G;
    const float scale = __uint_as_float(scale_bits);
    for (long long m = warp; m < M; m += nwarps) {
        const float* l = logits + m * Eg;

        // 1. The first NaN of the row, if any.
        int nan_e = Eg;
        for (int e = lane; e < Eg; e += 32) {
            if (l[e] != l[e]) {
                nan_e = e;
                break;
            }
        }
        nan_e = (int)__reduce_min_sync(0xFFFFFFFFu, (u32)nan_e);
        if (nan_e < Eg) {
            if (lane == 0) atomicMin(nan_at, (u64)m * (u64)Eg + (u64)nan_e);
            continue;
        }

        // 2. Scores and choice scores.
        float mx = 0.0f, z_sum = 0.0f;
        if (scoring == MOE_SCORING_SOFTMAX) {
            float v = __int_as_float(0xFF800000);
            for (int e = lane; e < Eg; e += 32) v = max_num(v, l[e]);
            mx = warp_max(v);
            for (int e = lane; e < Eg; e += 32) c[e] = exp_f32(__fsub_rn(l[e], mx));
            __syncwarp();
            float z = 0.0f;
            if (lane == 0) {
                for (int e = 0; e < Eg; ++e) z = __fadd_rn(z, c[e]);
            }
            z_sum = __shfl_sync(0xFFFFFFFFu, z, 0);
            for (int e = lane; e < Eg; e += 32) c[e] = __fadd_rn(__fdiv_rn(c[e], z_sum), bias ? bias[e] : 0.0f);
        } else {
            for (int e = lane; e < Eg; e += 32) c[e] = __fadd_rn(route_score(l[e], scoring, mx, z_sum), bias ? bias[e] : 0.0f);
        }
        __syncwarp();

        // 3. Group selection: the key of the last kept group.
        u64 group_min = 0;
        if (G > 1) {
            for (int g = lane; g < G; g += 32) {
                u64 k1 = 0, k2 = 0;
                for (int e = g * gs; e < (g + 1) * gs; ++e) {
                    const u64 ke = route_key(c[e], e);
                    if (ke > k1) {
                        k2 = k1;
                        k1 = ke;
                    } else if (ke > k2) {
                        k2 = ke;
                    }
                }
                const float a = c[route_index(k1)];
                gscore[g] = bias ? __fadd_rn(a, c[route_index(k2)]) : a;
            }
            __syncwarp();
            u64 prev = ~0ull;
            for (int r = 0; r < TG; ++r) {
                u64 best = 0;
                for (int g = lane; g < G; g += 32) {
                    const u64 kg = route_key(gscore[g], g);
                    if (kg < prev && kg > best) best = kg;
                }
                prev = route_warp_max(best);
            }
            group_min = prev;
        }

        // 4. Selection, in rank order.
        int* ids_m = ids + m * topk;
        float* w_m = w + m * topk;
        u64 prev = ~0ull;
        for (int j = 0; j < topk; ++j) {
            u64 best = 0;
            for (int e = lane; e < Eg; e += 32) {
                const int g = e / gs;
                if (G > 1 && route_key(gscore[g], g) < group_min) continue;
                const u64 ke = route_key(c[e], e);
                if (ke < prev && ke > best) best = ke;
            }
            prev = route_warp_max(best);
            if (lane == 0) {
                const int e = route_index(prev);
                ids_m[j] = e;
                w_m[j] = route_score(l[e], scoring, mx, z_sum);
            }
        }

        // 5. Weights.
        if (lane == 0) {
            if (renormalize) {
                float sum = 0.0f;
                for (int j = 0; j < topk; ++j) sum = __fadd_rn(sum, w_m[j]);
                for (int j = 0; j < topk; ++j) w_m[j] = __fdiv_rn(w_m[j], sum);
            }
            for (int j = 0; j < topk; ++j) {
                const float v = __fmul_rn(w_m[j], scale);
                w_m[j] = v != v ? __int_as_float(0x7FC00000) : v;
            }
        }
        // The next token overwrites c and gscore.
        __syncwarp();
    }
}

// ---- the gate GEMM (SPEC §5.7 step 1) ------------------------------------------------------
//
// logits[m, e] = f32(Σ_k f64(x[m, k]) · f64(w[e, k])), summed in increasing k exactly as
// moe_core::gate_logit (each product of a bf16 and an f32 is exact in f64; the additions are
// IEEE f64 in the same order, and no contraction: --fmad=false and explicit _rn intrinsics),
// rounded once to f32; a NaN is written as 0x7FC00000. Bit-identical to the CPU.
// Block: 32 experts (threadIdx.x) x 8 tokens (threadIdx.y); K walked in chunks of 32 staged in
// shared memory (x as f32, exact). Token blocks stride over gridDim.y.

#define GATE_TE 32
#define GATE_TM 8
#define GATE_KC 32

extern "C" __global__ void __launch_bounds__(GATE_TE * GATE_TM)
    moe_gate(const u16* __restrict__ x, const float* __restrict__ w, float* __restrict__ logits, long long M, int Eg, int K) {
    __shared__ float xs[GATE_TM][GATE_KC];
    __shared__ float ws[GATE_TE][GATE_KC + 1];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * GATE_TE + tx;
    const int e0 = blockIdx.x * GATE_TE;
    const int e = e0 + tx;
    for (long long m0 = (long long)blockIdx.y * GATE_TM; m0 < M; m0 += (long long)gridDim.y * GATE_TM) {
        const long long m = m0 + ty;
        double acc = 0.0;
        for (int k0 = 0; k0 < K; k0 += GATE_KC) {
            {
                const int r = tid / GATE_KC;
                const int c = tid % GATE_KC;
                const long long mm = m0 + r;
                const int kk = k0 + c;
                xs[r][c] = (mm < M && kk < K) ? bf16_to_f32(x[mm * K + kk]) : 0.0f;
            }
            for (int i = tid; i < GATE_TE * GATE_KC; i += GATE_TE * GATE_TM) {
                const int r = i / GATE_KC;
                const int c = i % GATE_KC;
                const int ee = e0 + r;
                const int kk = k0 + c;
                ws[r][c] = (ee < Eg && kk < K) ? w[(long long)ee * K + kk] : 0.0f;
            }
            __syncthreads();
            const int kn = min(GATE_KC, K - k0);
            for (int kk = 0; kk < kn; ++kk) acc = __dadd_rn(acc, __dmul_rn((double)xs[ty][kk], (double)ws[tx][kk]));
            __syncthreads();
        }
        if (m < M && e < Eg) {
            float v = __double2float_rn(acc);
            if (v != v) v = __int_as_float(0x7FC00000);
            logits[m * Eg + e] = v;
        }
    }
}
