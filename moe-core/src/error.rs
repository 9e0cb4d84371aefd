//! Typed errors (SPEC §7), split by who can act on them.
//!
//! [`ProblemError`] is the caller's mistake: a bad shape, length, alignment, count or id. It
//! names the tensor and the offending dimension. [`DeviceError`] is what the caller cannot
//! foresee: no device, out of memory, a driver failure, a kernel that failed to compile.
//! [`MoeError`] is what every backend entry point returns.

use std::fmt;

/// A mistake in the caller's input. Every variant names the tensor it is about, using the
/// tensor names of SPEC §8 (`x`, `q`, `s`, `a`, `sa`, `b`, `sb`, `d`, `counts`, `topk_ids`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemError {
    /// A dimension has the wrong size.
    #[error("tensor `{tensor}`: dimension `{dim}` is {got}, expected {expected}")]
    Dim {
        tensor: &'static str,
        dim: &'static str,
        expected: usize,
        got: usize,
    },
    /// A dimension must be a multiple of some block size (128 for `K`, `I`, `H`, `N`).
    #[error("tensor `{tensor}`: dimension `{dim}` = {got} is not a multiple of {multiple}")]
    NotMultiple {
        tensor: &'static str,
        dim: &'static str,
        got: usize,
        multiple: usize,
    },
    /// A dimension must be at least some value (e.g. `T >= 1`).
    #[error("tensor `{tensor}`: dimension `{dim}` = {got} is below the minimum {min}")]
    TooSmall {
        tensor: &'static str,
        dim: &'static str,
        got: usize,
        min: usize,
    },
    /// The total element count overflows `usize`, or exceeds what a backend can address.
    #[error("tensor `{tensor}`: {elements} elements is too large")]
    TooLarge { tensor: &'static str, elements: u128 },
    /// A buffer has the wrong number of elements for the problem's shape.
    #[error("tensor `{tensor}`: buffer holds {got} elements, the shape {shape} needs {expected}")]
    Len {
        tensor: &'static str,
        shape: String,
        expected: usize,
        got: usize,
    },
    /// A scale buffer is in the wrong format (f32 where packed i32 was expected, or the reverse).
    #[error("tensor `{tensor}`: scales are {got}, this problem expects {expected}")]
    ScaleKind {
        tensor: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    /// `counts[expert]` is outside `[0, T]`.
    #[error("tensor `counts`: counts[{expert}] = {count} is outside [0, {capacity}]")]
    Count { expert: usize, count: i64, capacity: usize },
    /// A `topk_ids` entry is outside `[-1, E)`.
    #[error("tensor `topk_ids`: topk_ids[{token}, {slot}] = {id} is outside [-1, {experts})")]
    TopkId {
        token: usize,
        slot: usize,
        id: i64,
        experts: usize,
    },
    /// More tokens were routed to one expert than its capacity `T` (prepare never drops tokens).
    #[error("tensor `topk_ids`: expert {expert} receives {count} tokens, more than the capacity T = {capacity}")]
    Overflow { expert: usize, count: usize, capacity: usize },
    /// The requested combination is not supported by this operation or backend.
    #[error("unsupported: {what}")]
    Unsupported { what: String },
}

impl ProblemError {
    /// The tensor this error is about.
    pub fn tensor(&self) -> &str {
        match self {
            ProblemError::Dim { tensor, .. }
            | ProblemError::NotMultiple { tensor, .. }
            | ProblemError::TooSmall { tensor, .. }
            | ProblemError::TooLarge { tensor, .. }
            | ProblemError::Len { tensor, .. }
            | ProblemError::ScaleKind { tensor, .. } => tensor,
            ProblemError::Count { .. } => "counts",
            ProblemError::TopkId { .. } | ProblemError::Overflow { .. } => "topk_ids",
            ProblemError::Unsupported { .. } => "",
        }
    }
}

/// A failure the caller could not have foreseen: the device, the driver, memory, compilation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No driver library, or no device of the required kind.
    #[error("no usable device: {reason}")]
    NoDevice { reason: String },
    /// The device ran out of memory while running `op`.
    #[error("{op}: out of device memory ({detail})")]
    OutOfMemory { op: &'static str, detail: String },
    /// A driver call failed while running `op`.
    #[error("{op}: driver error: {detail}")]
    Driver { op: &'static str, detail: String },
    /// A kernel failed to compile; `log` is the compiler's log.
    #[error("kernel `{kernel}` failed to compile:\n{log}")]
    Compile { kernel: String, log: String },
}

/// The error of every backend entry point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoeError {
    /// The caller's input was invalid; nothing was written.
    #[error(transparent)]
    Problem(#[from] ProblemError),
    /// The backend failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl MoeError {
    /// The input error, if this is one.
    pub fn as_problem(&self) -> Option<&ProblemError> {
        match self {
            MoeError::Problem(p) => Some(p),
            MoeError::Device(_) => None,
        }
    }
}

/// A shape written as `(a, b, c)` for error messages.
#[derive(Debug, Clone, Copy)]
pub struct ShapeDisplay<'a>(pub &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str(")")
    }
}
