//! The backend traits: every operation of SPEC §5 on host buffers, and the batched experts
//! interface modelled on vLLM's modular kernels.
//!
//! Every method validates its arguments with the problem's `check*` method before touching any
//! output, and leaves rows `t >= counts[e]` of per-expert outputs untouched.

use half::bf16;

use crate::error::MoeError;
use crate::problem::{
    Activation, BatchedTokenGroupQuant, BlockQuant, ExpertsStage, Finalize, Gate, GroupedGemm, Prepare, Route, SiluMulQuant,
    TokenGroupQuant, WorkspaceShapes,
};
pub use crate::problem::{ExpertsInputs, GemmInputs};
use crate::scale::{ScaleBuf, ScalesMut};

/// Result of every backend entry point.
pub type MoeResult<T> = Result<T, MoeError>;

/// Every operation of SPEC §5 on host-resident buffers.
///
/// Outputs are in-out: a backend reads nothing from them but leaves every element it must not
/// write (rows past `counts`) exactly as the caller left it.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short name (`cpu`, `cpu-naive`, `cuda`).
    fn name(&self) -> &str;

    /// Token-group quantization of a `(rows, K)` matrix (SPEC §5.1).
    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()>;

    /// Batched token-group quantization of `(E, T, K)`, live rows only (SPEC §5.1).
    fn batched_token_group_quant(&self, p: &BatchedTokenGroupQuant, x: Activation, c: &[i32], q: &mut [u8], s: ScalesMut) -> MoeResult<()>;

    /// 128×128 block quantization of weights (SPEC §4).
    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()>;

    /// SiLU-and-multiply with FP8 group quantization, live rows only (SPEC §5.2).
    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()>;

    /// Masked grouped FP8 GEMM, live rows only (SPEC §5.3).
    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()>;

    /// Dispatch and quantize (SPEC §5.5); writes `counts` and the live rows of `a1q`, `a1s`.
    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()>;

    /// Weight and combine (SPEC §5.5).
    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()>;

    /// The router (SPEC §5.6): `topk_ids` and `topk_weights (M, k)` from `logits (M, Eg)` and,
    /// when the problem has one, `bias (Eg)`. A NaN logit is [`ProblemError::NanLogit`](crate::ProblemError::NanLogit)
    /// (the first in (token, expert) order), and then neither output is written.
    fn route(&self, p: &Route, logits: &[f32], bias: Option<&[f32]>, topk_ids: &mut [i32], topk_weights: &mut [f32]) -> MoeResult<()>;

    /// The gate GEMM (SPEC §5.7 step 1): `logits (M, Eg)` from `x (M, K)` and the gate weight
    /// `w (Eg, K)` widened to f32, bit-identical to [`gate_logit`](crate::gate_logit) per element.
    fn gate(&self, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()>;
}

/// Host copies of the experts stage's intermediates, so that each stage can be checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertsWorkspace {
    /// GEMM1's output `(E, T, 2I)` bf16.
    pub h1: Vec<bf16>,
    /// The quantized SiLU output `(E, T, I)` E4M3.
    pub q2: Vec<u8>,
    /// Its scales `(E, cols, T)`.
    pub s2: ScaleBuf,
}

impl ExpertsWorkspace {
    /// Zero-filled intermediates for `p`.
    pub fn new(p: &ExpertsStage) -> Self {
        let [h1, q2, s2] = Self::lens(p);
        Self {
            h1: vec![bf16::ZERO; h1],
            q2: vec![0; q2],
            s2: ScaleBuf::zeros(p.scale_format(), s2),
        }
    }

    /// The element counts of `h1`, `q2` and `s2` for `p` (the problem type bounds their products).
    fn lens(p: &ExpertsStage) -> [usize; 3] {
        let (e, t, i) = (p.experts(), p.capacity(), p.i());
        [e * t * 2 * i, e * t * i, p.silu().scale_shape().iter().product()]
    }

    /// Whether these buffers have the lengths and the scale storage kind `p` needs, computed
    /// from the shapes alone (nothing is allocated).
    pub fn matches(&self, p: &ExpertsStage) -> bool {
        let [h1, q2, s2] = Self::lens(p);
        self.h1.len() == h1 && self.q2.len() == q2 && self.s2.len() == s2 && self.s2.view().is_packed() == p.scale_format().is_packed()
    }
}

/// What a batched-experts implementation supports, mirroring vLLM's capability queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `supports_chunking`: splitting the tokens into chunks (no: the batched format is not chunkable).
    pub chunking: bool,
    /// `supports_expert_map`: a global-to-local expert map (no).
    pub expert_map: bool,
    /// `supports_packed_ue8m0_act_scales`.
    pub packed_ue8m0_act_scales: bool,
}

/// The batched-experts stage (vLLM's `BatchedDeepGemmExperts`), built on a [`Backend`].
pub trait BatchedExperts: Backend {
    /// Capability queries.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chunking: false,
            expert_map: false,
            packed_ue8m0_act_scales: true,
        }
    }

    /// vLLM's workspace shapes for `p`.
    fn workspace_shapes(&self, p: &ExpertsStage) -> WorkspaceShapes {
        p.workspace_shapes()
    }

    /// `out = GEMM2(silu_mul_quant(GEMM1(a1q, w1)), w2)`, live rows only (SPEC §5.4).
    ///
    /// The intermediates are left in `ws`. The provided implementation runs the three stages
    /// through the [`Backend`] methods; device backends override it to keep data resident.
    fn apply(&self, p: &ExpertsStage, inputs: ExpertsInputs<'_>, ws: &mut ExpertsWorkspace, out: &mut [bf16]) -> MoeResult<()> {
        p.check(&inputs, out)?;
        // Reallocate only a workspace of the wrong shape; a matching one is reused as it is.
        if !ws.matches(p) {
            *ws = ExpertsWorkspace::new(p);
        }
        let g1 = GemmInputs {
            a: inputs.a1q,
            sa: inputs.a1s,
            b: inputs.w1,
            counts: inputs.counts,
        };
        self.grouped_gemm(&p.gemm1(), g1, &mut ws.h1)?;
        self.silu_mul_quant(&p.silu(), &ws.h1, inputs.counts, &mut ws.q2, ws.s2.view_mut())?;
        let g2 = GemmInputs {
            a: &ws.q2,
            sa: ws.s2.view(),
            b: inputs.w2,
            counts: inputs.counts,
        };
        self.grouped_gemm(&p.gemm2(), g2, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Numerics, ScaleFormat};

    #[test]
    fn workspace_matches_compares_shapes_and_scale_kind_without_allocating() {
        let p = ExpertsStage::new(2, 3, 256, 128, ScaleFormat::F32, Numerics::VllmBf16).unwrap();
        let ws = ExpertsWorkspace::new(&p);
        assert!(ws.matches(&p));
        assert_eq!((ws.h1.len(), ws.q2.len(), ws.s2.len()), (2 * 3 * 256, 2 * 3 * 128, 2 * 3));
        // Another capacity, another intermediate size, another scale storage.
        assert!(!ws.matches(&ExpertsStage::new(2, 4, 256, 128, ScaleFormat::F32, Numerics::VllmBf16).unwrap()));
        assert!(!ws.matches(&ExpertsStage::new(2, 3, 256, 256, ScaleFormat::F32, Numerics::VllmBf16).unwrap()));
        // One group per row: packed scales have as many words as f32 scales have values.
        let packed = ExpertsStage::new(2, 3, 256, 128, ScaleFormat::Ue8m0Packed, Numerics::VllmBf16).unwrap();
        assert_eq!(ExpertsWorkspace::new(&packed).s2.len(), ws.s2.len());
        assert!(!ws.matches(&packed));
        // The ceil format stores f32 like the plain one.
        assert!(ws.matches(&ExpertsStage::new(2, 3, 256, 128, ScaleFormat::F32CeilUe8m0, Numerics::F32).unwrap()));
    }
}
