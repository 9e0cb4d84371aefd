//! The engine's one seeded generator (SplitMix64), with the value distributions of the random
//! cases (`moe diff`, the suites) and of the synthetic run (`moe run`'s router and sampling).
//! Seeded, so a case is reproduced from `(seed, index)`.
//!
//! Its state step and output mix are those of SplitMix64; [`mix64`] (the output mix alone) also
//! drives the counter-based generator of `weights::synth`.

use moe_core::{bf16, e4m3_to_f32};

/// SplitMix64's output function: a bijective mix of 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast, and good enough to spread test values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator of case `index` of a run seeded with `seed`.
    pub fn for_case(seed: u64, stream: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        for _ in 0..(index % 3) {
            r.next_u64();
        }
        Rng(r.next_u64() ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for the small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `0..=n`.
    pub fn up_to(&mut self, n: usize) -> usize {
        (self.next_u64() % (n as u64 + 1)) as usize
    }

    /// Uniform in `(0, 1]`, 24 random bits.
    pub fn unit_positive(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 1.0) * (1.0 / 16_777_216.0)
    }

    /// Shuffles `v` (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.up_to(i);
            v.swap(i, j);
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[-1, 1)`, 24 random bits.
    pub fn unit_signed(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A count in `0..=t`, biased towards the edges `0` and `t`.
    pub fn count(&mut self, t: usize) -> i32 {
        match self.below(5) {
            0 => 0,
            1 => t as i32,
            _ => self.range(0, t as i64) as i32,
        }
    }

    /// A finite "random data" value: `unit · 2^exp` with `exp` in `[-e, e]`.
    pub fn finite(&mut self, e: i64) -> f32 {
        self.unit_signed() * 2f32.powi(self.range(-e, e) as i32)
    }

    /// A value with the hard cases mixed in: E4M3 midpoints and codes at a power-of-two scale,
    /// ±0, subnormals, NaN, ±inf, ±448 and the 464 boundary, huge and tiny magnitudes.
    pub fn hard(&mut self, k: i32) -> f32 {
        let sign = if self.one_in(2) { -1.0 } else { 1.0 };
        let scale = 2f32.powi(k);
        let code = self.below(0x7F) as u8;
        match self.below(24) {
            0 => 0.0,
            1 => -0.0,
            2 => f32::NAN,
            3 => sign * f32::INFINITY,
            4 => sign * 448.0 * scale,
            5 => sign * 464.0 * scale,
            6 => sign * f32::from_bits(1 + self.below(0x7F_FFFF) as u32),
            7 => sign * f32::MAX,
            8..=11 => {
                // The midpoint between two adjacent E4M3 codes, exactly.
                let lo = e4m3_to_f32(code.min(0x7D)) as f64;
                let hi = e4m3_to_f32(code.min(0x7D) + 1) as f64;
                sign * ((lo + hi) / 2.0) as f32 * scale
            }
            12..=13 => sign * e4m3_to_f32(code.min(0x7E)) * scale,
            _ => self.unit_signed() * 448.0 * scale,
        }
    }

    /// `n` finite bf16 values.
    pub fn bf16s(&mut self, n: usize, e: i64) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.finite(e))).collect()
    }

    /// `n` E4M3 bytes of finite values, spread over the whole code range.
    pub fn e4m3s(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let b = self.next_u64() as u8;
                if b & 0x7F == 0x7F {
                    b & 0xF0
                } else {
                    b
                }
            })
            .collect()
    }
}
