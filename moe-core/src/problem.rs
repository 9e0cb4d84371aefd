//! Validated problem types for every operation of SPEC §5.
//!
//! A problem describes shapes and options; its constructor rejects every malformed shape, so a
//! backend holding one can trust it. The `check_*` methods validate the caller's buffers (lengths,
//! scale kinds) and the data-dependent inputs (`counts`, `topk_ids`) before any work starts; every
//! backend calls them first, so nothing is ever half-written.

use half::bf16;

use crate::error::{ProblemError, ShapeDisplay};
use crate::scale::{ScaleFormat, ScaleLayout, Scales, ScalesMut, GROUP};
use crate::Numerics;

type Result<T> = std::result::Result<T, ProblemError>;

/// A read-only activation tensor in bf16 or f32.
#[derive(Debug, Clone, Copy)]
pub enum Activation<'a> {
    /// bf16 values.
    Bf16(&'a [bf16]),
    /// f32 values.
    F32(&'a [f32]),
}

impl Activation<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Activation::Bf16(x) => x.len(),
            Activation::F32(x) => x.len(),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Activation::Bf16(x) => x[i].to_f32(),
            Activation::F32(x) => x[i],
        }
    }
}

fn product(tensor: &'static str, dims: &[usize]) -> Result<usize> {
    let mut n: u128 = 1;
    for &d in dims {
        n = n.saturating_mul(d as u128);
    }
    // Keep every element count addressable by an i32-free 64-bit index and by `isize`.
    if n > (isize::MAX as u128) / 8 {
        return Err(ProblemError::TooLarge { tensor, elements: n });
    }
    Ok(n as usize)
}

fn multiple_of_128(tensor: &'static str, dim: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(ProblemError::TooSmall {
            tensor,
            dim,
            got: 0,
            min: GROUP,
        });
    }
    if v % GROUP != 0 {
        return Err(ProblemError::NotMultiple {
            tensor,
            dim,
            got: v,
            multiple: GROUP,
        });
    }
    Ok(())
}

fn at_least(tensor: &'static str, dim: &'static str, v: usize, min: usize) -> Result<()> {
    if v < min {
        return Err(ProblemError::TooSmall { tensor, dim, got: v, min });
    }
    Ok(())
}

/// Checks that a buffer holds exactly the elements of `shape`.
pub fn check_len(tensor: &'static str, got: usize, shape: &[usize]) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
    if got != expected {
        return Err(ProblemError::Len {
            tensor,
            shape: ShapeDisplay(shape).to_string(),
            expected,
            got,
        });
    }
    Ok(())
}

/// Checks `counts`: `E` entries, each in `[0, T]` (SPEC §1).
pub fn check_counts(counts: &[i32], experts: usize, capacity: usize) -> Result<()> {
    check_len("counts", counts.len(), &[experts])?;
    for (expert, &c) in counts.iter().enumerate() {
        if c < 0 || c as usize > capacity {
            return Err(ProblemError::Count {
                expert,
                count: c as i64,
                capacity,
            });
        }
    }
    Ok(())
}

/// Clamps a device-style count into `[0, T]`, as the unchecked GPU mode does (SPEC §7).
#[inline]
pub fn clamp_count(c: i32, capacity: usize) -> usize {
    (c.max(0) as usize).min(capacity)
}

// ---------------------------------------------------------------------------------------------

/// Token-group quantization of a `(rows, K)` matrix (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGroupQuant {
    rows: usize,
    k: usize,
    fmt: ScaleFormat,
    layout: ScaleLayout,
}

impl TokenGroupQuant {
    /// `rows >= 0`, `K` a positive multiple of 128; scales in `fmt` with the given layout.
    pub fn new(rows: usize, k: usize, fmt: ScaleFormat, layout: ScaleLayout) -> Result<Self> {
        multiple_of_128("x", "K", k)?;
        product("x", &[rows, k])?;
        Ok(Self { rows, k, fmt, layout })
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn groups(&self) -> usize {
        self.k / GROUP
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    pub fn layout(&self) -> ScaleLayout {
        self.layout
    }
    /// Physical shape of the scales: `(rows, cols)` row-major or `(cols, rows)` MN-major, with
    /// `cols = G` or `ceil(G/4)` packed words.
    pub fn scale_shape(&self) -> [usize; 2] {
        let cols = self.fmt.columns(self.groups());
        match self.layout {
            ScaleLayout::RowMajor => [self.rows, cols],
            ScaleLayout::MnMajor => [cols, self.rows],
        }
    }
    /// Validates the buffers.
    pub fn check(&self, x: &Activation<'_>, q: &[u8], s: &ScalesMut<'_>) -> Result<()> {
        check_len("x", x.len(), &[self.rows, self.k])?;
        check_len("q", q.len(), &[self.rows, self.k])?;
        let sh = self.scale_shape();
        s.check("s", self.fmt, sh[0] * sh[1], &sh)
    }
}

/// Batched token-group quantization of `(E, T, K)` with `counts`; MN-major scales `(E, G, T)`
/// (packed: `(E, ceil(G/4), T)` words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchedTokenGroupQuant {
    e: usize,
    t: usize,
    k: usize,
    fmt: ScaleFormat,
}

impl BatchedTokenGroupQuant {
    pub fn new(e: usize, t: usize, k: usize, fmt: ScaleFormat) -> Result<Self> {
        at_least("x", "E", e, 1)?;
        at_least("x", "T", t, 1)?;
        multiple_of_128("x", "K", k)?;
        product("x", &[e, t, k])?;
        Ok(Self { e, t, k, fmt })
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn groups(&self) -> usize {
        self.k / GROUP
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// `(E, cols, T)` with `cols = G` or `ceil(G/4)`.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.fmt.columns(self.groups()), self.t]
    }
    pub fn check(&self, x: &Activation<'_>, counts: &[i32], q: &[u8], s: &ScalesMut<'_>) -> Result<()> {
        check_len("x", x.len(), &[self.e, self.t, self.k])?;
        check_counts(counts, self.e, self.t)?;
        check_len("q", q.len(), &[self.e, self.t, self.k])?;
        let sh = self.scale_shape();
        s.check("s", self.fmt, sh.iter().product(), &sh)
    }
}

/// Block quantization of weights `(E, R, C)` into 128×128 blocks (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQuant {
    e: usize,
    r: usize,
    c: usize,
    pow2: bool,
}

impl BlockQuant {
    /// Any positive `E`, `R`, `C` (edges are zero-padded); `pow2` ceils each scale to a power of two.
    pub fn new(e: usize, r: usize, c: usize, pow2: bool) -> Result<Self> {
        at_least("w", "E", e, 1)?;
        at_least("w", "R", r, 1)?;
        at_least("w", "C", c, 1)?;
        product("w", &[e, r, c])?;
        Ok(Self { e, r, c, pow2 })
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn rows(&self) -> usize {
        self.r
    }
    pub fn cols(&self) -> usize {
        self.c
    }
    pub fn pow2(&self) -> bool {
        self.pow2
    }
    /// `(E, ceil(R/128), ceil(C/128))`.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.r.div_ceil(GROUP), self.c.div_ceil(GROUP)]
    }
    pub fn check(&self, w: &Activation<'_>, q: &[u8], s: &[f32]) -> Result<()> {
        check_len("w", w.len(), &[self.e, self.r, self.c])?;
        check_len("q", q.len(), &[self.e, self.r, self.c])?;
        check_len("s", s.len(), &self.scale_shape())
    }
}

/// SiLU-and-multiply with FP8 group quantization (SPEC §5.2): `y (E, T, 2H)` bf16 → `q (E, T, H)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluMulQuant {
    e: usize,
    t: usize,
    h: usize,
    fmt: ScaleFormat,
    numerics: Numerics,
}

impl SiluMulQuant {
    pub fn new(e: usize, t: usize, h: usize, fmt: ScaleFormat, numerics: Numerics) -> Result<Self> {
        at_least("y", "E", e, 1)?;
        at_least("y", "T", t, 1)?;
        multiple_of_128("q", "H", h)?;
        product("y", &[e, t, 2, h])?;
        Ok(Self { e, t, h, fmt, numerics })
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    pub fn h(&self) -> usize {
        self.h
    }
    pub fn groups(&self) -> usize {
        self.h / GROUP
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }
    /// `(E, cols, T)`, MN-major.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.fmt.columns(self.groups()), self.t]
    }
    pub fn check(&self, y: &[bf16], counts: &[i32], q: &[u8], s: &ScalesMut<'_>) -> Result<()> {
        check_len("y", y.len(), &[self.e, self.t, 2 * self.h])?;
        check_counts(counts, self.e, self.t)?;
        check_len("q", q.len(), &[self.e, self.t, self.h])?;
        let sh = self.scale_shape();
        s.check("s", self.fmt, sh.iter().product(), &sh)
    }
}

/// Masked grouped FP8 GEMM, "NT" (SPEC §5.3): `d (E, T, N) = a (E, T, K) · b (E, N, K)ᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedGemm {
    e: usize,
    t: usize,
    n: usize,
    k: usize,
    sa_fmt: ScaleFormat,
    expected_m: Option<usize>,
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
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn k_blocks(&self) -> usize {
        self.k / GROUP
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.sa_fmt
    }
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

/// Block-quantized expert weights `(E, R, C)` E4M3 with scales `(E, ceil(R/128), ceil(C/128))`.
#[derive(Debug, Clone, Copy)]
pub struct WeightsRef<'a> {
    /// E4M3 bytes, row-major.
    pub q: &'a [u8],
    /// f32 dequantization scales, row-major.
    pub s: &'a [f32],
}

/// The batched experts stage (SPEC §5.4): `out = GEMM2(silu_mul_quant(GEMM1(a1q, w1)), w2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    e: usize,
    t: usize,
    k: usize,
    i: usize,
    fmt: ScaleFormat,
    numerics: Numerics,
    expected_m: Option<usize>,
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

impl Experts {
    /// `K` and `I` positive multiples of 128.
    pub fn new(e: usize, t: usize, k: usize, i: usize, fmt: ScaleFormat, numerics: Numerics) -> Result<Self> {
        at_least("a1q", "E", e, 1)?;
        at_least("a1q", "T", t, 1)?;
        multiple_of_128("a1q", "K", k)?;
        multiple_of_128("w1", "I", i)?;
        product("w1", &[e, 2, i, k])?;
        product("w2", &[e, k, i])?;
        product("ws13", &[e, t, 2, k.max(i)])?;
        Ok(Self {
            e,
            t,
            k,
            i,
            fmt,
            numerics,
            expected_m: None,
        })
    }
    /// Sets the `expected_m` hint for both GEMMs.
    pub fn with_expected_m(mut self, m: usize) -> Self {
        self.expected_m = Some(m);
        self
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn i(&self) -> usize {
        self.i
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }
    pub fn expected_m(&self) -> Option<usize> {
        self.expected_m
    }
    /// GEMM1: `(E, T, K) x (E, 2I, K) -> (E, T, 2I)`.
    pub fn gemm1(&self) -> GroupedGemm {
        let g = GroupedGemm {
            e: self.e,
            t: self.t,
            n: 2 * self.i,
            k: self.k,
            sa_fmt: self.fmt,
            expected_m: None,
        };
        match self.expected_m {
            Some(m) => g.with_expected_m(m),
            None => g,
        }
    }
    /// The SiLU-mul-quant stage: `(E, T, 2I) -> (E, T, I)`.
    pub fn silu(&self) -> SiluMulQuant {
        SiluMulQuant {
            e: self.e,
            t: self.t,
            h: self.i,
            fmt: self.fmt,
            numerics: self.numerics,
        }
    }
    /// GEMM2: `(E, T, I) x (E, K, I) -> (E, T, K)`.
    pub fn gemm2(&self) -> GroupedGemm {
        let g = GroupedGemm {
            e: self.e,
            t: self.t,
            n: self.k,
            k: self.i,
            sa_fmt: self.fmt,
            expected_m: None,
        };
        match self.expected_m {
            Some(m) => g.with_expected_m(m),
            None => g,
        }
    }
    /// vLLM's workspace shapes.
    pub fn workspace_shapes(&self) -> WorkspaceShapes {
        WorkspaceShapes {
            ws13: [self.e, self.t, self.k.max(2 * self.i)],
            ws2: [self.e, self.t, self.i],
            output: [self.e, self.t, self.k],
        }
    }
    /// `(E, cols, T)` scales of `a1q`.
    pub fn a1s_shape(&self) -> [usize; 3] {
        self.gemm1().sa_shape()
    }
    /// Validates the inputs, naming `a1q`, `a1s`, `w1`, `w1s`, `w2`, `w2s` or `counts`.
    pub fn check_inputs(&self, inputs: &ExpertsInputs<'_>) -> Result<()> {
        let g1 = self.gemm1();
        let g2 = self.gemm2();
        check_len("a1q", inputs.a1q.len(), &[self.e, self.t, self.k])?;
        let sh = g1.sa_shape();
        inputs.a1s.check("a1s", self.fmt, sh.iter().product(), &sh)?;
        check_len("w1", inputs.w1.q.len(), &[self.e, 2 * self.i, self.k])?;
        check_len("w1s", inputs.w1.s.len(), &g1.sb_shape())?;
        check_len("w2", inputs.w2.q.len(), &[self.e, self.k, self.i])?;
        check_len("w2s", inputs.w2.s.len(), &g2.sb_shape())?;
        check_counts(inputs.counts, self.e, self.t)
    }
    /// Validates the inputs and the output `out (E, T, K)`.
    pub fn check(&self, inputs: &ExpertsInputs<'_>, out: &[bf16]) -> Result<()> {
        self.check_inputs(inputs)?;
        check_len("out", out.len(), &[self.e, self.t, self.k])
    }
}

/// Dispatch: route `x (M, K)` by `topk_ids (M, k)` into `(E, T, K)` and quantize (SPEC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepare {
    m: usize,
    k: usize,
    topk: usize,
    e: usize,
    t: usize,
    fmt: ScaleFormat,
}

impl Prepare {
    pub fn new(m: usize, k: usize, topk: usize, experts: usize, capacity: usize, fmt: ScaleFormat) -> Result<Self> {
        multiple_of_128("x", "K", k)?;
        at_least("topk_ids", "topk", topk, 1)?;
        at_least("a1q", "E", experts, 1)?;
        at_least("a1q", "T", capacity, 1)?;
        product("x", &[m, k])?;
        product("topk_ids", &[m, topk])?;
        product("a1q", &[experts, capacity, k])?;
        Ok(Self {
            m,
            k,
            topk,
            e: experts,
            t: capacity,
            fmt,
        })
    }
    pub fn tokens(&self) -> usize {
        self.m
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn topk(&self) -> usize {
        self.topk
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// The batched quantization this dispatch performs.
    pub fn quant(&self) -> BatchedTokenGroupQuant {
        BatchedTokenGroupQuant {
            e: self.e,
            t: self.t,
            k: self.k,
            fmt: self.fmt,
        }
    }
    /// Validates the buffers and routes the tokens.
    pub fn check(&self, x: &[bf16], topk_ids: &[i32], a1q: &[u8], a1s: &ScalesMut<'_>, counts: &[i32]) -> Result<Routing> {
        // Every buffer first: routing allocates O(E), and a caller cannot pass buffers for an
        // absurd E.
        check_len("x", x.len(), &[self.m, self.k])?;
        check_len("topk_ids", topk_ids.len(), &[self.m, self.topk])?;
        check_len("a1q", a1q.len(), &[self.e, self.t, self.k])?;
        let sh = self.quant().scale_shape();
        a1s.check("a1s", self.fmt, sh.iter().product(), &sh)?;
        check_len("counts", counts.len(), &[self.e])?;
        Routing::new(topk_ids, self.m, self.topk, self.e, self.t)
    }
}

/// Combine: weight each expert output by the router and sum per token (SPEC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finalize {
    m: usize,
    k: usize,
    topk: usize,
    e: usize,
    t: usize,
}

impl Finalize {
    pub fn new(m: usize, k: usize, topk: usize, experts: usize, capacity: usize) -> Result<Self> {
        at_least("expert_out", "K", k, 1)?;
        at_least("topk_ids", "topk", topk, 1)?;
        at_least("expert_out", "E", experts, 1)?;
        at_least("expert_out", "T", capacity, 1)?;
        product("out", &[m, k])?;
        product("topk_ids", &[m, topk])?;
        product("expert_out", &[experts, capacity, k])?;
        Ok(Self {
            m,
            k,
            topk,
            e: experts,
            t: capacity,
        })
    }
    pub fn tokens(&self) -> usize {
        self.m
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn topk(&self) -> usize {
        self.topk
    }
    pub fn experts(&self) -> usize {
        self.e
    }
    pub fn capacity(&self) -> usize {
        self.t
    }
    /// Validates the buffers and routes the tokens.
    pub fn check(&self, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &[bf16]) -> Result<Routing> {
        check_len("expert_out", expert_out.len(), &[self.e, self.t, self.k])?;
        check_len("topk_ids", topk_ids.len(), &[self.m, self.topk])?;
        check_len("topk_weights", topk_weights.len(), &[self.m, self.topk])?;
        check_len("out", out.len(), &[self.m, self.k])?;
        Routing::new(topk_ids, self.m, self.topk, self.e, self.t)
    }
}

/// Where each token goes: the validated result of `topk_ids` (SPEC §5.5).
///
/// Expert `e` receives, in ascending token order, every token `m` with `e` in `topk_ids[m]`,
/// once per expert however often it is listed; `-1` means "not routed".
/// Memory is `O(E + M·topk)`; the `O(E)` tables are reserved fallibly, so an absurd `E` is a
/// [`ProblemError::TooLarge`], never an allocation abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    topk: usize,
    /// Live rows per expert.
    counts: Vec<i32>,
    /// For each `(m, j)`: the row of token `m` in expert `topk_ids[m, j]`, or -1 if not routed.
    rows: Vec<i32>,
    /// The tokens of every expert, ascending, expert after expert.
    order: Vec<u32>,
    /// `order[offsets[e]..offsets[e + 1]]` are the tokens of expert `e`.
    offsets: Vec<usize>,
}

fn table<T: Clone>(len: usize, fill: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| ProblemError::TooLarge {
        tensor: "topk_ids",
        elements: len as u128,
    })?;
    v.resize(len, fill);
    Ok(v)
}

/// How many tokens list `id` in at least one of their slots (for the overflow error).
fn tokens_listing(topk_ids: &[i32], topk: usize, id: i32) -> usize {
    topk_ids.chunks_exact(topk).filter(|ids| ids.contains(&id)).count()
}

impl Routing {
    /// Routes `topk_ids (m, topk)`; ids outside `[-1, E)` and experts receiving more than `T`
    /// tokens are errors.
    ///
    /// Linear in `M·topk + E`: a token listed twice for one expert is recognised in O(1) by
    /// remembering, per expert, the last token counted for it (tokens are visited in ascending
    /// order, so that token's row is the expert's newest one).
    pub fn new(topk_ids: &[i32], m: usize, topk: usize, experts: usize, capacity: usize) -> Result<Self> {
        check_len("topk_ids", topk_ids.len(), &[m, topk])?;
        // With no slots there is nothing to route, but `m` could be anything: refuse it rather
        // than loop over `m` empty rows (found by fuzzing).
        at_least("topk_ids", "topk", topk, 1)?;
        // Counts, rows and token numbers are stored as i32/u32.
        if m > i32::MAX as usize {
            return Err(ProblemError::TooLarge {
                tensor: "topk_ids",
                elements: topk_ids.len() as u128,
            });
        }
        let mut counts: Vec<i32> = table(experts, 0)?;
        // `last[e]`: the last token counted for expert `e` (`usize::MAX`: none yet).
        let mut last: Vec<usize> = table(experts, usize::MAX)?;
        let mut rows = vec![-1i32; topk_ids.len()];
        for (tok, (ids, slot_rows)) in topk_ids.chunks_exact(topk).zip(rows.chunks_exact_mut(topk)).enumerate() {
            for (j, (&id, row)) in ids.iter().zip(slot_rows.iter_mut()).enumerate() {
                if id < -1 || id as i64 >= experts as i64 {
                    return Err(ProblemError::TopkId {
                        token: tok,
                        slot: j,
                        id: id as i64,
                        experts,
                    });
                }
                if id == -1 {
                    continue;
                }
                let e = id as usize;
                let c = &mut counts[e];
                if last[e] != tok {
                    // The first slot of this token for expert `e`: a new row.
                    if *c as usize == capacity {
                        return Err(ProblemError::Overflow {
                            expert: e,
                            count: tokens_listing(topk_ids, topk, id),
                            capacity,
                        });
                    }
                    last[e] = tok;
                    *c += 1;
                }
                // A token listed twice for one expert takes one row: the expert's newest.
                *row = *c - 1;
            }
        }
        let mut offsets: Vec<usize> = table(experts + 1, 0)?;
        for e in 0..experts {
            offsets[e + 1] = offsets[e] + counts[e] as usize;
        }
        let mut order = vec![0u32; offsets[experts]];
        for (i, (&id, &row)) in topk_ids.iter().zip(&rows).enumerate() {
            // Repeated slots of one token write the same token to the same place.
            if id >= 0 {
                order[offsets[id as usize] + row as usize] = (i / topk) as u32;
            }
        }
        Ok(Self {
            topk,
            counts,
            rows,
            order,
            offsets,
        })
    }
    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.counts.len()
    }
    /// Live rows per expert.
    pub fn counts(&self) -> &[i32] {
        &self.counts
    }
    /// Number of tokens `M`.
    pub fn tokens_len(&self) -> usize {
        self.rows.len() / self.topk
    }
    /// Slots per token (`topk`).
    pub fn topk(&self) -> usize {
        self.topk
    }
    /// The tokens of expert `e`, ascending.
    ///
    /// # Panics
    /// If `e >= self.experts()`, like indexing a slice out of bounds.
    pub fn tokens(&self, e: usize) -> &[u32] {
        assert!(e < self.experts(), "Routing::tokens: expert {e} is outside [0, {})", self.experts());
        &self.order[self.offsets[e]..self.offsets[e + 1]]
    }
    /// The row of token `m` in the expert of its slot `j`, or `None` if the slot is `-1`.
    ///
    /// # Panics
    /// If `m >= self.tokens_len()` or `j >= self.topk()`, like indexing a slice out of bounds
    /// (an unchecked `j` past `topk` would silently read the next token's slot).
    pub fn row(&self, m: usize, j: usize) -> Option<usize> {
        assert!(
            m < self.tokens_len() && j < self.topk,
            "Routing::row: slot ({m}, {j}) is outside ({}, {})",
            self.tokens_len(),
            self.topk
        );
        let r = self.rows[m * self.topk + j];
        (r >= 0).then_some(r as usize)
    }
    /// The per-slot rows, `(M, topk)` i32, -1 where not routed.
    pub fn rows(&self) -> &[i32] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_not_multiple_of_128_names_tensor_and_dim() {
        let e = TokenGroupQuant::new(4, 130, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap_err();
        assert_eq!(
            e,
            ProblemError::NotMultiple {
                tensor: "x",
                dim: "K",
                got: 130,
                multiple: 128
            }
        );
        assert!(e.to_string().contains("`x`") && e.to_string().contains("`K`"));
    }

    #[test]
    fn counts_outside_range_are_rejected() {
        assert_eq!(
            check_counts(&[0, 5, 3], 3, 4),
            Err(ProblemError::Count {
                expert: 1,
                count: 5,
                capacity: 4
            })
        );
        assert_eq!(
            check_counts(&[-1], 1, 4),
            Err(ProblemError::Count {
                expert: 0,
                count: -1,
                capacity: 4
            })
        );
        assert!(matches!(
            check_counts(&[0, 1], 3, 4),
            Err(ProblemError::Len { tensor: "counts", .. })
        ));
        assert!(check_counts(&[0, 4, 2], 3, 4).is_ok());
    }

    #[test]
    fn routing_dedups_keeps_token_order_and_rejects_overflow_and_bad_ids() {
        // 3 tokens, top-2, 2 experts.
        let ids = [1, 0, 1, 1, -1, 0];
        let r = Routing::new(&ids, 3, 2, 2, 3).unwrap();
        assert_eq!(r.counts(), &[2, 2]);
        assert_eq!(r.tokens(0), &[0, 2]);
        assert_eq!(r.tokens(1), &[0, 1]);
        assert_eq!(r.rows(), &[0, 0, 1, 1, -1, 1]);
        // The first expert to overflow, scanning tokens in order, with its full count.
        assert_eq!(
            Routing::new(&ids, 3, 2, 2, 1),
            Err(ProblemError::Overflow {
                expert: 1,
                count: 2,
                capacity: 1
            })
        );
        assert_eq!(
            Routing::new(&[0, 0, 0, -1, 0, 1], 3, 2, 2, 2),
            Err(ProblemError::Overflow {
                expert: 0,
                count: 3,
                capacity: 2
            })
        );
        // An absurd number of experts is an error, not an allocation abort.
        assert!(matches!(
            Routing::new(&[], 0, 1, usize::MAX / 2, 1),
            Err(ProblemError::TooLarge { .. })
        ));
        assert_eq!(
            Routing::new(&[0, 2], 1, 2, 2, 4),
            Err(ProblemError::TopkId {
                token: 0,
                slot: 1,
                id: 2,
                experts: 2
            })
        );
        assert_eq!(
            Routing::new(&[-2, 0], 1, 2, 2, 4),
            Err(ProblemError::TopkId {
                token: 0,
                slot: 0,
                id: -2,
                experts: 2
            })
        );
    }

    /// Routing is linear in `M·topk`: 4,194,304 slots route in well under a second.
    ///
    /// The 5 s limit is a complexity guard only, generous for the test profile (opt-level 2)
    /// and for a loaded machine; the old quadratic duplicate scan needed hours for the single
    /// token with 4,194,304 distinct ids.
    #[test]
    fn routing_four_million_slots_is_linear() {
        let n = 1usize << 22;
        let start = std::time::Instant::now();
        // One token listing every expert once.
        let ids: Vec<i32> = (0..n as i32).collect();
        let r = Routing::new(&ids, 1, n, n, 1).unwrap();
        assert!(r.counts().iter().all(|&c| c == 1));
        assert_eq!(r.tokens(n - 1), &[0]);
        assert_eq!(r.row(0, n - 1), Some(0));
        // Many tokens, top-8 of 256 experts, with a repeated id in every token.
        let (m, k, e) = (n / 8, 8, 256);
        let ids: Vec<i32> = (0..m * k)
            .map(|i| {
                let (tok, j) = (i / k, i % k);
                if j == k - 1 {
                    ((tok * 7) % e) as i32
                } else {
                    ((tok * 7 + j * 31) % e) as i32
                }
            })
            .collect();
        let r = Routing::new(&ids, m, k, e, m).unwrap();
        assert_eq!(r.counts().iter().map(|&c| c as usize).sum::<usize>(), m * (k - 1));
        assert_eq!(r.row(5, k - 1), r.row(5, 0));
        // One expert overflowing at the very end reports its full count.
        let err = Routing::new(&ids, m, k, e, 1).unwrap_err();
        assert!(matches!(err, ProblemError::Overflow { capacity: 1, .. }), "{err}");
        let elapsed = start.elapsed();
        assert!(elapsed.as_secs_f64() < 5.0, "routing 4M slots took {elapsed:?}");
    }

    #[test]
    fn routing_rows_follow_first_slot_for_repeated_ids() {
        // Token 0 lists expert 1 three times around expert 0; token 1 lists expert 1 twice.
        let ids = [1, 0, 1, 1, 2, 1, -1, 1];
        let r = Routing::new(&ids, 2, 4, 3, 2).unwrap();
        assert_eq!(r.counts(), &[1, 2, 1]);
        assert_eq!(r.rows(), &[0, 0, 0, 0, 0, 1, -1, 1]);
        assert_eq!(r.tokens(1), &[0, 1]);
        assert_eq!(
            Routing::new(&ids, 2, 4, 3, 1),
            Err(ProblemError::Overflow {
                expert: 1,
                count: 2,
                capacity: 1
            })
        );
    }

    #[test]
    #[should_panic(expected = "Routing::row: slot (0, 2) is outside (2, 2)")]
    fn routing_row_past_topk_panics_instead_of_reading_the_next_token() {
        let r = Routing::new(&[0, 1, 1, -1], 2, 2, 2, 2).unwrap();
        let _ = r.row(0, 2);
    }

    #[test]
    #[should_panic(expected = "Routing::tokens: expert 2 is outside [0, 2)")]
    fn routing_tokens_of_an_unknown_expert_panics_with_a_message() {
        let r = Routing::new(&[0, 1, 1, -1], 2, 2, 2, 2).unwrap();
        let _ = r.tokens(2);
    }

    #[test]
    fn huge_shapes_are_rejected_not_overflowed() {
        let e = GroupedGemm::new(usize::MAX / 2, 1 << 20, 1 << 20, 1 << 20, ScaleFormat::F32).unwrap_err();
        assert!(matches!(e, ProblemError::TooLarge { .. }));
    }

    #[test]
    fn experts_workspace_shapes_match_vllm() {
        let p = Experts::new(8, 64, 7168, 2048, ScaleFormat::F32, Numerics::VllmBf16).unwrap();
        let w = p.workspace_shapes();
        assert_eq!(w.ws13, [8, 64, 7168]);
        assert_eq!(w.ws2, [8, 64, 2048]);
        assert_eq!(w.output, [8, 64, 7168]);
    }
}
