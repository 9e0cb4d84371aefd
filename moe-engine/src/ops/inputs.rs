//! The owned inputs of one call of each operation (a "case"): a validated problem and its input
//! buffers. `moe op` reads them from files, the differential harness draws them at random, and
//! both run them through the same code.

use moe_core::{
    bf16, Activation, BatchedTokenGroupQuant, BlockQuant, ExpertsInputs, ExpertsStage, Finalize, GemmInputs, GroupedGemm, Prepare, Route,
    ScaleBuf, SiluMulQuant, TokenGroupQuant, WeightsRef,
};

/// An owned activation tensor, bf16 or f32.
#[derive(Debug, Clone, PartialEq)]
pub enum ActBuf {
    /// bf16 values.
    Bf16(Vec<bf16>),
    /// f32 values.
    F32(Vec<f32>),
}

impl ActBuf {
    /// A borrowed view.
    pub fn view(&self) -> Activation<'_> {
        match self {
            ActBuf::Bf16(v) => Activation::Bf16(v),
            ActBuf::F32(v) => Activation::F32(v),
        }
    }

    /// From f32 values, rounded to bf16 when `bf16` is set.
    pub fn from_f32(v: Vec<f32>, bf16: bool) -> Self {
        if bf16 {
            ActBuf::Bf16(v.into_iter().map(moe_core::bf16::from_f32).collect())
        } else {
            ActBuf::F32(v)
        }
    }

    /// The same tensor without its last element (a buffer of the wrong length).
    pub fn shortened(&self) -> Self {
        match self {
            ActBuf::Bf16(v) => ActBuf::Bf16(v[..v.len().saturating_sub(1)].to_vec()),
            ActBuf::F32(v) => ActBuf::F32(v[..v.len().saturating_sub(1)].to_vec()),
        }
    }
}

/// Token-group quantization of `(rows, K)` (SPEC §5.1).
#[derive(Debug, Clone)]
pub struct TokenGroupQuantCase {
    /// The validated problem.
    pub p: TokenGroupQuant,
    /// The activations.
    pub x: ActBuf,
}

/// Batched token-group quantization of `(E, T, K)` with `counts` (SPEC §5.1).
#[derive(Debug, Clone)]
pub struct BatchedQuantCase {
    /// The validated problem.
    pub p: BatchedTokenGroupQuant,
    /// The activations.
    pub x: ActBuf,
    /// Live rows per expert.
    pub counts: Vec<i32>,
}

/// Block quantization of weights `(E, R, C)` (SPEC §4).
#[derive(Debug, Clone)]
pub struct BlockQuantCase {
    /// The validated problem.
    pub p: BlockQuant,
    /// The full-precision weights `(E, R, C)`.
    pub w: ActBuf,
}

/// SiLU-and-multiply + quantization of `(E, T, 2H)` (SPEC §5.2).
#[derive(Debug, Clone)]
pub struct SiluMulQuantCase {
    /// The validated problem.
    pub p: SiluMulQuant,
    /// The GEMM1 output `(E, T, 2H)` bf16 (gate half, then up half).
    pub y: Vec<bf16>,
    /// Live rows per expert.
    pub counts: Vec<i32>,
}

/// The masked grouped GEMM (SPEC §5.3).
#[derive(Debug, Clone)]
pub struct GemmCase {
    /// The validated problem.
    pub p: GroupedGemm,
    /// The E4M3 activations `(E, T, K)`.
    pub a: Vec<u8>,
    /// Their MN-major scales.
    pub sa: ScaleBuf,
    /// The E4M3 weights `(E, N, K)`.
    pub b: Vec<u8>,
    /// Their block scales `(E, N/128, K/128)`.
    pub sb: Vec<f32>,
    /// Live rows per expert.
    pub counts: Vec<i32>,
}

impl GemmCase {
    /// The borrowed inputs.
    pub fn inputs(&self) -> GemmInputs<'_> {
        GemmInputs {
            a: &self.a,
            sa: self.sa.view(),
            b: WeightsRef { q: &self.b, s: &self.sb },
            counts: &self.counts,
        }
    }
}

/// The batched experts stage (SPEC §5.4).
#[derive(Debug, Clone)]
pub struct ExpertsCase {
    /// The validated problem.
    pub p: ExpertsStage,
    /// The E4M3 activations `(E, T, K)`.
    pub a1q: Vec<u8>,
    /// Their MN-major scales.
    pub a1s: ScaleBuf,
    /// `w1 (E, 2I, K)` E4M3: gate rows, then up rows.
    pub w1: Vec<u8>,
    /// Its block scales `(E, 2I/128, K/128)`.
    pub w1s: Vec<f32>,
    /// `w2 (E, K, I)` E4M3.
    pub w2: Vec<u8>,
    /// Its block scales `(E, K/128, I/128)`.
    pub w2s: Vec<f32>,
    /// Live rows per expert.
    pub counts: Vec<i32>,
    /// Whether the inputs are "random data" (finite, sensible scales), for which the end-to-end
    /// `calc_diff < 1e-5` requirement of the differential check applies (false for inputs read
    /// from a file).
    pub random_data: bool,
}

impl ExpertsCase {
    /// The case of `p` with its inputs; `w1` and `w2` are the E4M3 weights with their block
    /// scales.
    pub fn new(
        p: ExpertsStage,
        a1q: Vec<u8>,
        a1s: ScaleBuf,
        (w1, w1s): (Vec<u8>, Vec<f32>),
        (w2, w2s): (Vec<u8>, Vec<f32>),
        counts: Vec<i32>,
        random_data: bool,
    ) -> Self {
        Self {
            p,
            a1q,
            a1s,
            w1,
            w1s,
            w2,
            w2s,
            counts,
            random_data,
        }
    }

    /// The borrowed inputs.
    pub fn inputs(&self) -> ExpertsInputs<'_> {
        ExpertsInputs {
            a1q: &self.a1q,
            a1s: self.a1s.view(),
            w1: WeightsRef { q: &self.w1, s: &self.w1s },
            w2: WeightsRef { q: &self.w2, s: &self.w2s },
            counts: &self.counts,
        }
    }
}

/// Dispatch + quantize (SPEC §5.5).
#[derive(Debug, Clone)]
pub struct PrepareCase {
    /// The validated problem.
    pub p: Prepare,
    /// The activations.
    pub x: Vec<bf16>,
    /// `(M, k)` expert ids, `-1` for "not routed".
    pub topk_ids: Vec<i32>,
}

/// Weight + combine (SPEC §5.5).
#[derive(Debug, Clone)]
pub struct FinalizeCase {
    /// The validated problem.
    pub p: Finalize,
    /// The experts stage output `(E, T, K)` bf16.
    pub expert_out: Vec<bf16>,
    /// `(M, k)` expert ids, `-1` for "not routed".
    pub topk_ids: Vec<i32>,
    /// `(M, k)` router weights.
    pub topk_weights: Vec<f32>,
}

/// The router (SPEC §5.6).
#[derive(Debug, Clone)]
pub struct RouteCase {
    /// The validated problem.
    pub p: Route,
    /// The gate logits `(M, Eg)`.
    pub logits: Vec<f32>,
    /// The choice bias `(Eg)`, present exactly when the problem has one.
    pub bias: Option<Vec<f32>>,
}
