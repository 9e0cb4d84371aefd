//! The backend traits: every operation of SPEC §5 on host buffers, and the batched experts
//! interface modelled on vLLM's modular kernels.
//!
//! Every method validates its arguments with the problem's `check*` method before touching any
//! output, and leaves rows `t >= counts[e]` of per-expert outputs untouched.

use half::bf16;

use crate::error::MoeError;
use crate::problem::{
    Activation, BatchedTokenGroupQuant, BlockQuant, Experts, Finalize, GroupedGemm, Prepare, SiluMulQuant, TokenGroupQuant, WeightsRef,
    WorkspaceShapes,
};
use crate::scale::{ScaleBuf, Scales, ScalesMut};

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
    fn batched_token_group_quant(
        &self,
        p: &BatchedTokenGroupQuant,
        x: Activation<'_>,
        counts: &[i32],
        q: &mut [u8],
        s: ScalesMut<'_>,
    ) -> MoeResult<()>;

    /// 128×128 block quantization of weights (SPEC §4).
    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()>;

    /// SiLU-and-multiply with FP8 group quantization, live rows only (SPEC §5.2).
    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()>;

    /// Masked grouped FP8 GEMM, live rows only (SPEC §5.3).
    #[allow(clippy::too_many_arguments)]
    fn grouped_gemm(
        &self,
        p: &GroupedGemm,
        a: &[u8],
        sa: Scales<'_>,
        b: &[u8],
        sb: &[f32],
        counts: &[i32],
        d: &mut [bf16],
    ) -> MoeResult<()>;

    /// Dispatch and quantize (SPEC §5.5); writes `counts` and the live rows of `a1q`, `a1s`.
    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()>;

    /// Weight and combine (SPEC §5.5).
    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()>;
}

/// The inputs of the batched experts stage.
#[derive(Debug, Clone, Copy)]
pub struct ExpertsInputs<'a> {
    /// `(E, T, K)` E4M3 activations.
    pub a1q: &'a [u8],
    /// Their scales, MN-major `(E, K/128, T)` in the problem's scale format.
    pub a1s: Scales<'a>,
    /// `w1 (E, 2I, K)`: gate rows then up rows.
    pub w1: WeightsRef<'a>,
    /// `w2 (E, K, I)`.
    pub w2: WeightsRef<'a>,
    /// Live rows per expert.
    pub counts: &'a [i32],
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
    pub fn new(p: &Experts) -> Self {
        let (e, t, i) = (p.experts(), p.capacity(), p.i());
        let sh = p.silu().scale_shape();
        Self {
            h1: vec![bf16::ZERO; e * t * 2 * i],
            q2: vec![0; e * t * i],
            s2: ScaleBuf::zeros(p.scale_format(), sh.iter().product()),
        }
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
    fn workspace_shapes(&self, p: &Experts) -> WorkspaceShapes {
        p.workspace_shapes()
    }

    /// `out = GEMM2(silu_mul_quant(GEMM1(a1q, w1)), w2)`, live rows only (SPEC §5.4).
    ///
    /// The intermediates are left in `ws`. The provided implementation runs the three stages
    /// through the [`Backend`] methods; device backends override it to keep data resident.
    fn apply(&self, p: &Experts, inputs: ExpertsInputs<'_>, ws: &mut ExpertsWorkspace, out: &mut [bf16]) -> MoeResult<()> {
        p.check(inputs.a1q, &inputs.a1s, &inputs.w1, &inputs.w2, inputs.counts, out)?;
        let fresh = ExpertsWorkspace::new(p);
        if ws.h1.len() != fresh.h1.len()
            || ws.q2.len() != fresh.q2.len()
            || ws.s2.len() != fresh.s2.len()
            || ws.s2.view().is_packed() != fresh.s2.view().is_packed()
        {
            *ws = fresh;
        }
        self.grouped_gemm(
            &p.gemm1(),
            inputs.a1q,
            inputs.a1s,
            inputs.w1.q,
            inputs.w1.s,
            inputs.counts,
            &mut ws.h1,
        )?;
        self.silu_mul_quant(&p.silu(), &ws.h1, inputs.counts, &mut ws.q2, ws.s2.view_mut())?;
        self.grouped_gemm(&p.gemm2(), &ws.q2, ws.s2.view(), inputs.w2.q, inputs.w2.s, inputs.counts, out)
    }
}
