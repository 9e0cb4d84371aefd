//! Hugging Face MoE checkpoints (SPEC §4.1): `config.json` and `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`, loaded one MoE layer at a time.
//!
//! [`Checkpoint::open`] reads the config and the index and checks that every shard exists, but
//! maps nothing; [`Checkpoint::load_layer`] maps the shards it needs (once: each file's header is
//! parsed on first use and kept) and reads only the tensors of that layer and of the experts
//! asked for, so loading one layer of a 700 GB model touches a few GB of pages. Expert weights
//! are F8_E4M3 with their 128×128 block scales (copied as they are), or BF16 (block-quantized at
//! load by SPEC §4 on the CPU backend, in parallel). Tensors of anything else (attention, norms,
//! embeddings, dense MLPs) are never looked at.
//!
//! Every problem is an [`InputError::Checkpoint`](crate::InputError::Checkpoint) that names the
//! file and, where there is one, the tensor or the config key ([`CheckpointError`]); an
//! unreadable file is an [`EngineError::ReadInput`] naming it; no input makes the loader panic.
//!
//! [`synth`] writes synthetic checkpoints of the same layout (`moe synth-checkpoint`).
//!
//! # Example
//!
//! Write the small Qwen3-MoE-shaped checkpoint (BF16), then load its first layer, quantized at
//! load time:
//!
//! ```
//! use moe_engine::weights::checkpoint::{synth, Checkpoint, LoadOptions};
//!
//! # fn main() -> Result<(), moe_engine::EngineError> {
//! let dir = std::env::temp_dir().join(format!("moe-doc-ckpt-{}", std::process::id()));
//! let preset = synth::Preset::Qwen3MoeMini;
//! synth::write_checkpoint(&preset.spec(), preset.default_dtype(), 7, &dir, &|_| {})?;
//!
//! let ckpt = Checkpoint::open(&dir)?;
//! let cfg = ckpt.config();
//! assert!(cfg.is_moe_layer(0));
//! let layer = ckpt.load_layer(0, &LoadOptions { pow2_scales: true, experts: Some(4..8) })?;
//! assert_eq!((layer.w1.experts, layer.w1.rows, layer.w1.cols), (4, 2 * cfg.moe_intermediate_size, cfg.hidden_size));
//! assert_eq!(layer.gate.len(), cfg.n_routed_experts * cfg.hidden_size);
//! assert!(layer.bias.is_none() && layer.shared.is_none());
//! let router = cfg.router(); // the settings of `moe_core::Route`
//! assert_eq!(router.topk, cfg.num_experts_per_tok);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

mod config;
mod error;
mod layer;
mod shards;
pub mod synth;
mod tensors;

pub use config::ModelConfig;
pub use error::CheckpointError;
pub use layer::{LayerWeights, QuantWeights, SharedWeights};

use crate::error::EngineError;
use shards::Shards;

/// The config's file name.
pub const CONFIG_FILE: &str = "config.json";

/// What [`Checkpoint::load_layer`] loads.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Ceil the scales of BF16 experts quantized at load time to powers of two (for the ceil
    /// scale formats, as UE8M0 weights); FP8 experts keep the scales of the file.
    pub pow2_scales: bool,
    /// The routed experts to load (expert parallelism: this rank's experts); `None`: all `Eg`.
    /// The gate, its bias and the shared expert are always loaded whole.
    pub experts: Option<Range<usize>>,
}

/// An opened Hugging Face checkpoint directory: its validated [`ModelConfig`] and where each
/// tensor lives. Shards are memory-mapped when a layer first needs them; the checkpoint can be
/// shared between threads that load layers concurrently.
///
/// The files must not be modified while the checkpoint is open (see [`crate::weights::MappedFile::open`]).
pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    shards: Shards,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("files", &self.shards.paths().count())
            .finish()
    }
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: reads and validates `config.json`, reads the index (or
    /// finds `model.safetensors`) and checks that every shard it names exists. No weight file
    /// is opened yet.
    pub fn open(dir: &Path) -> Result<Checkpoint, EngineError> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(CheckpointError::NoConfig {
                dir: dir.display().to_string(),
            }
            .into());
        }
        let file = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| EngineError::ReadInput {
            path: file.clone(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| CheckpointError::Json {
            file: file.clone(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let config = ModelConfig::from_json(text, &file)?;
        let shards = Shards::find(dir)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
        })
    }

    /// The model's settings.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The directory it was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files: `model.safetensors`, or the shards the index names.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.paths().collect()
    }

    /// The MoE layers, in order (lazily: `num_hidden_layers` comes from the file).
    pub fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.config.num_hidden_layers).filter(|&l| self.config.is_moe_layer(l))
    }

    /// Loads MoE layer `layer`: the gate (and its bias), the routed experts of `opts.experts`
    /// and the shared expert, checking every tensor's dtype and shape.
    ///
    /// A layer past `num_hidden_layers` or a dense one, an empty expert range or one past `Eg`,
    /// a shard that is truncated or malformed, and a tensor that is missing or has the wrong
    /// dtype or shape are [`CheckpointError`]s naming the layer, the file and the tensor.
    pub fn load_layer(&self, layer: usize, opts: &LoadOptions) -> Result<LayerWeights, EngineError> {
        layer::load(&self.shards, &self.config, layer, opts)
    }
}
