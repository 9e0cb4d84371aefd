//! Proof that the properties catch real bugs: backends with a deliberately planted bug (in a
//! copy of the quantizer here, never in the project's code) must be caught by the same property
//! and strategy that the suites run, and proptest must shrink the failure to a small case.
//!
//! - Ties away from zero instead of ties to even in the E4M3 encode of token-group quantization.
//! - The ceil rule computed as `exp2(ceil(log2 s))` in f32 (SPEC §2 warns against it), which is
//!   wrong for scales just above a power of two.
//! - A GEMM epilogue that truncates the f32 accumulator to bf16 instead of rounding it: within
//!   the per-element bound of a bounded backend, caught only by the rounding-bias check.
//! - A GEMM that writes only the first 64-row tile of each expert, and one that sizes its row
//!   tiles from `expected_m` instead of the counts: invisible to the small random cases
//!   (`T <= 7`), caught by the tile-edge cases and the `expected_m` cases.

use moe_core::*;
use moe_engine::ops::{ExpertsCase, GemmCase, TokenGroupQuantCase};
use moe_engine::verify::check::check_token_group_quant;
use moe_engine::verify::tamper::Tampered;
use moe_ref_cpu::CpuBackend;
use moe_testing::oracle::e4m3_nearest_ties_away;
use moe_testing::strategies::{config, token_group_quant_case};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bug {
    TiesAway,
    CeilViaLog2,
}

impl Bug {
    fn scale(self, amax: f32, ceil: bool) -> f32 {
        let s = amax / E4M3_MAX;
        match (ceil, self) {
            (false, _) => s,
            (true, Bug::CeilViaLog2) => s.log2().ceil().exp2(),
            (true, Bug::TiesAway) => ceil_pow2(s),
        }
    }
    fn encode(self, v: f32) -> u8 {
        match self {
            Bug::TiesAway => e4m3_nearest_ties_away(v),
            Bug::CeilViaLog2 => e4m3_from_f32(v),
        }
    }
}

/// The fast CPU backend `cpu` with one planted bug in its token-group quantization.
pub(crate) fn planted(cpu: &CpuBackend, bug: Bug) -> Tampered<'_> {
    Tampered::named("cpu-with-a-planted-bug", cpu).with_token_group_quant(move |inner, p, x, q, mut s| {
        // Correct layout and packing from the real backend; then the planted arithmetic.
        inner.token_group_quant(p, x, q, s.reborrow())?;
        let (rows, groups, k) = (p.rows(), p.groups(), p.k());
        for r in 0..rows {
            for g in 0..groups {
                let idx = r * k + g * GROUP;
                let amax = (0..GROUP).fold(1e-10f32, |m, i| m.max(x.get(idx + i).abs()));
                let sc = bug.scale(amax, p.scale_format().is_ceil());
                for i in 0..GROUP {
                    q[idx + i] = bug.encode(x.get(idx + i) / sc);
                }
                if let ScalesMut::F32(v) = &mut s {
                    v[p.layout().index(rows, groups, r, g)] = sc;
                }
            }
        }
        Ok(())
    })
}

/// Runs the suite's token-group property on the planted backend; returns the minimized case and
/// the failure message.
fn hunt(bug: Bug) -> (TokenGroupQuantCase, String) {
    let cpu = CpuBackend::with_threads(1).unwrap();
    let dut = planted(&cpu, bug);
    // A fixed seed, no persistence: the outcome must not depend on earlier runs.
    let cfg = Config {
        cases: 512,
        max_shrink_iters: 50_000,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..config()
    };
    let mut runner = TestRunner::new_with_rng(
        cfg,
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    match runner.run(&token_group_quant_case(), |c| {
        check_token_group_quant(&dut, &c).map(|_| ()).map_err(TestCaseError::fail)
    }) {
        Err(TestError::Fail(msg, case)) => (case, msg.to_string()),
        other => panic!("the planted bug {bug:?} was not caught: {other:?}"),
    }
}

fn describe(c: &TokenGroupQuantCase) -> String {
    let nonzero: Vec<(usize, f32)> = match &c.x {
        moe_engine::ops::ActBuf::Bf16(v) => v
            .iter()
            .map(|x| x.to_f32())
            .enumerate()
            .filter(|(_, x)| *x != 0.0)
            .take(6)
            .collect(),
        moe_engine::ops::ActBuf::F32(v) => v.iter().copied().enumerate().filter(|(_, x)| *x != 0.0).take(6).collect(),
    };
    format!(
        "rows {}, K {}, {}, {:?}, nonzero (first 6): {nonzero:?}",
        c.p.rows(),
        c.p.k(),
        c.p.scale_format(),
        c.p.layout()
    )
}

#[test]
fn ties_away_rounding_is_caught_by_the_token_group_quant_property() {
    let (case, msg) = hunt(Bug::TiesAway);
    eprintln!("minimized: {}\n{msg}", describe(&case));
    assert!(msg.contains("q:"), "{msg}");
    assert_eq!(case.p.rows(), 1, "shrinks to one row");
}

#[test]
fn ceil_via_log2_is_caught_by_the_token_group_quant_property() {
    let (case, msg) = hunt(Bug::CeilViaLog2);
    eprintln!("minimized: {}\n{msg}", describe(&case));
    assert!(case.p.scale_format().is_ceil());
}

#[test]
fn run_diff_counts_the_planted_bug_and_passes_the_real_backend() {
    use moe_engine::verify::diff::{run_diff, DiffOptions};
    use moe_engine::Op;
    let opts = DiffOptions {
        cases: 40,
        seed: 3,
        ops: vec![Op::TokenGroupQuant],
        ..DiffOptions::default()
    };
    let cpu = CpuBackend::with_threads(1).unwrap();
    let bad = run_diff(&planted(&cpu, Bug::TiesAway), &opts, |_, _| {});
    assert!(!bad.passed() && bad.ops[0].failed > 0, "{bad:?}");
    assert!(bad.ops[0].failures[0].contains("q:"), "{:?}", bad.ops[0].failures);
    let good = run_diff(
        &CpuBackend::with_threads(2).unwrap(),
        &DiffOptions {
            cases: 8,
            ..DiffOptions::default()
        },
        |_, _| {},
    );
    assert!(good.passed(), "{good:?}");
    assert_eq!(good.ops.len(), Op::ALL.len());
}

// ---------------------------------------------------------------------------------------------
// A GEMM epilogue that truncates instead of rounding.

/// The fast CPU backend `cpu` whose grouped GEMM takes the reference's exact f32 accumulators
/// and truncates them toward zero to bf16 (dropping the low 16 bits) instead of rounding to
/// nearest.
fn truncating_epilogue(cpu: &CpuBackend) -> Tampered<'_> {
    Tampered::named("cpu-with-a-truncating-gemm-epilogue", cpu).with_gemm(move |_, p, inputs, d| {
        p.check(&inputs, d)?;
        let mut acc = vec![0f32; d.len()];
        cpu.grouped_gemm_accumulators(p, inputs, &mut acc)?;
        let (t_cap, n) = (p.capacity(), p.n());
        for (e, &c) in inputs.counts.iter().enumerate() {
            for i in e * t_cap * n..(e * t_cap + c as usize) * n {
                // NaN stays the canonical NaN of `bf16_out`; everything else loses its low bits.
                d[i] = if acc[i].is_nan() {
                    bf16::from_bits(0x7FC0)
                } else {
                    bf16::from_bits((acc[i].to_bits() >> 16) as u16)
                };
            }
        }
        Ok(())
    })
}

/// The contract of a bounded backend at the SPEC's ceiling `c = 2^-12` (the CUDA mount's).
fn bounded() -> moe_engine::GemmContract {
    moe_engine::GemmContract::bounded(moe_engine::GemmContract::C_MAX).unwrap()
}

#[test]
fn truncating_gemm_epilogue_passes_the_per_element_bound_but_not_the_rounding_bias_check() {
    use moe_engine::rng::Rng;
    use moe_engine::verify::check::{check_experts, check_gemm, check_gemm_rounding_bias};
    let cpu = CpuBackend::with_threads(2).unwrap();
    let dut = truncating_epilogue(&cpu);
    // Every per-element check passes: truncation is never more than one ulp from the nearest.
    for i in 0..16u64 {
        let c = GemmCase::random(&mut Rng::for_case(31, 0, i), i % 2 == 1);
        check_gemm(&dut, &c, bounded()).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
    for i in 0..2u64 {
        let c = GemmCase::tile_edge(&mut Rng::for_case(35, 0, i), false);
        check_gemm(&dut, &c, bounded()).unwrap_or_else(|e| panic!("tile-edge case {i}: {e}"));
    }
    // (The experts stage's end-to-end `calc_diff < 1e-5` sometimes notices, through a changed
    // FP8 code of the intermediate, but only by chance: on seed 41, case 0 fails it and case 1
    // passes.)
    let c = ExpertsCase::random(&mut Rng::for_case(41, 0, 1), false);
    check_experts(&dut, &c, bounded()).unwrap();
    // The bias check does not.
    let c = GemmCase::rounding_bias_case(&mut Rng::for_case(34, 0, 0));
    let err = check_gemm_rounding_bias(&dut, &c).unwrap_err();
    eprintln!("{err}");
    assert!(err.contains("rounding bias of the GEMM epilogue"), "{err}");
    // The real backend passes the same check.
    check_gemm_rounding_bias(&CpuBackend::with_threads(2).unwrap(), &c).unwrap();
}

#[test]
fn run_diff_counts_the_truncating_epilogue_in_the_grouped_gemm() {
    use moe_engine::verify::diff::{run_diff, DiffOptions};
    use moe_engine::Op;
    let opts = DiffOptions {
        cases: 2,
        seed: 5,
        gemm_tol: bounded(),
        ops: vec![Op::GroupedGemm],
    };
    let cpu = CpuBackend::with_threads(2).unwrap();
    let bad = run_diff(&truncating_epilogue(&cpu), &opts, |_, _| {});
    assert_eq!(bad.ops[0].failed, 1, "{bad:?}");
    assert!(bad.ops[0].failures[0].starts_with("case 0"), "{:?}", bad.ops[0].failures);
    let good = run_diff(&CpuBackend::with_threads(2).unwrap(), &opts, |_, _| {});
    assert!(good.passed(), "{good:?}");
    assert!(good.ops[0].worst_rounding_bias.unwrap() < 0.01, "{good:?}");
}

// ---------------------------------------------------------------------------------------------
// Row-tile bugs that only shapes past 64 rows can show.

/// The fast CPU backend `cpu` whose GEMM writes only the first `limit(p)` rows of each expert (a
/// kernel that launches too few row tiles); later live rows keep whatever the buffer held.
fn first_rows_only(cpu: &CpuBackend, limit: fn(&GroupedGemm) -> usize) -> Tampered<'_> {
    Tampered::named("cpu-with-too-few-row-tiles", cpu).with_gemm(move |inner, p, inputs, d| {
        let mut full = d.to_vec();
        inner.grouped_gemm(p, inputs, &mut full)?;
        let (t_cap, n, rows) = (p.capacity(), p.n(), limit(p).min(p.capacity()));
        for e in 0..p.experts() {
            let r = (e * t_cap) * n..(e * t_cap + rows) * n;
            d[r.clone()].copy_from_slice(&full[r]);
        }
        Ok(())
    })
}

/// One 64-row tile per expert, whatever the counts.
fn one_row_tile(_: &GroupedGemm) -> usize {
    64
}

/// Row tiles for `expected_m` rows (the hint) instead of the counts.
fn tiles_from_expected_m(p: &GroupedGemm) -> usize {
    p.expected_m().unwrap_or(p.capacity()).div_ceil(64) * 64
}

/// Runs `strategy` through `check_gemm` on `dut` for `cases` cases; the failure, if any.
fn gemm_property(dut: &Tampered<'_>, strategy: impl proptest::strategy::Strategy<Value = GemmCase>, cases: u32) -> Option<String> {
    use moe_engine::verify::check::check_gemm;
    let cfg = Config {
        cases,
        // The message, not a minimal case, is what the tests look at; shrinking a big case is slow.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..config()
    };
    let mut runner = TestRunner::new_with_rng(
        cfg,
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    match runner.run(&strategy, |c| {
        check_gemm(dut, &c, bounded()).map(|_| ()).map_err(TestCaseError::fail)
    }) {
        Ok(()) => None,
        Err(TestError::Fail(msg, _)) => Some(msg.to_string()),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn one_row_tile_per_expert_passes_the_small_cases_and_is_caught_at_tile_edges() {
    use moe_testing::strategies::{gemm_case, gemm_tile_edge_case};
    let cpu = CpuBackend::with_threads(2).unwrap();
    let dut = first_rows_only(&cpu, one_row_tile);
    // The ordinary strategy (T <= 7) cannot see it, however many cases it draws.
    assert_eq!(gemm_property(&dut, gemm_case(), 64), None);
    // The tile-edge strategy, with the suites' fixed number of cases, does.
    let msg = gemm_property(&dut, gemm_tile_edge_case(), 8).expect("the tile-edge cases must catch a missing row tile");
    let row: usize = msg
        .split("row ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no row in: {msg}"));
    assert!(row >= 64, "{msg}");
}

#[test]
fn row_tiles_sized_from_expected_m_are_caught_by_the_expected_m_cases() {
    use moe_engine::rng::Rng;
    use moe_engine::verify::check::check_gemm_independent_of_expected_m;
    let cpu = CpuBackend::with_threads(2).unwrap();
    let dut = first_rows_only(&cpu, tiles_from_expected_m);
    // The old test: one small case, hints 1, 16, 64, 4096: passes.
    let small = GemmCase::random(&mut Rng::for_case(32, 0, 0), false);
    check_gemm_independent_of_expected_m(&dut, &small, bounded(), &[1, 16, 64, 4096]).unwrap();
    // A case with counts at tile edges (as the suite's), hints 1, 16, T and a big one: caught.
    let p = GroupedGemm::new(3, 257, 128, 256, ScaleFormat::F32).unwrap();
    let edges = GemmCase::with_shape(&mut Rng::for_case(32, 1, 0), p, vec![64, 129, 257], false);
    let err = check_gemm_independent_of_expected_m(&dut, &edges, bounded(), &[1, 16, 257, 1 << 20]).unwrap_err();
    assert!(err.starts_with("expected_m 1:"), "{err}");
}
