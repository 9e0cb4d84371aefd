//! The unquantized evaluation of a layer, for accuracy figures (SPEC §5.7): the same gate and
//! router, then every expert in float64 on bf16 activations that are never quantized, with the
//! weights dequantized (`decode(q) · scale`, SPEC §4), and `y` rounded once to bf16.
//!
//! `calc_diff` of [`MoeLayer::forward`](super::MoeLayer::forward)'s `y` against this is the
//! figure of how much the FP8 pipeline (activation quantization, FP8 GEMMs, the bf16
//! intermediate) moves the layer's output.

use moe_core::format::e4m3_to_f32;
use moe_core::{bf16, Backend, Gate, Route, GROUP};
use moe_ref_cpu::CpuBackend;
use rayon::prelude::*;

use super::MoeLayer;
use crate::error::EngineError;
use crate::weights::checkpoint::QuantWeights;

/// Expert `e` of `w`, dequantized to row-major f32 `(R, C)`.
fn dequant(w: &QuantWeights, e: usize) -> Vec<f32> {
    let (r, c) = (w.rows, w.cols);
    let (sr, sc) = (r.div_ceil(GROUP), c.div_ceil(GROUP));
    let q = &w.q[e * r * c..(e + 1) * r * c];
    let s = &w.s[e * sr * sc..(e + 1) * sr * sc];
    (0..r * c)
        .map(|i| e4m3_to_f32(q[i]) * s[(i / c / GROUP) * sc + (i % c) / GROUP])
        .collect()
}

/// `silu(gate) · up` of one token through one expert, then `w2`: the `(K)` output in f64.
fn expert_f64(x: &[f64], w1: &[f32], w2: &[f32], k: usize, i: usize) -> Vec<f64> {
    let h: Vec<f64> = (0..2 * i)
        .map(|r| w1[r * k..(r + 1) * k].iter().zip(x).map(|(&w, &v)| f64::from(w) * v).sum())
        .collect();
    let a: Vec<f64> = (0..i).map(|j| h[j] / (1.0 + (-h[j]).exp()) * h[i + j]).collect();
    (0..k)
        .map(|r| w2[r * i..(r + 1) * i].iter().zip(&a).map(|(&w, &v)| f64::from(w) * v).sum())
        .collect()
}

/// `y (M, K)` of `x (M, K)` without any activation quantization (CPU, float64).
pub fn forward_unquantized(layer: &MoeLayer, x: &[bf16]) -> Result<Vec<bf16>, EngineError> {
    let d = layer.dims();
    let (k, eg, topk) = (d.k, d.experts, d.topk);
    let m = x.len() / k;
    let w = layer.weights();
    let cpu = CpuBackend::new();
    let mut logits = vec![0f32; m * eg];
    cpu.gate(&Gate::new(m, eg, k)?, &x[..m * k], &w.gate, &mut logits)?;
    let (mut ids, mut tw) = (vec![0i32; m * topk], vec![0f32; m * topk]);
    cpu.route(&Route::new(m, eg, *layer.router())?, &logits, w.bias.as_deref(), &mut ids, &mut tw)?;
    let xf: Vec<f64> = x[..m * k].iter().map(|v| f64::from(v.to_f32())).collect();
    // Per expert: the (token, slot) pairs routed to it, each computed once its weights are
    // dequantized; contributions summed per token in slot order afterwards.
    let mut by_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); eg];
    for t in 0..m {
        for j in 0..topk {
            let e = ids[t * topk + j];
            if e >= 0 {
                by_expert[e as usize].push((t, j));
            }
        }
    }
    let contributions: Vec<Vec<(usize, usize, Vec<f64>)>> = by_expert
        .par_iter()
        .enumerate()
        .filter(|(_, pairs)| !pairs.is_empty())
        .map(|(e, pairs)| {
            let (w1, w2) = (dequant(&w.w1, e), dequant(&w.w2, e));
            pairs
                .iter()
                .map(|&(t, j)| (t, j, expert_f64(&xf[t * k..(t + 1) * k], &w1, &w2, k, d.i)))
                .collect()
        })
        .collect();
    let mut slots: Vec<Option<Vec<f64>>> = vec![None; m * topk];
    for (t, j, o) in contributions.into_iter().flatten() {
        slots[t * topk + j] = Some(o);
    }
    let shared: Option<Vec<Vec<f64>>> = match (&w.shared, d.shared_i) {
        (Some(s), Some(is)) => {
            let (w1, w2) = (dequant(&s.w1, 0), dequant(&s.w2, 0));
            Some(
                (0..m)
                    .into_par_iter()
                    .map(|t| expert_f64(&xf[t * k..(t + 1) * k], &w1, &w2, k, is))
                    .collect(),
            )
        }
        _ => None,
    };
    let mut y = vec![bf16::ZERO; m * k];
    for t in 0..m {
        let mut acc = vec![0f64; k];
        for j in 0..topk {
            if let Some(o) = &slots[t * topk + j] {
                let wj = f64::from(tw[t * topk + j]);
                acc.iter_mut().zip(o).for_each(|(a, v)| *a += wj * v);
            }
        }
        if let Some(h) = &shared {
            acc.iter_mut().zip(&h[t]).for_each(|(a, v)| *a += v);
        }
        for (c, a) in acc.iter().enumerate() {
            y[t * k + c] = bf16::from_f64(*a);
        }
    }
    Ok(y)
}
