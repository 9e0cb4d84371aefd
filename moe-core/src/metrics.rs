//! Comparison metrics of the differential tests: the bf16 ulp of SPEC §5.3's GEMM bound and
//! DeepGEMM's `calc_diff` of SPEC §5.4 and §5.7. These are the project's single definitions.

use half::bf16;

/// The spacing of bf16 values at `x`: the ulp of `|x|`'s binade, `2^(e - 127 - 7)` for the
/// biased exponent `e`, as f64.
///
/// - At a power of two this is the spacing above it (the one below is half as large).
/// - ±0 and subnormals: `2^-133`, the spacing of the subnormals (and of the smallest normal binade).
/// - ±inf: the spacing at the largest finite bf16, `2^120`, so that a bound stays finite.
/// - NaN: NaN (every comparison against it fails, as it should).
///
/// ```
/// use moe_core::metrics::ulp_bf16;
/// use moe_core::bf16;
/// assert_eq!(ulp_bf16(bf16::ONE), 2f64.powi(-7));
/// assert_eq!(ulp_bf16(bf16::INFINITY), 2f64.powi(120));
/// ```
pub fn ulp_bf16(x: bf16) -> f64 {
    let exp = ((x.to_bits() >> 7) & 0xFF) as i32;
    match exp {
        0 => 2f64.powi(1 - 127 - 7),
        0xFF if x.is_nan() => f64::NAN,
        0xFF => 2f64.powi(0xFE - 127 - 7),
        e => 2f64.powi(e - 127 - 7),
    }
}

/// DeepGEMM's `calc_diff = 1 - 2Σxy / Σ(x² + y²)`, accumulated in f64 in index order.
///
/// 0 for identical data, 2 for `y = -x`, and 0 when both are all zero (the quotient would be
/// 0/0). NaN when an input holds a NaN or an infinity.
///
/// # Panics
/// If `x` and `y` differ in length.
pub fn calc_diff(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "calc_diff: slices of different lengths");
    calc_diff_iter(x.iter().copied().zip(y.iter().copied()))
}

/// [`calc_diff`] of two bf16 slices, each element widened exactly to f64.
///
/// # Panics
/// If `x` and `y` differ in length.
pub fn calc_diff_bf16(x: &[bf16], y: &[bf16]) -> f64 {
    assert_eq!(x.len(), y.len(), "calc_diff_bf16: slices of different lengths");
    calc_diff_iter(x.iter().zip(y).map(|(a, b)| (a.to_f64(), b.to_f64())))
}

fn calc_diff_iter(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut xy, mut sq) = (0f64, 0f64);
    for (a, b) in pairs {
        xy += a * b;
        sq += a * a + b * b;
    }
    if sq == 0.0 {
        0.0
    } else {
        1.0 - 2.0 * xy / sq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_bf16_is_the_binade_spacing_with_defined_edges() {
        assert_eq!(ulp_bf16(bf16::from_f32(1.0)), 2f64.powi(-7));
        assert_eq!(ulp_bf16(bf16::from_f32(-1.99)), 2f64.powi(-7));
        assert_eq!(ulp_bf16(bf16::from_f32(448.0)), 2.0);
        assert_eq!(ulp_bf16(bf16::MAX), 2f64.powi(120));
        assert_eq!(ulp_bf16(bf16::ZERO), 2f64.powi(-133));
        assert_eq!(ulp_bf16(bf16::NEG_ZERO), 2f64.powi(-133));
        assert_eq!(ulp_bf16(bf16::from_bits(1)), 2f64.powi(-133), "smallest subnormal");
        assert_eq!(ulp_bf16(bf16::from_bits(0x807F)), 2f64.powi(-133), "largest negative subnormal");
        assert_eq!(ulp_bf16(bf16::MIN_POSITIVE), 2f64.powi(-133));
        assert_eq!(ulp_bf16(bf16::INFINITY), 2f64.powi(120));
        assert_eq!(ulp_bf16(bf16::NEG_INFINITY), 2f64.powi(120));
        assert!(ulp_bf16(bf16::NAN).is_nan());
        assert!(ulp_bf16(bf16::from_bits(0xFFC1)).is_nan());
    }

    #[test]
    fn ulp_bf16_is_the_distance_to_the_next_value_for_every_finite_bf16() {
        for bits in 0..0x7F7Fu16 {
            let x = bf16::from_bits(bits);
            let next = bf16::from_bits(bits + 1);
            assert_eq!(ulp_bf16(x), next.to_f64() - x.to_f64(), "{bits:#06x}");
            assert_eq!(ulp_bf16(-x), ulp_bf16(x));
        }
    }

    #[test]
    fn calc_diff_is_zero_for_equal_data_two_for_opposite_and_zero_for_zeros() {
        assert_eq!(calc_diff(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(calc_diff(&[1.0, 2.0], &[-1.0, -2.0]), 2.0);
        assert_eq!(calc_diff(&[0.0, -0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(calc_diff(&[], &[]), 0.0);
        assert_eq!(calc_diff(&[1.0], &[0.0]), 1.0);
        assert!(calc_diff(&[f64::NAN], &[1.0]).is_nan());
        let x = [bf16::from_f32(1.5), bf16::from_f32(-3.0)];
        let y = [bf16::from_f32(1.5), bf16::from_f32(3.0)];
        assert_eq!(calc_diff_bf16(&x, &x), 0.0);
        assert_eq!(calc_diff_bf16(&x, &y), calc_diff(&[1.5, -3.0], &[1.5, 3.0]));
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn calc_diff_of_different_lengths_panics() {
        calc_diff_bf16(&[bf16::ONE], &[]);
    }
}
