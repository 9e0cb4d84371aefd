//! `cargo xtask ci`: everything CI runs, cheapest first, each step timed.
//!
//! 1. `cargo fmt --check`, then `tidy` (the architecture invariants)
//! 2. `cargo clippy` on the workspace, then again with the CUDA feature (no GPU needed)
//! 3. the tests of the whole workspace (differential suites, golden vectors, CLI), then the GPU
//!    tests built with the CUDA feature, which print counted skips on a machine without a GPU
//! 4. a CPU smoke run of `moe bench` (tiny shapes) whose JSON is validated against the schema,
//!    then the exhaustive `exp_f32` and E4M3-encoder checks (all 2^32 inputs, release build)
//! 5. `nvrtc-check`: every CUDA kernel compiled for `sm_90a` (installs NVRTC from PyPI if needed)
//! 6. a short fuzzing smoke run of every fuzz target
//! 7. `cargo doc` without warnings

use std::time::Instant;

use crate::util::{cargo, run as sh};

const CUDA_FEATURES: &str = "moe-cuda/cuda,moe-engine/cuda,moe-cli/cuda,moe-testing/cuda";

pub fn run(args: &[String]) -> Result<(), String> {
    let skip_fuzz = args.iter().any(|a| a == "--no-fuzz");
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<(), String>| -> Result<(), String> {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        steps.push((name, t.elapsed().as_secs_f64()));
        r.map_err(|e| format!("step `{name}` failed: {e}"))
    };
    step("fmt", &mut || sh(cargo().args(["fmt", "--all", "--check"])))?;
    step("tidy", &mut || crate::tidy::run(&[]))?;
    let clippy = |features: &[&str]| {
        let mut c = cargo();
        c.args(["clippy", "--workspace", "--all-targets"])
            .args(features)
            .args(["--", "-D", "warnings"]);
        sh(&mut c)
    };
    step("clippy", &mut || clippy(&[]))?;
    step("clippy (cuda feature)", &mut || clippy(&["--features", CUDA_FEATURES]))?;
    step("tests", &mut || sh(cargo().args(["test", "--workspace"])))?;
    // The GPU tests, built with the CUDA feature: without a GPU each one prints a counted
    // `SKIP: no CUDA device` and passes (MOE_REQUIRE_GPU=1 would make it fail).
    step("tests (cuda feature, skips counted)", &mut || {
        sh(cargo().args([
            "test",
            "-p",
            "moe-cuda",
            "-p",
            "moe-testing",
            "--features",
            "moe-cuda/cuda,moe-testing/cuda",
            "--test",
            "cuda",
            "--test",
            "gemm",
            "--test",
            "selftest",
        ]))
    })?;
    // A CPU smoke of `moe bench` on tiny shapes; the JSON it writes must follow the documented
    // schema (no timing is asserted).
    step("bench smoke (cpu, JSON schema)", &mut || {
        let json = crate::util::root().join("target/bench-smoke.json");
        let json = json.to_str().ok_or("non-UTF-8 target path")?.to_string();
        let moe = |extra: &[&str]| {
            let mut c = cargo();
            c.args(["run", "--quiet", "-p", "moe-cli", "--", "bench"]).args(extra);
            c
        };
        sh(&mut moe(&[
            "--backend",
            "cpu",
            "--tiny",
            "--samples",
            "2",
            "--warmup",
            "1",
            "--suite",
            "deepgemm",
            "--suite",
            "decode",
            "--suite",
            "silu",
            "--suite",
            "quant",
            "--suite",
            "stage",
            "--json",
            &json,
        ]))?;
        sh(&mut moe(&["--validate", &json]))
    })?;
    step("exp-check (all 2^32 inputs)", &mut || {
        sh(cargo().args(["run", "--release", "--quiet", "-p", "xtask", "--", "exp-check"]))
    })?;
    step("nvrtc-check (sm_90a)", &mut || crate::gpu::nvrtc_check(&[]))?;
    if !skip_fuzz {
        step("fuzz smoke", &mut || crate::fuzz::run(&["--smoke".to_string()]))?;
    }
    step("doc", &mut || {
        sh(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))
    })?;
    eprintln!("\nci: all steps passed");
    for (name, secs) in &steps {
        eprintln!("  {name:<32} {secs:>7.1} s");
    }
    Ok(())
}
