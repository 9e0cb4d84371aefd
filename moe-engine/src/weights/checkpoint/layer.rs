//! One MoE layer's weights, as the experts stage and the router take them.

use moe_core::WeightsRef;
use rayon::prelude::*;
use safetensors::Dtype;

use super::config::ModelConfig;
use super::error::CheckpointError;
use super::shards::Shards;
use super::tensors::{matrix, read, widened, Matrix};
use super::LoadOptions;
use crate::error::{try_filled, EngineError};
use crate::weights::safetensors::decode_f32;

/// Block-quantized weights `(E, R, C)` E4M3 with f32 scales `(E, ceil(R/128), ceil(C/128))`,
/// row-major (SPEC §4).
#[derive(Clone, PartialEq)]
pub struct QuantWeights {
    /// The E4M3 bytes, `E·R·C`.
    pub q: Vec<u8>,
    /// The dequantization scales (`weight_scale_inv`), `E·ceil(R/128)·ceil(C/128)`.
    pub s: Vec<f32>,
    /// Experts `E`.
    pub experts: usize,
    /// Rows `R` of each expert's matrix.
    pub rows: usize,
    /// Columns `C` (the reduction length).
    pub cols: usize,
}

impl QuantWeights {
    /// The borrowed form the backends take.
    pub fn view(&self) -> WeightsRef<'_> {
        WeightsRef { q: &self.q, s: &self.s }
    }

    /// `(E, ceil(R/128), ceil(C/128))`.
    pub fn scale_shape(&self) -> [usize; 3] {
        [self.experts, self.rows.div_ceil(128), self.cols.div_ceil(128)]
    }

    fn zeroed(tensor: &'static str, experts: usize, rows: usize, cols: usize) -> Result<Self, EngineError> {
        let blocks = rows.div_ceil(128) * cols.div_ceil(128);
        Ok(Self {
            q: try_filled(tensor, experts * rows * cols, 0u8)?,
            s: try_filled(tensor, experts * blocks, 0f32)?,
            experts,
            rows,
            cols,
        })
    }

    /// Each expert's `(q, s)`.
    fn per_expert(&mut self) -> impl IndexedParallelIterator<Item = (&mut [u8], &mut [f32])> {
        let blocks = self.rows.div_ceil(128) * self.cols.div_ceil(128);
        self.q.par_chunks_mut(self.rows * self.cols).zip(self.s.par_chunks_mut(blocks))
    }
}

impl std::fmt::Debug for QuantWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantWeights {{ (E, R, C) = ({}, {}, {}) }}", self.experts, self.rows, self.cols)
    }
}

/// The shared expert (all `n_shared_experts` fused into one MLP of intermediate size
/// `I_s = n_shared_experts · I`), as an expert batch with `E = 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedWeights {
    /// `(1, 2·I_s, K)`: gate rows then up rows.
    pub w1: QuantWeights,
    /// `(1, K, I_s)`.
    pub w2: QuantWeights,
}

/// The weights of one MoE layer.
#[derive(Clone, PartialEq)]
pub struct LayerWeights {
    /// The layer's index in the model.
    pub layer: usize,
    /// The gate `(Eg, K)` row-major, widened exactly to f32 (BF16 or F32 on disk).
    pub gate: Vec<f32>,
    /// The choice bias `e_score_correction_bias` `(Eg)` when the config has one (`noaux_tc`).
    pub bias: Option<Vec<f32>>,
    /// `(E, 2I, K)` for the `E` experts loaded: `gate_proj` rows then `up_proj` rows per expert,
    /// scales likewise (SPEC §4.1).
    pub w1: QuantWeights,
    /// `(E, K, I)`: `down_proj`.
    pub w2: QuantWeights,
    /// The shared expert, when `n_shared_experts > 0`.
    pub shared: Option<SharedWeights>,
}

impl std::fmt::Debug for LayerWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWeights")
            .field("layer", &self.layer)
            .field("gate_len", &self.gate.len())
            .field("bias", &self.bias.is_some())
            .field("w1", &self.w1)
            .field("w2", &self.w2)
            .field("shared", &self.shared)
            .finish()
    }
}

/// The three matrices of one expert MLP of intermediate size `n` (`name`: `I` or `I_s`).
fn mlp<'a>(shards: &'a Shards, prefix: &str, k: usize, n: usize, name: &str) -> Result<[Matrix<'a>; 3], EngineError> {
    Ok([
        matrix(shards, &format!("{prefix}.gate_proj"), [(name, n), ("K", k)])?,
        matrix(shards, &format!("{prefix}.up_proj"), [(name, n), ("K", k)])?,
        matrix(shards, &format!("{prefix}.down_proj"), [("K", k), (name, n)])?,
    ])
}

/// Copies (or quantizes) each expert's matrices into its slices of `w1` and `w2`, in parallel.
fn fill(mats: &[[Matrix<'_>; 3]], pow2: bool, w1: &mut QuantWeights, w2: &mut QuantWeights) -> Result<(), EngineError> {
    // gate_proj fills the first half of w1's rows (I is a multiple of 128, so its scale rows too).
    let (half_q, half_s) = (w1.q.len() / (2 * w1.experts), w1.s.len() / (2 * w1.experts));
    w1.per_expert()
        .zip(w2.per_expert())
        .zip(mats.par_iter())
        .try_for_each(|(((q1, s1), (q2, s2)), [gate, up, down])| {
            let (q_gate, q_up) = q1.split_at_mut(half_q);
            let (s_gate, s_up) = s1.split_at_mut(half_s);
            gate.copy_into(pow2, q_gate, s_gate)?;
            up.copy_into(pow2, q_up, s_up)?;
            down.copy_into(pow2, q2, s2)
        })
}

/// Loads layer `layer` (see [`super::Checkpoint::load_layer`]).
pub(super) fn load(shards: &Shards, cfg: &ModelConfig, layer: usize, opts: &LoadOptions) -> Result<LayerWeights, EngineError> {
    if layer >= cfg.num_hidden_layers {
        return Err(CheckpointError::LayerOutOfRange {
            layer,
            layers: cfg.num_hidden_layers,
        }
        .into());
    }
    if let Some(reason) = cfg.dense_reason(layer) {
        return Err(CheckpointError::NotMoeLayer { layer, reason }.into());
    }
    let (eg, k, i) = (cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size);
    let experts = opts.experts.clone().unwrap_or(0..eg);
    if experts.start >= experts.end || experts.end > eg {
        return Err(CheckpointError::ExpertRange {
            start: experts.start,
            end: experts.end,
            experts: eg,
        }
        .into());
    }
    let p = format!("model.layers.{layer}.mlp");
    let gate = widened(&read(
        shards,
        &format!("{p}.gate.weight"),
        &[Dtype::BF16, Dtype::F32],
        &[eg, k],
        "(Eg, K)",
    )?);
    let bias = if cfg.has_bias {
        let name = format!("{p}.gate.e_score_correction_bias");
        Some(decode_f32(read(shards, &name, &[Dtype::F32], &[eg], "(Eg)")?.bytes))
    } else {
        None
    };
    // Every tensor is found and checked first, in order, so that the first bad one is reported
    // whatever the thread count; then the bytes are copied (or quantized) in parallel.
    let mats = experts
        .clone()
        .map(|e| mlp(shards, &format!("{p}.experts.{e}"), k, i, "I"))
        .collect::<Result<Vec<_>, _>>()?;
    let shared_mats = match cfg.shared_intermediate_size() {
        0 => None,
        is => Some(mlp(shards, &format!("{p}.shared_experts"), k, is, "I_s")?),
    };
    let n = experts.len();
    let (mut w1, mut w2) = (QuantWeights::zeroed("w1", n, 2 * i, k)?, QuantWeights::zeroed("w2", n, k, i)?);
    fill(&mats, opts.pow2_scales, &mut w1, &mut w2)?;
    let shared = match shared_mats {
        None => None,
        Some(m) => {
            let is = cfg.shared_intermediate_size();
            let (mut s1, mut s2) = (
                QuantWeights::zeroed("shared w1", 1, 2 * is, k)?,
                QuantWeights::zeroed("shared w2", 1, k, is)?,
            );
            fill(std::slice::from_ref(&m), opts.pow2_scales, &mut s1, &mut s2)?;
            Some(SharedWeights { w1: s1, w2: s2 })
        }
    };
    Ok(LayerWeights {
        layer,
        gate,
        bias,
        w1,
        w2,
        shared,
    })
}
