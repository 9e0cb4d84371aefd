//! Where the cases run: the [`Target`] trait, and its CPU implementation (wall clock, a cache
//! sweep before each flushed sample; the CUDA one is `bench::gpu`).

use std::time::Instant;

use half::bf16;
use moe_core::{
    Activation, Backend, BatchedExperts, BlockQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace, Finalize, Prepare, ScaleBuf, Scales,
    SiluMulQuant, WeightsRef,
};
use moe_ref_cpu::CpuBackend;
use rayon::prelude::*;

use super::data::GemmData;
use super::report::{Ceiling, DeviceSummary};
use super::stats::Stats;
use super::BenchConfig;
use crate::error::EngineError;

/// Block quantization's outputs: `q` and its f32 scales.
pub type QuantOut = (Vec<u8>, Vec<f32>);

/// One measured unit: its timing, its output (for the check) and its kernel configuration.
#[derive(Debug)]
pub struct Measured<T> {
    /// The timing.
    pub stats: Stats,
    /// The output of the last run.
    pub out: T,
    /// The configuration the kernel ran with.
    pub config: String,
}

/// The inputs of one experts-stage case.
#[derive(Debug)]
pub struct StageInputs {
    /// `(E, T, K)` E4M3.
    pub a1q: Vec<u8>,
    /// Activation scales.
    pub a1s: ScaleBuf,
    /// `(E, 2I, K)` and its scales.
    pub w1: (Vec<u8>, Vec<f32>),
    /// `(E, K, I)` and its scales.
    pub w2: (Vec<u8>, Vec<f32>),
    /// Live rows.
    pub counts: Vec<i32>,
}

impl StageInputs {
    /// As moe-core's borrowed inputs.
    pub fn view(&self) -> ExpertsInputs<'_> {
        ExpertsInputs {
            a1q: &self.a1q,
            a1s: self.a1s.view(),
            w1: WeightsRef {
                q: &self.w1.0,
                s: &self.w1.1,
            },
            w2: WeightsRef {
                q: &self.w2.0,
                s: &self.w2.1,
            },
            counts: &self.counts,
        }
    }
}

/// A backend the bench can time.
pub trait Target {
    /// The device, clocks and the baseline library.
    fn summary(&self) -> DeviceSummary;
    /// How samples are taken, in one sentence.
    fn method(&self) -> String;
    /// Bytes written by each cache flush.
    fn flush_bytes(&self) -> u64;
    /// Whether outputs must be checked against the CPU reference (not for the CPU itself).
    fn needs_check(&self) -> bool;
    /// The ceilings, measured now.
    fn ceilings(&mut self, cfg: &BenchConfig) -> Vec<Ceiling>;
    /// Our grouped GEMM: `d (E, T, N)`.
    fn gemm(&mut self, cfg: &BenchConfig, g: &GemmData) -> Result<Measured<Vec<bf16>>, EngineError>;
    /// The cuBLASLt loop on the same inputs: `d (E, T, N)`, or why it cannot run.
    fn gemm_baseline(&mut self, cfg: &BenchConfig, g: &GemmData) -> Result<Measured<Vec<bf16>>, String>;
    /// SiLU-mul-quant: `q` and its scales.
    fn silu(
        &mut self,
        cfg: &BenchConfig,
        p: &SiluMulQuant,
        y: &[bf16],
        counts: &[i32],
    ) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError>;
    /// Prepare's quantization: `a1q`, its scales.
    fn prepare(&mut self, cfg: &BenchConfig, p: &Prepare, x: &[bf16], ids: &[i32]) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError>;
    /// Finalize: `out (M, K)`.
    fn finalize(
        &mut self,
        cfg: &BenchConfig,
        p: &Finalize,
        eo: &[bf16],
        ids: &[i32],
        w: &[f32],
    ) -> Result<Measured<Vec<bf16>>, EngineError>;
    /// Block quantization: `q` and `s`.
    fn block_quant(&mut self, cfg: &BenchConfig, p: &BlockQuant, w: &[bf16]) -> Result<Measured<QuantOut>, EngineError>;
    /// The experts stage: `out (E, T, K)`.
    fn stage(&mut self, cfg: &BenchConfig, p: &ExpertsStage, s: &StageInputs) -> Result<Measured<Vec<bf16>>, EngineError>;
}

/// The CPU backend timed by the wall clock.
#[derive(Debug)]
pub struct CpuTarget {
    cpu: CpuBackend,
    sweep: Vec<u8>,
}

/// Bytes the CPU's cache sweep writes before each flushed sample (beyond any L3).
const CPU_SWEEP_BYTES: usize = 64 << 20;

impl CpuTarget {
    /// The fast CPU backend on rayon's global pool.
    pub fn new() -> Self {
        CpuTarget {
            cpu: CpuBackend::new(),
            sweep: vec![0u8; CPU_SWEEP_BYTES],
        }
    }

    fn sweep(&mut self) {
        let s = self.sweep[0].wrapping_add(1);
        self.sweep.par_chunks_mut(1 << 20).for_each(|c| c.fill(s));
    }

    /// Times `f` (warm-up, flushed samples, warm samples), keeping the last output.
    fn time<T>(&mut self, cfg: &BenchConfig, mut f: impl FnMut(&CpuBackend) -> Result<T, EngineError>) -> Result<(Stats, T), EngineError> {
        let mut out = None;
        for _ in 0..cfg.warmup.max(1) {
            out = Some(f(&self.cpu)?);
        }
        let (mut flushed, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..cfg.samples {
            self.sweep();
            let t = Instant::now();
            out = Some(f(&self.cpu)?);
            flushed.push(t.elapsed().as_secs_f64() * 1e6);
        }
        for _ in 0..cfg.samples {
            let t = Instant::now();
            out = Some(f(&self.cpu)?);
            warm.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let stats = Stats::from_samples(&flushed, &warm).ok_or_else(|| crate::InputError::Usage("--samples must be at least 1".into()))?;
        Ok((stats, out.expect("at least one run")))
    }
}

impl Default for CpuTarget {
    fn default() -> Self {
        Self::new()
    }
}

fn cpu_config(what: &str) -> String {
    format!("CpuBackend {what}, {} rayon threads", rayon::current_num_threads())
}

impl Target for CpuTarget {
    fn summary(&self) -> DeviceSummary {
        DeviceSummary {
            backend: "cpu".into(),
            name: std::env::consts::ARCH.to_string() + " CPU",
            units: rayon::current_num_threads() as u64,
            cublaslt: "not applicable on the CPU".into(),
            ..DeviceSummary::default()
        }
    }

    fn method(&self) -> String {
        format!(
            "wall clock per call; before each flushed sample a {} MiB cache sweep",
            CPU_SWEEP_BYTES >> 20
        )
    }

    fn flush_bytes(&self) -> u64 {
        CPU_SWEEP_BYTES as u64
    }

    fn needs_check(&self) -> bool {
        false
    }

    fn ceilings(&mut self, cfg: &BenchConfig) -> Vec<Ceiling> {
        let n = if cfg.tiny { 16 << 20 } else { 256 << 20 };
        let src = vec![1u8; n];
        let mut dst = vec![0u8; n];
        let mut copy = Vec::new();
        let mut read = Vec::new();
        for _ in 0..cfg.samples.max(1) {
            let t = Instant::now();
            dst.par_chunks_mut(1 << 20)
                .zip(src.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            copy.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let x = src
                .par_chunks(1 << 20)
                .map(|c| c.iter().fold(0u8, |a, &b| a ^ b))
                .reduce(|| 0, |a, b| a ^ b);
            read.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(x);
        }
        std::hint::black_box(&dst);
        let mk = |name: &str, v: &[f64], bytes: f64, detail: &str| {
            let stats = Stats::from_samples(v, &[]);
            Ceiling {
                name: name.into(),
                unit: "GB/s",
                value: stats.map(|s| bytes / s.median_us / 1e3),
                stats,
                detail: detail.into(),
            }
        };
        vec![
            mk(
                "copy",
                &copy,
                2.0 * n as f64,
                &format!("{} MiB memcpy on every thread (read + write)", n >> 20),
            ),
            mk(
                "read",
                &read,
                n as f64,
                &format!("{} MiB XOR-fold on every thread (read only)", n >> 20),
            ),
            Ceiling {
                name: "fp8-gemm-block".into(),
                unit: "TFLOP/s",
                value: None,
                stats: None,
                detail: "no FP8 GEMM library on the CPU".into(),
            },
        ]
    }

    fn gemm(&mut self, cfg: &BenchConfig, g: &GemmData) -> Result<Measured<Vec<bf16>>, EngineError> {
        let mut d = vec![bf16::ZERO; g.a.len() / g.p.k() * g.p.n()];
        let (stats, ()) = self.time(cfg, |cpu| {
            Ok(cpu.grouped_gemm(
                &g.p,
                moe_core::GemmInputs {
                    a: &g.a,
                    sa: Scales::F32(&g.sa),
                    b: moe_core::WeightsRef { q: &g.w.b, s: &g.w.sb },
                    counts: &g.counts,
                },
                &mut d,
            )?)
        })?;
        Ok(Measured {
            stats,
            out: d,
            config: cpu_config("grouped GEMM (f64 block partials through faer)"),
        })
    }

    fn gemm_baseline(&mut self, _cfg: &BenchConfig, _g: &GemmData) -> Result<Measured<Vec<bf16>>, String> {
        Err("cuBLASLt unavailable: the CPU backend has no GPU".into())
    }

    fn silu(
        &mut self,
        cfg: &BenchConfig,
        p: &SiluMulQuant,
        y: &[bf16],
        counts: &[i32],
    ) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError> {
        let mut q = vec![0u8; p.experts() * p.capacity() * p.h()];
        let mut s = ScaleBuf::zeros(p.scale_format(), p.scale_shape().iter().product());
        let (stats, ()) = self.time(cfg, |cpu| Ok(cpu.silu_mul_quant(p, y, counts, &mut q, s.view_mut())?))?;
        Ok(Measured {
            stats,
            out: (q, s),
            config: cpu_config("SiLU-mul-quant"),
        })
    }

    fn prepare(&mut self, cfg: &BenchConfig, p: &Prepare, x: &[bf16], ids: &[i32]) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError> {
        let mut q = vec![0u8; p.experts() * p.capacity() * p.k()];
        let mut s = ScaleBuf::zeros(p.scale_format(), p.quant().scale_shape().iter().product());
        let mut c = vec![0i32; p.experts()];
        let (stats, ()) = self.time(cfg, |cpu| Ok(cpu.prepare(p, x, ids, &mut q, s.view_mut(), &mut c)?))?;
        Ok(Measured {
            stats,
            out: (q, s),
            config: cpu_config("prepare (routing + token-group quant)"),
        })
    }

    fn finalize(
        &mut self,
        cfg: &BenchConfig,
        p: &Finalize,
        eo: &[bf16],
        ids: &[i32],
        w: &[f32],
    ) -> Result<Measured<Vec<bf16>>, EngineError> {
        let mut out = vec![bf16::ZERO; p.tokens() * p.k()];
        let (stats, ()) = self.time(cfg, |cpu| Ok(cpu.finalize(p, eo, ids, w, &mut out)?))?;
        Ok(Measured {
            stats,
            out,
            config: cpu_config("finalize"),
        })
    }

    fn block_quant(&mut self, cfg: &BenchConfig, p: &BlockQuant, w: &[bf16]) -> Result<Measured<QuantOut>, EngineError> {
        let mut q = vec![0u8; w.len()];
        let mut s = vec![0f32; p.scale_shape().iter().product()];
        let (stats, ()) = self.time(cfg, |cpu| Ok(cpu.block_quant(p, Activation::Bf16(w), &mut q, &mut s)?))?;
        Ok(Measured {
            stats,
            out: (q, s),
            config: cpu_config("block quantization"),
        })
    }

    fn stage(&mut self, cfg: &BenchConfig, p: &ExpertsStage, s: &StageInputs) -> Result<Measured<Vec<bf16>>, EngineError> {
        let mut ws = ExpertsWorkspace::new(p);
        let mut out = vec![bf16::ZERO; p.workspace_shapes().output.iter().product()];
        let (stats, ()) = self.time(cfg, |cpu| Ok(cpu.apply(p, s.view(), &mut ws, &mut out)?))?;
        Ok(Measured {
            stats,
            out,
            config: cpu_config("experts stage (GEMM1, SiLU-mul-quant, GEMM2)"),
        })
    }
}
