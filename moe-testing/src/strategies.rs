//! proptest strategies that hunt the hard cases on purpose.
//!
//! Activation groups are built in "scaled units": a group draws a power of two `2^k` with `k` in
//! `[-20, 20]` (so rows of one tensor span `2^-20..2^20`), values that are E4M3 codes, exact
//! E4M3 rounding midpoints (ties), midpoints ± 1 ulp, ±0 and uniform values, all times `2^k`,
//! and one of these group kinds:
//! - *pinned*: one element is `±448·2^k`, so the scale is exactly `2^k` and every midpoint
//!   element divides to an exact tie of the encoder;
//! - *just above a power of two*: one element is the next f32 above `448·2^k`, so the scale is
//!   one ulp above `2^k` and the ceil rule must give `2^(k+1)`;
//! - *all zero*: the epsilon path (`amax = 1e-10`);
//! - *special*: NaN, ±inf and f32 subnormals mixed in;
//! - *free*: no anchor.
//!
//! Shapes cover `T` not a multiple of 4, a single expert, `K` equal to one block, five groups
//! (the packed format's partial last word), and counts of 0 and of `T`. The tile-edge strategies
//! ([`gemm_tile_edge_case`], [`experts_tile_edge_case`]) draw the big shapes that cross the GEMM
//! kernels' tiles; the suites run them for a fixed, small number of cases.
//!
//! The number of cases per property comes from `PROPTEST_CASES` (default [`DEFAULT_CASES`]).

use moe_core::{
    bf16, e4m3_to_f32, BatchedTokenGroupQuant, BlockQuant, ExpertsStage, Finalize, GroupedGemm, Numerics, Prepare, Route, RouterConfig,
    Routing, ScaleBuf, ScaleFormat, ScaleLayout, Scoring, SiluMulQuant, TokenGroupQuant, GROUP,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::tiles;

/// Cases per property when `PROPTEST_CASES` is not set: keeps the whole suite well under two
/// minutes on two cores.
pub const DEFAULT_CASES: u32 = 24;

/// The proptest configuration of every property: `PROPTEST_CASES` or [`DEFAULT_CASES`].
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        max_shrink_iters: 4096,
        // Regression files sit next to the suite file that failed
        // (`<file>.proptest-regressions`), so the CPU and CUDA mounts share them.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    }
}

/// The exact midpoint between E4M3 codes `c` and `c + 1` (`c` in `0..0x7E`).
pub fn e4m3_midpoint(c: u8) -> f32 {
    ((e4m3_to_f32(c) as f64 + e4m3_to_f32(c + 1) as f64) / 2.0) as f32
}

fn signed(s: impl Strategy<Value = f32>) -> impl Strategy<Value = f32> {
    (s, any::<bool>()).prop_map(|(v, neg)| if neg { -v } else { v })
}

/// One unit in the last place of the element type, in f32 bits: 1 for f32, 2^16 for bf16.
///
/// A value one f32 ulp away from a midpoint or a power of two rounds straight back onto it when
/// the tensor is stored as bf16, so the perturbations that make a case hard are taken in the
/// element type the case will be stored in (midpoints and `448·2^k` are exact in bf16, so one
/// bf16 step from them is again a bf16 value).
pub fn ulp_bits(bf16: bool) -> u32 {
    if bf16 {
        1 << 16
    } else {
        1
    }
}

/// A value in scaled units (to be multiplied by `2^k`), at most 448 in magnitude, for a tensor
/// stored as bf16 (`bf16`) or f32.
pub fn unit_value(bf16: bool) -> impl Strategy<Value = f32> {
    let step = ulp_bits(bf16);
    prop_oneof![
        4 => signed((0u8..0x7E).prop_map(e4m3_midpoint)),
        2 => signed((1u8..0x7E).prop_map(move |c| {
            let m = e4m3_midpoint(c);
            f32::from_bits(m.to_bits() + step)
        })),
        2 => signed((1u8..0x7E).prop_map(move |c| {
            let m = e4m3_midpoint(c);
            f32::from_bits(m.to_bits() - step)
        })),
        2 => signed((0u8..=0x7E).prop_map(e4m3_to_f32)),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        3 => -448.0f32..448.0,
    ]
}

/// What anchors a group (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Pinned,
    JustAbovePow2,
    AllZero,
    Special,
    Free,
}

fn group_kind() -> impl Strategy<Value = GroupKind> {
    prop_oneof![4 => Just(GroupKind::Pinned), 2 => Just(GroupKind::JustAbovePow2), 1 => Just(GroupKind::AllZero), 1 => Just(GroupKind::Special), 2 => Just(GroupKind::Free)]
}

/// One group of 128 activation values (see the module docs), for a tensor stored as bf16
/// (`bf16`) or f32.
pub fn group(bf16: bool) -> impl Strategy<Value = Vec<f32>> {
    let step = ulp_bits(bf16);
    (
        -20i32..=20,
        group_kind(),
        vec(unit_value(bf16), GROUP),
        0..GROUP,
        any::<bool>(),
        vec((0..GROUP, 0u8..4, 1u32..0x80_0000), 1..4),
    )
        .prop_map(move |(k, kind, units, anchor, neg, specials)| {
            let scale = 2f32.powi(k);
            let mut v: Vec<f32> = units.iter().map(|u| u * scale).collect();
            let sign = if neg { -1.0 } else { 1.0 };
            match kind {
                GroupKind::Pinned => v[anchor] = sign * 448.0 * scale,
                GroupKind::JustAbovePow2 => v[anchor] = sign * f32::from_bits((448.0 * scale).to_bits() + step),
                GroupKind::AllZero => v.iter_mut().enumerate().for_each(|(i, x)| *x = if i % 3 == 0 { -0.0 } else { 0.0 }),
                GroupKind::Special => {
                    for (i, what, sub) in specials {
                        v[i] = match what {
                            0 => f32::NAN,
                            1 => f32::INFINITY,
                            2 => f32::NEG_INFINITY,
                            _ => f32::from_bits(sub) * sign,
                        };
                    }
                }
                GroupKind::Free => {}
            }
            v
        })
}

/// `n` groups, concatenated, for a tensor stored as bf16 (`bf16`) or f32.
pub fn groups(n: usize, bf16: bool) -> impl Strategy<Value = Vec<f32>> {
    vec(group(bf16), n).prop_map(|g| g.concat())
}

/// Any scale format.
pub fn scale_format() -> impl Strategy<Value = ScaleFormat> {
    prop_oneof![
        Just(ScaleFormat::F32),
        Just(ScaleFormat::F32CeilUe8m0),
        Just(ScaleFormat::Ue8m0Packed)
    ]
}

/// Any numerics of SiLU-mul-quant.
pub fn numerics() -> impl Strategy<Value = Numerics> {
    prop_oneof![Just(Numerics::VllmBf16), Just(Numerics::F32)]
}

/// A count in `0..=t`, often exactly 0 or `t`.
pub fn count(t: usize) -> impl Strategy<Value = i32> {
    prop_oneof![1 => Just(0), 1 => Just(t as i32), 2 => 0..=t as i32]
}

/// Experts, capacity and groups: a single expert and `T` not a multiple of 4 are common.
fn etg() -> impl Strategy<Value = (usize, usize, usize)> {
    (
        prop_oneof![2 => Just(1usize), 1 => 2usize..=3],
        1usize..=7,
        prop_oneof![2 => Just(1usize), 1 => 2usize..=5],
    )
}

/// Token-group quantization cases: both layouts, bf16 and f32 inputs, every format.
pub fn token_group_quant_case() -> impl Strategy<Value = TokenGroupQuantCase> {
    (0usize..=6, prop_oneof![2 => Just(1usize), 1 => 2usize..=5], any::<bool>()).prop_flat_map(|(rows, g, bf)| {
        (
            groups(rows * g, bf),
            scale_format(),
            prop_oneof![Just(ScaleLayout::RowMajor), Just(ScaleLayout::MnMajor)],
            Just(bf),
        )
            .prop_map(move |(v, fmt, layout, bf)| TokenGroupQuantCase {
                p: TokenGroupQuant::new(rows, g * GROUP, fmt, layout).expect("valid shape"),
                x: ActBuf::from_f32(v, bf),
            })
    })
}

/// Batched token-group quantization cases.
pub fn batched_quant_case() -> impl Strategy<Value = BatchedQuantCase> {
    (etg(), any::<bool>()).prop_flat_map(|((e, t, g), bf)| {
        (groups(e * t * g, bf), vec(count(t), e), scale_format(), Just(bf)).prop_map(move |(v, counts, fmt, bf)| BatchedQuantCase {
            p: BatchedTokenGroupQuant::new(e, t, g * GROUP, fmt).expect("valid shape"),
            x: ActBuf::from_f32(v, bf),
            counts,
        })
    })
}

/// Block quantization cases with ragged edges.
pub fn block_quant_case() -> impl Strategy<Value = BlockQuantCase> {
    (1usize..=2, 1usize..=150, 1usize..=150, -20i32..=20, any::<bool>()).prop_flat_map(|(e, r, c, k, bf)| {
        (
            vec(unit_value(bf), e * r * c),
            any::<bool>(),
            Just(bf),
            0..e * r * c,
            vec((0..e * r * c, 0u8..3), 0..3),
        )
            .prop_map(move |(units, pow2, bf, anchor, specials)| {
                let scale = 2f32.powi(k);
                let mut v: Vec<f32> = units.iter().map(|u| u * scale).collect();
                v[anchor] = 448.0 * scale;
                for (i, what) in specials {
                    v[i] = [f32::NAN, f32::INFINITY, -0.0][what as usize];
                }
                BlockQuantCase {
                    p: BlockQuant::new(e, r, c, pow2).expect("valid shape"),
                    w: ActBuf::from_f32(v, bf),
                }
            })
    })
}

/// A gate or up value of SiLU-mul-quant: ordinary, saturating `exp`, special.
pub fn silu_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -8.0f32..8.0,
        2 => signed(unit_value(true)),
        1 => -200.0f32..-80.0,
        1 => 80.0f32..200.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => signed(1e-30f32..1e-20),
        1 => signed(1e20f32..1e30),
    ]
}

/// SiLU-mul-quant cases, both numerics, every format.
pub fn silu_mul_quant_case() -> impl Strategy<Value = SiluMulQuantCase> {
    etg().prop_flat_map(|(e, t, g)| {
        let h = g * GROUP;
        (vec(silu_value(), e * t * 2 * h), vec(count(t), e), scale_format(), numerics()).prop_map(move |(v, counts, fmt, num)| {
            SiluMulQuantCase {
                p: SiluMulQuant::new(e, t, h, fmt, num).expect("valid shape"),
                y: v.into_iter().map(bf16::from_f32).collect(),
                counts,
            }
        })
    })
}

/// An E4M3 byte, rarely NaN (mapped, not filtered: a filter would reject too often on the
/// large buffers of the experts stage).
pub fn e4m3_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        60 => any::<u8>().prop_map(|b| if b & 0x7F == 0x7F { b & 0xFE } else { b }),
        1 => prop_oneof![Just(0x7Fu8), Just(0xFFu8)],
    ]
}

/// A positive scale spread over many binades, sometimes zero, subnormal, inf or NaN.
pub fn scale_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => (1.0f32..2.0, -30i32..=10).prop_map(|(m, e)| m * 2f32.powi(e)),
        1 => Just(0.0f32),
        1 => (1u32..0x80_0000).prop_map(f32::from_bits),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NAN),
    ]
}

/// Activation scales in the storage of `fmt`, `n` elements.
pub fn scales(fmt: ScaleFormat, n: usize) -> BoxedStrategy<ScaleBuf> {
    match fmt {
        ScaleFormat::F32 => vec(scale_value(), n).prop_map(ScaleBuf::F32).boxed(),
        ScaleFormat::F32CeilUe8m0 => vec(-40i32..=20, n)
            .prop_map(|e| ScaleBuf::F32(e.into_iter().map(|e| 2f32.powi(e)).collect()))
            .boxed(),
        ScaleFormat::Ue8m0Packed => vec(prop_oneof![20 => 90u32..=140, 1 => 0u32..=255], n * 4)
            .prop_map(|b| ScaleBuf::Packed(b.chunks(4).map(|c| (c[0] | c[1] << 8 | c[2] << 16 | c[3] << 24) as i32).collect()))
            .boxed(),
    }
}

/// Grouped GEMM cases.
pub fn gemm_case() -> impl Strategy<Value = GemmCase> {
    (
        prop_oneof![2 => Just(1usize), 1 => 2usize..=3],
        1usize..=7,
        1usize..=2,
        prop_oneof![2 => Just(1usize), 1 => 2usize..=3],
        scale_format(),
    )
        .prop_flat_map(|(e, t, nb, kb, fmt)| {
            let (n, k) = (nb * GROUP, kb * GROUP);
            let p = GroupedGemm::new(e, t, n, k, fmt).expect("valid shape");
            let san: usize = p.sa_shape().iter().product();
            (
                vec(e4m3_byte(), e * t * k),
                scales(fmt, san),
                vec(e4m3_byte(), e * n * k),
                vec(scale_value(), e * nb * kb),
                vec(count(t), e),
            )
                .prop_map(move |(a, sa, b, sb, counts)| GemmCase { p, a, sa, b, sb, counts })
        })
}

/// Grouped GEMM cases at the kernels' tile edges (`moe_engine::verify::tiles`: T up to 300, N
/// and K past 1024, counts at every row-tile edge ±1, one live row, all rows live, empty
/// experts). The shape and the counts are drawn here, so a failure shrinks toward small shapes
/// and zero counts; the data come from a seeded generator (buffers of up to a million codes
/// would make proptest's value trees slow to build and to shrink).
pub fn gemm_tile_edge_case() -> impl Strategy<Value = GemmCase> {
    (
        1usize..=3,
        0..tiles::GEMM_CAPACITIES.len(),
        0..tiles::GEMM_N_BLOCKS.len(),
        0..tiles::GEMM_K_BLOCKS.len(),
        0..tiles::CountPattern::ALL.len(),
        vec(any::<usize>(), 3),
        scale_format(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(e, ti, ni, ki, pattern, picks, fmt, seed, hard)| {
            let (e, t, n, k) = tiles::gemm_shape(e, ti, ni, ki);
            let p = GroupedGemm::new(e, t, n, k, fmt).expect("valid shape");
            let counts = tiles::edge_counts(tiles::CountPattern::ALL[pattern], &picks, e, t);
            GemmCase::with_shape(&mut Rng::new(seed), p, counts, hard)
        })
}

/// Experts-stage cases at the tile edges (E of 1 or 2, T from 129 to 300, K and I of 256 or
/// more), drawn like [`gemm_tile_edge_case`]; random data (so `calc_diff < 1e-5` applies)
/// unless `hard` is drawn.
pub fn experts_tile_edge_case() -> impl Strategy<Value = ExpertsCase> {
    (
        1usize..=2,
        0..tiles::EXPERTS_CAPACITIES.len(),
        0..tiles::EXPERTS_K_BLOCKS.len(),
        0..tiles::EXPERTS_I_BLOCKS.len(),
        0..tiles::CountPattern::ALL.len(),
        vec(any::<usize>(), 2),
        scale_format(),
        numerics(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(e, ti, ki, ii, pattern, picks, fmt, num, seed, hard)| {
            let (e, t, k, i) = tiles::experts_shape(e, ti, ki, ii);
            let p = ExpertsStage::new(e, t, k, i, fmt, num).expect("valid shape");
            let counts = tiles::edge_counts(tiles::CountPattern::ALL[pattern], &picks, e, t);
            ExpertsCase::with_shape(&mut Rng::new(seed), p, counts, hard)
        })
}

/// Experts-stage cases (stage-by-stage checks; `random_data` is false).
pub fn experts_case() -> impl Strategy<Value = ExpertsCase> {
    (1usize..=2, 1usize..=5, 1usize..=2, 1usize..=2, scale_format(), numerics()).prop_flat_map(|(e, t, kb, ib, fmt, num)| {
        let (k, i) = (kb * GROUP, ib * GROUP);
        let p = ExpertsStage::new(e, t, k, i, fmt, num).expect("valid shape");
        let san: usize = p.a1s_shape().iter().product();
        let ws = (1.0f32..2.0, -14i32..=-6).prop_map(|(m, x)| m * 2f32.powi(x));
        (
            vec(e4m3_byte(), e * t * k),
            scales(fmt, san),
            vec(e4m3_byte(), e * 2 * i * k),
            vec(ws.clone(), e * 2 * ib * kb),
            vec(e4m3_byte(), e * k * i),
            vec(ws, e * kb * ib),
            vec(count(t), e),
        )
            .prop_map(move |(a1q, a1s, w1, w1s, w2, w2s, counts)| ExpertsCase::new(p, a1q, a1s, (w1, w1s), (w2, w2s), counts, false))
    })
}

fn routed(e: usize) -> impl Strategy<Value = i32> {
    prop_oneof![1 => Just(-1i32), 5 => 0..e as i32]
}

fn capacity_for(ids: &[i32], m: usize, topk: usize, e: usize, spare: usize) -> usize {
    let r = Routing::new(ids, m, topk, e, usize::MAX).expect("ids in range");
    r.counts().iter().copied().max().unwrap_or(0).max(1) as usize + spare
}

/// Prepare cases: some tokens unrouted, some listed twice for one expert.
pub fn prepare_case() -> impl Strategy<Value = PrepareCase> {
    (0usize..=8, 1usize..=4, 1usize..=4, prop_oneof![2 => Just(1usize), 1 => 2usize..=3]).prop_flat_map(|(m, topk, e, g)| {
        (vec(routed(e), m * topk), groups(m * g, true), scale_format(), 0usize..=2).prop_map(move |(ids, x, fmt, spare)| {
            let t = capacity_for(&ids, m, topk, e, spare);
            PrepareCase {
                p: Prepare::new(m, g * GROUP, topk, e, t, fmt).expect("valid shape"),
                x: x.into_iter().map(bf16::from_f32).collect(),
                topk_ids: ids,
            }
        })
    })
}

/// Finalize cases.
pub fn finalize_case() -> impl Strategy<Value = FinalizeCase> {
    (0usize..=6, 1usize..=3, 1usize..=3, 1usize..=160, 0usize..=2).prop_flat_map(|(m, topk, e, k, spare)| {
        vec(routed(e), m * topk).prop_flat_map(move |ids| {
            let t = capacity_for(&ids, m, topk, e, spare);
            (
                Just(ids),
                vec(silu_value(), e * t * k),
                vec(prop_oneof![4 => 0.0f32..1.0, 1 => silu_value()], m * topk),
            )
                .prop_map(move |(ids, eo, w)| FinalizeCase {
                    p: Finalize::new(m, k, topk, e, t).expect("valid shape"),
                    expert_out: eo.into_iter().map(bf16::from_f32).collect(),
                    topk_ids: ids,
                    topk_weights: w,
                })
        })
    })
}

/// A router logit: mostly a few values (so that equal scores are common), sometimes beyond
/// `exp_f32`'s clamp or infinite (softmax then has NaN scores, which rank last).
pub fn route_logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => prop::sample::select(vec![-2.0f32, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0]),
        4 => -8.0f32..8.0,
        1 => prop::sample::select(vec![f32::NEG_INFINITY, -150.0, 150.0, f32::INFINITY]),
    ]
}

/// A router bias: mostly a few values, sometimes infinite or NaN (which rank last too).
pub fn route_bias() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => prop::sample::select(vec![-0.5f32, -0.0, 0.0, 0.25, 0.5]),
        1 => prop::sample::select(vec![f32::NEG_INFINITY, f32::INFINITY, f32::NAN]),
    ]
}

/// Router cases: no groups or 2, 4 or 8 groups of 2 to 6 experts, any `TG` and `k` the groups
/// allow, both scorings, with and without a bias, renormalization and scaling, logits and
/// biases hunting ties and special values.
pub fn route_case() -> impl Strategy<Value = RouteCase> {
    let shape = (
        prop::sample::select(vec![1usize, 2, 4, 8]),
        2usize..=6,
        0usize..=5,
        any::<u16>(),
        prop::sample::select(vec![1.0f32, 2.5, 0.0]),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    );
    shape.prop_flat_map(|(g, gsize, m, pick, scale, (softmax, bias, renormalize))| {
        let eg = g * gsize;
        let topk_group = 1 + pick as usize % g;
        let scoring = if softmax { Scoring::Softmax } else { Scoring::Sigmoid };
        let cfg = RouterConfig {
            n_group: g,
            topk_group,
            renormalize,
            routed_scaling_factor: scale,
            bias,
            ..RouterConfig::new(1 + (pick >> 4) as usize % (topk_group * gsize), scoring)
        };
        (vec(route_logit(), m * eg), vec(route_bias(), eg)).prop_map(move |(logits, b)| RouteCase {
            p: Route::new(m, eg, cfg).expect("valid router"),
            logits,
            bias: bias.then_some(b),
        })
    })
}

/// f32 inputs for the E4M3 encoder itself: midpoints and their neighbours at every binade,
/// the 448 and 464 boundaries, subnormals, specials and arbitrary bit patterns.
pub fn e4m3_encoder_input() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => any::<u32>().prop_map(f32::from_bits),
        3 => signed((0u8..0x7E, -1i32..=1).prop_map(|(c, d)| f32::from_bits((e4m3_midpoint(c).to_bits() as i32 + d) as u32))),
        2 => signed((0x43E0_0000u32..=0x43F0_0000).prop_map(f32::from_bits)), // 448..=480 (464 inside)
        1 => signed(Just(464.0f32)),
        1 => signed((0u32..0x3C80_0000).prop_map(f32::from_bits)), // below 2^-6: E4M3 subnormals and f32 subnormals
        1 => prop_oneof![Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(f32::NAN), Just(0.0f32), Just(-0.0f32)],
    ]
}

#[cfg(test)]
mod tests {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;

    /// Whether `x` is exactly one bf16 step away from an E4M3 midpoint (unscaled units).
    fn one_bf16_step_off_a_midpoint(x: bf16) -> bool {
        let v = x.to_f32().abs();
        [-1i32, 1].iter().any(|d| {
            let n = f32::from_bits((v.to_bits() as i32 + d * (1 << 16)) as u32);
            (0u8..0x7E).any(|c| e4m3_midpoint(c) == n)
        })
    }

    // On the old strategies (one f32 ulp), these perturbations rounded straight back onto the
    // midpoint or the power of two when the tensor was stored as bf16: no bf16 group had an amax
    // just above 448·2^k, and only the uniform draws landed next to midpoints (about 2%).
    #[test]
    fn bf16_values_keep_their_one_ulp_perturbations() {
        let mut runner = TestRunner::deterministic();
        let draws = 4000;
        let near = (0..draws)
            .filter(|_| one_bf16_step_off_a_midpoint(bf16::from_f32(unit_value(true).new_tree(&mut runner).unwrap().current())))
            .count();
        assert!(
            near * 100 > draws * 15,
            "only {near} of {draws} bf16 draws are one step off a midpoint"
        );
        let mut above = 0;
        for _ in 0..200 {
            let v = group(true).new_tree(&mut runner).unwrap().current();
            let amax = v
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32().abs())
                .filter(|x| x.is_finite())
                .fold(0f32, f32::max);
            let k = (amax / 448.0).log2().floor();
            above += usize::from(amax > 0.0 && amax == 450.0 * 2f32.powf(k));
        }
        assert!(above >= 10, "only {above} of 200 bf16 groups have an amax one step above 448·2^k");
    }

    #[test]
    fn f32_groups_perturb_by_one_f32_ulp() {
        assert_eq!(ulp_bits(false), 1);
        assert_eq!(bf16::from_f32(f32::from_bits(448f32.to_bits() + ulp_bits(true))).to_f32(), 450.0);
    }
}
