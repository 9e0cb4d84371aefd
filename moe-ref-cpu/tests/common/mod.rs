//! The seeded generator of this crate's tests and benchmarks (SplitMix64, so they need no
//! dependency), mounted by the benchmarks with `#[path = "../tests/common/mod.rs"] mod common;`.
// Each test binary and the benchmarks use their own subset of the generators; the rest would be
// reported as dead code in that binary.
#![allow(dead_code)]

use moe_core::bf16;
use moe_core::format::e4m3_from_f32;

/// SplitMix64 seeded with the state itself.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A sum of four uniforms in `[-0.5, 0.5)`: cheap and bell-shaped, within `[-2, 2)`.
    pub fn normal_ish(&mut self) -> f32 {
        (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).sum::<f32>()
    }

    /// A value with a wide dynamic range, sometimes special.
    pub fn val(&mut self) -> f32 {
        let r = self.next();
        match r % 64 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::NAN,
            3 => f32::INFINITY,
            4 => 448.0 * if r & 256 != 0 { -1.0 } else { 1.0 },
            _ => {
                let m = ((r >> 8) % 2000) as f32 / 1000.0 - 1.0;
                let e = ((r >> 24) % 24) as i32 - 12;
                m * 2f32.powi(e)
            }
        }
    }

    /// `n` of [`Rng::val`] rounded to bf16.
    pub fn bf16s(&mut self, n: usize) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.val())).collect()
    }

    /// `n` E4M3 codes of [`Rng::val`] clamped and scaled, so that every magnitude occurs.
    pub fn e4m3s(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| e4m3_from_f32(self.val().clamp(-500.0, 500.0) * 8.0)).collect()
    }
}
