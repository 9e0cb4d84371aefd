//! Pieces shared by the naive and the fast paths: argument checks, routing for prepare, the
//! scale rules of one group, scale lookups and clearing of packed scale rows.

use half::bf16;
use moe_core::format::{ceil_pow2, round_bf16};
use moe_core::math::vllm_ceil_pow2_bf16;
use moe_core::{GemmInputs, GroupedGemm, MoeResult, Prepare, Routing, Scales, ScalesMut, E4M3_MAX};

/// `bf16(1e-10)` as f32, the floor of `amax` under `Numerics::VllmBf16` (SPEC §5.2).
const VLLM_EPS: f32 = bf16::from_f32_const(1e-10).to_f32_const();

/// `bf16(1/448)` as f32, the reciprocal of the E4M3 maximum under `Numerics::VllmBf16`.
const VLLM_INV448: f32 = bf16::from_f32_const(1.0 / 448.0).to_f32_const();

/// The scale of a block or group with largest magnitude `amax` (SPEC §4, §5.1): `amax / 448`,
/// ceiled to a power of two when `ceil`.
#[inline(always)]
pub(crate) fn scale_of(amax: f32, ceil: bool) -> f32 {
    let s = amax / E4M3_MAX;
    if ceil {
        ceil_pow2(s)
    } else {
        s
    }
}

/// The §5.1 scale of one group: `scale_of(max(1e-10, max |v|))`.
#[inline(always)]
pub(crate) fn group_scale(vals: &[f32], ceil: bool) -> f32 {
    let mut amax = 1e-10f32;
    for &v in vals {
        amax = amax.max(v.abs());
    }
    scale_of(amax, ceil)
}

/// The §5.2 `VllmBf16` scale of one group and the bf16 reciprocal the codes are computed with:
/// `bf16(max(bf16(1e-10), max |v|) · bf16(1/448))`, ceiled in bf16 when `ceil`.
#[inline(always)]
pub(crate) fn vllm_group_scale(vals: &[f32], ceil: bool) -> (f32, f32) {
    let mut amax = VLLM_EPS;
    for &v in vals {
        amax = amax.max(v.abs());
    }
    let mut sb = bf16::from_f32(amax * VLLM_INV448);
    if ceil {
        sb = vllm_ceil_pow2_bf16(sb);
    }
    let sc = sb.to_f32();
    (sc, round_bf16(1.0 / sc))
}

/// Zeroes the packed scale words of live rows `0..live` of one expert (`(cols, T)` MN-major), so
/// that bytes past the last group read 0 after the per-group stores (`ScalesMut::store` replaces
/// one byte of a word and keeps the others).
pub(crate) fn clear_packed_rows(s: &mut ScalesMut<'_>, t_cap: usize, cols: usize, live: usize) {
    if let ScalesMut::Packed(w) = s {
        for col in 0..cols {
            w[col * t_cap..col * t_cap + live].fill(0);
        }
    }
}

/// `sa[e, t, kb]` from MN-major `(E, cols, T)` activation scales, decoded.
#[inline]
pub(crate) fn sa_at(sa: &Scales<'_>, p: &GroupedGemm, e: usize, t: usize, kb: usize) -> f32 {
    let per_expert = p.scale_format().columns(p.k_blocks()) * p.capacity();
    sa.expert(e, per_expert).get_mn(p.capacity(), t, kb)
}

/// The checks of `grouped_gemm_with_bound`: the GEMM's, and the bound's length `(E, T, N)`.
pub(crate) fn check_gemm_with_bound(p: &GroupedGemm, inputs: &GemmInputs<'_>, d: &[bf16], bound: &[f64]) -> MoeResult<()> {
    p.check(inputs, d)?;
    moe_core::check_len("bound", bound.len(), &[p.experts(), p.capacity(), p.n()])?;
    Ok(())
}

/// The checks of `grouped_gemm_accumulators`: the GEMM's inputs, and `acc`'s length `(E, T, N)`.
pub(crate) fn check_gemm_accumulators(p: &GroupedGemm, inputs: &GemmInputs<'_>, acc: &[f32]) -> MoeResult<()> {
    p.check_inputs(inputs)?;
    moe_core::check_len("acc", acc.len(), &[p.experts(), p.capacity(), p.n()])?;
    Ok(())
}

/// The start of both prepare paths: validate every buffer, route the tokens, and write `counts`.
pub(crate) fn route_for_prepare(
    p: &Prepare,
    x: &[bf16],
    topk_ids: &[i32],
    a1q: &[u8],
    a1s: &ScalesMut<'_>,
    counts: &mut [i32],
) -> MoeResult<Routing> {
    let routing = p.check(x, topk_ids, a1q, a1s, counts)?;
    counts.copy_from_slice(routing.counts());
    Ok(routing)
}
