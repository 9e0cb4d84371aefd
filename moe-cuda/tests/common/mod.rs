//! Shared pieces of the GPU tests: the device (or a counted, visible skip), a small seeded
//! random generator, input generators with special values, and comparison helpers.
// Each test binary (`gemm`, `selftest`) uses its own subset of these helpers; the rest would
// be reported as dead code in that binary.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use moe_core::{bf16, DeviceError};
use moe_cuda::CudaBackend;

static SKIPS: AtomicUsize = AtomicUsize::new(0);

/// The GPU backend, or `None` after printing a counted skip. With `MOE_REQUIRE_GPU=1` a missing
/// GPU fails the test instead.
pub fn gpu(test: &str) -> Option<&'static CudaBackend> {
    static B: OnceLock<Result<CudaBackend, DeviceError>> = OnceLock::new();
    match B.get_or_init(CudaBackend::new) {
        Ok(b) => Some(b),
        Err(DeviceError::NoDevice { reason }) => {
            if std::env::var("MOE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MOE_REQUIRE_GPU=1 but no CUDA device: {reason}");
            }
            let n = SKIPS.fetch_add(1, Ordering::SeqCst) + 1;
            // Written to the process's stderr directly, so the test harness does not capture it.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: no CUDA device ({test}: {reason}) [skip #{n} in this binary]"
            );
            None
        }
        Err(e) => panic!("CUDA backend failed to start: {e}"),
    }
}

/// `MOE_CUDA_SMALL=1`: the small case set (for compute-sanitizer).
pub fn small() -> bool {
    std::env::var("MOE_CUDA_SMALL").as_deref() == Ok("1")
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, times a random power-of-two magnitude in 2^[lo, hi].
    pub fn value(&mut self, lo: i32, hi: i32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        let e = lo + self.below((hi - lo + 1) as usize) as i32;
        s * 2f32.powi(e)
    }
}

/// Values with a sprinkling of specials (NaN, infinities, zeros, subnormals, huge, ties).
pub fn values_with_specials(rng: &mut Rng, n: usize, specials: bool) -> Vec<f32> {
    let sp = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -3e-39,
        1e30,
        -7e37,
        448.0,
        464.0,
        1e-10,
        f32::MAX,
    ];
    (0..n)
        .map(|_| {
            if specials && rng.below(97) == 0 {
                sp[rng.below(sp.len())]
            } else {
                rng.value(-12, 6)
            }
        })
        .collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Random E4M3 bytes, never NaN.
pub fn e4m3_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| loop {
            let b = rng.u64() as u8;
            if b & 0x7F != 0x7F {
                break b;
            }
        })
        .collect()
}

/// Random counts in [0, T], forcing one 0 and one T when there are enough experts.
pub fn counts(rng: &mut Rng, e: usize, t: usize) -> Vec<i32> {
    let mut c: Vec<i32> = (0..e).map(|_| rng.below(t + 1) as i32).collect();
    if e >= 2 {
        c[0] = 0;
        c[1] = t as i32;
    }
    c
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use moe_core::{calc_diff_bf16 as calc_diff, ulp_bf16};

pub fn bits_u16(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Index and values of the first difference of two equal-length slices, if any.
pub fn first_diff<T: PartialEq + Copy + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<(usize, T, T)> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| (i, a[i], b[i]))
}

#[track_caller]
pub fn assert_same<T: PartialEq + Copy + std::fmt::Debug>(what: &str, gpu: &[T], cpu: &[T]) {
    if let Some((i, g, c)) = first_diff(gpu, cpu) {
        let n = gpu.iter().zip(cpu).filter(|(x, y)| x != y).count();
        panic!("{what}: {n} of {} elements differ; first at {i}: gpu {g:?}, cpu {c:?}", gpu.len());
    }
}

/// Checks the SPEC §5.3 bound with constant `c` for every element and returns the largest
/// observed `(|d_gpu - d_ref| - ulp(d_ref)) / bound` (0 if every error is within one ulp).
#[track_caller]
pub fn check_gemm_bound(what: &str, gpu: &[bf16], cpu: &[bf16], bound: &[f64], c: f64) -> f64 {
    let mut worst = 0f64;
    let mut bad = Vec::new();
    for i in 0..gpu.len() {
        let (g, r) = (gpu[i], cpu[i]);
        if g.to_bits() == r.to_bits() {
            continue;
        }
        let (gv, rv) = (g.to_f64(), r.to_f64());
        if gv.is_nan() || rv.is_nan() {
            bad.push((i, g, r, f64::NAN));
            continue;
        }
        let excess = (gv - rv).abs() - ulp_bf16(r);
        if excess <= 0.0 {
            continue;
        }
        let ratio = if bound[i] > 0.0 { excess / bound[i] } else { f64::INFINITY };
        worst = worst.max(ratio);
        if ratio > c {
            bad.push((i, g, r, ratio));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} elements outside the bound (c = {c:e}); first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    worst
}

pub const C_MAX: f64 = 1.0 / 4096.0;
