//! `moe diff --backend cpu|cuda --cases N --seed S`: runs the differential harness of the engine
//! (`moe_engine::verify::diff::run_diff`) against the naive CPU reference over `N` seeded random
//! cases of every operation, with a progress bar, and prints a summary table: per operation the
//! cases, the bit-exact matches, the failures, and the worst error against its bound, and the
//! worst rounding bias of the GEMM epilogue. One GEMM and experts case in 16 has a shape at the
//! kernels' tile edges (T up to 300, N and K past 1024).
//!
//! Exit code 0 when every case passed, 1 when any failed, 2 for a usage or device error.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use moe_engine::verify::diff::{run_diff, DiffOptions, DiffSummary};
use moe_engine::{Device, DeviceKind, GemmContract, Op};

/// Arguments of `moe diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The backend under test: `cpu` (the fast rayon path) or `cuda`.
    #[arg(long, default_value = "cpu", value_parser = crate::device_parser())]
    backend: DeviceKind,
    /// Random cases per operation (at least 1).
    #[arg(long, default_value_t = 1000)]
    cases: usize,
    /// The seed; case `i` of an operation depends only on (seed, operation, i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads of the CPU backend (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Only these operations (repeatable): route, token-group-quant, batched-quant, block-quant,
    /// silu-mul-quant, grouped-gemm, experts, prepare, finalize.
    #[arg(long = "op")]
    ops: Vec<String>,
    /// The GEMM bound constant `c` of SPEC §5.3, a finite number in [0, 2^-12] (default: the
    /// backend's own contract: exact for cpu, 2^-12 for cuda).
    #[arg(long)]
    gemm_c: Option<f64>,
}

fn open(args: &DiffArgs) -> Result<(Device, GemmContract), String> {
    let device = match (args.backend, args.threads) {
        (DeviceKind::Cpu, Some(n)) => Device::cpu_with_threads(n),
        (kind, _) => Device::open(kind),
    }
    .map_err(|e| e.one_line())?;
    let contract = match args.gemm_c {
        Some(c) => GemmContract::bounded(c).map_err(|e| format!("--gemm-c: {e}"))?,
        None => device.gemm_contract(),
    };
    Ok((device, contract))
}

fn table(s: &DiffSummary, contract: GemmContract) -> String {
    let mut out = format!(
        "backend {} against cpu-naive, seed {}, GEMM contract {}\n",
        s.backend,
        s.seed,
        contract.describe()
    );
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
    for o in &s.ops {
        if let Some(b) = o.worst_rounding_bias {
            out += &format!(
                "{}: epilogue rounding bias, worst |mean| {b:.2e} bf16 ulp (limit {}; one case in {} runs it)\n",
                o.op.name(),
                moe_engine::verify::check::BIAS_MAX,
                moe_engine::verify::diff::BIAS_EVERY
            );
        }
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
    if args.cases == 0 {
        eprintln!("moe diff: --cases must be at least 1 (zero cases would check nothing)");
        return ExitCode::from(2);
    }
    let mut ops = Vec::new();
    for name in &args.ops {
        match Op::from_name(name) {
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
    let summary = run_diff(dut.backend(), &opts, |op, _| {
        bar.set_message(op.name());
        bar.inc(1);
    });
    bar.finish_and_clear();
    print!("{}", table(&summary, gemm_tol));
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
