//! The engine of `moe diff`: every operation over `N` seeded random cases against the naive
//! reference, with the same checks as the test suites, summarized per operation.
//!
//! Case `i` of operation `op` is generated from `(seed, op, i)` alone, so a failure is
//! reproduced by its seed and index. Even cases are "random data" (finite, sensible scales; the
//! experts stage then also has to meet `calc_diff < 1e-5`), odd cases mix in the hard values of
//! [`crate::rng::Rng::hard`]. Every case also runs the bad-input checks.
//!
//! For the grouped GEMM and the experts stage, every [`TILE_EDGE_EVERY`]th case (indices 15,
//! 31, ...) has a shape at the kernels' tile edges ([`crate::verify::tiles`]) instead of a small
//! one, and every [`BIAS_EVERY`]th GEMM case (indices 0, 64, ...) also runs the epilogue
//! rounding check ([`check_gemm_rounding_bias`]) on a case of 10^5 elements; a failure of
//! either counts as a failure of that case.

use std::panic::{catch_unwind, AssertUnwindSafe};

use moe_core::BatchedExperts;

use crate::device::GemmContract;
use crate::ops::*;
use crate::rng::Rng;
use crate::verify::check::*;

/// Every this many cases of the GEMM and experts operations, one is a tile-edge shape.
pub const TILE_EDGE_EVERY: usize = 16;
/// Every this many GEMM cases, one also runs the epilogue rounding check.
pub const BIAS_EVERY: usize = 64;

/// Options of a diff run.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Cases per operation.
    pub cases: usize,
    /// The seed.
    pub seed: u64,
    /// How the GEMM stages are compared (the backend's measured `c`, or exact).
    pub gemm_tol: GemmContract,
    /// The operations to run.
    pub ops: Vec<Op>,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            cases: 100,
            seed: 0,
            gemm_tol: GemmContract::Exact,
            ops: Op::ALL.to_vec(),
        }
    }
}

/// The results of one operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSummary {
    /// The operation that needs it.
    pub op: Op,
    /// Cases run.
    pub cases: usize,
    /// Cases whose outputs equal the reference bit for bit.
    pub exact: usize,
    /// Cases that failed.
    pub failed: usize,
    /// The worst `|error| / allowed` of a bounded comparison (0 when all exact).
    pub worst: f64,
    /// The worst end-to-end `calc_diff` (experts only).
    pub worst_calc_diff: Option<f64>,
    /// The worst `|mean|` rounding bias of the GEMM epilogue, in bf16 ulps, over the cases that
    /// ran [`check_gemm_rounding_bias`] (grouped GEMM only).
    pub worst_rounding_bias: Option<f64>,
    /// The first failures (at most 5), each with its case index.
    pub failures: Vec<String>,
}

/// The results of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffSummary {
    /// The backend's name.
    pub backend: String,
    /// Seed of every random choice.
    pub seed: u64,
    /// One summary per operation.
    pub ops: Vec<OpSummary>,
}

impl DiffSummary {
    /// Whether every case of every operation passed.
    pub fn passed(&self) -> bool {
        self.ops.iter().all(|o| o.failed == 0)
    }
}

/// One case: its outcome and, for GEMM cases that ran it, the rounding bias.
fn run_case<B: BatchedExperts + ?Sized>(
    dut: &B,
    op: Op,
    i: usize,
    r: &mut Rng,
    hard: bool,
    tol: GemmContract,
) -> Result<(Outcome, Option<f64>), String> {
    let tile_edge = i % TILE_EDGE_EVERY == TILE_EDGE_EVERY - 1;
    match op {
        Op::GroupedGemm => {
            let c = if tile_edge {
                GemmCase::tile_edge(r, hard)
            } else {
                GemmCase::random(r, hard)
            };
            let o = check_gemm(dut, &c, tol)?;
            check_gemm_rejects(dut, &c).map_err(|e| format!("bad input: {e}"))?;
            let bias = if i % BIAS_EVERY == 0 {
                Some(check_gemm_rounding_bias(dut, &GemmCase::rounding_bias_case(r))?.worst())
            } else {
                None
            };
            Ok((o, bias))
        }
        Op::Experts if tile_edge => {
            let c = ExpertsCase::tile_edge(r, hard);
            let o = check_experts(dut, &c, tol)?;
            check_experts_rejects(dut, &c).map_err(|e| format!("bad input: {e}"))?;
            Ok((o, None))
        }
        _ => run_small_case(dut, op, r, hard, tol).map(|o| (o, None)),
    }
}

/// One case: the main check, then the bad-input checks on the same case.
fn both<C>(c: &C, main: impl Fn(&C) -> Checked, rejects: impl Fn(&C) -> Result<(), String>) -> Checked {
    let o = main(c)?;
    rejects(c).map_err(|e| format!("bad input: {e}"))?;
    Ok(o)
}

fn run_small_case<B: BatchedExperts + ?Sized>(dut: &B, op: Op, r: &mut Rng, hard: bool, tol: GemmContract) -> Checked {
    // One arm per operation: a random case, its check (with the GEMM contract where it has one)
    // and its bad-input checks.
    macro_rules! case {
        ($case:ty, $check:ident, $rejects:ident $(, $tol:expr)?) => {
            both(&<$case>::random(r, hard), |c| $check(dut, c $(, $tol)?), |c| $rejects(dut, c))
        };
    }
    match op {
        Op::TokenGroupQuant => case!(TokenGroupQuantCase, check_token_group_quant, check_token_group_quant_rejects),
        Op::BatchedQuant => case!(BatchedQuantCase, check_batched_quant, check_batched_quant_rejects),
        Op::BlockQuant => case!(BlockQuantCase, check_block_quant, check_block_quant_rejects),
        Op::SiluMulQuant => case!(SiluMulQuantCase, check_silu_mul_quant, check_silu_mul_quant_rejects),
        Op::GroupedGemm => case!(GemmCase, check_gemm, check_gemm_rejects, tol),
        Op::Experts => case!(ExpertsCase, check_experts, check_experts_rejects, tol),
        Op::Prepare => case!(PrepareCase, check_prepare, check_prepare_rejects),
        Op::Finalize => case!(FinalizeCase, check_finalize, check_finalize_rejects),
        Op::Route => case!(RouteCase, check_route, check_route_rejects),
    }
}

/// Runs `opts.cases` cases of every operation of `opts.ops` on `dut`; `progress(op, case)` is
/// called after each case. A panic of the backend counts as a failure of that case.
pub fn run_diff<B: BatchedExperts + ?Sized>(dut: &B, opts: &DiffOptions, mut progress: impl FnMut(Op, usize)) -> DiffSummary {
    let mut ops = Vec::new();
    for &op in &opts.ops {
        let mut s = OpSummary {
            op,
            cases: 0,
            exact: 0,
            failed: 0,
            worst: 0.0,
            worst_calc_diff: None,
            worst_rounding_bias: None,
            failures: Vec::new(),
        };
        for i in 0..opts.cases {
            let mut r = Rng::for_case(opts.seed, op.stream(), i as u64);
            let hard = i % 2 == 1;
            let res = catch_unwind(AssertUnwindSafe(|| run_case(dut, op, i, &mut r, hard, opts.gemm_tol))).unwrap_or_else(|p| {
                Err(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or(p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ))
            });
            s.cases += 1;
            match res {
                Ok((o, bias)) => {
                    if let Some(b) = bias {
                        s.worst_rounding_bias = Some(s.worst_rounding_bias.map_or(b, |w: f64| w.max(b)));
                    }
                    s.exact += o.exact as usize;
                    s.worst = s.worst.max(o.worst);
                    if let Some(cd) = o.calc_diff {
                        s.worst_calc_diff = Some(s.worst_calc_diff.map_or(cd, |w: f64| w.max(cd)));
                    }
                }
                Err(e) => {
                    s.failed += 1;
                    if s.failures.len() < 5 {
                        s.failures.push(format!("case {i} (seed {}): {e}", opts.seed));
                    }
                }
            }
            progress(op, i);
        }
        ops.push(s);
    }
    DiffSummary {
        backend: dut.name().to_string(),
        seed: opts.seed,
        ops,
    }
}
