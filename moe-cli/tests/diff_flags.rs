//! `moe diff` refuses flags that would make it check nothing or pass anything: a GEMM bound
//! constant that is infinite, NaN, negative or above the spec's 2^-12, and zero cases. Each is
//! exit code 2 with a message naming the flag; on the old code each exited 0 with a PASS table.

mod common;

use common::moe;

fn refused(args: &[&str], needle: &str) {
    let o = moe(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(
        o.stdout.is_empty(),
        "{args:?} printed a table: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_bound_constant_that_passes_any_gemm_is_refused() {
    for c in ["inf", "NaN", "-1", "0.5", "1e300"] {
        let flag = format!("--gemm-c={c}");
        refused(&["diff", "--cases", "1", "--op", "grouped-gemm", &flag], "--gemm-c");
    }
}

#[test]
fn zero_cases_are_refused() {
    refused(&["diff", "--cases", "0"], "--cases");
}

#[test]
fn a_valid_bound_constant_is_accepted_and_reported() {
    let o = moe(&[
        "diff",
        "--cases",
        "2",
        "--op",
        "grouped-gemm",
        "--gemm-c",
        "0.0001",
        "--threads",
        "1",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("GEMM contract bounded"), "{out}");
}
