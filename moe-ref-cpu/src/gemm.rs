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
//! # Speed
//! Each task runs inside `pulp::Arch::dispatch`, which compiles its body for the widest vector
//! instructions the CPU has (AVX2+FMA or AVX-512) and selects it at run time, in safe code: the
//! f32 `mul_add` of the promotion becomes one fused instruction instead of a call to `fmaf`.
//! Rust never contracts or reorders floating-point operations, so the target features change
//! speed only, not results.
//!
//! # Work split
//! One task per (expert, 192-column tile of N) with live rows. The activations of each expert
//! are decoded to f64 once (shared, read-only); each task decodes its own weight tile block by
//! block, so every weight is decoded exactly once. Each task accumulates into its own buffer,
//! which is then copied into the live rows of `d`.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use half::bf16;
use moe_core::format::{bf16_out, E4M3_DECODE};

use moe_core::{GemmInputs, GroupedGemm, Scales, GROUP};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::common::sa_at;

/// Columns of N per task: a multiple of 48 (faer's f64 micro-kernel height on AVX-512); small
/// enough that E=8, N=4096 gives 176 tasks to balance (192, 384 and 768 measured within noise).
const N_TILE: usize = 192;

struct TileOut {
    e: usize,
    n0: usize,
    width: usize,
    acc: Vec<f32>,
    bound: Vec<f64>,
}

/// Where the results go: the rounded output `d` (with the bound when asked), or the f32
/// accumulators before the rounding.
pub(crate) enum GemmOut<'a> {
    /// `d = bf16_out(acc)`, and the absolute-sum bound when present.
    D(&'a mut [bf16], Option<&'a mut [f64]>),
    /// The f32 accumulators themselves.
    Acc(&'a mut [f32]),
}

pub(crate) fn grouped_gemm(p: &GroupedGemm, inputs: GemmInputs<'_>, out: GemmOut<'_>) {
    let GemmInputs { a, sa, b, counts } = inputs;
    let (b, sb) = (b.q, b.s);
    let (t_cap, n_dim, k_dim) = (p.capacity(), p.n(), p.k());
    let want_bound = matches!(out, GemmOut::D(_, Some(_)));
    // Decoded activations of the live rows, per expert: (counts[e], K) f64 row-major.
    let a_dec: Vec<Vec<f64>> = (0..p.experts())
        .into_par_iter()
        .map(|e| {
            let live = counts[e] as usize;
            a[e * t_cap * k_dim..][..live * k_dim]
                .iter()
                .map(|&v| E4M3_DECODE[v as usize] as f64)
                .collect()
        })
        .collect();
    let a_abs: Vec<Vec<f64>> = if want_bound {
        a_dec.iter().map(|v| v.iter().map(|x| x.abs()).collect()).collect()
    } else {
        Vec::new()
    };
    let tasks: Vec<(usize, usize)> = (0..p.experts())
        .filter(|&e| counts[e] > 0)
        .flat_map(|e| (0..n_dim).step_by(N_TILE).map(move |n0| (e, n0)))
        .collect();
    let tiles: Vec<TileOut> = tasks
        .into_par_iter()
        .map(|(e, n0)| {
            Arch::new().dispatch(Tile {
                p,
                a_dec: &a_dec,
                a_abs: &a_abs,
                sa,
                b,
                sb,
                counts,
                e,
                n0,
                want_bound,
            })
        })
        .collect();
    let mut out = out;
    for tile in tiles {
        let live = counts[tile.e] as usize;
        for t in 0..live {
            let dst = (tile.e * t_cap + t) * n_dim + tile.n0;
            match &mut out {
                GemmOut::D(d, bound) => {
                    for j in 0..tile.width {
                        d[dst + j] = bf16_out(tile.acc[j * live + t]);
                    }
                    if let Some(bd) = bound.as_deref_mut() {
                        for j in 0..tile.width {
                            bd[dst + j] = tile.bound[j * live + t];
                        }
                    }
                }
                GemmOut::Acc(acc) => {
                    for j in 0..tile.width {
                        acc[dst + j] = tile.acc[j * live + t];
                    }
                }
            }
        }
    }
}

/// Decodes an E4M3 byte to f64 without a table lookup (vectorizes); equal to `E4M3_DECODE`.
#[inline(always)]
fn decode_e4m3(v: u8) -> f64 {
    let v = v as u32;
    let sign = (v & 0x80) << 24;
    let exp = (v >> 3) & 0xF;
    let mant = v & 7;
    // Normal: rebias the exponent from 7 to 127 and move the 3 mantissa bits to the top.
    let normal = f32::from_bits(sign | ((exp + 120) << 23) | (mant << 20));
    // Subnormal: mant · 2^-9.
    let sub = f32::from_bits(sign | (mant as f32 * (1.0 / 512.0)).to_bits());
    let x = if exp == 0 { sub } else { normal };
    let x = if (v & 0x7F) == 0x7F { f32::NAN } else { x };
    x as f64
}

/// `out (width, live) = lhs (width, 128) · rhsᵀ` in f64, where `rhs` holds `live` rows of 128
/// with a stride of `k_dim` (one 128-wide block of the decoded activations); `width` is
/// `lhs.len() / 128`.
fn block_product(out: &mut [f64], lhs: &[f64], rhs: &[f64], live: usize, k_dim: usize) {
    let width = lhs.len() / GROUP;
    let lhs = MatRef::from_row_major_slice(lhs, width, GROUP);
    let rhs = MatRef::from_row_major_slice_with_stride(rhs, live, GROUP, k_dim).transpose();
    matmul(
        MatMut::from_row_major_slice_mut(out, width, live),
        Accum::Replace,
        lhs,
        rhs,
        1.0,
        Par::Seq,
    );
}

/// One task: expert `e`, columns `n0..n0 + width` of N.
struct Tile<'a> {
    p: &'a GroupedGemm,
    a_dec: &'a [Vec<f64>],
    a_abs: &'a [Vec<f64>],
    sa: Scales<'a>,
    b: &'a [u8],
    sb: &'a [f32],
    counts: &'a [i32],
    e: usize,
    n0: usize,
    want_bound: bool,
}

impl WithSimd for Tile<'_> {
    type Output = TileOut;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> TileOut {
        let Tile {
            p,
            a_dec,
            a_abs,
            sa,
            b,
            sb,
            counts,
            e,
            n0,
            want_bound,
        } = self;
        let (n_dim, k_dim, kbs) = (p.n(), p.k(), p.k_blocks());

        let live = counts[e] as usize;
        let width = N_TILE.min(n_dim - n0);
        // Everything in this task is transposed, (width, live) row-major, so that the f32
        // promotion runs along the contiguous token axis with one weight scale per row.
        let mut acc = vec![0f32; width * live];
        let mut bnd = if want_bound { vec![0f64; width * live] } else { Vec::new() };
        let mut bt = vec![0f64; width * GROUP];
        let mut bt_abs = if want_bound { vec![0f64; width * GROUP] } else { Vec::new() };
        let mut part = vec![0f64; width * live];
        let mut part_abs = if want_bound { vec![0f64; width * live] } else { Vec::new() };
        let mut sa_col = vec![0f32; live];
        for kb in 0..kbs {
            for j in 0..width {
                let src: &[u8; GROUP] = b[((e * n_dim + n0 + j) * k_dim + kb * GROUP)..][..GROUP].try_into().expect("group");
                let dst: &mut [f64; GROUP] = (&mut bt[j * GROUP..(j + 1) * GROUP]).try_into().expect("group");
                for i in 0..GROUP {
                    dst[i] = decode_e4m3(src[i]);
                }
            }
            // part (width, live) = B_kb (width, 128) · A_kbᵀ (128, live), exact in f64.
            block_product(&mut part, &bt, &a_dec[e][kb * GROUP..], live, k_dim);
            if want_bound {
                for (o, i) in bt_abs.iter_mut().zip(&bt) {
                    *o = i.abs();
                }
                block_product(&mut part_abs, &bt_abs, &a_abs[e][kb * GROUP..], live, k_dim);
            }
            for (t, s) in sa_col.iter_mut().enumerate() {
                *s = sa_at(&sa, p, e, t, kb);
            }
            for j in 0..width {
                let s_b = sb[(e * (n_dim / GROUP) + (n0 + j) / GROUP) * kbs + kb];
                let accs = &mut acc[j * live..(j + 1) * live];
                let ps = &part[j * live..(j + 1) * live];
                for t in 0..live {
                    // s = f32(sa · sb); acc = fma(s, f32(S), acc), in increasing kb.
                    accs[t] = (sa_col[t] * s_b).mul_add(ps[t] as f32, accs[t]);
                }
                if want_bound {
                    let bs = &mut bnd[j * live..(j + 1) * live];
                    let pa = &part_abs[j * live..(j + 1) * live];
                    for t in 0..live {
                        bs[t] += ((sa_col[t] * s_b) as f64).abs() * pa[t];
                    }
                }
            }
        }
        TileOut {
            e,
            n0,
            width,
            acc,
            bound: bnd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_decode_equals_the_table() {
        for v in 0..=255u8 {
            let t = E4M3_DECODE[v as usize] as f64;
            let a = decode_e4m3(v);
            assert!(a.to_bits() == t.to_bits() || (a.is_nan() && t.is_nan()), "{v:#04x}: {a} vs {t}");
        }
    }
}
