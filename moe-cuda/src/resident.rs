//! [`ResidentExperts`]: the batched experts stage with device-resident buffers, weights uploaded
//! once, activations per step, an enqueue-only `apply_on_stream`, and a CUDA-graph path.
//!
//! The stage is four launches on the object's own (non-default) stream: the counts prefix,
//! GEMM1, SiLU-mul-quant, GEMM2 (the shared `stage` module). Every launch has a grid fixed by
//! the shape and reads `counts` on the device (clamped into `[0, T]`), and nothing in
//! `apply_on_stream` allocates, synchronizes or copies in [`CountsMode::Unchecked`], so the
//! sequence can be captured once and replayed with different device counts, activations or
//! weights (uploads go into the same buffers).
//!
//! This module depends on the backend (to be built from one), never the reverse.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};
use half::bf16;
use moe_core::{
    check_counts, check_len, DeviceError, ExpertsInputs, ExpertsStage, ExpertsWorkspace, MoeResult, ProblemError, Scales, WeightsRef,
};

use crate::backend::CudaBackend;
use crate::device::{driver_err, Device};
use crate::kernels::{GemmKernel, KernelId};
use crate::launch::Launcher;
use crate::memory::{fetch, sync};
use crate::stage::{self, Activations, Weights, Work};

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
/// Typical use: [`CudaBackend::experts`] (or [`ResidentExperts::new`]), [`upload_weights`] once,
/// then per step either [`step`] (host activations in, host output back), or
/// [`upload_activations`] + [`apply_on_stream`] / [`replay_graph`] + [`download_output`].
///
/// [`upload_weights`]: ResidentExperts::upload_weights
/// [`step`]: ResidentExperts::step
/// [`upload_activations`]: ResidentExperts::upload_activations
/// [`apply_on_stream`]: ResidentExperts::apply_on_stream
/// [`replay_graph`]: ResidentExperts::replay_graph
/// [`download_output`]: ResidentExperts::download_output
///
/// Field order matters: the graph is dropped before the buffers it references.
#[derive(Debug)]
pub struct ResidentExperts {
    graph: Option<GraphHolder>,
    p: ExpertsStage,
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    weights: Weights,
    has_weights: bool,
    acts: Activations,
    work: Work,
    kernel: GemmKernel,
}

struct GraphHolder(CudaGraph);

impl std::fmt::Debug for GraphHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaGraph")
    }
}

const OP: &str = "experts";

impl CudaBackend {
    /// The experts stage for `p` on this backend's GPU, on a new stream; same as
    /// [`ResidentExperts::new`].
    pub fn experts(&self, p: ExpertsStage) -> MoeResult<ResidentExperts> {
        ResidentExperts::new(self, p)
    }
}

impl ResidentExperts {
    /// Zero-initialized device buffers for `p` on a new stream of `backend`'s GPU. Compiles the
    /// stage's kernels now (nothing may compile inside a graph capture).
    pub fn new(backend: &CudaBackend, p: ExpertsStage) -> MoeResult<Self> {
        stage::check_dims(&p)?;
        let dev = backend.dev.clone();
        let stream = dev.ctx().new_stream().map_err(driver_err("stream creation"))?;
        for id in [KernelId::Counts, KernelId::Gemm, KernelId::Silu] {
            dev.module(id)?;
        }
        Ok(Self {
            graph: None,
            weights: Weights::alloc(&stream, &p)?,
            has_weights: false,
            acts: Activations::alloc(&stream, &p)?,
            work: Work::alloc(&stream, &p)?,
            kernel: GemmKernel::MmaSync,
            p,
            dev,
            stream,
        })
    }

    /// Runs the stage's two GEMMs with `kernel` from now on (the default is
    /// [`GemmKernel::MmaSync`], within SPEC §5.3's bound). [`GemmKernel::Wgmma`] is about 2.4x
    /// faster on DeepSeek-V3 decode shapes and has its own, looser bound
    /// ([`C_WGMMA`](crate::C_WGMMA)); with packed UE8M0 scales the stage keeps `mma.sync`.
    /// Drops a captured graph (capture again). Errors: the TMA limit the shape breaks, before
    /// anything changes.
    pub fn set_gemm_kernel(&mut self, kernel: GemmKernel) -> MoeResult<()> {
        stage::check_kernel(&self.p, kernel)?;
        if kernel == GemmKernel::Wgmma {
            self.dev.module(KernelId::GemmWgmma)?;
        }
        self.kernel = kernel;
        self.graph = None;
        Ok(())
    }

    /// The GEMM kernel the stage runs.
    pub fn gemm_kernel(&self) -> GemmKernel {
        self.kernel
    }

    /// The problem.
    pub fn problem(&self) -> &ExpertsStage {
        &self.p
    }

    /// The stream every operation of this object is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uploads `w1 (E, 2I, K)` and `w2 (E, K, I)` with their scales, validated like
    /// `ExpertsStage::check`. They stay resident for every later step (and graph replay) until the
    /// next call.
    pub fn upload_weights(&mut self, w1: WeightsRef<'_>, w2: WeightsRef<'_>) -> MoeResult<()> {
        self.weights.upload(&self.stream, &self.p, &w1, &w2)?;
        self.has_weights = true;
        Ok(())
    }

    /// Whether [`Self::upload_weights`] has succeeded (before it, the weights are zeros).
    pub fn has_weights(&self) -> bool {
        self.has_weights
    }

    /// Uploads one step's activations `a1q (E, T, K)`, their scales and `counts`, validated
    /// like `ExpertsStage::check` (counts included: use [`Self::set_counts`] for unchecked values).
    pub fn upload_activations(&mut self, a1q: &[u8], a1s: Scales<'_>, counts: &[i32]) -> MoeResult<()> {
        self.acts.upload(&self.stream, &self.p, a1q, &a1s, counts)
    }

    /// Uploads weights and activations: [`Self::upload_weights`] then
    /// [`Self::upload_activations`].
    pub fn upload_inputs(&mut self, inputs: &ExpertsInputs<'_>) -> MoeResult<()> {
        self.upload_weights(inputs.w1, inputs.w2)?;
        self.upload_activations(inputs.a1q, inputs.a1s, inputs.counts)
    }

    /// Overwrites the device counts with any `E` values (not range-checked: the device-resident
    /// mode clamps, the checked mode reports).
    pub fn set_counts(&mut self, counts: &[i32]) -> MoeResult<()> {
        self.acts.set_counts(&self.stream, &self.p, counts)
    }

    /// Uploads the caller's output buffer (rows past `counts` keep these values).
    pub fn upload_output(&mut self, out: &[bf16]) -> MoeResult<()> {
        self.work.upload_output(&self.stream, &self.p, out)
    }

    /// Uploads the intermediates (so that their rows past `counts` round-trip unchanged).
    pub fn upload_workspace(&mut self, ws: &ExpertsWorkspace) -> MoeResult<()> {
        self.work.upload_workspace(&self.stream, &self.p, ws)
    }

    /// One step on the resident weights: uploads the activations and `out` (whose rows past
    /// `counts` come back unchanged), runs the stage and downloads the output into `out`.
    ///
    /// Every input is validated before anything is uploaded. `out` is written only when the
    /// whole step succeeded (the download is staged in a host buffer first). Calling it before
    /// [`Self::upload_weights`] is an error.
    pub fn step(&mut self, a1q: &[u8], a1s: Scales<'_>, counts: &[i32], out: &mut [bf16]) -> MoeResult<()> {
        if !self.has_weights {
            return Err(ProblemError::Unsupported {
                what: "ResidentExperts::step before upload_weights".into(),
            }
            .into());
        }
        check_len("out", out.len(), &self.p.workspace_shapes().output)?;
        self.upload_activations(a1q, a1s, counts)?;
        self.upload_output(out)?;
        // The counts were validated on the host just now.
        self.apply_on_stream(CountsMode::Unchecked)?;
        self.download_output(out)
    }

    /// Enqueues the stage on [`Self::stream`]. In `Checked` mode the counts are first copied
    /// back and validated (a synchronization; not capturable).
    pub fn apply_on_stream(&mut self, mode: CountsMode) -> MoeResult<()> {
        if mode == CountsMode::Checked {
            let host = fetch(&self.stream, &self.acts.counts, OP)?;
            check_counts(&host[..self.p.experts()], self.p.experts(), self.p.capacity())?;
        }
        let l = Launcher {
            dev: &self.dev,
            stream: &self.stream,
        };
        stage::enqueue(&l, &self.p, self.kernel, &self.weights, &self.acts, &mut self.work)?;
        Ok(())
    }

    /// Captures `apply_on_stream(Unchecked)` into a CUDA graph held by this object (replacing
    /// any earlier one). Replays read whatever weights, activations and `counts` the device
    /// holds then.
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

    /// Copies the output `(E, T, K)` back (synchronizes first). `out` is written only if the
    /// download and the synchronization succeeded.
    pub fn download_output(&self, out: &mut [bf16]) -> MoeResult<()> {
        check_len("out", out.len(), &self.p.workspace_shapes().output)?;
        self.synchronize()?;
        let host = self.work.fetch_output(&self.stream)?;
        self.synchronize()?;
        out.copy_from_slice(&host);
        Ok(())
    }

    /// Copies the intermediates back into `ws` (synchronizes first). Either all three of
    /// `h1`, `q2`, `s2` are written or, on any error, none is.
    pub fn download_workspace(&self, ws: &mut ExpertsWorkspace) -> MoeResult<()> {
        stage::check_workspace(&self.p, ws)?;
        self.synchronize()?;
        let host = self.work.fetch_workspace(&self.stream)?;
        self.synchronize()?;
        host.copy_into(ws);
        Ok(())
    }
}
