//! The fast reference: the same arithmetic as [`crate::NaiveCpu`], organised for speed.
//!
//! - Rows are processed in parallel with rayon; every output element is computed by exactly one
//!   task with the same sequence of f32 operations as the naive path, so results do not depend
//!   on the thread count.
//! - Inner loops work on whole 128-element groups in fixed-size arrays with branch-free helpers
//!   (`e4m3_from_f32`, `exp_f32`), so that they vectorize.
//! - The grouped GEMM computes each 128-wide block partial with a float64 matrix product (faer);
//!   see [`crate::gemm`] for why that is exact.

use half::bf16;
use moe_core::format::{bf16_out, e4m3_from_f32, round_bf16};
use moe_core::math::exp_f32;
use moe_core::{
    Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, BlockQuant, Finalize, Gate, GemmInputs, GroupedGemm, MoeResult, Numerics,
    Prepare, Route, ScaleFormat, ScaleLayout, ScalesMut, SiluMulQuant, TokenGroupQuant, E4M3_MAX, GROUP,
};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;
use std::sync::Arc;

use crate::common::{
    check_gemm_accumulators, check_gemm_with_bound, clear_packed_rows, group_scale, route_for_prepare, scale_of, vllm_group_scale,
};
use crate::gemm::GemmOut;

/// The fast CPU reference: parallel with rayon, bit-identical to [`crate::NaiveCpu`] for any
/// thread count.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl CpuBackend {
    /// Runs on rayon's global thread pool.
    pub fn new() -> Self {
        Self { pool: None }
    }

    /// Runs on the given thread pool (the caller chooses the parallelism).
    pub fn with_pool(pool: Arc<rayon::ThreadPool>) -> Self {
        Self { pool: Some(pool) }
    }

    /// Runs on a new pool of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        Ok(Self::with_pool(Arc::new(
            rayon::ThreadPoolBuilder::new().num_threads(threads).build()?,
        )))
    }

    /// Number of threads this backend uses.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// The grouped GEMM, also returning the absolute-sum bound of SPEC §5.3 per element (as
    /// [`crate::NaiveCpu::grouped_gemm_with_bound`], identical results).
    pub fn grouped_gemm_with_bound(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16], bound: &mut [f64]) -> MoeResult<()> {
        check_gemm_with_bound(p, &inputs, d, bound)?;
        self.install(|| crate::gemm::grouped_gemm(p, inputs, GemmOut::D(d, Some(bound))));
        Ok(())
    }

    /// The f32 accumulators of the grouped GEMM before the final rounding (as
    /// [`crate::NaiveCpu::grouped_gemm_accumulators`], identical results).
    pub fn grouped_gemm_accumulators(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, acc: &mut [f32]) -> MoeResult<()> {
        check_gemm_accumulators(p, &inputs, acc)?;
        self.install(|| crate::gemm::grouped_gemm(p, inputs, GemmOut::Acc(acc)));
        Ok(())
    }
}

/// §5.1 quantization of one group held in `v`: returns the scale.
#[inline(always)]
fn quant_group(v: &[f32; GROUP], ceil: bool, q: &mut [u8]) -> f32 {
    let s = group_scale(v, ceil);
    let q: &mut [u8; GROUP] = q.try_into().expect("group of 128");
    for i in 0..GROUP {
        q[i] = e4m3_from_f32(v[i] / s);
    }
    s
}

#[inline]
fn load_group(x: &Activation<'_>, start: usize, v: &mut [f32; GROUP]) {
    match x {
        Activation::Bf16(s) => {
            for (o, i) in v.iter_mut().zip(&s[start..start + GROUP]) {
                *o = i.to_f32();
            }
        }
        Activation::F32(s) => v.copy_from_slice(&s[start..start + GROUP]),
    }
}

/// Quantizes rows of `x` (row `r` starting at `x_off(r)`) into `q` (rows of `k`, contiguous),
/// in parallel; returns the per-row scales `(rows, groups)` row-major.
fn quant_rows_par(x: &Activation<'_>, k: usize, ceil: bool, q: &mut [u8], x_off: impl Fn(usize) -> usize + Sync) -> Vec<f32> {
    let groups = k / GROUP;
    let rows = q.len() / k;
    let mut scales = vec![0f32; rows * groups];
    q.par_chunks_mut(k)
        .zip(scales.par_chunks_mut(groups))
        .enumerate()
        .with_min_len(4)
        .for_each(|(r, (qr, sr))| {
            Arch::new().dispatch(QuantRow {
                x,
                base: x_off(r),
                qr,
                sr,
                ceil,
            });
        });
    scales
}

/// §5.1 quantization of one row, compiled for the CPU's widest vectors by `pulp`.
struct QuantRow<'a> {
    x: &'a Activation<'a>,
    base: usize,
    qr: &'a mut [u8],
    sr: &'a mut [f32],
    ceil: bool,
}

impl WithSimd for QuantRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let mut v = [0f32; GROUP];
        for (g, sc) in self.sr.iter_mut().enumerate() {
            load_group(self.x, self.base + g * GROUP, &mut v);
            *sc = quant_group(&v, self.ceil, &mut self.qr[g * GROUP..(g + 1) * GROUP]);
        }
    }
}

/// Scatters per-row scales `(rows, groups)` into one expert's MN-major `(cols, T)` scales.
fn scatter_mn(se: &mut ScalesMut<'_>, fmt: ScaleFormat, t_cap: usize, groups: usize, rows: &[f32], live: usize) {
    clear_packed_rows(se, t_cap, fmt.columns(groups), live);
    for t in 0..live {
        for g in 0..groups {
            se.store(ScaleLayout::MnMajor, t_cap, groups, t, g, rows[t * groups + g]);
        }
    }
}

/// VllmBf16 SiLU-mul of one group: `v = bf16(bf16(silu(gate)) · up)`.
#[inline(always)]
fn silu_mul_group(gate: &[bf16], up: &[bf16], numerics: Numerics, v: &mut [f32; GROUP]) {
    let gate: &[bf16; GROUP] = gate.try_into().expect("group");
    let up: &[bf16; GROUP] = up.try_into().expect("group");
    let mut e = [0f32; GROUP];
    for i in 0..GROUP {
        e[i] = exp_f32(-gate[i].to_f32());
    }
    match numerics {
        Numerics::VllmBf16 => {
            for i in 0..GROUP {
                let g = gate[i].to_f32();
                v[i] = round_bf16(round_bf16(g / (1.0 + e[i])) * up[i].to_f32());
            }
        }
        Numerics::F32 => {
            for i in 0..GROUP {
                let g = gate[i].to_f32();
                v[i] = (g / (1.0 + e[i])) * up[i].to_f32();
            }
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], mut s: ScalesMut<'_>) -> MoeResult<()> {
        p.check(&x, q, &s)?;
        // Packed words are rebuilt from zero so bytes past the last group read 0.
        if let ScalesMut::Packed(w) = &mut s {
            w.fill(0);
        }
        let (rows, k, groups, fmt) = (p.rows(), p.k(), p.groups(), p.scale_format());
        let scales = self.install(|| quant_rows_par(&x, k, fmt.is_ceil(), q, |r| r * k));
        for r in 0..rows {
            for g in 0..groups {
                s.store(p.layout(), rows, groups, r, g, scales[r * groups + g]);
            }
        }
        Ok(())
    }

    fn batched_token_group_quant(&self, p: &BatchedTokenGroupQuant, x: Activation, c: &[i32], q: &mut [u8], s: ScalesMut) -> MoeResult<()> {
        p.check(&x, c, q, &s)?;
        let (t_cap, k, groups, fmt) = (p.capacity(), p.k(), p.groups(), p.scale_format());
        let experts = q.chunks_mut(t_cap * k).zip(s.into_experts(fmt.columns(groups) * t_cap));
        for (e, (qe, mut se)) in experts.enumerate() {
            let live = c[e] as usize;
            let rows = self.install(|| quant_rows_par(&x, k, fmt.is_ceil(), &mut qe[..live * k], |r| (e * t_cap + r) * k));
            scatter_mn(&mut se, fmt, t_cap, groups, &rows, live);
        }
        Ok(())
    }

    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        p.check(&w, q, s)?;
        let (r_dim, c_dim, pow2) = (p.rows(), p.cols(), p.pow2());
        let [_, rbs, cbs] = p.scale_shape();
        self.install(|| {
            // One task per (expert, 128-row block): its rows of `q` and its row of scales.
            let tasks: Vec<(usize, usize)> = (0..p.experts()).flat_map(|e| (0..rbs).map(move |rb| (e, rb))).collect();
            let mut q_parts: Vec<&mut [u8]> = Vec::with_capacity(tasks.len());
            for qe in q.chunks_mut(r_dim * c_dim) {
                q_parts.extend(qe.chunks_mut(GROUP * c_dim));
            }
            q_parts
                .into_par_iter()
                .zip(s.par_chunks_mut(cbs))
                .zip(tasks)
                .for_each(|((qb, sb), (e, rb))| {
                    let rows = qb.len() / c_dim;
                    let base = (e * r_dim + rb * GROUP) * c_dim;
                    match w {
                        Activation::Bf16(x) => BlockRow::run(&x[base..base + rows * c_dim], c_dim, qb, sb, pow2),
                        Activation::F32(x) => BlockRow::run(&x[base..base + rows * c_dim], c_dim, qb, sb, pow2),
                    }
                });
        });
        Ok(())
    }

    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        p.check(y, counts, q, &s)?;
        let (t_cap, h, groups, fmt, numerics) = (p.capacity(), p.h(), p.groups(), p.scale_format(), p.numerics());
        let per_expert = fmt.columns(groups) * t_cap;
        let ceil = fmt.is_ceil();
        // One parallel pass over every row of every expert (dead rows are skipped), then the
        // scales of each expert are scattered into their MN-major layout.
        let mut rows = vec![0f32; p.experts() * t_cap * groups];
        self.install(|| {
            q.par_chunks_mut(h)
                .zip(rows.par_chunks_mut(groups))
                .enumerate()
                .with_min_len(2)
                .for_each(|(i, (qr, sr))| {
                    let (e, t) = (i / t_cap, i % t_cap);
                    if t < counts[e] as usize {
                        let yr = &y[i * 2 * h..][..2 * h];
                        Arch::new().dispatch(SiluRow {
                            yr,
                            qr,
                            sr,
                            numerics,
                            ceil,
                        });
                    }
                });
        });
        for (e, mut se) in s.into_experts(per_expert).enumerate() {
            scatter_mn(&mut se, fmt, t_cap, groups, &rows[e * t_cap * groups..], counts[e] as usize);
        }
        Ok(())
    }

    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        p.check(&inputs, d)?;
        self.install(|| crate::gemm::grouped_gemm(p, inputs, GemmOut::D(d, None)));
        Ok(())
    }

    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()> {
        let routing = route_for_prepare(p, x, topk_ids, a1q, &a1s, counts)?;
        let (t_cap, k, fmt) = (p.dims().capacity(), p.dims().k(), p.scale_format());
        let groups = k / GROUP;
        let per_expert = fmt.columns(groups) * t_cap;
        let xa = Activation::Bf16(x);
        for (e, (qe, mut se)) in a1q.chunks_mut(t_cap * k).zip(a1s.into_experts(per_expert)).enumerate() {
            let toks = routing.tokens(e);
            let rows = self.install(|| quant_rows_par(&xa, k, fmt.is_ceil(), &mut qe[..toks.len() * k], |r| toks[r] as usize * k));
            scatter_mn(&mut se, fmt, t_cap, groups, &rows, toks.len());
        }
        Ok(())
    }

    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        let routing = p.check(expert_out, topk_ids, topk_weights, out)?;
        let (k, topk, t_cap) = (p.dims().k(), p.dims().topk(), p.dims().capacity());
        self.install(|| {
            out.par_chunks_mut(k).enumerate().with_min_len(4).for_each(|(m, o)| {
                Arch::new().dispatch(FinalizeRow {
                    routing: &routing,
                    m,
                    topk,
                    t_cap,
                    expert_out,
                    topk_ids,
                    topk_weights,
                    o,
                });
            });
        });
        Ok(())
    }

    fn route(&self, p: &Route, logits: &[f32], bias: Option<&[f32]>, topk_ids: &mut [i32], topk_weights: &mut [f32]) -> MoeResult<()> {
        crate::route::fast(self, p, logits, bias, topk_ids, topk_weights)
    }

    fn gate(&self, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
        crate::gate::fast(self, p, x, w, logits)
    }
}

impl BatchedExperts for CpuBackend {}

/// SiLU-mul-quant of one row, compiled for the CPU's widest vectors by `pulp` (results do not
/// depend on the instruction set: Rust neither contracts nor reorders f32 arithmetic).
struct SiluRow<'a> {
    yr: &'a [bf16],
    qr: &'a mut [u8],
    sr: &'a mut [f32],
    numerics: Numerics,
    ceil: bool,
}

impl WithSimd for SiluRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let (yr, h) = (self.yr, self.qr.len());
        let mut v = [0f32; GROUP];
        for (g, sc) in self.sr.iter_mut().enumerate() {
            let qg = &mut self.qr[g * GROUP..(g + 1) * GROUP];
            silu_mul_group(&yr[g * GROUP..][..GROUP], &yr[h + g * GROUP..][..GROUP], self.numerics, &mut v);
            *sc = match self.numerics {
                Numerics::F32 => quant_group(&v, self.ceil, qg),
                Numerics::VllmBf16 => {
                    let (scale, inv) = vllm_group_scale(&v, self.ceil);
                    let qg: &mut [u8; GROUP] = qg.try_into().expect("group");
                    for i in 0..GROUP {
                        qg[i] = e4m3_from_f32(round_bf16(v[i] * inv).clamp(-E4M3_MAX, E4M3_MAX));
                    }
                    scale
                }
            };
        }
    }
}

/// Finalize of one token, compiled for the CPU's widest vectors by `pulp` (the f32 `mul_add`
/// becomes one fused instruction; the result is the same on every instruction set).
struct FinalizeRow<'a> {
    routing: &'a moe_core::Routing,
    m: usize,
    topk: usize,
    t_cap: usize,
    expert_out: &'a [bf16],
    topk_ids: &'a [i32],
    topk_weights: &'a [f32],
    o: &'a mut [bf16],
}

impl WithSimd for FinalizeRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let FinalizeRow {
            routing,
            m,
            topk,
            t_cap,
            expert_out,
            topk_ids,
            topk_weights,
            o,
        } = self;
        let k = o.len();
        let mut acc = vec![0f32; k];
        for j in 0..topk {
            if let Some(row) = routing.row(m, j) {
                let e = topk_ids[m * topk + j] as usize;
                let w = topk_weights[m * topk + j];
                let src = &expert_out[(e * t_cap + row) * k..][..k];
                for (a, v) in acc.iter_mut().zip(src) {
                    *a = w.mul_add(v.to_f32(), *a);
                }
            }
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = bf16_out(*a);
        }
    }
}

/// One 128-row band of a weight matrix (all its 128×128 blocks), compiled for the CPU's widest
/// vectors by `pulp`.
struct BlockRow<'a, T> {
    w: &'a [T],
    c_dim: usize,
    qb: &'a mut [u8],
    sb: &'a mut [f32],
    pow2: bool,
}

impl<'a, T: Elem> BlockRow<'a, T> {
    /// Quantizes the band `w` on the CPU's widest vectors.
    fn run(w: &'a [T], c_dim: usize, qb: &'a mut [u8], sb: &'a mut [f32], pow2: bool) {
        Arch::new().dispatch(BlockRow { w, c_dim, qb, sb, pow2 });
    }
}

/// An input element type of the quantizers.
trait Elem: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

impl<T: Elem> WithSimd for BlockRow<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let BlockRow { w, c_dim, qb, sb, pow2 } = self;
        let rows = w.len() / c_dim;
        // Column-block maxima over all rows of the band (maxNum is order-independent), then the codes.
        let mut amax = vec![1e-4f32; sb.len()];
        for r in 0..rows {
            for (m, chunk) in amax.iter_mut().zip(w[r * c_dim..(r + 1) * c_dim].chunks(GROUP)) {
                for &x in chunk {
                    *m = m.max(x.f32().abs());
                }
            }
        }
        for (sc, &m) in sb.iter_mut().zip(&amax) {
            *sc = scale_of(m, pow2);
        }
        for r in 0..rows {
            let src = &w[r * c_dim..(r + 1) * c_dim];
            let dst = &mut qb[r * c_dim..(r + 1) * c_dim];
            for ((d, x), &sc) in dst.chunks_mut(GROUP).zip(src.chunks(GROUP)).zip(sb.iter()) {
                for (o, &v) in d.iter_mut().zip(x) {
                    *o = e4m3_from_f32(v.f32() / sc);
                }
            }
        }
    }
}
