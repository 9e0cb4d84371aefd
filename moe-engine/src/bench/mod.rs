//! `moe bench`: every operation of the stage measured against ceilings taken in the same run
//! and, for the GEMM, against the cuBLASLt per-expert loop a user would pick instead.
//!
//! [`run`] measures the ceilings first, then every case of the chosen suites ([`cases`]) on a
//! [`Target`] (the GPU through `moe_cuda::bench`, or the CPU by the wall clock with smaller
//! shapes), checks each output against the CPU reference ([`data`]), and returns a
//! [`BenchReport`] that renders as a table, a JSON document ([`schema`],
//! `docs/bench-schema.md`) and an SVG roofline ([`svg`]). The method and every formula are in
//! `docs/benchmarks.md`.

use std::sync::Arc;

use half::bf16;
use moe_core::{
    BatchedExperts, BlockQuant, ExpertsStage, ExpertsWorkspace, Finalize, GroupedGemm, Numerics, Prepare, ScaleFormat, SiluMulQuant, GROUP,
};
use moe_ref_cpu::CpuBackend;

pub mod cases;
pub mod data;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod report;
pub mod schema;
pub mod stats;
pub mod svg;
pub mod target;

pub use cases::{Case, Counts, Op, Suite};
pub use report::{BenchReport, Row};

use crate::device::{Device, GemmContract};
use crate::error::{EngineError, InputError};
use crate::rng::Rng;
use data::{check_baseline, check_bits, check_both, check_ours, cpu_is_reference, reference_rows, sample_rows, GemmData, HostWeights};
use moe_core::calc_diff_bf16 as calc_diff;
pub use moe_cuda::GemmKernel;
use report::{Baseline, Ceiling, Check};
use target::{CpuTarget, Measured, StageInputs, Target};

/// What `moe bench` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Suites, in order (`layer` is reported as not yet available).
    pub suites: Vec<Suite>,
    /// Custom shapes (`--shape`), run with `counts`.
    pub shapes: Vec<Op>,
    /// Distribution of the custom shapes' counts.
    pub counts: Counts,
    /// Flushed (and as many warm) samples per unit; at least 1.
    pub samples: usize,
    /// Warm-up runs per unit.
    pub warmup: usize,
    /// Seed of every input.
    pub seed: u64,
    /// Tiny shapes and buffers (the CI smoke run).
    pub tiny: bool,
    /// Bytes of the GPU's L2 flush (at least 256 MiB).
    pub flush_bytes: usize,
    /// The CUDA GEMM kernel the GEMM and experts-stage cases run (`--gemm`); GEMM results are
    /// checked by that kernel's own contract.
    pub gemm_kernel: GemmKernel,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            suites: Vec::new(),
            shapes: Vec::new(),
            counts: Counts::AllLive,
            samples: 30,
            warmup: 5,
            seed: 0,
            tiny: false,
            flush_bytes: 512 << 20,
            gemm_kernel: GemmKernel::MmaSync,
        }
    }
}

/// The cases `cfg` asks for on a backend, with the suites that have none: on the CPU every
/// shape is divided by 8 (by 32 with `tiny`, on every backend).
pub fn plan(cfg: &BenchConfig, cpu: bool) -> (Vec<Case>, Vec<String>) {
    let mut v = Vec::new();
    let mut skipped = Vec::new();
    for &s in &cfg.suites {
        if s == Suite::Layer {
            skipped.push("suite `layer`: not yet (the whole MoE layer comes with a later issue)".to_string());
        }
        v.extend(cases::suite_cases(s));
    }
    v.extend(cfg.shapes.iter().map(|&op| Case {
        suite: "custom",
        op,
        counts: cfg.counts,
    }));
    let factor = if cfg.tiny {
        32
    } else if cpu {
        8
    } else {
        1
    };
    if factor > 1 {
        for c in &mut v {
            if c.suite != "custom" {
                c.op = c.op.shrink(factor);
            }
        }
    }
    (v, skipped)
}

/// Runs `cfg` on `device`. `progress(done, total, label)` is called before each step.
pub fn run(cfg: &BenchConfig, device: &Device, progress: &dyn Fn(usize, usize, &str)) -> Result<BenchReport, EngineError> {
    if cfg.samples == 0 {
        return Err(InputError::Usage("--samples must be at least 1".into()).into());
    }
    if cfg.suites.is_empty() && cfg.shapes.is_empty() {
        return Err(InputError::Usage("nothing to run: give --suite NAME (several allowed) or --shape KIND:DIMS".into()).into());
    }
    match device {
        Device::Cpu(_) => run_on(cfg, &mut CpuTarget::new(), true, progress),
        #[cfg(feature = "cuda")]
        Device::Cuda(b) => run_on(cfg, &mut gpu::GpuTarget::new(b, cfg.flush_bytes)?, false, progress),
    }
}

/// Runs `cfg` on any target (`cpu` picks the smaller shapes).
pub fn run_on(cfg: &BenchConfig, t: &mut dyn Target, cpu: bool, progress: &dyn Fn(usize, usize, &str)) -> Result<BenchReport, EngineError> {
    let (cases, skipped) = plan(cfg, cpu);
    let total = cases.len() + 1;
    progress(0, total, "ceilings");
    let ceilings = t.ceilings(cfg);
    let mut rows = Vec::with_capacity(cases.len());
    let mut weights: Option<Arc<HostWeights>> = None;
    for (i, c) in cases.iter().enumerate() {
        progress(i + 1, total, &c.label());
        let mut rng = Rng::for_case(cfg.seed, 0xBE7C, i as u64);
        rows.push(run_case(cfg, t, c, &mut rng, &mut weights, &ceilings)?);
    }
    progress(total, total, "done");
    Ok(BenchReport {
        device: t.summary(),
        method: t.method(),
        samples: cfg.samples,
        warmup: cfg.warmup,
        flush_bytes: t.flush_bytes(),
        ceilings,
        rows,
        skipped,
    })
}

fn ceiling(ceilings: &[Ceiling], name: &str) -> Option<f64> {
    ceilings.iter().find(|c| c.name == name).and_then(|c| c.value)
}

/// `(label, percent)`: the roofline time (largest of bytes / read bandwidth and FLOPs / FP8
/// block-scaled GEMM throughput, whichever are measured) over the median.
fn roofline(ceilings: &[Ceiling], flops: f64, bytes: f64, median_us: f64) -> (String, Option<f64>) {
    let read = ceiling(ceilings, "read").or_else(|| ceiling(ceilings, "copy").map(|c| c / 2.0));
    let gemm = ceiling(ceilings, "fp8-gemm-block").or_else(|| ceiling(ceilings, "fp8-gemm-per-tensor"));
    let t_mem = read.map(|gbs| bytes / gbs / 1e3);
    let t_cmp = gemm.filter(|_| flops > 0.0).map(|tf| flops / tf / 1e6);
    let (label, t) = match (t_mem, t_cmp) {
        (Some(m), Some(c)) if c > m => (format!("fp8 gemm {:.0} TFLOP/s", gemm.unwrap_or(0.0)), Some(c)),
        (Some(m), _) => (format!("read {:.0} GB/s", read.unwrap_or(0.0)), Some(m)),
        (None, Some(c)) => (format!("fp8 gemm {:.0} TFLOP/s", gemm.unwrap_or(0.0)), Some(c)),
        (None, None) => ("none measured".into(), None),
    };
    (label, t.map(|t| 100.0 * t / median_us))
}

fn bf16_rows(rng: &mut Rng, n: usize) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; n];
    crate::weights::synth::fill(rng.next_u64(), 0, 1.0, &mut v);
    v
}

/// Router ids `(m, topk)` over `e` local experts with no expert above `t` (a token's slots are
/// distinct experts; `-1` where the token has no more room).
fn router_ids(rng: &mut Rng, m: usize, topk: usize, e: usize, t: usize) -> Vec<i32> {
    let mut load = vec![0usize; e];
    let mut ids = vec![-1i32; m * topk];
    let mut order: Vec<usize> = (0..e).collect();
    for tok in 0..m {
        rng.shuffle(&mut order);
        let mut j = 0;
        for &ex in &order {
            if j == topk {
                break;
            }
            if load[ex] < t {
                load[ex] += 1;
                ids[tok * topk + j] = ex as i32;
                j += 1;
            }
        }
    }
    ids
}

fn stage_inputs(rng: &mut Rng, seed: u64, p: &ExpertsStage, counts: Vec<i32>) -> StageInputs {
    let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
    let s1 = p.gemm1().sb_shape().iter().product();
    let s2 = p.gemm2().sb_shape().iter().product();
    let a1s_len: usize = p.a1s_shape().iter().product();
    StageInputs {
        a1q: data::e4m3_bytes(seed ^ 1, e * t * k),
        a1s: moe_core::ScaleBuf::F32(data::scales(rng, a1s_len)),
        w1: (data::e4m3_bytes(seed ^ 2, e * 2 * i * k), data::scales(rng, s1)),
        w2: (data::e4m3_bytes(seed ^ 3, e * k * i), data::scales(rng, s2)),
        counts,
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    c: &Case,
    counts: &[i32],
    m: &Measured<impl Sized>,
    check: Check,
    ceilings: &[Ceiling],
    baseline: Option<Result<Baseline, String>>,
) -> Row {
    let (flops, bytes) = cases::work(&c.op, counts);
    let (ceiling, pct) = roofline(ceilings, flops, bytes, m.stats.median_us);
    let (baseline, baseline_unavailable) = match baseline {
        Some(Ok(b)) => (Some(b), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    Row {
        suite: c.suite.to_string(),
        op: c.op.name().to_string(),
        dims: c.op.dims().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        counts: c.counts.name().to_string(),
        live_rows: counts.iter().map(|&x| x.max(0) as u64).sum(),
        flops,
        bytes,
        config: m.config.clone(),
        ours: m.stats,
        ceiling,
        pct_of_ceiling: pct,
        baseline,
        baseline_unavailable,
        check,
    }
}

fn run_case(
    cfg: &BenchConfig,
    t: &mut dyn Target,
    c: &Case,
    rng: &mut Rng,
    weights: &mut Option<Arc<HostWeights>>,
    ceilings: &[Ceiling],
) -> Result<Row, EngineError> {
    let check_on = t.needs_check();
    let cpu = CpuBackend::new();
    let contract = GemmContract::of_cuda_kernel(cfg.gemm_kernel);
    match c.op {
        Op::Gemm { e, t: cap, n, k } => {
            let p = GroupedGemm::new(e, cap, n, k, ScaleFormat::F32)?;
            let w = match weights {
                Some(w) if w.dims == (e, n, k) => w.clone(),
                _ => {
                    *weights = None;
                    let w = HostWeights::random(cfg.seed ^ ((e * 31 + n) * 131 + k) as u64, e, n, k);
                    *weights = Some(w.clone());
                    w
                }
            };
            let g = GemmData {
                p,
                a: data::e4m3_bytes(rng.next_u64(), e * cap * k),
                sa: data::scales(rng, e * (k / GROUP) * cap),
                w,
                counts: c.counts.draw(rng, e, cap),
            };
            let ours = t.gemm(cfg, &g)?;
            let base = t.gemm_baseline(cfg, &g);
            let (check, baseline) = if check_on {
                let samples = sample_rows(rng, &g.counts);
                let refs = reference_rows(&g, &samples)?;
                let check = check_ours(&g, &samples, &refs, &ours.out, contract);
                let baseline = base.map(|b| Baseline {
                    name: b.config.clone(),
                    stats: b.stats,
                    check: check_baseline(&g, &samples, &refs, &b.out),
                });
                (check, baseline)
            } else {
                (
                    cpu_is_reference(),
                    base.map(|b| Baseline {
                        name: b.config,
                        stats: b.stats,
                        check: cpu_is_reference(),
                    }),
                )
            };
            Ok(row(c, &g.counts, &ours, check, ceilings, Some(baseline)))
        }
        Op::Silu { e, t: cap, h } => {
            *weights = None;
            let p = SiluMulQuant::new(e, cap, h, ScaleFormat::F32CeilUe8m0, Numerics::VllmBf16)?;
            let y = bf16_rows(rng, e * cap * 2 * h);
            let counts = c.counts.draw(rng, e, cap);
            let m = t.silu(cfg, &p, &y, &counts)?;
            let check = if check_on {
                let (mut q, mut s) = (vec![0u8; e * cap * h], moe_core::ScaleBuf::zeros(p.scale_format(), m.out.1.len()));
                moe_core::Backend::silu_mul_quant(&cpu, &p, &y, &counts, &mut q, s.view_mut())?;
                check_both(check_bits("q", &m.out.0, &q), check_bits("s", &m.out.1.to_bits(), &s.to_bits()))
            } else {
                cpu_is_reference()
            };
            Ok(row(c, &counts, &m, check, ceilings, None))
        }
        Op::Prepare {
            m: tokens,
            k,
            topk,
            e,
            t: cap,
        } => {
            *weights = None;
            let p = Prepare::new(tokens, k, topk, e, cap, ScaleFormat::F32CeilUe8m0)?;
            let x = bf16_rows(rng, tokens * k);
            let ids = router_ids(rng, tokens, topk, e, cap);
            let counts = moe_core::Routing::new(&ids, tokens, topk, e, cap)?.counts().to_vec();
            let m = t.prepare(cfg, &p, &x, &ids)?;
            let check = if check_on {
                let (mut q, mut s, mut cc) = (
                    vec![0u8; m.out.0.len()],
                    moe_core::ScaleBuf::zeros(p.scale_format(), m.out.1.len()),
                    vec![0; e],
                );
                moe_core::Backend::prepare(&cpu, &p, &x, &ids, &mut q, s.view_mut(), &mut cc)?;
                check_both(check_bits("a1q", &m.out.0, &q), check_bits("a1s", &m.out.1.to_bits(), &s.to_bits()))
            } else {
                cpu_is_reference()
            };
            Ok(row(c, &counts, &m, check, ceilings, None))
        }
        Op::Finalize {
            m: tokens,
            k,
            topk,
            e,
            t: cap,
        } => {
            *weights = None;
            let p = Finalize::new(tokens, k, topk, e, cap)?;
            let eo = bf16_rows(rng, e * cap * k);
            let ids = router_ids(rng, tokens, topk, e, cap);
            let w: Vec<f32> = (0..tokens * topk).map(|_| rng.unit_positive() / topk as f32).collect();
            let counts = moe_core::Routing::new(&ids, tokens, topk, e, cap)?.counts().to_vec();
            let m = t.finalize(cfg, &p, &eo, &ids, &w)?;
            let check = if check_on {
                let mut out = vec![bf16::ZERO; tokens * k];
                moe_core::Backend::finalize(&cpu, &p, &eo, &ids, &w, &mut out)?;
                check_bits("out", &m.out, &out)
            } else {
                cpu_is_reference()
            };
            Ok(row(c, &counts, &m, check, ceilings, None))
        }
        Op::BlockQuant { e, r, c: cols } => {
            *weights = None;
            let p = BlockQuant::new(e, r, cols, false)?;
            let w = bf16_rows(rng, e * r * cols);
            let m = t.block_quant(cfg, &p, &w)?;
            let check = if check_on {
                let (mut q, mut s) = (vec![0u8; w.len()], vec![0f32; m.out.1.len()]);
                moe_core::Backend::block_quant(&cpu, &p, moe_core::Activation::Bf16(&w), &mut q, &mut s)?;
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                check_both(check_bits("q", &m.out.0, &q), check_bits("s", &bits(&m.out.1), &bits(&s)))
            } else {
                cpu_is_reference()
            };
            Ok(row(c, &[e as i32 * r as i32], &m, check, ceilings, None))
        }
        Op::Stage { e, t: cap, k, i } => {
            *weights = None;
            let p = ExpertsStage::new(e, cap, k, i, ScaleFormat::F32, Numerics::VllmBf16)?;
            let counts = c.counts.draw(rng, e, cap);
            let seed = cfg.seed ^ rng.next_u64();
            let s = stage_inputs(rng, seed, &p, counts.clone());
            let m = t.stage(cfg, &p, &s)?;
            let check = if check_on {
                let mut ws = ExpertsWorkspace::new(&p);
                let mut out = vec![bf16::ZERO; m.out.len()];
                cpu.apply(&p, s.view(), &mut ws, &mut out)?;
                let cd = calc_diff(&m.out, &out);
                Check {
                    ok: cd < data::stage_calc_diff_max(cfg.gemm_kernel),
                    detail: format!(
                        "calc_diff {cd:.2e} against CpuBackend (accepted below {:.0e})",
                        data::stage_calc_diff_max(cfg.gemm_kernel)
                    ),
                }
            } else {
                cpu_is_reference()
            };
            Ok(row(c, &counts, &m, check, ceilings, None))
        }
    }
}
