//! Slow, independent definitions used as oracles by the properties: written from SPEC §2 by
//! exhaustive search, sharing no code with `moe-core`'s bit-manipulating encoders.

use moe_core::e4m3_to_f32;

/// E4M3 encode by nearest search over all finite codes of the input's sign, ties to the code
/// with an even mantissa (SPEC §2), after saturating to ±448; NaN gives `0x7F`.
pub fn e4m3_nearest_even(x: f32) -> u8 {
    e4m3_nearest(x, |lo, _hi| lo & 1 == 0)
}

/// The same search with ties resolved away from zero: a deliberately wrong encoder, used to
/// prove that the properties catch a rounding bug.
pub fn e4m3_nearest_ties_away(x: f32) -> u8 {
    e4m3_nearest(x, |_lo, _hi| false)
}

/// Nearest search; on a tie between magnitude codes `lo < hi`, `pick_lo(lo, hi)` decides.
fn e4m3_nearest(x: f32, pick_lo: impl Fn(u8, u8) -> bool) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = (x.abs() as f64).min(448.0);
    // Magnitude codes are monotonic in value: find the last code <= a.
    let mut lo = 0u8;
    while lo < 0x7E && e4m3_to_f32(lo + 1) as f64 <= a {
        lo += 1;
    }
    if lo == 0x7E || e4m3_to_f32(lo) as f64 == a {
        return sign | lo;
    }
    let hi = lo + 1;
    let (dl, dh) = (a - e4m3_to_f32(lo) as f64, e4m3_to_f32(hi) as f64 - a);
    let code = if dl < dh || (dl == dh && pick_lo(lo, hi)) { lo } else { hi };
    sign | code
}

/// The smallest power of two `>= x` for a positive finite `x`, by doubling in float64.
pub fn ceil_pow2_by_search(x: f32) -> f64 {
    let x = x as f64;
    let mut p = 2f64.powi(-126);
    while p < x {
        p *= 2.0;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_even_and_ties_away_differ_exactly_on_ties_with_an_even_lower_code() {
        // 1.0625 is the midpoint of 1.0 (0x38) and 1.125 (0x39).
        assert_eq!(e4m3_nearest_even(1.0625), 0x38);
        assert_eq!(e4m3_nearest_ties_away(1.0625), 0x39);
        assert_eq!(e4m3_nearest_even(-464.0), 0xFE);
        assert_eq!(e4m3_nearest_even(f32::INFINITY), 0x7E);
        assert_eq!(e4m3_nearest_even(-0.0), 0x80);
        assert_eq!(e4m3_nearest_even(2f32.powi(-10)), 0x00, "half the smallest subnormal ties to 0");
        assert_eq!(ceil_pow2_by_search(1.0), 1.0);
        assert_eq!(ceil_pow2_by_search(1.5), 2.0);
    }
}
