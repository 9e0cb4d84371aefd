//! What `moe run` runs, and the validation of it the command line reports.

use moe_core::{Numerics, ScaleFormat};

/// What `moe run` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Local experts `E`.
    pub experts: usize,
    /// Capacity `T` (max tokens per expert).
    pub capacity: usize,
    /// Hidden size `K` (a multiple of 128).
    pub hidden: usize,
    /// Expert intermediate size `I` (a multiple of 128).
    pub intermediate: usize,
    /// Tokens `M`.
    pub tokens: usize,
    /// Router slots per token.
    pub topk: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Activation scale format (ceil formats also give power-of-two weight scales).
    pub scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic.
    pub numerics: Numerics,
    /// Live rows per expert whose GEMM outputs are recomputed by the naive reference.
    pub check_rows: usize,
    /// Weight blocks per expert and matrix whose quantization is recomputed.
    pub check_blocks: usize,
}

impl Default for RunConfig {
    /// DeepSeek-V3's expert shapes on one rank: 8 local experts of K = 7168, I = 2048, T = 64.
    fn default() -> Self {
        Self {
            experts: 8,
            capacity: 64,
            hidden: 7168,
            intermediate: 2048,
            tokens: 64,
            topk: 8,
            seed: 0,
            scale_fmt: ScaleFormat::F32,
            numerics: Numerics::VllmBf16,
            check_rows: 2,
            check_blocks: 2,
        }
    }
}
