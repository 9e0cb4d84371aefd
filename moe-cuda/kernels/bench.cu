// Kernels of the benchmark harness (`moe bench`), not of the MoE stage:
// - moe_bench_read: the read-only streaming ceiling. Every thread reads 16-byte words with a
//   grid-stride loop (four independent loads in flight per iteration) and folds them into a XOR;
//   the result is stored only if it equals a value the caller passes and the data never holds, so
//   nothing is written in practice and the compiler cannot drop the loads.
// - moe_bench_copy: the copy ceiling, a kernel like the framework's elementwise copy (16-byte
//   loads and stores, grid-stride, four words in flight per thread per iteration). The driver's
//   cuMemcpyDtoD reached only about 2.7 TB/s on an H200 (2026-12-01) where such a kernel
//   reaches about 4.2 TB/s, so the kernel is the honest ceiling for kernels that read and write.
// - moe_bench_spin: keeps the GPU busy for `cycles` SM clocks without touching memory, so that the
//   host has enqueued the timed graph before the start event is reached (the event then measures
//   the GPU's work, not the host's launch latency), with the L2 left as it was.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(512) moe_bench_read(const uint4* __restrict__ src, i64 n16, u32 magic,
                                                                 u32* __restrict__ sink) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        const uint4 a = __ldg(src + i);
        const uint4 b = __ldg(src + i + stride);
        const uint4 c = __ldg(src + i + 2 * stride);
        const uint4 d = __ldg(src + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) {
        const uint4 a = __ldg(src + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == magic) {
        sink[0] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(512) moe_bench_copy(const uint4* __restrict__ src, uint4* __restrict__ dst, i64 n16) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        const uint4 a = __ldg(src + i);
        const uint4 b = __ldg(src + i + stride);
        const uint4 c = __ldg(src + i + 2 * stride);
        const uint4 d = __ldg(src + i + 3 * stride);
        dst[i] = a;
        dst[i + stride] = b;
        dst[i + 2 * stride] = c;
        dst[i + 3 * stride] = d;
    }
    for (; i < n16; i += stride) {
        dst[i] = __ldg(src + i);
    }
}

extern "C" __global__ void moe_bench_spin(i64 cycles) {
    const i64 start = clock64();
    while (clock64() - start < cycles) {
    }
}
