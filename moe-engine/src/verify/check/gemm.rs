//! The checks of the grouped GEMM and the experts stage (bounded or exact, per the contract).

use moe_core::{Backend, BatchedExperts, ExpertsStage, ExpertsWorkspace, GemmInputs, WeightsRef};
use moe_ref_cpu::NaiveCpu;

use super::*;
use crate::device::GemmContract;

/// §5.3: live rows within the bound (or bit-exact), NaN positions equal, dead rows untouched.
pub fn check_gemm<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &GemmCase, tol: GemmContract) -> Checked {
    let p = &c.p;
    let n = p.experts() * p.capacity() * p.n();
    let (mut d0, mut bound) = (poison_bf16(n), vec![0f64; n]);
    let mut d1 = d0.clone();
    let reference = Reference::for_macs(live_macs(&c.counts, p.n(), p.k()));
    ref_ok(
        "grouped_gemm",
        reference.grouped_gemm_with_bound(
            p,
            GemmInputs {
                a: &c.a,
                sa: c.sa.view(),
                b: WeightsRef { q: &c.b, s: &c.sb },
                counts: &c.counts,
            },
            &mut d0,
            &mut bound,
        ),
    )?;
    dut_ok(
        "grouped_gemm",
        dut.grouped_gemm(
            p,
            GemmInputs {
                a: &c.a,
                sa: c.sa.view(),
                b: WeightsRef { q: &c.b, s: &c.sb },
                counts: &c.counts,
            },
            &mut d1,
        ),
    )?;
    untouched_rows("d", &d1, p.capacity(), p.n(), &c.counts, POISON_BF16 as u64)?;
    compare_gemm("d", &d1, &d0, &bound, p.capacity(), p.n(), &c.counts, tol)
}

/// SPEC §6: `expected_m` is a performance hint only. For each hint of `ms`, the case passes
/// [`check_gemm`], and the backend's output is bit-identical to its output under the first
/// hint (the bound alone would let a tile choice change the rounding).
pub fn check_gemm_independent_of_expected_m<B: Backend + BatchedExperts + ?Sized>(
    dut: &B,
    c: &GemmCase,
    tol: GemmContract,
    ms: &[usize],
) -> Checked {
    let mut first: Option<(usize, Vec<bf16>)> = None;
    let mut worst = Outcome::EXACT;
    for &m in ms {
        let c = GemmCase {
            p: c.p.with_expected_m(m),
            ..c.clone()
        };
        let o = check_gemm(dut, &c, tol).map_err(|e| format!("expected_m {m}: {e}"))?;
        worst.exact &= o.exact;
        worst.worst = worst.worst.max(o.worst);
        let mut d = poison_bf16(c.p.experts() * c.p.capacity() * c.p.n());
        dut_ok("grouped_gemm", dut.grouped_gemm(&c.p, c.inputs(), &mut d))?;
        match &first {
            None => first = Some((m, d)),
            Some((m0, d0)) => same_bits(&format!("d with expected_m {m} against expected_m {m0}"), &d, d0)?,
        }
    }
    Ok(worst)
}

/// §7 for the GEMM: bad counts, wrong scale kind, short weight scales, short output.
pub fn check_gemm_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &GemmCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.experts() * p.capacity() * p.n();
    let make = || poison_bf16(n);
    let run = |what: &str, sa: Scales<'_>, sb: &[f32], counts: &[i32], dn: usize| {
        same_rejection(
            what,
            || poison_bf16(dn),
            |o| {
                NaiveCpu.grouped_gemm(
                    p,
                    GemmInputs {
                        a: &c.a,
                        sa,
                        b: WeightsRef { q: &c.b, s: sb },
                        counts,
                    },
                    o,
                )
            },
            |o| {
                dut.grouped_gemm(
                    p,
                    GemmInputs {
                        a: &c.a,
                        sa,
                        b: WeightsRef { q: &c.b, s: sb },
                        counts,
                    },
                    o,
                )
            },
        )
    };
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        run(what, c.sa.view(), &c.sb, &counts, n)?;
    }
    let wk = wrong_kind(&c.sa);
    run("sa of the wrong kind", wk.view(), &c.sb, &c.counts, n)?;
    let sa_short = shorter(&c.sa);
    run("sa too short", sa_short.view(), &c.sb, &c.counts, n)?;
    run("sb too short", c.sa.view(), &c.sb[1..], &c.counts, n)?;
    run("d too short", c.sa.view(), &c.sb, &c.counts, n - 1)?;
    let _ = make;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The batched experts stage.

fn poisoned_workspace(p: &ExpertsStage) -> ExpertsWorkspace {
    let ws = ExpertsWorkspace::new(p);
    ExpertsWorkspace {
        h1: poison_bf16(ws.h1.len()),
        q2: poison_u8(ws.q2.len()),
        s2: poison_scales(p.scale_format(), ws.s2.len()),
    }
}

/// §5.4 stage by stage: GEMM1 against the reference (bound), SiLU-mul-quant of the backend's own
/// `h1` (bit-exact), GEMM2 of the backend's own `q2`/`s2` (bound); dead rows of every
/// intermediate and of `out` untouched; then the end-to-end `calc_diff` against the reference
/// pipeline, which must be below 1e-5 for random data.
pub fn check_experts<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &ExpertsCase, tol: GemmContract) -> Checked {
    let p = &c.p;
    let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
    let mut ws = poisoned_workspace(p);
    let mut out = poison_bf16(e * t * k);
    dut_ok("experts apply", dut.apply(p, c.inputs(), &mut ws, &mut out))?;
    untouched_rows("h1", &ws.h1, t, 2 * i, &c.counts, POISON_BF16 as u64)?;
    untouched_rows("q2", &ws.q2, t, i, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s2", &ws.s2, p.silu().scale_shape()[1], t, &c.counts)?;
    untouched_rows("out", &out, t, k, &c.counts, POISON_BF16 as u64)?;

    // The reference values: naive where affordable (see `Reference`).
    let reference = Reference::for_macs(2 * live_macs(&c.counts, 3 * i, k));

    // Stage 1: GEMM1 from the inputs.
    let g1 = p.gemm1();
    let (mut h1, mut b1) = (poison_bf16(ws.h1.len()), vec![0f64; ws.h1.len()]);
    ref_ok(
        "gemm1",
        reference.grouped_gemm_with_bound(
            &g1,
            GemmInputs {
                a: &c.a1q,
                sa: c.a1s.view(),
                b: WeightsRef { q: &c.w1, s: &c.w1s },
                counts: &c.counts,
            },
            &mut h1,
            &mut b1,
        ),
    )?;
    let o1 = compare_gemm("h1 (GEMM1)", &ws.h1, &h1, &b1, t, 2 * i, &c.counts, tol)?;
    // Stage 2: SiLU-mul-quant of the backend's h1.
    let silu = p.silu();
    let (mut q2, mut s2) = (poison_u8(ws.q2.len()), poison_scales(p.scale_format(), ws.s2.len()));
    ref_ok(
        "silu_mul_quant",
        reference.backend().silu_mul_quant(&silu, &ws.h1, &c.counts, &mut q2, s2.view_mut()),
    )?;
    same_bits("q2 (SiLU-mul-quant of the backend's h1)", &ws.q2, &q2)?;
    same_scales("s2 (SiLU-mul-quant of the backend's h1)", &ws.s2, &s2)?;
    // Stage 3: GEMM2 of the backend's q2, s2.
    let g2 = p.gemm2();
    let (mut o, mut b2) = (poison_bf16(out.len()), vec![0f64; out.len()]);
    ref_ok(
        "gemm2",
        reference.grouped_gemm_with_bound(
            &g2,
            GemmInputs {
                a: &ws.q2,
                sa: ws.s2.view(),
                b: WeightsRef { q: &c.w2, s: &c.w2s },
                counts: &c.counts,
            },
            &mut o,
            &mut b2,
        ),
    )?;
    let o3 = compare_gemm("out (GEMM2 of the backend's q2)", &out, &o, &b2, t, k, &c.counts, tol)?;

    // End to end against the reference pipeline.
    let mut ws_ref = poisoned_workspace(p);
    let mut out_ref = poison_bf16(out.len());
    ref_ok("experts apply", reference.backend().apply(p, c.inputs(), &mut ws_ref, &mut out_ref))?;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (ex, &cnt) in c.counts.iter().enumerate() {
        let live = &out[ex * t * k..][..cnt as usize * k];
        let live_ref = &out_ref[ex * t * k..][..cnt as usize * k];
        xs.extend(live.iter().map(|v| v.to_f64()));
        ys.extend(live_ref.iter().map(|v| v.to_f64()));
    }
    let finite = xs.iter().chain(&ys).all(|v| v.is_finite());
    let cd = if finite { calc_diff(&xs, &ys) } else { f64::NAN };
    let max = crate::device::GemmContract::CALC_DIFF_MAX;
    if c.random_data && finite && cd.partial_cmp(&max) != Some(std::cmp::Ordering::Less) {
        return Err(format!("experts end to end: calc_diff {cd:e} >= {max:e}"));
    }
    if c.random_data && !finite {
        return Err("experts end to end: random data produced a non-finite output".into());
    }
    let exact = same_bits("out", &out, &out_ref).is_ok() && o1.exact && o3.exact;
    if tol == GemmContract::Exact && !exact {
        same_bits("out (end to end)", &out, &out_ref)?;
    }
    Ok(Outcome {
        exact,
        worst: o1.worst.max(o3.worst),
        calc_diff: finite.then_some(cd),
    })
}

/// §7 for the experts stage: bad counts, short weight scales, wrong scale kind.
pub fn check_experts_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &ExpertsCase) -> Result<(), String> {
    let p = &c.p;
    let outn = p.experts() * p.capacity() * p.k();
    let run = |what: &str, inputs: ExpertsInputs<'_>| {
        same_rejection(
            what,
            || (poison_bf16(outn), poison_bf16(ExpertsWorkspace::new(p).h1.len())),
            |o| NaiveCpu.apply(p, inputs, &mut poisoned_workspace(p), &mut o.0),
            |o| {
                let mut ws = poisoned_workspace(p);
                let r = dut.apply(p, inputs, &mut ws, &mut o.0);
                // The workspace of a rejected call must be untouched too.
                o.1.copy_from_slice(&ws.h1);
                r
            },
        )
    };
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        run(
            what,
            ExpertsInputs {
                counts: &counts,
                ..c.inputs()
            },
        )?;
    }
    run(
        "w2s too short",
        ExpertsInputs {
            w2: WeightsRef { q: &c.w2, s: &c.w2s[1..] },
            ..c.inputs()
        },
    )?;
    let wk = wrong_kind(&c.a1s);
    run(
        "a1s of the wrong kind",
        ExpertsInputs {
            a1s: wk.view(),
            ..c.inputs()
        },
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prepare and finalize.
