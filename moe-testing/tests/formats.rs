//! Properties of the number formats themselves (backend-independent): the E4M3 encoder against
//! an exhaustive nearest-even search, and the exact ceil rule against a doubling search.

use moe_core::{ceil_pow2, e4m3_from_f32};
use moe_testing::oracle::{ceil_pow2_by_search, e4m3_nearest_even};
use moe_testing::strategies::{config, e4m3_encoder_input};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: config().cases * 40, ..config() })]

    #[test]
    fn e4m3_encoder_rounds_to_nearest_even_and_saturates(x in e4m3_encoder_input()) {
        prop_assert_eq!(e4m3_from_f32(x), e4m3_nearest_even(x), "x = {:e} ({:#010x})", x, x.to_bits());
    }

    #[test]
    fn ceil_pow2_is_the_smallest_power_of_two_not_below(bits in 1u32..0x7F00_0000, up in 0u32..3) {
        // Values on, just above and just below powers of two are the interesting ones.
        let x = f32::from_bits(if up == 0 { bits & 0xFF80_0000 | 1 } else if up == 1 { bits & 0xFF80_0000 } else { bits });
        prop_assume!(x > 0.0 && x.is_finite());
        prop_assert_eq!(ceil_pow2(x) as f64, ceil_pow2_by_search(x), "x = {:e}", x);
    }
}
