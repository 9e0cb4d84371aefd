//! The router's gate (SPEC §5.7 step 1): `logits (M, Eg) = x (M, K) · gate.weight (Eg, K)ᵀ`.

use half::bf16;

use super::checks::{at_least, check_len, product, Result};

/// The canonical NaN every backend writes for a NaN logit (the hardware's own NaN bits differ).
pub const GATE_NAN_BITS: u32 = 0x7FC0_0000;

/// The gate GEMM of a MoE layer: `M` tokens of `K` bf16 values against `Eg` rows of the gate
/// weight (BF16 or F32 on disk, given widened to f32, which is exact).
///
/// Reference value (every backend bit-identical): each logit is the float64 sum, in increasing
/// `k`, of the exact products `f64(x[m, k]) · f64(w[e, k])` (8 by 24 significant bits, exact in
/// f64), rounded once to f32, with a NaN written as [`GATE_NAN_BITS`]. SPEC allows any f32 GEMM
/// within `ulp_f32 + 2^-16 · Σ|x·w|`; this project keeps the reference's order on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    m: usize,
    experts: usize,
    k: usize,
}

impl Gate {
    /// `tokens` rows (0 is an empty batch) of `k >= 1` values against `experts >= 1` gate rows.
    pub fn new(tokens: usize, experts: usize, k: usize) -> Result<Self> {
        at_least("gate", "Eg", experts, 1)?;
        at_least("x", "K", k, 1)?;
        product("x", &[tokens, k])?;
        product("gate", &[experts, k])?;
        product("logits", &[tokens, experts])?;
        Ok(Self { m: tokens, experts, k })
    }
    /// Tokens `M`.
    pub fn tokens(&self) -> usize {
        self.m
    }
    /// Gate rows `Eg`.
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// Hidden size `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Validates `x (M, K)`, `w (Eg, K)` and `logits (M, Eg)`.
    pub fn check(&self, x: &[bf16], w: &[f32], logits: &[f32]) -> Result<()> {
        check_len("x", x.len(), &[self.m, self.k])?;
        check_len("gate", w.len(), &[self.experts, self.k])?;
        check_len("logits", logits.len(), &[self.m, self.experts])
    }
}

/// One reference logit: `Σ_k f64(x_k)·f64(w_k)` in increasing `k`, rounded once to f32, a NaN
/// as [`GATE_NAN_BITS`]. `x` and `w` have the same length.
pub fn gate_logit(x: &[bf16], w: &[f32]) -> f32 {
    let mut acc = 0f64;
    for (a, b) in x.iter().zip(w) {
        acc += f64::from(a.to_f32()) * f64::from(*b);
    }
    finish_logit(acc)
}

/// The f32 logit of a float64 sum: rounded once, a NaN canonical.
pub fn finish_logit(acc: f64) -> f32 {
    let v = acc as f32;
    if v.is_nan() {
        f32::from_bits(GATE_NAN_BITS)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_by_tensor() {
        assert!(Gate::new(3, 0, 8).is_err());
        assert!(Gate::new(3, 4, 0).is_err());
        let g = Gate::new(3, 4, 8).unwrap();
        let x = vec![bf16::ZERO; 24];
        let w = vec![0f32; 32];
        assert!(g.check(&x, &w, &[0.0; 12]).is_ok());
        assert_eq!(g.check(&x[1..], &w, &[0.0; 12]).unwrap_err().tensor(), "x");
        assert_eq!(g.check(&x, &w[1..], &[0.0; 12]).unwrap_err().tensor(), "gate");
        assert_eq!(g.check(&x, &w, &[0.0; 11]).unwrap_err().tensor(), "logits");
        assert!(Gate::new(0, 4, 8).is_ok());
    }

    #[test]
    fn a_logit_is_the_exact_sum_rounded_once() {
        // 1 + 2^-30 - 1 in f32 steps would lose the middle term; in f64 it is kept, and the
        // final rounding of 2^-30 to f32 is exact.
        let x = [bf16::ONE, bf16::ONE, bf16::ONE];
        let w = [1.0f32, 2f32.powi(-30), -1.0];
        assert_eq!(gate_logit(&x, &w), 2f32.powi(-30));
        let nan = gate_logit(&[bf16::INFINITY, bf16::ONE], &[1.0, f32::NEG_INFINITY]);
        assert_eq!(nan.to_bits(), GATE_NAN_BITS);
        assert_eq!(gate_logit(&[bf16::INFINITY], &[2.0]), f32::INFINITY);
    }
}
