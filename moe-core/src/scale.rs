//! Activation scale formats and layouts (SPEC §3), and conversions between them.

use crate::error::ProblemError;
use crate::format::{ue8m0_from_pow2, ue8m0_to_f32};

/// Group size along the reduction dimension, everywhere.
pub const GROUP: usize = 128;

/// How activation scales are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScaleFormat {
    /// f32 scales, `amax / 448`.
    #[default]
    F32,
    /// f32 scales that are exact powers of two (the ceiled scale), stored as f32.
    F32CeilUe8m0,
    /// Four UE8M0 exponent bytes per i32 word (byte `k` of word `p` holds group `4p + k`).
    Ue8m0Packed,
}

impl ScaleFormat {
    /// All formats, for tests and command lines.
    pub const ALL: [ScaleFormat; 3] = [ScaleFormat::F32, ScaleFormat::F32CeilUe8m0, ScaleFormat::Ue8m0Packed];

    /// Whether the scale is rounded up to a power of two.
    pub fn is_ceil(self) -> bool {
        !matches!(self, ScaleFormat::F32)
    }

    /// Whether the scales are stored as packed i32 words.
    pub fn is_packed(self) -> bool {
        matches!(self, ScaleFormat::Ue8m0Packed)
    }

    /// The command-line name (`f32`, `f32-ceil-ue8m0`, `ue8m0-packed`).
    pub fn name(self) -> &'static str {
        match self {
            ScaleFormat::F32 => "f32",
            ScaleFormat::F32CeilUe8m0 => "f32-ceil-ue8m0",
            ScaleFormat::Ue8m0Packed => "ue8m0-packed",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Number of stored scale columns for `groups` groups: `groups`, or `ceil(groups/4)` packed words.
    pub fn columns(self, groups: usize) -> usize {
        if self.is_packed() {
            groups.div_ceil(4)
        } else {
            groups
        }
    }
}

/// The arithmetic of SiLU-mul-quant (SPEC §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Numerics {
    /// vLLM's CUDA kernel: bf16 arithmetic after the f32 SiLU.
    #[default]
    VllmBf16,
    /// SGLang / DeepSeek reference arithmetic in f32.
    F32,
}

impl Numerics {
    /// Both numerics.
    pub const ALL: [Numerics; 2] = [Numerics::VllmBf16, Numerics::F32];

    /// The command-line name (`vllm-bf16`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            Numerics::VllmBf16 => "vllm-bf16",
            Numerics::F32 => "f32",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// `Display` as the command-line name, for the option enums.
macro_rules! display_as_name {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}

display_as_name!(ScaleFormat, Numerics);

/// Physical layout of a `(rows, columns)` scale matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScaleLayout {
    /// `(rows, columns)`, the column index contiguous.
    #[default]
    RowMajor,
    /// MN-major (token-contiguous): element `(row, col)` at `col·rows + row`.
    MnMajor,
}

impl ScaleLayout {
    /// Index of `(row, col)` in a `(rows, cols)` matrix of this layout.
    #[inline]
    pub fn index(self, rows: usize, cols: usize, row: usize, col: usize) -> usize {
        match self {
            ScaleLayout::RowMajor => row * cols + col,
            ScaleLayout::MnMajor => col * rows + row,
        }
    }
}

/// Where group `g` lives in packed UE8M0 storage: word column `g / 4`, byte `g % 4` (SPEC §3).
#[inline]
pub fn ue8m0_word_slot(g: usize) -> (usize, usize) {
    (g / 4, g % 4)
}

/// Byte `k` (little-endian, `0..4`) of a packed UE8M0 word: the code of group `4p + k` of word `p`.
///
/// # Panics
/// If `k >= 4`.
#[inline]
pub fn ue8m0_word_get(word: i32, k: usize) -> u8 {
    assert!(k < 4, "ue8m0_word_get: byte {k} of a 4-byte word");
    (word as u32 >> (8 * k)) as u8
}

/// `word` with byte `k` (little-endian, `0..4`) replaced by `code`; the other bytes are kept.
///
/// Writers start from a zero word, so the bytes of groups past the last one stay 0.
///
/// # Panics
/// If `k >= 4`.
#[inline]
pub fn ue8m0_word_set(word: i32, k: usize, code: u8) -> i32 {
    assert!(k < 4, "ue8m0_word_set: byte {k} of a 4-byte word");
    let shift = 8 * k;
    ((word as u32 & !(0xFF << shift)) | ((code as u32) << shift)) as i32
}

/// Read-only activation scales: f32 values or packed UE8M0 words.
#[derive(Debug, Clone, Copy)]
pub enum Scales<'a> {
    /// f32 scales (`F32` or `F32CeilUe8m0`).
    F32(&'a [f32]),
    /// Packed UE8M0 words (`Ue8m0Packed`).
    Packed(&'a [i32]),
}

/// Writable activation scales.
#[derive(Debug)]
pub enum ScalesMut<'a> {
    /// f32 scales (`F32` or `F32CeilUe8m0`).
    F32(&'a mut [f32]),
    /// Packed UE8M0 words (`Ue8m0Packed`).
    Packed(&'a mut [i32]),
}

/// Owned activation scales.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleBuf {
    /// f32 scales (`F32` or `F32CeilUe8m0`).
    F32(Vec<f32>),
    /// Packed UE8M0 words (`Ue8m0Packed`).
    Packed(Vec<i32>),
}

fn kind_name(packed: bool) -> &'static str {
    if packed {
        "packed ue8m0 i32 words"
    } else {
        "f32"
    }
}

impl<'a> Scales<'a> {
    /// Number of stored elements (f32 values or i32 words).
    pub fn len(&self) -> usize {
        match self {
            Scales::F32(s) => s.len(),
            Scales::Packed(s) => s.len(),
        }
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether these are packed words.
    pub fn is_packed(&self) -> bool {
        matches!(self, Scales::Packed(_))
    }

    /// Checks the kind against `fmt` and the length against `expected`.
    pub fn check(&self, tensor: &'static str, fmt: ScaleFormat, expected: usize, shape: &[usize]) -> Result<(), ProblemError> {
        check_kind_len(tensor, fmt, self.is_packed(), self.len(), expected, shape)
    }

    /// The scale of group `g` of logical row `row`, in an MN-major `(rows, groups)` matrix (of
    /// `ceil(groups/4)` words when packed), decoded to f32.
    #[inline]
    pub fn get_mn(&self, rows: usize, row: usize, g: usize) -> f32 {
        match self {
            Scales::F32(s) => s[g * rows + row],
            Scales::Packed(w) => {
                let (col, k) = ue8m0_word_slot(g);
                ue8m0_to_f32(ue8m0_word_get(w[col * rows + row], k))
            }
        }
    }

    /// The scales of expert `e` when every expert holds `per_expert` stored elements
    /// (`cols · T` for the MN-major `(E, cols, T)` activation scales).
    ///
    /// # Panics
    /// If expert `e` lies past the end of the buffer (a validated problem never asks for one).
    #[inline]
    pub fn expert(&self, e: usize, per_expert: usize) -> Scales<'a> {
        match *self {
            Scales::F32(s) => Scales::F32(&s[e * per_expert..(e + 1) * per_expert]),
            Scales::Packed(s) => Scales::Packed(&s[e * per_expert..(e + 1) * per_expert]),
        }
    }
}

impl<'a> ScalesMut<'a> {
    /// Number of stored elements (f32 values or i32 words).
    pub fn len(&self) -> usize {
        self.as_scales().len()
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether these are packed words.
    pub fn is_packed(&self) -> bool {
        self.as_scales().is_packed()
    }

    /// Checks the kind against `fmt` and the length against `expected`.
    pub fn check(&self, tensor: &'static str, fmt: ScaleFormat, expected: usize, shape: &[usize]) -> Result<(), ProblemError> {
        self.as_scales().check(tensor, fmt, expected, shape)
    }

    /// A shorter-lived mutable view.
    pub fn reborrow(&mut self) -> ScalesMut<'_> {
        match self {
            ScalesMut::F32(s) => ScalesMut::F32(s),
            ScalesMut::Packed(s) => ScalesMut::Packed(s),
        }
    }

    /// A read-only view.
    pub fn as_scales(&self) -> Scales<'_> {
        match self {
            ScalesMut::F32(s) => Scales::F32(s),
            ScalesMut::Packed(s) => Scales::Packed(s),
        }
    }

    /// The writable scales of expert `e` when every expert holds `per_expert` stored elements
    /// (`cols · T` for the MN-major `(E, cols, T)` activation scales).
    ///
    /// # Panics
    /// If expert `e` lies past the end of the buffer (a validated problem never asks for one).
    #[inline]
    pub fn expert_mut(&mut self, e: usize, per_expert: usize) -> ScalesMut<'_> {
        match self {
            ScalesMut::F32(s) => ScalesMut::F32(&mut s[e * per_expert..(e + 1) * per_expert]),
            ScalesMut::Packed(s) => ScalesMut::Packed(&mut s[e * per_expert..(e + 1) * per_expert]),
        }
    }

    /// The writable scales of each expert in turn, when every expert holds `per_expert` stored
    /// elements (`cols · T` for the MN-major `(E, cols, T)` activation scales).
    ///
    /// # Panics
    /// If `per_expert` is 0 (a validated problem never asks for it).
    pub fn into_experts(self, per_expert: usize) -> impl Iterator<Item = ScalesMut<'a>> {
        let (f32s, words): (&mut [f32], &mut [i32]) = match self {
            ScalesMut::F32(s) => (s, Default::default()),
            ScalesMut::Packed(w) => (Default::default(), w),
        };
        let f32s = f32s.chunks_mut(per_expert).map(ScalesMut::F32);
        f32s.chain(words.chunks_mut(per_expert).map(ScalesMut::Packed))
    }

    /// Stores the scale `sc` of group `g` of row `row` of a `(rows, groups)` matrix in `layout`:
    /// the f32 value, or its UE8M0 code (`ue8m0_from_pow2`) in byte `g % 4` of its word.
    ///
    /// Packed bytes past the last group are not touched: the caller zeroes the words first.
    #[inline]
    pub fn store(&mut self, layout: ScaleLayout, rows: usize, groups: usize, row: usize, g: usize, sc: f32) {
        match self {
            ScalesMut::F32(v) => v[layout.index(rows, groups, row, g)] = sc,
            ScalesMut::Packed(w) => {
                let (col, k) = ue8m0_word_slot(g);
                let i = layout.index(rows, groups.div_ceil(4), row, col);
                w[i] = ue8m0_word_set(w[i], k, ue8m0_from_pow2(sc));
            }
        }
    }
}

impl ScaleBuf {
    /// Zero-filled scales of `len` elements in the storage kind of `fmt`.
    pub fn zeros(fmt: ScaleFormat, len: usize) -> Self {
        if fmt.is_packed() {
            ScaleBuf::Packed(vec![0; len])
        } else {
            ScaleBuf::F32(vec![0.0; len])
        }
    }

    /// A read-only view.
    pub fn view(&self) -> Scales<'_> {
        match self {
            ScaleBuf::F32(s) => Scales::F32(s),
            ScaleBuf::Packed(s) => Scales::Packed(s),
        }
    }

    /// A mutable view.
    pub fn view_mut(&mut self) -> ScalesMut<'_> {
        match self {
            ScaleBuf::F32(s) => ScalesMut::F32(s),
            ScaleBuf::Packed(s) => ScalesMut::Packed(s),
        }
    }

    /// Number of stored elements.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether no element is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored elements as raw 32-bit words (f32 bits or i32 words), for bit comparisons.
    pub fn to_bits(&self) -> Vec<u32> {
        match self {
            ScaleBuf::F32(s) => s.iter().map(|v| v.to_bits()).collect(),
            ScaleBuf::Packed(s) => s.iter().map(|&v| v as u32).collect(),
        }
    }
}

fn check_kind_len(
    tensor: &'static str,
    fmt: ScaleFormat,
    packed: bool,
    len: usize,
    expected: usize,
    shape: &[usize],
) -> Result<(), ProblemError> {
    if packed != fmt.is_packed() {
        return Err(ProblemError::ScaleKind {
            tensor,
            expected: kind_name(fmt.is_packed()),
            got: kind_name(packed),
        });
    }
    if len != expected {
        return Err(ProblemError::Len {
            tensor,
            shape: crate::error::ShapeDisplay(shape).to_string(),
            expected,
            got: len,
        });
    }
    Ok(())
}

/// Checks that `src` holds the `rows × cols` elements of a matrix: the product is checked
/// ([`ProblemError::TooLarge`] when it overflows), the length must equal it ([`ProblemError::Len`]).
fn check_matrix(tensor: &'static str, len: usize, rows: usize, cols: usize) -> Result<usize, ProblemError> {
    let n = rows.checked_mul(cols).ok_or(ProblemError::TooLarge {
        tensor,
        elements: rows as u128 * cols as u128,
    })?;
    crate::problem::check_len(tensor, len, &[rows, cols])?;
    Ok(n)
}

/// Transposes a `(rows, cols)` matrix between row-major and MN-major storage.
///
/// # Errors
/// [`ProblemError::Len`] naming `src` when `src.len() != rows · cols`, and
/// [`ProblemError::TooLarge`] when `rows · cols` overflows.
pub fn convert_layout<T: Copy>(src: &[T], rows: usize, cols: usize, from: ScaleLayout, to: ScaleLayout) -> Result<Vec<T>, ProblemError> {
    let n = check_matrix("src", src.len(), rows, cols)?;
    if from == to {
        return Ok(src.to_vec());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // Destination index i in `to`; find (row, col). `n > 0` here, so rows, cols >= 1.
        let (row, col) = match to {
            ScaleLayout::RowMajor => (i / cols, i % cols),
            ScaleLayout::MnMajor => (i % rows, i / rows),
        };
        out.push(src[from.index(rows, cols, row, col)]);
    }
    Ok(out)
}

/// Packs power-of-two f32 scales of a `(rows, groups)` matrix into UE8M0 words (`ceil(groups/4)`
/// per row), keeping the layout; bytes of groups `>= groups` in the last word are 0.
///
/// # Errors
/// [`ProblemError::Len`] naming `src` when `src.len() != rows · groups`, and
/// [`ProblemError::TooLarge`] when that product overflows.
pub fn pack_ue8m0(src: &[f32], rows: usize, groups: usize, layout: ScaleLayout) -> Result<Vec<i32>, ProblemError> {
    check_matrix("src", src.len(), rows, groups)?;
    let words = groups.div_ceil(4);
    let mut out = vec![0i32; rows * words];
    for row in 0..rows {
        for g in 0..groups {
            let (col, k) = ue8m0_word_slot(g);
            let w = &mut out[layout.index(rows, words, row, col)];
            *w = ue8m0_word_set(*w, k, ue8m0_from_pow2(src[layout.index(rows, groups, row, g)]));
        }
    }
    Ok(out)
}

/// Unpacks UE8M0 words of a `(rows, groups)` matrix to f32 scales, keeping the layout.
///
/// # Errors
/// [`ProblemError::Len`] naming `src` when `src.len() != rows · ceil(groups/4)`, and
/// [`ProblemError::TooLarge`] when `rows · groups` overflows.
pub fn unpack_ue8m0(src: &[i32], rows: usize, groups: usize, layout: ScaleLayout) -> Result<Vec<f32>, ProblemError> {
    let words = groups.div_ceil(4);
    check_matrix("src", src.len(), rows, words)?;
    let n = rows.checked_mul(groups).ok_or(ProblemError::TooLarge {
        tensor: "src",
        elements: rows as u128 * groups as u128,
    })?;
    let mut out = vec![0f32; n];
    for row in 0..rows {
        for g in 0..groups {
            let (col, k) = ue8m0_word_slot(g);
            out[layout.index(rows, groups, row, g)] = ue8m0_to_f32(ue8m0_word_get(src[layout.index(rows, words, row, col)], k));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let rows = 3;
        let cols = 5;
        let src: Vec<u32> = (0..15).collect();
        let mn = convert_layout(&src, rows, cols, ScaleLayout::RowMajor, ScaleLayout::MnMajor).unwrap();
        assert_eq!(mn[ScaleLayout::MnMajor.index(rows, cols, 2, 4)], src[2 * cols + 4]);
        assert_eq!(
            convert_layout(&mn, rows, cols, ScaleLayout::MnMajor, ScaleLayout::RowMajor).unwrap(),
            src
        );
    }

    #[test]
    fn packing_puts_group_4p_plus_k_in_byte_k_and_zeroes_the_tail() {
        let rows = 2;
        let groups = 5;
        let src: Vec<f32> = (0..10).map(|i| 2f32.powi(i - 3)).collect();
        for layout in [ScaleLayout::RowMajor, ScaleLayout::MnMajor] {
            let packed = pack_ue8m0(&src, rows, groups, layout).unwrap();
            assert_eq!(packed.len(), 4);
            let r1w1 = packed[layout.index(rows, 2, 1, 1)] as u32;
            let g4 = src[layout.index(rows, groups, 1, 4)];
            assert_eq!(r1w1 & 0xFF, ue8m0_from_pow2(g4) as u32);
            assert_eq!(r1w1 >> 8, 0, "bytes past the last group are zero");
            assert_eq!(unpack_ue8m0(&packed, rows, groups, layout).unwrap(), src);
        }
    }

    #[test]
    fn packed_scales_decode_through_get_mn() {
        let rows = 3;
        let groups = 6;
        let src: Vec<f32> = (0..18).map(|i| 2f32.powi(i % 7 - 2)).collect();
        let packed = pack_ue8m0(&src, rows, groups, ScaleLayout::MnMajor).unwrap();
        let view = Scales::Packed(&packed);
        for row in 0..rows {
            for g in 0..groups {
                assert_eq!(view.get_mn(rows, row, g), src[g * rows + row]);
            }
        }
    }

    #[test]
    fn conversions_reject_wrong_lengths_and_overflowing_shapes() {
        #[track_caller]
        fn is_len_error<T: std::fmt::Debug>(r: Result<T, ProblemError>, tensor: &str, expected: usize, got: usize) {
            match r {
                Err(ProblemError::Len {
                    tensor: t,
                    expected: e,
                    got: g,
                    ..
                }) => assert_eq!((t, e, g), (tensor, expected, got)),
                other => panic!("expected a length error, got {other:?}"),
            }
        }
        let rm = ScaleLayout::RowMajor;
        is_len_error(convert_layout(&[0u8; 5], 2, 3, rm, ScaleLayout::MnMajor), "src", 6, 5);
        is_len_error(convert_layout(&[0u8; 7], 2, 3, rm, rm), "src", 6, 7);
        is_len_error(pack_ue8m0(&[1.0; 9], 2, 5, rm), "src", 10, 9);
        is_len_error(unpack_ue8m0(&[0; 3], 2, 5, rm), "src", 4, 3);
        // A product that overflows is too large, even for a zero-sized element type.
        let unit = vec![(); usize::MAX];
        assert!(matches!(
            convert_layout(&unit, usize::MAX, 3, rm, ScaleLayout::MnMajor),
            Err(ProblemError::TooLarge { tensor: "src", .. })
        ));
        assert!(matches!(
            pack_ue8m0(&[], usize::MAX, 2, rm),
            Err(ProblemError::TooLarge { tensor: "src", .. })
        ));
        // Empty matrices convert to empty matrices.
        assert_eq!(convert_layout::<u8>(&[], 0, 3, rm, ScaleLayout::MnMajor), Ok(vec![]));
    }

    #[test]
    fn packed_word_codec_reads_and_replaces_one_byte() {
        let w = ue8m0_word_set(ue8m0_word_set(0, 0, 0x7F), 3, 0x81);
        assert_eq!(w as u32, 0x8100_007F);
        assert_eq!([0, 1, 2, 3].map(|k| ue8m0_word_get(w, k)), [0x7F, 0, 0, 0x81]);
        // Replacing, not ORing: a stale byte is overwritten.
        assert_eq!(ue8m0_word_get(ue8m0_word_set(w, 0, 0x01), 0), 0x01);
        assert_eq!(ue8m0_word_slot(9), (2, 1));
    }

    #[test]
    fn expert_views_select_one_experts_elements() {
        let f: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let Scales::F32(v) = Scales::F32(&f).expert(2, 4) else {
            panic!("kind")
        };
        assert_eq!(v, &[8.0, 9.0, 10.0, 11.0]);
        // Two experts of (3 rows, 6 groups) MN-major packed scales: 2 word columns × 3 rows each.
        let mut w = vec![0i32; 12];
        let mut sm = ScalesMut::Packed(&mut w);
        let mut e1 = sm.expert_mut(1, 6);
        // Group 5 of row 1 in a (3 rows, 6 groups) MN-major matrix: word column 1, byte 1.
        e1.store(ScaleLayout::MnMajor, 3, 6, 1, 5, 2.0);
        assert_eq!(e1.as_scales().get_mn(3, 1, 5), 2.0);
        let mut want = [0i32; 12];
        want[6 + 3 + 1] = 128 << 8;
        assert_eq!(w, want);
    }
}
