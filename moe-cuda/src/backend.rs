//! [`CudaBackend`]: every operation of SPEC §5 on host slices, run on the GPU.
//!
//! Each entry point validates its arguments with the same moe-core `check*` method as the CPU
//! reference (so bad input gives the same error, before any allocation or launch), then the
//! dimensions against what the kernels can index (`limits`), uploads its inputs and its in-out
//! outputs, and launches. Downloads are staged: every output is first copied into a host
//! temporary, the stream is synchronized, and only then are the caller's buffers written, all
//! of them or, on any error, none (never `q` without `s`). Rows past `counts` are never written
//! on the device, and the upload of the caller's buffer makes them round-trip unchanged.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use moe_core::{
    Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, BlockQuant, Capabilities, DeviceError, ExpertsInputs, ExpertsStage,
    ExpertsWorkspace, Finalize, Gate, GemmInputs, GroupedGemm, MoeResult, Prepare, Route, ScaleLayout, ScalesMut, SiluMulQuant,
    TokenGroupQuant, WeightsRef,
};

use crate::device::{driver_err, Device};
use crate::kernels::GemmKernel;
use crate::launch::{Launcher, XIn, GEMM_BM};
use crate::limits;
use crate::memory::{alloc, bf16_bits, bf16_bits_mut, commit1, commit2, fetch, scale_words, scale_words_mut, sync, upload};
use crate::stage::{self, Activations, Weights, Work};

mod route;
mod wgmma;

/// A grouped GEMM's operands on the device: `a`, its scales (as words), `b`, its scales, the
/// counts, and `d` (uploaded too, so that rows past the counts round-trip unchanged).
struct GemmOperands {
    a: CudaSlice<u8>,
    sa: CudaSlice<u32>,
    b: CudaSlice<u8>,
    sb: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    d: CudaSlice<u16>,
}

impl GemmOperands {
    /// Uploads checked `inputs` and `d` on `stream` (the caller holds the backend's lock).
    fn upload(stream: &Arc<CudaStream>, inputs: GemmInputs<'_>, d: &[bf16], op: &'static str) -> Result<Self, DeviceError> {
        let GemmInputs {
            a,
            sa,
            b: WeightsRef { q: b, s: sb },
            counts,
        } = inputs;
        Ok(GemmOperands {
            a: upload(stream, a, op)?,
            sa: upload(stream, scale_words(&sa), op)?,
            b: upload(stream, b, op)?,
            sb: upload(stream, sb, op)?,
            counts: upload(stream, counts, op)?,
            d: upload(stream, bf16_bits(d), op)?,
        })
    }
}

/// The CUDA backend: one GPU (an H100 or H200), one stream, kernels compiled on first use.
///
/// Host-slice calls are serialized by an internal lock; each is synchronous. Each writes its
/// outputs only once the whole call has succeeded: on any error, input or device, the caller's
/// buffers hold what they held before (the downloads are staged in host temporaries).
#[derive(Debug)]
pub struct CudaBackend {
    pub(crate) dev: Arc<Device>,
    pub(crate) stream: Arc<CudaStream>,
    lock: Mutex<()>,
}

enum XBuf {
    Bf16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
}

impl XBuf {
    fn upload(stream: &Arc<CudaStream>, x: &Activation<'_>, op: &'static str) -> Result<Self, DeviceError> {
        Ok(match x {
            Activation::Bf16(v) => XBuf::Bf16(upload(stream, bf16_bits(v), op)?),
            Activation::F32(v) => XBuf::F32(upload(stream, v, op)?),
        })
    }
    fn as_in(&self) -> XIn<'_> {
        match self {
            XBuf::Bf16(b) => XIn::Bf16(b),
            XBuf::F32(b) => XIn::F32(b),
        }
    }
}

impl CudaBackend {
    /// The backend on GPU 0. No driver, no GPU or a GPU other than compute capability 9.0 is
    /// [`DeviceError::NoDevice`] (never a panic).
    pub fn new() -> Result<Self, DeviceError> {
        Self::with_ordinal(0)
    }

    /// The backend on GPU `ordinal`.
    pub fn with_ordinal(ordinal: usize) -> Result<Self, DeviceError> {
        let dev = Device::open(ordinal)?;
        let stream = dev.ctx().new_stream().map_err(driver_err("stream creation"))?;
        Ok(Self {
            dev,
            stream,
            lock: Mutex::new(()),
        })
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        self.dev.name()
    }

    /// Compiles and loads every program of [`KernelId::ALL`](crate::KernelId::ALL) now
    /// (otherwise each compiles at first use); the self-test program is not one of them.
    pub fn compile_all(&self) -> Result<(), DeviceError> {
        for id in crate::kernels::KernelId::ALL {
            self.dev.module(id)?;
        }
        Ok(())
    }

    pub(crate) fn launcher(&self) -> Launcher<'_> {
        Launcher {
            dev: &self.dev,
            stream: &self.stream,
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GEMM with the diagnostic variant `chain = false` (each k32 tensor-core partial from
    /// zero, summed in f32) selectable; the trait method uses `chain = true` (SPEC §5.3).
    #[doc(hidden)]
    pub fn grouped_gemm_variant(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16], chain: bool) -> MoeResult<()> {
        const OP: &str = "grouped gemm";
        p.check(&inputs, d)?;
        let (e, t, n, k) = (p.experts(), p.capacity(), p.n(), p.k());
        limits::grouped_gemm(e, t, n, k)?;
        let _g = self.guard();
        let s = &self.stream;
        let mut g = GemmOperands::upload(s, inputs, d, OP)?;
        let (_prefix, tiles) = self.counts_prefix(&g.counts, e, t, OP)?;
        self.launcher().grouped_gemm(
            &g.a,
            &g.sa,
            p.scale_format(),
            &g.b,
            &g.sb,
            &mut g.d,
            &g.counts,
            &tiles,
            (e, t, n, k),
            chain,
        )?;
        commit1(|| fetch(s, &g.d, OP), bf16_bits_mut(d), || sync(&self.dev, s, OP))?;
        Ok(())
    }

    /// `exp_f32` of the f32 inputs with bits `start..start + out.len()`, on the GPU, reusing
    /// `scratch` (grown as needed). Test support for the exhaustive self-test: compiles and
    /// launches the self-test program, which the backend itself never uses.
    #[doc(hidden)]
    pub fn exp_f32_range(&self, start: u32, out: &mut [f32], scratch: &mut Option<CudaSlice<f32>>) -> MoeResult<()> {
        const OP: &str = "exp self-test";
        let _g = self.guard();
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        if scratch.as_ref().is_none_or(|b| b.len() != n) {
            *scratch = Some(alloc::<f32>(&self.stream, n, OP)?);
        }
        let buf = scratch.as_mut().expect("allocated above");
        self.launcher().exp_f32_range(start, n, buf)?;
        commit1(|| fetch(&self.stream, buf, OP), out, || sync(&self.dev, &self.stream, OP))?;
        Ok(())
    }

    /// The E4M3 encoding (`cvt.rn.satfinite.e4m3x2.f32`) of the f32 inputs with bits
    /// `start..start + out.len()`. Test support (the self-test program).
    #[doc(hidden)]
    pub fn e4m3_range(&self, start: u32, out: &mut [u8]) -> MoeResult<()> {
        const OP: &str = "e4m3 self-test";
        let _g = self.guard();
        if out.is_empty() {
            return Ok(());
        }
        let mut buf = alloc::<u8>(&self.stream, out.len(), OP)?;
        self.launcher().e4m3_range(start, out.len(), &mut buf)?;
        commit1(|| fetch(&self.stream, &buf, OP), out, || sync(&self.dev, &self.stream, OP))?;
        Ok(())
    }

    /// The device's `vllm_ceil_pow2_bf16` of every 16-bit pattern, as bf16 bits. Test support
    /// (the self-test program).
    #[doc(hidden)]
    pub fn vllm_ceil_table(&self) -> MoeResult<Vec<u16>> {
        const OP: &str = "vllm ceil self-test";
        let _g = self.guard();
        let mut buf = alloc::<u16>(&self.stream, 65536, OP)?;
        self.launcher().vllm_ceil_table(&mut buf)?;
        let out = fetch(&self.stream, &buf, OP)?;
        sync(&self.dev, &self.stream, OP)?;
        Ok(out)
    }

    /// The prefix of the clamped `counts` over `e` experts of capacity `t` and the prefix of
    /// their `GEMM_BM`-row tiles (`e + 1` entries each), enqueued on the stream.
    fn counts_prefix(&self, c_d: &CudaSlice<i32>, e: usize, t: usize, op: &'static str) -> MoeResult<(CudaSlice<i32>, CudaSlice<i32>)> {
        let mut prefix = alloc::<i32>(&self.stream, e + 1, op)?;
        let mut tiles = alloc::<i32>(&self.stream, e + 1, op)?;
        self.launcher().counts_prefix(c_d, e, t, GEMM_BM, &mut prefix, &mut tiles)?;
        Ok((prefix, tiles))
    }

    /// The second half of a live-rows quantizer (batched token-group quant, SiLU-mul-quant,
    /// prepare), called with the lock held once its inputs are on the device: uploads `counts`
    /// and the in-out outputs `q` and `s` (so that rows past `counts` round-trip unchanged),
    /// enqueues the counts prefix, launches `run(launcher, q, s, prefix)`, and writes the
    /// caller's `q` and `s` only once both downloads succeeded.
    fn live_rows(
        &self,
        op: &'static str,
        (e, t): (usize, usize),
        counts: &[i32],
        q: &mut [u8],
        mut s: ScalesMut<'_>,
        run: impl FnOnce(&Launcher<'_>, &mut CudaSlice<u8>, &mut CudaSlice<u32>, &CudaSlice<i32>) -> Result<(), DeviceError>,
    ) -> MoeResult<()> {
        let st = &self.stream;
        let c_d = upload(st, counts, op)?;
        let mut q_d = upload(st, q, op)?;
        let sw = scale_words_mut(&mut s);
        let mut s_d = upload(st, sw, op)?;
        let (prefix, _tiles) = self.counts_prefix(&c_d, e, t, op)?;
        run(&self.launcher(), &mut q_d, &mut s_d, &prefix)?;
        commit2(|| fetch(st, &q_d, op), q, || fetch(st, &s_d, op), sw, || sync(&self.dev, st, op))?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        "cuda"
    }

    fn token_group_quant(&self, p: &TokenGroupQuant, x: Activation<'_>, q: &mut [u8], mut s: ScalesMut<'_>) -> MoeResult<()> {
        const OP: &str = "token-group quant";
        p.check(&x, q, &s)?;
        let (rows, k) = (p.rows(), p.k());
        limits::token_group_quant(rows, k)?;
        if rows == 0 {
            return Ok(());
        }
        let _g = self.guard();
        let st = &self.stream;
        let xb = XBuf::upload(st, &x, OP)?;
        let mut q_d = alloc::<u8>(st, q.len(), OP)?;
        let sw = scale_words_mut(&mut s);
        let mut s_d = alloc::<u32>(st, sw.len(), OP)?;
        // Every row is live: one "expert" of `rows` rows, no prefix.
        self.launcher().token_group_quant(
            xb.as_in(),
            rows,
            None,
            &mut q_d,
            &mut s_d,
            (1, rows, k),
            None,
            p.scale_format(),
            p.layout() == ScaleLayout::MnMajor,
        )?;
        commit2(|| fetch(st, &q_d, OP), q, || fetch(st, &s_d, OP), sw, || sync(&self.dev, st, OP))?;
        Ok(())
    }

    fn batched_token_group_quant(&self, p: &BatchedTokenGroupQuant, x: Activation, c: &[i32], q: &mut [u8], s: ScalesMut) -> MoeResult<()> {
        const OP: &str = "batched token-group quant";
        p.check(&x, c, q, &s)?;
        let (e, t, k) = (p.experts(), p.capacity(), p.k());
        limits::batched_quant(e, t, k)?;
        let _g = self.guard();
        let xb = XBuf::upload(&self.stream, &x, OP)?;
        self.live_rows(OP, (e, t), c, q, s, |l, q_d, s_d, prefix| {
            l.token_group_quant(xb.as_in(), e * t, None, q_d, s_d, (e, t, k), Some(prefix), p.scale_format(), true)
        })
    }

    fn block_quant(&self, p: &BlockQuant, w: Activation<'_>, q: &mut [u8], s: &mut [f32]) -> MoeResult<()> {
        const OP: &str = "block quant";
        p.check(&w, q, s)?;
        let (e, r, c) = (p.experts(), p.rows(), p.cols());
        limits::block_quant(e, r, c)?;
        let _g = self.guard();
        let st = &self.stream;
        let wb = XBuf::upload(st, &w, OP)?;
        let mut q_d = alloc::<u8>(st, q.len(), OP)?;
        let mut s_d = alloc::<f32>(st, s.len(), OP)?;
        self.launcher().block_quant(wb.as_in(), &mut q_d, &mut s_d, e, r, c, p.pow2())?;
        commit2(|| fetch(st, &q_d, OP), q, || fetch(st, &s_d, OP), s, || sync(&self.dev, st, OP))?;
        Ok(())
    }

    fn silu_mul_quant(&self, p: &SiluMulQuant, y: &[bf16], counts: &[i32], q: &mut [u8], s: ScalesMut<'_>) -> MoeResult<()> {
        const OP: &str = "silu-mul-quant";
        p.check(y, counts, q, &s)?;
        let (e, t, h) = (p.experts(), p.capacity(), p.h());
        limits::silu_mul_quant(e, t, h)?;
        let _g = self.guard();
        let y_d = upload(&self.stream, bf16_bits(y), OP)?;
        self.live_rows(OP, (e, t), counts, q, s, |l, q_d, s_d, prefix| {
            l.silu_mul_quant(&y_d, q_d, s_d, (e, t, h), prefix, p.scale_format(), p.numerics())
        })
    }

    fn grouped_gemm(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        self.grouped_gemm_variant(p, inputs, d, true)
    }

    fn prepare(&self, p: &Prepare, x: &[bf16], topk_ids: &[i32], a1q: &mut [u8], a1s: ScalesMut<'_>, counts: &mut [i32]) -> MoeResult<()> {
        const OP: &str = "prepare";
        // Routing (validation, dedup, overflow) on the host, exactly as the reference does.
        let routing = p.check(x, topk_ids, a1q, &a1s, counts)?;
        let (m, e, t, k) = (p.tokens(), p.experts(), p.capacity(), p.k());
        limits::prepare(m, k, e, t)?;
        let live: usize = routing.counts().iter().map(|&c| c as usize).sum();
        if live > 0 {
            // gather[e*T + r] = the token in row r of expert e; dead rows point at token 0 and
            // are never visited.
            let mut gather = vec![0i32; e * t];
            for ex in 0..e {
                for (r, &tok) in routing.tokens(ex).iter().enumerate() {
                    gather[ex * t + r] = tok as i32;
                }
            }
            let _g = self.guard();
            let x_d = upload(&self.stream, bf16_bits(x), OP)?;
            let g_d = upload(&self.stream, &gather, OP)?;
            self.live_rows(OP, (e, t), routing.counts(), a1q, a1s, |l, q_d, s_d, prefix| {
                let x = XIn::Bf16(&x_d);
                l.token_group_quant(x, m, Some(&g_d), q_d, s_d, (e, t, k), Some(prefix), p.scale_format(), true)
            })?;
        }
        counts.copy_from_slice(routing.counts());
        Ok(())
    }

    fn finalize(&self, p: &Finalize, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &mut [bf16]) -> MoeResult<()> {
        const OP: &str = "finalize";
        let routing = p.check(expert_out, topk_ids, topk_weights, out)?;
        let (m, k, topk, e, t) = (p.tokens(), p.k(), p.topk(), p.experts(), p.capacity());
        limits::finalize(k, topk, e, t)?;
        if m == 0 {
            return Ok(());
        }
        let _g = self.guard();
        let st = &self.stream;
        let eo_d = upload(st, bf16_bits(expert_out), OP)?;
        let ids_d = upload(st, topk_ids, OP)?;
        let rows_d = upload(st, routing.rows(), OP)?;
        let w_d = upload(st, topk_weights, OP)?;
        let mut out_d = alloc::<u16>(st, out.len(), OP)?;
        self.launcher()
            .finalize(&eo_d, &ids_d, &rows_d, &w_d, &mut out_d, (m, k, topk, e, t))?;
        commit1(|| fetch(st, &out_d, OP), bf16_bits_mut(out), || sync(&self.dev, st, OP))?;
        Ok(())
    }

    fn route(&self, p: &Route, logits: &[f32], bias: Option<&[f32]>, topk_ids: &mut [i32], topk_weights: &mut [f32]) -> MoeResult<()> {
        route::run(self, p, logits, bias, topk_ids, topk_weights)
    }

    fn gate(&self, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
        route::gate(self, p, x, w, logits)
    }
}

impl BatchedExperts for CudaBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chunking: false,
            expert_map: false,
            packed_ue8m0_act_scales: true,
        }
    }

    /// Runs the three stages device-resident (one upload, one download) through the same
    /// stage code as [`ResidentExperts`](crate::ResidentExperts), and copies the intermediates into
    /// `ws`.
    ///
    /// A `ws` of the wrong shapes is replaced by one of the right shapes (like the CPU's);
    /// this is decided from the shapes, without allocating. `ws` and `out` are written only
    /// once every download succeeded: on any error both are left as they were.
    fn apply(&self, p: &ExpertsStage, inputs: ExpertsInputs<'_>, ws: &mut ExpertsWorkspace, out: &mut [bf16]) -> MoeResult<()> {
        const OP: &str = "experts";
        p.check(&inputs, out)?;
        stage::check_dims(p)?;
        let ws_fits = stage::check_workspace(p, ws).is_ok();
        let _g = self.guard();
        let s = &self.stream;
        let mut weights = Weights::alloc(s, p)?;
        weights.upload(s, p, &inputs.w1, &inputs.w2)?;
        let mut acts = Activations::alloc(s, p)?;
        acts.upload(s, p, inputs.a1q, &inputs.a1s, inputs.counts)?;
        let mut work = Work::alloc(s, p)?;
        if ws_fits {
            // Otherwise the intermediates start as the zeros of a fresh workspace.
            work.upload_workspace(s, p, ws)?;
        }
        work.upload_output(s, p, out)?;
        stage::enqueue(&self.launcher(), p, GemmKernel::MmaSync, &weights, &acts, &mut work)?;
        sync(&self.dev, s, OP)?;
        let host_ws = work.fetch_workspace(s)?;
        let host_out = work.fetch_output(s)?;
        sync(&self.dev, s, OP)?;
        if !ws_fits {
            *ws = ExpertsWorkspace::new(p);
        }
        host_ws.copy_into(ws);
        out.copy_from_slice(&host_out);
        Ok(())
    }
}
