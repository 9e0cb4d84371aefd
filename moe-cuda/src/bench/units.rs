//! The measured units on device-resident inputs: each validates its host inputs exactly like the
//! backend's entry point, uploads them once, runs whatever setup the step itself does not
//! repeat (the counts prefix, shared by the stage's kernels), and captures the measured kernel
//! (or the whole stage) in a graph on the bench stream. `download_*` copies the outputs of the
//! last replay back for the checks.
//!
//! Field order: the graph first, so it is dropped before the buffers it references.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use half::bf16;
use moe_core::{
    check_counts, check_len, Activation, BlockQuant, DeviceError, ExpertsInputs, ExpertsStage, Finalize, GroupedGemm, MoeResult, Prepare, ProblemError,
    ScaleBuf, ScaleFormat, Scales, SiluMulQuant, GROUP,
};

use super::{Bench, Graph, OP};
use crate::kernels::GemmKernel;
use crate::launch::{gemm_layouts, XIn, GEMM_BM, GEMM_BN, WG_BM, WG_BN};
use crate::limits;
use crate::memory::{alloc, bf16_bits, fetch, scale_words, sync, upload};
use crate::stage::{self, Activations, Weights, Work};

/// The tile configuration of a grouped GEMM kernel, as the report names it.
pub fn gemm_config(kernel: GemmKernel) -> String {
    match kernel {
        GemmKernel::MmaSync => {
            format!("mma.sync.m16n8k32 e4m3, {GEMM_BM}x{GEMM_BN} tiles, 4 warps, persistent grid over live row tiles (fixed)")
        }
        GemmKernel::Wgmma => format!(
            "TMA + wgmma.m64n128k32 e4m3 (chained per 128-K block), {WG_BM}x{WG_BN} tiles, 6-stage ring, \
             1 producer + 2 consumer warpgroups (setmaxnreg 40/232), persistent grid (1 CTA/SM)"
        ),
    }
}

fn download_bf16(bench: &Bench, d: &CudaSlice<u16>) -> Result<Vec<bf16>, DeviceError> {
    let bits = fetch(&bench.stream, d, OP)?;
    sync(&bench.dev, &bench.stream, OP)?;
    Ok(bits.into_iter().map(bf16::from_bits).collect())
}

fn scales_from_words(fmt: ScaleFormat, words: Vec<u32>) -> ScaleBuf {
    if fmt.is_packed() {
        ScaleBuf::Packed(words.into_iter().map(|w| w as i32).collect())
    } else {
        ScaleBuf::F32(words.into_iter().map(f32::from_bits).collect())
    }
}

/// Block-quantized weights `b (E, N, K)` and `sb (E, N/128, K/128)` on the device, shared by
/// our GEMM and the cuBLASLt loop (uploaded once per shape).
pub struct GemmWeights {
    pub(crate) b: CudaSlice<u8>,
    pub(crate) sb: CudaSlice<f32>,
    pub(crate) e: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

impl std::fmt::Debug for GemmWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GemmWeights({}x{}x{})", self.e, self.n, self.k)
    }
}

impl GemmWeights {
    /// Validates `b` and `sb` against `(e, n, k)` and uploads them.
    pub fn upload(bench: &Bench, e: usize, n: usize, k: usize, b: &[u8], sb: &[f32]) -> MoeResult<Arc<Self>> {
        let p = GroupedGemm::new(e, 1, n, k, ScaleFormat::F32)?;
        limits::grouped_gemm(e, 1, n, k)?;
        check_len("b", b.len(), &[e, n, k])?;
        check_len("sb", sb.len(), &p.sb_shape())?;
        Ok(Arc::new(GemmWeights {
            b: upload(&bench.stream, b, OP)?,
            sb: upload(&bench.stream, sb, OP)?,
            e,
            n,
            k,
        }))
    }

    /// `(E, N, K)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.e, self.n, self.k)
    }
}

/// Our masked grouped GEMM on resident inputs: the graph holds the GEMM kernel alone (the tile
/// prefix of the counts is computed once when the unit is built, as the stage computes it once
/// per step).
pub struct GemmUnit {
    graph: Graph,
    weights: Arc<GemmWeights>,
    _a: CudaSlice<u8>,
    _sa: CudaSlice<u32>,
    _counts: CudaSlice<i32>,
    _tiles: CudaSlice<i32>,
    d: CudaSlice<u16>,
}

impl std::fmt::Debug for GemmUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmUnit").field("weights", &self.weights).finish()
    }
}

impl GemmUnit {
    /// `p`'s `(N, K)` and `E` must be the weights'; `a`, `sa` and `counts` are validated as the
    /// backend validates them. `kernel` picks the GEMM kernel the graph holds (the wgmma kernel
    /// takes f32 activation scales only: packed ones are an `Unsupported` error).
    pub fn new(
        bench: &Bench,
        kernel: GemmKernel,
        p: &GroupedGemm,
        weights: Arc<GemmWeights>,
        a: &[u8],
        sa: Scales<'_>,
        counts: &[i32],
    ) -> MoeResult<Self> {
        let (e, t, n, k) = (p.experts(), p.capacity(), p.n(), p.k());
        if weights.dims() != (e, n, k) {
            return Err(ProblemError::Unsupported {
                what: format!("GEMM weights {:?} for a problem of (E, N, K) = {:?}", weights.dims(), (e, n, k)),
            }
            .into());
        }
        limits::grouped_gemm(e, t, n, k)?;
        check_len("a", a.len(), &[e, t, k])?;
        let sh = p.sa_shape();
        sa.check("sa", p.scale_format(), sh.iter().product(), &sh)?;
        check_counts(counts, e, t)?;
        let s = &bench.stream;
        let a_d = upload(s, a, OP)?;
        let sa_d = upload(s, scale_words(&sa), OP)?;
        let c_d = upload(s, counts, OP)?;
        let mut prefix = alloc::<i32>(s, e + 1, OP)?;
        let mut tiles = alloc::<i32>(s, e + 1, OP)?;
        let mut d = alloc::<u16>(s, e * t * n, OP)?;
        bench.launcher().counts_prefix(&c_d, e, t, GEMM_BM, &mut prefix, &mut tiles)?;
        let fmt = p.scale_format();
        let dims = (e, t, n, k);
        let graph = match kernel {
            GemmKernel::MmaSync => {
                bench.capture(|l| l.grouped_gemm(&a_d, &sa_d, fmt, &weights.b, &weights.sb, &mut d, &c_d, &tiles, dims, true))?
            }
            GemmKernel::Wgmma => {
                if fmt.is_packed() {
                    return Err(ProblemError::Unsupported {
                        what: "packed UE8M0 activation scales in the wgmma GEMM".into(),
                    }
                    .into());
                }
                gemm_layouts(e, t, n, k)?;
                bench.capture(|l| l.grouped_gemm_wgmma(&a_d, &sa_d, &weights.b, &weights.sb, &mut d, &c_d, dims))?
            }
        };
        Ok(GemmUnit {
            graph,
            weights,
            _a: a_d,
            _sa: sa_d,
            _counts: c_d,
            _tiles: tiles,
            d,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// `d (E, T, N)` of the last replay (zeros in rows past the counts).
    pub fn download_d(&self, bench: &Bench) -> MoeResult<Vec<bf16>> {
        Ok(download_bf16(bench, &self.d)?)
    }
}

/// SiLU-mul-quant on resident inputs (the kernel alone; the counts prefix is computed once).
pub struct SiluUnit {
    graph: Graph,
    _y: CudaSlice<u16>,
    _prefix: CudaSlice<i32>,
    q: CudaSlice<u8>,
    s: CudaSlice<u32>,
    fmt: ScaleFormat,
}

impl std::fmt::Debug for SiluUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiluUnit")
    }
}

impl SiluUnit {
    /// `y (E, T, 2H)` and `counts`, validated like `SiluMulQuant::check`.
    pub fn new(bench: &Bench, p: &SiluMulQuant, y: &[bf16], counts: &[i32]) -> MoeResult<Self> {
        let (e, t, h) = (p.experts(), p.capacity(), p.h());
        limits::silu_mul_quant(e, t, h)?;
        check_len("y", y.len(), &[e, t, 2 * h])?;
        check_counts(counts, e, t)?;
        let s = &bench.stream;
        let y_d = upload(s, bf16_bits(y), OP)?;
        let c_d = upload(s, counts, OP)?;
        let mut prefix = alloc::<i32>(s, e + 1, OP)?;
        let mut tiles = alloc::<i32>(s, e + 1, OP)?;
        let mut q = alloc::<u8>(s, e * t * h, OP)?;
        let mut sc = alloc::<u32>(s, p.scale_shape().iter().product(), OP)?;
        bench.launcher().counts_prefix(&c_d, e, t, GEMM_BM, &mut prefix, &mut tiles)?;
        let (fmt, numerics) = (p.scale_format(), p.numerics());
        let graph = bench.capture(|l| l.silu_mul_quant(&y_d, &mut q, &mut sc, (e, t, h), &prefix, fmt, numerics))?;
        Ok(SiluUnit {
            graph,
            _y: y_d,
            _prefix: prefix,
            q,
            s: sc,
            fmt,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// `q (E, T, H)` and its scales of the last replay.
    pub fn download(&self, bench: &Bench) -> MoeResult<(Vec<u8>, ScaleBuf)> {
        let q = fetch(&bench.stream, &self.q, OP)?;
        let s = fetch(&bench.stream, &self.s, OP)?;
        sync(&bench.dev, &bench.stream, OP)?;
        Ok((q, scales_from_words(self.fmt, s)))
    }
}

/// Prepare's quantization: the gathered token-group quantization of the routed tokens into
/// `(E, T, K)` with MN-major scales (the routing is validated on the host, as the backend does;
/// the counts prefix is computed once).
pub struct PrepareUnit {
    graph: Graph,
    _x: CudaSlice<u16>,
    _gather: CudaSlice<i32>,
    _prefix: CudaSlice<i32>,
    q: CudaSlice<u8>,
    s: CudaSlice<u32>,
    fmt: ScaleFormat,
    counts: Vec<i32>,
}

impl std::fmt::Debug for PrepareUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrepareUnit")
    }
}

impl PrepareUnit {
    /// `x (M, K)` and `topk_ids (M, topk)`, validated like `Prepare::check`.
    pub fn new(bench: &Bench, p: &Prepare, x: &[bf16], topk_ids: &[i32]) -> MoeResult<Self> {
        let (m, e, t, k) = (p.tokens(), p.experts(), p.capacity(), p.k());
        let fmt = p.scale_format();
        let qp = p.quant();
        let sh = qp.scale_shape();
        let s_len: usize = sh.iter().product();
        // Empty stand-ins would fail the output checks: zero-filled outputs of the right shapes.
        let mut s0 = ScaleBuf::zeros(fmt, s_len);
        let routing = p.check(x, topk_ids, &vec![0u8; e * t * k], &s0.view_mut(), &vec![0i32; e])?;
        drop(s0);
        limits::prepare(m, k, e, t)?;
        let c0 = routing.counts().to_vec();
        let mut gather = vec![0i32; e * t];
        for ex in 0..e {
            for (r, &tok) in routing.tokens(ex).iter().enumerate() {
                gather[ex * t + r] = tok as i32;
            }
        }
        let st = &bench.stream;
        let x_d = upload(st, bf16_bits(x), OP)?;
        let g_d = upload(st, &gather, OP)?;
        let c_d = upload(st, &c0, OP)?;
        let mut prefix = alloc::<i32>(st, e + 1, OP)?;
        let mut tiles = alloc::<i32>(st, e + 1, OP)?;
        let mut q = alloc::<u8>(st, e * t * k, OP)?;
        let mut s = alloc::<u32>(st, s_len, OP)?;
        bench.launcher().counts_prefix(&c_d, e, t, GEMM_BM, &mut prefix, &mut tiles)?;
        let graph =
            bench.capture(|l| l.token_group_quant(XIn::Bf16(&x_d), m, Some(&g_d), &mut q, &mut s, (e, t, k), Some(&prefix), fmt, true))?;
        Ok(PrepareUnit {
            graph,
            _x: x_d,
            _gather: g_d,
            _prefix: prefix,
            q,
            s,
            fmt,
            counts: c0,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The routed counts.
    pub fn counts(&self) -> &[i32] {
        &self.counts
    }

    /// `a1q (E, T, K)` and its scales of the last replay.
    pub fn download(&self, bench: &Bench) -> MoeResult<(Vec<u8>, ScaleBuf)> {
        let q = fetch(&bench.stream, &self.q, OP)?;
        let s = fetch(&bench.stream, &self.s, OP)?;
        sync(&bench.dev, &bench.stream, OP)?;
        Ok((q, scales_from_words(self.fmt, s)))
    }
}

/// Finalize: the router-weighted combine of `(E, T, K)` expert outputs into `(M, K)`.
pub struct FinalizeUnit {
    graph: Graph,
    _eo: CudaSlice<u16>,
    _ids: CudaSlice<i32>,
    _rows: CudaSlice<i32>,
    _w: CudaSlice<f32>,
    out: CudaSlice<u16>,
}

impl std::fmt::Debug for FinalizeUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinalizeUnit")
    }
}

impl FinalizeUnit {
    /// Validated like `Finalize::check`.
    pub fn new(bench: &Bench, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32]) -> MoeResult<Self> {
        let (m, k, topk, e, t) = (p.tokens(), p.k(), p.topk(), p.experts(), p.capacity());
        let out0 = vec![bf16::ZERO; m * k];
        let routing = p.check(expert_out, topk_ids, topk_weights, &out0)?;
        limits::finalize(k, topk, e, t)?;
        let st = &bench.stream;
        let eo = upload(st, bf16_bits(expert_out), OP)?;
        let ids = upload(st, topk_ids, OP)?;
        let rows = upload(st, routing.rows(), OP)?;
        let w = upload(st, topk_weights, OP)?;
        let mut out = alloc::<u16>(st, m * k, OP)?;
        let graph = bench.capture(|l| l.finalize(&eo, &ids, &rows, &w, &mut out, (m, k, topk, e, t)))?;
        Ok(FinalizeUnit {
            graph,
            _eo: eo,
            _ids: ids,
            _rows: rows,
            _w: w,
            out,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// `out (M, K)` of the last replay.
    pub fn download(&self, bench: &Bench) -> MoeResult<Vec<bf16>> {
        Ok(download_bf16(bench, &self.out)?)
    }
}

/// Block quantization of bf16 weights `(E, R, C)`.
pub struct BlockQuantUnit {
    graph: Graph,
    _w: CudaSlice<u16>,
    q: CudaSlice<u8>,
    s: CudaSlice<f32>,
}

impl std::fmt::Debug for BlockQuantUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockQuantUnit")
    }
}

impl BlockQuantUnit {
    /// Validated like `BlockQuant::check`.
    pub fn new(bench: &Bench, p: &BlockQuant, w: &[bf16]) -> MoeResult<Self> {
        let (e, r, c) = (p.experts(), p.rows(), p.cols());
        let sh = p.scale_shape();
        let nblocks: usize = sh.iter().product();
        p.check(&Activation::Bf16(w), &vec![0u8; w.len()], &vec![0f32; nblocks])?;
        limits::block_quant(e, r, c)?;
        let st = &bench.stream;
        let w_d = upload(st, bf16_bits(w), OP)?;
        let mut q = alloc::<u8>(st, e * r * c, OP)?;
        let mut s = alloc::<f32>(st, nblocks, OP)?;
        let pow2 = p.pow2();
        let graph = bench.capture(|l| l.block_quant(XIn::Bf16(&w_d), &mut q, &mut s, e, r, c, pow2))?;
        Ok(BlockQuantUnit { graph, _w: w_d, q, s })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// `q (E, R, C)` and `s` of the last replay.
    pub fn download(&self, bench: &Bench) -> MoeResult<(Vec<u8>, Vec<f32>)> {
        let q = fetch(&bench.stream, &self.q, OP)?;
        let s = fetch(&bench.stream, &self.s, OP)?;
        sync(&bench.dev, &bench.stream, OP)?;
        Ok((q, s))
    }
}

/// The whole experts stage (counts prefix, GEMM1, SiLU-mul-quant, GEMM2) on resident weights and
/// activations, captured as one graph; `kernel` picks the GEMMs (packed scales run `mma.sync`).
pub struct StageUnit {
    graph: Graph,
    _weights: Weights,
    _acts: Activations,
    work: Work,
}

impl std::fmt::Debug for StageUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageUnit")
    }
}

impl StageUnit {
    /// Inputs validated like `ExpertsStage::check`.
    pub fn new(bench: &Bench, kernel: GemmKernel, p: &ExpertsStage, inputs: ExpertsInputs<'_>) -> MoeResult<Self> {
        stage::check_dims(p)?;
        stage::check_kernel(p, kernel)?;
        let st = &bench.stream;
        let mut weights = Weights::alloc(st, p)?;
        weights.upload(st, p, &inputs.w1, &inputs.w2)?;
        let mut acts = Activations::alloc(st, p)?;
        acts.upload(st, p, inputs.a1q, &inputs.a1s, inputs.counts)?;
        let mut work = Work::alloc(st, p)?;
        let graph = bench.capture(|l| stage::enqueue(l, p, kernel, &weights, &acts, &mut work))?;
        Ok(StageUnit {
            graph,
            _weights: weights,
            _acts: acts,
            work,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// `out (E, T, K)` of the last replay.
    pub fn download(&self, bench: &Bench) -> MoeResult<Vec<bf16>> {
        let out = self.work.fetch_output(&bench.stream)?;
        sync(&bench.dev, &bench.stream, OP)?;
        Ok(out)
    }
}

/// The number of 128-wide groups of `k` (a helper for callers sizing scales).
pub fn groups(k: usize) -> usize {
    k / GROUP
}
