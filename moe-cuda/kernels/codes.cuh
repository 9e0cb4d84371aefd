// Codes the host passes to the kernels for its enums. moe-cuda's `kernels.rs` reads this file in
// a test and checks every value against the Rust mapping (`fmt_code`, `numerics_code`,
// `scoring_code`), so a kernel and the launch code cannot disagree on what a number means.
// Kernels compare against these names, never against bare numbers.
#ifndef MOE_CODES_CUH
#define MOE_CODES_CUH

// moe_core::ScaleFormat
#define MOE_FMT_F32 0
#define MOE_FMT_F32_CEIL_UE8M0 1
#define MOE_FMT_UE8M0_PACKED 2

// moe_core::Numerics
#define MOE_NUMERICS_VLLM_BF16 0
#define MOE_NUMERICS_F32 1

// moe_core::Scoring
#define MOE_SCORING_SIGMOID 0
#define MOE_SCORING_SOFTMAX 1

#endif
