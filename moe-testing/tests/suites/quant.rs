//! Token-group quantization (both layouts, bf16/f32, every format), batched quantization and
//! block quantization: bit-exact against the naive reference (SPEC §5.1, §4).
//!
//! Mounted per backend: the mounting file provides `duts_or_skip`.

use moe_core::Backend;
use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::property::{property, seeded};
use moe_testing::strategies;

use super::duts_or_skip;

#[test]
fn token_group_quant_is_bit_exact_on_hard_groups() {
    property(
        duts_or_skip("token_group_quant_is_bit_exact_on_hard_groups"),
        strategies::token_group_quant_case(),
        check_token_group_quant,
    );
}

#[test]
fn batched_quant_is_bit_exact_and_leaves_dead_rows() {
    property(
        duts_or_skip("batched_quant_is_bit_exact_and_leaves_dead_rows"),
        strategies::batched_quant_case(),
        check_batched_quant,
    );
}

#[test]
fn block_quant_is_bit_exact_with_ragged_edges() {
    property(
        duts_or_skip("block_quant_is_bit_exact_with_ragged_edges"),
        strategies::block_quant_case(),
        check_block_quant,
    );
}

#[test]
fn quantizers_match_on_seeded_random_and_hard_cases() {
    let duts = duts_or_skip("quantizers_match_on_seeded_random_and_hard_cases");
    // The three cases of `i` come from one generator, in this order.
    let make = |r: &mut Rng, i: u64| {
        let hard = i % 2 == 1;
        (
            TokenGroupQuantCase::random(r, hard),
            BatchedQuantCase::random(r, hard),
            BlockQuantCase::random(r, hard),
        )
    };
    seeded(duts, 11, 24, make, |d, (a, b, c)| {
        check_token_group_quant(d, a)?;
        check_batched_quant(d, b)?;
        check_block_quant(d, c)
    });
}

#[test]
fn quantizers_reject_bad_input_like_the_reference_and_write_nothing() {
    let duts = duts_or_skip("quantizers_reject_bad_input_like_the_reference_and_write_nothing");
    let make = |r: &mut Rng, _| {
        (
            TokenGroupQuantCase::random(r, false),
            BatchedQuantCase::random(r, false),
            BlockQuantCase::random(r, false),
        )
    };
    seeded(duts, 12, 8, make, |d, (a, b, c)| {
        check_token_group_quant_rejects(d, a)?;
        check_batched_quant_rejects(d, b)?;
        check_block_quant_rejects(d, c)
    });
}

/// One row of 128 values in every format and layout, f32 and bf16 input.
fn one_row_cases(v: &[f32]) -> Vec<TokenGroupQuantCase> {
    let mut out = Vec::new();
    for fmt in moe_core::ScaleFormat::ALL {
        for layout in [moe_core::ScaleLayout::RowMajor, moe_core::ScaleLayout::MnMajor] {
            for bf in [false, true] {
                out.push(TokenGroupQuantCase {
                    p: moe_core::TokenGroupQuant::new(1, v.len(), fmt, layout).unwrap(),
                    x: ActBuf::from_f32(v.to_vec(), bf),
                });
            }
        }
    }
    out
}

/// Minimized from the planted ties-away bug (`tests/planted.rs`): with the group maximum 448 the
/// scale is exactly 1, and 2^-10 is the midpoint between 0 and the smallest subnormal 2^-9, so
/// ties-to-even gives code 0x00 (ties-away would give 0x01).
#[test]
fn token_group_quant_ties_to_even_at_half_the_smallest_subnormal() {
    let Some(duts) = duts_or_skip("token_group_quant_ties_to_even_at_half_the_smallest_subnormal") else {
        return;
    };
    let mut v = vec![2f32.powi(-10); 128];
    v[0] = 448.0;
    for c in one_row_cases(&v) {
        on_each(duts, |d| check_token_group_quant(d, &c)).unwrap();
        let mut q = vec![0u8; 128];
        let mut s = moe_engine::verify::compare::poison_scales(c.p.scale_format(), c.p.scale_shape().iter().product());
        duts[0].1.token_group_quant(&c.p, c.x.view(), &mut q, s.view_mut()).unwrap();
        assert_eq!((q[0], q[1]), (0x7E, 0x00));
    }
}

/// Minimized from the planted `exp2(ceil(log2 s))` bug: the group maximum is the next f32 above
/// 448·16 = 7168, so the scale is one ulp above 16 and the ceil formats must use 32, putting the
/// maximum at 224 (code 0x76) rather than saturating it at 448 (0x7E).
#[test]
fn token_group_quant_ceils_a_scale_just_above_a_power_of_two() {
    let Some(duts) = duts_or_skip("token_group_quant_ceils_a_scale_just_above_a_power_of_two") else {
        return;
    };
    let mut v = vec![0.015625f32; 128];
    v[0] = f32::from_bits(7168f32.to_bits() + 1);
    for c in one_row_cases(&v)
        .into_iter()
        .filter(|c| c.p.scale_format().is_ceil() && matches!(c.x, ActBuf::F32(_)))
    {
        on_each(duts, |d| check_token_group_quant(d, &c)).unwrap();
        let mut q = vec![0u8; 128];
        let mut s = moe_engine::verify::compare::poison_scales(c.p.scale_format(), c.p.scale_shape().iter().product());
        duts[0].1.token_group_quant(&c.p, c.x.view(), &mut q, s.view_mut()).unwrap();
        assert_eq!(q[0], 0x76, "{:?}", c.p.scale_format());
        if let moe_core::ScaleBuf::F32(s) = s {
            assert_eq!(s[0], 32.0);
        }
    }
}
