//! The quantization problems: token-group (plain and batched), block, and SiLU-mul-quant.

use half::bf16;

use super::checks::{at_least, check_counts, check_len, multiple_of_128, product, Result};
use crate::scale::{ScaleFormat, ScaleLayout, ScalesMut, GROUP};
use crate::Numerics;

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

/// Token-group quantization of a `(rows, K)` matrix (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGroupQuant {
    rows: usize,
    pub(super) k: usize,
    pub(super) fmt: ScaleFormat,
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
    pub(super) e: usize,
    pub(super) t: usize,
    pub(super) k: usize,
    pub(super) fmt: ScaleFormat,
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
    pub(super) e: usize,
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
    pub(super) e: usize,
    pub(super) t: usize,
    pub(super) h: usize,
    pub(super) fmt: ScaleFormat,
    pub(super) numerics: Numerics,
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
