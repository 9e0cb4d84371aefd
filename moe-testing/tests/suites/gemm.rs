//! The masked grouped GEMM: within `ulp_bf16(d_ref) + c · bound` per element (bit-exact for
//! `GemmContract::Exact`), NaN positions equal, dead rows untouched (SPEC §5.3).

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::strategies::{self, config};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{duts_or_skip, GEMM_TOL};

#[test]
fn grouped_gemm_is_within_the_bound_on_arbitrary_codes_and_scales() {
    let Some(duts) = duts_or_skip("grouped_gemm_is_within_the_bound_on_arbitrary_codes_and_scales") else {
        return;
    };
    proptest!(config(), |(c in strategies::gemm_case())| {
        on_each(duts, |d| check_gemm(d, &c, GEMM_TOL)).map_err(TestCaseError::fail)?;
    });
}

#[test]
fn grouped_gemm_is_within_the_bound_on_seeded_cases() {
    let Some(duts) = duts_or_skip("grouped_gemm_is_within_the_bound_on_seeded_cases") else {
        return;
    };
    for i in 0..16u64 {
        let c = GemmCase::random(&mut Rng::for_case(31, 0, i), i % 2 == 1);
        on_each(duts, |d| check_gemm(d, &c, GEMM_TOL)).unwrap();
    }
}

#[test]
fn grouped_gemm_result_does_not_depend_on_expected_m() {
    let Some(duts) = duts_or_skip("grouped_gemm_result_does_not_depend_on_expected_m") else {
        return;
    };
    let c = GemmCase::random(&mut Rng::for_case(32, 0, 0), false);
    for m in [1, 16, 64, 4096] {
        let c = GemmCase {
            p: c.p.with_expected_m(m),
            ..c.clone()
        };
        on_each(duts, |d| check_gemm(d, &c, GEMM_TOL)).unwrap();
    }
}

#[test]
fn grouped_gemm_rejects_bad_input_like_the_reference_and_writes_nothing() {
    let Some(duts) = duts_or_skip("grouped_gemm_rejects_bad_input_like_the_reference_and_writes_nothing") else {
        return;
    };
    for i in 0..8u64 {
        let c = GemmCase::random(&mut Rng::for_case(33, 0, i), false);
        on_each(duts, |d| check_gemm_rejects(d, &c)).unwrap();
    }
}
