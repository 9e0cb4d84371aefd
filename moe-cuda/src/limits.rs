//! The dimensions the kernels can index, checked on the host before anything is allocated.

use moe_core::ProblemError;

/// Rejects dimensions the kernels cannot index with 32-bit integers (`E·T` rows, `K`, `N`...).
pub(crate) fn int_dims(what: &'static str, dims: &[usize]) -> Result<(), ProblemError> {
    for &d in dims {
        if d > i32::MAX as usize {
            return Err(ProblemError::Unsupported {
                what: format!("moe-cuda: `{what}` dimension {d} exceeds 2^31 - 1"),
            });
        }
    }
    Ok(())
}
