//! `cargo xtask fuzz [--smoke] [--seconds N] [TARGET]`: runs the fuzz targets of `fuzz/` (its own
//! cargo workspace) on stable Rust with `cargo fuzz run -s none` (no sanitizer; libFuzzer's
//! coverage instrumentation works on stable).
//!
//! Installs `cargo-fuzz` with `cargo install cargo-fuzz --locked` when it is missing.
//! `--smoke` runs every target for 20 s (what `cargo xtask ci` runs); the default is 60 s each.
//! Prints the number of executions each target survived.

use std::process::Command;

use crate::util::{describe, root, run as sh};

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["safetensors_op", "problem_validation", "cpu_ops"];

fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        sh(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Runs `target` for `seconds`; returns the number of executions libFuzzer reports.
fn fuzz_one(target: &str, seconds: u64) -> Result<u64, String> {
    let fuzz_dir = root().join("fuzz");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz_dir)
        // The fuzz workspace has its own target directory, whatever the caller's is.
        .env("CARGO_TARGET_DIR", fuzz_dir.join("target"))
        .args(["fuzz", "run", "-s", "none", "-O", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1");
    eprintln!("$ {}", describe(&cmd));
    let out = cmd.output().map_err(|e| format!("{}: {e}", describe(&cmd)))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("fuzz target `{target}` failed ({}):\n{}", out.status, tail.join("\n")));
    }
    // libFuzzer ends with "Done N runs in S second(s)".
    let runs = log
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Done ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| format!("fuzz target `{target}`: no final \"Done N runs\" line"))?;
    Ok(runs)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => seconds = 20,
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).ok_or("--seconds needs a number")?,
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => return Err(format!("unknown argument `{other}`; targets: {}", TARGETS.join(", "))),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    ensure_cargo_fuzz()?;
    let mut summary = Vec::new();
    for t in &targets {
        let runs = fuzz_one(t, seconds)?;
        summary.push(format!("  {t:<20} {runs:>12} executions in {seconds} s, no failure"));
    }
    eprintln!("fuzz summary:\n{}", summary.join("\n"));
    Ok(())
}
