//! The command's errors and their exit codes.
//!
//! [`InputError`] is everything wrong with what the user handed over (a file, a tensor, a flag):
//! exit code 2, one line, naming the tensor where there is one. [`CliError`] adds what the user
//! cannot fix by changing the input (the device, writing the output, a failed check): exit code 1.

use moe_core::{DeviceError, MoeError, ProblemError};

/// Exit code of an input or usage error (the same as clap's for a bad command line).
pub const EXIT_INPUT: u8 = 2;
/// Exit code of every other failure: a failed check, a device error, an I/O error on the output.
pub const EXIT_FAILURE: u8 = 1;

/// A mistake in the input: the file, one of its tensors, or a flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The bytes are not a well-formed safetensors file.
    #[error("input is not a valid safetensors file: {reason}")]
    Malformed { reason: String },
    /// A tensor the operation needs is absent.
    #[error("tensor `{tensor}`: missing from the input (op `{op}` needs {needs})")]
    Missing {
        tensor: &'static str,
        op: &'static str,
        needs: &'static str,
    },
    /// A tensor has a dtype the operation does not accept.
    #[error("tensor `{tensor}`: dtype {got}, expected {expected}")]
    Dtype {
        tensor: &'static str,
        got: String,
        expected: String,
    },
    /// A tensor has the wrong number of dimensions.
    #[error("tensor `{tensor}`: shape {got} has rank {rank}, expected rank {expected} {layout}")]
    Rank {
        tensor: &'static str,
        got: String,
        rank: usize,
        expected: usize,
        layout: &'static str,
    },
    /// A tensor's shape disagrees with the shapes of the tensors read before it.
    #[error("tensor `{tensor}`: shape {got}, expected {layout} = {expected}")]
    Shape {
        tensor: &'static str,
        got: String,
        expected: String,
        layout: &'static str,
    },
    /// A problem the validated types of moe-core reject (dimension, alignment, counts, ids).
    #[error(transparent)]
    Problem(#[from] ProblemError),
    /// A flag is missing, out of range or does not apply to the operation.
    #[error("{0}")]
    Usage(String),
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
            InputError::Malformed { .. } | InputError::Usage(_) => None,
        }
    }
}

/// Every failure of the `moe` command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad input or usage (exit code 2).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The input file could not be read (exit code 2).
    #[error("cannot read input `{path}`: {source}")]
    ReadInput { path: String, source: std::io::Error },
    /// The output file could not be written (exit code 1).
    #[error("cannot write output `{path}`: {source}")]
    WriteOutput { path: String, source: std::io::Error },
    /// The requested backend is not compiled into this binary (exit code 2).
    #[error("{0}")]
    BackendUnavailable(String),
    /// The device failed (exit code 1).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// An output buffer could not be allocated (exit code 1).
    #[error("tensor `{tensor}`: cannot allocate {bytes} bytes")]
    Alloc { tensor: &'static str, bytes: u128 },
    /// `moe run`'s check against the naive reference failed (exit code 1).
    #[error("check failed: {0}")]
    CheckFailed(String),
}

impl From<MoeError> for CliError {
    fn from(e: MoeError) -> Self {
        match e {
            MoeError::Problem(p) => CliError::Input(InputError::Problem(p)),
            MoeError::Device(d) => CliError::Device(d),
            // MoeError is non-exhaustive; anything new is treated as a backend failure.
            #[allow(unreachable_patterns)]
            other => CliError::Device(DeviceError::Driver {
                op: "backend",
                detail: other.to_string(),
            }),
        }
    }
}

impl From<ProblemError> for CliError {
    fn from(e: ProblemError) -> Self {
        CliError::Input(InputError::Problem(e))
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) | CliError::ReadInput { .. } | CliError::BackendUnavailable(_) => EXIT_INPUT,
            CliError::WriteOutput { .. } | CliError::Device(_) | CliError::Alloc { .. } | CliError::CheckFailed(_) => EXIT_FAILURE,
        }
    }

    /// The message on one line (compiler logs of device errors keep their lines).
    pub fn one_line(&self) -> String {
        match self {
            CliError::Device(_) => self.to_string(),
            _ => self.to_string().replace(['\n', '\r'], " "),
        }
    }
}

/// A zero-filled vector of `n` elements, or [`CliError::Alloc`] naming `tensor` if the memory
/// is not available (sizes come from input files, so they are not trusted to fit).
pub fn try_filled<T: Clone>(tensor: &'static str, n: usize, value: T) -> Result<Vec<T>, CliError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| CliError::Alloc {
        tensor,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    })?;
    v.resize(n, value);
    Ok(v)
}

/// Checks that `n` elements of `T` can be allocated (reserving and releasing the memory without
/// touching it), or [`CliError::Alloc`] naming `tensor`.
pub fn try_reserve<T>(tensor: &'static str, n: usize) -> Result<(), CliError> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| CliError::Alloc {
        tensor,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    })
}
