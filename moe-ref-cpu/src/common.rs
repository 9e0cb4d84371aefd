//! Pieces shared by the naive and the fast paths: where a scale is stored, and constants.

use half::bf16;
use moe_core::format::ue8m0_from_pow2;
use moe_core::{ScaleFormat, ScaleLayout, ScalesMut};

/// `(bf16(1e-10), bf16(1/448))` as f32, the constants of `Numerics::VllmBf16` (SPEC §5.2).
#[inline]
pub(crate) fn vllm_consts() -> (f32, f32) {
    (bf16::from_f32(1e-10).to_f32(), bf16::from_f32(1.0 / 448.0).to_f32())
}

/// Stores the scale of group `g` of row `r` of a `(rows, groups)` scale matrix with `layout`:
/// the f32 value, or its UE8M0 byte ORed into byte `g % 4` of the packed word (the caller zeroes
/// the words first).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn store_scale(
    s: &mut ScalesMut<'_>,
    fmt: ScaleFormat,
    layout: ScaleLayout,
    rows: usize,
    groups: usize,
    r: usize,
    g: usize,
    sc: f32,
) {
    match s {
        ScalesMut::F32(v) => v[layout.index(rows, groups, r, g)] = sc,
        ScalesMut::Packed(w) => {
            debug_assert!(fmt.is_packed());
            let words = groups.div_ceil(4);
            let i = layout.index(rows, words, r, g / 4);
            w[i] = (w[i] as u32 | ((ue8m0_from_pow2(sc) as u32) << (8 * (g % 4)))) as i32;
        }
    }
}

/// The scales of expert `e` when every expert holds `len` stored elements.
pub(crate) fn expert_scales<'s>(s: &'s mut ScalesMut<'_>, e: usize, len: usize) -> ScalesMut<'s> {
    match s {
        ScalesMut::F32(v) => ScalesMut::F32(&mut v[e * len..(e + 1) * len]),
        ScalesMut::Packed(v) => ScalesMut::Packed(&mut v[e * len..(e + 1) * len]),
    }
}
