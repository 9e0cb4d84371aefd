//! The GEMM problems: the masked grouped GEMM and the batched experts stage, and their inputs.

use half::bf16;

use super::checks::{at_least, check_counts, check_len, multiple_of_128, product, Result};
use super::quant::SiluMulQuant;
use crate::scale::{ScaleFormat, Scales, GROUP};
use crate::Numerics;

/// Masked grouped FP8 GEMM, "NT" (SPEC §5.3): `d (E, T, N) = a (E, T, K) · b (E, N, K)ᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedGemm {
    pub(super) e: usize,
    pub(super) t: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) sa_fmt: ScaleFormat,
    pub(super) expected_m: Option<usize>,
}

impl GroupedGemm {
    /// `N` and `K` positive multiples of 128; `sa_fmt` is the storage of `sa` (any §3 format).
    pub fn new(e: usize, t: usize, n: usize, k: usize, sa_fmt: ScaleFormat) -> Result<Self> {
        at_least("a", "E", e, 1)?;
        at_least("a", "T", t, 1)?;
        multiple_of_128("a", "K", k)?;
        multiple_of_128("b", "N", n)?;
        product("a", &[e, t, k])?;
        product("b", &[e, n, k])?;
        product("d", &[e, t, n])?;
        Ok(Self {
            e,
            t,
            n,
            k,
            sa_fmt,
            expected_m: None,
        })
    }
    /// Sets the `expected_m` performance hint (SPEC §6); it never changes results.
    pub fn with_expected_m(mut self, m: usize) -> Self {
        self.expected_m = Some(m);
        self
    }
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.e
    }
    /// Rows per expert `T`.
    pub fn capacity(&self) -> usize {
        self.t
    }
    /// Output columns `N` (rows of `b`).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Reduction length `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Blocks of 128 along `K`.
    pub fn k_blocks(&self) -> usize {
        self.k / GROUP
    }
    /// The storage of `sa`.
    pub fn scale_format(&self) -> ScaleFormat {
        self.sa_fmt
    }
    /// The `expected_m` hint, if set.
    pub fn expected_m(&self) -> Option<usize> {
        self.expected_m
    }
    /// `(E, cols, T)` MN-major activation scales.
    pub fn sa_shape(&self) -> [usize; 3] {
        [self.e, self.sa_fmt.columns(self.k_blocks()), self.t]
    }
    /// `(E, N/128, K/128)` weight scales.
    pub fn sb_shape(&self) -> [usize; 3] {
        [self.e, self.n / GROUP, self.k / GROUP]
    }
    /// Validates the inputs: `a`, `sa`, `b` (tensor `b`) and its scales (tensor `sb`), `counts`.
    pub fn check_inputs(&self, inputs: &GemmInputs<'_>) -> Result<()> {
        check_len("a", inputs.a.len(), &[self.e, self.t, self.k])?;
        let sh = self.sa_shape();
        inputs.sa.check("sa", self.sa_fmt, sh.iter().product(), &sh)?;
        check_len("b", inputs.b.q.len(), &[self.e, self.n, self.k])?;
        check_len("sb", inputs.b.s.len(), &self.sb_shape())?;
        check_counts(inputs.counts, self.e, self.t)
    }
    /// Validates the inputs and the output `d (E, T, N)`.
    pub fn check(&self, inputs: &GemmInputs<'_>, d: &[bf16]) -> Result<()> {
        self.check_inputs(inputs)?;
        check_len("d", d.len(), &[self.e, self.t, self.n])
    }
}

/// The inputs of the masked grouped GEMM (SPEC §5.3).
#[derive(Debug, Clone, Copy)]
pub struct GemmInputs<'a> {
    /// `(E, T, K)` E4M3 activations.
    pub a: &'a [u8],
    /// Their scales, MN-major `(E, cols, T)` in the problem's scale format.
    pub sa: Scales<'a>,
    /// The weights `b (E, N, K)` E4M3 and their scales `sb (E, N/128, K/128)`.
    pub b: WeightsRef<'a>,
    /// Live rows per expert.
    pub counts: &'a [i32],
}

/// Block-quantized expert weights `(E, R, C)` E4M3 with scales `(E, ceil(R/128), ceil(C/128))`.
#[derive(Debug, Clone, Copy)]
pub struct WeightsRef<'a> {
    /// E4M3 bytes, row-major.
    pub q: &'a [u8],
    /// f32 dequantization scales, row-major.
    pub s: &'a [f32],
}

/// The batched experts stage (SPEC §5.4): `out = GEMM2(silu_mul_quant(GEMM1(a1q, w1)), w2)`.
///
/// It is held as its first GEMM, `(E, T, K) x (E, 2I, K)` with the activation scale format and
/// the `expected_m` hint, and the arithmetic of SiLU-mul-quant; the other two stages follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertsStage {
    gemm1: GroupedGemm,
    numerics: Numerics,
}

/// The shapes of the experts stage's buffers, as vLLM reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceShapes {
    /// `(E, T, max(K, 2I))` bf16: GEMM1's output (and GEMM2's, in vLLM).
    pub ws13: [usize; 3],
    /// `(E, T, I)`: the quantized SiLU output.
    pub ws2: [usize; 3],
    /// `(E, T, K)` bf16.
    pub output: [usize; 3],
}

impl ExpertsStage {
    /// `K` and `I` positive multiples of 128.
    pub fn new(e: usize, t: usize, k: usize, i: usize, fmt: ScaleFormat, numerics: Numerics) -> Result<Self> {
        at_least("a1q", "E", e, 1)?;
        at_least("a1q", "T", t, 1)?;
        multiple_of_128("a1q", "K", k)?;
        multiple_of_128("w1", "I", i)?;
        product("w1", &[e, 2, i, k])?;
        product("w2", &[e, k, i])?;
        product("ws13", &[e, t, 2, k.max(i)])?;
        let gemm1 = GroupedGemm {
            e,
            t,
            n: 2 * i,
            k,
            sa_fmt: fmt,
            expected_m: None,
        };
        Ok(Self { gemm1, numerics })
    }
    /// Sets the `expected_m` hint for both GEMMs.
    pub fn with_expected_m(self, m: usize) -> Self {
        let gemm1 = self.gemm1.with_expected_m(m);
        Self { gemm1, ..self }
    }
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.gemm1.e
    }
    /// Rows per expert `T`.
    pub fn capacity(&self) -> usize {
        self.gemm1.t
    }
    /// Hidden size `K`.
    pub fn k(&self) -> usize {
        self.gemm1.k
    }
    /// Intermediate size `I` per expert.
    pub fn i(&self) -> usize {
        self.gemm1.n / 2
    }
    /// The storage of the activation scales (`a1s` and the intermediate ones).
    pub fn scale_format(&self) -> ScaleFormat {
        self.gemm1.sa_fmt
    }
    /// The arithmetic of SiLU-mul-quant (SPEC §5.2).
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }
    /// The `expected_m` hint, if set.
    pub fn expected_m(&self) -> Option<usize> {
        self.gemm1.expected_m
    }
    /// GEMM1: `(E, T, K) x (E, 2I, K) -> (E, T, 2I)`.
    pub fn gemm1(&self) -> GroupedGemm {
        self.gemm1
    }
    /// The SiLU-mul-quant stage: `(E, T, 2I) -> (E, T, I)`.
    pub fn silu(&self) -> SiluMulQuant {
        let GroupedGemm { e, t, sa_fmt, .. } = self.gemm1;
        SiluMulQuant {
            e,
            t,
            h: self.i(),
            fmt: sa_fmt,
            numerics: self.numerics,
        }
    }
    /// GEMM2: `(E, T, I) x (E, K, I) -> (E, T, K)`.
    pub fn gemm2(&self) -> GroupedGemm {
        GroupedGemm {
            n: self.k(),
            k: self.i(),
            ..self.gemm1
        }
    }
    /// vLLM's workspace shapes.
    pub fn workspace_shapes(&self) -> WorkspaceShapes {
        let (e, t, k, i) = (self.experts(), self.capacity(), self.k(), self.i());
        WorkspaceShapes {
            ws13: [e, t, k.max(2 * i)],
            ws2: [e, t, i],
            output: [e, t, k],
        }
    }
    /// `(E, cols, T)` scales of `a1q`.
    pub fn a1s_shape(&self) -> [usize; 3] {
        self.gemm1.sa_shape()
    }
    /// Validates the inputs, naming `a1q`, `a1s`, `w1`, `w1s`, `w2`, `w2s` or `counts`.
    pub fn check_inputs(&self, inputs: &ExpertsInputs<'_>) -> Result<()> {
        let (g1, g2) = (self.gemm1, self.gemm2());
        let (e, t, k, i) = (self.experts(), self.capacity(), self.k(), self.i());
        check_len("a1q", inputs.a1q.len(), &[e, t, k])?;
        let sh = g1.sa_shape();
        inputs.a1s.check("a1s", g1.sa_fmt, sh.iter().product(), &sh)?;
        check_len("w1", inputs.w1.q.len(), &[e, 2 * i, k])?;
        check_len("w1s", inputs.w1.s.len(), &g1.sb_shape())?;
        check_len("w2", inputs.w2.q.len(), &[e, k, i])?;
        check_len("w2s", inputs.w2.s.len(), &g2.sb_shape())?;
        check_counts(inputs.counts, e, t)
    }
    /// Validates the inputs and the output `out (E, T, K)`.
    pub fn check(&self, inputs: &ExpertsInputs<'_>, out: &[bf16]) -> Result<()> {
        self.check_inputs(inputs)?;
        check_len("out", out.len(), &[self.experts(), self.capacity(), self.k()])
    }
}

/// The inputs of the batched experts stage (SPEC §5.4).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemError;

    #[test]
    fn huge_shapes_are_rejected_not_overflowed() {
        let e = GroupedGemm::new(usize::MAX / 2, 1 << 20, 1 << 20, 1 << 20, ScaleFormat::F32).unwrap_err();
        assert!(matches!(e, ProblemError::TooLarge { .. }));
    }

    #[test]
    fn experts_workspace_shapes_match_vllm() {
        let p = ExpertsStage::new(8, 64, 7168, 2048, ScaleFormat::F32, Numerics::VllmBf16).unwrap();
        let w = p.workspace_shapes();
        assert_eq!(w.ws13, [8, 64, 7168]);
        assert_eq!(w.ws2, [8, 64, 2048]);
        assert_eq!(w.output, [8, 64, 7168]);
    }
}
