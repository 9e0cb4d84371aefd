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
        /// The tensor.
        tensor: &'static str,
        /// The dimension's name (`E`, `T`, `K`, `rank`, ...).
        dim: &'static str,
        /// The size the problem needs.
        expected: usize,
        /// The size given.
        got: usize,
    },
    /// A dimension must be a multiple of some block size (128 for `K`, `I`, `H`, `N`).
    #[error("tensor `{tensor}`: dimension `{dim}` = {got} is not a multiple of {multiple}")]
    NotMultiple {
        /// The tensor.
        tensor: &'static str,
        /// The dimension's name.
        dim: &'static str,
        /// The size given.
        got: usize,
        /// The block size it must be a multiple of.
        multiple: usize,
    },
    /// A dimension must be at least some value (e.g. `T >= 1`).
    #[error("tensor `{tensor}`: dimension `{dim}` = {got} is below the minimum {min}")]
    TooSmall {
        /// The tensor.
        tensor: &'static str,
        /// The dimension's name.
        dim: &'static str,
        /// The size given.
        got: usize,
        /// The smallest size allowed.
        min: usize,
    },
    /// The total element count overflows `usize`, or exceeds what a backend can address.
    #[error("tensor `{tensor}`: {elements} elements is too large")]
    TooLarge {
        /// The tensor.
        tensor: &'static str,
        /// Its element count (the exact product of its dimensions).
        elements: u128,
    },
    /// A buffer has the wrong number of elements for the problem's shape.
    #[error("tensor `{tensor}`: buffer holds {got} elements, the shape {shape} needs {expected}")]
    Len {
        /// The tensor.
        tensor: &'static str,
        /// The shape it should have, written `(a, b, c)`.
        shape: String,
        /// The element count of that shape.
        expected: usize,
        /// The buffer's element count.
        got: usize,
    },
    /// A scale buffer is in the wrong format (f32 where packed i32 was expected, or the reverse).
    #[error("tensor `{tensor}`: scales are {got}, this problem expects {expected}")]
    ScaleKind {
        /// The scale tensor.
        tensor: &'static str,
        /// The storage the problem's scale format needs.
        expected: &'static str,
        /// The storage given.
        got: &'static str,
    },
    /// `counts[expert]` is outside `[0, T]`.
    #[error("tensor `counts`: counts[{expert}] = {count} is outside [0, {capacity}]")]
    Count {
        /// The expert.
        expert: usize,
        /// Its count.
        count: i64,
        /// The capacity `T`.
        capacity: usize,
    },
    /// A `topk_ids` entry is outside `[-1, E)`.
    #[error("tensor `topk_ids`: topk_ids[{token}, {slot}] = {id} is outside [-1, {experts})")]
    TopkId {
        /// The token (row of `topk_ids`).
        token: usize,
        /// The slot (column of `topk_ids`).
        slot: usize,
        /// The id found there.
        id: i64,
        /// The number of experts `E`.
        experts: usize,
    },
    /// More tokens were routed to one expert than its capacity `T` (prepare never drops tokens).
    #[error("tensor `topk_ids`: expert {expert} receives {count} tokens, more than the capacity T = {capacity}")]
    Overflow {
        /// The first expert, in token order, to receive more than `T` tokens.
        expert: usize,
        /// How many tokens list it in all.
        count: usize,
        /// The capacity `T`.
        capacity: usize,
    },
    /// A router setting (SPEC §5.6: `topk`, `n_group`, `topk_group`,
    /// `routed_scaling_factor`) breaks its rule.
    #[error("router setting `{setting}` = {got}: {rule}")]
    RouterSetting {
        /// The setting, by its name in the checkpoint's config (SPEC §4.1).
        setting: &'static str,
        /// Its value.
        got: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A gate logit is NaN, which the router cannot rank (SPEC §5.6): the first one in
    /// (token, expert) order.
    #[error("tensor `logits`: token {token} has a NaN logit (expert {expert})")]
    NanLogit {
        /// The token (row of `logits`).
        token: usize,
        /// The expert (column of `logits`).
        expert: usize,
    },
    /// The requested combination is not supported by this operation or backend.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported.
        what: String,
    },
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
            ProblemError::NanLogit { .. } => "logits",
            ProblemError::RouterSetting { .. } | ProblemError::Unsupported { .. } => "",
        }
    }
}

/// A failure the caller could not have foreseen: the device, the driver, memory, compilation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No driver library, or no device of the required kind.
    #[error("no usable device: {reason}")]
    NoDevice {
        /// Why no device could be used.
        reason: String,
    },
    /// The device ran out of memory while running `op`.
    #[error("{op}: out of device memory ({detail})")]
    OutOfMemory {
        /// The operation that ran out of memory.
        op: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// A driver call failed while running `op`.
    #[error("{op}: driver error: {detail}")]
    Driver {
        /// The operation the call belonged to.
        op: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// A kernel failed to compile; `log` is the compiler's log.
    #[error("kernel `{kernel}` failed to compile:\n{log}")]
    Compile {
        /// The kernel's name.
        kernel: String,
        /// The compiler's log.
        log: String,
    },
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
