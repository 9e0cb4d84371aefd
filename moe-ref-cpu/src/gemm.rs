//! The fast masked grouped GEMM (SPEC §5.3).
//!
//! # Why a float64 matrix product is exact here
//! Every E4M3 value is an integer multiple of 2^-9 with magnitude at most 448 < 2^9, so every
//! product of two is an integer multiple of 2^-18 below 2^18, and every partial sum of up to 128
//! such products is an integer multiple of 2^-18 below 2^25: it needs at most 43 significant
//! bits. float64 has 53, so *every* intermediate sum of a 128-wide block partial is exact,
//! whatever the order of additions, the blocking, the use of fused multiply-adds or the number
//! of threads. A float64 GEMM library (faer) may therefore compute the block partials
//! `P_kb = A_kb · B_kbᵀ` however it likes and still return the exact `S` of the spec. NaN (the
//! E4M3 codes `0x7F`/`0xFF`) propagates through any order too. The f32 promotion
//! `acc = fma(s, f32(P), acc)` is then done here, in increasing `kb`, exactly as the spec says.
//!
//! # Work split
//! One task per (expert, 512-column tile of N) with live rows. The activations of each expert
//! are decoded to f64 once (shared, read-only); each task decodes its own weight tile block by
//! block, so every weight is decoded exactly once. Each task accumulates into its own buffer,
//! which is then copied into the live rows of `d`.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use half::bf16;
use moe_core::format::{bf16_out, E4M3_DECODE};
use moe_core::{GroupedGemm, Scales, GROUP};
use rayon::prelude::*;

use crate::naive::sa_at;

const N_TILE: usize = 512;

struct TileOut {
    e: usize,
    n0: usize,
    width: usize,
    acc: Vec<f32>,
    bound: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn grouped_gemm(p: &GroupedGemm, a: &[u8], sa: Scales<'_>, b: &[u8], sb: &[f32], counts: &[i32], d: &mut [bf16], bound: Option<&mut [f64]>) {
    let (t_cap, n_dim, k_dim, kbs) = (p.capacity(), p.n(), p.k(), p.k_blocks());
    let want_bound = bound.is_some();
    // Decoded activations of the live rows, per expert: (counts[e], K) f64 row-major.
    let a_dec: Vec<Vec<f64>> = (0..p.experts())
        .into_par_iter()
        .map(|e| {
            let live = counts[e] as usize;
            a[e * t_cap * k_dim..][..live * k_dim].iter().map(|&v| E4M3_DECODE[v as usize] as f64).collect()
        })
        .collect();
    let a_abs: Vec<Vec<f64>> = if want_bound { a_dec.iter().map(|v| v.iter().map(|x| x.abs()).collect()).collect() } else { Vec::new() };
    let tasks: Vec<(usize, usize)> =
        (0..p.experts()).filter(|&e| counts[e] > 0).flat_map(|e| (0..n_dim).step_by(N_TILE).map(move |n0| (e, n0))).collect();
    let tiles: Vec<TileOut> = tasks
        .into_par_iter()
        .map(|(e, n0)| {
            let live = counts[e] as usize;
            let width = N_TILE.min(n_dim - n0);
            let mut acc = vec![0f32; live * width];
            let mut bnd = if want_bound { vec![0f64; live * width] } else { Vec::new() };
            let mut bt = vec![0f64; width * GROUP];
            let mut bt_abs = if want_bound { vec![0f64; width * GROUP] } else { Vec::new() };
            let mut part = vec![0f64; live * width];
            let mut part_abs = if want_bound { vec![0f64; live * width] } else { Vec::new() };
            let sa_col: Vec<f32> = vec![0.0; live];
            let mut sa_col = sa_col;
            for kb in 0..kbs {
                for j in 0..width {
                    let src = &b[((e * n_dim + n0 + j) * k_dim + kb * GROUP)..][..GROUP];
                    for (o, &v) in bt[j * GROUP..(j + 1) * GROUP].iter_mut().zip(src) {
                        *o = E4M3_DECODE[v as usize] as f64;
                    }
                }
                let lhs = MatRef::from_row_major_slice_with_stride(&a_dec[e][kb * GROUP..], live, GROUP, k_dim);
                let rhs = MatRef::from_row_major_slice(&bt, width, GROUP).transpose();
                matmul(MatMut::from_row_major_slice_mut(&mut part, live, width), Accum::Replace, lhs, rhs, 1.0, Par::Seq);
                if want_bound {
                    for (o, i) in bt_abs.iter_mut().zip(&bt) {
                        *o = i.abs();
                    }
                    let lhs = MatRef::from_row_major_slice_with_stride(&a_abs[e][kb * GROUP..], live, GROUP, k_dim);
                    let rhs = MatRef::from_row_major_slice(&bt_abs, width, GROUP).transpose();
                    matmul(MatMut::from_row_major_slice_mut(&mut part_abs, live, width), Accum::Replace, lhs, rhs, 1.0, Par::Seq);
                }
                for (t, s) in sa_col.iter_mut().enumerate() {
                    *s = sa_at(&sa, p, e, t, kb);
                }
                for t in 0..live {
                    let s_a = sa_col[t];
                    let row = &mut acc[t * width..(t + 1) * width];
                    let prow = &part[t * width..(t + 1) * width];
                    for (blk, (accs, ps)) in row.chunks_mut(GROUP).zip(prow.chunks(GROUP)).enumerate() {
                        let s = s_a * sb[(e * (n_dim / GROUP) + (n0 / GROUP) + blk) * kbs + kb];
                        for (acc, &pv) in accs.iter_mut().zip(ps) {
                            *acc = s.mul_add(pv as f32, *acc);
                        }
                        if want_bound {
                            let brow = &mut bnd[t * width + blk * GROUP..][..accs.len()];
                            let pa = &part_abs[t * width + blk * GROUP..][..accs.len()];
                            for (bo, &pv) in brow.iter_mut().zip(pa) {
                                *bo += (s as f64).abs() * pv;
                            }
                        }
                    }
                }
            }
            TileOut { e, n0, width, acc, bound: bnd }
        })
        .collect();
    let mut bound = bound;
    for tile in tiles {
        let live = counts[tile.e] as usize;
        for t in 0..live {
            let dst = (tile.e * t_cap + t) * n_dim + tile.n0;
            for (o, &v) in d[dst..dst + tile.width].iter_mut().zip(&tile.acc[t * tile.width..(t + 1) * tile.width]) {
                *o = bf16_out(v);
            }
            if let Some(bd) = bound.as_deref_mut() {
                bd[dst..dst + tile.width].copy_from_slice(&tile.bound[t * tile.width..(t + 1) * tile.width]);
            }
        }
    }
}
