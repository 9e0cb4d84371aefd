//! `moe layer` and `moe op layer`: parsing and rendering; the work is `moe_engine::layer`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use moe_core::{Numerics, ScaleFormat};
use moe_engine::layer::op::{read_x, run_layer, run_layer_op, LayerRunConfig};
use moe_engine::layer::LayerOptions;
use moe_engine::weights::checkpoint::Checkpoint;
use moe_engine::weights::safetensors::{self as st, OutTensor};
use moe_engine::{Device, DeviceKind, EngineError, InputError};

use crate::{device_parser, parse_numerics, parse_scale_fmt, set_threads};

/// `moe layer`: run real MoE layers of a checkpoint, check each stage by stage against the CPU
/// reference, and time them.
#[derive(Debug, Args)]
pub struct LayerArgs {
    /// The Hugging Face model directory (config.json and the safetensors shards).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// One layer.
    #[arg(long, conflicts_with = "layers")]
    layer: Option<usize>,
    /// A range of layers `A..B` (B excluded); the MoE layers in it run, the dense ones are skipped.
    #[arg(long, value_parser = parse_range)]
    layers: Option<std::ops::Range<usize>>,
    /// Tokens M of the seeded random input (ignored with --in).
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Input `x (M, K)` BF16 in a safetensors file.
    #[arg(long = "in", value_name = "IN.safetensors")]
    input: Option<PathBuf>,
    /// Write `y` of the layer (one layer only) to this safetensors file.
    #[arg(long = "out", value_name = "OUT.safetensors")]
    output: Option<PathBuf>,
    /// Backend.
    #[arg(long, default_value = "cpu", value_parser = device_parser())]
    backend: DeviceKind,
    /// Activation scale format.
    #[arg(long, default_value = "f32", value_parser = parse_scale_fmt)]
    scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic.
    #[arg(long, default_value = "vllm-bf16", value_parser = parse_numerics)]
    numerics: Numerics,
    /// Timed forwards per layer after the checked one.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Also evaluate each layer unquantized (CPU, float64) and print calc_diff against it.
    #[arg(long)]
    accuracy: bool,
    /// Seed of the random input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads of the CPU backend (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

impl LayerArgs {
    /// `moe run --checkpoint DIR`: every MoE layer of the model, checked and timed.
    pub fn whole_model(dir: PathBuf, backend: DeviceKind, tokens: usize, seed: u64, scale_fmt: ScaleFormat, numerics: Numerics) -> Self {
        LayerArgs {
            checkpoint: dir,
            layer: None,
            layers: None,
            tokens,
            input: None,
            output: None,
            backend,
            scale_fmt,
            numerics,
            repeats: 3,
            accuracy: false,
            seed,
            threads: None,
        }
    }
}

fn parse_range(s: &str) -> Result<std::ops::Range<usize>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}`: expected A..B"))?;
    let a: usize = a.trim().parse().map_err(|_| format!("`{s}`: `{a}` is not a layer index"))?;
    let b: usize = b.trim().parse().map_err(|_| format!("`{s}`: `{b}` is not a layer index"))?;
    if a >= b {
        return Err(format!("`{s}`: an empty range"));
    }
    Ok(a..b)
}

fn options(scale_fmt: ScaleFormat, numerics: Numerics) -> LayerOptions {
    LayerOptions {
        scale_fmt,
        numerics,
        ..LayerOptions::default()
    }
}

/// `moe layer`. `Ok(false)`: a check failed (exit 1).
pub fn run(a: LayerArgs) -> Result<bool, EngineError> {
    set_threads(a.threads)?;
    let ckpt = Checkpoint::open(&a.checkpoint)?;
    let cfg = ckpt.config();
    let layers: Vec<usize> = match (a.layer, &a.layers) {
        (Some(l), _) => vec![l],
        (None, Some(r)) => r.clone().filter(|&l| cfg.is_moe_layer(l)).collect(),
        (None, None) => (0..cfg.num_hidden_layers).filter(|&l| cfg.is_moe_layer(l)).collect(),
    };
    if layers.is_empty() {
        return Err(InputError::Usage(format!("{}: no MoE layer in the range asked for", a.checkpoint.display())).into());
    }
    if a.output.is_some() && layers.len() != 1 {
        return Err(InputError::Usage("--out writes one layer's y: give --layer".into()).into());
    }
    if a.tokens == 0 && a.input.is_none() {
        return Err(InputError::Usage("--tokens must be at least 1".into()).into());
    }
    let x = a.input.as_ref().map(|p| read_x(p, cfg.hidden_size)).transpose()?;
    let device = Arc::new(Device::open(a.backend)?);
    let run_cfg = LayerRunConfig {
        tokens: a.tokens,
        repeats: a.repeats,
        accuracy: a.accuracy,
        seed: a.seed,
    };
    let mut all_ok = true;
    let mut last_y = None;
    for &l in &layers {
        let r = run_layer(&ckpt, l, device.clone(), options(a.scale_fmt, a.numerics), &run_cfg, x.as_deref())?;
        let verdict = if r.check.ok() { "PASS" } else { "FAIL" };
        println!(
            "layer {l}: {} tokens on {}, load {:.2} s, forward {:.3} ms (median of {}, {:.0} tokens/s), check {verdict}",
            r.tokens,
            a.backend,
            r.load_s,
            r.forward_s * 1e3,
            a.repeats,
            r.tokens as f64 / r.forward_s
        );
        for s in &r.check.stages {
            println!("  {:<9} {:<4} {}", s.stage, if s.ok { "ok" } else { "FAIL" }, s.detail);
        }
        if let Some(cd) = r.calc_diff_unquantized {
            println!("  accuracy: calc_diff {cd:.3e} of y against the unquantized evaluation (float64, no activation quantization)");
        }
        all_ok &= r.check.ok();
        last_y = Some((r.tokens, r.y));
    }
    if let (Some(path), Some((m, y))) = (&a.output, last_y) {
        let data = st::serialize(&[OutTensor::bf16("y", &[m, cfg.hidden_size], &y)]).map_err(|e| EngineError::WriteOutput {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        st::write_atomic(path, &data).map_err(|source| EngineError::WriteOutput {
            path: path.display().to_string(),
            source,
        })?;
    }
    println!("result: {} ({} layer(s))", if all_ok { "PASS" } else { "FAIL" }, layers.len());
    Ok(all_ok)
}

/// `moe op layer` (SPEC §8).
pub fn op(
    backend: DeviceKind,
    checkpoint: Option<&Path>,
    layer: Option<usize>,
    input: &Path,
    output: &Path,
    opts: LayerOptions,
    intermediates: bool,
) -> Result<(), EngineError> {
    let (Some(dir), Some(l)) = (checkpoint, layer) else {
        return Err(InputError::Usage("moe op layer needs --checkpoint DIR and --layer L".into()).into());
    };
    run_layer_op(backend, dir, l, input, output, opts, intermediates)
}
