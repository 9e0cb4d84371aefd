//! `moe run` on small shapes passes its check in every scale format and numerics; `moe info` works.

mod common;

use common::moe;

#[test]
fn run_with_small_dims_passes_its_check() {
    for (fmt, numerics) in [("f32", "vllm-bf16"), ("f32-ceil-ue8m0", "f32"), ("ue8m0-packed", "vllm-bf16")] {
        let o = moe(&[
            "run",
            "--experts",
            "3",
            "--capacity",
            "8",
            "--hidden",
            "256",
            "--intermediate",
            "128",
            "--tokens",
            "10",
            "--topk",
            "4",
            "--seed",
            "7",
            "--scale-fmt",
            fmt,
            "--numerics",
            numerics,
            "--threads",
            "2",
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{fmt} {numerics}: {out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("result: PASS"), "{out}");
        for stage in [
            "block-quant w1",
            "prepare",
            "gemm1",
            "silu-mul-quant",
            "gemm2",
            "experts (apply, total)",
            "finalize",
        ] {
            assert!(out.contains(stage), "stage `{stage}` missing: {out}");
        }
        // Not a terminal: progress is plain stage lines on stderr.
        assert!(String::from_utf8_lossy(&o.stderr).contains("moe run: prepare"));
    }
}

#[test]
fn run_rejects_a_hidden_size_that_is_not_a_multiple_of_128() {
    let o = moe(&["run", "--hidden", "200"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--hidden"));
}

#[test]
fn info_reports_version_backends_and_threads() {
    let o = moe(&["info"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["moe 0.1.0", "backends: cpu", "threads:", "cuda"] {
        assert!(out.contains(needle), "{out}");
    }
}
