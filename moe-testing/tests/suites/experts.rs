//! The batched experts stage: checked stage by stage (each stage on the backend's own
//! intermediates), dead rows of every intermediate and of the output untouched, and end to end
//! with `calc_diff < 1e-5` on random data (SPEC §5.4).

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::property::{property_with, seeded};
use moe_testing::strategies::{self, config};

use super::{duts_or_skip, GEMM_TOL};

#[test]
fn experts_stages_match_on_arbitrary_codes_and_scales() {
    let duts = duts_or_skip("experts_stages_match_on_arbitrary_codes_and_scales");
    let cfg = proptest::test_runner::Config {
        cases: (config().cases / 3).max(4),
        ..config()
    };
    property_with(cfg, duts, strategies::experts_case(), |d, c| check_experts(d, c, GEMM_TOL));
}

/// The experts stage at the GEMM kernels' tile edges (T from 129 to 300, K and I of 256 or
/// more, counts at tile edges); a fixed number of cases, as the GEMM's tile-edge property.
#[test]
fn experts_stages_match_at_tile_edges() {
    let duts = duts_or_skip("experts_stages_match_at_tile_edges");
    let cfg = super::gemm::tile_edge_config();
    property_with(cfg, duts, strategies::experts_tile_edge_case(), |d, c| {
        check_experts(d, c, GEMM_TOL)
    });
}

#[test]
fn experts_end_to_end_calc_diff_is_below_1e_5_on_random_data() {
    let duts = duts_or_skip("experts_end_to_end_calc_diff_is_below_1e_5_on_random_data");
    let random_data = |r: &mut Rng, _| ExpertsCase::random(r, false);
    seeded(duts, 41, 10, random_data, |d, c| {
        assert!(c.random_data);
        check_experts(d, c, GEMM_TOL)
    });
}

#[test]
fn experts_reject_bad_input_like_the_reference_and_write_nothing() {
    let duts = duts_or_skip("experts_reject_bad_input_like_the_reference_and_write_nothing");
    seeded(duts, 42, 4, |r, _| ExpertsCase::random(r, false), check_experts_rejects);
}
