//! `moe op layer` (SPEC §8) and `moe layer` on a checkpoint in the Hugging Face layout (the
//! DeepSeek-V3 mini preset of `moe synth-checkpoint`, written through the engine).

mod common;

use common::*;
use moe_engine::layer::op::random_x;
use moe_engine::weights::checkpoint::synth::{write_checkpoint, Preset, WeightDtype};

fn checkpoint(test: &str) -> std::path::PathBuf {
    let dir = tmp_dir(test).join("dsv3-mini");
    write_checkpoint(&Preset::DeepseekV3Mini.spec(), WeightDtype::Fp8, 3, &dir, &|_| {}).unwrap();
    dir
}

#[test]
fn op_layer_writes_y_and_the_intermediates() {
    let ck = checkpoint("op-layer");
    let d = ck.parent().unwrap().to_path_buf();
    let x = write_st(&d, "x.safetensors", &[bf16_t("x", &[5, 512], &random_x(1, 5, 512))]);
    let out = d.join("y.safetensors");
    let args = [
        "op",
        "layer",
        "--in",
        x.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--checkpoint",
        ck.to_str().unwrap(),
        "--layer",
        "1",
        "--intermediates",
    ];
    let r = moe(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let names: Vec<String> = read_st(&out).into_iter().map(|t| format!("{} {:?}", t.0, t.2)).collect();
    for want in [
        "y [5, 512]",
        "logits [5, 16]",
        "topk_ids [5, 4]",
        "topk_weights [5, 4]",
        "counts [16]",
        "routed [5, 512]",
        "shared [5, 512]",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

#[test]
fn op_layer_bad_input_is_exit_2_and_writes_nothing() {
    let ck = checkpoint("op-layer-bad");
    let d = ck.parent().unwrap().to_path_buf();
    let good = write_st(&d, "x.safetensors", &[bf16_t("x", &[2, 512], &random_x(1, 2, 512))]);
    let wrong_k = write_st(&d, "xk.safetensors", &[bf16_t("x", &[2, 256], &random_x(1, 2, 256))]);
    let out = d.join("y.safetensors");
    let (ck, good, wrong_k, outs) = (
        ck.to_str().unwrap(),
        good.to_str().unwrap(),
        wrong_k.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for (args, needle) in [
        (vec!["op", "layer", "--in", good, "--out", outs, "--layer", "1"], "--checkpoint"),
        (
            vec!["op", "layer", "--in", wrong_k, "--out", outs, "--checkpoint", ck, "--layer", "1"],
            "x",
        ),
        (
            vec!["op", "layer", "--in", good, "--out", outs, "--checkpoint", ck, "--layer", "0"],
            "0",
        ),
        (
            vec![
                "op",
                "layer",
                "--in",
                good,
                "--out",
                outs,
                "--checkpoint",
                "/nonexistent/ckpt",
                "--layer",
                "1",
            ],
            "config.json",
        ),
    ] {
        let r = moe(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle) && err.lines().count() == 1, "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn moe_layer_checks_and_times_every_moe_layer() {
    let ck = checkpoint("moe-layer");
    let r = moe(&[
        "layer",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--tokens",
        "9",
        "--repeats",
        "2",
        "--accuracy",
    ]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{out}{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        out.contains("layer 1:") && out.contains("layer 2:") && !out.contains("layer 0:"),
        "{out}"
    );
    assert!(out.contains("calc_diff") && out.contains("result: PASS (2 layer(s))"), "{out}");
    for stage in ["gate", "route", "prepare", "experts", "finalize", "shared", "add", "y"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(stage)), "no {stage} line in {out}");
    }
    let r = moe(&["layer", "--checkpoint", ck.to_str().unwrap(), "--layers", "0..1"]);
    assert_eq!(r.status.code(), Some(2), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn moe_run_with_a_checkpoint_runs_the_models_moe_layers() {
    let ck = checkpoint("run-checkpoint");
    let r = moe(&["run", "--checkpoint", ck.to_str().unwrap(), "--tokens", "4"]);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && out.contains("result: PASS (2 layer(s))"),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = moe(&["run", "--checkpoint", ck.to_str().unwrap(), "--experts", "4"]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "a synthetic-layer flag with --checkpoint is a usage error"
    );
}
