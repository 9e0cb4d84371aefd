//! The differential checks: one case of one operation, run on the backend under test and on the
//! naive reference (`NaiveCpu`, which defines the results), compared with the exactness or bound
//! that SPEC §5 states.
//!
//! Every check
//! - poisons every output before the call (both backends get identical poisoned buffers),
//! - checks that rows `t >= counts[e]` of per-expert outputs still hold the poison,
//! - compares everything else bit for bit, or for the GEMM with the SPEC §5.3 bound,
//!
//! and each `check_*_rejects` feeds bad input (bad counts, ids, lengths, scale kinds) and checks
//! that the backend returns the same [`MoeError`] as the reference and writes nothing.
//!
//! The checks return `Err(message)` instead of panicking, so that `moe diff` can count failures;
//! the test suites turn them into assertions.

use moe_core::{
    bf16, Backend, BatchedExperts, Experts, ExpertsInputs, ExpertsWorkspace, MoeError, MoeResult, Prepare, ScaleBuf, Scales, WeightsRef,
};
use moe_ref_cpu::NaiveCpu;

use crate::cases::*;
use crate::compare::*;

/// The result of one passing case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Whether every output bit equals the reference.
    pub exact: bool,
    /// The worst `|error| / allowed` over the bounded elements (0 when exact or not bounded).
    pub worst: f64,
    /// The end-to-end `calc_diff` (the experts stage only).
    pub calc_diff: Option<f64>,
}

impl Outcome {
    /// A bit-exact pass.
    pub const EXACT: Outcome = Outcome {
        exact: true,
        worst: 0.0,
        calc_diff: None,
    };
}

/// What one check returns: the outcome or a description of the first failure.
pub type Checked = Result<Outcome, String>;

/// How the GEMM (and so the experts stage) is compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GemmTol {
    /// Bit-exact (another CPU implementation).
    Exact,
    /// SPEC §5.3: `|d - d_ref| <= ulp_bf16(d_ref) + c · bound`, NaN positions equal.
    Bounded {
        /// The measured constant of the backend (at most 2^-12).
        c: f64,
    },
}

fn ref_ok(what: &str, r: MoeResult<()>) -> Result<(), String> {
    r.map_err(|e| format!("{what}: the reference rejected a valid case (a test bug): {e}"))
}

fn dut_ok(what: &str, r: MoeResult<()>) -> Result<(), String> {
    r.map_err(|e| format!("{what}: the backend rejected a valid case: {e}"))
}

/// Checks that rows `t >= counts[e]` of an `(E, T, W)` row-major buffer still hold `poison`.
pub fn untouched_rows<T: Bits>(what: &str, buf: &[T], t_cap: usize, w: usize, counts: &[i32], poison: u64) -> Result<(), String> {
    for (e, &c) in counts.iter().enumerate() {
        for t in c.max(0) as usize..t_cap {
            let row = &buf[(e * t_cap + t) * w..][..w];
            if let Some(i) = row.iter().position(|v| v.bits() != poison) {
                return Err(format!(
                    "{what}: dead row (expert {e}, row {t} >= count {c}) was written at column {i}: {:#x}",
                    row[i].bits()
                ));
            }
        }
    }
    Ok(())
}

/// Checks that rows `t >= counts[e]` of MN-major `(E, cols, T)` scales still hold the poison.
pub fn untouched_scale_rows(what: &str, s: &ScaleBuf, cols: usize, t_cap: usize, counts: &[i32]) -> Result<(), String> {
    let (bits, poison): (Vec<u64>, u64) = match s {
        ScaleBuf::F32(v) => (v.iter().map(|x| x.bits()).collect(), POISON_F32 as u64),
        ScaleBuf::Packed(v) => (v.iter().map(|x| x.bits()).collect(), POISON_I32.bits()),
    };
    for (e, &c) in counts.iter().enumerate() {
        for col in 0..cols {
            for t in c.max(0) as usize..t_cap {
                let v = bits[(e * cols + col) * t_cap + t];
                if v != poison {
                    return Err(format!(
                        "{what}: dead row (expert {e}, row {t} >= count {c}) scale column {col} was written: {v:#x}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Compares GEMM outputs `(E, T, N)` on the live rows with `tol`; `bound` is the reference's
/// absolute-sum bound per element.
#[allow(clippy::too_many_arguments)]
pub fn compare_gemm(
    what: &str,
    dut: &[bf16],
    reference: &[bf16],
    bound: &[f64],
    t_cap: usize,
    n: usize,
    counts: &[i32],
    tol: GemmTol,
) -> Checked {
    let exact = same_bits(what, dut, reference);
    let c = match tol {
        GemmTol::Exact => return exact.map(|()| Outcome::EXACT),
        GemmTol::Bounded { c } => c,
    };
    let mut worst = 0f64;
    for (e, &cnt) in counts.iter().enumerate() {
        for t in 0..cnt as usize {
            for j in 0..n {
                let i = (e * t_cap + t) * n + j;
                let (d, r) = (dut[i], reference[i]);
                let (df, rf) = (d.to_f64(), r.to_f64());
                let here = || {
                    format!(
                        "{what}[expert {e}, row {t}, col {j}]: backend {df:e} ({:#06x}), reference {rf:e} ({:#06x})",
                        d.to_bits(),
                        r.to_bits()
                    )
                };
                if rf.is_nan() || df.is_nan() {
                    if rf.is_nan() != df.is_nan() {
                        return Err(format!("{}: NaN positions differ", here()));
                    }
                    continue;
                }
                if rf.is_infinite() {
                    if df != rf {
                        return Err(format!("{}: the reference is infinite", here()));
                    }
                    continue;
                }
                let allowed = ulp_bf16(r) + c * bound[i];
                let err = (df - rf).abs();
                // Written so that a NaN error (impossible after the checks above) would fail too.
                if err.partial_cmp(&allowed) != Some(std::cmp::Ordering::Less) && err != allowed {
                    return Err(format!(
                        "{}: |error| {err:e} > allowed {allowed:e} (bound {:e}, c {c:e})",
                        here(),
                        bound[i]
                    ));
                }
                worst = worst.max(err / allowed);
            }
        }
    }
    Ok(Outcome {
        exact: exact.is_ok(),
        worst,
        calc_diff: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Nothing-written checks for bad input.

/// A snapshot of output buffers as raw bits, to prove a rejected call wrote nothing.
pub trait Snapshot {
    /// All bits, in order.
    fn snapshot(&self) -> Vec<u64>;
}
impl<T: Bits> Snapshot for Vec<T> {
    fn snapshot(&self) -> Vec<u64> {
        self.iter().map(|v| v.bits()).collect()
    }
}
impl Snapshot for ScaleBuf {
    fn snapshot(&self) -> Vec<u64> {
        match self {
            ScaleBuf::F32(v) => v.snapshot(),
            ScaleBuf::Packed(v) => v.snapshot(),
        }
    }
}
impl<A: Snapshot, B: Snapshot> Snapshot for (A, B) {
    fn snapshot(&self) -> Vec<u64> {
        let mut v = self.0.snapshot();
        v.extend(self.1.snapshot());
        v
    }
}
impl<A: Snapshot, B: Snapshot, C: Snapshot> Snapshot for (A, B, C) {
    fn snapshot(&self) -> Vec<u64> {
        let mut v = (&self.0, &self.1).snapshot();
        v.extend(self.2.snapshot());
        v
    }
}
impl<T: Snapshot> Snapshot for &T {
    fn snapshot(&self) -> Vec<u64> {
        (*self).snapshot()
    }
}

/// Runs one bad input on the reference and on the backend, each with fresh poisoned outputs
/// from `make`: both must fail with the same error, and the backend's outputs must be unchanged.
pub fn same_rejection<O: Snapshot>(
    what: &str,
    make: impl Fn() -> O,
    run_ref: impl FnOnce(&mut O) -> MoeResult<()>,
    run_dut: impl FnOnce(&mut O) -> MoeResult<()>,
) -> Result<MoeError, String> {
    let mut o_ref = make();
    let mut o_dut = make();
    let before = o_dut.snapshot();
    let r = run_ref(&mut o_ref);
    let d = run_dut(&mut o_dut);
    let err = match (r, d) {
        (Err(a), Err(b)) if a == b => a,
        (Err(a), Err(b)) => return Err(format!("{what}: backend error `{b}` differs from the reference's `{a}`")),
        (Err(a), Ok(())) => return Err(format!("{what}: the backend accepted input that the reference rejects with `{a}`")),
        (Ok(()), _) => return Err(format!("{what}: the reference accepted the bad input (a test bug)")),
    };
    if o_dut.snapshot() != before {
        return Err(format!("{what}: the backend wrote to an output although it failed with `{err}`"));
    }
    Ok(err)
}

fn wrong_kind(s: &ScaleBuf) -> ScaleBuf {
    match s {
        ScaleBuf::F32(v) => ScaleBuf::Packed(vec![POISON_I32; v.len()]),
        ScaleBuf::Packed(v) => ScaleBuf::F32(vec![f32::from_bits(POISON_F32); v.len()]),
    }
}

fn shorter(s: &ScaleBuf) -> ScaleBuf {
    match s {
        ScaleBuf::F32(v) => ScaleBuf::F32(v[..v.len().saturating_sub(1)].to_vec()),
        ScaleBuf::Packed(v) => ScaleBuf::Packed(v[..v.len().saturating_sub(1)].to_vec()),
    }
}

fn bad_counts(counts: &[i32], t: usize) -> Vec<(&'static str, Vec<i32>)> {
    let mut over = counts.to_vec();
    *over.last_mut().expect("E >= 1") = t as i32 + 1;
    let mut neg = counts.to_vec();
    neg[0] = -1;
    let mut min = counts.to_vec();
    min[0] = i32::MIN;
    vec![
        ("count above T", over),
        ("negative count", neg),
        ("count i32::MIN", min),
        ("counts too short", counts[1..].to_vec()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Token-group quantization.

/// §5.1: bit-exact `q` and scales.
pub fn check_token_group_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &TokenGroupQuantCase) -> Checked {
    let p = &c.p;
    let n = p.rows() * p.k();
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(n), poison_scales(p.scale_format(), sh[0] * sh[1]));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "token_group_quant",
        NaiveCpu.token_group_quant(p, c.x.view(), &mut q0, s0.view_mut()),
    )?;
    dut_ok("token_group_quant", dut.token_group_quant(p, c.x.view(), &mut q1, s1.view_mut()))?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for token-group quantization: wrong lengths and scale kinds.
pub fn check_token_group_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &TokenGroupQuantCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.rows() * p.k();
    let sh = p.scale_shape();
    let good_s = poison_scales(p.scale_format(), sh[0] * sh[1]);
    let short_x = c.x.shortened();
    let variants: Vec<(&str, &Input, usize, ScaleBuf)> = vec![
        ("x too short", &short_x, n, good_s.clone()),
        ("q too long", &c.x, n + 1, good_s.clone()),
        ("scales of the wrong kind", &c.x, n, wrong_kind(&good_s)),
        ("scales too long", &c.x, n, {
            let mut s = good_s.clone();
            match &mut s {
                ScaleBuf::F32(v) => v.push(0.0),
                ScaleBuf::Packed(v) => v.push(0),
            }
            s
        }),
    ];
    for (what, x, qn, s) in variants {
        if what == "x too short" && n == 0 {
            continue;
        }
        let make = || (poison_u8(qn), s.clone());
        same_rejection(
            what,
            make,
            |o| NaiveCpu.token_group_quant(p, x.view(), &mut o.0, o.1.view_mut()),
            |o| dut.token_group_quant(p, x.view(), &mut o.0, o.1.view_mut()),
        )?;
    }
    Ok(())
}

/// §5.1 batched: bit-exact live rows, dead rows untouched.
pub fn check_batched_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BatchedQuantCase) -> Checked {
    let p = &c.p;
    let (t, k) = (p.capacity(), p.k());
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(p.experts() * t * k), poison_scales(p.scale_format(), sh.iter().product()));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "batched_token_group_quant",
        NaiveCpu.batched_token_group_quant(p, c.x.view(), &c.counts, &mut q0, s0.view_mut()),
    )?;
    dut_ok(
        "batched_token_group_quant",
        dut.batched_token_group_quant(p, c.x.view(), &c.counts, &mut q1, s1.view_mut()),
    )?;
    untouched_rows("q", &q1, t, k, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s", &s1, sh[1], t, &c.counts)?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for batched quantization: bad counts, short input.
pub fn check_batched_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BatchedQuantCase) -> Result<(), String> {
    let p = &c.p;
    let sh = p.scale_shape();
    let make = || {
        (
            poison_u8(p.experts() * p.capacity() * p.k()),
            poison_scales(p.scale_format(), sh.iter().product()),
        )
    };
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        same_rejection(
            what,
            make,
            |o| NaiveCpu.batched_token_group_quant(p, c.x.view(), &counts, &mut o.0, o.1.view_mut()),
            |o| dut.batched_token_group_quant(p, c.x.view(), &counts, &mut o.0, o.1.view_mut()),
        )?;
    }
    let x = c.x.shortened();
    same_rejection(
        "x too short",
        make,
        |o| NaiveCpu.batched_token_group_quant(p, x.view(), &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.batched_token_group_quant(p, x.view(), &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Block quantization.

/// §4: bit-exact `q` and scales.
pub fn check_block_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BlockQuantCase) -> Checked {
    let p = &c.p;
    let n = p.experts() * p.rows() * p.cols();
    let sn: usize = p.scale_shape().iter().product();
    let (mut q0, mut s0) = (poison_u8(n), vec![f32::from_bits(POISON_F32); sn]);
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok("block_quant", NaiveCpu.block_quant(p, c.w.view(), &mut q0, &mut s0))?;
    dut_ok("block_quant", dut.block_quant(p, c.w.view(), &mut q1, &mut s1))?;
    same_bits("q", &q1, &q0)?;
    same_bits("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for block quantization: short weights, short scales.
pub fn check_block_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BlockQuantCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.experts() * p.rows() * p.cols();
    let sn: usize = p.scale_shape().iter().product();
    let w = c.w.shortened();
    let make = || (poison_u8(n), vec![f32::from_bits(POISON_F32); sn]);
    same_rejection(
        "w too short",
        make,
        |o| NaiveCpu.block_quant(p, w.view(), &mut o.0, &mut o.1),
        |o| dut.block_quant(p, w.view(), &mut o.0, &mut o.1),
    )?;
    let make = || (poison_u8(n), vec![f32::from_bits(POISON_F32); sn - 1]);
    same_rejection(
        "s too short",
        make,
        |o| NaiveCpu.block_quant(p, c.w.view(), &mut o.0, &mut o.1),
        |o| dut.block_quant(p, c.w.view(), &mut o.0, &mut o.1),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SiLU-mul-quant.

/// §5.2: bit-exact live rows in both numerics and every format, dead rows untouched.
pub fn check_silu_mul_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &SiluMulQuantCase) -> Checked {
    let p = &c.p;
    let (t, h) = (p.capacity(), p.h());
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(p.experts() * t * h), poison_scales(p.scale_format(), sh.iter().product()));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "silu_mul_quant",
        NaiveCpu.silu_mul_quant(p, &c.y, &c.counts, &mut q0, s0.view_mut()),
    )?;
    dut_ok("silu_mul_quant", dut.silu_mul_quant(p, &c.y, &c.counts, &mut q1, s1.view_mut()))?;
    untouched_rows("q", &q1, t, h, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s", &s1, sh[1], t, &c.counts)?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for SiLU-mul-quant: bad counts, short input, wrong scale kind.
pub fn check_silu_mul_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &SiluMulQuantCase) -> Result<(), String> {
    let p = &c.p;
    let sh = p.scale_shape();
    let qn = p.experts() * p.capacity() * p.h();
    let make = || (poison_u8(qn), poison_scales(p.scale_format(), sh.iter().product()));
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        same_rejection(
            what,
            make,
            |o| NaiveCpu.silu_mul_quant(p, &c.y, &counts, &mut o.0, o.1.view_mut()),
            |o| dut.silu_mul_quant(p, &c.y, &counts, &mut o.0, o.1.view_mut()),
        )?;
    }
    let y = &c.y[1..];
    same_rejection(
        "y too short",
        make,
        |o| NaiveCpu.silu_mul_quant(p, y, &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.silu_mul_quant(p, y, &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    let make = || (poison_u8(qn), wrong_kind(&poison_scales(p.scale_format(), sh.iter().product())));
    same_rejection(
        "scales of the wrong kind",
        make,
        |o| NaiveCpu.silu_mul_quant(p, &c.y, &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.silu_mul_quant(p, &c.y, &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMM.

/// §5.3: live rows within the bound (or bit-exact), NaN positions equal, dead rows untouched.
pub fn check_gemm<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &GemmCase, tol: GemmTol) -> Checked {
    let p = &c.p;
    let n = p.experts() * p.capacity() * p.n();
    let (mut d0, mut bound) = (poison_bf16(n), vec![0f64; n]);
    let mut d1 = d0.clone();
    ref_ok(
        "grouped_gemm",
        NaiveCpu.grouped_gemm_with_bound(p, &c.a, c.sa.view(), &c.b, &c.sb, &c.counts, &mut d0, &mut bound),
    )?;
    dut_ok(
        "grouped_gemm",
        dut.grouped_gemm(p, &c.a, c.sa.view(), &c.b, &c.sb, &c.counts, &mut d1),
    )?;
    untouched_rows("d", &d1, p.capacity(), p.n(), &c.counts, POISON_BF16 as u64)?;
    compare_gemm("d", &d1, &d0, &bound, p.capacity(), p.n(), &c.counts, tol)
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
            |o| NaiveCpu.grouped_gemm(p, &c.a, sa, &c.b, sb, counts, o),
            |o| dut.grouped_gemm(p, &c.a, sa, &c.b, sb, counts, o),
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

fn poisoned_workspace(p: &Experts) -> ExpertsWorkspace {
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
pub fn check_experts<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &ExpertsCase, tol: GemmTol) -> Checked {
    let p = &c.p;
    let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
    let mut ws = poisoned_workspace(p);
    let mut out = poison_bf16(e * t * k);
    dut_ok("experts apply", dut.apply(p, c.inputs(), &mut ws, &mut out))?;
    untouched_rows("h1", &ws.h1, t, 2 * i, &c.counts, POISON_BF16 as u64)?;
    untouched_rows("q2", &ws.q2, t, i, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s2", &ws.s2, p.silu().scale_shape()[1], t, &c.counts)?;
    untouched_rows("out", &out, t, k, &c.counts, POISON_BF16 as u64)?;

    // Stage 1: GEMM1 from the inputs.
    let g1 = p.gemm1();
    let (mut h1, mut b1) = (poison_bf16(ws.h1.len()), vec![0f64; ws.h1.len()]);
    ref_ok(
        "gemm1",
        NaiveCpu.grouped_gemm_with_bound(&g1, &c.a1q, c.a1s.view(), &c.w1, &c.w1s, &c.counts, &mut h1, &mut b1),
    )?;
    let o1 = compare_gemm("h1 (GEMM1)", &ws.h1, &h1, &b1, t, 2 * i, &c.counts, tol)?;
    // Stage 2: SiLU-mul-quant of the backend's h1.
    let silu = p.silu();
    let (mut q2, mut s2) = (poison_u8(ws.q2.len()), poison_scales(p.scale_format(), ws.s2.len()));
    ref_ok(
        "silu_mul_quant",
        NaiveCpu.silu_mul_quant(&silu, &ws.h1, &c.counts, &mut q2, s2.view_mut()),
    )?;
    same_bits("q2 (SiLU-mul-quant of the backend's h1)", &ws.q2, &q2)?;
    same_scales("s2 (SiLU-mul-quant of the backend's h1)", &ws.s2, &s2)?;
    // Stage 3: GEMM2 of the backend's q2, s2.
    let g2 = p.gemm2();
    let (mut o, mut b2) = (poison_bf16(out.len()), vec![0f64; out.len()]);
    ref_ok(
        "gemm2",
        NaiveCpu.grouped_gemm_with_bound(&g2, &ws.q2, ws.s2.view(), &c.w2, &c.w2s, &c.counts, &mut o, &mut b2),
    )?;
    let o3 = compare_gemm("out (GEMM2 of the backend's q2)", &out, &o, &b2, t, k, &c.counts, tol)?;

    // End to end against the reference pipeline.
    let mut ws_ref = poisoned_workspace(p);
    let mut out_ref = poison_bf16(out.len());
    ref_ok("experts apply", NaiveCpu.apply(p, c.inputs(), &mut ws_ref, &mut out_ref))?;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (ex, &cnt) in c.counts.iter().enumerate() {
        let live = &out[ex * t * k..][..cnt as usize * k];
        let live_ref = &out_ref[ex * t * k..][..cnt as usize * k];
        xs.extend(live.iter().map(|v| v.to_f64()));
        ys.extend(live_ref.iter().map(|v| v.to_f64()));
    }
    let finite = xs.iter().chain(&ys).all(|v| v.is_finite());
    let cd = if finite { calc_diff(&xs, &ys) } else { f64::NAN };
    if c.random_data && finite && cd.partial_cmp(&1e-5) != Some(std::cmp::Ordering::Less) {
        return Err(format!("experts end to end: calc_diff {cd:e} >= 1e-5"));
    }
    if c.random_data && !finite {
        return Err("experts end to end: random data produced a non-finite output".into());
    }
    let exact = same_bits("out", &out, &out_ref).is_ok() && o1.exact && o3.exact;
    if tol == GemmTol::Exact && !exact {
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

fn prepare_outputs(p: &Prepare) -> (Vec<u8>, ScaleBuf, Vec<i32>) {
    let sh = p.quant().scale_shape();
    (
        poison_u8(p.experts() * p.capacity() * p.k()),
        poison_scales(p.scale_format(), sh.iter().product()),
        vec![POISON_COUNT; p.experts()],
    )
}

/// §5.5 prepare: bit-exact `a1q`, `a1s`, `counts`; rows past the routed counts untouched.
pub fn check_prepare<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &PrepareCase) -> Checked {
    let p = &c.p;
    let (mut q0, mut s0, mut n0) = prepare_outputs(p);
    let (mut q1, mut s1, mut n1) = prepare_outputs(p);
    ref_ok("prepare", NaiveCpu.prepare(p, &c.x, &c.topk_ids, &mut q0, s0.view_mut(), &mut n0))?;
    dut_ok("prepare", dut.prepare(p, &c.x, &c.topk_ids, &mut q1, s1.view_mut(), &mut n1))?;
    same_bits("counts", &n1, &n0)?;
    untouched_rows("a1q", &q1, p.capacity(), p.k(), &n0, POISON_U8 as u64)?;
    untouched_scale_rows("a1s", &s1, p.quant().scale_shape()[1], p.capacity(), &n0)?;
    same_bits("a1q", &q1, &q0)?;
    same_scales("a1s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for prepare: ids outside `[-1, E)`, an expert over capacity, short `x`.
pub fn check_prepare_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &PrepareCase) -> Result<(), String> {
    let p = &c.p;
    let run = |what: &str, p: &Prepare, x: &[bf16], ids: &[i32]| {
        same_rejection(
            what,
            || prepare_outputs(p),
            |o| NaiveCpu.prepare(p, x, ids, &mut o.0, o.1.view_mut(), &mut o.2),
            |o| dut.prepare(p, x, ids, &mut o.0, o.1.view_mut(), &mut o.2),
        )
    };
    if !c.topk_ids.is_empty() {
        let last = c.topk_ids.len() - 1;
        let mut ids = c.topk_ids.clone();
        ids[last] = p.experts() as i32;
        run("topk id equal to E", p, &c.x, &ids)?;
        ids[last] = -2;
        run("topk id -2", p, &c.x, &ids)?;
        run("x too short", p, &c.x[1..], &c.topk_ids)?;
    }
    // T + 1 tokens all routed to the last expert.
    let m = p.capacity() + 1;
    let q = Prepare::new(m, p.k(), 1, p.experts(), p.capacity(), p.scale_format()).map_err(|e| e.to_string())?;
    let x = vec![bf16::ONE; m * p.k()];
    let ids = vec![p.experts() as i32 - 1; m];
    let err = run("an expert over capacity", &q, &x, &ids)?;
    match err.as_problem() {
        Some(moe_core::ProblemError::Overflow { expert, count, .. }) if *expert == p.experts() - 1 && *count == m => Ok(()),
        _ => Err(format!(
            "an expert over capacity: the error `{err}` does not name the expert and its count"
        )),
    }
}

/// §5.5 finalize: bit-exact.
pub fn check_finalize<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &FinalizeCase) -> Checked {
    let p = &c.p;
    let mut o0 = poison_bf16(p.tokens() * p.k());
    let mut o1 = o0.clone();
    ref_ok(
        "finalize",
        NaiveCpu.finalize(p, &c.expert_out, &c.topk_ids, &c.topk_weights, &mut o0),
    )?;
    dut_ok("finalize", dut.finalize(p, &c.expert_out, &c.topk_ids, &c.topk_weights, &mut o1))?;
    same_bits("out", &o1, &o0)?;
    Ok(Outcome::EXACT)
}

/// §7 for finalize: ids outside `[-1, E)`, short weights, short expert outputs.
pub fn check_finalize_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &FinalizeCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.tokens() * p.k();
    let run = |what: &str, eo: &[bf16], ids: &[i32], w: &[f32]| {
        same_rejection(
            what,
            || poison_bf16(n),
            |o| NaiveCpu.finalize(p, eo, ids, w, o),
            |o| dut.finalize(p, eo, ids, w, o),
        )
    };
    run("expert_out too short", &c.expert_out[1..], &c.topk_ids, &c.topk_weights)?;
    if !c.topk_ids.is_empty() {
        let mut ids = c.topk_ids.clone();
        ids[0] = p.experts() as i32;
        run("topk id equal to E", &c.expert_out, &ids, &c.topk_weights)?;
        run("topk_weights too short", &c.expert_out, &c.topk_ids, &c.topk_weights[1..])?;
    }
    Ok(())
}

/// Runs `f` on every labelled backend; the first failure is prefixed with the backend's label.
pub fn on_each<D, O>(duts: &[(String, D)], f: impl Fn(&D) -> Result<O, String>) -> Result<(), String> {
    for (label, d) in duts {
        f(d).map_err(|e| format!("[{label}] {e}"))?;
    }
    Ok(())
}
