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
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Row length `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Groups of 128 per row, `G = K / 128`.
    pub fn groups(&self) -> usize {
        self.k / GROUP
    }
    /// The storage of the scales.
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// The layout of the scales.
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
    /// `E` and `T` at least 1, `K` a positive multiple of 128; scales in `fmt`.
    pub fn new(e: usize, t: usize, k: usize, fmt: ScaleFormat) -> Result<Self> {
        at_least("x", "E", e, 1)?;
        at_least("x", "T", t, 1)?;
        multiple_of_128("x", "K", k)?;
        product("x", &[e, t, k])?;
        Ok(Self { e, t, k, fmt })
    }
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.e
    }
    /// Rows per expert `T`.
    pub fn capacity(&self) -> usize {
        self.t
    }
    /// Row length `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Groups of 128 per row, `G = K / 128`.
    pub fn groups(&self) -> usize {
        self.k / GROUP
    }
    /// The storage of the scales.
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// `(E, cols, T)` with `cols = G` or `ceil(G/4)`.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.fmt.columns(self.groups()), self.t]
    }
    /// Validates the buffers `x (E, T, K)`, `q (E, T, K)`, `s` and `counts`.
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
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.e
    }
    /// Rows `R` of each expert's matrix.
    pub fn rows(&self) -> usize {
        self.r
    }
    /// Columns `C` of each expert's matrix.
    pub fn cols(&self) -> usize {
        self.c
    }
    /// Whether each scale is ceiled to a power of two.
    pub fn pow2(&self) -> bool {
        self.pow2
    }
    /// `(E, ceil(R/128), ceil(C/128))`.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.r.div_ceil(GROUP), self.c.div_ceil(GROUP)]
    }
    /// Validates the buffers `w (E, R, C)`, `q (E, R, C)` and `s`.
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
    /// `E` and `T` at least 1, `H` a positive multiple of 128; scales in `fmt`, arithmetic `numerics`.
    pub fn new(e: usize, t: usize, h: usize, fmt: ScaleFormat, numerics: Numerics) -> Result<Self> {
        at_least("y", "E", e, 1)?;
        at_least("y", "T", t, 1)?;
        multiple_of_128("q", "H", h)?;
        product("y", &[e, t, 2, h])?;
        Ok(Self { e, t, h, fmt, numerics })
    }
    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.e
    }
    /// Rows per expert `T`.
    pub fn capacity(&self) -> usize {
        self.t
    }
    /// Output row length `H` (input rows hold `2H`: gate, then up).
    pub fn h(&self) -> usize {
        self.h
    }
    /// Groups of 128 per output row, `H / 128`.
    pub fn groups(&self) -> usize {
        self.h / GROUP
    }
    /// The storage of the scales.
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// The arithmetic (SPEC §5.2).
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }
    /// `(E, cols, T)`, MN-major.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.e, self.fmt.columns(self.groups()), self.t]
    }
    /// Validates the buffers `y (E, T, 2H)`, `q (E, T, H)`, `s` and `counts`.
    pub fn check(&self, y: &[bf16], counts: &[i32], q: &[u8], s: &ScalesMut<'_>) -> Result<()> {
        check_len("y", y.len(), &[self.e, self.t, 2 * self.h])?;
        check_counts(counts, self.e, self.t)?;
        check_len("q", q.len(), &[self.e, self.t, self.h])?;
        let sh = self.scale_shape();
        s.check("s", self.fmt, sh.iter().product(), &sh)
    }
}
