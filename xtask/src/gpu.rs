//! `cargo xtask nvrtc-check` and `cargo xtask gpu-bundle`.
//!
//! - `nvrtc-check` compile-checks every CUDA kernel of moe-cuda for `sm_90a` with NVRTC, on a
//!   machine without a GPU, and prints `ptxas`'s registers/spills report. It runs the example
//!   `moe-cuda/examples/nvrtc_check.rs` (feature `cuda`) with `LD_LIBRARY_PATH` pointing at a
//!   `libnvrtc.so.13`: the system's, or the PyPI wheel `nvidia-cuda-nvrtc==13.0.88` installed
//!   into `.cache/nvrtc`. Without NVRTC it fails on CI (`CI=true`) and prints a skip elsewhere.
//! - `gpu-bundle` builds, in release with the `cuda` feature, the moe-cuda test binaries (and
//!   the `moe` binary if moe-cli has a `cuda` feature), copies them into the git-ignored
//!   `gpu-bundle/` with `run.sh`, which runs everything in strict mode (`MOE_REQUIRE_GPU=1`):
//!   the tests, `moe diff --backend cuda` when available, and compute-sanitizer (memcheck,
//!   racecheck, initcheck, synccheck) over the test binaries with the small case set
//!   (`MOE_CUDA_SMALL=1`), and `moe bench` over every suite (`$OUT/bench.json`, `bench.svg`,
//!   `bench.txt`, with cuBLASLt found through `/usr/local/cuda/lib64` and the PyPI wheel), logs
//!   under `$OUT`. One device call runs it:
//!   `run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"])`; `run.sh bench` runs the
//!   bench alone (`MOE_BENCH_ARGS` overrides its suites).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{cargo, root, run};

const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc==13.0.88";

fn on_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// A directory holding `libnvrtc.so.13`, if one is known.
fn find_nvrtc() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    dirs.push(root().join(".cache/nvrtc/nvidia/cu13/lib"));
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = dirs.into_iter().find(|d| d.join("libnvrtc.so.13").exists()) {
        return Some(d);
    }
    // The loader cache (no directory to add then, but report the library's).
    let out = Command::new("ldconfig").arg("-p").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("libnvrtc.so.13"))?;
    let path = line.rsplit("=> ").next()?.trim();
    Path::new(path).parent().map(Path::to_path_buf)
}

fn install_nvrtc() -> Result<PathBuf, String> {
    let target = root().join(".cache/nvrtc");
    eprintln!(
        "nvrtc-check: libnvrtc.so.13 not found; installing the wheel {NVRTC_WHEEL} into {}",
        target.display()
    );
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&target)
        .arg(NVRTC_WHEEL))?;
    let lib = target.join("nvidia/cu13/lib");
    if lib.join("libnvrtc.so.13").exists() {
        Ok(lib)
    } else {
        Err(format!(
            "the wheel {NVRTC_WHEEL} did not provide {}",
            lib.join("libnvrtc.so.13").display()
        ))
    }
}

fn with_lib_path(cmd: &mut Command, dir: &Path) {
    let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let new = if old.is_empty() {
        dir.display().to_string()
    } else {
        format!("{}:{old}", dir.display())
    };
    cmd.env("LD_LIBRARY_PATH", new);
}

pub fn nvrtc_check(_args: &[String]) -> Result<(), String> {
    let dir = match find_nvrtc() {
        Some(d) => d,
        None => match install_nvrtc() {
            Ok(d) => d,
            Err(e) if on_ci() => return Err(format!("NVRTC is required on CI: {e}")),
            Err(e) => {
                eprintln!("SKIP: nvrtc-check: no NVRTC available ({e})");
                return Ok(());
            }
        },
    };
    eprintln!("nvrtc-check: using libnvrtc.so.13 from {}", dir.display());
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "moe-cuda", "--features", "cuda", "--example", "nvrtc_check"]);
    with_lib_path(&mut cmd, &dir);
    run(&mut cmd)
}

/// The paths of the test executables (and `moe`) in cargo's JSON messages.
fn executables(json: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for line in json.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let Some(i) = line.find("\"executable\":\"") else { continue };
        let rest = &line[i + 14..];
        let Some(j) = rest.find('"') else { continue };
        let path = PathBuf::from(&rest[..j]);
        let name = line
            .find("\"name\":\"")
            .and_then(|k| line[k + 8..].split('"').next())
            .unwrap_or("bin")
            .to_string();
        out.push((name, path));
    }
    out
}

fn cargo_json(args: &[&str]) -> Result<String, String> {
    let mut cmd = cargo();
    cmd.args(args);
    eprintln!("$ {}", crate::util::describe(&cmd));
    let o = cmd.stderr(std::process::Stdio::inherit()).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("cargo {} failed ({})", args.join(" "), o.status));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn copy_stripped(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::copy(src, dst).map_err(|e| format!("copy {} -> {}: {e}", src.display(), dst.display()))?;
    // Debug line tables are not needed on the device; keep the bundle small.
    let _ = Command::new("strip").arg("--strip-debug").arg(dst).status();
    Ok(())
}

const RUN_SH: &str = r#"#!/usr/bin/env bash
# Generated by `cargo xtask gpu-bundle`. Runs every moe-cuda GPU test in strict mode
# (MOE_REQUIRE_GPU=1: a missing GPU fails), `moe diff --backend cuda` when bundled, and
# compute-sanitizer over the test binaries with the small case set. Logs go to $OUT.
# `bench` runs `moe bench` (every suite; bench.json, bench.svg, bench.txt under $OUT).
# Usage: bash gpu-bundle/run.sh [tests|cli|sanitizer|bench|all]   (default: all)
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
WHAT="${1:-all}"
export MOE_REQUIRE_GPU=1
export RUST_BACKTRACE=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvidia-smi; compute-sanitizer --version; } > "$OUT/device.txt" 2>&1
note "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)"
fail=0
if [ "$WHAT" = all ] || [ "$WHAT" = tests ]; then
  : > "$OUT/tests.log"
  for t in "$HERE"/tests/*; do
    n="$(basename "$t")"
    s=$(date +%s)
    "$t" --test-threads=1 --nocapture >> "$OUT/tests.log" 2>&1
    rc=$?
    note "test $n: rc=$rc ($(( $(date +%s) - s )) s) $(grep -E '^test result' "$OUT/tests.log" | tail -1)"
    [ $rc -eq 0 ] || fail=1
  done
  grep -E '^(GEMM|EXP|E4M3|VLLM|CASES|GRAPH|SKIP)' "$OUT/tests.log" | tee -a "$SUMMARY"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = cli ]; then
  if [ -x "$HERE/moe" ]; then
    "$HERE/moe" info > "$OUT/moe-info.log" 2>&1; note "moe info: rc=$? $(grep -m1 -i 'gpu' "$OUT/moe-info.log")"
    s=$(date +%s)
    "$HERE/moe" diff --backend cuda --cases "${MOE_DIFF_CASES:-10000}" --seed "${MOE_DIFF_SEED:-1}" > "$OUT/moe-diff.log" 2>&1
    rc=$?; note "moe diff --backend cuda --cases ${MOE_DIFF_CASES:-10000}: rc=$rc ($(( $(date +%s) - s )) s)"; [ $rc -eq 0 ] || fail=1
    tail -12 "$OUT/moe-diff.log" | tee -a "$SUMMARY"
    for fmt in f32 f32-ceil-ue8m0 ue8m0-packed; do
      "$HERE/moe" run --backend cuda --scale-fmt "$fmt" > "$OUT/moe-run-$fmt.log" 2>&1
      rc=$?; note "moe run --backend cuda --scale-fmt $fmt: rc=$rc $(grep -E '^result' "$OUT/moe-run-$fmt.log")"; [ $rc -eq 0 ] || fail=1
    done
  else
    note "no moe binary in the bundle"; fail=1
  fi
fi
if [ "$WHAT" = all ] || [ "$WHAT" = sanitizer ]; then
  : > "$OUT/sanitizer.log"
  if command -v compute-sanitizer > /dev/null; then
    for tool in ${MOE_SAN_TOOLS:-memcheck racecheck initcheck synccheck}; do
      for t in "$HERE"/tests/*; do
        n="$(basename "$t")"
        s=$(date +%s)
        echo "===== $tool $n" >> "$OUT/sanitizer.log"
        MOE_CUDA_SMALL=1 PROPTEST_CASES=3 compute-sanitizer --tool "$tool" --error-exitcode 97 --print-limit 20 "$t" --test-threads=1 >> "$OUT/sanitizer.log" 2>&1
        rc=$?
        note "sanitizer $tool $n: rc=$rc ($(( $(date +%s) - s )) s) $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer.log" | tail -1)"
        [ $rc -eq 0 ] || fail=1
      done
    done
  else
    note "compute-sanitizer not found"; fail=1
  fi
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
  # cuBLASLt (the baseline) is loaded at run time: the toolkit's and the PyPI wheel's directories.
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           "$(python3 -c 'import nvidia, os; print(os.path.join(os.path.dirname(nvidia.__path__[0]), "nvidia", "cu13", "lib"))' 2>/dev/null)"; do
    [ -n "$d" ] && [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  lt="$(find /usr/local/cuda* /usr/lib /usr/local/lib -name 'libcublasLt.so*' 2>/dev/null | head -1)"
  [ -n "$lt" ] && export LD_LIBRARY_PATH="$(dirname "$lt"):$LD_LIBRARY_PATH"
  if [ -x "$HERE/moe" ]; then
    { date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,temperature.gpu --format=csv; echo "cublasLt: ${lt:-not found by find}"; echo; } > "$OUT/bench.txt" 2>&1
    s=$(date +%s)
    timeout "${MOE_BENCH_TIMEOUT:-480}" "$HERE/moe" bench --backend cuda ${MOE_BENCH_ARGS:---suite deepgemm --suite decode --suite silu --suite quant --suite stage --suite layer} \
      --json "$OUT/bench.json" --svg "$OUT/bench.svg" >> "$OUT/bench.txt" 2> "$OUT/bench.err"
    rc=$?
    note "moe bench --backend cuda: rc=$rc ($(( $(date +%s) - s )) s)"; [ $rc -eq 0 ] || fail=1
    "$HERE/moe" bench --validate "$OUT/bench.json" 2>&1 | tee -a "$SUMMARY"
    sed -n '/^ceilings/,$p' "$OUT/bench.txt" | head -80 | tee -a "$SUMMARY"
    tail -5 "$OUT/bench.err" | tee -a "$SUMMARY"
  else
    note "no moe binary in the bundle"; fail=1
  fi
fi
note "overall: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
exit $fail
"#;

pub fn bundle(_args: &[String]) -> Result<(), String> {
    let dir = root().join("gpu-bundle");
    let tests_dir = dir.join("tests");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&tests_dir).map_err(|e| e.to_string())?;
    let json = cargo_json(&[
        "test",
        "--no-run",
        "--release",
        "-p",
        "moe-cuda",
        "--features",
        "cuda",
        "--message-format=json",
    ])?;
    let mut n = 0;
    for (name, path) in executables(&json) {
        // Only this crate's integration tests (`tests/*.rs`); the lib's unit tests need no GPU.
        if name == "moe_cuda" || name == "nvrtc_check" {
            continue;
        }
        copy_stripped(&path, &tests_dir.join(&name))?;
        n += 1;
    }
    if n == 0 {
        return Err("no moe-cuda test binary was built".into());
    }
    // The generic differential suites of moe-testing, mounted for CUDA (`tests/cuda.rs`).
    let json = cargo_json(&[
        "test",
        "--no-run",
        "--release",
        "-p",
        "moe-testing",
        "--features",
        "cuda",
        "--message-format=json",
    ])?;
    if let Some((_, path)) = executables(&json).into_iter().find(|(name, _)| name == "cuda") {
        copy_stripped(&path, &tests_dir.join("moe_testing_cuda"))?;
        n += 1;
    } else {
        return Err("moe-testing's `cuda` test binary was not built".into());
    }
    let cli_toml = std::fs::read_to_string(root().join("moe-cli/Cargo.toml")).unwrap_or_default();
    if cli_toml.contains("cuda") {
        let json = cargo_json(&["build", "--release", "-p", "moe-cli", "--features", "cuda", "--message-format=json"])?;
        if let Some((_, path)) = executables(&json).into_iter().find(|(name, _)| name == "moe") {
            copy_stripped(&path, &dir.join("moe"))?;
        }
    } else {
        eprintln!("gpu-bundle: moe-cli has no `cuda` feature yet; bundling the tests only");
    }
    std::fs::write(dir.join("run.sh"), RUN_SH).map_err(|e| e.to_string())?;
    let mut total = 0u64;
    for entry in walk(&dir) {
        total += std::fs::metadata(&entry).map(|m| m.len()).unwrap_or(0);
    }
    eprintln!(
        "gpu-bundle: {n} test binaries, {:.1} MiB in {}",
        total as f64 / (1 << 20) as f64,
        dir.display()
    );
    if total > 48 << 20 {
        return Err(format!(
            "the bundle is {total} bytes, too close to the 64 MiB limit of a device call"
        ));
    }
    Ok(())
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
