//! `moe op` on bad input: exit code 2, one line on stderr naming the tensor, nothing written.

mod common;

use common::*;
use half::bf16;
use moe_engine::{read_inputs, Op, OpOptions};

/// Runs `moe op` on `input` and checks exit code 2, a one-line message containing every needle,
/// and that neither the output nor a temporary file appeared.
fn rejects(test: &str, op: &str, input: &[u8], extra: &[&str], needles: &[&str]) {
    let dir = tmp_dir(test);
    let inp = dir.join("in.safetensors");
    std::fs::write(&inp, input).unwrap();
    let out = dir.join("out.safetensors");
    let mut args = vec!["op", op, "--in", inp.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = moe(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{test}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{test}: one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{test}: `{n}` not in: {err}");
    }
    assert!(!out.exists(), "{test}: output written");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "{test}: stray files");
}

fn x_file(rows: usize, k: usize) -> Vec<u8> {
    st_bytes(&[bf16_t("x", &[rows, k], &vec![bf16::ONE; rows * k])])
}

fn gemm_inputs(sb_shape: &[usize], counts: &[i32]) -> Vec<u8> {
    let (e, t, n, k) = (2, 3, 128, 256);
    st_bytes(&[
        f8_t("a", &[e, t, k], &vec![0x38; e * t * k]),
        f32_t("sa", &[e, 2, t], &vec![1.0; e * 2 * t]),
        f8_t("b", &[e, n, k], &vec![0x38; e * n * k]),
        f32_t("sb", sb_shape, &vec![1.0; sb_shape.iter().product()]),
        i32_t("counts", &[counts.len()], counts),
    ])
}

#[test]
fn missing_tensor_is_named() {
    rejects(
        "missing",
        "token-group-quant",
        &st_bytes(&[bf16_t("y", &[1, 128], &[bf16::ONE; 128])]),
        &[],
        &["`x`", "missing"],
    );
}

#[test]
fn wrong_dtype_is_named() {
    rejects(
        "dtype",
        "token-group-quant",
        &st_bytes(&[i32_t("x", &[1, 128], &[1; 128])]),
        &[],
        &["`x`", "I32"],
    );
    rejects(
        "scale-dtype",
        "grouped-gemm",
        &gemm_inputs(&[2, 1, 2], &[1, 1]),
        &["--scale-fmt", "ue8m0-packed"],
        &["`sa`", "F32"],
    );
}

#[test]
fn wrong_rank_is_named() {
    rejects(
        "rank",
        "token-group-quant",
        &st_bytes(&[bf16_t("x", &[1, 1, 128], &[bf16::ONE; 128])]),
        &[],
        &["`x`", "rank"],
    );
}

#[test]
fn wrong_shape_is_named() {
    rejects(
        "shape",
        "grouped-gemm",
        &gemm_inputs(&[2, 2, 2], &[1, 1]),
        &[],
        &["`sb`", "(2, 1, 2)"],
    );
    rejects(
        "counts-shape",
        "grouped-gemm",
        &gemm_inputs(&[2, 1, 2], &[1, 1, 1]),
        &[],
        &["`counts`"],
    );
}

#[test]
fn malformed_and_truncated_files_are_rejected() {
    rejects(
        "garbage",
        "token-group-quant",
        b"this is not a safetensors file at all",
        &[],
        &["safetensors"],
    );
    let good = x_file(2, 128);
    rejects("truncated", "token-group-quant", &good[..good.len() - 3], &[], &["safetensors"]);
    rejects("empty", "token-group-quant", b"", &[], &["safetensors"]);
}

#[test]
fn counts_out_of_range_are_named() {
    rejects(
        "counts",
        "grouped-gemm",
        &gemm_inputs(&[2, 1, 2], &[1, 4]),
        &[],
        &["`counts`", "counts[1] = 4"],
    );
    rejects("counts-neg", "grouped-gemm", &gemm_inputs(&[2, 1, 2], &[-1, 0]), &[], &["`counts`"]);
}

#[test]
fn topk_ids_out_of_range_and_overflow_are_named() {
    let x = bf16_t("x", &[2, 128], &[bf16::ONE; 256]);
    let bad = st_bytes(&[x, i32_t("topk_ids", &[2, 1], &[0, 3])]);
    rejects(
        "topk",
        "prepare",
        &bad,
        &["--experts", "3", "--capacity", "4"],
        &["`topk_ids`", "= 3"],
    );
    let x = bf16_t("x", &[2, 128], &[bf16::ONE; 256]);
    let over = st_bytes(&[x, i32_t("topk_ids", &[2, 1], &[1, 1])]);
    rejects(
        "overflow",
        "prepare",
        &over,
        &["--experts", "3", "--capacity", "1"],
        &["`topk_ids`", "expert 1"],
    );
}

#[test]
fn k_not_multiple_of_128_is_named() {
    rejects("k130", "token-group-quant", &x_file(2, 130), &[], &["`x`", "`K`", "128"]);
}

#[test]
fn flags_that_are_missing_or_do_not_apply_are_usage_errors() {
    let x = bf16_t("x", &[2, 128], &[bf16::ONE; 256]);
    let ok = st_bytes(&[x, i32_t("topk_ids", &[2, 1], &[0, 1])]);
    rejects("no-experts", "prepare", &ok, &[], &["--experts"]);
    rejects("pow2", "token-group-quant", &x_file(1, 128), &["--pow2"], &["--pow2"]);
}

/// A router input: `logits (m, eg)` counting up by 0.1, NaN at the indices `nan`, and a zero
/// `bias` of shape `bias` if given.
fn route_file(m: usize, eg: usize, nan: &[usize], bias: Option<&[usize]>) -> Vec<u8> {
    let mut l: Vec<f32> = (0..m * eg).map(|i| i as f32 * 0.1).collect();
    for &i in nan {
        l[i] = f32::NAN;
    }
    let mut t = vec![f32_t("logits", &[m, eg], &l)];
    if let Some(shape) = bias {
        t.push(f32_t("bias", shape, &vec![0.0; shape.iter().product()]));
    }
    st_bytes(&t)
}

#[test]
fn route_names_a_nan_logits_token_a_bad_setting_and_a_bad_bias() {
    let flags = ["--topk", "2", "--scoring", "softmax"];
    // Token 1, expert 3 comes first in (token, expert) order.
    let mut file = route_file(3, 8, &[2 * 8, 8 + 5, 8 + 3], None);
    rejects("route-nan", "route", &file, &flags, &["`logits`", "token 1", "expert 3"]);
    file = route_file(3, 8, &[], None);
    let groups = ["--topk", "2", "--scoring", "sigmoid", "--groups", "3", "--topk-groups", "1"];
    rejects("route-groups", "route", &file, &groups, &["n_group", "= 3", "8 experts"]);
    let tg = ["--topk", "2", "--scoring", "sigmoid", "--groups", "4", "--topk-groups", "5"];
    rejects("route-tg", "route", &file, &tg, &["topk_group", "= 5"]);
    let many = ["--topk", "5", "--scoring", "sigmoid", "--groups", "4", "--topk-groups", "2"];
    rejects("route-topk", "route", &file, &many, &["topk", "= 5", "4 experts left"]);
    let scale = ["--topk", "2", "--scoring", "sigmoid", "--routed-scaling=-1"];
    rejects("route-scale", "route", &file, &scale, &["routed_scaling_factor", "= -1"]);
    let bias = route_file(3, 8, &[], Some(&[7]));
    rejects("route-bias", "route", &bias, &flags, &["`bias`", "(7)"]);
    let bias = route_file(3, 8, &[], Some(&[1, 8]));
    rejects("route-bias-rank", "route", &bias, &flags, &["`bias`", "rank"]);
}

#[test]
fn route_flags_that_are_missing_or_do_not_apply_are_usage_errors() {
    let file = route_file(2, 4, &[], None);
    rejects("route-no-topk", "route", &file, &["--scoring", "softmax"], &["--topk"]);
    rejects("route-no-scoring", "route", &file, &["--topk", "2"], &["--scoring"]);
    let half = ["--topk", "2", "--scoring", "softmax", "--groups", "2"];
    rejects("route-half-groups", "route", &file, &half, &["--groups", "--topk-groups"]);
    rejects(
        "route-topk-elsewhere",
        "token-group-quant",
        &x_file(1, 128),
        &["--topk", "2"],
        &["--topk", "route"],
    );
    rejects(
        "route-logits",
        "route",
        &x_file(1, 128),
        &["--topk", "1", "--scoring", "softmax"],
        &["`logits`", "missing"],
    );
}

#[test]
fn missing_input_file_exits_2_and_existing_output_is_untouched() {
    let dir = tmp_dir("nofile");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    let o = moe(&[
        "op",
        "token-group-quant",
        "--in",
        dir.join("absent.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    let inp = dir.join("in.safetensors");
    std::fs::write(&inp, x_file(2, 130)).unwrap();
    let o = moe(&[
        "op",
        "token-group-quant",
        "--in",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"previous",
        "a rejected input leaves the old output alone"
    );
}

#[test]
fn read_inputs_survives_every_truncation_and_byte_flip_of_valid_files() {
    let files = [
        (Op::TokenGroupQuant, x_file(2, 256)),
        (Op::GroupedGemm, gemm_inputs(&[2, 1, 2], &[1, 3])),
        (
            Op::Prepare,
            st_bytes(&[
                bf16_t("x", &[2, 128], &[bf16::ONE; 256]),
                i32_t("topk_ids", &[2, 2], &[0, 1, -1, 2]),
            ]),
        ),
        (Op::Route, route_file(2, 8, &[], Some(&[8]))),
    ];
    let prepare = OpOptions {
        experts: Some(3),
        capacity: Some(2),
        ..OpOptions::default()
    };
    let route = OpOptions {
        topk: Some(2),
        scoring: Some(moe_core::Scoring::Sigmoid),
        groups: Some(4),
        topk_groups: Some(2),
        ..OpOptions::default()
    };
    for (op, bytes) in &files {
        let o = match op {
            Op::Prepare => prepare,
            Op::Route => route,
            _ => OpOptions::default(),
        };
        assert!(read_inputs(*op, &o, bytes).is_ok(), "{op:?} valid");
        // The header is where the interesting structure is; flip each of its bytes and cut everywhere.
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for cut in 0..bytes.len().min(header_end + 64) {
            let _ = read_inputs(*op, &o, &bytes[..cut]);
        }
        for pos in 0..header_end {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut b = bytes.clone();
                b[pos] ^= flip;
                let _ = read_inputs(*op, &o, &b);
            }
        }
    }
}

#[test]
fn cuda_backend_without_the_feature_says_how_to_enable_it() {
    if moe_engine::DeviceKind::Cuda.compiled_in() {
        eprintln!("skipped: this build has the cuda feature");
        return;
    }
    let dir = tmp_dir("nocuda");
    let inp = dir.join("in.safetensors");
    std::fs::write(&inp, x_file(1, 128)).unwrap();
    let out = dir.join("out.safetensors");
    let o = moe(&[
        "op",
        "token-group-quant",
        "--in",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cuda",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--features cuda"));
    assert!(!out.exists());
}
