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
    estimate_expected_m, Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, BlockQuant, ExpertsInputs, ExpertsStage,
    ExpertsWorkspace, Finalize, GemmInputs, GroupedGemm, MoeResult, Numerics, Prepare, ScaleBuf, ScaleFormat, ScalesMut, SiluMulQuant,
    TokenGroupQuant, WeightsRef, GROUP,
};
use moe_ref_cpu::{CpuBackend, NaiveCpu};

use crate::device::{Device, GemmContract};
use crate::error::{try_filled, EngineError};
use crate::rng::Rng;
use crate::verify::run_check::{self, bits16, bits_check, check_block_quant, check_gemm, sample_rows};
use crate::weights::synth;

mod limits;
pub use limits::{footprint, validate, Buffer};

/// The largest end-to-end `calc_diff` accepted against the CPU reference (SPEC §5.4).
pub const CALC_DIFF_MAX: f64 = 1e-5;

/// Scale of the synthetic weights (activations are on `(-1, 1)`).
pub(crate) const W_SCALE: f32 = 0.05;
const STREAM_X: u64 = 1;
const STREAM_W1: u64 = 2;
const STREAM_W2: u64 = 3;
const STREAM_ROUTER: u64 = 4;
const STREAM_CHECK: u64 = 5;

/// What `moe run` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// Local experts `E`.
    pub experts: usize,
    /// Capacity `T` (max tokens per expert).
    pub capacity: usize,
    /// Hidden size `K` (a multiple of 128).
    pub hidden: usize,
    /// Expert intermediate size `I` (a multiple of 128).
    pub intermediate: usize,
    /// Tokens `M`.
    pub tokens: usize,
    /// Router slots per token.
    pub topk: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Activation scale format (ceil formats also give power-of-two weight scales).
    pub scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic.
    pub numerics: Numerics,
    /// Live rows per expert whose GEMM outputs are recomputed by the naive reference.
    pub check_rows: usize,
    /// Weight blocks per expert and matrix whose quantization is recomputed.
    pub check_blocks: usize,
}

impl Default for RunConfig {
    /// DeepSeek-V3's expert shapes on one rank: 8 local experts of K = 7168, I = 2048, T = 64.
    fn default() -> Self {
        Self {
            experts: 8,
            capacity: 64,
            hidden: 7168,
            intermediate: 2048,
            tokens: 64,
            topk: 8,
            seed: 0,
            scale_fmt: ScaleFormat::F32,
            numerics: Numerics::VllmBf16,
            check_rows: 2,
            check_blocks: 2,
        }
    }
}

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

/// One verdict of the check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The name shown in the report.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
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
    validate(cfg)?;
    let backend = device.backend();
    let contract = device.gemm_contract();
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
            synth::fill(synth::key(cfg.seed, stream), (ex * r * c) as u64, W_SCALE, w);
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

    // The experts stage through `BatchedExperts::apply`, on a wrapper that times each stage the
    // provided `apply` calls. For a backend that overrides `apply` (a device backend keeping
    // data resident), its own `apply` runs too, and is what the check examines.
    let inputs = ExpertsInputs {
        a1q: &a1q,
        a1s: a1s.view(),
        w1: WeightsRef { q: &w1q, s: &w1s },
        w2: WeightsRef { q: &w2q, s: &w2s },
        counts: &counts,
    };
    let timer = Timed::new(backend);
    progress("experts: gemm1 → silu-mul-quant → gemm2 (BatchedExperts::apply, timed stage by stage)");
    let mut ws_staged = ExpertsWorkspace::new(&experts);
    let mut out_staged = try_filled("out", e * t * k, bf16::ZERO)?;
    let (res, t_staged) = timed(|| timer.apply(&experts, inputs, &mut ws_staged, &mut out_staged));
    res?;
    let stage_secs = timer.take();
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
    let secs_of = |op: &str| stage_secs.iter().filter(|(o, _)| *o == op).map(|(_, s)| s).collect::<Vec<_>>();
    let gemm_secs = secs_of("grouped_gemm");
    let (t_g1, t_g2) = (
        gemm_secs.first().copied().copied().unwrap_or(0.0),
        gemm_secs.get(1).copied().copied().unwrap_or(0.0),
    );
    let t_silu = secs_of("silu_mul_quant").first().copied().copied().unwrap_or(0.0);

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
    checks.push(run_check::dead_rows_zero(
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

/// A backend wrapper that records the time of every grouped GEMM and SiLU-mul-quant call, so
/// that the provided `BatchedExperts::apply` can be timed stage by stage.
#[derive(Debug)]
struct Timed<'a> {
    inner: &'a dyn BatchedExperts,
    log: std::sync::Mutex<Vec<(&'static str, f64)>>,
}

impl<'a> Timed<'a> {
    fn new(inner: &'a dyn BatchedExperts) -> Self {
        Self {
            inner,
            log: std::sync::Mutex::new(Vec::new()),
        }
    }
    fn record<R>(&self, op: &'static str, f: impl FnOnce() -> R) -> R {
        let (r, dt) = timed(f);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push((op, dt));
        r
    }
    fn take(&self) -> Vec<(&'static str, f64)> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Backend for Timed<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        self.record("token_group_quant", || self.inner.token_group_quant(p, x, q, s))
    }
    fn batched_token_group_quant(
        &self,
        p: &BatchedTokenGroupQuant,
        x: Activation<'_>,
        counts: &[i32],
        q: &mut [u8],
        s: ScalesMut<'_>,
    ) -> MoeResult<()> {
        self.record("batched_token_group_quant", || {
            self.inner.batched_token_group_quant(p, x, counts, q, s)
        })
    }
    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        self.record("block_quant", || self.inner.block_quant(p, w, q, s))
    }
    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        self.record("silu_mul_quant", || self.inner.silu_mul_quant(p, y, counts, q, s))
    }
    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        self.record("grouped_gemm", || self.inner.grouped_gemm(p, inputs, d))
    }
    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()> {
        self.record("prepare", || self.inner.prepare(p, x, topk_ids, a1q, a1s, counts))
    }
    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        self.record("finalize", || self.inner.finalize(p, expert_out, topk_ids, topk_weights, out))
    }
}

/// The provided `apply`: the three stages through the timed methods above.
impl BatchedExperts for Timed<'_> {}
