//! `moe synth-checkpoint`: the files of each small preset appear and load; a bad preset, a bad
//! dtype and an existing non-empty output are one line on stderr and exit code 2, with nothing
//! written.

mod common;

use common::{moe, tmp_dir};
use moe_engine::weights::checkpoint::{Checkpoint, LoadOptions};

/// A path for the checkpoint inside a fresh test directory (the command creates it).
fn out(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp_dir(test);
    let out = dir.join("ckpt");
    (dir, out)
}

fn rejects(args: &[&str], needles: &[&str]) {
    let o = moe(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn deepseek_mini_writes_the_sharded_layout_and_loads() {
    let (dir, ckpt) = out("synth-ds");
    let o = moe(&[
        "synth-checkpoint",
        "--preset",
        "deepseek-v3-mini",
        "--out",
        ckpt.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing");
        assert!(stdout.contains(f), "{f} not reported: {stdout}");
    }
    assert!(stdout.contains("deepseek-v3-mini, fp8, seed 3"), "{stdout}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("model-00002-of-00002.safetensors (2/2)"));
    let ck = Checkpoint::open(&ckpt).unwrap();
    assert_eq!(ck.moe_layers().collect::<Vec<_>>(), vec![1, 2]);
    assert!(ck.load_layer(2, &LoadOptions::default()).unwrap().shared.is_some());
    // Nothing but the checkpoint was left next to it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qwen_mini_writes_one_file_in_either_dtype() {
    for (dtype, expected) in [(None, "bf16"), (Some("fp8"), "fp8")] {
        let (dir, ckpt) = out(&format!("synth-qwen-{expected}"));
        let mut args = vec![
            "synth-checkpoint",
            "--preset",
            "qwen3-moe-mini",
            "--out",
            ckpt.to_str().unwrap(),
            "--threads",
            "2",
        ];
        if let Some(d) = dtype {
            args.extend(["--dtype", d]);
        }
        let o = moe(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("qwen3-moe-mini, {expected}")));
        assert!(ckpt.join("config.json").is_file() && ckpt.join("model.safetensors").is_file());
        assert!(!ckpt.join("model.safetensors.index.json").exists());
        let config = std::fs::read_to_string(ckpt.join("config.json")).unwrap();
        assert_eq!(config.contains("quantization_config"), expected == "fp8");
        assert!(Checkpoint::open(&ckpt).unwrap().load_layer(1, &LoadOptions::default()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn unknown_preset_is_one_line_and_exit_2() {
    let (dir, ckpt) = out("synth-bad-preset");
    rejects(
        &["synth-checkpoint", "--preset", "deepseek-v4", "--out", ckpt.to_str().unwrap()],
        &["unknown preset `deepseek-v4`", "deepseek-v3-mini"],
    );
    assert!(!ckpt.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_dtype_is_one_line_and_exit_2() {
    let (dir, ckpt) = out("synth-bad-dtype");
    rejects(
        &[
            "synth-checkpoint",
            "--preset",
            "qwen3-moe-mini",
            "--dtype",
            "fp4",
            "--out",
            ckpt.to_str().unwrap(),
        ],
        &["unknown dtype `fp4`"],
    );
    assert!(!ckpt.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn existing_non_empty_output_is_refused_and_untouched() {
    let (dir, ckpt) = out("synth-exists");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("config.json"), "{}").unwrap();
    rejects(
        &["synth-checkpoint", "--preset", "qwen3-moe-mini", "--out", ckpt.to_str().unwrap()],
        &["exists and is not an empty directory", "ckpt"],
    );
    assert_eq!(std::fs::read_to_string(ckpt.join("config.json")).unwrap(), "{}");
    assert_eq!(std::fs::read_dir(&ckpt).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary directory left");
    std::fs::remove_dir_all(&dir).unwrap();
}
