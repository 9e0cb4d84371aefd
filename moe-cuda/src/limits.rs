//! The dimensions the kernels can index, checked on the host before anything is allocated.
//!
//! The kernels take every dimension as a 32-bit `int` and keep per-expert row prefixes
//! (`E·T` at most) in `int` arrays; offsets into buffers are 64-bit. Before dividing, some add a
//! rounding slack to an `int` dimension: the counts prefix splits `E` over 1024 threads with
//! `(E + 1023) / 1024`, the GEMM rounds rows up to 64-row tiles, block quantization rounds `R`
//! and `C` up to 128. So every dimension and every `E·T` must stay at most [`MAX_DIM`] =
//! `2^31 - 1024`, which leaves room for the largest slack: past it an `int` would wrap, no
//! block would run, and a call would return `Ok` with nothing computed. Each function here is
//! pure (no device), one per kernel family, and names the tensor and the dimension it rejects.

use moe_core::ProblemError;

/// The largest dimension (or `E·T` row count) the kernels index: `2^31 - 1024`.
pub(crate) const MAX_DIM: usize = (1 << 31) - 1024;

/// The most experts `Eg` the router kernel takes: one warp keeps a token's `Eg` choice scores and
/// up to `Eg` group scores in shared memory, 32 KiB at this size.
pub(crate) const ROUTE_MAX_EXPERTS: usize = 4096;

/// Rejects the first `(name, value)` of `dims` above [`MAX_DIM`].
fn check(tensor: &'static str, dims: &[(&'static str, usize)]) -> Result<(), ProblemError> {
    match dims.iter().find(|&&(_, v)| v > MAX_DIM) {
        None => Ok(()),
        Some(&(dim, v)) => Err(ProblemError::Unsupported {
            what: format!(
                "moe-cuda: tensor `{tensor}`: dimension `{dim}` = {v} exceeds {MAX_DIM}, the largest the kernels index with 32-bit integers"
            ),
        }),
    }
}

/// `E·T`, saturating (the problem types already bound `E·T·K` by `usize`).
fn rows(e: usize, t: usize) -> usize {
    e.saturating_mul(t)
}

/// Token-group quantization of `x (rows, K)`.
pub(crate) fn token_group_quant(n_rows: usize, k: usize) -> Result<(), ProblemError> {
    check("x", &[("rows", n_rows), ("K", k)])
}

/// Batched token-group quantization of `x (E, T, K)`.
pub(crate) fn batched_quant(e: usize, t: usize, k: usize) -> Result<(), ProblemError> {
    check("x", &[("E", e), ("T", t), ("E·T", rows(e, t)), ("K", k)])
}

/// Block quantization of `w (E, R, C)`.
pub(crate) fn block_quant(e: usize, r: usize, c: usize) -> Result<(), ProblemError> {
    check("w", &[("E", e), ("R", r), ("C", c)])
}

/// SiLU-mul-quant of `y (E, T, 2H)`.
pub(crate) fn silu_mul_quant(e: usize, t: usize, h: usize) -> Result<(), ProblemError> {
    check("y", &[("E", e), ("T", t), ("E·T", rows(e, t)), ("2H", h.saturating_mul(2))])
}

/// The grouped GEMM of `a (E, T, K)` and `b (E, N, K)`.
pub(crate) fn grouped_gemm(e: usize, t: usize, n: usize, k: usize) -> Result<(), ProblemError> {
    check("a", &[("E", e), ("T", t), ("E·T", rows(e, t)), ("K", k)])?;
    check("b", &[("N", n)])
}

/// Prepare of `x (M, K)` into `a1q (E, T, K)` (the gather indices are `int` token numbers).
pub(crate) fn prepare(m: usize, k: usize, e: usize, t: usize) -> Result<(), ProblemError> {
    check("x", &[("M", m), ("K", k)])?;
    check("a1q", &[("E", e), ("T", t), ("E·T", rows(e, t))])
}

/// Finalize of `expert_out (E, T, K)` with `topk_ids (M, topk)` (`M` is 64-bit in the kernel).
pub(crate) fn finalize(k: usize, topk: usize, e: usize, t: usize) -> Result<(), ProblemError> {
    check("expert_out", &[("E", e), ("T", t), ("E·T", rows(e, t)), ("K", k)])?;
    check("topk_ids", &[("topk", topk)])
}

/// The gate GEMM `x (M, K) · gate (Eg, K)ᵀ` (`M` is 64-bit in the kernel, `Eg` and `K` ints).
pub(crate) fn gate(eg: usize, k: usize) -> Result<(), ProblemError> {
    check("gate", &[("Eg", eg), ("K", k)])
}

/// The router of `logits (M, Eg)` into `topk_ids (M, k)` (`M` is 64-bit in the kernel; `Eg` is
/// bounded by the shared memory of one warp).
pub(crate) fn route(eg: usize) -> Result<(), ProblemError> {
    if eg > ROUTE_MAX_EXPERTS {
        return Err(ProblemError::Unsupported {
            what: format!(
                "moe-cuda: tensor `logits`: dimension `Eg` = {eg} exceeds {ROUTE_MAX_EXPERTS}, the most experts the router kernel keeps in shared memory"
            ),
        });
    }
    Ok(())
}

/// The experts stage: GEMM1 `(E, T, K) x (E, 2I, K)`, SiLU-mul-quant, GEMM2 `(E, T, I) x (E, K, I)`.
pub(crate) fn experts(e: usize, t: usize, k: usize, i: usize) -> Result<(), ProblemError> {
    grouped_gemm(e, t, i.saturating_mul(2), k)?;
    silu_mul_quant(e, t, i)?;
    grouped_gemm(e, t, k, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dimension an error names, from its message.
    #[track_caller]
    fn rejected(r: Result<(), ProblemError>) -> String {
        match r {
            Err(ProblemError::Unsupported { what }) => what,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn block_quant_rejects_r_and_c_near_2_pow_31_where_r_plus_127_wrapped() {
        // `(R + 127) / 128` in `int` wrapped for these: no block ran and the call returned Ok
        // with an all-zero output. Now they are rejected by name.
        let near = (1usize << 31) - 100;
        assert!(rejected(block_quant(1, near, 128)).contains("tensor `w`: dimension `R` = 2147483548"));
        assert!(rejected(block_quant(1, 128, near)).contains("dimension `C`"));
        assert!(rejected(block_quant(1, i32::MAX as usize, 1)).contains("dimension `R`"));
        assert!(block_quant(1, MAX_DIM, 1).is_ok());
        assert!(block_quant(1, 1, MAX_DIM).is_ok());
        // The slack it keeps covers block quantization's rounding.
        assert!(MAX_DIM + 127 <= i32::MAX as usize);
    }

    #[test]
    fn the_limit_leaves_room_for_every_kernels_slack() {
        // counts.cu: (E + 1023) / 1024; gemm.cu: row tiles of 64; quant.cu: blocks of 128.
        assert!(MAX_DIM + 1023 <= i32::MAX as usize);
        assert_eq!(MAX_DIM, 2_147_482_624);
    }

    #[test]
    fn row_counts_are_bounded_as_a_product() {
        // Each of E and T fits, their product (the int prefix sums) does not.
        let (e, t) = (1 << 16, 1 << 15);
        assert!(rejected(batched_quant(e, t, 128)).contains("dimension `E·T` = 2147483648"));
        assert!(rejected(silu_mul_quant(e, t, 128)).contains("tensor `y`: dimension `E·T`"));
        assert!(rejected(grouped_gemm(e, t, 128, 128)).contains("tensor `a`: dimension `E·T`"));
        assert!(rejected(prepare(1, 128, e, t)).contains("tensor `a1q`: dimension `E·T`"));
        assert!(rejected(finalize(128, 8, e, t)).contains("tensor `expert_out`: dimension `E·T`"));
        assert!(rejected(experts(e, t, 128, 128)).contains("dimension `E·T`"));
        assert!(batched_quant(1 << 16, (1 << 15) - 1, 128).is_ok());
    }

    #[test]
    fn every_int_dimension_is_named_when_rejected() {
        let big = MAX_DIM + 1;
        assert!(rejected(token_group_quant(big, 128)).contains("tensor `x`: dimension `rows`"));
        assert!(rejected(token_group_quant(1, big)).contains("dimension `K`"));
        assert!(rejected(grouped_gemm(1, 1, big, 128)).contains("tensor `b`: dimension `N`"));
        assert!(rejected(silu_mul_quant(1, 1, big / 2 + 1)).contains("dimension `2H`"));
        assert!(rejected(prepare(big, 128, 1, 1)).contains("tensor `x`: dimension `M`"));
        assert!(rejected(finalize(128, big, 1, 1)).contains("tensor `topk_ids`: dimension `topk`"));
        assert!(rejected(experts(1, 1, 128, big / 2 + 1)).contains("dimension `N`"));
        assert!(token_group_quant(MAX_DIM, MAX_DIM).is_ok());
    }

    #[test]
    fn the_router_takes_up_to_4096_experts() {
        assert!(route(ROUTE_MAX_EXPERTS).is_ok());
        assert!(rejected(route(ROUTE_MAX_EXPERTS + 1)).contains("tensor `logits`: dimension `Eg` = 4097"));
    }
}
