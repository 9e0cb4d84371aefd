// Self-test kernels: the device helpers evaluated on whole input ranges, compared on the host.

#include "common.cuh"

// out[i] = exp_f32(bits = start + i), for i < n.
extern "C" __global__ void moe_exp_f32_range(u32 start, long long n, float* __restrict__ out) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = exp_f32(__uint_as_float(start + (u32)i));
    }
}

// out[b] = vllm_ceil_pow2_bf16(b) for every 16-bit pattern b.
extern "C" __global__ void moe_vllm_ceil_table(u16* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < 65536) out[i] = vllm_ceil_pow2_bf16((u16)i);
}

// out[b] = e4m3 byte of (f32 bits start + i): checks the cvt against moe_core::e4m3_from_f32.
extern "C" __global__ void moe_e4m3_range(u32 start, long long n, u8* __restrict__ out) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = e4m3_sat(__uint_as_float(start + (u32)i));
    }
}
