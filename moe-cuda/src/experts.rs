//! [`CudaExperts`]: the batched experts stage with device-resident buffers, an enqueue-only
//! `apply_on_stream`, and a CUDA-graph path.
//!
//! The stage is four launches on the object's own (non-default) stream: the counts prefix,
//! GEMM1, SiLU-mul-quant, GEMM2. Every launch has a grid fixed by the shape and reads `counts`
//! on the device (clamped into `[0, T]`), and nothing in `apply_on_stream` allocates,
//! synchronizes or copies in [`CountsMode::Unchecked`], so the sequence can be captured once
//! and replayed with different device counts.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream};
use half::bf16;
use moe_core::{check_counts, check_len, DeviceError, Experts, ExpertsInputs, ExpertsWorkspace, MoeResult, GROUP};

use crate::backend::{int_dims, CudaBackend};
use crate::device::{driver_err, Device};
use crate::launch::{Launcher, GEMM_BM};
use crate::memory::{alloc, bf16_bits, bf16_bits_mut, download, scale_buf_words_mut, scale_words, sync, upload_into};

/// How `apply_on_stream` treats the device-resident `counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountsMode {
    /// Copy `counts` back to the host (a synchronization) and return the CPU's
    /// `ProblemError::Count` for any value outside `[0, T]`, before any launch.
    Checked,
    /// Trust the device: every kernel clamps each count into `[0, T]`. No host round trip;
    /// the mode a CUDA graph captures.
    Unchecked,
}

/// The experts stage with its buffers on the device.
///
/// Field order matters: the graph is dropped before the buffers it references.
#[derive(Debug)]
pub struct CudaExperts {
    graph: Option<GraphHolder>,
    p: Experts,
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    a1q: CudaSlice<u8>,
    a1s: CudaSlice<u32>,
    w1: CudaSlice<u8>,
    w1s: CudaSlice<f32>,
    w2: CudaSlice<u8>,
    w2s: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    h1: CudaSlice<u16>,
    q2: CudaSlice<u8>,
    s2: CudaSlice<u32>,
    out: CudaSlice<u16>,
    prefix: CudaSlice<i32>,
    tile_prefix: CudaSlice<i32>,
}

struct GraphHolder(CudaGraph);

impl std::fmt::Debug for GraphHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaGraph")
    }
}

const OP: &str = "experts";

impl CudaExperts {
    /// Zero-initialized device buffers for `p` on a new stream of `backend`'s GPU.
    pub fn new(backend: &CudaBackend, p: Experts) -> MoeResult<Self> {
        let stream = backend.dev.ctx().new_stream().map_err(driver_err("stream creation"))?;
        Self::with_stream(backend.dev.clone(), stream, p)
    }

    pub(crate) fn with_stream(dev: Arc<Device>, stream: Arc<CudaStream>, p: Experts) -> MoeResult<Self> {
        let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
        int_dims("a1q", &[e * t, k, 2 * i])?;
        let s = &stream;
        let a1s_len: usize = p.a1s_shape().iter().product();
        let s2_len: usize = p.silu().scale_shape().iter().product();
        let w1s_len: usize = p.gemm1().sb_shape().iter().product();
        let w2s_len: usize = p.gemm2().sb_shape().iter().product();
        // Compile and load every program the stage needs now: nothing may compile inside a
        // graph capture.
        for id in [
            crate::kernels::KernelId::Counts,
            crate::kernels::KernelId::Gemm,
            crate::kernels::KernelId::Silu,
        ] {
            dev.module(id)?;
        }
        Ok(Self {
            graph: None,
            a1q: alloc(s, e * t * k, OP)?,
            a1s: alloc(s, a1s_len, OP)?,
            w1: alloc(s, e * 2 * i * k, OP)?,
            w1s: alloc(s, w1s_len, OP)?,
            w2: alloc(s, e * k * i, OP)?,
            w2s: alloc(s, w2s_len, OP)?,
            counts: alloc(s, e, OP)?,
            h1: alloc(s, e * t * 2 * i, OP)?,
            q2: alloc(s, e * t * i, OP)?,
            s2: alloc(s, s2_len, OP)?,
            out: alloc(s, e * t * k, OP)?,
            prefix: alloc(s, e + 1, OP)?,
            tile_prefix: alloc(s, e + 1, OP)?,
            p,
            dev,
            stream,
        })
    }

    /// The problem.
    pub fn problem(&self) -> &Experts {
        &self.p
    }

    /// The stream every operation of this object is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uploads all inputs, validated exactly like the CPU's `Experts::check` (the `out` check
    /// aside).
    pub fn upload_inputs(&mut self, inputs: &ExpertsInputs<'_>) -> MoeResult<()> {
        let out_len = self.out.len();
        // Validate with a zero-length-free stand-in for `out` of the right length.
        let fake_out = vec![bf16::ZERO; out_len];
        self.p
            .check(inputs.a1q, &inputs.a1s, &inputs.w1, &inputs.w2, inputs.counts, &fake_out)?;
        let s = &self.stream;
        upload_into(s, inputs.a1q, &mut self.a1q, OP)?;
        upload_into(s, scale_words(&inputs.a1s), &mut self.a1s, OP)?;
        upload_into(s, inputs.w1.q, &mut self.w1, OP)?;
        upload_into(s, inputs.w1.s, &mut self.w1s, OP)?;
        upload_into(s, inputs.w2.q, &mut self.w2, OP)?;
        upload_into(s, inputs.w2.s, &mut self.w2s, OP)?;
        upload_into(s, inputs.counts, &mut self.counts, OP)?;
        Ok(())
    }

    /// Overwrites the device counts with any `E` values (not range-checked: the device-resident
    /// mode clamps, the checked mode reports).
    pub fn set_counts(&mut self, counts: &[i32]) -> MoeResult<()> {
        check_len("counts", counts.len(), &[self.p.experts()])?;
        upload_into(&self.stream, counts, &mut self.counts, OP)?;
        Ok(())
    }

    /// Uploads the caller's output buffer (rows past `counts` keep these values).
    pub fn upload_output(&mut self, out: &[bf16]) -> MoeResult<()> {
        check_len("out", out.len(), &self.p.workspace_shapes().output)?;
        upload_into(&self.stream, bf16_bits(out), &mut self.out, OP)?;
        Ok(())
    }

    /// Uploads the intermediates (so that their rows past `counts` round-trip unchanged).
    pub fn upload_workspace(&mut self, ws: &ExpertsWorkspace) -> MoeResult<()> {
        self.check_ws(ws)?;
        upload_into(&self.stream, bf16_bits(&ws.h1), &mut self.h1, OP)?;
        upload_into(&self.stream, &ws.q2, &mut self.q2, OP)?;
        upload_into(&self.stream, scale_words(&ws.s2.view()), &mut self.s2, OP)?;
        Ok(())
    }

    fn check_ws(&self, ws: &ExpertsWorkspace) -> MoeResult<()> {
        let (e, t, i) = (self.p.experts(), self.p.capacity(), self.p.i());
        check_len("h1", ws.h1.len(), &[e, t, 2 * i])?;
        check_len("q2", ws.q2.len(), &[e, t, i])?;
        let sh = self.p.silu().scale_shape();
        ws.s2.view().check("s2", self.p.scale_format(), sh.iter().product(), &sh)?;
        Ok(())
    }

    /// Enqueues the stage on [`Self::stream`]. In `Checked` mode the counts are first copied
    /// back and validated (a synchronization; not capturable).
    pub fn apply_on_stream(&mut self, mode: CountsMode) -> MoeResult<()> {
        let (e, t, k, i) = (self.p.experts(), self.p.capacity(), self.p.k(), self.p.i());
        if mode == CountsMode::Checked {
            let mut host = vec![0i32; e];
            download(&self.stream, &self.counts, &mut host, OP)?;
            check_counts(&host, e, t)?;
        }
        let l = Launcher {
            dev: &self.dev,
            stream: &self.stream,
        };
        let fmt = self.p.scale_format();
        l.counts_prefix(&self.counts, e, t, GEMM_BM, &mut self.prefix, &mut self.tile_prefix)?;
        l.grouped_gemm(
            &self.a1q,
            &self.a1s,
            fmt,
            &self.w1,
            &self.w1s,
            &mut self.h1,
            &self.counts,
            &self.tile_prefix,
            (e, t, 2 * i, k),
            true,
        )?;
        l.silu_mul_quant(
            &self.h1,
            &mut self.q2,
            &mut self.s2,
            (e, t, i),
            &self.prefix,
            fmt,
            self.p.numerics(),
        )?;
        l.grouped_gemm(
            &self.q2,
            &self.s2,
            fmt,
            &self.w2,
            &self.w2s,
            &mut self.out,
            &self.counts,
            &self.tile_prefix,
            (e, t, k, i),
            true,
        )?;
        debug_assert!(k % GROUP == 0);
        Ok(())
    }

    /// Captures `apply_on_stream(Unchecked)` into a CUDA graph held by this object (replacing
    /// any earlier one). Replays read whatever `counts` the device holds then.
    pub fn capture_graph(&mut self) -> MoeResult<()> {
        self.graph = None;
        sync(&self.dev, &self.stream, OP)?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("graph capture"))?;
        let enq = self.apply_on_stream(CountsMode::Unchecked);
        let end = self.stream.end_capture(CUgraphInstantiate_flags(0));
        enq?;
        let graph = end.map_err(driver_err("graph capture"))?;
        let graph = graph.ok_or(DeviceError::Driver {
            op: "graph capture",
            detail: "the capture produced no graph".into(),
        })?;
        self.graph = Some(GraphHolder(graph));
        Ok(())
    }

    /// Whether a graph has been captured.
    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Launches the captured graph on [`Self::stream`] (enqueue only).
    pub fn replay_graph(&self) -> MoeResult<()> {
        let g = self.graph.as_ref().ok_or(DeviceError::Driver {
            op: "graph replay",
            detail: "no graph was captured".into(),
        })?;
        g.0.launch().map_err(driver_err("graph replay"))?;
        Ok(())
    }

    /// Waits for everything enqueued on the stream and reports any asynchronous error.
    pub fn synchronize(&self) -> MoeResult<()> {
        sync(&self.dev, &self.stream, OP)?;
        Ok(())
    }

    /// Copies the output `(E, T, K)` back (synchronizes first).
    pub fn download_output(&self, out: &mut [bf16]) -> MoeResult<()> {
        check_len("out", out.len(), &self.p.workspace_shapes().output)?;
        self.synchronize()?;
        download(&self.stream, &self.out, bf16_bits_mut(out), OP)?;
        Ok(())
    }

    /// Copies the intermediates back into `ws` (synchronizes first).
    pub fn download_workspace(&self, ws: &mut ExpertsWorkspace) -> MoeResult<()> {
        self.check_ws(ws)?;
        self.synchronize()?;
        download(&self.stream, &self.h1, bf16_bits_mut(&mut ws.h1), OP)?;
        download(&self.stream, &self.q2, &mut ws.q2, OP)?;
        download(&self.stream, &self.s2, scale_buf_words_mut(&mut ws.s2), OP)?;
        Ok(())
    }
}
