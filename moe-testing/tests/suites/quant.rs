//! Token-group quantization (both layouts, bf16/f32, every format), batched quantization and
//! block quantization: bit-exact against the naive reference (SPEC §5.1, §4).
//!
//! Mounted per backend: the mounting file provides `duts_or_skip`.

use moe_testing::cases::*;
use moe_testing::check::*;
use moe_testing::rng::Rng;
use moe_testing::strategies::{self, config};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::duts_or_skip;

fn fail(e: String) -> TestCaseError {
    TestCaseError::fail(e)
}

#[test]
fn token_group_quant_is_bit_exact_on_hard_groups() {
    let Some(duts) = duts_or_skip("token_group_quant_is_bit_exact_on_hard_groups") else {
        return;
    };
    proptest!(config(), |(c in strategies::token_group_quant_case())| {
        on_each(duts, |d| check_token_group_quant(d, &c)).map_err(fail)?;
    });
}

#[test]
fn batched_quant_is_bit_exact_and_leaves_dead_rows() {
    let Some(duts) = duts_or_skip("batched_quant_is_bit_exact_and_leaves_dead_rows") else {
        return;
    };
    proptest!(config(), |(c in strategies::batched_quant_case())| {
        on_each(duts, |d| check_batched_quant(d, &c)).map_err(fail)?;
    });
}

#[test]
fn block_quant_is_bit_exact_with_ragged_edges() {
    let Some(duts) = duts_or_skip("block_quant_is_bit_exact_with_ragged_edges") else {
        return;
    };
    proptest!(config(), |(c in strategies::block_quant_case())| {
        on_each(duts, |d| check_block_quant(d, &c)).map_err(fail)?;
    });
}

#[test]
fn quantizers_match_on_seeded_random_and_hard_cases() {
    let Some(duts) = duts_or_skip("quantizers_match_on_seeded_random_and_hard_cases") else {
        return;
    };
    for i in 0..24u64 {
        let mut r = Rng::for_case(11, 0, i);
        let hard = i % 2 == 1;
        let c = TokenGroupQuantCase::random(&mut r, hard);
        on_each(duts, |d| check_token_group_quant(d, &c)).unwrap();
        let c = BatchedQuantCase::random(&mut r, hard);
        on_each(duts, |d| check_batched_quant(d, &c)).unwrap();
        let c = BlockQuantCase::random(&mut r, hard);
        on_each(duts, |d| check_block_quant(d, &c)).unwrap();
    }
}

#[test]
fn quantizers_reject_bad_input_like_the_reference_and_write_nothing() {
    let Some(duts) = duts_or_skip("quantizers_reject_bad_input_like_the_reference_and_write_nothing") else {
        return;
    };
    for i in 0..8u64 {
        let mut r = Rng::for_case(12, 0, i);
        let c = TokenGroupQuantCase::random(&mut r, false);
        on_each(duts, |d| check_token_group_quant_rejects(d, &c)).unwrap();
        let c = BatchedQuantCase::random(&mut r, false);
        on_each(duts, |d| check_batched_quant_rejects(d, &c)).unwrap();
        let c = BlockQuantCase::random(&mut r, false);
        on_each(duts, |d| check_block_quant_rejects(d, &c)).unwrap();
    }
}
