//! The GPU side of `moe bench`: timing done right, the ceilings measured in the same run, the
//! measured units on device-resident inputs, and the cuBLASLt baseline.
//!
//! - [`Bench`] owns a stream, a flush buffer (at least 256 MB) and two timing events. Every
//!   measured unit is a CUDA graph captured on that stream ([`Graph`]); [`Bench::time`] replays
//!   it: for each sample, optionally a memset of the whole flush buffer (which evicts the L2),
//!   then a short spin kernel (so the host has enqueued the replay before the GPU reaches the
//!   start event), the start event, one replay, the end event. Warm-up replays come first.
//!   Compilation and every upload happen when a unit is built, never while timing.
//! - Ceilings: [`CopyUnit`] (device-to-device copy, read + write) and [`ReadUnit`] (a read-only
//!   streaming kernel: the honest 100% for weights, which are only read).
//! - Units on device buffers ([`units`]): the grouped GEMM, SiLU-mul-quant, prepare's
//!   quantization, finalize, block quantization and the whole experts stage.
//! - The cuBLASLt baseline ([`cublaslt`]): a dense FP8 GEMM (per-tensor or 1×128 / 128×128 block
//!   scales) and a per-expert loop over the same live counts, captured in one graph.
//!
//! Each buffer is used only on the bench stream (see `Device` on event tracking), and every unit
//! declares its graph before its buffers, so the graph is dropped first.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUdevice_attribute, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream};
use moe_core::DeviceError;

use crate::backend::CudaBackend;
use crate::device::{driver_err, Device};
use crate::kernels::KernelId;
use crate::launch::Launcher;
use crate::memory::{alloc, sync};

pub mod cublaslt;
pub mod units;

const OP: &str = "bench";

/// The smallest flush buffer [`Bench::new`] accepts: well above the L2 of any Hopper part.
pub const MIN_FLUSH_BYTES: usize = 256 << 20;

/// A captured CUDA graph, replayed by [`Bench::time`].
pub struct Graph(CudaGraph);

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

impl Graph {
    /// One replay, enqueued on the stream it was captured on.
    pub(crate) fn launch(&self) -> Result<(), DeviceError> {
        self.0.launch().map_err(driver_err("graph replay"))
    }
}

/// How [`Bench::time`] samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingOptions {
    /// Replays before any sample (not measured).
    pub warmup: usize,
    /// Measured replays, each after an L2 flush.
    pub samples: usize,
    /// Measured replays without a flush (the warm-cache figure).
    pub warm_samples: usize,
}

impl Default for TimingOptions {
    fn default() -> Self {
        TimingOptions {
            warmup: 5,
            samples: 30,
            warm_samples: 30,
        }
    }
}

/// Per-replay times in microseconds, in sampling order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timing {
    /// Each after an L2 flush.
    pub flushed_us: Vec<f64>,
    /// Back to back, L2 warm.
    pub warm_us: Vec<f64>,
}

/// What the driver reports about the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The GPU's name.
    pub name: String,
    /// The driver's CUDA version, e.g. `13.0`.
    pub driver_cuda: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Peak SM clock in MHz (the driver attribute; the clock in use may be lower).
    pub sm_clock_mhz: u32,
    /// Peak memory clock in MHz.
    pub mem_clock_mhz: u32,
    /// Memory bus width in bits.
    pub bus_width_bits: u32,
    /// L2 cache size in bytes.
    pub l2_bytes: u64,
    /// Device memory in bytes.
    pub memory_bytes: u64,
}

/// The timing harness on one GPU: its stream, flush buffer and events.
pub struct Bench {
    pub(crate) dev: Arc<Device>,
    pub(crate) stream: Arc<CudaStream>,
    flush: CudaSlice<u8>,
    start: CudaEvent,
    end: CudaEvent,
    spin_cycles: u64,
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench").field("flush_bytes", &self.flush.len()).finish()
    }
}

impl Bench {
    /// The harness on `backend`'s GPU, on a new stream, with a flush buffer of `flush_bytes`
    /// (raised to [`MIN_FLUSH_BYTES`]). Compiles every kernel program now.
    pub fn new(backend: &CudaBackend, flush_bytes: usize) -> Result<Self, DeviceError> {
        let dev = backend.dev.clone();
        let stream = dev.ctx().new_stream().map_err(driver_err("stream creation"))?;
        for id in KernelId::ALL {
            dev.module(id)?;
        }
        let ev = || dev.ctx().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver_err(OP));
        let (start, end) = (ev()?, ev()?);
        let flush = alloc::<u8>(&stream, flush_bytes.max(MIN_FLUSH_BYTES), OP)?;
        // About 5 µs at the peak clock: longer than enqueueing an event and a graph launch.
        let khz = dev
            .ctx()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
            .map_err(driver_err("device query"))?
            .max(1) as u64;
        Ok(Bench {
            spin_cycles: khz * 5 / 1000 + 1000,
            dev,
            stream,
            flush,
            start,
            end,
        })
    }

    /// The flush buffer's size in bytes.
    pub fn flush_bytes(&self) -> usize {
        self.flush.len()
    }

    /// Name, clocks, sizes and the driver's CUDA version.
    pub fn info(&self) -> Result<DeviceInfo, DeviceError> {
        let ctx = self.dev.ctx();
        let attr = |a| ctx.attribute(a).map_err(driver_err("device query"));
        let mut version: std::ffi::c_int = 0;
        // SAFETY: cuDriverGetVersion writes one int through the pointer, which points at a live
        // local; the driver was loaded when the context was created.
        let v = unsafe { sys::cuDriverGetVersion(&mut version) };
        let driver_cuda = if v == sys::CUresult::CUDA_SUCCESS {
            format!("{}.{}", version / 1000, (version % 1000) / 10)
        } else {
            "unknown".into()
        };
        Ok(DeviceInfo {
            name: self.dev.name().to_string(),
            driver_cuda,
            sm_count: self.dev.sm_count(),
            sm_clock_mhz: (attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000) as u32,
            mem_clock_mhz: (attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? / 1000) as u32,
            bus_width_bits: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)? as u32,
            l2_bytes: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64,
            memory_bytes: ctx.total_mem().map_err(driver_err("device query"))? as u64,
        })
    }

    pub(crate) fn launcher(&self) -> Launcher<'_> {
        Launcher {
            dev: &self.dev,
            stream: &self.stream,
        }
    }

    /// Captures what `enqueue` puts on the bench stream into a graph. Nothing may allocate,
    /// copy from the host or synchronize inside `enqueue` (capture would fail).
    pub(crate) fn capture(&self, enqueue: impl FnOnce(&Launcher<'_>) -> Result<(), DeviceError>) -> Result<Graph, DeviceError> {
        sync(&self.dev, &self.stream, "graph capture")?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(driver_err("graph capture"))?;
        let enq = enqueue(&self.launcher());
        let end = self.stream.end_capture(CUgraphInstantiate_flags(0));
        enq?;
        let graph = end.map_err(driver_err("graph capture"))?.ok_or(DeviceError::Driver {
            op: "graph capture",
            detail: "the capture produced no graph".into(),
        })?;
        Ok(Graph(graph))
    }

    /// Replays `g` once and waits for it (to produce a unit's outputs for checking).
    pub fn run_once(&self, g: &Graph) -> Result<(), DeviceError> {
        g.launch()?;
        sync(&self.dev, &self.stream, "graph replay")
    }

    fn sample(&mut self, g: &Graph, flush: bool) -> Result<f64, DeviceError> {
        if flush {
            self.stream.memset_zeros(&mut self.flush).map_err(driver_err("L2 flush"))?;
        }
        self.launcher().bench_spin(self.spin_cycles)?;
        self.start.record(&self.stream).map_err(driver_err(OP))?;
        g.launch()?;
        self.end.record(&self.stream).map_err(driver_err(OP))?;
        let ms = self.start.elapsed_ms(&self.end).map_err(driver_err(OP))?;
        Ok(f64::from(ms) * 1e3)
    }

    /// Times `g` (a graph captured by this harness): `opts.warmup` replays, then
    /// `opts.samples` replays each after an L2 flush, then `opts.warm_samples` without.
    pub fn time(&mut self, g: &Graph, opts: &TimingOptions) -> Result<Timing, DeviceError> {
        for _ in 0..opts.warmup {
            g.launch()?;
        }
        sync(&self.dev, &self.stream, OP)?;
        let mut t = Timing::default();
        for _ in 0..opts.samples {
            let us = self.sample(g, true)?;
            t.flushed_us.push(us);
        }
        for _ in 0..opts.warm_samples {
            let us = self.sample(g, false)?;
            t.warm_us.push(us);
        }
        sync(&self.dev, &self.stream, OP)?;
        Ok(t)
    }
}

/// The device-to-device copy ceiling: one `bytes`-long copy per replay by a 16-byte-vector copy
/// kernel (`moe_bench_copy`; the driver's `cuMemcpyDtoD` is markedly slower on an H200); it reads
/// and writes `bytes` each, so the bandwidth counts `2 * bytes`.
pub struct CopyUnit {
    graph: Graph,
    _src: CudaSlice<u8>,
    _dst: CudaSlice<u8>,
    bytes: usize,
}

impl std::fmt::Debug for CopyUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyUnit").field("bytes", &self.bytes).finish()
    }
}

impl CopyUnit {
    /// Two buffers of `bytes` and the captured copy.
    pub fn new(bench: &Bench, bytes: usize) -> Result<Self, DeviceError> {
        let n16 = (bytes / 16).max(1);
        let src = alloc::<u8>(&bench.stream, n16 * 16, OP)?;
        let mut dst = alloc::<u8>(&bench.stream, n16 * 16, OP)?;
        let graph = bench.capture(|l| l.bench_copy(&src, &mut dst, n16))?;
        Ok(CopyUnit {
            graph,
            _src: src,
            _dst: dst,
            bytes: n16 * 16,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Bytes moved per replay (read plus write).
    pub fn bytes_moved(&self) -> usize {
        2 * self.bytes
    }
}

/// The read-only streaming ceiling: one pass of `moe_bench_read` over `bytes` per replay.
pub struct ReadUnit {
    graph: Graph,
    _src: CudaSlice<u8>,
    _sink: CudaSlice<u32>,
    bytes: usize,
}

impl std::fmt::Debug for ReadUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadUnit").field("bytes", &self.bytes).finish()
    }
}

impl ReadUnit {
    /// A zero-filled buffer of `bytes` (rounded down to 16) and the captured read.
    pub fn new(bench: &Bench, bytes: usize) -> Result<Self, DeviceError> {
        let n16 = (bytes / 16).max(1);
        let src = alloc::<u8>(&bench.stream, n16 * 16, OP)?;
        let mut sink = alloc::<u32>(&bench.stream, 1, OP)?;
        // The data is all zeros, so its XOR-fold is 0 and never equals the magic 1.
        let graph = bench.capture(|l| l.bench_read(&src, n16, 1, &mut sink))?;
        Ok(ReadUnit {
            graph,
            _src: src,
            _sink: sink,
            bytes: n16 * 16,
        })
    }

    /// The graph to time.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Bytes read per replay.
    pub fn bytes_moved(&self) -> usize {
        self.bytes
    }
}
