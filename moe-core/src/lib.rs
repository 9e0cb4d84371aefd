//! # moe-core
//!
//! The contract of moe-fp8 (see `SPEC.md` in the shared notes and the project's `docs/`):
//! number formats, activation scale formats and layouts, validated problem types for every
//! operation of the FP8 block-quantized Mixture-of-Experts expert stage, the backend traits, the
//! typed errors, and the comparison metrics of the differential tests (`metrics`: `ulp_bf16`,
//! `calc_diff`).
//!
//! What it promises: every problem type that exists is well-formed (its constructor checked every
//! dimension), and every `check*` method rejects any buffer, count or id that a backend could
//! not process safely, with an error naming the tensor and the dimension.
//!
//! What it trusts: nothing. It has no backend, no cargo features and no `unsafe`.
//!
//! ```
//! use moe_core::{e4m3_from_f32, e4m3_from_f32_reference, e4m3_to_f32, ceil_pow2, GroupedGemm, ScaleFormat};
//! assert_eq!(e4m3_to_f32(e4m3_from_f32(500.0)), 448.0); // saturates
//! assert_eq!(ceil_pow2(1.0000001), 2.0);
//! let p = GroupedGemm::new(8, 64, 4096, 7168, ScaleFormat::F32).unwrap();
//! assert_eq!(p.sb_shape(), [8, 32, 56]);
//! assert!(GroupedGemm::new(8, 64, 4096, 7100, ScaleFormat::F32).is_err());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod error;
pub mod format;
pub mod math;
pub mod meta;
pub mod metrics;
pub mod problem;
pub mod scale;

pub use backend::{Backend, BatchedExperts, Capabilities, ExpertsInputs, ExpertsWorkspace, GemmInputs, MoeResult};
pub use error::{DeviceError, MoeError, ProblemError};
pub use format::{
    bf16_from_f32, bf16_out, ceil_pow2, e4m3_from_f32, e4m3_from_f32_reference, e4m3_to_f32, e5m2_from_f32, e5m2_to_f32, round_bf16,
    ue8m0_from_pow2, ue8m0_to_f32, BF16_CANONICAL_NAN, E4M3_DECODE, E4M3_MAX,
};
pub use half::bf16;
pub use math::{exp_f32, silu_f32, vllm_ceil_pow2_bf16};
pub use meta::{estimate_expected_m, moe_problem_size, MoeProblemSize};
pub use metrics::{calc_diff, calc_diff_bf16, ulp_bf16};
pub use problem::{
    check_counts, check_len, clamp_count, finish_logit, gate_logit, rank_index, rank_key, Activation, BatchedTokenGroupQuant, BlockQuant,
    ExpertsStage, Finalize, Gate, GroupedGemm, Prepare, Route, RouterConfig, Routing, RoutingDims, Scoring, SiluMulQuant, TokenGroupQuant,
    WeightsRef, WorkspaceShapes, GATE_NAN_BITS,
};
pub use scale::{ue8m0_word_get, ue8m0_word_set, ue8m0_word_slot, Numerics, ScaleBuf, ScaleFormat, ScaleLayout, Scales, ScalesMut, GROUP};
