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

use moe_core::{bf16, ExpertsInputs, MoeError, MoeResult, ScaleBuf, Scales};

use crate::device::GemmContract;
use crate::ops::*;
use crate::verify::compare::*;

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

pub(crate) fn ref_ok(what: &str, r: MoeResult<()>) -> Result<(), String> {
    r.map_err(|e| format!("{what}: the reference rejected a valid case (a test bug): {e}"))
}

pub(crate) fn dut_ok(what: &str, r: MoeResult<()>) -> Result<(), String> {
    r.map_err(|e| format!("{what}: the backend rejected a valid case: {e}"))
}

/// Which CPU path computes the reference values of a GEMM or experts check.
///
/// `NaiveCpu` defines the results and is used wherever it is affordable. `CpuBackend` (the fast
/// path) is bit-identical to it for every operation, the GEMM included: `moe-ref-cpu`'s
/// `naive_vs_fast` tests and the CPU mount of the moe-testing suites (which check `CpuBackend`
/// against `NaiveCpu` on every ordinary case) prove it. It stands in for the naive path above
/// [`Reference::NAIVE_MACS_MAX`] multiply-adds, i.e. on the tile-edge shapes of
/// [`crate::verify::tiles`], whose largest cases would take seconds each naive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// `NaiveCpu`.
    Naive,
    /// `CpuBackend` on the global rayon pool.
    Fast,
}

impl Reference {
    /// The most multiply-adds a check computes with the naive path (about 0.1 s).
    pub const NAIVE_MACS_MAX: usize = 1 << 24;

    /// The reference for a check of `macs` multiply-adds.
    pub fn for_macs(macs: usize) -> Self {
        if macs <= Self::NAIVE_MACS_MAX {
            Reference::Naive
        } else {
            Reference::Fast
        }
    }

    /// The backend.
    pub fn backend(self) -> &'static dyn moe_core::BatchedExperts {
        static FAST: std::sync::OnceLock<moe_ref_cpu::CpuBackend> = std::sync::OnceLock::new();
        match self {
            Reference::Naive => &moe_ref_cpu::NaiveCpu,
            Reference::Fast => FAST.get_or_init(moe_ref_cpu::CpuBackend::new),
        }
    }

    /// `grouped_gemm_with_bound` of the chosen path.
    pub fn grouped_gemm_with_bound(
        self,
        p: &moe_core::GroupedGemm,
        inputs: moe_core::GemmInputs<'_>,
        d: &mut [bf16],
        bound: &mut [f64],
    ) -> MoeResult<()> {
        match self {
            Reference::Naive => moe_ref_cpu::NaiveCpu.grouped_gemm_with_bound(p, inputs, d, bound),
            Reference::Fast => moe_ref_cpu::CpuBackend::new().grouped_gemm_with_bound(p, inputs, d, bound),
        }
    }
}

/// Live multiply-adds of a GEMM of `n × k` per live row.
pub(crate) fn live_macs(counts: &[i32], n: usize, k: usize) -> usize {
    counts
        .iter()
        .map(|&c| c.max(0) as usize)
        .sum::<usize>()
        .saturating_mul(n)
        .saturating_mul(k)
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
    tol: GemmContract,
) -> Checked {
    let exact = same_bits(what, dut, reference);
    let c = match tol {
        GemmContract::Exact => return exact.map(|()| Outcome::EXACT),
        GemmContract::Bounded { c } => c,
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

pub(crate) fn wrong_kind(s: &ScaleBuf) -> ScaleBuf {
    match s {
        ScaleBuf::F32(v) => ScaleBuf::Packed(vec![POISON_I32; v.len()]),
        ScaleBuf::Packed(v) => ScaleBuf::F32(vec![f32::from_bits(POISON_F32); v.len()]),
    }
}

pub(crate) fn shorter(s: &ScaleBuf) -> ScaleBuf {
    match s {
        ScaleBuf::F32(v) => ScaleBuf::F32(v[..v.len().saturating_sub(1)].to_vec()),
        ScaleBuf::Packed(v) => ScaleBuf::Packed(v[..v.len().saturating_sub(1)].to_vec()),
    }
}

pub(crate) fn bad_counts(counts: &[i32], t: usize) -> Vec<(&'static str, Vec<i32>)> {
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

mod bias;
mod gemm;
mod quant;
mod route;
mod router;

pub use bias::*;
pub use gemm::*;
pub use quant::*;
pub use route::*;
pub use router::*;

/// Runs `f` on every labelled backend; the first failure is prefixed with the backend's label.
pub fn on_each<D, O>(duts: &[(String, D)], f: impl Fn(&D) -> Result<O, String>) -> Result<(), String> {
    for (label, d) in duts {
        f(d).map_err(|e| format!("[{label}] {e}"))?;
    }
    Ok(())
}
