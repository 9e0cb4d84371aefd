//! `moe bench` on the CPU: a tiny smoke run of every suite writes a JSON document that follows
//! the documented schema (no timing assertion), an SVG, and bad flags are usage errors.

mod common;

use common::{moe, tmp_dir};

#[test]
fn a_cpu_smoke_run_writes_json_that_follows_the_documented_schema_and_an_svg() {
    let d = tmp_dir("bench-smoke");
    let (json, svg) = (d.join("bench.json"), d.join("bench.svg"));
    let out = moe(&[
        "bench",
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
        "silu",
        "--suite",
        "quant",
        "--suite",
        "stage",
        "--suite",
        "layer",
        "--shape",
        "gemm:2,3,128,256",
        "--counts",
        "zipf",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("ceilings measured in this run") && stdout.contains("skipped: suite `layer`"),
        "{stdout}"
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    moe_engine::bench::schema::validate(&doc).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["suite"] == "custom" && r["counts"] == "zipf"));
    for op in [
        "gemm",
        "silu-mul-quant",
        "prepare-quant",
        "finalize",
        "block-quant",
        "experts-stage",
    ] {
        assert!(rows.iter().any(|r| r["op"] == op), "no {op} row");
    }
    // GEMM rows on the CPU say why there is no cuBLASLt column.
    assert!(rows
        .iter()
        .filter(|r| r["op"] == "gemm")
        .all(|r| r["baseline"].is_null() && r["baseline_unavailable"].is_string()));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("roofline"));
    // The CLI's own validator accepts it too.
    let v = moe(&["bench", "--validate", json.to_str().unwrap()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn bad_bench_flags_are_usage_errors() {
    for args in [
        &["bench", "--backend", "cpu", "--shape", "gemm:1,2,100,128"][..],
        &["bench", "--backend", "cpu"][..],
        &["bench", "--backend", "cpu", "--suite", "nope"][..],
        &["bench", "--backend", "cpu", "--suite", "silu", "--samples", "0"][..],
        &["bench", "--backend", "cpu", "--suite", "silu", "--gemm", "wgmma"][..],
        &["bench", "--backend", "cpu", "--suite", "silu", "--gemm", "nope"][..],
    ] {
        let out = moe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let d = tmp_dir("bench-validate");
    let bad = d.join("bad.json");
    std::fs::write(&bad, r#"{"schema_version": 1, "tool": "moe bench"}"#).unwrap();
    assert_eq!(moe(&["bench", "--validate", bad.to_str().unwrap()]).status.code(), Some(2));
}
