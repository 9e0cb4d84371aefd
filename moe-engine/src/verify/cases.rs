//! Seeded random builders of the owned inputs of each operation ([`crate::ops`]'s `*Case`
//! types).
//!
//! The outputs are created (poisoned) by the checks in [`crate::verify::check`]. Inputs need not
//! be sensible: NaN, infinities and extreme scales are valid inputs with specified results
//! (SPEC §7).

use moe_core::{
    bf16, BatchedTokenGroupQuant, BlockQuant, ExpertsStage, Finalize, GroupedGemm, Numerics, Prepare, Route, RouterConfig, ScaleBuf,
    ScaleFormat, ScaleLayout, Scoring, SiluMulQuant, TokenGroupQuant, GROUP,
};

use crate::ops::*;
use crate::rng::Rng;

/// A scale format drawn uniformly.
pub fn any_format(r: &mut Rng) -> ScaleFormat {
    ScaleFormat::ALL[r.below(3)]
}

/// Activation values for `rows` rows of `k`: per row a power-of-two magnitude in `2^-20..2^20`
/// (wide dynamic range across rows), hard values when `hard`; some groups all zero.
pub fn activation_rows(r: &mut Rng, rows: usize, k: usize, hard: bool) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * k);
    for _ in 0..rows {
        let e = r.range(-20, 20) as i32;
        for _ in 0..k / GROUP {
            let zero = r.one_in(12);
            let anchor = r.below(GROUP);
            for i in 0..GROUP {
                v.push(if zero {
                    0.0
                } else if hard && i == anchor {
                    // Pin the group maximum so that the scale is exactly 2^e (ties land exactly).
                    448.0 * 2f32.powi(e)
                } else if hard {
                    r.hard(e)
                } else {
                    r.finite(3) * 2f32.powi(e)
                });
            }
        }
    }
    v
}

/// Power-of-two or general f32 activation scales in the storage of `fmt`, MN-major `(E, cols, T)`.
pub fn scales_for(r: &mut Rng, fmt: ScaleFormat, e: usize, t: usize, groups: usize, hard: bool) -> ScaleBuf {
    let cols = fmt.columns(groups);
    match fmt {
        ScaleFormat::Ue8m0Packed => ScaleBuf::Packed(
            (0..e * cols * t)
                .map(|_| {
                    let mut w = 0u32;
                    for k in 0..4 {
                        let code = if hard && r.one_in(16) {
                            r.below(256) as u32
                        } else {
                            r.range(110, 135) as u32
                        };
                        w |= code << (8 * k);
                    }
                    w as i32
                })
                .collect(),
        ),
        ScaleFormat::F32CeilUe8m0 => ScaleBuf::F32((0..e * cols * t).map(|_| 2f32.powi(r.range(-17, 8) as i32)).collect()),
        ScaleFormat::F32 => ScaleBuf::F32(
            (0..e * cols * t)
                .map(|_| {
                    if hard && r.one_in(16) {
                        r.hard(-8).abs()
                    } else {
                        (r.unit_signed().abs() + 0.01) * 2f32.powi(r.range(-17, 8) as i32)
                    }
                })
                .collect(),
        ),
    }
}

/// Weight scales `(E, N/128, K/128)`: positive, spread over several binades.
pub fn weight_scales(r: &mut Rng, n: usize, hard: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if hard && r.one_in(16) {
                r.hard(-8).abs()
            } else {
                (r.unit_signed().abs() + 0.01) * 2f32.powi(r.range(-12, 0) as i32)
            }
        })
        .collect()
}

impl TokenGroupQuantCase {
    /// A random case; `hard` mixes in the hard values.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (rows, k) = (r.below(7), GROUP * (1 + r.below(5)));
        let layout = if r.one_in(2) { ScaleLayout::RowMajor } else { ScaleLayout::MnMajor };
        let p = TokenGroupQuant::new(rows, k, any_format(r), layout).expect("valid shape");
        let bf = r.one_in(2);
        Self {
            p,
            x: ActBuf::from_f32(activation_rows(r, rows, k, hard), bf),
        }
    }
}

impl BatchedQuantCase {
    /// A random case.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (e, t, k) = (1 + r.below(3), 1 + r.below(6), GROUP * (1 + r.below(5)));
        let p = BatchedTokenGroupQuant::new(e, t, k, any_format(r)).expect("valid shape");
        let counts = (0..e).map(|_| r.count(t)).collect();
        let bf = r.one_in(2);
        Self {
            p,
            x: ActBuf::from_f32(activation_rows(r, e * t, k, hard), bf),
            counts,
        }
    }
}

impl BlockQuantCase {
    /// A random case with ragged edges.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (e, rows, cols) = (1 + r.below(2), 1 + r.below(300), 1 + r.below(300));
        let p = BlockQuant::new(e, rows, cols, r.one_in(2)).expect("valid shape");
        let scale = r.range(-20, 20) as i32;
        let v = (0..e * rows * cols)
            .map(|_| if hard { r.hard(scale) } else { r.finite(4) * 2f32.powi(scale) })
            .collect();
        let bf = r.one_in(2);
        Self {
            p,
            w: ActBuf::from_f32(v, bf),
        }
    }
}

impl SiluMulQuantCase {
    /// A random case.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (e, t, h) = (1 + r.below(3), 1 + r.below(6), GROUP * (1 + r.below(5)));
        let numerics = Numerics::ALL[r.below(2)];
        let p = SiluMulQuant::new(e, t, h, any_format(r), numerics).expect("valid shape");
        let counts = (0..e).map(|_| r.count(t)).collect();
        let y = (0..e * t * 2 * h)
            .map(|_| {
                bf16::from_f32(if hard && r.one_in(4) {
                    let k = r.range(-10, 6) as i32;
                    r.hard(k)
                } else {
                    r.finite(6) * 4.0
                })
            })
            .collect();
        Self { p, y, counts }
    }
}

impl GemmCase {
    /// A random case.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (e, t) = (1 + r.below(3), 1 + r.below(7));
        let (n, k) = (GROUP * (1 + r.below(2)), GROUP * (1 + r.below(3)));
        let fmt = any_format(r);
        let p = GroupedGemm::new(e, t, n, k, fmt).expect("valid shape");
        let (a, sa, b, sb) = gemm_data(r, &p, hard);
        let counts = (0..e).map(|_| r.count(t)).collect();
        Self { p, a, sa, b, sb, counts }
    }

    /// A case of shape `p` with the given `counts` and data drawn from `r` (hard values when
    /// `hard`).
    pub fn with_shape(r: &mut Rng, p: GroupedGemm, counts: Vec<i32>, hard: bool) -> Self {
        let (a, sa, b, sb) = gemm_data(r, &p, hard);
        Self { p, a, sa, b, sb, counts }
    }
}

/// Activations, their scales, weights and their scales of a GEMM of shape `p`.
fn gemm_data(r: &mut Rng, p: &GroupedGemm, hard: bool) -> (Vec<u8>, ScaleBuf, Vec<u8>, Vec<f32>) {
    let (e, t, n, k) = (p.experts(), p.capacity(), p.n(), p.k());
    let mut a = r.e4m3s(e * t * k);
    let mut b = r.e4m3s(e * n * k);
    if hard {
        for v in a.iter_mut().chain(b.iter_mut()) {
            if r.one_in(300) {
                *v = 0x7F | (r.below(2) as u8) << 7; // NaN
            }
        }
    }
    let sa = scales_for(r, p.scale_format(), e, t, p.k_blocks(), hard);
    let sb = weight_scales(r, e * (n / GROUP) * (k / GROUP), hard);
    (a, sa, b, sb)
}

impl ExpertsCase {
    /// A random case: random data (`hard == false`) has finite inputs and sensible scales.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (e, t) = (1 + r.below(2), 1 + r.below(6));
        let (k, i) = (GROUP * (1 + r.below(2)), GROUP * (1 + r.below(2)));
        let fmt = any_format(r);
        let p = ExpertsStage::new(e, t, k, i, fmt, Numerics::ALL[r.below(2)]).expect("valid shape");
        let mut c = Self::with_shape(r, p, Vec::new(), hard);
        c.counts = (0..e).map(|_| r.count(t)).collect();
        c
    }

    /// A case of shape `p` with the given `counts` and data drawn from `r` (random data unless
    /// `hard`).
    pub fn with_shape(r: &mut Rng, p: ExpertsStage, counts: Vec<i32>, hard: bool) -> Self {
        let (e, t, k, i, fmt) = (p.experts(), p.capacity(), p.k(), p.i(), p.scale_format());
        let a1q = r.e4m3s(e * t * k);
        let a1s = scales_for(r, fmt, e, t, k / GROUP, hard);
        let w1 = r.e4m3s(e * 2 * i * k);
        let w2 = r.e4m3s(e * k * i);
        let w1s = weight_scales(r, e * (2 * i / GROUP) * (k / GROUP), hard);
        let w2s = weight_scales(r, e * (k / GROUP) * (i / GROUP), hard);
        Self::new(p, a1q, a1s, (w1, w1s), (w2, w2s), counts, !hard)
    }
}

/// Random `topk_ids (m, topk)` over `e` experts with some `-1` and some repeated ids.
pub fn topk_ids(r: &mut Rng, m: usize, topk: usize, e: usize) -> Vec<i32> {
    (0..m * topk).map(|_| if r.one_in(6) { -1 } else { r.below(e) as i32 }).collect()
}

impl PrepareCase {
    /// A random case whose capacity fits the routing (`T` = the largest count, at least 1, plus
    /// 0..2 spare rows).
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (m, topk, e, k) = (r.below(9), 1 + r.below(4), 1 + r.below(4), GROUP * (1 + r.below(3)));
        let ids = topk_ids(r, m, topk, e);
        let routing = moe_core::Routing::new(&ids, m, topk, e, usize::MAX).expect("ids in range");
        let t = routing.counts().iter().copied().max().unwrap_or(0).max(1) as usize + r.below(3);
        let p = Prepare::new(m, k, topk, e, t, any_format(r)).expect("valid shape");
        let x = activation_rows(r, m, k, hard).into_iter().map(bf16::from_f32).collect();
        Self { p, x, topk_ids: ids }
    }
}

impl FinalizeCase {
    /// A random case.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let (m, topk, e, k) = (r.below(9), 1 + r.below(4), 1 + r.below(4), 1 + r.below(300));
        let ids = topk_ids(r, m, topk, e);
        let routing = moe_core::Routing::new(&ids, m, topk, e, usize::MAX).expect("ids in range");
        let t = routing.counts().iter().copied().max().unwrap_or(0).max(1) as usize + r.below(3);
        let p = Finalize::new(m, k, topk, e, t).expect("valid shape");
        let expert_out = (0..e * t * k)
            .map(|_| bf16::from_f32(if hard && r.one_in(8) { r.hard(0) } else { r.finite(8) }))
            .collect();
        let topk_weights = (0..m * topk)
            .map(|_| if hard && r.one_in(8) { r.hard(-3) } else { r.unit_signed().abs() })
            .collect();
        Self {
            p,
            expert_out,
            topk_ids: ids,
            topk_weights,
        }
    }
}

/// A router logit: on a grid of quarters half the time (ties), else spread; `hard` mixes in
/// infinities, magnitudes past `exp_f32`'s clamp and signed zeros.
fn logit(r: &mut Rng, hard: bool) -> f32 {
    if hard && r.one_in(8) {
        [f32::INFINITY, f32::NEG_INFINITY, 150.0, -150.0, 0.0, -0.0][r.below(6)]
    } else if r.one_in(2) {
        r.range(-12, 12) as f32 * 0.25
    } else {
        r.unit_signed() * 6.0
    }
}

impl RouteCase {
    /// A random case: groups of 2 to 9 experts (or none), any `k` the groups allow, both
    /// scorings, with and without a bias, renormalization and scaling.
    pub fn random(r: &mut Rng, hard: bool) -> Self {
        let g = [1, 1, 2, 4, 8][r.below(5)];
        let eg = g * (2 + r.below(8));
        let topk_group = 1 + r.below(g);
        let cfg = RouterConfig {
            n_group: g,
            topk_group,
            renormalize: r.one_in(2),
            routed_scaling_factor: [1.0, 2.5, 0.0, 16.0 * r.unit_positive()][r.below(4)],
            bias: r.one_in(2),
            ..RouterConfig::new(1 + r.below(topk_group * (eg / g)), Scoring::ALL[r.below(2)])
        };
        let m = r.below(9);
        let p = Route::new(m, eg, cfg).expect("valid router");
        let logits = (0..m * eg).map(|_| logit(r, hard)).collect();
        let bias = cfg.bias.then(|| {
            (0..eg)
                .map(|_| {
                    if hard && r.one_in(10) {
                        [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][r.below(3)]
                    } else {
                        r.range(-4, 4) as f32 * 0.125
                    }
                })
                .collect()
        });
        Self { p, logits, bias }
    }
}
