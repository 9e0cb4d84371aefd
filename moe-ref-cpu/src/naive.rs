//! The naive reference: each operation written as the plain loop nest of SPEC §5, one element at
//! a time, in the order the spec states. Slow and obviously right; the fast path is tested
//! against it bit for bit.

use half::bf16;
use moe_core::format::{bf16_out, e4m3_from_f32, e4m3_to_f32, round_bf16};
use moe_core::math::silu_f32;
use moe_core::{
    Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, BlockQuant, Finalize, Gate, GemmInputs, GroupedGemm, MoeResult, Numerics,
    Prepare, Route, ScaleFormat, ScaleLayout, ScalesMut, SiluMulQuant, TokenGroupQuant, E4M3_MAX, GROUP,
};

use crate::common::{
    check_gemm_accumulators, check_gemm_with_bound, clear_packed_rows, group_scale, route_for_prepare, sa_at, scale_of, vllm_group_scale,
};

/// The naive CPU reference (single-threaded, element by element).
#[derive(Debug, Default, Clone, Copy)]
pub struct NaiveCpu;

impl NaiveCpu {
    /// The naive backend.
    pub fn new() -> Self {
        NaiveCpu
    }

    /// The grouped GEMM, also returning for each output element the absolute-sum bound of
    /// SPEC §5.3, `Σ_kb |s_kb| · Σ_{i in kb} |decode(a_i)·decode(b_i)|`, as f64 (`(E, T, N)`;
    /// zero for rows past `counts`).
    pub fn grouped_gemm_with_bound(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16], bound: &mut [f64]) -> MoeResult<()> {
        check_gemm_with_bound(p, &inputs, d, bound)?;
        gemm(p, inputs, true, |i, acc, bnd| {
            d[i] = bf16_out(acc);
            bound[i] = bnd;
        });
        Ok(())
    }

    /// The f32 accumulators of the grouped GEMM before the final rounding: `acc` of SPEC §5.3,
    /// whose `bf16_out` is `d`. Written for live rows only (`(E, T, N)`; rows past `counts`
    /// untouched). Tests use it to measure how a backend rounds its epilogue.
    pub fn grouped_gemm_accumulators(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, acc: &mut [f32]) -> MoeResult<()> {
        check_gemm_accumulators(p, &inputs, acc)?;
        gemm(p, inputs, false, |i, a, _| acc[i] = a);
        Ok(())
    }
}

/// The §5.3 loop nest; `put(index into (E, T, N), acc, bound)` receives every live element's
/// f32 accumulator and (when `want_bound`, else 0) its absolute-sum bound.
fn gemm(p: &GroupedGemm, inputs: GemmInputs<'_>, want_bound: bool, mut put: impl FnMut(usize, f32, f64)) {
    let GemmInputs { a, sa, b, counts } = inputs;
    let (t_cap, n_dim, k_dim, kbs) = (p.capacity(), p.n(), p.k(), p.k_blocks());
    for e in 0..p.experts() {
        for t in 0..counts[e] as usize {
            let arow = &a[(e * t_cap + t) * k_dim..][..k_dim];
            for n in 0..n_dim {
                let brow = &b.q[(e * n_dim + n) * k_dim..][..k_dim];
                let mut acc = 0f32;
                let mut bnd = 0f64;
                for kb in 0..kbs {
                    let mut sum = 0f64;
                    let mut abs = 0f64;
                    for i in kb * GROUP..(kb + 1) * GROUP {
                        let prod = e4m3_to_f32(arow[i]) as f64 * e4m3_to_f32(brow[i]) as f64;
                        sum += prod;
                        if want_bound {
                            abs += prod.abs();
                        }
                    }
                    let s = sa_at(&sa, p, e, t, kb) * b.s[(e * (n_dim / GROUP) + n / GROUP) * kbs + kb];
                    acc = s.mul_add(sum as f32, acc);
                    bnd += (s as f64).abs() * abs;
                }
                put((e * t_cap + t) * n_dim + n, acc, bnd);
            }
        }
    }
}

/// Quantizes one group of values with the §5.1 rule; returns the scale.
fn quant_group(vals: &[f32], ceil: bool, q: &mut [u8]) -> f32 {
    let s = group_scale(vals, ceil);
    for (o, &v) in q.iter_mut().zip(vals) {
        *o = e4m3_from_f32(v / s);
    }
    s
}

fn quant_rows(x: &Activation<'_>, rows: usize, k: usize, fmt: ScaleFormat, q: &mut [u8], mut put_scale: impl FnMut(usize, usize, f32)) {
    let mut vals = vec![0f32; GROUP];
    for r in 0..rows {
        for g in 0..k / GROUP {
            for (i, v) in vals.iter_mut().enumerate() {
                *v = x.get(r * k + g * GROUP + i);
            }
            let s = quant_group(&vals, fmt.is_ceil(), &mut q[r * k + g * GROUP..][..GROUP]);
            put_scale(r, g, s);
        }
    }
}

impl Backend for NaiveCpu {
    fn name(&self) -> &str {
        "cpu-naive"
    }

    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], mut s: ScalesMut<'_>) -> MoeResult<()> {
        p.check(&x, q, &s)?;
        let (rows, groups, fmt, layout) = (p.rows(), p.groups(), p.scale_format(), p.layout());
        // Packed words are rebuilt from zero so bytes past the last group read 0.
        if let ScalesMut::Packed(w) = &mut s {
            w.fill(0);
        }
        quant_rows(&x, rows, p.k(), fmt, q, |r, g, sc| s.store(layout, rows, groups, r, g, sc));
        Ok(())
    }

    fn batched_token_group_quant(&self, p: &BatchedTokenGroupQuant, x: Activation, c: &[i32], q: &mut [u8], s: ScalesMut) -> MoeResult<()> {
        p.check(&x, c, q, &s)?;
        let (t_cap, k, groups, fmt) = (p.capacity(), p.k(), p.groups(), p.scale_format());
        let cols = fmt.columns(groups);
        for (e, mut se) in s.into_experts(cols * t_cap).enumerate() {
            let live = c[e] as usize;
            let xe = match x {
                Activation::Bf16(v) => Activation::Bf16(&v[e * t_cap * k..][..live * k]),
                Activation::F32(v) => Activation::F32(&v[e * t_cap * k..][..live * k]),
            };
            clear_packed_rows(&mut se, t_cap, cols, live);
            quant_rows(&xe, live, k, fmt, &mut q[e * t_cap * k..][..live * k], |r, g, sc| {
                se.store(ScaleLayout::MnMajor, t_cap, groups, r, g, sc)
            });
        }
        Ok(())
    }

    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        p.check(&w, q, s)?;
        let (r_dim, c_dim) = (p.rows(), p.cols());
        let [_, rbs, cbs] = p.scale_shape();
        for e in 0..p.experts() {
            for rb in 0..rbs {
                for cb in 0..cbs {
                    // Zero padding at the edges does not change the maximum of |x| >= 0.
                    let mut amax = 1e-4f32;
                    for r in rb * GROUP..((rb + 1) * GROUP).min(r_dim) {
                        for c in cb * GROUP..((cb + 1) * GROUP).min(c_dim) {
                            amax = amax.max(w.get((e * r_dim + r) * c_dim + c).abs());
                        }
                    }
                    let sc = scale_of(amax, p.pow2());
                    for r in rb * GROUP..((rb + 1) * GROUP).min(r_dim) {
                        for c in cb * GROUP..((cb + 1) * GROUP).min(c_dim) {
                            let i = (e * r_dim + r) * c_dim + c;
                            q[i] = e4m3_from_f32(w.get(i) / sc);
                        }
                    }
                    s[(e * rbs + rb) * cbs + cb] = sc;
                }
            }
        }
        Ok(())
    }

    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        p.check(y, counts, q, &s)?;
        let (t_cap, h, groups, fmt) = (p.capacity(), p.h(), p.groups(), p.scale_format());
        let cols = fmt.columns(groups);
        for (e, mut se) in s.into_experts(cols * t_cap).enumerate() {
            let c = counts[e] as usize;
            clear_packed_rows(&mut se, t_cap, cols, c);
            for t in 0..c {
                let row = &y[(e * t_cap + t) * 2 * h..][..2 * h];
                let qrow = &mut q[(e * t_cap + t) * h..][..h];
                for g in 0..groups {
                    let mut v = [0f32; GROUP];
                    for (i, vi) in v.iter_mut().enumerate() {
                        let gate = row[g * GROUP + i].to_f32();
                        let up = row[h + g * GROUP + i].to_f32();
                        *vi = match p.numerics() {
                            Numerics::VllmBf16 => round_bf16(round_bf16(silu_f32(gate)) * up),
                            Numerics::F32 => silu_f32(gate) * up,
                        };
                    }
                    let sc = match p.numerics() {
                        Numerics::VllmBf16 => {
                            let (sc, inv) = vllm_group_scale(&v, fmt.is_ceil());
                            for (o, &vi) in qrow[g * GROUP..][..GROUP].iter_mut().zip(&v) {
                                let z = round_bf16(vi * inv);
                                // NaN stays NaN through the clamp and encodes to 0x7F.
                                *o = e4m3_from_f32(z.clamp(-E4M3_MAX, E4M3_MAX));
                            }
                            sc
                        }
                        Numerics::F32 => quant_group(&v, fmt.is_ceil(), &mut qrow[g * GROUP..][..GROUP]),
                    };
                    se.store(ScaleLayout::MnMajor, t_cap, groups, t, g, sc);
                }
            }
        }
        Ok(())
    }

    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        p.check(&inputs, d)?;
        gemm(p, inputs, false, |i, acc, _| d[i] = bf16_out(acc));
        Ok(())
    }

    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()> {
        let routing = route_for_prepare(p, x, topk_ids, a1q, &a1s, counts)?;
        let (t_cap, k, fmt) = (p.dims().capacity(), p.dims().k(), p.scale_format());
        let groups = k / GROUP;
        let cols = fmt.columns(groups);
        for (e, mut se) in a1s.into_experts(cols * t_cap).enumerate() {
            let toks = routing.tokens(e);
            clear_packed_rows(&mut se, t_cap, cols, toks.len());
            for (row, &tok) in toks.iter().enumerate() {
                let xr = Activation::Bf16(&x[tok as usize * k..][..k]);
                quant_rows(&xr, 1, k, fmt, &mut a1q[(e * t_cap + row) * k..][..k], |_, g, sc| {
                    se.store(ScaleLayout::MnMajor, t_cap, groups, row, g, sc)
                });
            }
        }
        Ok(())
    }

    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        let routing = p.check(expert_out, topk_ids, topk_weights, out)?;
        let (k, topk, t_cap) = (p.dims().k(), p.dims().topk(), p.dims().capacity());
        for m in 0..p.dims().tokens() {
            for c in 0..k {
                let mut acc = 0f32;
                for j in 0..topk {
                    if let Some(row) = routing.row(m, j) {
                        let e = topk_ids[m * topk + j] as usize;
                        let v = expert_out[(e * t_cap + row) * k + c].to_f32();
                        acc = topk_weights[m * topk + j].mul_add(v, acc);
                    }
                }
                out[m * k + c] = bf16_out(acc);
            }
        }
        Ok(())
    }

    fn route(&self, p: &Route, logits: &[f32], bias: Option<&[f32]>, topk_ids: &mut [i32], topk_weights: &mut [f32]) -> MoeResult<()> {
        crate::route::naive(p, logits, bias, topk_ids, topk_weights)
    }

    fn gate(&self, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
        crate::gate::naive(p, x, w, logits)
    }
}

impl BatchedExperts for NaiveCpu {}
