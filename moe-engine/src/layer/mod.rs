//! The MoE layer (SPEC §5.7): gate → route → prepare → experts → finalize, the shared experts,
//! and the final add, on any [`Device`], with the weights of one layer of a Hugging Face
//! checkpoint ([`crate::weights::checkpoint`]).
//!
//! On the GPU the routed and the shared experts' weights are uploaded once, when the layer is
//! built, and stay resident (`moe_cuda::ResidentExperts`, with the `cuda` feature); each
//! [`MoeLayer::forward`] moves only the activations. The gate, the router, prepare and finalize run through the backend's
//! host-slice operations (a device-resident prepare, for one graph per layer, is issue 11's).
//!
//! ```no_run
//! use std::sync::Arc;
//! use moe_engine::layer::{LayerOptions, MoeLayer};
//! use moe_engine::{Device, DeviceKind};
//! # fn main() -> Result<(), moe_engine::EngineError> {
//! let device = Arc::new(Device::open(DeviceKind::Cpu)?);
//! let mut layer = MoeLayer::from_checkpoint("DeepSeek-V3".as_ref(), 3, device, LayerOptions::default())?;
//! let x = vec![moe_core::bf16::ZERO; 4 * layer.dims().k]; // 4 tokens
//! let out = layer.forward(&x)?;
//! assert_eq!(out.y.len(), x.len());
//! # Ok(()) }
//! ```

mod check;
pub mod op;
mod unquantized;

use std::path::Path;
use std::sync::Arc;

use moe_core::format::bf16_out;
use moe_core::{
    bf16, Activation, BatchedTokenGroupQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace, Finalize, Gate, Numerics, Prepare, Route,
    RouterConfig, ScaleBuf, ScaleFormat,
};

pub use check::{check_layer, LayerCheck, StageCheck};
pub use unquantized::forward_unquantized;

use crate::device::Device;
use crate::error::{EngineError, InputError};
use crate::weights::checkpoint::{Checkpoint, LayerWeights, LoadOptions, ModelConfig, QuantWeights};

/// How a layer runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOptions {
    /// Scale format of the activations (and of BF16 experts quantized at load: the ceil formats
    /// get power-of-two weight scales).
    pub scale_fmt: ScaleFormat,
    /// SiLU-mul-quant numerics.
    pub numerics: Numerics,
    /// Rows per expert `T` of the routed stage; `None`: `M` on the CPU, `max_tokens` on the GPU
    /// (results do not depend on it). A smaller capacity that the routing overflows is an error.
    pub capacity: Option<usize>,
    /// The most tokens one forward takes on the GPU (the resident buffers are sized for it).
    pub max_tokens: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            scale_fmt: ScaleFormat::F32,
            numerics: Numerics::VllmBf16,
            capacity: None,
            max_tokens: 256,
        }
    }
}

impl LayerOptions {
    /// How the layer's weights are read: every routed expert, and BF16 experts quantized with
    /// power-of-two scales under a ceil scale format.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            pow2_scales: self.scale_fmt.is_ceil(),
            experts: None,
        }
    }
}

/// The sizes of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDims {
    /// Hidden size `K`.
    pub k: usize,
    /// Routed experts' intermediate size `I`.
    pub i: usize,
    /// Routed experts `Eg`.
    pub experts: usize,
    /// Experts per token `k`.
    pub topk: usize,
    /// The shared experts' intermediate size `I_s`, if the layer has them.
    pub shared_i: Option<usize>,
}

/// What one forward produced: `y`, and every intermediate a stage-by-stage check needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOutput {
    /// Tokens `M`.
    pub tokens: usize,
    /// Rows per expert of the routed stage.
    pub capacity: usize,
    /// `y (M, K)`: routed plus shared.
    pub y: Vec<bf16>,
    /// The gate's `logits (M, Eg)`.
    pub logits: Vec<f32>,
    /// `topk_ids (M, k)` (global ids).
    pub topk_ids: Vec<i32>,
    /// `topk_weights (M, k)`.
    pub topk_weights: Vec<f32>,
    /// Live rows per expert `(Eg)`.
    pub counts: Vec<i32>,
    /// Prepare's `a1q (Eg, T, K)`.
    pub a1q: Vec<u8>,
    /// Prepare's scales.
    pub a1s: ScaleBuf,
    /// The experts stage's output `(Eg, T, K)`.
    pub expert_out: Vec<bf16>,
    /// Finalize's `routed (M, K)`.
    pub routed: Vec<bf16>,
    /// The shared experts' `h (M, K)`, if any.
    pub shared: Option<Vec<bf16>>,
}

/// One MoE layer on one device, its weights loaded.
#[derive(Debug)]
pub struct MoeLayer {
    device: Arc<Device>,
    weights: LayerWeights,
    router: RouterConfig,
    dims: LayerDims,
    opts: LayerOptions,
    resident: Option<Resident>,
}

/// The GPU's resident experts stages.
#[cfg(feature = "cuda")]
#[derive(Debug)]
struct Resident {
    routed: moe_cuda::ResidentExperts,
    shared: Option<moe_cuda::ResidentExperts>,
}

/// Nothing is resident without the CUDA backend.
#[cfg(not(feature = "cuda"))]
#[derive(Debug)]
enum Resident {}

impl MoeLayer {
    /// Loads layer `layer` of the checkpoint in `dir` (SPEC §4.1) onto `device`.
    pub fn from_checkpoint(dir: &Path, layer: usize, device: Arc<Device>, opts: LayerOptions) -> Result<Self, EngineError> {
        Self::load(&Checkpoint::open(dir)?, layer, device, opts)
    }

    /// Loads layer `layer` of an opened checkpoint onto `device` (BF16 experts get power-of-two
    /// scales under a ceil scale format).
    pub fn load(ckpt: &Checkpoint, layer: usize, device: Arc<Device>, opts: LayerOptions) -> Result<Self, EngineError> {
        Self::new(ckpt.load_layer(layer, &opts.load_options())?, ckpt.config(), device, opts)
    }

    /// A layer from loaded weights and the model's config.
    pub fn new(weights: LayerWeights, config: &ModelConfig, device: Arc<Device>, opts: LayerOptions) -> Result<Self, EngineError> {
        let dims = LayerDims {
            k: config.hidden_size,
            i: config.moe_intermediate_size,
            experts: config.n_routed_experts,
            topk: config.num_experts_per_tok,
            shared_i: weights.shared.as_ref().map(|s| s.w2.cols),
        };
        let router = config.router();
        // Validates the router settings once (a forward re-checks the shapes).
        Route::new(0, dims.experts, router)?;
        if weights.w1.experts != dims.experts {
            return Err(InputError::Usage(format!(
                "layer {}: {} routed experts loaded of {}; a layer runs all of them (expert parallelism is issue 13's)",
                weights.layer, weights.w1.experts, dims.experts
            ))
            .into());
        }
        if opts.max_tokens == 0 {
            return Err(InputError::Usage("max_tokens must be at least 1".into()).into());
        }
        let resident = make_resident(&device, &weights, dims, &opts)?;
        Ok(MoeLayer {
            device,
            weights,
            router,
            dims,
            opts,
            resident,
        })
    }

    /// The sizes.
    pub fn dims(&self) -> LayerDims {
        self.dims
    }

    /// The router settings.
    pub fn router(&self) -> &RouterConfig {
        &self.router
    }

    /// The loaded weights.
    pub fn weights(&self) -> &LayerWeights {
        &self.weights
    }

    /// The options.
    pub fn options(&self) -> &LayerOptions {
        &self.opts
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// `y (M, K)` of `x (M, K)`, with every intermediate.
    pub fn forward(&mut self, x: &[bf16]) -> Result<LayerOutput, EngineError> {
        let parts = Parts {
            device: &self.device,
            weights: &self.weights,
            router: self.router,
            dims: self.dims,
            opts: &self.opts,
        };
        forward_with(parts, x, self.resident.as_mut())
    }

    /// The same forward on the CPU reference backend, from the same weights (the check's
    /// end-to-end reference).
    pub fn forward_on_cpu(&self, x: &[bf16]) -> Result<LayerOutput, EngineError> {
        let cpu = Device::Cpu(moe_ref_cpu::CpuBackend::new());
        let parts = Parts {
            device: &cpu,
            weights: &self.weights,
            router: self.router,
            dims: self.dims,
            opts: &self.opts,
        };
        forward_with(parts, x, None)
    }
}

#[cfg(feature = "cuda")]
fn make_resident(device: &Device, weights: &LayerWeights, d: LayerDims, o: &LayerOptions) -> Result<Option<Resident>, EngineError> {
    let Device::Cuda(gpu) = device else {
        return Ok(None);
    };
    let t = o.capacity.unwrap_or(o.max_tokens).max(1);
    let p = ExpertsStage::new(d.experts, t, d.k, d.i, o.scale_fmt, o.numerics)?;
    let mut routed = gpu.experts(p)?;
    routed.upload_weights(weights.w1.view(), weights.w2.view())?;
    let shared = match (&weights.shared, d.shared_i) {
        (Some(s), Some(is)) => {
            let p = ExpertsStage::new(1, o.max_tokens, d.k, is, o.scale_fmt, o.numerics)?;
            let mut r = gpu.experts(p)?;
            r.upload_weights(s.w1.view(), s.w2.view())?;
            Some(r)
        }
        _ => None,
    };
    Ok(Some(Resident { routed, shared }))
}

#[cfg(not(feature = "cuda"))]
fn make_resident(_: &Device, _: &LayerWeights, _: LayerDims, _: &LayerOptions) -> Result<Option<Resident>, EngineError> {
    Ok(None)
}

/// What a forward reads.
#[derive(Clone, Copy)]
struct Parts<'a> {
    device: &'a Device,
    weights: &'a LayerWeights,
    router: RouterConfig,
    dims: LayerDims,
    opts: &'a LayerOptions,
}

/// The routed stage's capacity for `m` tokens: the resident buffers' on the GPU.
fn capacity(opts: &LayerOptions, m: usize, resident: bool) -> Result<usize, EngineError> {
    if !resident {
        return Ok(opts.capacity.unwrap_or(m).max(1));
    }
    if m > opts.max_tokens {
        return Err(InputError::Usage(format!(
            "x: {m} tokens, more than the {} this layer's GPU buffers hold (LayerOptions::max_tokens, `--max-tokens`)",
            opts.max_tokens
        ))
        .into());
    }
    Ok(opts.capacity.unwrap_or(opts.max_tokens).max(1))
}

fn forward_with(p: Parts<'_>, x: &[bf16], mut resident: Option<&mut Resident>) -> Result<LayerOutput, EngineError> {
    let d = p.dims;
    let (k, eg, topk) = (d.k, d.experts, d.topk);
    if x.len() % k != 0 {
        return Err(InputError::Usage(format!("x: {} values is not a whole number of rows of K = {k}", x.len())).into());
    }
    let m = x.len() / k;
    let cap = capacity(p.opts, m, resident.is_some())?;
    let (fmt, numerics) = (p.opts.scale_fmt, p.opts.numerics);
    let b = p.device.backend();
    // 1. Gate.
    let mut logits = vec![0f32; m * eg];
    b.gate(&Gate::new(m, eg, k)?, x, &p.weights.gate, &mut logits)?;
    // 2. Route.
    let (mut ids, mut w) = (vec![0i32; m * topk], vec![0f32; m * topk]);
    b.route(&Route::new(m, eg, p.router)?, &logits, p.weights.bias.as_deref(), &mut ids, &mut w)?;
    // 3. Prepare.
    let prep = Prepare::new(m, k, topk, eg, cap, fmt)?;
    let mut a1q = vec![0u8; eg * cap * k];
    let mut a1s = ScaleBuf::zeros(fmt, prep.quant().scale_shape().iter().product());
    let mut counts = vec![0i32; eg];
    b.prepare(&prep, x, &ids, &mut a1q, a1s.view_mut(), &mut counts)?;
    // 4. Experts.
    let mut expert_out = vec![bf16::ZERO; eg * cap * k];
    routed_experts(p, resident.as_deref_mut(), cap, &a1q, &a1s, &counts, &mut expert_out)?;
    // 5. Finalize.
    let mut routed = vec![bf16::ZERO; m * k];
    b.finalize(&Finalize::new(m, k, topk, eg, cap)?, &expert_out, &ids, &w, &mut routed)?;
    // 6. Shared experts.
    let shared = match d.shared_i {
        Some(is) => Some(shared_experts(p, resident, x, m, is, fmt, numerics)?),
        None => None,
    };
    // 7. y = bf16(f32(r) + f32(h)).
    let y = match &shared {
        Some(h) => add_bf16(&routed, h),
        None => routed.clone(),
    };
    Ok(LayerOutput {
        tokens: m,
        capacity: cap,
        y,
        logits,
        topk_ids: ids,
        topk_weights: w,
        counts,
        a1q,
        a1s,
        expert_out,
        routed,
        shared,
    })
}

#[allow(clippy::too_many_arguments)]
fn routed_experts(
    p: Parts<'_>,
    resident: Option<&mut Resident>,
    cap: usize,
    a1q: &[u8],
    a1s: &ScaleBuf,
    counts: &[i32],
    out: &mut [bf16],
) -> Result<(), EngineError> {
    #[cfg(feature = "cuda")]
    if let Some(r) = resident {
        r.routed.step(a1q, a1s.view(), counts, out)?;
        return Ok(());
    }
    #[cfg(not(feature = "cuda"))]
    let _ = resident;
    let d = p.dims;
    let stage = ExpertsStage::new(d.experts, cap, d.k, d.i, p.opts.scale_fmt, p.opts.numerics)?;
    run_stage(p.device, &stage, a1q, a1s, counts, &p.weights.w1, &p.weights.w2, out)
}

/// The shared experts on all `m` tokens (SPEC §5.7 step 3): token-group quantization of `x`
/// into an `E = 1` batch, then the experts stage with `counts = [m]`.
#[allow(clippy::too_many_arguments)]
fn shared_experts(
    p: Parts<'_>,
    resident: Option<&mut Resident>,
    x: &[bf16],
    m: usize,
    is: usize,
    fmt: ScaleFormat,
    numerics: Numerics,
) -> Result<Vec<bf16>, EngineError> {
    let k = p.dims.k;
    let t = if resident.is_some() { p.opts.max_tokens } else { m.max(1) };
    let mut xs = x.to_vec();
    xs.resize(t * k, bf16::ZERO);
    let q = BatchedTokenGroupQuant::new(1, t, k, fmt)?;
    let counts = [m as i32];
    let mut a1q = vec![0u8; t * k];
    let mut a1s = ScaleBuf::zeros(fmt, q.scale_shape().iter().product());
    p.device
        .backend()
        .batched_token_group_quant(&q, Activation::Bf16(&xs), &counts, &mut a1q, a1s.view_mut())?;
    let mut out = vec![bf16::ZERO; t * k];
    #[cfg(feature = "cuda")]
    if let Some(Resident { shared: Some(r), .. }) = resident {
        r.step(&a1q, a1s.view(), &counts, &mut out)?;
        out.truncate(m * k);
        return Ok(out);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = resident;
    let s = p
        .weights
        .shared
        .as_ref()
        .ok_or_else(|| InputError::Usage(format!("layer {}: shared experts expected, none loaded", p.weights.layer)))?;
    let stage = ExpertsStage::new(1, t, k, is, fmt, numerics)?;
    run_stage(p.device, &stage, &a1q, &a1s, &counts, &s.w1, &s.w2, &mut out)?;
    out.truncate(m * k);
    Ok(out)
}

/// The experts stage through the backend's host-slice `apply`.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    device: &Device,
    p: &ExpertsStage,
    a1q: &[u8],
    a1s: &ScaleBuf,
    counts: &[i32],
    w1: &QuantWeights,
    w2: &QuantWeights,
    out: &mut [bf16],
) -> Result<(), EngineError> {
    let mut ws = ExpertsWorkspace::new(p);
    let inputs = ExpertsInputs {
        a1q,
        a1s: a1s.view(),
        w1: w1.view(),
        w2: w2.view(),
        counts,
    };
    device.backend().apply(p, inputs, &mut ws, out)?;
    Ok(())
}

/// SPEC §5.7 step 4: `bf16(f32(r) + f32(h))`, NaN canonical.
pub fn add_bf16(r: &[bf16], h: &[bf16]) -> Vec<bf16> {
    r.iter().zip(h).map(|(a, b)| bf16_out(a.to_f32() + b.to_f32())).collect()
}
