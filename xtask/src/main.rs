//! `cargo xtask <command>`: the project's automation (CI, exhaustive checks, golden vectors,
//! fuzzing, GPU bundles). Few dependencies on purpose; it shells out to `cargo` and `python3`.

mod ci;
mod exp;
mod fuzz;
mod golden;
mod gpu;
mod tidy;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [--no-fuzz]     everything CI runs, cheapest first (fmt, clippy, tests, exhaustive exp, nvrtc check, fuzz smoke, docs)
  tidy               the architecture invariants the compiler does not enforce (unsafe, launches,
                     test-only crates, ARCHITECTURE.md sections, file length)
  exp-check [--float8-only]
                     exp_f32 against float64 exp, the E4M3 encoder and BF16 rounding against their
                     definitions, and the float8 crate's encoder, over all 2^32 f32 inputs
  golden [--exhaustive]
                     regenerate the golden vectors with an independent numpy/ml_dtypes oracle
  fuzz [--smoke] [--seconds N] [TARGET]
                     run the fuzz targets (stable, `cargo fuzz run -s none`)
  nvrtc-check        compile every CUDA kernel for sm_90a with NVRTC (installs the wheel if needed)
  gpu-bundle         build the CUDA test binaries and `moe` into gpu-bundle/ with a run script
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "ci" => ci::run(rest),
        "tidy" => tidy::run(rest),
        "exp-check" => exp::run(rest),
        "golden" => golden::run(rest),
        "fuzz" => fuzz::run(rest),
        "nvrtc-check" => gpu::nvrtc_check(rest),
        "gpu-bundle" => gpu::bundle(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
