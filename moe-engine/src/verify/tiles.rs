//! Shapes at the tile edges of the GEMM kernels, now and planned.
//!
//! moe-cuda's grouped GEMM walks 64-row, 64-column tiles (`GEMM_BM`, `GEMM_BN` in
//! `moe-cuda/src/launch.rs`); the fast kernels to come use BLOCK_M 64 or 128 and BLOCK_N up to
//! 256, and the fast CPU GEMM splits N into 192-column tasks. The ordinary random cases never
//! exceed `T = 7`, so they cross none of these edges. The shapes here cross every one: `T` up to
//! 300, `N` and `K` up to 1152 (nine 128-blocks, past 1024), per-expert counts at every row-tile
//! edge ±1 (63, 64, 65, 127, 128, 129, 255, 256, 257), a single live row, all rows live, and
//! empty experts.
//!
//! Their cost is bounded ([`GEMM_MACS_MAX`], [`EXPERTS_MACS_MAX`]): a drawn shape that is too
//! big loses 128-blocks of `N`/`K` (or `I`/`K`) and experts until it fits, so a test of a few
//! such cases takes about a second on two cores, with the fast CPU path as the reference where
//! the naive one would be too slow (see [`crate::verify::check::Reference`]).

use moe_core::{ExpertsStage, GroupedGemm, Numerics, GROUP};

use crate::ops::{ExpertsCase, GemmCase};
use crate::rng::Rng;
use crate::verify::cases::any_format;

/// Live-row counts at the row-tile edges of BLOCK_M 64 and 128 (and 256), each ±1.
pub const ROW_EDGES: [usize; 9] = [63, 64, 65, 127, 128, 129, 255, 256, 257];

/// Capacities `T` of the GEMM shapes: one row, and each side of the 64/128/256 row tiles.
pub const GEMM_CAPACITIES: [usize; 9] = [1, 63, 64, 65, 128, 129, 256, 257, 300];
/// `N / 128` of the GEMM shapes: 128 (half a 256 tile), 256, 384 (crosses 192 and 256), 512,
/// 1024 and 1152 (crosses 1024).
pub const GEMM_N_BLOCKS: [usize; 6] = [1, 2, 3, 4, 8, 9];
/// `K / 128` of the GEMM shapes.
pub const GEMM_K_BLOCKS: [usize; 5] = [1, 2, 4, 8, 9];
/// The most multiply-adds `E·T·N·K` of one tile-edge GEMM case.
pub const GEMM_MACS_MAX: usize = 1 << 27;

/// Capacities `T` of the experts-stage shapes: all cross 128.
pub const EXPERTS_CAPACITIES: [usize; 5] = [129, 130, 256, 257, 300];
/// `K / 128` of the experts-stage shapes (K >= 256).
pub const EXPERTS_K_BLOCKS: [usize; 4] = [2, 3, 4, 8];
/// `I / 128` of the experts-stage shapes (I >= 256).
pub const EXPERTS_I_BLOCKS: [usize; 3] = [2, 3, 4];
/// The most multiply-adds `E·T·3·I·K` (GEMM1 and GEMM2) of one tile-edge experts case.
pub const EXPERTS_MACS_MAX: usize = 1 << 26;

/// How the counts of a tile-edge case are chosen; `Edges` draws each expert's count from
/// [`count_candidates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountPattern {
    /// Every row of every expert is live (`counts[e] = T`).
    AllLive,
    /// Expert 0 has a single live row, every other expert is empty.
    OneRowRestEmpty,
    /// Each expert's count is drawn from the candidates.
    Edges,
}

impl CountPattern {
    /// All patterns.
    pub const ALL: [CountPattern; 3] = [CountPattern::AllLive, CountPattern::OneRowRestEmpty, CountPattern::Edges];
}

/// The counts worth drawing for capacity `t`: 0, 1, `t - 1`, `t` and every row-tile edge
/// below `t`.
pub fn count_candidates(t: usize) -> Vec<i32> {
    let mut c: Vec<usize> = [0, 1, t.saturating_sub(1), t]
        .into_iter()
        .chain(ROW_EDGES.iter().copied().filter(|&x| x <= t))
        .collect();
    c.sort_unstable();
    c.dedup();
    c.into_iter().map(|x| x as i32).collect()
}

/// The counts of `e` experts of capacity `t` under `pattern`; `picks[x]` (any value; taken
/// modulo the candidates) chooses expert `x`'s count for [`CountPattern::Edges`].
pub fn edge_counts(pattern: CountPattern, picks: &[usize], e: usize, t: usize) -> Vec<i32> {
    match pattern {
        CountPattern::AllLive => vec![t as i32; e],
        CountPattern::OneRowRestEmpty => (0..e).map(|x| i32::from(x == 0)).collect(),
        CountPattern::Edges => {
            let c = count_candidates(t);
            (0..e).map(|x| c[picks.get(x).copied().unwrap_or(0) % c.len()]).collect()
        }
    }
}

/// Shrinks `(e, a_blocks, b_blocks)` until `e · t · a · b · 128² · factor <= max`: first the
/// larger block count is halved down to `floor`, then experts go, then blocks down to 1.
fn fit(mut e: usize, t: usize, mut a: usize, mut b: usize, factor: usize, floor: usize, max: usize) -> (usize, usize, usize) {
    let macs = |e: usize, a: usize, b: usize| e * t * a * b * GROUP * GROUP * factor;
    while macs(e, a, b) > max {
        let halve = |a: &mut usize, b: &mut usize, floor: usize| {
            if *a >= *b && *a > floor {
                *a = (*a / 2).max(floor);
                true
            } else if *b > floor {
                *b = (*b / 2).max(floor);
                true
            } else {
                false
            }
        };
        if halve(&mut a, &mut b, floor.max(2)) {
            continue;
        }
        if e > 1 {
            e -= 1;
        } else if !halve(&mut a, &mut b, floor) {
            break;
        }
    }
    (e, a, b)
}

/// Entry `i` of `list`, taken modulo its length.
fn pick(list: &[usize], i: usize) -> usize {
    list[i % list.len()]
}

/// The GEMM shape `(E, T, N, K)` of the given indices (any values; taken modulo the lists),
/// shrunk to [`GEMM_MACS_MAX`].
pub fn gemm_shape(e: usize, t_pick: usize, n_pick: usize, k_pick: usize) -> (usize, usize, usize, usize) {
    let (t, nb, kb) = (
        pick(&GEMM_CAPACITIES, t_pick),
        pick(&GEMM_N_BLOCKS, n_pick),
        pick(&GEMM_K_BLOCKS, k_pick),
    );
    let (e, nb, kb) = fit(e.max(1), t, nb, kb, 1, 1, GEMM_MACS_MAX);
    (e, t, nb * GROUP, kb * GROUP)
}

/// The experts-stage shape `(E, T, K, I)` of the given indices, shrunk to
/// [`EXPERTS_MACS_MAX`] (never below `K = I = 256`).
pub fn experts_shape(e: usize, t_pick: usize, k_pick: usize, i_pick: usize) -> (usize, usize, usize, usize) {
    let (t, kb, ib) = (
        pick(&EXPERTS_CAPACITIES, t_pick),
        pick(&EXPERTS_K_BLOCKS, k_pick),
        pick(&EXPERTS_I_BLOCKS, i_pick),
    );
    let (e, kb, ib) = fit(e.max(1), t, kb, ib, 3, 2, EXPERTS_MACS_MAX);
    (e, t, kb * GROUP, ib * GROUP)
}

impl GemmCase {
    /// A random case at the tile edges (see the module docs): 1 to 3 experts.
    pub fn tile_edge(r: &mut Rng, hard: bool) -> Self {
        let (e, t, n, k) = gemm_shape(1 + r.below(3), r.next_u64() as usize, r.next_u64() as usize, r.next_u64() as usize);
        let p = GroupedGemm::new(e, t, n, k, any_format(r)).expect("valid shape");
        let pattern = CountPattern::ALL[r.below(3)];
        let picks: Vec<usize> = (0..e).map(|_| r.next_u64() as usize).collect();
        GemmCase::with_shape(r, p, edge_counts(pattern, &picks, e, t), hard)
    }
}

impl ExpertsCase {
    /// A random experts-stage case at the tile edges (see the module docs): 1 or 2 experts.
    pub fn tile_edge(r: &mut Rng, hard: bool) -> Self {
        let (e, t, k, i) = experts_shape(1 + r.below(2), r.next_u64() as usize, r.next_u64() as usize, r.next_u64() as usize);
        let p = ExpertsStage::new(e, t, k, i, any_format(r), Numerics::ALL[r.below(2)]).expect("valid shape");
        let pattern = CountPattern::ALL[r.below(3)];
        let picks: Vec<usize> = (0..e).map(|_| r.next_u64() as usize).collect();
        ExpertsCase::with_shape(r, p, edge_counts(pattern, &picks, e, t), hard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_stay_within_their_budget_and_keep_their_capacity() {
        for t in 0..GEMM_CAPACITIES.len() {
            for n in 0..GEMM_N_BLOCKS.len() {
                for k in 0..GEMM_K_BLOCKS.len() {
                    for e in 1..=3 {
                        let (e2, t2, n2, k2) = gemm_shape(e, t, n, k);
                        assert!(e2 * t2 * n2 * k2 <= GEMM_MACS_MAX, "{e} {t} {n} {k}");
                        assert_eq!(t2, GEMM_CAPACITIES[t]);
                        assert!(e2 >= 1 && n2 >= GROUP && k2 >= GROUP);
                    }
                }
            }
        }
        for t in 0..EXPERTS_CAPACITIES.len() {
            for k in 0..EXPERTS_K_BLOCKS.len() {
                for i in 0..EXPERTS_I_BLOCKS.len() {
                    let (e, t2, k2, i2) = experts_shape(2, t, k, i);
                    assert!(e * t2 * 3 * k2 * i2 <= EXPERTS_MACS_MAX);
                    assert!(t2 > 128 && k2 >= 256 && i2 >= 256, "{t2} {k2} {i2}");
                }
            }
        }
    }

    /// Over a few hundred draws (no GEMM runs), the generators reach every edge they promise.
    #[test]
    fn tile_edge_cases_cross_every_tile_size() {
        let (mut t_max, mut n_max, mut k_max) = (0, 0, 0);
        let mut counts_seen = std::collections::BTreeSet::new();
        let (mut one_row, mut all_live, mut empty_beside_live) = (false, false, false);
        for i in 0..300 {
            let r = &mut Rng::for_case(5, 0, i);
            let (e, t, n, k) = gemm_shape(1 + r.below(3), r.next_u64() as usize, r.next_u64() as usize, r.next_u64() as usize);
            let pattern = CountPattern::ALL[r.below(3)];
            let picks: Vec<usize> = (0..e).map(|_| r.next_u64() as usize).collect();
            let c = edge_counts(pattern, &picks, e, t);
            (t_max, n_max, k_max) = (t_max.max(t), n_max.max(n), k_max.max(k));
            counts_seen.extend(c.iter().copied());
            one_row |= c.iter().sum::<i32>() == 1;
            all_live |= t >= 256 && c.iter().all(|&x| x as usize == t);
            empty_beside_live |= c.contains(&0) && c.iter().any(|&x| x > 64);
        }
        assert!(t_max >= 300 && n_max >= 1024 && k_max >= 1024, "{t_max} {n_max} {k_max}");
        for edge in ROW_EDGES {
            assert!(counts_seen.contains(&(edge as i32)), "count {edge} never drawn");
        }
        assert!(one_row && all_live && empty_beside_live);
        let c = ExpertsCase::tile_edge(&mut Rng::new(1), false);
        assert!(c.p.capacity() > 128 && c.p.k() >= 256 && c.p.i() >= 256);
    }
}
