// moe-cuda common device helpers, included by every kernel source (no toolkit headers; NVRTC
// receives this file and codes.cuh as named headers).
//
// Every kernel is compiled with --fmad=false --prec-div=true --ftz=false, and the f32
// arithmetic below is written with the explicit round-to-nearest intrinsics anyway, so no
// contraction or approximation can change a bit. Each helper mirrors a function of moe-core
// (named in its comment) and must agree with it on every input.

#ifndef MOE_COMMON_CUH
#define MOE_COMMON_CUH

#include "codes.cuh"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define GROUP 128

// ---- formats ----------------------------------------------------------------------------

// moe_core::e4m3_from_f32: RNE, saturating to +-448, NaN -> 0x7F.
__device__ __forceinline__ u8 e4m3_sat(float x) {
    unsigned short r;
    // The pair's second element is packed into the high byte; the low byte holds x.
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(x));
    return (u8)(r & 0xFF);
}

// moe_core::e4m3_to_f32: exact decode through f16 (every E4M3 value is an f16 value).
__device__ __forceinline__ float e4m3_to_f32(u8 b) {
    unsigned int h2;
    unsigned short in = (unsigned short)b;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(in));
    unsigned short h = (unsigned short)(h2 & 0xFFFF);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// half::bf16::from_f32 for non-NaN values (RNE); NaN gives some NaN.
__device__ __forceinline__ u16 bf16_bits_rn(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// moe_core::bf16_out: RNE, every NaN becomes the canonical 0x7FC0.
__device__ __forceinline__ u16 bf16_out(float x) {
    if (x != x) return (u16)0x7FC0;
    return bf16_bits_rn(x);
}

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __int_as_float(((u32)b) << 16); }

// moe_core::round_bf16: round to bf16 and widen back.
__device__ __forceinline__ float round_bf16(float x) { return bf16_to_f32(bf16_bits_rn(x)); }

// moe_core::ceil_pow2.
__device__ __forceinline__ float ceil_pow2(float x) {
    if (x != x) return x;
    u32 bits = __float_as_uint(x) & 0x7FFFFFFFu;
    if (bits == 0x7F800000u) return __int_as_float(0x7F800000);
    u32 e = bits >> 23;
    if (e == 0) return __int_as_float(1 << 23);
    if (bits & 0x7FFFFFu) e += 1;
    if (e >= 255) return __int_as_float(0x7F800000);
    return __int_as_float((int)(e << 23));
}

// moe_core::ue8m0_from_pow2.
__device__ __forceinline__ u32 ue8m0_from_pow2(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7F800000u) == 0x7F800000u) return 0xFFu;
    return (bits >> 23) & 0xFFu;
}

// moe_core::ue8m0_to_f32.
__device__ __forceinline__ float ue8m0_to_f32(u32 code) {
    if (code == 0xFFu) return __int_as_float(0x7FC00000);
    if (code == 0u) return __int_as_float(1 << 22);
    return __int_as_float((int)(code << 23));
}

// Rust's f32::max / CUDA fmaxf: IEEE maxNum, NaN loses.
__device__ __forceinline__ float max_num(float a, float b) { return fmaxf(a, b); }

// Rust's f32::clamp: NaN stays NaN.
__device__ __forceinline__ float clamp_rs(float x, float lo, float hi) {
    if (x < lo) return lo;
    if (x > hi) return hi;
    return x;
}

// ---- exp_f32: line-by-line translation of moe_core::math::exp_f32 ------------------------

__device__ __forceinline__ float exp_f32(float x) {
    const float LOG2E = __int_as_float(0x3FB8AA3B);
    const float SHIFTER = 12582912.0f;
    const float LN2_HI = __int_as_float(0x3F317200);
    const float LN2_LO = __int_as_float(0x35BFBE8E);
    const float C2 = __int_as_float(0x3F000000);
    const float C3 = __int_as_float(0x3E2AAAAB);
    const float C4 = __int_as_float(0x3D2AAAAB);
    const float C5 = __int_as_float(0x3C088889);
    const float C6 = __int_as_float(0x3AB60B61);
    const float C7 = __int_as_float(0x39500D01);
    if (x != x) return __int_as_float(0x7FC00000);
    x = x > 89.0f ? 89.0f : (x < -104.0f ? -104.0f : x);
    float t = __fadd_rn(__fmul_rn(x, LOG2E), SHIFTER);
    float nf = __fsub_rn(t, SHIFTER);
    int n = (int)nf;
    float r = __fsub_rn(__fsub_rn(x, __fmul_rn(nf, LN2_HI)), __fmul_rn(nf, LN2_LO));
    float q = __fadd_rn(__fmul_rn(C7, r), C6);
    q = __fadd_rn(__fmul_rn(q, r), C5);
    q = __fadd_rn(__fmul_rn(q, r), C4);
    q = __fadd_rn(__fmul_rn(q, r), C3);
    q = __fadd_rn(__fmul_rn(q, r), C2);
    float p = __fadd_rn(1.0f, __fadd_rn(r, __fmul_rn(__fmul_rn(r, r), q)));
    int n1 = n >> 1;
    int n2 = n - n1;
    float s1 = __int_as_float((int)(((u32)(n1 + 127)) << 23));
    float s2 = __int_as_float((int)(((u32)(n2 + 127)) << 23));
    return __fmul_rn(__fmul_rn(p, s1), s2);
}

// moe_core::silu_f32.
__device__ __forceinline__ float silu_f32(float g) { return __fdiv_rn(g, __fadd_rn(1.0f, exp_f32(-g))); }

// ---- vllm_ceil_pow2_bf16, evaluated in double exactly like moe_core -----------------------

__device__ __forceinline__ double round_f64_to_bf16_grid(double x) {
    if (!(x == x) || x == 0.0 || x == x + x /* inf */) return x;
    u64 bits = (u64)__double_as_longlong(x);
    const u32 drop = 45;
    const u64 half = 1ull << (drop - 1);
    u64 rem = bits & ((1ull << drop) - 1);
    u64 kept = bits >> drop;
    if (rem > half || (rem == half && (kept & 1ull))) kept += 1;
    return __longlong_as_double((i64)(kept << drop));
}

// Takes and returns bf16 bits.
__device__ __forceinline__ u16 vllm_ceil_pow2_bf16(u16 s) {
    u16 a = s & 0x7FFF;
    if (a > 0x7F80) return s;           // NaN
    if (a == 0) return 0;               // +-0 -> +0
    if (a == 0x7F80) return 0x7F80;     // inf
    double v = (double)bf16_to_f32(a);
    double l = round_f64_to_bf16_grid(log2(v));
    int c = (int)ceil(l);
    if (c >= 128) return 0x7F80;
    if (c >= -126) return (u16)((c + 127) << 7);
    return (u16)(1u << (c + 133));
}

// ---- counts ------------------------------------------------------------------------------

// Device-resident counts are clamped into [0, T] everywhere (SPEC §7).
__device__ __forceinline__ int clamp_count(int c, int T) { return c < 0 ? 0 : (c > T ? T : c); }

// Index of the expert owning live row `li` given the exclusive prefix (E+1 entries).
__device__ __forceinline__ int find_expert(const int* prefix, int E, long long li) {
    int lo = 0, hi = E - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if ((long long)prefix[mid] <= li) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

#endif
