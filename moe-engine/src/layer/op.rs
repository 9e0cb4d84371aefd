//! `moe op layer` (SPEC §8) and `moe layer`: a checkpoint's layer on tensors from a safetensors
//! file, and the checked, timed run of real layers.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use moe_core::{bf16, calc_diff_bf16};

use super::{check_layer, forward_unquantized, LayerCheck, LayerOptions, LayerOutput, MoeLayer};
use crate::device::{Device, DeviceKind};
use crate::error::{EngineError, InputError};
use crate::rng::Rng;
use crate::weights::checkpoint::Checkpoint;
use crate::weights::safetensors::{self as st, OutTensor, TensorFile};
use crate::weights::MappedFile;

const OP: &str = "layer";

/// Reads `x (M, K)` BF16 from the safetensors file at `path`.
pub fn read_x(path: &Path, k: usize) -> Result<Vec<bf16>, EngineError> {
    let file = MappedFile::open(path)?;
    let t = TensorFile::parse(file.bytes(), OP)?;
    let (shape, x) = t.bf16("x", 2, "(M, K)")?;
    if shape[1] != k {
        return Err(InputError::Shape {
            tensor: "x",
            got: st::shape_str(&shape),
            layout: "(M, K)",
            expected: format!("(M, {k}) (the checkpoint's hidden_size)"),
        }
        .into());
    }
    Ok(x)
}

/// The tensors `moe op layer` writes: `y`, and with `intermediates` the stages' outputs.
pub fn output_tensors(layer: &MoeLayer, out: &LayerOutput, intermediates: bool) -> Vec<OutTensor> {
    let d = layer.dims();
    let (m, k) = (out.tokens, d.k);
    let mut v = vec![OutTensor::bf16("y", &[m, k], &out.y)];
    if intermediates {
        v.push(OutTensor::f32("logits", &[m, d.experts], &out.logits));
        v.push(OutTensor::i32("topk_ids", &[m, d.topk], &out.topk_ids));
        v.push(OutTensor::f32("topk_weights", &[m, d.topk], &out.topk_weights));
        v.push(OutTensor::i32("counts", &[d.experts], &out.counts));
        v.push(OutTensor::bf16("routed", &[m, k], &out.routed));
        if let Some(h) = &out.shared {
            v.push(OutTensor::bf16("shared", &[m, k], h));
        }
    }
    v
}

/// `moe op layer`: layer `layer` of `checkpoint` on `x` read from `input`; `y` (and the
/// intermediates) written atomically to `output`, nothing on error.
#[allow(clippy::too_many_arguments)]
pub fn run_layer_op(
    kind: DeviceKind,
    checkpoint: &Path,
    layer: usize,
    input: &Path,
    output: &Path,
    mut opts: LayerOptions,
    intermediates: bool,
) -> Result<(), EngineError> {
    let ckpt = Checkpoint::open(checkpoint)?;
    let x = read_x(input, ckpt.config().hidden_size)?;
    let m = x.len() / ckpt.config().hidden_size;
    opts.max_tokens = opts.max_tokens.max(m).max(1);
    let weights = ckpt.load_layer(layer, &opts.load_options())?;
    // The inputs are valid before a device is opened, so bad input is reported as such on
    // every machine.
    let device = Arc::new(Device::open(kind)?);
    let mut l = MoeLayer::new(weights, ckpt.config(), device, opts)?;
    let out = l.forward(&x)?;
    let path = output.display().to_string();
    let data = st::serialize(&output_tensors(&l, &out, intermediates)).map_err(|e| EngineError::WriteOutput {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    st::write_atomic(output, &data).map_err(|source| EngineError::WriteOutput { path, source })
}

/// What `moe layer` does for each layer.
#[derive(Debug, Clone)]
pub struct LayerRunConfig {
    /// Tokens `M` of the random input (ignored with an input file).
    pub tokens: usize,
    /// Timed forwards after the checked one.
    pub repeats: usize,
    /// Also evaluate the layer unquantized (CPU, float64) and report `calc_diff` against it.
    pub accuracy: bool,
    /// Seed of the random input.
    pub seed: u64,
}

/// One layer's report.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// The layer index.
    pub layer: usize,
    /// Tokens per forward.
    pub tokens: usize,
    /// Seconds to load the layer's weights (and upload them to the GPU).
    pub load_s: f64,
    /// Median seconds of the timed forwards (host-observed, including the host-slice copies).
    pub forward_s: f64,
    /// The stage-by-stage check.
    pub check: LayerCheck,
    /// `calc_diff` of `y` against the unquantized evaluation, when asked.
    pub calc_diff_unquantized: Option<f64>,
    /// The last forward's `y`.
    pub y: Vec<bf16>,
}

/// A seeded `(M, K)` input with the spread of a normalized hidden state (values around ±1).
pub fn random_x(seed: u64, m: usize, k: usize) -> Vec<bf16> {
    let mut rng = Rng::new(seed);
    (0..m * k)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            bf16::from_f64((u - 0.5) * 3.4)
        })
        .collect()
}

/// Runs, checks and times layer `layer` of `ckpt` on `x` (or a seeded random input).
pub fn run_layer(
    ckpt: &Checkpoint,
    layer: usize,
    device: Arc<Device>,
    opts: LayerOptions,
    cfg: &LayerRunConfig,
    x: Option<&[bf16]>,
) -> Result<LayerReport, EngineError> {
    let k = ckpt.config().hidden_size;
    let x: Vec<bf16> = match x {
        Some(v) => v.to_vec(),
        None => random_x(cfg.seed ^ layer as u64, cfg.tokens, k),
    };
    let m = x.len() / k;
    let mut opts = opts;
    opts.max_tokens = opts.max_tokens.max(m).max(1);
    let t0 = Instant::now();
    let mut l = MoeLayer::load(ckpt, layer, device, opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let out = l.forward(&x)?;
    let check = check_layer(&l, &x, &out)?;
    let mut times = Vec::new();
    let mut y = out.y;
    for _ in 0..cfg.repeats {
        let t = Instant::now();
        let o = l.forward(&x)?;
        times.push(t.elapsed().as_secs_f64());
        y = o.y;
    }
    times.sort_by(f64::total_cmp);
    let forward_s = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let calc_diff_unquantized = if cfg.accuracy {
        Some(calc_diff_bf16(&y, &forward_unquantized(&l, &x)?))
    } else {
        None
    };
    Ok(LayerReport {
        layer,
        tokens: m,
        load_s,
        forward_s,
        check,
        calc_diff_unquantized,
        y,
    })
}
