//! The engine's one error type.
//!
//! [`InputError`] is everything wrong with what the caller handed over (a file, a tensor, an
//! option), naming the tensor where there is one. [`EngineError`] wraps it together with
//! moe-core's [`MoeError`] and what the caller cannot fix by changing the input (the device,
//! writing an output, a failed check). [`EngineError::is_input`] says which side is at fault;
//! front ends map that to their own codes (the `moe` binary: 2 for input, 1 otherwise).

use moe_core::{DeviceError, MoeError, ProblemError};

use crate::weights::checkpoint::CheckpointError;

/// A mistake in the input: the file, one of its tensors, or a flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The bytes are not a well-formed safetensors file.
    #[error("input is not a valid safetensors file: {reason}")]
    Malformed {
        /// What the parser found wrong.
        reason: String,
    },
    /// A tensor the operation needs is absent.
    #[error("tensor `{tensor}`: missing from the input (op `{op}` needs {needs})")]
    Missing {
        /// The tensor at fault.
        tensor: &'static str,
        /// The operation that needs it.
        op: &'static str,
        /// The symbolic shape it must have.
        needs: &'static str,
    },
    /// A tensor has a dtype the operation does not accept.
    #[error("tensor `{tensor}`: dtype {got}, expected {expected}")]
    Dtype {
        /// The tensor at fault.
        tensor: &'static str,
        /// What the input has.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// A tensor has the wrong number of dimensions.
    #[error("tensor `{tensor}`: shape {got} has rank {rank}, expected rank {expected} {layout}")]
    Rank {
        /// The tensor at fault.
        tensor: &'static str,
        /// What the input has.
        got: String,
        /// The tensor's rank.
        rank: usize,
        /// What was expected.
        expected: usize,
        /// The symbolic layout, e.g. `(E, T, K)`.
        layout: &'static str,
    },
    /// A tensor's shape disagrees with the shapes of the tensors read before it.
    #[error("tensor `{tensor}`: shape {got}, expected {layout} = {expected}")]
    Shape {
        /// The tensor at fault.
        tensor: &'static str,
        /// What the input has.
        got: String,
        /// What was expected.
        expected: String,
        /// The symbolic layout, e.g. `(E, T, K)`.
        layout: &'static str,
    },
    /// A problem the validated types of moe-core reject (dimension, alignment, counts, ids).
    #[error(transparent)]
    Problem(#[from] ProblemError),
    /// A flag is missing, out of range or does not apply to the operation.
    #[error("{0}")]
    Usage(String),
    /// A Hugging Face checkpoint that cannot be loaded (its config, index, shards or tensors),
    /// or a layer or experts it does not have.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl InputError {
    /// The tensor this error is about, if any.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            InputError::Missing { tensor, .. }
            | InputError::Dtype { tensor, .. }
            | InputError::Rank { tensor, .. }
            | InputError::Shape { tensor, .. } => Some(tensor),
            InputError::Problem(p) => Some(p.tensor()).filter(|t| !t.is_empty()),
            InputError::Checkpoint(c) => c.tensor(),
            InputError::Malformed { .. } | InputError::Usage(_) => None,
        }
    }
}

/// Every failure of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bad input or usage.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The input file could not be read.
    #[error("cannot read input `{path}`: {source}")]
    ReadInput {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output file could not be written.
    #[error("cannot write output `{path}`: {source}")]
    WriteOutput {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The requested backend is not compiled into this build.
    #[error("{0}")]
    BackendUnavailable(String),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// An output buffer could not be allocated.
    #[error("tensor `{tensor}`: cannot allocate {bytes} bytes")]
    Alloc {
        /// The tensor.
        tensor: &'static str,
        /// The size asked for.
        bytes: u128,
    },
    /// A check against the naive reference failed (`moe run`).
    #[error("check failed: {0}")]
    CheckFailed(String),
}

impl From<MoeError> for EngineError {
    fn from(e: MoeError) -> Self {
        match e {
            MoeError::Problem(p) => EngineError::Input(InputError::Problem(p)),
            MoeError::Device(d) => EngineError::Device(d),
            // MoeError is non-exhaustive; anything new is treated as a backend failure.
            #[allow(unreachable_patterns)]
            other => EngineError::Device(DeviceError::Driver {
                op: "backend",
                detail: other.to_string(),
            }),
        }
    }
}

impl From<CheckpointError> for EngineError {
    fn from(e: CheckpointError) -> Self {
        EngineError::Input(InputError::Checkpoint(e))
    }
}

impl From<ProblemError> for EngineError {
    fn from(e: ProblemError) -> Self {
        EngineError::Input(InputError::Problem(e))
    }
}

impl EngineError {
    /// Whether the caller's input (a file, a tensor, an option, a backend not compiled in) is at
    /// fault, as opposed to the device, the output's file system or a failed check.
    pub fn is_input(&self) -> bool {
        match self {
            EngineError::Input(_) | EngineError::ReadInput { .. } | EngineError::BackendUnavailable(_) => true,
            EngineError::WriteOutput { .. } | EngineError::Device(_) | EngineError::Alloc { .. } | EngineError::CheckFailed(_) => false,
        }
    }

    /// The message on one line (compiler logs of device errors keep their lines).
    pub fn one_line(&self) -> String {
        match self {
            EngineError::Device(_) => self.to_string(),
            _ => self.to_string().replace(['\n', '\r'], " "),
        }
    }
}

/// A zero-filled vector of `n` elements, or [`EngineError::Alloc`] naming `tensor` if the memory
/// is not available (sizes come from input files, so they are not trusted to fit).
pub fn try_filled<T: Clone>(tensor: &'static str, n: usize, value: T) -> Result<Vec<T>, EngineError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| EngineError::Alloc {
        tensor,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    })?;
    v.resize(n, value);
    Ok(v)
}

/// Checks that `n` elements of `T` can be allocated (reserving and releasing the memory without
/// touching it), or [`EngineError::Alloc`] naming `tensor`.
pub fn try_reserve<T>(tensor: &'static str, n: usize) -> Result<(), EngineError> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| EngineError::Alloc {
        tensor,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    })
}
