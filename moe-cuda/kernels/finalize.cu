// Finalize (SPEC §5.5, bit-exact): out[m, k] = bf16_out(sum_j fma(w[m, j], expert_out[id, row, k], acc)),
// j increasing, ids of -1 skipped. `rows` (M * topk) is the validated routing from the host;
// anything out of range is skipped rather than read.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) moe_finalize(const u16* __restrict__ eo, const int* __restrict__ ids,
                                                               const int* __restrict__ rows, const float* __restrict__ w,
                                                               u16* __restrict__ out, long long M, int K, int topk, int E, int T) {
    const long long total = M * K;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (long long)gridDim.x * blockDim.x) {
        const long long m = idx / K;
        const int k = (int)(idx % K);
        float acc = 0.0f;
        for (int j = 0; j < topk; ++j) {
            const int id = ids[m * topk + j];
            const int r = rows[m * topk + j];
            if (id < 0 || id >= E || r < 0 || r >= T) continue;
            acc = __fmaf_rn(w[m * topk + j], bf16_to_f32(eo[((long long)id * T + r) * K + k]), acc);
        }
        out[idx] = bf16_out(acc);
    }
}
