//! Hints and metadata (SPEC §6), mirroring vLLM's modular-kernel interface.

use crate::error::ProblemError;

/// `clamp(round_up(total_tokens·topk / global_experts, 16), 16, T)`, raised to at least
/// `round_up(max(counts), 16)` (capped at `T`) when the live counts are known.
///
/// A performance hint only: no result depends on it.
pub fn estimate_expected_m(total_tokens: usize, topk: usize, global_experts: usize, capacity: usize, counts: Option<&[i32]>) -> usize {
    let round16 = |v: usize| v.div_ceil(16).saturating_mul(16);
    let per_expert = total_tokens.saturating_mul(topk) / global_experts.max(1);
    let mut m = round16(per_expert).max(16).min(capacity.max(1));
    if let Some(c) = counts {
        let max = c.iter().map(|&v| v.max(0) as usize).max().unwrap_or(0);
        m = m.max(round16(max).min(capacity.max(1)));
    }
    m
}

/// vLLM's `moe_problem_size` for the batched-experts activation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeProblemSize {
    /// Local experts.
    pub e: usize,
    /// Rows per expert (`T`).
    pub m: usize,
    /// `w1`'s output rows (`2I`).
    pub n: usize,
    /// Hidden size.
    pub k: usize,
    /// Experts per token.
    pub topk: usize,
}

/// Derives `(E, M, N, K, topk)` from the shapes of `a1 (E, T, K)`, `w1 (E, 2I, K)`,
/// `w2 (E, K, I)` and `topk_ids (M, topk)`, checking that they agree.
///
/// Any dimension may be as large as `usize::MAX`: disagreement is always an error, never an
/// overflow.
pub fn moe_problem_size(a1: &[usize], w1: &[usize], w2: &[usize], topk_ids: &[usize]) -> Result<MoeProblemSize, ProblemError> {
    fn rank(tensor: &'static str, s: &[usize], r: usize) -> Result<(), ProblemError> {
        if s.len() != r {
            return Err(ProblemError::Dim {
                tensor,
                dim: "rank",
                expected: r,
                got: s.len(),
            });
        }
        Ok(())
    }
    fn eq(tensor: &'static str, dim: &'static str, got: usize, expected: usize) -> Result<(), ProblemError> {
        if got != expected {
            return Err(ProblemError::Dim {
                tensor,
                dim,
                expected,
                got,
            });
        }
        Ok(())
    }
    rank("a1", a1, 3)?;
    rank("w1", w1, 3)?;
    rank("w2", w2, 3)?;
    rank("topk_ids", topk_ids, 2)?;
    let (e, m, k) = (a1[0], a1[1], a1[2]);
    eq("w1", "E", w1[0], e)?;
    eq("w1", "K", w1[2], k)?;
    eq("w2", "E", w2[0], e)?;
    eq("w2", "K", w2[1], k)?;
    // `w1` holds `2I` rows; compare `I` by halving (no multiplication that could overflow).
    let n = w1[1];
    if n % 2 != 0 {
        return Err(ProblemError::NotMultiple {
            tensor: "w1",
            dim: "2I",
            got: n,
            multiple: 2,
        });
    }
    eq("w2", "I", w2[2], n / 2)?;
    Ok(MoeProblemSize {
        e,
        m,
        n,
        k,
        topk: topk_ids[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_m_rounds_and_clamps() {
        assert_eq!(estimate_expected_m(1, 8, 256, 128, None), 16);
        assert_eq!(estimate_expected_m(1000, 8, 256, 128, None), 32);
        assert_eq!(estimate_expected_m(100_000, 8, 256, 128, None), 128);
        assert_eq!(estimate_expected_m(1, 8, 256, 128, Some(&[3, 40])), 48);
        assert_eq!(estimate_expected_m(1, 8, 256, 40, Some(&[3, 40])), 40);
        assert_eq!(estimate_expected_m(1, 8, 256, 8, None), 8);
    }

    #[test]
    fn problem_size_checks_agreement() {
        let s = moe_problem_size(&[8, 64, 7168], &[8, 4096, 7168], &[8, 7168, 2048], &[100, 8]).unwrap();
        assert_eq!(
            s,
            MoeProblemSize {
                e: 8,
                m: 64,
                n: 4096,
                k: 7168,
                topk: 8
            }
        );
        let e = moe_problem_size(&[8, 64, 7168], &[8, 4096, 7168], &[8, 7168, 1024], &[100, 8]).unwrap_err();
        assert_eq!(
            e,
            ProblemError::Dim {
                tensor: "w2",
                dim: "I",
                expected: 2048,
                got: 1024
            }
        );
    }

    #[test]
    fn problem_size_with_huge_w2_is_an_error_not_an_overflow() {
        // `2 · usize::MAX` wraps to `usize::MAX - 1`: it must not match w1's rows (nor panic).
        let e = moe_problem_size(&[8, 64, 7168], &[8, usize::MAX - 1, 7168], &[8, 7168, usize::MAX], &[100, 8]).unwrap_err();
        assert_eq!(
            e,
            ProblemError::Dim {
                tensor: "w2",
                dim: "I",
                expected: usize::MAX / 2,
                got: usize::MAX
            }
        );
        let e = moe_problem_size(&[8, 64, 7168], &[8, 4095, 7168], &[8, 7168, 2048], &[100, 8]).unwrap_err();
        assert!(
            matches!(
                e,
                ProblemError::NotMultiple {
                    tensor: "w1",
                    dim: "2I",
                    ..
                }
            ),
            "{e}"
        );
    }
}
