//! The rounding of the GEMM's epilogue: `d = bf16(acc)`, round to nearest even (SPEC §5.3).
//!
//! The per-element check ([`check_gemm`]) of a bounded backend allows
//! `ulp_bf16(d_ref) + c · bound`, so a backend that truncates its f32 accumulator to bf16 (or
//! rounds it in any fixed direction) passes it: a directed rounding is never more than one ulp
//! from the nearest. It is caught in aggregate instead, by the mean signed error of the
//! backend's `d` against the reference's f32 accumulator `acc`, in bf16 ulps of `acc`
//! ([`check_gemm_rounding_bias`]).
//!
//! # The threshold
//! For a live element with a finite, nonzero `acc`, let `u` be the spacing of bf16 values in
//! `acc`'s binade (`2^(⌊log2|acc|⌋ - 7)`, or `2^-133` below the normal range) and
//! `err = (d - acc) / u`. Two means are taken over `n` elements:
//! - `mean(err)`: catches rounding toward −∞ or +∞ (−½ or +½ when the 16 bits that bf16
//!   drops are uniformly distributed),
//! - `mean(sign(acc) · err)`, the error toward larger magnitude: catches truncation toward zero
//!   (−½) and rounding away from zero (+½), whose signed errors cancel over data of both signs.
//!
//! Round to nearest gives `err` uniform on `[-½, ½]`: mean 0, standard deviation `1/√12 ≈ 0.29`,
//! so over `n >= 10^5` elements each mean has a standard deviation below `0.29 / √n ≈ 0.0009`;
//! [`BIAS_MAX`] = 0.05 is more than 50 of those, and ten times below the ½ of a directed
//! rounding (the test `truncation_and_rounding_are_far_apart_on_the_bias_case` measures both).
//!
//! A bounded backend may also differ from `acc` before rounding, by up to `c · bound`; even if
//! that difference always had one sign it would move a mean by at most `c · mean(bound / u)`.
//! On the cases of [`GemmCase::rounding_bias_case`] `mean(bound / u)` is about 5,000 (a
//! heavy tail: the few elements whose products cancel have a bound far above their ulp), so
//! with the measured `c = 2^-25.3` of `docs/gpu-validation.md` the shift is at most about
//! 1.2e-4 ulp, 400 times below the threshold: the check tests the epilogue, not the tensor
//! cores. (A backend using the whole SPEC ceiling `c = 2^-12` in one direction on every element
//! would be caught; an error that large and that one-sided is a bug too.) The test
//! `truncation_and_rounding_are_far_apart_on_the_bias_case` measures these figures.

use moe_core::{Backend, GroupedGemm, ScaleFormat};
use moe_ref_cpu::NaiveCpu;

use super::*;
use crate::rng::Rng;
use crate::verify::cases::{scales_for, weight_scales};

/// The largest accepted `|mean|` of either signed error, in bf16 ulps (see the module docs).
pub const BIAS_MAX: f64 = 0.05;

/// The fewest elements the means are taken over.
pub const BIAS_MIN_ELEMENTS: usize = 100_000;

/// The rounding errors of a GEMM output against the f32 accumulators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundingBias {
    /// Elements measured (live, `acc` finite, nonzero and within bf16's finite range).
    pub elements: usize,
    /// `mean((d - acc) / u)`.
    pub mean: f64,
    /// `mean(sign(acc) · (d - acc) / u)`: negative for truncation toward zero.
    pub mean_toward_magnitude: f64,
}

impl RoundingBias {
    /// The worse of the two means, in absolute value.
    pub fn worst(&self) -> f64 {
        self.mean.abs().max(self.mean_toward_magnitude.abs())
    }
}

/// The spacing of bf16 values in the binade of the finite, nonzero f32 `x`.
pub fn bf16_spacing(x: f32) -> f64 {
    match (x.to_bits() >> 23) & 0xFF {
        0 => 2f64.powi(-133),
        e => 2f64.powi(e as i32 - 127 - 7),
    }
}

/// Measures the rounding errors of `d` against `acc` (both `(E, T, N)`) on the live rows.
/// An element whose `acc` is finite but whose `d` is not is an error.
pub fn rounding_bias(d: &[bf16], acc: &[f32], t_cap: usize, n: usize, counts: &[i32]) -> Result<RoundingBias, String> {
    let (mut sum, mut sum_mag, mut count) = (0f64, 0f64, 0usize);
    let bf16_max = bf16::MAX.to_f32();
    for (e, &c) in counts.iter().enumerate() {
        for t in 0..c.max(0) as usize {
            for j in 0..n {
                let i = (e * t_cap + t) * n + j;
                let a = acc[i];
                if !a.is_finite() || a == 0.0 || a.abs() > bf16_max {
                    continue;
                }
                let df = d[i].to_f64();
                if !df.is_finite() {
                    return Err(format!("d[expert {e}, row {t}, col {j}] = {df} but the f32 accumulator is {a:e}"));
                }
                let err = (df - a as f64) / bf16_spacing(a);
                sum += err;
                sum_mag += err * (a.signum() as f64);
                count += 1;
            }
        }
    }
    let n = count.max(1) as f64;
    Ok(RoundingBias {
        elements: count,
        mean: sum / n,
        mean_toward_magnitude: sum_mag / n,
    })
}

/// SPEC §5.3's rounding of the epilogue, in aggregate: the backend's `d` on `c` against the naive
/// reference's f32 accumulators; both means of [`RoundingBias`] within ±[`BIAS_MAX`] over at
/// least [`BIAS_MIN_ELEMENTS`] elements (fewer is a bug of the case). Use it on random data,
/// e.g. [`GemmCase::rounding_bias_case`].
pub fn check_gemm_rounding_bias<B: Backend + ?Sized>(dut: &B, c: &GemmCase) -> Result<RoundingBias, String> {
    let p = &c.p;
    let len = p.experts() * p.capacity() * p.n();
    let mut acc = vec![f32::NAN; len];
    ref_ok(
        "grouped_gemm_accumulators",
        NaiveCpu.grouped_gemm_accumulators(p, c.inputs(), &mut acc),
    )?;
    let mut d = poison_bf16(len);
    dut_ok("grouped_gemm", dut.grouped_gemm(p, c.inputs(), &mut d))?;
    let b = rounding_bias(&d, &acc, p.capacity(), p.n(), &c.counts).map_err(|e| format!("rounding bias: {e}"))?;
    if b.elements < BIAS_MIN_ELEMENTS {
        return Err(format!(
            "rounding bias: only {} elements measured, at least {BIAS_MIN_ELEMENTS} needed (a bug of the case)",
            b.elements
        ));
    }
    if b.worst() > BIAS_MAX {
        return Err(format!(
            "rounding bias of the GEMM epilogue: mean error {:+.4} ulp, toward larger magnitude {:+.4} ulp over {} elements \
             (limit ±{BIAS_MAX}; round to nearest gives about 0, truncation about -0.5 toward larger magnitude)",
            b.mean, b.mean_toward_magnitude, b.elements
        ));
    }
    Ok(b)
}

impl GemmCase {
    /// A random-data case for [`check_gemm_rounding_bias`]: E = 2, T = 200, N = K = 256, counts
    /// `[200, 197]` (101,632 live elements), finite E4M3 codes over the whole range and sensible
    /// scales in a random format. About 26 million multiply-adds, a fraction of a second naive.
    pub fn rounding_bias_case(r: &mut Rng) -> Self {
        let (e, t, n, k) = (2, 200, 256, 256);
        let fmt = ScaleFormat::ALL[r.below(3)];
        let p = GroupedGemm::new(e, t, n, k, fmt).expect("valid shape");
        let a = r.e4m3s(e * t * k);
        let b = r.e4m3s(e * n * k);
        let sa = scales_for(r, fmt, e, t, p.k_blocks(), false);
        let sb = weight_scales(r, e * (n / 128) * (k / 128), false);
        Self {
            p,
            a,
            sa,
            b,
            sb,
            counts: vec![200, 197],
        }
    }
}

#[cfg(test)]
mod tests {
    use moe_core::format::bf16_out;
    use moe_ref_cpu::CpuBackend;

    use super::*;

    /// Truncation toward zero of an f32 to bf16 (NaN canonical, like `bf16_out`).
    fn truncate(x: f32) -> bf16 {
        if x.is_nan() {
            bf16::from_bits(0x7FC0)
        } else {
            bf16::from_bits((x.to_bits() >> 16) as u16)
        }
    }

    #[test]
    fn truncation_and_rounding_are_far_apart_on_the_bias_case() {
        for seed in 0..3 {
            let c = GemmCase::rounding_bias_case(&mut Rng::for_case(77, 0, seed));
            let p = &c.p;
            let len = p.experts() * p.capacity() * p.n();
            let mut acc = vec![0f32; len];
            CpuBackend::new().grouped_gemm_accumulators(p, c.inputs(), &mut acc).unwrap();
            let rounded: Vec<bf16> = acc.iter().map(|&a| bf16_out(a)).collect();
            let truncated: Vec<bf16> = acc.iter().map(|&a| truncate(a)).collect();
            let r = rounding_bias(&rounded, &acc, p.capacity(), p.n(), &c.counts).unwrap();
            let t = rounding_bias(&truncated, &acc, p.capacity(), p.n(), &c.counts).unwrap();
            // mean(bound / u): how far a one-signed pre-rounding error of c · bound could move a mean.
            let (mut d, mut bound) = (vec![bf16::ZERO; len], vec![0f64; len]);
            CpuBackend::new()
                .grouped_gemm_with_bound(p, c.inputs(), &mut d, &mut bound)
                .unwrap();
            let live: Vec<usize> = (0..len).filter(|&i| acc[i] != 0.0 && acc[i].is_finite()).collect();
            let ratio = live.iter().map(|&i| bound[i] / bf16_spacing(acc[i])).sum::<f64>() / live.len() as f64;
            eprintln!(
                "{}: rounding {:+.5} / {:+.5}, truncation {:+.5} / {:+.5} ulp over {} elements; mean(bound/u) {ratio:.1}, \
                 shift at c = 2^-25.3: {:.1e} ulp",
                p.scale_format(),
                r.mean,
                r.mean_toward_magnitude,
                t.mean,
                t.mean_toward_magnitude,
                r.elements,
                ratio * 2f64.powf(-25.3)
            );
            assert!(r.elements >= BIAS_MIN_ELEMENTS);
            assert!(r.worst() < 0.01, "{r:?}");
            assert!((-0.55..=-0.25).contains(&t.mean_toward_magnitude), "{t:?}");
            assert!(t.worst() > 4.0 * BIAS_MAX);
            assert!(ratio * 2f64.powf(-25.3) < BIAS_MAX / 50.0);
        }
    }

    #[test]
    fn the_reference_passes_and_too_few_elements_fail() {
        let c = GemmCase::rounding_bias_case(&mut Rng::new(3));
        let b = check_gemm_rounding_bias(&CpuBackend::new(), &c).unwrap();
        assert!(b.worst() < 0.01 && b.elements == 101_632, "{b:?}");
        // Too few elements is a failure of the case, not a pass.
        let small = GemmCase {
            counts: vec![3, 0],
            ..c.clone()
        };
        assert!(check_gemm_rounding_bias(&CpuBackend::new(), &small).unwrap_err().contains("only"));
    }

    #[test]
    fn spacing_is_the_bf16_ulp_of_the_binade() {
        assert_eq!(bf16_spacing(1.0), 2f64.powi(-7));
        assert_eq!(bf16_spacing(1.999), 2f64.powi(-7));
        assert_eq!(bf16_spacing(-3.0), 2f64.powi(-6));
        assert_eq!(bf16_spacing(f32::from_bits(1)), 2f64.powi(-133));
    }
}
