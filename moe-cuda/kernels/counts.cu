// Exclusive prefix sums of the clamped device counts, in rows and in row tiles of `bm`.
// One block of 1024 threads; reads `counts` on the device, so it can be captured in a graph.
// prefix[e] = sum_{f<e} clamp(counts[f]); tile_prefix[e] = sum_{f<e} ceil(clamp(counts[f]) / bm);
// both arrays hold E + 1 entries (the last one is the total).

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024) moe_counts_prefix(const int* __restrict__ counts, int E, int T, int bm,
                                                                     int* __restrict__ prefix, int* __restrict__ tile_prefix) {
    __shared__ int s_rows[1024];
    __shared__ int s_tiles[1024];
    const int tid = threadIdx.x;
    const int per = (int)(((long long)E + 1023) / 1024);
    const int b = tid * per;
    const int end = min(b + per, E);
    int r = 0, tl = 0;
    for (int e = b; e < end; ++e) {
        int c = clamp_count(counts[e], T);
        r += c;
        tl += (c + bm - 1) / bm;
    }
    s_rows[tid] = r;
    s_tiles[tid] = tl;
    __syncthreads();
    for (int off = 1; off < 1024; off <<= 1) {
        int vr = tid >= off ? s_rows[tid - off] : 0;
        int vt = tid >= off ? s_tiles[tid - off] : 0;
        __syncthreads();
        s_rows[tid] += vr;
        s_tiles[tid] += vt;
        __syncthreads();
    }
    int base_r = tid ? s_rows[tid - 1] : 0;
    int base_t = tid ? s_tiles[tid - 1] : 0;
    for (int e = b; e < end; ++e) {
        int c = clamp_count(counts[e], T);
        prefix[e] = base_r;
        tile_prefix[e] = base_t;
        base_r += c;
        base_t += (c + bm - 1) / bm;
    }
    if (tid == 1023) {
        prefix[E] = s_rows[1023];
        tile_prefix[E] = s_tiles[1023];
    }
}
