//! The device helpers against moe-core on whole input ranges: `exp_f32` and the E4M3 encode on
//! all 2^32 f32 inputs (compared on the host, multithreaded), `vllm_ceil_pow2_bf16` on all
//! 2^16 bf16 patterns.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use moe_core::{bf16, e4m3_from_f32, exp_f32, vllm_ceil_pow2_bf16};

/// Mismatch count and the first few mismatches (input bits, gpu, cpu).
type Mismatches<T> = (usize, Vec<(u32, T, T)>);

/// Compares `gpu[i]` with `f(start + i)` on every core; returns the mismatches (up to 10) and
/// their count.
fn compare<T: Copy + PartialEq + Send + Sync + std::fmt::Debug>(start: u32, gpu: &[T], f: impl Fn(u32) -> T + Sync) -> Mismatches<T> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = gpu.len().div_ceil(threads);
    let results: Vec<Mismatches<T>> = std::thread::scope(|s| {
        let hs: Vec<_> = gpu
            .chunks(chunk.max(1))
            .enumerate()
            .map(|(ci, part)| {
                let f = &f;
                s.spawn(move || {
                    let mut n = 0;
                    let mut first = Vec::new();
                    for (j, &g) in part.iter().enumerate() {
                        let bits = start.wrapping_add((ci * chunk + j) as u32);
                        let c = f(bits);
                        if g != c {
                            n += 1;
                            if first.len() < 10 {
                                first.push((bits, g, c));
                            }
                        }
                    }
                    (n, first)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let n = results.iter().map(|r| r.0).sum();
    let first = results.into_iter().flat_map(|r| r.1).take(10).collect();
    (n, first)
}

#[test]
fn exp_f32_and_e4m3_encode_match_the_cpu_on_every_f32_input() {
    let Some(gpu) = gpu("exp_f32_exhaustive") else { return };
    // The small set (sanitizer runs) checks 2^24 inputs around 1.0 and the specials' region.
    let (chunk, chunks, base): (usize, u64, u32) = if small() { (1 << 22, 4, 0x3F00_0000) } else { (1 << 28, 16, 0) };
    let t0 = std::time::Instant::now();
    let mut out = vec![0f32; chunk];
    let mut bytes = vec![0u8; chunk];
    let mut scratch = None;
    let (mut bad_exp, mut bad_e4m3, mut checked) = (0usize, 0usize, 0u64);
    for c in 0..chunks {
        let start = base.wrapping_add((c * chunk as u64) as u32);
        gpu.exp_f32_range(start, &mut out, &mut scratch).unwrap();
        let (n, first) = compare(start, bytemuck::cast_slice::<f32, u32>(&out), |b| {
            exp_f32(f32::from_bits(b)).to_bits()
        });
        assert!(n == 0, "exp_f32: {n} mismatches in chunk {c}; first (bits, gpu, cpu): {first:x?}");
        bad_exp += n;
        gpu.e4m3_range(start, &mut bytes).unwrap();
        let (n, first) = compare(start, &bytes, |b| e4m3_from_f32(f32::from_bits(b)));
        assert!(n == 0, "e4m3: {n} mismatches in chunk {c}; first (bits, gpu, cpu): {first:x?}");
        bad_e4m3 += n;
        checked += chunk as u64;
    }
    println!(
        "EXP exp_f32 GPU == CPU bit for bit on {checked} inputs ({bad_exp} mismatches), {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    println!("E4M3 cvt.rn.satfinite.e4m3x2.f32 == e4m3_from_f32 on {checked} inputs ({bad_e4m3} mismatches)");
}

#[test]
fn vllm_ceil_scale_matches_the_cpu_for_every_bf16() {
    let Some(gpu) = gpu("vllm_ceil_table") else { return };
    let table = gpu.vllm_ceil_table().unwrap();
    let mut checked = 0;
    for b in 0u16..=u16::MAX {
        let s = bf16::from_bits(b);
        let c = vllm_ceil_pow2_bf16(s);
        let g = bf16::from_bits(table[b as usize]);
        assert!(
            g.to_bits() == c.to_bits(),
            "s = {s} ({b:#06x}): gpu {g} ({:#06x}), cpu {c} ({:#06x})",
            g.to_bits(),
            c.to_bits()
        );
        checked += 1;
    }
    println!("VLLM ceil scale GPU == CPU on all {checked} bf16 patterns (every bit pattern, signs and NaNs included)");
}
