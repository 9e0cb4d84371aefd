//! The shape and buffer checks every problem type shares.

use crate::error::{ProblemError, ShapeDisplay};
use crate::scale::GROUP;

pub(super) type Result<T> = std::result::Result<T, ProblemError>;

pub(super) fn product(tensor: &'static str, dims: &[usize]) -> Result<usize> {
    let mut n: u128 = 1;
    for &d in dims {
        n = n.saturating_mul(d as u128);
    }
    // Keep every element count addressable by an i32-free 64-bit index and by `isize`.
    if n > (isize::MAX as u128) / 8 {
        return Err(ProblemError::TooLarge { tensor, elements: n });
    }
    Ok(n as usize)
}

pub(super) fn multiple_of_128(tensor: &'static str, dim: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(ProblemError::TooSmall {
            tensor,
            dim,
            got: 0,
            min: GROUP,
        });
    }
    if v % GROUP != 0 {
        return Err(ProblemError::NotMultiple {
            tensor,
            dim,
            got: v,
            multiple: GROUP,
        });
    }
    Ok(())
}

pub(super) fn at_least(tensor: &'static str, dim: &'static str, v: usize, min: usize) -> Result<()> {
    if v < min {
        return Err(ProblemError::TooSmall { tensor, dim, got: v, min });
    }
    Ok(())
}

/// Checks that a buffer holds exactly the elements of `shape`.
pub fn check_len(tensor: &'static str, got: usize, shape: &[usize]) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
    if got != expected {
        return Err(ProblemError::Len {
            tensor,
            shape: ShapeDisplay(shape).to_string(),
            expected,
            got,
        });
    }
    Ok(())
}

/// Checks `counts`: `E` entries, each in `[0, T]` (SPEC §1).
pub fn check_counts(counts: &[i32], experts: usize, capacity: usize) -> Result<()> {
    check_len("counts", counts.len(), &[experts])?;
    for (expert, &c) in counts.iter().enumerate() {
        if c < 0 || c as usize > capacity {
            return Err(ProblemError::Count {
                expert,
                count: c as i64,
                capacity,
            });
        }
    }
    Ok(())
}

/// Clamps a device-style count into `[0, T]`, as the unchecked GPU mode does (SPEC §7).
#[inline]
pub fn clamp_count(c: i32, capacity: usize) -> usize {
    (c.max(0) as usize).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::TokenGroupQuant;
    use crate::scale::{ScaleFormat, ScaleLayout};

    #[test]
    fn k_not_multiple_of_128_names_tensor_and_dim() {
        let e = TokenGroupQuant::new(4, 130, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap_err();
        assert_eq!(
            e,
            ProblemError::NotMultiple {
                tensor: "x",
                dim: "K",
                got: 130,
                multiple: 128
            }
        );
        assert!(e.to_string().contains("`x`") && e.to_string().contains("`K`"));
    }

    #[test]
    fn counts_outside_range_are_rejected() {
        assert_eq!(
            check_counts(&[0, 5, 3], 3, 4),
            Err(ProblemError::Count {
                expert: 1,
                count: 5,
                capacity: 4
            })
        );
        assert_eq!(
            check_counts(&[-1], 1, 4),
            Err(ProblemError::Count {
                expert: 0,
                count: -1,
                capacity: 4
            })
        );
        assert!(matches!(
            check_counts(&[0, 1], 3, 4),
            Err(ProblemError::Len { tensor: "counts", .. })
        ));
        assert!(check_counts(&[0, 4, 2], 3, 4).is_ok());
    }
}
