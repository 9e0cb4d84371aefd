//! A backend with a planted GEMM bug, for proving that a check can fail.
//!
//! [`Tampered`] runs every operation on an inner backend and then lets a hook rewrite the output
//! of each grouped GEMM, or replaces the grouped GEMM or the token-group quantization: a check
//! that passes `Tampered` with a hook that breaks the contract is a check that cannot catch that
//! bug. Used by the engine's and moe-testing's planted-bug tests.

use moe_core::{
    bf16, Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, BlockQuant, Finalize, Gate, GemmInputs, GroupedGemm, MoeResult,
    Prepare, Route, ScalesMut, SiluMulQuant, TokenGroupQuant,
};

/// The hook: the problem, its inputs and the output the inner backend wrote.
pub type GemmHook = dyn Fn(&GroupedGemm, &GemmInputs<'_>, &mut [bf16]) + Send + Sync;

/// A replacement grouped GEMM, given the inner backend.
pub type GemmFn<'a> = dyn Fn(&dyn BatchedExperts, &GroupedGemm, GemmInputs<'_>, &mut [bf16]) -> MoeResult<()> + Send + Sync + 'a;

/// A replacement token-group quantization, given the inner backend.
pub type TokenGroupQuantFn<'a> =
    dyn Fn(&dyn BatchedExperts, &TokenGroupQuant, Activation<'_>, &mut [u8], ScalesMut<'_>) -> MoeResult<()> + Send + Sync + 'a;

/// `inner` with its grouped GEMM and its token-group quantization replaced or rewritten; every
/// other operation delegates to `inner`.
pub struct Tampered<'a> {
    inner: &'a dyn BatchedExperts,
    name: &'a str,
    gemm: Option<Box<GemmFn<'a>>>,
    token_group_quant: Option<Box<TokenGroupQuantFn<'a>>>,
}

impl std::fmt::Debug for Tampered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tampered({:?})", self.inner)
    }
}

impl<'a> Tampered<'a> {
    /// `inner`, with `hook` applied to every grouped GEMM output.
    pub fn new(inner: &'a dyn BatchedExperts, hook: impl Fn(&GroupedGemm, &GemmInputs<'_>, &mut [bf16]) + Send + Sync + 'static) -> Self {
        Self::named("tampered", inner).with_gemm(move |inner, p, inputs, d| {
            inner.grouped_gemm(p, inputs, d)?;
            hook(p, &inputs, d);
            Ok(())
        })
    }

    /// `inner` unchanged, under the name `name` (add the bugs with the `with_*` methods).
    pub fn named(name: &'a str, inner: &'a dyn BatchedExperts) -> Self {
        Self {
            inner,
            name,
            gemm: None,
            token_group_quant: None,
        }
    }

    /// The grouped GEMM replaced by `gemm`.
    pub fn with_gemm(
        mut self,
        gemm: impl Fn(&dyn BatchedExperts, &GroupedGemm, GemmInputs<'_>, &mut [bf16]) -> MoeResult<()> + Send + Sync + 'a,
    ) -> Self {
        self.gemm = Some(Box::new(gemm));
        self
    }

    /// The token-group quantization replaced by `quant`.
    pub fn with_token_group_quant(
        mut self,
        quant: impl Fn(&dyn BatchedExperts, &TokenGroupQuant, Activation<'_>, &mut [u8], ScalesMut<'_>) -> MoeResult<()> + Send + Sync + 'a,
    ) -> Self {
        self.token_group_quant = Some(Box::new(quant));
        self
    }
}

impl Backend for Tampered<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        match &self.token_group_quant {
            Some(quant) => quant(self.inner, p, x, q, s),
            None => self.inner.token_group_quant(p, x, q, s),
        }
    }
    fn batched_token_group_quant(
        &self,
        p: &BatchedTokenGroupQuant,
        x: Activation<'_>,
        c: &[i32],
        q: &mut [u8],
        s: ScalesMut<'_>,
    ) -> MoeResult<()> {
        self.inner.batched_token_group_quant(p, x, c, q, s)
    }
    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        self.inner.block_quant(p, w, q, s)
    }
    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], c: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        self.inner.silu_mul_quant(p, y, c, q, s)
    }
    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        match &self.gemm {
            Some(gemm) => gemm(self.inner, p, inputs, d),
            None => self.inner.grouped_gemm(p, inputs, d),
        }
    }
    fn prepare(&self, p: &Prepare, x: &[bf16], ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, c: &mut [i32]) -> MoeResult<()> {
        self.inner.prepare(p, x, ids, a1q, a1s, c)
    }
    fn finalize(&self, p: &Finalize, eo: &[bf16], ids: &[i32], w: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        self.inner.finalize(p, eo, ids, w, out)
    }
    fn route(&self, p: &Route, logits: &[f32], bias: Option<&[f32]>, ids: &mut [i32], w: &mut [f32]) -> MoeResult<()> {
        self.inner.route(p, logits, bias, ids, w)
    }
    fn gate(&self, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
        self.inner.gate(p, x, w, logits)
    }
}

/// The provided `apply`: the stages through the methods above, so the hook applies to both GEMMs.
impl BatchedExperts for Tampered<'_> {}
