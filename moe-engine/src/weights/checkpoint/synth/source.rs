//! Where the bytes of each synthetic tensor come from: the seeded generator of
//! [`crate::weights::synth`] (quantized by SPEC §4 for FP8), or, for checkpoints of many
//! gigabytes, E4M3 bytes and scales straight from a counter hash.

use half::bf16;
use moe_core::{Activation, Backend, BlockQuant};
use moe_ref_cpu::CpuBackend;
use rayon::prelude::*;

use crate::error::EngineError;
use crate::rng::mix64;
use crate::weights::synth::{fill, value};

/// Bytes generated per parallel task.
const CHUNK: usize = 1 << 16;

/// The generator of one tensor's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Source {
    /// BF16 values of the seeded stream `key`, times `scale`.
    Bf16 { key: u64, scale: f32 },
    /// BF16 ones (norm weights).
    Ones,
    /// F32 values of the seeded stream `key` (bf16-precise), times `scale`.
    F32 { key: u64, scale: f32 },
    /// The E4M3 bytes of the block quantization (SPEC §4) of the `(rows, cols)` BF16 values of
    /// [`Source::Bf16`] `{ key, scale }`.
    QuantQ { key: u64, scale: f32, rows: usize, cols: usize },
    /// The f32 scales of that quantization.
    QuantS { key: u64, scale: f32, rows: usize, cols: usize },
    /// E4M3 bytes of a counter hash, every finite code alike (NaN codes become zeros).
    HashE4m3 { key: u64 },
    /// f32 scales of a counter hash, uniform in `[1e-3, 1e-2)`.
    HashScale { key: u64 },
}

/// The stream of tensor `name`: a 64-bit FNV-1a hash of its name, so that every tensor has its
/// own values whatever the order it is written in.
pub(super) fn name_stream(name: &str) -> u64 {
    name.bytes()
        .fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

fn bf16_values(key: u64, scale: f32, n: usize) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; n];
    fill(key, 0, scale, &mut v);
    v
}

fn block_quant(key: u64, scale: f32, rows: usize, cols: usize) -> Result<(Vec<u8>, Vec<f32>), EngineError> {
    let p = BlockQuant::new(1, rows, cols, false)?;
    let [_, rb, cb] = p.scale_shape();
    let (mut q, mut s) = (vec![0u8; rows * cols], vec![0f32; rb * cb]);
    CpuBackend::new().block_quant(&p, Activation::Bf16(&bf16_values(key, scale, rows * cols)), &mut q, &mut s)?;
    Ok((q, s))
}

fn put_le<const N: usize>(out: &mut [u8], vals: impl IndexedParallelIterator<Item = [u8; N]>) {
    out.par_chunks_exact_mut(N).zip(vals).for_each(|(o, b)| o.copy_from_slice(&b));
}

impl Source {
    /// Writes the tensor's little-endian bytes into `out` (its whole data, sized by the caller
    /// from the dtype and shape).
    pub fn generate(&self, out: &mut [u8]) -> Result<(), EngineError> {
        match *self {
            Source::Bf16 { key, scale } => {
                let v = bf16_values(key, scale, out.len() / 2);
                put_le(out, v.par_iter().map(|x| x.to_bits().to_le_bytes()));
            }
            Source::Ones => put_le(out, rayon::iter::repeat_n(bf16::ONE.to_bits().to_le_bytes(), out.len() / 2)),
            Source::F32 { key, scale } => {
                let n = out.len() / 4;
                put_le(
                    out,
                    (0..n)
                        .into_par_iter()
                        .map(|i| (value(key, i as u64).to_f32() * scale).to_le_bytes()),
                );
            }
            Source::QuantQ { key, scale, rows, cols } => out.copy_from_slice(&block_quant(key, scale, rows, cols)?.0),
            Source::QuantS { key, scale, rows, cols } => {
                let s = block_quant(key, scale, rows, cols)?.1;
                put_le(out, s.par_iter().map(|x| x.to_le_bytes()));
            }
            Source::HashE4m3 { key } => out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
                let base = (c * CHUNK / 8) as u64;
                for (j, w) in o.chunks_mut(8).enumerate() {
                    let h = mix64(key ^ (base + j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
                    for (b, &x) in w.iter_mut().zip(&h) {
                        *b = if x & 0x7F == 0x7F { x & 0x80 } else { x };
                    }
                }
            }),
            Source::HashScale { key } => {
                let n = out.len() / 4;
                put_le(
                    out,
                    (0..n).into_par_iter().map(|i| {
                        let u = (mix64(key ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 40) as f32 * (1.0 / 16_777_216.0);
                        (1e-3f32 + 9e-3 * u).to_le_bytes()
                    }),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_bytes_are_reproducible_and_never_nan() {
        let mut a = vec![0u8; 3 * CHUNK + 5];
        let mut b = a.clone();
        Source::HashE4m3 { key: 9 }.generate(&mut a).unwrap();
        Source::HashE4m3 { key: 9 }.generate(&mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x & 0x7F != 0x7F));
        assert!(a.iter().filter(|&&x| x == 0x7E).count() > 0, "the whole code range is used");
        let mut s = vec![0u8; 4 * 1000];
        Source::HashScale { key: 3 }.generate(&mut s).unwrap();
        let s = crate::weights::safetensors::decode_f32(&s);
        assert!(s.iter().all(|&x| (1e-3..1e-2).contains(&x)));
    }

    #[test]
    fn quantized_sources_are_the_block_quantization_of_the_bf16_source() {
        let (key, scale, rows, cols) = (5, 0.1, 256, 384);
        let mut w = vec![0u8; rows * cols * 2];
        Source::Bf16 { key, scale }.generate(&mut w).unwrap();
        let w = crate::weights::safetensors::decode_bf16(&w);
        let p = BlockQuant::new(1, rows, cols, false).unwrap();
        let (mut q, mut s) = (vec![0u8; rows * cols], vec![0f32; 6]);
        moe_ref_cpu::NaiveCpu.block_quant(&p, Activation::Bf16(&w), &mut q, &mut s).unwrap();
        let mut q2 = vec![0u8; rows * cols];
        let mut s2 = vec![0u8; 24];
        Source::QuantQ { key, scale, rows, cols }.generate(&mut q2).unwrap();
        Source::QuantS { key, scale, rows, cols }.generate(&mut s2).unwrap();
        assert_eq!(q, q2);
        assert_eq!(s, crate::weights::safetensors::decode_f32(&s2));
    }
}
