//! `moe run`'s check must be able to fail: backends with a planted GEMM bug on exactly the rows
//! the old check sampled only by chance (each expert's last live row), or writing a row past the
//! counts, must fail it on every seed.

use moe_core::{bf16, GemmInputs, GroupedGemm};
use moe_engine::pipeline::{run_on, RunConfig};
use moe_engine::verify::tamper::Tampered;
use moe_engine::GemmContract;
use moe_ref_cpu::CpuBackend;

fn small(seed: u64, check_rows: usize) -> RunConfig {
    RunConfig {
        check_rows,
        experts: 4,
        capacity: 16,
        hidden: 256,
        intermediate: 128,
        tokens: 16,
        topk: 3,
        seed,
        ..RunConfig::default()
    }
}

fn failed_checks(
    hook: impl Fn(&GroupedGemm, &GemmInputs<'_>, &mut [bf16]) + Send + Sync + 'static,
    seed: u64,
    check_rows: usize,
) -> Vec<String> {
    let cpu = CpuBackend::with_threads(1).unwrap();
    let dut = Tampered::new(&cpu, hook);
    let report = run_on(&small(seed, check_rows), &dut, GemmContract::Exact, &|_| {}).unwrap();
    report.checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect()
}

#[test]
fn an_honest_backend_passes() {
    for seed in 0..3 {
        assert!(failed_checks(|_, _, _| {}, seed, 2).is_empty(), "seed {seed}");
    }
}

// The old check recomputed `--check-rows` random live rows per expert: a backend wrong only on
// each expert's last live row passed it whenever the sample missed that row, and always with
// `--check-rows 0` (which switched the GEMM checks off and still printed PASS).
#[test]
fn a_gemm_wrong_on_each_experts_last_live_row_fails_on_every_seed() {
    let last_row_off = |p: &GroupedGemm, i: &GemmInputs<'_>, d: &mut [bf16]| {
        let (t, n) = (p.capacity(), p.n());
        for (e, &c) in i.counts.iter().enumerate() {
            if c > 0 {
                let x = &mut d[(e * t + c as usize - 1) * n];
                *x = bf16::from_bits(x.to_bits() ^ 1);
            }
        }
    };
    for (seed, check_rows) in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1), (5, 2)] {
        let failed = failed_checks(last_row_off, seed, check_rows);
        assert!(
            failed.iter().any(|f| f.starts_with("gemm1")),
            "seed {seed}, --check-rows {check_rows}: {failed:?}"
        );
    }
}

#[test]
fn a_gemm_writing_rows_past_the_counts_fails() {
    let dead_row_written = |p: &GroupedGemm, i: &GemmInputs<'_>, d: &mut [bf16]| {
        let (t, n) = (p.capacity(), p.n());
        for (e, &c) in i.counts.iter().enumerate() {
            if (c as usize) < t {
                d[(e * t + c as usize) * n] = bf16::ONE;
            }
        }
    };
    let failed = failed_checks(dead_row_written, 0, 2);
    assert!(failed.iter().any(|f| f.starts_with("rows past the counts")), "{failed:?}");
}
