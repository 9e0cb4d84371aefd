//! The project's own elementary functions, shared bit for bit by every backend (SPEC §5.2).
//!
//! # `exp_f32`
//! One algorithm, built only from IEEE-exact operations (f32 add, mul, compare, and integer bit
//! manipulation; no fused multiply-add, no library call), so that the Rust code here and the
//! CUDA translation in `moe-cuda/kernels/common.cuh` (compiled with `--fmad=false`) agree on
//! every one of the 2^32 f32 inputs:
//!
//! 1. NaN returns the canonical quiet NaN `0x7FC00000`. Otherwise `x` is clamped to
//!    `[-104, 89]`: `exp(89)` overflows to `+inf` and `exp(-104) < 2^-150` rounds to `+0`, so the
//!    clamp changes no result.
//! 2. `n = round_half_even(x · log2(e))`, computed as `(x·LOG2E + 1.5·2^23) - 1.5·2^23`.
//! 3. Cody–Waite reduction: `r = (x - n·LN2_HI) - n·LN2_LO`, where `LN2_HI` has 15 significant
//!    bits so `n·LN2_HI` is exact for `|n| <= 150` and the first subtraction is exact (Sterbenz).
//! 4. `p = 1 + (r + r²·q(r))` with `q` the degree-5 Taylor polynomial of `(e^r - 1 - r)/r²`
//!    evaluated by Horner's rule, `|r| <= 0.35` (truncation error below 0.15 ulp).
//! 5. `result = (p · 2^n1) · 2^n2` with `n1 = n >> 1` and `n2 = n - n1`: the first product is
//!    exact, the second rounds once, which gives correctly rounded gradual underflow and
//!    overflow to `+inf`.
//!
//! Its error against float64 `exp` is at most 2 ulp on every f32 input; the exhaustive check is
//! `cargo xtask exp-check` (run by `cargo xtask ci`), and the measured maximum is recorded in
//! `docs/numerics.md`.

use half::bf16;

/// The canonical NaN returned by [`exp_f32`] for a NaN input.
pub const CANONICAL_NAN: f32 = f32::from_bits(0x7FC0_0000);

const LOG2E: f32 = std::f32::consts::LOG2_E; // 0x3FB8AA3B
const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23
const LN2_HI: f32 = f32::from_bits(0x3F31_7200); // 0.693145751953125
const LN2_LO: f32 = f32::from_bits(0x35BF_BE8E); // 1.4286068e-6
const C2: f32 = 0.5;
const C3: f32 = 1.0 / 6.0;
const C4: f32 = 1.0 / 24.0;
const C5: f32 = 1.0 / 120.0;
const C6: f32 = 1.0 / 720.0;
const C7: f32 = 1.0 / 5040.0;
const X_MAX: f32 = 89.0;
const X_MIN: f32 = -104.0;

/// `e^x` in f32, the project's own algorithm (see the module docs); at most 2 ulp from the
/// exact value, identical on every backend.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return CANONICAL_NAN;
    }
    // x is not NaN here, so this is the comparison clamp of the CUDA translation.
    let x = x.clamp(X_MIN, X_MAX);
    let t = x * LOG2E + SHIFTER;
    let nf = t - SHIFTER;
    let n = nf as i32;
    let r = (x - nf * LN2_HI) - nf * LN2_LO;
    let q = ((((C7 * r + C6) * r + C5) * r + C4) * r + C3) * r + C2;
    let p = 1.0 + (r + (r * r) * q);
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    (p * s1) * s2
}

/// `silu(g) = g / (1 + exp_f32(-g))`, IEEE f32 division (SPEC §5.2).
#[inline]
pub fn silu_f32(g: f32) -> f32 {
    g / (1.0 + exp_f32(-g))
}

/// Rounds an f64 to the nearest bf16-representable value (8 significant bits), ties to even,
/// for values in bf16's normal range or zero; NaN and infinities pass through.
fn round_f64_to_bf16_grid(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let bits = x.to_bits();
    // Keep 7 explicit mantissa bits of the 52: drop 45.
    let drop = 45u32;
    let half = 1u64 << (drop - 1);
    let rem = bits & ((1u64 << drop) - 1);
    let mut kept = bits >> drop;
    if rem > half || (rem == half && kept & 1 == 1) {
        kept += 1;
    }
    f64::from_bits(kept << drop)
}

/// The power-of-two scale of `Numerics::VllmBf16` ceil formats (SPEC §5.2):
/// `bf16(2^ceil(bf16(log2 s)))`, where `log2 s` is the exact base-2 logarithm rounded once to
/// bf16.
///
/// It is computed here in float64, whose error (1 ulp of f64) is far below the distance from any
/// bf16 `log2 s` to a bf16 rounding boundary (checked for all 2^15 positive bf16 values by a
/// test), so the result is the exact one; the CUDA backend evaluates the same formula in double.
/// `s = 0` gives 0, `+inf` gives `+inf`, NaN gives NaN. Negative `s` never occurs (the scale is a
/// maximum of absolute values) and is mapped through `|s|`.
pub fn vllm_ceil_pow2_bf16(s: bf16) -> bf16 {
    let v = s.to_f64().abs();
    if v.is_nan() {
        return s;
    }
    if v == 0.0 {
        return bf16::ZERO;
    }
    if v.is_infinite() {
        return bf16::INFINITY;
    }
    let l = round_f64_to_bf16_grid(v.log2());
    let c = l.ceil() as i32;
    // 2^c for c in [-133, 128]: exact in f64; bf16 of 2^128 is +inf.
    bf16::from_f64(2f64.powi(c))
}

/// The distance, in units of the f64 value, from `log2 s` to the nearest bf16 rounding boundary;
/// used by the test that proves [`vllm_ceil_pow2_bf16`] is insensitive to the f64 `log2` error.
#[doc(hidden)]
pub fn vllm_log2_margin(s: bf16) -> f64 {
    let l = s.to_f64().log2();
    if l == 0.0 || !l.is_finite() {
        return f64::INFINITY;
    }
    // bf16 grid spacing at |l| is 2^(floor(log2|l|) - 7); rounding boundaries are the odd
    // multiples of half of it. Near a power of two the coarser spacing is used (conservative).
    let e = l.abs().log2().floor() as i32;
    let halfsp = 2f64.powi(e - 8);
    let y = (l / halfsp - 1.0) / 2.0;
    let d = 2.0 * (y - y.round()).abs() * halfsp;
    d / l.abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_err(x: f32) -> f64 {
        let y = exp_f32(x) as f64;
        let t = (x as f64).exp();
        let tf = t as f32;
        if tf.is_infinite() {
            return if y.is_infinite() { 0.0 } else { (t - y) / 2f64.powi(104) };
        }
        let ulp = if tf == 0.0 || tf < f32::MIN_POSITIVE {
            2f64.powi(-149)
        } else {
            let e = (tf.to_bits() >> 23) as i32 - 127;
            2f64.powi(e - 23)
        };
        (y - t).abs() / ulp
    }

    #[test]
    fn exp_f32_is_within_two_ulp_on_a_dense_sample() {
        let mut worst = 0.0f64;
        let mut bits = 0u32;
        while bits < u32::MAX - 4093 {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                worst = worst.max(ulp_err(x));
            }
            bits += 4093;
        }
        for i in -104_000..89_000 {
            let x = i as f32 * 1e-3;
            worst = worst.max(ulp_err(x));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_f32_special_values() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY).to_bits(), 0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(88.72283).is_finite());
        assert_eq!(exp_f32(-104.0).to_bits(), 0);
        assert_eq!(
            exp_f32(-103.0).to_bits(),
            1,
            "exp(-103) = 1.45 * 2^-149 rounds to the smallest subnormal"
        );
        assert_eq!(exp_f32(f32::NAN).to_bits(), CANONICAL_NAN.to_bits());
        assert_eq!(exp_f32(f32::from_bits(0xFFC0_1234)).to_bits(), CANONICAL_NAN.to_bits());
    }

    #[test]
    fn silu_follows_the_formula() {
        assert_eq!(silu_f32(0.0), 0.0);
        assert!(silu_f32(f32::NEG_INFINITY).is_nan());
        assert_eq!(silu_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(silu_f32(-200.0), -0.0);
        let g = 1.5f32;
        assert_eq!(silu_f32(g), g / (1.0 + exp_f32(-g)));
    }

    #[test]
    fn vllm_ceil_scale_is_robust_for_every_positive_bf16() {
        let mut min_margin = f64::INFINITY;
        for b in 1u16..0x7F80 {
            let s = bf16::from_bits(b);
            min_margin = min_margin.min(vllm_log2_margin(s));
            let c = vllm_ceil_pow2_bf16(s);
            let cf = c.to_f64();
            // A power of two (or inf).
            assert!(cf.is_infinite() || cf.log2().fract() == 0.0, "{s} -> {c}");
        }
        // f64 log2 is accurate to ~1e-16 relative; demand a margin a million times larger.
        assert!(min_margin > 1e-10, "min margin {min_margin:e}");
    }

    #[test]
    fn vllm_ceil_scale_examples() {
        let f = |x: f32| vllm_ceil_pow2_bf16(bf16::from_f32(x)).to_f32();
        assert_eq!(f(1.0), 1.0);
        assert_eq!(f(1.5), 2.0);
        assert_eq!(f(0.25), 0.25);
        assert_eq!(f(0.3), 0.5);
        // log2(1.0078125 * 2^-100) = -99.9888 rounds to -100 in bf16: the ceil stays at 2^-100,
        // below s, exactly as vLLM's kernel does.
        let s = bf16::from_f32(1.0078125 * 2f32.powi(-100));
        assert_eq!(vllm_ceil_pow2_bf16(s).to_f32(), 2f32.powi(-100));
    }
}
