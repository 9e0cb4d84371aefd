//! The operations of `moe op` (SPEC §8): reading and validating their inputs, running them on a
//! backend, and naming their outputs.
//!
//! [`read_inputs`] turns arbitrary bytes into a validated [`OpInputs`] or an [`InputError`](crate::InputError)
//! naming the tensor; everything data-dependent (`counts` in range, `topk_ids` in range, no
//! expert over capacity, no NaN logit) is checked here, before any backend work. [`execute`]
//! then cannot fail on the input; it allocates the outputs zero-filled, so rows past `counts`
//! read back as zero.

use moe_core::{Numerics, ScaleFormat, Scoring};

mod execute;
mod inputs;
mod read;

pub use execute::{execute, run_op};
pub use inputs::*;
pub use read::read_inputs;
pub(crate) use read::twice_groups;

/// Every operation of the engine: the eight of SPEC §8 (`moe op`; all but `layer`) and the
/// batched token-group quantization (checked by `moe diff`, with no file form). The one
/// operation enum of the workspace: `moe op`, `moe diff` and the differential harness all name
/// operations with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `x (rows, K)` → `q`, `s (rows, K/128)` row-major (SPEC §5.1).
    TokenGroupQuant,
    /// `x (E, T, K)`, `counts` → `q`, `s (E, K/128, T)`, live rows only (SPEC §5.1, batched form).
    BatchedQuant,
    /// `w (E, R, C)` → `q`, `s (E, ceil(R/128), ceil(C/128))` (SPEC §4).
    BlockQuant,
    /// `y (E, T, 2H)`, `counts` → `q (E, T, H)`, `s (E, H/128, T)` (SPEC §5.2).
    SiluMulQuant,
    /// `a`, `sa`, `b`, `sb`, `counts` → `d (E, T, N)` (SPEC §5.3).
    GroupedGemm,
    /// `a1q`, `a1s`, `w1`, `w1s`, `w2`, `w2s`, `counts` → `out (E, T, K)` (SPEC §5.4).
    Experts,
    /// `x (M, K)`, `topk_ids (M, k)` → `a1q`, `a1s`, `counts` (SPEC §5.5).
    Prepare,
    /// `expert_out`, `topk_ids`, `topk_weights` → `out (M, K)` (SPEC §5.5).
    Finalize,
    /// `logits (M, Eg)`, optional `bias (Eg)` → `topk_ids`, `topk_weights (M, k)` (SPEC §5.6).
    Route,
}

impl Op {
    /// The operations of `moe op` (SPEC §8), in the order of its table.
    pub const FILE_OPS: [Op; 8] = [
        Op::TokenGroupQuant,
        Op::BlockQuant,
        Op::SiluMulQuant,
        Op::GroupedGemm,
        Op::Experts,
        Op::Prepare,
        Op::Finalize,
        Op::Route,
    ];

    /// Every operation, in pipeline order (the order of `moe diff`'s table).
    pub const ALL: [Op; 9] = [
        Op::Route,
        Op::Prepare,
        Op::TokenGroupQuant,
        Op::BatchedQuant,
        Op::BlockQuant,
        Op::GroupedGemm,
        Op::SiluMulQuant,
        Op::Experts,
        Op::Finalize,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Op::TokenGroupQuant => "token-group-quant",
            Op::BatchedQuant => "batched-quant",
            Op::BlockQuant => "block-quant",
            Op::SiluMulQuant => "silu-mul-quant",
            Op::GroupedGemm => "grouped-gemm",
            Op::Experts => "experts",
            Op::Prepare => "prepare",
            Op::Finalize => "finalize",
            Op::Route => "route",
        }
    }

    /// The operation named `s`.
    pub fn from_name(s: &str) -> Option<Op> {
        Self::ALL.into_iter().find(|op| op.name() == s)
    }

    /// Whether `moe op` runs it on safetensors files (SPEC §8).
    pub fn has_file_form(self) -> bool {
        Self::FILE_OPS.contains(&self)
    }

    /// What the operation is held to: `bit-exact`, or `bound` (the GEMM of SPEC §5.3).
    pub fn contract(self) -> &'static str {
        match self {
            Op::GroupedGemm | Op::Experts => "bound",
            _ => "bit-exact",
        }
    }

    /// The random stream of the operation's cases in `moe diff` (fixed: a case is reproduced
    /// from `(seed, stream, index)`).
    pub fn stream(self) -> u64 {
        match self {
            Op::TokenGroupQuant => 0,
            Op::BatchedQuant => 1,
            Op::BlockQuant => 2,
            Op::SiluMulQuant => 3,
            Op::GroupedGemm => 4,
            Op::Experts => 5,
            Op::Prepare => 6,
            Op::Finalize => 7,
            Op::Route => 8,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flags of `moe op` besides the files and the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpOptions {
    /// Activation scale format: of `s` (token-group-quant, silu-mul-quant), `sa` (grouped-gemm),
    /// `a1s` (experts, prepare). Unused by block-quant and finalize.
    pub scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic (silu-mul-quant, experts).
    pub numerics: Numerics,
    /// block-quant only: ceil every weight scale to a power of two (UE8M0 weights).
    pub pow2: bool,
    /// prepare only: the number of local experts `E`.
    pub experts: Option<usize>,
    /// prepare only: the capacity `T`.
    pub capacity: Option<usize>,
    /// route only (required): experts per token `k`.
    pub topk: Option<usize>,
    /// route only (required): how logits become scores.
    pub scoring: Option<Scoring>,
    /// route only: the number of expert groups `G` (with `topk_groups`; default 1).
    pub groups: Option<usize>,
    /// route only: the groups kept per token `TG` (with `groups`; default 1).
    pub topk_groups: Option<usize>,
    /// route only: divide the weights by their sum (`norm_topk_prob`).
    pub renormalize: bool,
    /// route only: the factor every weight is multiplied by last (default 1).
    pub routed_scaling: Option<f32>,
}

/// The validated inputs of one operation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OpInputs {
    /// See [`TokenGroupQuantCase`].
    TokenGroupQuant(TokenGroupQuantCase),
    /// See [`BlockQuantCase`].
    BlockQuant(BlockQuantCase),
    /// See [`SiluMulQuantCase`].
    SiluMulQuant(SiluMulQuantCase),
    /// See [`GemmCase`].
    GroupedGemm(GemmCase),
    /// See [`ExpertsCase`].
    Experts(ExpertsCase),
    /// See [`PrepareCase`].
    Prepare(PrepareCase),
    /// See [`FinalizeCase`].
    Finalize(FinalizeCase),
    /// See [`RouteCase`].
    Route(RouteCase),
}
