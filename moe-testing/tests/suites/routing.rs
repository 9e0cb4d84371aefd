//! Prepare (dispatch + quantize) and finalize (weight + combine): bit-exact, rows past the routed
//! counts untouched, bad ids and overflow rejected like the reference (SPEC §5.5).

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::property::{property, seeded};
use moe_testing::strategies;

use super::duts_or_skip;

#[test]
fn prepare_is_bit_exact_with_unrouted_and_repeated_ids() {
    property(
        duts_or_skip("prepare_is_bit_exact_with_unrouted_and_repeated_ids"),
        strategies::prepare_case(),
        |d, c| check_prepare(d, c).and_then(|_| check_prepare_rejects(d, c)),
    );
}

#[test]
fn finalize_is_bit_exact_with_special_values() {
    property(
        duts_or_skip("finalize_is_bit_exact_with_special_values"),
        strategies::finalize_case(),
        |d, c| check_finalize(d, c).and_then(|_| check_finalize_rejects(d, c)),
    );
}

#[test]
fn prepare_and_finalize_match_on_seeded_cases() {
    let duts = duts_or_skip("prepare_and_finalize_match_on_seeded_cases");
    // The two cases of `i` come from one generator, in this order.
    let make = |r: &mut Rng, i: u64| (PrepareCase::random(r, i % 2 == 1), FinalizeCase::random(r, i % 2 == 1));
    seeded(duts, 51, 24, make, |d, (p, f)| {
        check_prepare(d, p)?;
        check_prepare_rejects(d, p)?;
        check_finalize(d, f)?;
        check_finalize_rejects(d, f)
    });
}
