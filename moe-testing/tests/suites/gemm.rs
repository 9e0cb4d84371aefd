//! The masked grouped GEMM: within `ulp_bf16(d_ref) + c · bound` per element (bit-exact for
//! `GemmContract::Exact`), NaN positions equal, dead rows untouched (SPEC §5.3).

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::property::{property, property_with, seeded};
use moe_testing::strategies::{self, config};

use super::{duts_or_skip, GEMM_TOL};

#[test]
fn grouped_gemm_is_within_the_bound_on_arbitrary_codes_and_scales() {
    let duts = duts_or_skip("grouped_gemm_is_within_the_bound_on_arbitrary_codes_and_scales");
    property(duts, strategies::gemm_case(), |d, c| check_gemm(d, c, GEMM_TOL));
}

#[test]
fn grouped_gemm_is_within_the_bound_on_seeded_cases() {
    let duts = duts_or_skip("grouped_gemm_is_within_the_bound_on_seeded_cases");
    seeded(
        duts,
        31,
        16,
        |r, i| GemmCase::random(r, i % 2 == 1),
        |d, c| check_gemm(d, c, GEMM_TOL),
    );
}

/// `expected_m` is a performance hint (SPEC §6) that no backend reads yet, so today this test
/// cannot fail. It becomes meaningful when the fast GEMM lands, which will read `expected_m` to
/// pick its tiles (BLOCK_M 64 or 128): a tile choice that changes a result, or loses rows past a
/// tile edge, then fails here. Hence hints of 1, 16, T and a big one, on a small case and on
/// cases whose counts sit at tile edges, and outputs bit-identical across hints.
#[test]
fn grouped_gemm_result_does_not_depend_on_expected_m() {
    let Some(duts) = duts_or_skip("grouped_gemm_result_does_not_depend_on_expected_m") else {
        return;
    };
    let small = GemmCase::random(&mut Rng::for_case(32, 0, 0), false);
    let edges = |e, t, n, k, counts: Vec<i32>, seed| {
        let p = moe_core::GroupedGemm::new(e, t, n, k, moe_core::ScaleFormat::F32).expect("valid shape");
        GemmCase::with_shape(&mut Rng::for_case(32, 1, seed), p, counts, false)
    };
    let cases = [
        small,
        edges(3, 257, 128, 256, vec![64, 129, 257], 0),
        edges(3, 130, 256, 128, vec![63, 0, 128], 1),
        edges(2, 65, 384, 128, vec![1, 65], 2),
    ];
    for c in &cases {
        let t = c.p.capacity();
        on_each(duts, |d| check_gemm_independent_of_expected_m(d, c, GEMM_TOL, &[1, 16, t, 1 << 20])).unwrap();
    }
}

/// Cases of the tile-edge properties: fixed, not `PROPTEST_CASES`, because each case is up to
/// 2^27 multiply-adds (about a second for all of them on two cores).
pub(crate) const TILE_EDGE_CASES: u32 = 8;

/// The configuration of the tile-edge properties: [`TILE_EDGE_CASES`] cases.
pub(crate) fn tile_edge_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: TILE_EDGE_CASES,
        ..config()
    }
}

#[test]
fn grouped_gemm_is_within_the_bound_at_tile_edges() {
    let duts = duts_or_skip("grouped_gemm_is_within_the_bound_at_tile_edges");
    property_with(tile_edge_config(), duts, strategies::gemm_tile_edge_case(), |d, c| {
        check_gemm(d, c, GEMM_TOL)
    });
}

/// The per-element bound cannot see an epilogue that truncates instead of rounding; the mean
/// rounding error over 10^5 elements can (`check_gemm_rounding_bias`; `tests/planted.rs` proves
/// it catches truncation).
#[test]
fn grouped_gemm_epilogue_rounds_to_nearest_on_average() {
    let duts = duts_or_skip("grouped_gemm_epilogue_rounds_to_nearest_on_average");
    seeded(duts, 34, 2, |r, _| GemmCase::rounding_bias_case(r), check_gemm_rounding_bias);
}

#[test]
fn grouped_gemm_rejects_bad_input_like_the_reference_and_writes_nothing() {
    let duts = duts_or_skip("grouped_gemm_rejects_bad_input_like_the_reference_and_writes_nothing");
    seeded(duts, 33, 8, |r, _| GemmCase::random(r, false), check_gemm_rejects);
}
