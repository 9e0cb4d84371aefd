//! `moe diff --backend cpu|cuda --cases N --seed S`: runs the differential suites of moe-testing
//! (`moe_testing::diff::run_diff`) against the naive CPU reference over `N` seeded random cases of
//! every operation, with a progress bar, and prints a summary table: per operation the cases,
//! the bit-exact matches, the failures, and the worst error against its bound.
//!
//! Exit code 0 when every case passed, 1 when any failed, 2 for a usage or device error.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use moe_core::BatchedExperts;
use moe_testing::diff::{run_diff, DiffOptions, DiffSummary, Op};
use moe_testing::GemmTol;

/// Arguments of `moe diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The backend under test: `cpu` (the fast rayon path) or `cuda`.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Random cases per operation.
    #[arg(long, default_value_t = 1000)]
    cases: usize,
    /// The seed; case `i` of an operation depends only on (seed, operation, i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads of the CPU backend (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Only these operations (repeatable): token-group-quant, batched-quant, block-quant,
    /// silu-mul-quant, grouped-gemm, experts, prepare, finalize.
    #[arg(long = "op")]
    ops: Vec<String>,
    /// The GEMM bound constant `c` of SPEC §5.3 (default: exact for cpu, 2^-12 for cuda).
    #[arg(long)]
    gemm_c: Option<f64>,
}

fn open(args: &DiffArgs) -> Result<(Box<dyn BatchedExperts>, GemmTol), String> {
    match args.backend.as_str() {
        "cpu" => {
            let be = match args.threads {
                Some(n) => moe_ref_cpu::CpuBackend::with_threads(n).map_err(|e| e.to_string())?,
                None => moe_ref_cpu::CpuBackend::new(),
            };
            Ok((Box::new(be), args.gemm_c.map_or(GemmTol::Exact, |c| GemmTol::Bounded { c })))
        }
        "cuda" => open_cuda(args),
        other => Err(format!("unknown backend `{other}` (cpu or cuda)")),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(args: &DiffArgs) -> Result<(Box<dyn BatchedExperts>, GemmTol), String> {
    let be = moe_cuda::CudaBackend::new().map_err(|e| e.to_string())?;
    Ok((
        Box::new(be),
        GemmTol::Bounded {
            c: args.gemm_c.unwrap_or(1.0 / 4096.0),
        },
    ))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_: &DiffArgs) -> Result<(Box<dyn BatchedExperts>, GemmTol), String> {
    Err("this `moe` was built without the `cuda` feature".into())
}

fn table(s: &DiffSummary) -> String {
    let mut out = format!("backend {} against cpu-naive, seed {}\n", s.backend, s.seed);
    out += &format!(
        "{:<18} {:<9} {:>7} {:>7} {:>7} {:>16} {:>12}\n",
        "operation", "contract", "cases", "exact", "failed", "worst err/bound", "calc_diff"
    );
    for o in &s.ops {
        let cd = o.worst_calc_diff.map_or("-".to_string(), |v| format!("{v:.2e}"));
        out += &format!(
            "{:<18} {:<9} {:>7} {:>7} {:>7} {:>16.3e} {:>12}\n",
            o.op.name(),
            o.op.contract(),
            o.cases,
            o.exact,
            o.failed,
            o.worst,
            cd
        );
    }
    for o in s.ops.iter().filter(|o| o.failed > 0) {
        out += &format!("\n{} failures (first {}):\n", o.op.name(), o.failures.len());
        for f in &o.failures {
            out += &format!("  {f}\n");
        }
    }
    out
}

/// Runs `moe diff`.
pub fn run(args: DiffArgs) -> ExitCode {
    let mut ops = Vec::new();
    for name in &args.ops {
        match Op::ALL.into_iter().find(|o| o.name() == name) {
            Some(o) => ops.push(o),
            None => {
                eprintln!("moe diff: unknown operation `{name}`");
                return ExitCode::from(2);
            }
        }
    }
    if ops.is_empty() {
        ops = Op::ALL.to_vec();
    }
    let (dut, gemm_tol) = match open(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("moe diff: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = DiffOptions {
        cases: args.cases,
        seed: args.seed,
        gemm_tol,
        ops,
    };
    let bar = ProgressBar::new((opts.cases * opts.ops.len()) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]").expect("template"));
    let summary = run_diff(dut.as_ref(), &opts, |op, _| {
        bar.set_message(op.name());
        bar.inc(1);
    });
    bar.finish_and_clear();
    print!("{}", table(&summary));
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
