//! Proof that the properties catch real bugs: backends with a deliberately planted bug (in a
//! copy of the quantizer here, never in the project's code) must be caught by the same property
//! and strategy that the suites run, and proptest must shrink the failure to a small case.
//!
//! - Ties away from zero instead of ties to even in the E4M3 encode of token-group quantization.
//! - The ceil rule computed as `exp2(ceil(log2 s))` in f32 (SPEC §2 warns against it), which is
//!   wrong for scales just above a power of two.

use moe_core::*;
use moe_engine::ops::TokenGroupQuantCase;
use moe_engine::verify::check::check_token_group_quant;
use moe_ref_cpu::CpuBackend;
use moe_testing::oracle::e4m3_nearest_ties_away;
use moe_testing::strategies::{config, token_group_quant_case};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bug {
    TiesAway,
    CeilViaLog2,
}

/// The fast CPU backend with one planted bug in its token-group quantization.
#[derive(Debug)]
pub(crate) struct Planted(pub(crate) CpuBackend, pub(crate) Bug);

impl Planted {
    fn scale(&self, amax: f32, ceil: bool) -> f32 {
        let s = amax / E4M3_MAX;
        match (ceil, self.1) {
            (false, _) => s,
            (true, Bug::CeilViaLog2) => s.log2().ceil().exp2(),
            (true, Bug::TiesAway) => ceil_pow2(s),
        }
    }
    fn encode(&self, v: f32) -> u8 {
        match self.1 {
            Bug::TiesAway => e4m3_nearest_ties_away(v),
            Bug::CeilViaLog2 => e4m3_from_f32(v),
        }
    }
}

impl Backend for Planted {
    fn name(&self) -> &str {
        "cpu-with-a-planted-bug"
    }
    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], mut s: ScalesMut<'_>) -> MoeResult<()> {
        // Correct layout and packing from the real backend; then the planted arithmetic.
        self.0.token_group_quant(p, x, q, s.reborrow())?;
        let (rows, groups, k) = (p.rows(), p.groups(), p.k());
        for r in 0..rows {
            for g in 0..groups {
                let idx = r * k + g * GROUP;
                let amax = (0..GROUP).fold(1e-10f32, |m, i| m.max(x.get(idx + i).abs()));
                let sc = self.scale(amax, p.scale_format().is_ceil());
                for i in 0..GROUP {
                    q[idx + i] = self.encode(x.get(idx + i) / sc);
                }
                if let ScalesMut::F32(v) = &mut s {
                    v[p.layout().index(rows, groups, r, g)] = sc;
                }
            }
        }
        Ok(())
    }
    fn batched_token_group_quant(
        &self,
        p: &BatchedTokenGroupQuant,
        x: Activation<'_>,
        c: &[i32],
        q: &mut [u8],
        s: ScalesMut<'_>,
    ) -> MoeResult<()> {
        self.0.batched_token_group_quant(p, x, c, q, s)
    }
    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        self.0.block_quant(p, w, q, s)
    }
    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], c: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        self.0.silu_mul_quant(p, y, c, q, s)
    }
    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        self.0.grouped_gemm(p, inputs, d)
    }
    fn prepare(&self, p: &Prepare, x: &[bf16], ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, c: &mut [i32]) -> MoeResult<()> {
        self.0.prepare(p, x, ids, a1q, a1s, c)
    }
    fn finalize(&self, p: &Finalize, eo: &[bf16], ids: &[i32], w: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        self.0.finalize(p, eo, ids, w, out)
    }
}

impl BatchedExperts for Planted {}

/// Runs the suite's token-group property on the planted backend; returns the minimized case and
/// the failure message.
fn hunt(bug: Bug) -> (TokenGroupQuantCase, String) {
    let dut = Planted(CpuBackend::with_threads(1).unwrap(), bug);
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
    let bad = run_diff(&Planted(CpuBackend::with_threads(1).unwrap(), Bug::TiesAway), &opts, |_, _| {});
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
