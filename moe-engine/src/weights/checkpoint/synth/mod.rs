//! Synthetic Hugging Face checkpoints (`moe synth-checkpoint`): the directory layout, file names,
//! tensor names and `config.json` keys of a real DeepSeek-V3 or Qwen3-MoE checkpoint, with seeded
//! values, so the loader ([`super::Checkpoint`]) and everything above it can be run without
//! downloading a model.
//!
//! Values are deterministic in the seed: each tensor's stream is its name's hash under the seed.
//! With [`Values::Seeded`], expert weights come from the generator of
//! [`crate::weights::synth`] scaled by `1/sqrt(fan_in)` and are, in FP8, block-quantized by
//! SPEC §4 (so a checkpoint's FP8 weights are exactly what the loader would make of its BF16
//! twin); with [`Values::Hashed`] (the full-size layer), FP8 bytes and scales come straight from
//! a counter hash, fast enough for gigabytes. Gates are BF16 of scale `1/sqrt(K)`, the choice
//! bias small F32 values, norms ones.
//!
//! The output is atomic: everything is written into `DIR.tmp-<pid>`, which is renamed to `DIR`
//! at the end (and removed on any error); an existing `DIR` that is not an empty directory is
//! refused with [`CheckpointError::OutputExists`].

use std::path::{Path, PathBuf};

use moe_core::Scoring;

use super::config::ModelConfig;
use super::error::CheckpointError;
use super::shards::INDEX_FILE;
use super::CONFIG_FILE;
use crate::error::{EngineError, InputError};

mod plan;
mod source;
mod writer;

/// The model family whose layout and config keys a synthetic checkpoint copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `deepseek_v3`: `n_routed_experts`, `first_k_dense_replace`, `moe_layer_freq`.
    DeepseekV3,
    /// `qwen3_moe`: `num_experts`, `decoder_sparse_step`, `mlp_only_layers`.
    Qwen3Moe,
}

/// How the weights' values are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// The seeded generator, block-quantized for FP8.
    Seeded,
    /// FP8 bytes and scales from a counter hash (BF16 weights stay seeded).
    Hashed,
}

/// How the tensors are split into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// One `model.safetensors`, no index.
    Single,
    /// About `n` shards of equal size, with the index.
    Count(usize),
    /// Shards of at most this many bytes of data (a larger tensor alone), with the index.
    MaxBytes(u64),
}

/// The weights' dtype on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// F8_E4M3 with F32 `weight_scale_inv` per 128×128 block, and a `quantization_config`.
    Fp8,
    /// BF16, no scales (the loader block-quantizes them).
    Bf16,
}

impl WeightDtype {
    /// Both, as the command line names them.
    pub const ALL: [WeightDtype; 2] = [WeightDtype::Fp8, WeightDtype::Bf16];

    /// `fp8` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Fp8 => "fp8",
            WeightDtype::Bf16 => "bf16",
        }
    }

    /// Parses `fp8` or `bf16`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Everything a synthetic checkpoint is made from. The MoE layers are
/// `first_k_dense_replace..num_hidden_layers`.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Layout and config keys.
    pub family: Family,
    /// `K`.
    pub hidden_size: usize,
    /// `I`.
    pub moe_intermediate_size: usize,
    /// `Eg`.
    pub experts: usize,
    /// `k`.
    pub topk: usize,
    /// Expert groups.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Shared experts (fused into one of intermediate size `shared_experts · I`).
    pub shared_experts: usize,
    /// `routed_scaling_factor`.
    pub routed_scaling_factor: f32,
    /// `scoring_func`.
    pub scoring: Scoring,
    /// `topk_method = noaux_tc`: the gate has `e_score_correction_bias`.
    pub noaux_tc: bool,
    /// `norm_topk_prob`.
    pub norm_topk_prob: bool,
    /// Layers of the model.
    pub num_hidden_layers: usize,
    /// The first layers, dense.
    pub first_k_dense_replace: usize,
    /// The dense layers' MLP intermediate size (`intermediate_size`).
    pub dense_intermediate_size: usize,
    /// Write the tensors the loader ignores (embeddings, norms, `lm_head`, dense MLPs);
    /// without, only the MoE layers are written.
    pub other_tensors: bool,
    /// `vocab_size` (the embeddings' rows).
    pub vocab_size: usize,
    /// How the weights' values are made.
    pub values: Values,
    /// How the tensors are split into files.
    pub sharding: Sharding,
}

/// The presets of `moe synth-checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// A 3-layer DeepSeek-V3 (K 512, I 256, 16 experts in 4 groups, top-2 groups, top-4, one
    /// shared expert, sigmoid, `noaux_tc`, scaling 2.5; layer 0 dense), in two shards, FP8.
    DeepseekV3Mini,
    /// A 2-layer Qwen3-MoE (K 512, I 256, 16 experts, top-4, softmax), one file, BF16.
    Qwen3MoeMini,
    /// One full DeepSeek-V3 MoE layer (layer 3 of 4: K 7168, I 2048, 256 experts, 8 groups,
    /// top-4 groups, top-8, one shared expert), FP8 of hashed values, about 11 GB in shards of
    /// at most 4 GB.
    DeepseekV3Layer,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [Preset::DeepseekV3Mini, Preset::Qwen3MoeMini, Preset::DeepseekV3Layer];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::DeepseekV3Mini => "deepseek-v3-mini",
            Preset::Qwen3MoeMini => "qwen3-moe-mini",
            Preset::DeepseekV3Layer => "deepseek-v3-layer",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The dtype written unless asked otherwise.
    pub fn default_dtype(self) -> WeightDtype {
        match self {
            Preset::Qwen3MoeMini => WeightDtype::Bf16,
            Preset::DeepseekV3Mini | Preset::DeepseekV3Layer => WeightDtype::Fp8,
        }
    }

    /// What the preset writes.
    pub fn spec(self) -> SynthSpec {
        let deepseek = SynthSpec {
            family: Family::DeepseekV3,
            hidden_size: 7168,
            moe_intermediate_size: 2048,
            experts: 256,
            topk: 8,
            n_group: 8,
            topk_group: 4,
            shared_experts: 1,
            routed_scaling_factor: 2.5,
            scoring: Scoring::Sigmoid,
            noaux_tc: true,
            norm_topk_prob: true,
            num_hidden_layers: 4,
            first_k_dense_replace: 3,
            dense_intermediate_size: 18432,
            other_tensors: false,
            vocab_size: 129280,
            values: Values::Hashed,
            sharding: Sharding::MaxBytes(4_000_000_000),
        };
        match self {
            Preset::DeepseekV3Layer => deepseek,
            Preset::DeepseekV3Mini => SynthSpec {
                hidden_size: 512,
                moe_intermediate_size: 256,
                experts: 16,
                topk: 4,
                n_group: 4,
                topk_group: 2,
                num_hidden_layers: 3,
                first_k_dense_replace: 1,
                dense_intermediate_size: 1024,
                other_tensors: true,
                vocab_size: 256,
                values: Values::Seeded,
                sharding: Sharding::Count(2),
                ..deepseek
            },
            Preset::Qwen3MoeMini => SynthSpec {
                family: Family::Qwen3Moe,
                hidden_size: 512,
                moe_intermediate_size: 256,
                experts: 16,
                topk: 4,
                n_group: 1,
                topk_group: 1,
                shared_experts: 0,
                routed_scaling_factor: 1.0,
                scoring: Scoring::Softmax,
                noaux_tc: false,
                norm_topk_prob: true,
                num_hidden_layers: 2,
                first_k_dense_replace: 0,
                dense_intermediate_size: 1024,
                other_tensors: true,
                vocab_size: 256,
                values: Values::Seeded,
                sharding: Sharding::Single,
            },
        }
    }
}

/// Where a synthetic checkpoint's writing stands, after each batch of tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthProgress {
    /// The file being written.
    pub file: String,
    /// Its number, from 1.
    pub shard: usize,
    /// The number of weight files.
    pub shards: usize,
    /// Tensor bytes generated so far, all files together.
    pub bytes_done: u64,
    /// Tensor bytes of the whole checkpoint.
    pub bytes_total: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthReport {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Each file written (`config.json`, the index if any, the weight files) and its size.
    pub files: Vec<(String, u64)>,
    /// The number of tensors.
    pub tensors: usize,
    /// Their bytes, all files together (the index's `total_size`).
    pub tensor_bytes: u64,
}

/// Writes the checkpoint of `spec` with weights in `dtype`, values seeded by `seed`, into the new
/// directory `out` (atomically, see the module docs); `progress` is called after each batch.
///
/// The config is validated as [`super::Checkpoint::open`] validates it before anything is
/// written, so every synthetic checkpoint loads.
pub fn write_checkpoint(
    spec: &SynthSpec,
    dtype: WeightDtype,
    seed: u64,
    out: &Path,
    progress: &(dyn Fn(&SynthProgress) + Sync),
) -> Result<SynthReport, EngineError> {
    let config = serde_json::to_string_pretty(&plan::config(spec, dtype)).expect("a JSON value serializes");
    ModelConfig::from_json(&config, CONFIG_FILE)?;
    let Some(name) = out.file_name() else {
        return Err(InputError::Usage(format!("--out `{}` names no directory", out.display())).into());
    };
    let occupied = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => out.exists(),
    };
    if occupied {
        return Err(CheckpointError::OutputExists {
            dir: out.display().to_string(),
        }
        .into());
    }
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let werr = |p: &Path| {
        let path = p.display().to_string();
        move |source| EngineError::WriteOutput { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(werr(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(werr(&tmp))?;
    let result = write_into(spec, dtype, seed, &config, &tmp, progress)
        .and_then(|report| std::fs::rename(&tmp, out).map(|()| report).map_err(werr(out)));
    match result {
        Ok(mut report) => {
            report.dir = out.to_path_buf();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(
    spec: &SynthSpec,
    dtype: WeightDtype,
    seed: u64,
    config: &str,
    dir: &Path,
    progress: &(dyn Fn(&SynthProgress) + Sync),
) -> Result<SynthReport, EngineError> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|source| EngineError::WriteOutput {
            path: p.display().to_string(),
            source,
        })
    };
    write(CONFIG_FILE, config)?;
    let mut files = vec![(CONFIG_FILE.to_string(), config.len() as u64)];
    let tensors = plan::tensors(spec, dtype, seed);
    let shards = writer::shard(&tensors, spec.sharding);
    let total: u64 = tensors.iter().map(|t| t.bytes()).sum();
    if spec.sharding != Sharding::Single {
        let weight_map: serde_json::Map<String, serde_json::Value> = shards
            .iter()
            .flat_map(|s| s.tensors.iter().map(|t| (t.name.clone(), s.file.clone().into())))
            .collect();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).expect("a JSON value serializes");
        write(INDEX_FILE, &text)?;
        files.push((INDEX_FILE.to_string(), text.len() as u64));
    }
    let mut done = 0;
    for (i, s) in shards.iter().enumerate() {
        let path = dir.join(&s.file);
        writer::write_shard(&path, s, (i + 1, shards.len()), &mut done, total, progress)?;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        files.push((s.file.clone(), len));
    }
    Ok(SynthReport {
        dir: dir.to_path_buf(),
        files,
        tensors: tensors.len(),
        tensor_bytes: total,
    })
}
