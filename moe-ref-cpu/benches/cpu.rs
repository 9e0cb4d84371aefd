//! Criterion benchmarks of the fast CPU reference, with the machine's float64 FMA peak measured
//! in the same run (the GEMM target is at least half of it).
//!
//! `cargo bench -p moe-ref-cpu --bench cpu`; each benchmark prints its throughput, and
//! `docs/benchmarks.md` records the figures with the machine they came from.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moe_core::format::e4m3_from_f32;
use moe_core::*;
use moe_ref_cpu::CpuBackend;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use std::hint::black_box;

#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;

/// Independent FMA chains on the widest vectors this CPU has (pulp dispatches at run time).
struct FmaPeak {
    iters: usize,
}

impl WithSimd for FmaPeak {
    type Output = (f64, usize);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let a = simd.splat_f64s(0.999_999_9);
        let b = simd.splat_f64s(1e-9);
        let mut acc = [simd.splat_f64s(1.0); 16];
        for _ in 0..self.iters {
            for x in acc.iter_mut() {
                *x = simd.mul_add_f64s(*x, a, b);
            }
        }
        let mut s = simd.splat_f64s(0.0);
        for x in acc {
            s = simd.add_f64s(s, x);
        }
        let lanes = std::mem::size_of::<S::f64s>() / 8;
        (simd.reduce_sum_f64s(s), lanes)
    }
}

fn lanes() -> usize {
    Arch::new().dispatch(FmaPeak { iters: 1 }).1
}

fn fma_peak(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let iters = 1 << 16;
    let lanes = lanes();
    let mut g = c.benchmark_group("fma_peak_f64");
    g.bench_function(BenchmarkId::new("one_thread", format!("{lanes}lanes")), |bch| {
        bch.iter(|| Arch::new().dispatch(FmaPeak { iters: black_box(iters) }).0)
    });
    // 16 chains × lanes × 2 flops per FMA, on every thread.
    g.throughput(Throughput::Elements((iters * 16 * lanes * 2 * threads) as u64));
    g.bench_function(BenchmarkId::new("all_threads", format!("{threads}x{lanes}lanes")), |bch| {
        bch.iter(|| {
            (0..threads)
                .into_par_iter()
                .map(|_| Arch::new().dispatch(FmaPeak { iters: black_box(iters) }).0)
                .sum::<f64>()
        })
    });
    g.finish();
}

fn grouped_gemm(c: &mut Criterion) {
    let (e, t, k, n) = (8, 64, 7168, 4096);
    let mut rng = Rng(7);
    let a: Vec<u8> = (0..e * t * k).map(|_| e4m3_from_f32(rng.normal_ish() * 100.0)).collect();
    let b: Vec<u8> = (0..e * n * k).map(|_| e4m3_from_f32(rng.normal_ish() * 100.0)).collect();
    let sa = vec![0.01f32; e * (k / 128) * t];
    let sb = vec![0.001f32; e * (n / 128) * (k / 128)];
    let counts = vec![t as i32; e];
    let mut d = vec![bf16::ZERO; e * t * n];
    let p = GroupedGemm::new(e, t, n, k, ScaleFormat::F32).unwrap();
    let be = CpuBackend::new();
    let mut g = c.benchmark_group("grouped_gemm");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * e * t * n * k) as u64));
    g.bench_function(BenchmarkId::new("E8_T64_K7168_N4096", "flops"), |bch| {
        let inputs = GemmInputs {
            a: &a,
            sa: Scales::F32(&sa),
            b: WeightsRef { q: &b, s: &sb },
            counts: &counts,
        };
        bch.iter(|| be.grouped_gemm(&p, inputs, &mut d).unwrap())
    });
    g.finish();
}

fn silu_mul_quant(c: &mut Criterion) {
    let (e, t, h) = (8, 64, 2048);
    let mut rng = Rng(8);
    let y: Vec<bf16> = (0..e * t * 2 * h).map(|_| bf16::from_f32(rng.normal_ish() * 4.0)).collect();
    let counts = vec![t as i32; e];
    let mut g = c.benchmark_group("silu_mul_quant");
    // Input bf16 (2H per row) + output E4M3 (H per row) + f32 scales.
    g.throughput(Throughput::Bytes((e * t * (4 * h + h + 4 * h / 128)) as u64));
    // The per-core figure is the one-thread run; the all-threads run shows the scaling.
    for (label, be) in [
        ("1thread", CpuBackend::with_threads(1).unwrap()),
        ("all_threads", CpuBackend::new()),
    ] {
        for numerics in Numerics::ALL {
            for fmt in [ScaleFormat::F32, ScaleFormat::F32CeilUe8m0] {
                let p = SiluMulQuant::new(e, t, h, fmt, numerics).unwrap();
                let mut q = vec![0u8; e * t * h];
                let mut s = vec![0f32; e * (h / 128) * t];
                g.bench_function(BenchmarkId::new(format!("E8_T64_H2048_{numerics}_{label}"), fmt.name()), |bch| {
                    bch.iter(|| be.silu_mul_quant(&p, &y, &counts, &mut q, ScalesMut::F32(&mut s)).unwrap())
                });
            }
        }
    }
    g.finish();
}

fn token_group_quant(c: &mut Criterion) {
    let (rows, k) = (512, 7168);
    let mut rng = Rng(9);
    let x: Vec<bf16> = (0..rows * k).map(|_| bf16::from_f32(rng.normal_ish())).collect();
    let be = CpuBackend::new();
    let p = TokenGroupQuant::new(rows, k, ScaleFormat::F32, ScaleLayout::MnMajor).unwrap();
    let mut q = vec![0u8; rows * k];
    let mut s = vec![0f32; rows * k / 128];
    let mut g = c.benchmark_group("token_group_quant");
    g.throughput(Throughput::Bytes((rows * (2 * k + k + 4 * k / 128)) as u64));
    g.bench_function(BenchmarkId::new("rows512_K7168", "bf16"), |bch| {
        bch.iter(|| {
            be.token_group_quant(&p, Activation::Bf16(&x), &mut q, ScalesMut::F32(&mut s))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, fma_peak, grouped_gemm, silu_mul_quant, token_group_quant);
criterion_main!(benches);
