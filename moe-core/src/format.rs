//! Number formats (SPEC §2): E4M3, E5M2, BF16 helpers, UE8M0 and the exact `ceil_pow2`.
//!
//! Every function here is a pure function of the bits of its input, written with integer
//! operations only, so that the CUDA kernels (which use the hardware `cvt` instructions or a
//! line-by-line translation) agree with it on every input.

use half::bf16;

/// Largest finite E4M3 (`float8_e4m3fn`) value.
///
/// Note that the `float8` crate's `F8E4M3::MAX` is 416; this project never uses it.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite E5M2 value.
pub const E5M2_MAX: f32 = 57344.0;
/// The E4M3 NaN code written for a NaN input (positive sign).
pub const E4M3_NAN: u8 = 0x7F;
/// The UE8M0 NaN code.
pub const UE8M0_NAN: u8 = 0xFF;

/// Round-to-nearest-even of the f32 `x` to a float with `mant` explicit mantissa bits and
/// exponent bias `bias`, saturating at the code `max_code` (the largest finite magnitude).
///
/// Returns the magnitude code (sign not included). `x` must be finite and non-negative.
fn encode_magnitude(x: f32, mant: u32, bias: i32, max_code: u32) -> u32 {
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xFF) as i32;
    if exp == 0 {
        // f32 zero or subnormal: far below the smallest subnormal of any 8-bit format.
        return 0;
    }
    // Value = 1.m × 2^(exp-127). The target exponent field is e = exp-127+bias.
    let e = exp - 127 + bias;
    let full = (bits & 0x7F_FFFF) | 0x80_0000; // 24-bit significand
                                               // Number of significand bits to drop: 23-mant for normals; more for target subnormals.
    let shift = if e >= 1 { 23 - mant as i32 } else { 23 - mant as i32 + (1 - e) };
    if shift > 25 {
        // Below half of the smallest subnormal: rounds to zero.
        return 0;
    }
    let shift = shift as u32;
    let mut q = full >> shift;
    let rem = full & ((1u32 << shift) - 1);
    let half = 1u32 << (shift - 1);
    if rem > half || (rem == half && (q & 1) == 1) {
        q += 1;
    }
    // q is now the rounded significand with the implicit bit, for e >= 1, or the
    // subnormal significand for e < 1; carries propagate into the exponent field naturally.
    let code = if e >= 1 { ((e as u32) << mant) + (q - (1u32 << mant)) } else { q };
    code.min(max_code)
}

/// Encodes an f32 to E4M3 (`e4m3_sat`, SPEC §2): round to nearest, ties to even; finite values
/// beyond ±448 and ±inf saturate to ±448 (`0x7E`/`0xFE`); NaN encodes to `0x7F`.
///
/// Equals CUDA's `cvt.rn.satfinite.e4m3x2.f32` and `ml_dtypes.float8_e4m3fn(np.clip(x, -448, 448))`.
/// Written without branches (selects only) so that loops over slices vectorize; it equals the
/// obviously-right [`e4m3_from_f32_reference`] on all 2^32 inputs (`cargo xtask exp-check`).
#[inline]
pub fn e4m3_from_f32(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = (bits >> 24) & 0x80;
    let a = f32::from_bits(bits & 0x7FFF_FFFF);
    let abits = a.to_bits();
    // Normal E4M3 range (|x| >= 2^-6): round the f32 mantissa to 3 bits, ties to even, and
    // rebias the exponent from 127 to 7 (960 = 120 << 3). Carries move into the exponent.
    let rounded = abits.wrapping_add(0x7_FFFF + ((abits >> 20) & 1)) >> 20;
    let normal = rounded.wrapping_sub(960);
    // Subnormal range (|x| < 2^-6): the code is round_half_even(|x| · 2^9), 0..=8, computed
    // exactly by adding 2^23 (the product by 512 is exact).
    let sub = (a * 512.0 + 8_388_608.0).to_bits().wrapping_sub(0x4B00_0000);
    let code = if a < 0.015625 { sub } else { normal };
    let code = if a >= E4M3_MAX { 0x7E } else { code.min(0x7E) };
    if x.is_nan() {
        E4M3_NAN
    } else {
        (sign | code) as u8
    }
}

/// The definition of [`e4m3_from_f32`], written for clarity (integer rounding of the significand
/// with explicit subnormal handling); used to check the fast encoder.
pub fn e4m3_from_f32_reference(x: f32) -> u8 {
    encode_saturating(x, E4M3_MAX, 3, 7, 0x7E)
}

/// The sign bit and the saturating magnitude code of `x` in a format with `mant` mantissa bits,
/// exponent bias `bias` and largest finite value `max` (code `max_code`); NaN encodes to `0x7F`.
#[inline]
fn encode_saturating(x: f32, max: f32, mant: u32, bias: i32, max_code: u32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    let a = x.abs();
    let code = if a >= max {
        max_code
    } else {
        encode_magnitude(a, mant, bias, max_code)
    };
    sign | code as u8
}

/// Decodes an E4M3 byte; exact. `0x7F` and `0xFF` decode to NaN.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_DECODE[b as usize]
}

const fn e4m3_decode_const(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0f32 };
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 7) as i32;
    if e == 15 && m == 7 {
        return f32::NAN;
    }
    // value = m/8 * 2^-6 (subnormal) or (1 + m/8) * 2^(e-7); computed as an integer multiple of 2^-9.
    let units = if e == 0 { m } else { (8 + m) << (e - 1) };
    sign * (units as f32) * (1.0 / 512.0)
}

const fn build_e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_decode_const(i as u8);
        i += 1;
    }
    t
}

/// The exact decode table of E4M3: entry `b` is the value of byte `b`.
pub static E4M3_DECODE: [f32; 256] = build_e4m3_table();

/// Encodes an f32 to E5M2 with the saturating rule (max 57344); NaN encodes to `0x7F`.
#[inline]
pub fn e5m2_from_f32(x: f32) -> u8 {
    encode_saturating(x, E5M2_MAX, 2, 15, 0x7B)
}

/// Decodes an E5M2 byte; exact (E5M2 codes `0x7C`/`0xFC` are ±inf, above are NaN).
#[inline]
pub fn e5m2_to_f32(b: u8) -> f32 {
    // E5M2 is the top byte of an IEEE half.
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// Rounds an f32 to BF16, round to nearest even (NaN stays NaN).
#[inline]
pub fn bf16_from_f32(x: f32) -> bf16 {
    bf16::from_f32(x)
}

/// The BF16 NaN every backend writes for a NaN result (`0x7FC0`).
pub const BF16_CANONICAL_NAN: bf16 = bf16::from_bits(0x7FC0);

/// Rounds an f32 to BF16 for an **output** tensor: round to nearest even, and every NaN becomes
/// [`BF16_CANONICAL_NAN`].
///
/// IEEE 754 leaves the sign and payload of a computed NaN unspecified, and CPUs and GPUs differ
/// (x86 produces `0xFFC00000` for `inf - inf`, NVIDIA GPUs `0x7FFFFFFF`), so bit-exact outputs
/// (finalize) and bounded ones (the GEMM) write one NaN pattern on every backend.
#[inline]
pub fn bf16_out(x: f32) -> bf16 {
    if x.is_nan() {
        BF16_CANONICAL_NAN
    } else {
        bf16::from_f32(x)
    }
}

/// Rounds an f32 to the nearest BF16 value (ties to even) and returns it widened back to f32.
///
/// Equal to `half::bf16::from_f32(x).to_f32()` on every input (NaN keeps its sign and upper
/// payload and becomes quiet), but written without branches so that loops vectorize; the
/// exhaustive check is part of `cargo xtask exp-check`.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    let nan = (b | 0x0040_0000) & 0xFFFF_0000;
    f32::from_bits(if x.is_nan() { nan } else { rounded })
}

/// The smallest power of two `>= x`, for a positive finite f32 `x`, computed from the bits
/// (SPEC §2): the biased exponent plus one if any mantissa bit is set; for subnormal `x`,
/// the smallest normal power of two (`2^-126`).
///
/// Returns `+inf` when the result does not fit f32 (`x > 2^127`) and `NaN` for NaN.
/// Non-positive inputs are outside the contract; they return `2^-126`.
#[inline]
pub fn ceil_pow2(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return f32::INFINITY;
    }
    let bits = x.to_bits() & 0x7FFF_FFFF;
    let exp = bits >> 23;
    if exp == 0 {
        return f32::from_bits(1 << 23);
    }
    let exp = if bits & 0x7F_FFFF != 0 { exp + 1 } else { exp };
    if exp >= 255 {
        f32::INFINITY
    } else {
        f32::from_bits(exp << 23)
    }
}

/// The UE8M0 code of an exact power of two (its biased exponent); NaN and inf give `0xFF`.
/// A value that is not a power of two is truncated to its exponent.
#[inline]
pub fn ue8m0_from_pow2(x: f32) -> u8 {
    if !x.is_finite() {
        return UE8M0_NAN;
    }
    ((x.to_bits() >> 23) & 0xFF) as u8
}

/// Decodes a UE8M0 code: `2^(code-127)`; `0xFF` is NaN. Code 0 decodes to `2^-127`.
#[inline]
pub fn ue8m0_to_f32(code: u8) -> f32 {
    match code {
        0xFF => f32::NAN,
        // 2^-127 is an f32 subnormal.
        0 => f32::from_bits(1 << 22),
        c => f32::from_bits((c as u32) << 23),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent slow encoder: enumerate every finite E4M3 value and pick the nearest,
    /// ties to the even code.
    fn e4m3_slow(x: f32) -> u8 {
        if x.is_nan() {
            return 0x7F;
        }
        let x = x.clamp(-448.0, 448.0) as f64;
        let mut best = 0u8;
        let mut best_d = f64::INFINITY;
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if v.is_nan() || (v == 0.0 && v.is_sign_negative() != x.is_sign_negative()) {
                continue;
            }
            let d = (v as f64 - x).abs();
            if d < best_d || (d == best_d && b & 1 == 0) {
                best = b;
                best_d = d;
            }
        }
        best
    }

    #[test]
    fn e4m3_decode_table_has_known_values() {
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        assert!(e4m3_to_f32(0x80).is_sign_negative() && e4m3_to_f32(0x80) == 0.0);
    }

    #[test]
    fn e4m3_roundtrips_every_finite_code() {
        for b in 0u8..=255 {
            let v = e4m3_to_f32(b);
            if !v.is_nan() {
                assert_eq!(e4m3_from_f32(v), b, "code {b:#04x}");
            }
        }
    }

    #[test]
    fn e4m3_encoder_matches_nearest_search_on_midpoints_and_boundaries() {
        let mut xs = vec![
            0.0,
            -0.0,
            448.0,
            464.0,
            463.99997,
            464.00003,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for b in 0u8..0x7F {
            let lo = e4m3_to_f32(b) as f64;
            let hi = e4m3_to_f32(b + 1) as f64;
            let mid = ((lo + hi) / 2.0) as f32;
            for x in [mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits() - 1)] {
                xs.push(x);
                xs.push(-x);
            }
        }
        xs.push(2f32.powi(-10));
        xs.push(f32::from_bits(2f32.powi(-10).to_bits() + 1));
        xs.push(f32::from_bits(1));
        for x in xs {
            assert_eq!(e4m3_from_f32(x), e4m3_slow(x), "x = {x:e} ({:#010x})", x.to_bits());
        }
    }

    #[test]
    fn e4m3_fast_encoder_matches_reference_on_a_dense_sample() {
        let mut bits = 0u32;
        while bits < u32::MAX - 997 {
            let x = f32::from_bits(bits);
            assert_eq!(e4m3_from_f32(x), e4m3_from_f32_reference(x), "x = {x:e} ({bits:#010x})");
            bits += 997;
        }
    }

    #[test]
    fn round_bf16_matches_half_on_a_dense_sample() {
        let mut bits = 0u32;
        while bits < u32::MAX - 331 {
            let x = f32::from_bits(bits);
            assert_eq!(round_bf16(x).to_bits(), bf16::from_f32(x).to_f32().to_bits(), "{bits:#010x}");
            bits += 331;
        }
    }

    #[test]
    fn e4m3_saturates_and_encodes_nan() {
        assert_eq!(e4m3_from_f32(464.0), 0x7E);
        assert_eq!(e4m3_from_f32(-1e9), 0xFE);
        assert_eq!(e4m3_from_f32(f32::INFINITY), 0x7E);
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7F);
        assert_eq!(e4m3_from_f32(-f32::NAN), 0x7F);
        assert_eq!(e4m3_from_f32(-0.0), 0x80);
    }

    #[test]
    fn e5m2_roundtrips_and_saturates() {
        for b in 0u8..=255 {
            let v = e5m2_to_f32(b);
            if v.is_finite() {
                assert_eq!(e5m2_from_f32(v), b);
            }
        }
        assert_eq!(e5m2_from_f32(f32::INFINITY), 0x7B);
        assert_eq!(e5m2_from_f32(-1e6), 0xFB);
    }

    #[test]
    fn ceil_pow2_is_exact_just_above_powers_of_two() {
        assert_eq!(ceil_pow2(1.0), 1.0);
        assert_eq!(ceil_pow2(f32::from_bits(1.0f32.to_bits() + 1)), 2.0);
        assert_eq!(ceil_pow2(0.75), 1.0);
        assert_eq!(ceil_pow2(3.0e-41), 2f32.powi(-126));
        assert_eq!(ceil_pow2(f32::MAX), f32::INFINITY);
        assert_eq!(ceil_pow2(2f32.powi(127)), 2f32.powi(127));
        // exp2(ceil(log2(x))) in f32 gets this wrong: log2 rounds to exactly 3.0.
        let x = f32::from_bits(8.0f32.to_bits() + 1);
        assert_eq!(ceil_pow2(x), 16.0);
    }

    #[test]
    fn ue8m0_codes_round_trip() {
        for c in 1u8..255 {
            assert_eq!(ue8m0_from_pow2(ue8m0_to_f32(c)), c);
        }
        assert!(ue8m0_to_f32(0xFF).is_nan());
    }
}
