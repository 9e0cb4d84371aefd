//! The CUDA [`Target`]: every unit is built on device-resident inputs and captured in a graph
//! by `moe_cuda::bench`, then timed with an L2 flush and CUDA events around each replay.

use std::sync::Arc;

use half::bf16;
use moe_core::{BlockQuant, ExpertsStage, Finalize, Prepare, ScaleBuf, Scales, SiluMulQuant};
use moe_cuda::bench::cublaslt::{Lt, LtDenseUnit, LtLoopUnit, LtScaling, ROW_PAD};
use moe_cuda::bench::units::{gemm_config, BlockQuantUnit, FinalizeUnit, GemmUnit, GemmWeights, PrepareUnit, SiluUnit, StageUnit};
use moe_cuda::bench::{Bench, CopyUnit, Graph, ReadUnit, TimingOptions};
use moe_cuda::CudaBackend;

use super::data::{e4m3_bytes, GemmData, HostWeights};
use super::report::{Ceiling, DeviceSummary};
use super::stats::Stats;
use super::target::{Measured, QuantOut, StageInputs, Target};
use super::BenchConfig;
use crate::error::EngineError;

/// The CUDA target.
#[derive(Debug)]
pub struct GpuTarget {
    bench: Bench,
    lt: Result<Lt, String>,
    /// The last weights uploaded, with the host weights they came from.
    weights: Option<(Arc<HostWeights>, Arc<GemmWeights>)>,
}

const SILU_CONFIG: &str = "persistent grid of 16 x SMs blocks of 256 threads over live rows (fixed)";
const QUANT_CONFIG: &str = "grid-stride, 256 threads per block (fixed)";

/// Times `g` where a failure is reported as text (the ceilings and the baseline).
fn time_text(bench: &mut Bench, g: &Graph, opts: &TimingOptions) -> Result<Stats, String> {
    let t = bench.time(g, opts).map_err(|e| e.to_string())?;
    Stats::from_samples(&t.flushed_us, &t.warm_us).ok_or_else(|| "no samples".into())
}

impl GpuTarget {
    /// The harness on `backend`'s GPU; cuBLASLt is opened now (its absence is recorded).
    pub fn new(backend: &CudaBackend, flush_bytes: usize) -> Result<Self, EngineError> {
        let bench = Bench::new(backend, flush_bytes)?;
        let lt = Lt::open(&bench).map_err(|e| e.to_string());
        Ok(GpuTarget { bench, lt, weights: None })
    }

    fn opts(cfg: &BenchConfig) -> TimingOptions {
        TimingOptions {
            warmup: cfg.warmup,
            samples: cfg.samples,
            warm_samples: cfg.samples,
        }
    }

    fn time(&mut self, cfg: &BenchConfig, g: &Graph) -> Result<Stats, EngineError> {
        let t = self.bench.time(g, &Self::opts(cfg))?;
        Stats::from_samples(&t.flushed_us, &t.warm_us).ok_or_else(|| crate::InputError::Usage("--samples must be at least 1".into()).into())
    }

    /// Times `unit`'s graph, then downloads its output with `download`.
    fn measure<U, T, E>(
        &mut self,
        cfg: &BenchConfig,
        unit: &U,
        graph: fn(&U) -> &Graph,
        download: fn(&U, &Bench) -> Result<T, E>,
        config: String,
    ) -> Result<Measured<T>, EngineError>
    where
        EngineError: From<E>,
    {
        let stats = self.time(cfg, graph(unit))?;
        let out = download(unit, &self.bench)?;
        Ok(Measured { stats, out, config })
    }

    fn device_weights(&mut self, w: &Arc<HostWeights>) -> Result<Arc<GemmWeights>, EngineError> {
        if let Some((h, d)) = &self.weights {
            if Arc::ptr_eq(h, w) {
                return Ok(d.clone());
            }
        }
        // Free the previous shape's weights before uploading the next.
        self.weights = None;
        let (e, n, k) = w.dims;
        let d = GemmWeights::upload(&self.bench, e, n, k, &w.b, &w.sb)?;
        self.weights = Some((w.clone(), d.clone()));
        Ok(d)
    }

    fn dense(&mut self, cfg: &BenchConfig, scaling: LtScaling, name: &str) -> Ceiling {
        let n = if cfg.tiny { 1024 } else { 8192 };
        let unavailable = |detail: String| Ceiling {
            name: name.into(),
            unit: "TFLOP/s",
            value: None,
            stats: None,
            detail,
        };
        let lt = match &self.lt {
            Ok(lt) => lt,
            Err(why) => return unavailable(why.clone()),
        };
        let (w, a) = (e4m3_bytes(cfg.seed ^ 11, n * n), e4m3_bytes(cfg.seed ^ 12, n * n));
        let unit = match LtDenseUnit::new(&self.bench, lt, scaling, (n, n, n), &w, &a) {
            Ok(u) => u,
            Err(e) => return unavailable(e.to_string()),
        };
        let opts = Self::opts(cfg);
        match self.bench.time(unit.graph(), &opts) {
            Ok(t) => {
                let stats = Stats::from_samples(&t.flushed_us, &t.warm_us);
                Ceiling {
                    name: name.into(),
                    unit: "TFLOP/s",
                    value: stats.map(|s| unit.flops() / s.median_us / 1e6),
                    stats,
                    detail: format!("cuBLASLt FP8 {n}x{n}x{n}, {scaling:?} scales, bf16 out"),
                }
            }
            Err(e) => unavailable(e.to_string()),
        }
    }
}

impl Target for GpuTarget {
    fn summary(&self) -> DeviceSummary {
        let info = self.bench.info();
        let mut s = DeviceSummary {
            backend: "cuda".into(),
            cublaslt: match &self.lt {
                Ok(lt) => format!("cuBLASLt {} (block scales need >= 12.9)", lt.version_string()),
                Err(why) => why.clone(),
            },
            ..DeviceSummary::default()
        };
        match info {
            Ok(i) => {
                s.name = i.name;
                s.driver = Some(i.driver_cuda);
                s.units = u64::from(i.sm_count);
                s.sm_clock_mhz = Some(u64::from(i.sm_clock_mhz));
                s.mem_clock_mhz = Some(u64::from(i.mem_clock_mhz));
                s.l2_bytes = Some(i.l2_bytes);
                s.memory_bytes = Some(i.memory_bytes);
            }
            Err(e) => s.name = format!("unknown GPU ({e})"),
        }
        s
    }

    fn method(&self) -> String {
        "CUDA graph per unit; before each flushed sample a memset of the flush buffer on the same stream, then CUDA events around one replay".into()
    }

    fn flush_bytes(&self) -> u64 {
        self.bench.flush_bytes() as u64
    }

    fn needs_check(&self) -> bool {
        true
    }

    fn ceilings(&mut self, cfg: &BenchConfig) -> Vec<Ceiling> {
        let bytes = if cfg.tiny { 256 << 20 } else { 2usize << 30 };
        let opts = Self::opts(cfg);
        let mut out = Vec::new();
        let bw = |name: &str, r: Result<(Stats, usize), String>, detail: String| match r {
            Ok((s, moved)) => Ceiling {
                name: name.into(),
                unit: "GB/s",
                value: Some(moved as f64 / s.median_us / 1e3),
                stats: Some(s),
                detail,
            },
            Err(e) => Ceiling {
                name: name.into(),
                unit: "GB/s",
                value: None,
                stats: None,
                detail: e,
            },
        };
        let copy = CopyUnit::new(&self.bench, bytes)
            .map_err(|e| e.to_string())
            .and_then(|u| Ok((time_text(&mut self.bench, u.graph(), &opts)?, u.bytes_moved())));
        out.push(bw(
            "copy",
            copy,
            format!("16-byte-vector copy kernel over {} MiB (read + write counted)", bytes >> 20),
        ));
        let read = ReadUnit::new(&self.bench, bytes)
            .map_err(|e| e.to_string())
            .and_then(|u| Ok((time_text(&mut self.bench, u.graph(), &opts)?, u.bytes_moved())));
        out.push(bw("read", read, format!("read-only streaming kernel over {} MiB", bytes >> 20)));
        out.push(self.dense(cfg, LtScaling::PerTensor, "fp8-gemm-per-tensor"));
        out.push(self.dense(cfg, LtScaling::Block, "fp8-gemm-block"));
        out
    }

    fn gemm(&mut self, cfg: &BenchConfig, g: &GemmData) -> Result<Measured<Vec<bf16>>, EngineError> {
        let w = self.device_weights(&g.w)?;
        let unit = GemmUnit::new(&self.bench, cfg.gemm_kernel, &g.p, w, &g.a, Scales::F32(&g.sa), &g.counts)?;
        self.measure(cfg, &unit, GemmUnit::graph, GemmUnit::download_d, gemm_config(cfg.gemm_kernel))
    }

    fn gemm_baseline(&mut self, cfg: &BenchConfig, g: &GemmData) -> Result<Measured<Vec<bf16>>, String> {
        let w = self.device_weights(&g.w).map_err(|e| e.to_string())?;
        let lt = self.lt.as_ref().map_err(|e| e.clone())?;
        let unit = LtLoopUnit::new(&self.bench, lt, w, g.p.capacity(), &g.a, &g.sa, &g.counts).map_err(|e| e.to_string())?;
        let stats = time_text(&mut self.bench, unit.graph(), &Self::opts(cfg))?;
        let out = unit.download_d(&self.bench).map_err(|e| e.to_string())?;
        Ok(Measured {
            stats,
            out,
            config: format!(
                "cuBLASLt {} per-expert loop, VEC128 x BLK128x128 scales, rows padded to {ROW_PAD}, one graph",
                lt.version_string()
            ),
        })
    }

    fn silu(
        &mut self,
        cfg: &BenchConfig,
        p: &SiluMulQuant,
        y: &[bf16],
        counts: &[i32],
    ) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError> {
        let unit = SiluUnit::new(&self.bench, p, y, counts)?;
        self.measure(cfg, &unit, SiluUnit::graph, SiluUnit::download, SILU_CONFIG.into())
    }

    fn prepare(&mut self, cfg: &BenchConfig, p: &Prepare, x: &[bf16], ids: &[i32]) -> Result<Measured<(Vec<u8>, ScaleBuf)>, EngineError> {
        let unit = PrepareUnit::new(&self.bench, p, x, ids)?;
        self.measure(
            cfg,
            &unit,
            PrepareUnit::graph,
            PrepareUnit::download,
            format!("gathered token-group quant, {QUANT_CONFIG}; routing on the host, not timed"),
        )
    }

    fn finalize(
        &mut self,
        cfg: &BenchConfig,
        p: &Finalize,
        eo: &[bf16],
        ids: &[i32],
        w: &[f32],
    ) -> Result<Measured<Vec<bf16>>, EngineError> {
        let unit = FinalizeUnit::new(&self.bench, p, eo, ids, w)?;
        self.measure(
            cfg,
            &unit,
            FinalizeUnit::graph,
            FinalizeUnit::download,
            format!("one thread per output element, {QUANT_CONFIG}"),
        )
    }

    fn block_quant(&mut self, cfg: &BenchConfig, p: &BlockQuant, w: &[bf16]) -> Result<Measured<QuantOut>, EngineError> {
        let unit = BlockQuantUnit::new(&self.bench, p, w)?;
        self.measure(
            cfg,
            &unit,
            BlockQuantUnit::graph,
            BlockQuantUnit::download,
            "one 256-thread block per 128x128 block (fixed)".into(),
        )
    }

    fn stage(&mut self, cfg: &BenchConfig, p: &ExpertsStage, s: &StageInputs) -> Result<Measured<Vec<bf16>>, EngineError> {
        // The stage uploads its own weights: drop the cached GEMM weights first.
        self.weights = None;
        let unit = StageUnit::new(&self.bench, cfg.gemm_kernel, p, s.view())?;
        self.measure(
            cfg,
            &unit,
            StageUnit::graph,
            StageUnit::download,
            format!(
                "counts prefix + GEMM1 + SiLU-mul-quant + GEMM2 in one graph; GEMM: {}",
                gemm_config(cfg.gemm_kernel)
            ),
        )
    }
}
