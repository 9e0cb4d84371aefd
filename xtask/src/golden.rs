//! `cargo xtask golden [--exhaustive]`: golden vectors from an independent oracle.
//!
//! Creates a Python venv in `<repo>/.cache/golden-venv` (git-ignored) with `numpy`, `ml_dtypes`
//! and `safetensors` from PyPI and runs `moe-testing/golden/gen.py`, which was written from
//! SPEC.md alone (ml_dtypes for E4M3 and bf16, numpy for f32 arithmetic, `frexp` for the UE8M0
//! ceil, exact rationals for the GEMM's fma). It writes the `*.safetensors` files under
//! `moe-testing/golden/`, which are committed and checked bit for bit by
//! `moe-testing/tests/golden.rs` (CI needs no Python).
//!
//! `--exhaustive` compares `moe_core::e4m3_from_f32` with `ml_dtypes.float8_e4m3fn(np.clip(x,
//! -448, 448))` on all 2^32 f32 inputs: this process streams the Rust encodings, in bit-pattern
//! order, through a pipe into the script, which encodes the same chunk of 2^24 inputs with numpy
//! and reports every mismatch.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util::{root, run as sh};

const PACKAGES: &[&str] = &["numpy", "ml_dtypes", "safetensors"];

/// The venv's python, creating the venv and installing the packages if needed.
fn python() -> Result<PathBuf, String> {
    let venv = root().join(".cache/golden-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let ok = Command::new(&py)
        .args(["-c", "import numpy, ml_dtypes, safetensors"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        sh(Command::new(&py).args(["-m", "pip", "install", "--quiet"]).args(PACKAGES))?;
    }
    Ok(py)
}

pub fn run_golden(exhaustive: bool) -> Result<(), String> {
    let py = python()?;
    let script = root().join("moe-testing/golden/gen.py");
    if !exhaustive {
        return sh(Command::new(&py).arg(&script).arg(root().join("moe-testing/golden")));
    }
    eprintln!(
        "$ {} {} --exhaustive-e4m3 (fed with all 2^32 Rust encodings)",
        py.display(),
        script.display()
    );
    let mut child = Command::new(&py)
        .arg(&script)
        .arg("--exhaustive-e4m3")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let mut buf = vec![0u8; 1 << 24];
    let mut write_err = None;
    for chunk in 0u64..256 {
        let start = (chunk << 24) as u32;
        for (i, o) in buf.iter_mut().enumerate() {
            *o = moe_core::e4m3_from_f32(f32::from_bits(start + i as u32));
        }
        if let Err(e) = stdin.write_all(&buf) {
            // The script stopped reading (it reports why); keep its exit status.
            write_err = Some(e);
            break;
        }
    }
    drop(stdin);
    let status = child.wait().map_err(|e| e.to_string())?;
    match (status.success(), write_err) {
        (true, None) => Ok(()),
        (_, Some(e)) => Err(format!("the oracle stopped reading: {e} ({status})")),
        (false, None) => Err(format!("the E4M3 encoder disagrees with ml_dtypes ({status})")),
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    match args {
        [] => run_golden(false),
        [a] if a == "--exhaustive" => run_golden(true),
        _ => Err("usage: cargo xtask golden [--exhaustive]".into()),
    }
}
