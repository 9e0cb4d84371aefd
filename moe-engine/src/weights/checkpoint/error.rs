//! What can be wrong with a checkpoint directory, its config, its index, its shards and tensors.

use crate::weights::safetensors::TensorError;

/// A checkpoint the loader cannot use, or a layer or experts it does not have; each message names
/// the file (by its path) and, where there is one, the tensor or the config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The directory has no `config.json`.
    #[error("checkpoint `{dir}`: no config.json")]
    NoConfig {
        /// The directory.
        dir: String,
    },
    /// The directory has neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("checkpoint `{dir}`: no weights (neither model.safetensors nor model.safetensors.index.json)")]
    NoWeights {
        /// The directory.
        dir: String,
    },
    /// `config.json` or the index is not JSON (or not a JSON object).
    #[error("`{file}`: not a JSON object: {reason}")]
    Json {
        /// The file.
        file: String,
        /// What the parser found.
        reason: String,
    },
    /// A config key the loader needs is absent.
    #[error("`{file}`: key `{key}` is missing")]
    MissingKey {
        /// The config file.
        file: String,
        /// The key.
        key: String,
    },
    /// A config key has the wrong type or a value out of range, or the settings disagree.
    #[error("`{file}`: key `{key}` = {got}: {rule}")]
    BadKey {
        /// The config file.
        file: String,
        /// The key.
        key: String,
        /// Its value, as JSON.
        got: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The index has no `weight_map` object, a non-string entry, or a shard name that is not a
    /// plain file name of the directory.
    #[error("`{file}`: {reason}")]
    BadIndex {
        /// The index file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The index names a shard file that does not exist.
    #[error("`{index}`: shard `{shard}` does not exist")]
    MissingShard {
        /// The index file.
        index: String,
        /// The shard's path.
        shard: String,
    },
    /// A shard's header, or the data the header describes, runs past the end of the file.
    #[error("`{file}`: {reason}")]
    TruncatedShard {
        /// The shard.
        file: String,
        /// What ends too early.
        reason: String,
    },
    /// A shard is not a well-formed safetensors file.
    #[error("`{file}`: not a valid safetensors file: {reason}")]
    MalformedShard {
        /// The shard.
        file: String,
        /// What the parser found.
        reason: String,
    },
    /// A tensor the layer needs is not listed in the index's `weight_map`.
    #[error("tensor `{tensor}`: missing (not in the weight_map of `{index}`)")]
    NotInIndex {
        /// The tensor.
        tensor: String,
        /// The index file.
        index: String,
    },
    /// A tensor is missing from the shard it should be in, or has the wrong dtype or shape.
    #[error("`{file}`: {error}")]
    Tensor {
        /// The shard the tensor is (or should be) in.
        file: String,
        /// What is wrong with it.
        error: TensorError,
    },
    /// A layer index past `num_hidden_layers`.
    #[error("layer {layer}: out of range (num_hidden_layers = {layers})")]
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
        /// `num_hidden_layers`.
        layers: usize,
    },
    /// A layer whose MLP is dense, not a mixture of experts.
    #[error("layer {layer}: not a MoE layer ({reason})")]
    NotMoeLayer {
        /// The layer asked for.
        layer: usize,
        /// The config rule that makes it dense.
        reason: String,
    },
    /// An expert range that is empty or runs past the routed experts.
    #[error("experts {start}..{end}: not a non-empty range within the {experts} routed experts")]
    ExpertRange {
        /// The first expert asked for.
        start: usize,
        /// One past the last.
        end: usize,
        /// The routed experts `Eg`.
        experts: usize,
    },
    /// A synthetic checkpoint's output directory already holds something.
    #[error("output `{dir}` exists and is not an empty directory (refusing to overwrite it)")]
    OutputExists {
        /// The directory.
        dir: String,
    },
}

impl CheckpointError {
    /// The tensor this error is about, if any.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            CheckpointError::Tensor { error, .. } => Some(error.tensor()),
            CheckpointError::NotInIndex { tensor, .. } => Some(tensor),
            _ => None,
        }
    }
}
