//! The MoE layer (SPEC §5.7) on checkpoints in the Hugging Face layout (`moe synth-checkpoint`'s
//! mini presets, loaded through the same code path a real checkpoint takes): every stage
//! checked against the CPU reference on the backend's own inputs, rows independent of the rest
//! of the batch, the accuracy against an unquantized evaluation, and bad input.
//!
//! Mounted per backend: the mounting file provides `layer_device_or_skip`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use moe_core::{bf16, calc_diff_bf16};
use moe_engine::layer::op::random_x;
use moe_engine::layer::{check_layer, forward_unquantized, LayerOptions, MoeLayer};
use moe_engine::weights::checkpoint::synth::{write_checkpoint, Preset, WeightDtype};
use moe_engine::weights::checkpoint::Checkpoint;

use super::layer_device_or_skip;

/// The mini checkpoints, written once per test binary: DeepSeek-V3-like in FP8 (sharded, shared
/// expert, grouped sigmoid router with bias) and Qwen3-MoE-like in BF16 (one file, softmax,
/// quantized at load).
fn checkpoints() -> &'static [(Preset, PathBuf)] {
    static DIRS: OnceLock<Vec<(Preset, PathBuf)>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("moe-layer-suite-{}", std::process::id()));
        [
            (Preset::DeepseekV3Mini, WeightDtype::Fp8),
            (Preset::Qwen3MoeMini, WeightDtype::Bf16),
        ]
        .into_iter()
        .map(|(preset, dtype)| {
            let dir = root.join(preset.name());
            if !dir.join("config.json").exists() {
                write_checkpoint(&preset.spec(), dtype, 5, &dir, &|_| {}).expect("the synthetic checkpoint is written");
            }
            (preset, dir)
        })
        .collect()
    })
}

fn layer(dir: &std::path::Path, l: usize, device: Arc<moe_engine::Device>, opts: LayerOptions) -> MoeLayer {
    MoeLayer::from_checkpoint(dir, l, device, opts).expect("the layer loads")
}

#[test]
fn layer_forward_passes_the_stage_by_stage_check() {
    let Some(device) = layer_device_or_skip("layer_forward_passes_the_stage_by_stage_check") else {
        return;
    };
    let mut checked = 0;
    for (preset, dir) in checkpoints() {
        let ckpt = Checkpoint::open(dir).unwrap();
        for l in ckpt.moe_layers() {
            let mut layer = layer(dir, l, device.clone(), LayerOptions::default());
            for m in [1usize, 7, 64] {
                let x = random_x(l as u64 * 31 + m as u64, m, layer.dims().k);
                let out = layer.forward(&x).unwrap();
                let check = check_layer(&layer, &x, &out).unwrap();
                assert!(
                    check.ok(),
                    "{} layer {l}, {m} tokens: {:#?}",
                    preset.name(),
                    check.stages.iter().filter(|s| !s.ok).collect::<Vec<_>>()
                );
                assert!(out.y.iter().all(|v| v.is_finite()), "{} layer {l}: y not finite", preset.name());
                assert_eq!(out.shared.is_some(), *preset == Preset::DeepseekV3Mini);
                checked += 1;
            }
        }
    }
    println!("CASES layer: {checked} forwards checked stage by stage");
}

/// A token's output does not depend on the other tokens of the batch: the first rows of a
/// 64-token forward equal a 3-token forward of the same rows, bit for bit.
#[test]
fn layer_rows_do_not_depend_on_the_rest_of_the_batch() {
    let Some(device) = layer_device_or_skip("layer_rows_do_not_depend_on_the_rest_of_the_batch") else {
        return;
    };
    for (preset, dir) in checkpoints() {
        let l = Checkpoint::open(dir).unwrap().moe_layers().next().expect("a MoE layer");
        let mut layer = layer(dir, l, device.clone(), LayerOptions::default());
        let k = layer.dims().k;
        let x = random_x(9, 64, k);
        let all = layer.forward(&x).unwrap();
        let few = layer.forward(&x[..3 * k]).unwrap();
        assert!(all.y[..3 * k] == few.y[..], "{}: rows changed with the batch", preset.name());
    }
}

/// `calc_diff` of `y` against the float64 evaluation without activation quantization. Expected
/// size: an E4M3 value keeps 3 mantissa bits, so quantizing an activation moves it by a relative
/// error roughly uniform in ±2^-4 (variance 2^-8 / 3); a dot product of such errors with random
/// signs carries the same relative variance, and `calc_diff ≈ |Δy|² / (2|y|²)` adds about
/// 2^-8 / 6 = 6.5e-4 per quantization. The layer quantizes twice in series (`x` before GEMM1,
/// the SiLU output before GEMM2): about 1.3e-3 at most, less where groups are dominated by a
/// few large values. Bound 2e-3; measured values are printed (about 9e-4 on the mini presets).
#[test]
fn layer_accuracy_against_the_unquantized_evaluation() {
    let Some(device) = layer_device_or_skip("layer_accuracy_against_the_unquantized_evaluation") else {
        return;
    };
    for (preset, dir) in checkpoints() {
        let l = Checkpoint::open(dir).unwrap().moe_layers().next().expect("a MoE layer");
        let mut layer = layer(dir, l, device.clone(), LayerOptions::default());
        let x = random_x(11, 32, layer.dims().k);
        let y = layer.forward(&x).unwrap().y;
        let cd = calc_diff_bf16(&y, &forward_unquantized(&layer, &x).unwrap());
        println!(
            "LAYER accuracy {} layer {l}: calc_diff {cd:.3e} against the unquantized evaluation",
            preset.name()
        );
        assert!(cd < 2e-3, "{}: calc_diff {cd:e}", preset.name());
    }
}

#[test]
fn layer_bad_input_is_a_typed_error() {
    let Some(device) = layer_device_or_skip("layer_bad_input_is_a_typed_error") else {
        return;
    };
    let (_, dir) = &checkpoints()[0];
    let l = Checkpoint::open(dir).unwrap().moe_layers().next().expect("a MoE layer");
    let opts = LayerOptions {
        max_tokens: 8,
        ..LayerOptions::default()
    };
    let mut layer = layer(dir, l, device.clone(), opts);
    let k = layer.dims().k;
    let e = layer.forward(&vec![bf16::ZERO; k + 1]).unwrap_err();
    assert!(e.is_input() && e.to_string().contains("x"), "{e}");
    // More tokens than the GPU buffers hold is an input error there; the CPU has no such limit.
    match layer.forward(&vec![bf16::ZERO; 9 * k]) {
        Ok(out) => assert_eq!(device.kind(), moe_engine::DeviceKind::Cpu, "accepted {} tokens", out.tokens),
        Err(e) => assert!(e.is_input() && e.to_string().contains("max_tokens"), "{e}"),
    }
    // A layer that is not a MoE layer, and one past the end, name the layer.
    for bad in [0usize, 99] {
        let e = MoeLayer::from_checkpoint(dir, bad, device.clone(), LayerOptions::default()).unwrap_err();
        assert!(e.is_input() && e.to_string().contains(&bad.to_string()), "layer {bad}: {e}");
    }
}
