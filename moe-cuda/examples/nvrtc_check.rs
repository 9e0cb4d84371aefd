//! Compiles every kernel program (the backend's and the self-test program) with NVRTC for
//! `sm_90a` (no GPU needed) and prints the
//! `ptxas` resource report (registers, spills, shared memory) of each entry point.
//! Run by `cargo xtask nvrtc-check`; exits non-zero on any failure, including a ptxas
//! note that it serialized `wgmma` instructions or injected waits around them (C75xx), a
//! register spill, and any NVRTC warning.

use std::process::ExitCode;

use moe_cuda::compile::{compile, nvrtc_present, nvrtc_version};
use moe_cuda::KernelId;

fn main() -> ExitCode {
    if !nvrtc_present() {
        eprintln!("nvrtc-check: libnvrtc.so.13 not found (set LD_LIBRARY_PATH)");
        return ExitCode::from(3);
    }
    println!(
        "NVRTC {:?}, options {:?} --ptxas-options=-v",
        nvrtc_version(),
        moe_cuda::NVRTC_OPTIONS
    );
    let mut failed = 0;
    let programs: Vec<KernelId> = KernelId::ALL.into_iter().chain(KernelId::TEST_SUPPORT).collect();
    for &id in &programs {
        let t0 = std::time::Instant::now();
        match compile(id, &["--ptxas-options=-v"]) {
            Ok(c) => {
                println!(
                    "== {} ({} bytes of cubin, {:.0} ms)",
                    id.file(),
                    c.cubin.len(),
                    t0.elapsed().as_secs_f64() * 1e3
                );
                for line in c.log.lines().filter(|l| !l.trim().is_empty()) {
                    println!("   {line}");
                }
                // ptxas serializes a kernel's wgmma, or injects waits and arrives around them,
                // when it cannot keep the accumulators in place (its C7510-C7520 notes): a
                // silent slowdown, so a failure here.
                let serialized: Vec<&str> = c.log.lines().filter(|l| l.contains("(C75") || l.contains("serialized")).collect();
                if !serialized.is_empty() {
                    failed += 1;
                    println!("   FAILED: wgmma serialized or fenced by ptxas: {serialized:?}");
                }
                if c.log.contains("bytes spill") && !c.log.contains(" 0 bytes spill stores, 0 bytes spill loads") {
                    let spills: Vec<&str> = c
                        .log
                        .lines()
                        .filter(|l| l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads"))
                        .collect();
                    if !spills.is_empty() {
                        failed += 1;
                        println!("   FAILED: register spills: {spills:?}");
                    }
                }
                // NVRTC's own warnings (a shadowed declaration, a narrowing, an unused value)
                // are bugs waiting to happen in code compiled at run time: a failure too.
                let warnings: Vec<&str> = c.log.lines().filter(|l| l.contains(": warning")).collect();
                if !warnings.is_empty() {
                    failed += 1;
                    println!("   FAILED: NVRTC warnings: {warnings:?}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("== {} FAILED\n{e}", id.file());
            }
        }
    }
    if failed > 0 {
        eprintln!("nvrtc-check: {failed} program(s) failed to compile");
        ExitCode::FAILURE
    } else {
        println!("nvrtc-check: all {} programs compiled for sm_90a", programs.len());
        ExitCode::SUCCESS
    }
}
