//! `moe run`: a seeded synthetic DeepSeek-V3-shaped expert layer through prepare → experts →
//! finalize on one backend, timed stage by stage and checked against the naive reference.
//!
//! The naive GEMM at full size would take minutes, so the check is exact stage by stage where it
//! is cheap and sampled where it is not: prepare, SiLU-mul-quant and finalize are recomputed in
//! full by `NaiveCpu` from the backend's own inputs to that stage; the two GEMMs are recomputed
//! on a random sample of live rows of every expert, and the weight quantization on a random
//! sample of 128×128 blocks. The CPU backend must match bit for bit everywhere; another backend
//! must match bit for bit except in the GEMMs, which must stay within the SPEC §5.3 bound.

use std::time::Instant;

use half::bf16;
use moe_core::{
    estimate_expected_m, Activation, Backend, BatchedExperts, BlockQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace, Finalize,
    GemmInputs, Prepare, ScaleBuf, WeightsRef, GROUP,
};
use moe_ref_cpu::{CpuBackend, NaiveCpu};

use crate::device::{Device, GemmContract};
use crate::error::{try_filled, EngineError};
use crate::rng::Rng;
mod check;
mod config;

use crate::weights::synth;
pub use check::Check;
use check::{bits16, bits_check, check_block_quant, check_gemm, sample_rows};
pub use config::RunConfig;

mod limits;
pub use limits::{footprint, validate, Buffer};

/// The largest end-to-end `calc_diff` accepted against the CPU reference (SPEC §5.4).
pub const CALC_DIFF_MAX: f64 = crate::device::GemmContract::CALC_DIFF_MAX;

const STREAM_X: u64 = 1;
const STREAM_W1: u64 = 2;
const STREAM_W2: u64 = 3;
const STREAM_ROUTER: u64 = 4;
const STREAM_CHECK: u64 = 5;

/// The amount of work of a stage, for its throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Bytes read and written.
    Bytes(f64),
    /// Floating-point operations (2 per multiply-add).
    Flops(f64),
}

/// One timed stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The name shown in the report.
    pub name: &'static str,
    /// Wall time in seconds.
    pub secs: f64,
    /// Its amount of work.
    pub work: Work,
}

impl Stage {
    /// `12.3 GB/s` or `1.23 TFLOP/s` / `45.6 GFLOP/s`.
    pub fn throughput(&self) -> String {
        let secs = self.secs.max(1e-9);
        match self.work {
            Work::Bytes(b) => format!("{:.2} GB/s", b / secs / 1e9),
            Work::Flops(f) if f / secs >= 1e12 => format!("{:.2} TFLOP/s", f / secs / 1e12),
            Work::Flops(f) => format!("{:.1} GFLOP/s", f / secs / 1e9),
        }
    }
}

/// Everything `moe run` found.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The first line: backend, shapes, options.
    pub header: String,
    /// The timed stages.
    pub stages: Vec<Stage>,
    /// The verdicts of the check.
    pub checks: Vec<Check>,
    /// Wall time of the check.
    pub check_secs: f64,
    /// Wall time of the whole run, data generation and check included.
    pub total_secs: f64,
}

impl RunReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The report as printed on stdout.
    pub fn render(&self) -> String {
        let mut s = format!("{}\n\n", self.header);
        s += &format!("{:<24} {:>11}  {:>16}\n", "stage", "time", "throughput");
        for st in &self.stages {
            s += &format!("{:<24} {:>8.2} ms  {:>16}\n", st.name, st.secs * 1e3, st.throughput());
        }
        s += &format!("\n{:<40} verdict\n", "check");
        for c in &self.checks {
            s += &format!("{:<40} {}: {}\n", c.name, if c.ok { "ok" } else { "FAIL" }, c.detail);
        }
        s += &format!(
            "\nresult: {} (check {:.2} s, total {:.2} s)\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.check_secs,
            self.total_secs
        );
        s
    }
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, f64) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed().as_secs_f64())
}

/// Runs the synthetic layer on `device` and checks it: the backend's GEMM must be bit-identical to
/// the reference or within the §5.3 bound, as its [`GemmContract`] says.
/// `progress` is told the name of each step as it starts.
pub fn run(cfg: &RunConfig, device: &Device, progress: &dyn Fn(&str)) -> Result<RunReport, EngineError> {
    run_on(cfg, device.backend(), device.gemm_contract(), progress)
}

/// [`run`] on any backend, held to `contract` (for backends the engine does not open itself,
/// such as the planted-bug backends of the tests).
pub fn run_on(
    cfg: &RunConfig,
    backend: &dyn BatchedExperts,
    contract: GemmContract,
    progress: &dyn Fn(&str),
) -> Result<RunReport, EngineError> {
    validate(cfg)?;
    let exact = contract == GemmContract::Exact;
    let t_start = Instant::now();
    let (e, t, k, i, m, topk) = (cfg.experts, cfg.capacity, cfg.hidden, cfg.intermediate, cfg.tokens, cfg.topk);
    let (fmt, numerics) = (cfg.scale_fmt, cfg.numerics);
    let experts = ExpertsStage::new(e, t, k, i, fmt, numerics)?;
    let prep = Prepare::new(m, k, topk, e, t, fmt)?;
    let fin = Finalize::new(m, k, topk, e, t)?;

    progress("routing tokens");
    let mut rng = Rng::new(synth::key(cfg.seed, STREAM_ROUTER));
    let route = synth::routing(&mut rng, m, topk, e, t)?;
    let live: usize = route.counts.iter().map(|&c| c as usize).sum();

    progress("generating activations");
    let mut x = try_filled("x", m * k, bf16::ZERO)?;
    synth::fill(synth::key(cfg.seed, STREAM_X), 0, 1.0, &mut x);

    // Weights, generated and quantized one expert at a time so the bf16 copy stays small.
    let pow2 = fmt.is_ceil();
    let mut chunk = try_filled("w1 (one expert)", 2 * i * k, bf16::ZERO)?;
    let mut quant_weights = |stream: u64, r: usize, c: usize, label: &'static str| -> Result<(Vec<u8>, Vec<f32>, f64), EngineError> {
        let bq = BlockQuant::new(1, r, c, pow2)?;
        let per_s: usize = bq.scale_shape().iter().product();
        let (mut q, mut s) = (try_filled(label, e * r * c, 0u8)?, try_filled("weight scales", e * per_s, 0f32)?);
        let mut secs = 0.0;
        for ex in 0..e {
            progress(&format!("quantizing {label} of expert {ex}/{e}"));
            let w = &mut chunk[..r * c];
            synth::fill(synth::key(cfg.seed, stream), (ex * r * c) as u64, synth::WEIGHT_SCALE, w);
            let (res, dt) = timed(|| {
                backend.block_quant(
                    &bq,
                    Activation::Bf16(w),
                    &mut q[ex * r * c..][..r * c],
                    &mut s[ex * per_s..][..per_s],
                )
            });
            res?;
            secs += dt;
        }
        Ok((q, s, secs))
    };
    let (w1q, w1s, t_w1) = quant_weights(STREAM_W1, 2 * i, k, "w1")?;
    let (w2q, w2s, t_w2) = quant_weights(STREAM_W2, k, i, "w2")?;
    drop(chunk);

    progress("prepare");
    let a1s_len: usize = experts.a1s_shape().iter().product();
    let (mut a1q, mut a1s, mut counts) = (
        try_filled("a1q", e * t * k, 0u8)?,
        ScaleBuf::zeros(fmt, a1s_len),
        try_filled("counts", e, 0i32)?,
    );
    let (res, t_prep) = timed(|| backend.prepare(&prep, &x, &route.topk_ids, &mut a1q, a1s.view_mut(), &mut counts));
    res?;

    let experts = experts.with_expected_m(estimate_expected_m(m, topk, e, t, Some(&counts)));
    let mut own_apply_same = None;
    let (g1, silu, g2) = (experts.gemm1(), experts.silu(), experts.gemm2());

    // The experts stage run stage by stage through the host-slice methods, each timed (this is
    // what the provided `BatchedExperts::apply` does). For a backend that overrides `apply` (a
    // device backend keeping data resident), its own `apply` runs too, must give the same bits,
    // and is what the check examines.
    let inputs = ExpertsInputs {
        a1q: &a1q,
        a1s: a1s.view(),
        w1: WeightsRef { q: &w1q, s: &w1s },
        w2: WeightsRef { q: &w2q, s: &w2s },
        counts: &counts,
    };
    experts.check_inputs(&inputs)?;
    progress("experts: gemm1 → silu-mul-quant → gemm2 (timed stage by stage)");
    let mut ws_staged = ExpertsWorkspace::new(&experts);
    let mut out_staged = try_filled("out", e * t * k, bf16::ZERO)?;
    let (res, t_g1) = timed(|| {
        backend.grouped_gemm(
            &g1,
            GemmInputs {
                a: &a1q,
                sa: a1s.view(),
                b: inputs.w1,
                counts: &counts,
            },
            &mut ws_staged.h1,
        )
    });
    res?;
    let (res, t_silu) = timed(|| backend.silu_mul_quant(&silu, &ws_staged.h1, &counts, &mut ws_staged.q2, ws_staged.s2.view_mut()));
    res?;
    let (res, t_g2) = timed(|| {
        let gi = GemmInputs {
            a: &ws_staged.q2,
            sa: ws_staged.s2.view(),
            b: inputs.w2,
            counts: &counts,
        };
        backend.grouped_gemm(&g2, gi, &mut out_staged)
    });
    res?;
    let t_staged = t_g1 + t_silu + t_g2;
    let (ws, out, t_apply) = if exact {
        (ws_staged, out_staged, t_staged)
    } else {
        progress("experts (the backend's own BatchedExperts::apply)");
        let mut ws = ExpertsWorkspace::new(&experts);
        let mut out = try_filled("out", e * t * k, bf16::ZERO)?;
        let (res, dt) = timed(|| backend.apply(&experts, inputs, &mut ws, &mut out));
        res?;
        let same = bits16(&ws_staged.h1) == bits16(&ws.h1)
            && ws_staged.q2 == ws.q2
            && ws_staged.s2.to_bits() == ws.s2.to_bits()
            && bits16(&out_staged) == bits16(&out);
        own_apply_same = Some(same);
        (ws, out, dt)
    };

    progress("finalize");
    let mut y = try_filled("y", m * k, bf16::ZERO)?;
    let (res, t_fin) = timed(|| backend.finalize(&fin, &out, &route.topk_ids, &route.topk_weights, &mut y));
    res?;

    // Work of each stage.
    let (livef, kf, i_f) = (live as f64, k as f64, i as f64);
    let routed = route.topk_ids.iter().filter(|&&id| id >= 0).count() as f64;
    let blocks = |r: usize, c: usize| (e * r.div_ceil(GROUP) * c.div_ceil(GROUP)) as f64;
    let f1 = 2.0 * livef * 2.0 * i_f * kf;
    let f2 = 2.0 * livef * kf * i_f;
    let stages = vec![
        Stage {
            name: "block-quant w1",
            secs: t_w1,
            work: Work::Bytes((e * 2 * i * k * 3) as f64 + blocks(2 * i, k) * 4.0),
        },
        Stage {
            name: "block-quant w2",
            secs: t_w2,
            work: Work::Bytes((e * k * i * 3) as f64 + blocks(k, i) * 4.0),
        },
        Stage {
            name: "prepare",
            secs: t_prep,
            work: Work::Bytes(livef * kf * 3.0 + livef * kf / 32.0 + (m * topk * 4) as f64),
        },
        Stage {
            name: "gemm1",
            secs: t_g1,
            work: Work::Flops(f1),
        },
        Stage {
            name: "silu-mul-quant",
            secs: t_silu,
            work: Work::Bytes(livef * (4.0 * i_f * 2.0 + i_f + i_f / 32.0)),
        },
        Stage {
            name: "gemm2",
            secs: t_g2,
            work: Work::Flops(f2),
        },
        Stage {
            name: if exact { "experts (apply, total)" } else { "experts (own apply)" },
            secs: t_apply,
            work: Work::Flops(f1 + f2),
        },
        Stage {
            name: "finalize",
            secs: t_fin,
            work: Work::Bytes(routed * kf * 2.0 + (m * topk * 8) as f64 + (m * k * 2) as f64),
        },
    ];

    // The check.
    let t_check = Instant::now();
    let mut checks = Vec::new();
    let mut crng = Rng::new(synth::key(cfg.seed, STREAM_CHECK));
    checks.push(Check {
        name: "counts = router's live counts".into(),
        ok: counts == route.counts,
        detail: format!("{counts:?}"),
    });

    progress("checking weight quantization (sampled blocks)");
    checks.push(check_block_quant(cfg, &mut crng, STREAM_W1, 2 * i, k, "w1", &w1q, &w1s)?);
    checks.push(check_block_quant(cfg, &mut crng, STREAM_W2, k, i, "w2", &w2q, &w2s)?);

    progress("checking prepare");
    {
        let (mut q, mut s, mut c) = (
            try_filled("a1q", e * t * k, 0u8)?,
            ScaleBuf::zeros(fmt, a1s_len),
            try_filled("counts", e, 0i32)?,
        );
        NaiveCpu.prepare(&prep, &x, &route.topk_ids, &mut q, s.view_mut(), &mut c)?;
        checks.push(bits_check(
            "prepare (all rows)",
            &[q == a1q, s.to_bits() == a1s.to_bits(), c == counts],
            e * t * k,
        ));
    }

    let samples = sample_rows(&mut crng, &counts, cfg.check_rows);
    let sampled: usize = samples.iter().map(|(_, r)| r.len()).sum();
    progress("checking gemm1 (sampled rows)");
    checks.push(check_gemm(
        &format!("gemm1 ({sampled} sampled rows)"),
        &g1,
        &a1q,
        a1s.view(),
        &w1q,
        &w1s,
        &samples,
        &ws.h1,
        contract,
    )?);

    progress("checking silu-mul-quant");
    {
        let (mut q, mut s) = (
            try_filled("q2", e * t * i, 0u8)?,
            ScaleBuf::zeros(fmt, silu.scale_shape().iter().product()),
        );
        NaiveCpu.silu_mul_quant(&silu, &ws.h1, &counts, &mut q, s.view_mut())?;
        checks.push(bits_check(
            "silu-mul-quant (all rows)",
            &[q == ws.q2, s.to_bits() == ws.s2.to_bits()],
            live * i,
        ));
    }

    progress("checking gemm2 (sampled rows)");
    checks.push(check_gemm(
        &format!("gemm2 ({sampled} sampled rows)"),
        &g2,
        &ws.q2,
        ws.s2.view(),
        &w2q,
        &w2s,
        &samples,
        &out,
        contract,
    )?);

    progress("checking finalize");
    {
        let mut yref = try_filled("y", m * k, bf16::ZERO)?;
        NaiveCpu.finalize(&fin, &out, &route.topk_ids, &route.topk_weights, &mut yref)?;
        checks.push(bits_check("finalize (all tokens)", &[bits16(&yref) == bits16(&y)], m * k));
    }

    progress("checking rows past the counts");
    checks.push(check::dead_rows_zero(
        &counts,
        t,
        &[("a1q", &a1q, k), ("q2", &ws.q2, i)],
        &[("h1", &ws.h1, 2 * i), ("out", &out, k)],
    ));

    if let Some(same) = own_apply_same {
        checks.push(Check {
            name: "own apply = stage-by-stage apply".into(),
            // The host-slice stages and the resident path run the same kernels: any difference
            // is a bug of one of them.
            ok: same,
            detail: if same {
                "bit-identical".into()
            } else {
                "differs: the host-slice and device-resident paths must be bit-identical".into()
            },
        });
    }

    if !exact {
        progress("checking end to end against the CPU reference");
        let mut ws_ref = ExpertsWorkspace::new(&experts);
        let mut out_ref = try_filled("out", e * t * k, bf16::ZERO)?;
        CpuBackend::new().apply(&experts, inputs, &mut ws_ref, &mut out_ref)?;
        let d = moe_core::calc_diff_bf16(&out, &out_ref);
        checks.push(Check {
            name: "end-to-end calc_diff vs CPU".into(),
            ok: d < CALC_DIFF_MAX,
            detail: format!("{d:.3e} (limit {CALC_DIFF_MAX:e})"),
        });
    }

    let header = format!(
        "moe run: backend {} | E={e} T={t} K={k} I={i} | M={m} topk={topk} | live rows {live} | scale-fmt {fmt} | numerics {numerics} | seed {} | threads {}",
        backend.name(),
        cfg.seed,
        rayon::current_num_threads()
    );
    Ok(RunReport {
        header,
        stages,
        checks,
        check_secs: t_check.elapsed().as_secs_f64(),
        total_secs: t_start.elapsed().as_secs_f64(),
    })
}
