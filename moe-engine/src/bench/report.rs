//! The report of `moe bench`: rows, ceilings, the text table, the JSON document (schema
//! version [`SCHEMA_VERSION`], documented in `docs/bench-schema.md`) and its validator.

use serde_json::{json, Value};

use super::stats::Stats;

/// The version of the JSON document; bumped on any incompatible change.
pub const SCHEMA_VERSION: u64 = 1;

/// A ceiling measured in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    /// `copy`, `read`, `fp8-gemm-per-tensor` or `fp8-gemm-block`.
    pub name: String,
    /// `GB/s` or `TFLOP/s`.
    pub unit: &'static str,
    /// The measured value (from the median time), or `None` when it could not be measured.
    pub value: Option<f64>,
    /// Timing of the probe, when it ran.
    pub stats: Option<Stats>,
    /// What was measured, or why not.
    pub detail: String,
}

/// One measured case (ours, and the baseline where there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The suite.
    pub suite: String,
    /// The operation's name.
    pub op: String,
    /// The shape as `(name, value)` pairs.
    pub dims: Vec<(String, usize)>,
    /// The live-count distribution.
    pub counts: String,
    /// Live rows (sum of the counts; routed slots for prepare and finalize).
    pub live_rows: u64,
    /// FLOPs on live rows.
    pub flops: f64,
    /// Bytes that must move.
    pub bytes: f64,
    /// The kernel configuration it ran with.
    pub config: String,
    /// Our timing.
    pub ours: Stats,
    /// The ceiling the row is compared with, e.g. `read 4100 GB/s`.
    pub ceiling: String,
    /// `100 · roofline time / median`, where the roofline time is the largest of bytes / read
    /// bandwidth and FLOPs / FP8 GEMM throughput.
    pub pct_of_ceiling: Option<f64>,
    /// The baseline's name and timing, for GEMM rows.
    pub baseline: Option<Baseline>,
    /// Why the baseline did not run, for GEMM rows without one.
    pub baseline_unavailable: Option<String>,
    /// The check of our result against the reference.
    pub check: Check,
}

/// The cuBLASLt loop on the same case.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// E.g. `cublaslt-loop (block scales, rows padded to 16)`.
    pub name: String,
    /// Its timing.
    pub stats: Stats,
    /// Its check against the reference.
    pub check: Check,
}

/// The verdict of a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Passed (or skipped, see `detail`).
    pub ok: bool,
    /// What was compared and how.
    pub detail: String,
}

/// The device and the run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceSummary {
    /// `cuda` or `cpu`.
    pub backend: String,
    /// The GPU's or CPU's name.
    pub name: String,
    /// The driver's CUDA version (GPU only).
    pub driver: Option<String>,
    /// SMs (GPU) or threads (CPU).
    pub units: u64,
    /// Peak SM clock, MHz (GPU only).
    pub sm_clock_mhz: Option<u64>,
    /// Peak memory clock, MHz (GPU only).
    pub mem_clock_mhz: Option<u64>,
    /// L2 bytes (GPU only).
    pub l2_bytes: Option<u64>,
    /// Device memory bytes (GPU only).
    pub memory_bytes: Option<u64>,
    /// The cuBLASLt version, or why it is unavailable.
    pub cublaslt: String,
}

/// Everything `moe bench` measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BenchReport {
    /// The device.
    pub device: DeviceSummary,
    /// How samples were taken.
    pub method: String,
    /// Flushed samples per unit.
    pub samples: usize,
    /// Warm-up replays per unit.
    pub warmup: usize,
    /// Bytes written by each L2 flush (0 on the CPU).
    pub flush_bytes: u64,
    /// The ceilings, measured first.
    pub ceilings: Vec<Ceiling>,
    /// The cases.
    pub rows: Vec<Row>,
    /// Suites asked for that have no cases yet, with the reason.
    pub skipped: Vec<String>,
}

impl Row {
    /// TFLOP/s on live rows at the median.
    pub fn tflops(&self) -> f64 {
        self.flops / self.ours.median_us / 1e6
    }
    /// GB/s of the bytes that must move, at the median.
    pub fn gbs(&self) -> f64 {
        self.bytes / self.ours.median_us / 1e3
    }
    /// cuBLASLt's median over ours (above 1: ours is faster).
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|b| b.stats.median_us / self.ours.median_us)
    }
    /// The shape as `E=8 T=64 ...`.
    pub fn shape(&self) -> String {
        self.dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
    /// FLOPs per byte that must move.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes.max(1.0)
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "median_us": s.median_us,
        "p10_us": s.p10_us,
        "p90_us": s.p90_us,
        "warm_median_us": s.warm_median_us,
        "samples": s.samples,
    })
}

fn check_json(c: &Check) -> Value {
    json!({ "ok": c.ok, "detail": c.detail })
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl BenchReport {
    /// The JSON document of `docs/bench-schema.md`.
    pub fn to_json(&self) -> Value {
        let d = &self.device;
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let dims: serde_json::Map<String, Value> = r.dims.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                json!({
                    "suite": r.suite,
                    "op": r.op,
                    "shape": dims,
                    "counts": r.counts,
                    "live_rows": r.live_rows,
                    "flops": r.flops,
                    "bytes": r.bytes,
                    "config": r.config,
                    "ours": stats_json(&r.ours),
                    "tflops": finite(r.tflops()),
                    "gbs": finite(r.gbs()),
                    "ceiling": r.ceiling,
                    "pct_of_ceiling": r.pct_of_ceiling.and_then(finite),
                    "baseline": r.baseline.as_ref().map(|b| json!({
                        "name": b.name,
                        "stats": stats_json(&b.stats),
                        "check": check_json(&b.check),
                    })),
                    "baseline_unavailable": r.baseline_unavailable,
                    "ratio": r.ratio().and_then(finite),
                    "check": check_json(&r.check),
                })
            })
            .collect();
        json!({
            "schema_version": SCHEMA_VERSION,
            "tool": "moe bench",
            "version": env!("CARGO_PKG_VERSION"),
            "device": {
                "backend": d.backend,
                "name": d.name,
                "driver": d.driver,
                "units": d.units,
                "sm_clock_mhz": d.sm_clock_mhz,
                "mem_clock_mhz": d.mem_clock_mhz,
                "l2_bytes": d.l2_bytes,
                "memory_bytes": d.memory_bytes,
                "cublaslt": d.cublaslt,
            },
            "timing": {
                "method": self.method,
                "samples": self.samples,
                "warmup": self.warmup,
                "flush_bytes": self.flush_bytes,
            },
            "ceilings": self.ceilings.iter().map(|c| json!({
                "name": c.name,
                "unit": c.unit,
                "value": c.value.and_then(finite),
                "median_us": c.stats.map(|s| s.median_us),
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "rows": rows,
            "skipped": self.skipped,
        })
    }

    /// The text table (one line per row) with the device and the ceilings above it.
    pub fn render(&self) -> String {
        let d = &self.device;
        let mut s = String::new();
        s += &format!(
            "device: {} ({}), {} {}",
            d.name,
            d.backend,
            d.units,
            if d.backend == "cuda" { "SMs" } else { "threads" }
        );
        if let Some(v) = &d.driver {
            s += &format!(", driver CUDA {v}");
        }
        if let (Some(sm), Some(mem)) = (d.sm_clock_mhz, d.mem_clock_mhz) {
            s += &format!(", peak clocks SM {sm} MHz / memory {mem} MHz");
        }
        s += &format!(
            "\ncuBLASLt: {}\ntiming: {} ({} samples, {} warm-up)\n",
            d.cublaslt, self.method, self.samples, self.warmup
        );
        s += "\nceilings measured in this run:\n";
        for c in &self.ceilings {
            match c.value {
                Some(v) => s += &format!("  {:<22} {:>9.1} {:<8} {}\n", c.name, v, c.unit, c.detail),
                None => s += &format!("  {:<22} {:>9} {:<8} {}\n", c.name, "n/a", c.unit, c.detail),
            }
        }
        s += &format!(
            "\n{:<9} {:<15} {:<34} {:<11} {:>6} {:>9} {:>13} {:>8} {:>8} {:>6} {:>9} {:>6}  check\n",
            "suite", "op", "shape", "counts", "live", "median µs", "p10–p90 µs", "TFLOP/s", "GB/s", "% ceil", "cuBLASLt", "ratio"
        );
        for r in &self.rows {
            let base = match (&r.baseline, &r.baseline_unavailable) {
                (Some(b), _) => format!("{:.1}", b.stats.median_us),
                (None, Some(_)) => "unavail.".into(),
                (None, None) => "-".into(),
            };
            s += &format!(
                "{:<9} {:<15} {:<34} {:<11} {:>6} {:>9.1} {:>13} {:>8} {:>8.1} {:>6} {:>9} {:>6}  {}\n",
                r.suite,
                r.op,
                r.shape(),
                r.counts,
                r.live_rows,
                r.ours.median_us,
                format!("{:.1}–{:.1}", r.ours.p10_us, r.ours.p90_us),
                if r.flops > 0.0 { format!("{:.3}", r.tflops()) } else { "-".into() },
                r.gbs(),
                r.pct_of_ceiling.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into()),
                base,
                r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
                if r.check.ok { "ok" } else { "FAILED" },
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| r.baseline_unavailable.as_ref().map(|w| format!("{} {}: {w}", r.op, r.shape())))
            .take(3)
            .collect();
        if !notes.is_empty() {
            s += &format!("\ncuBLASLt baseline unavailable: {}\n", notes.join("; "));
        }
        let configs: std::collections::BTreeSet<(&str, &str)> = self.rows.iter().map(|r| (r.op.as_str(), r.config.as_str())).collect();
        s += "\nkernel configurations:\n";
        for (op, cfg) in configs {
            s += &format!("  {op}: {cfg}\n");
        }
        for r in self.rows.iter().filter(|r| !r.check.ok) {
            s += &format!("CHECK FAILED {} {}: {}\n", r.op, r.shape(), r.check.detail);
        }
        for r in &self.rows {
            if let Some(b) = r.baseline.as_ref().filter(|b| !b.check.ok) {
                s += &format!("BASELINE CHECK FAILED {} {}: {}\n", r.op, r.shape(), b.check.detail);
            }
        }
        for sk in &self.skipped {
            s += &format!("skipped: {sk}\n");
        }
        s
    }

    /// Whether every check (ours and the baselines') passed.
    pub fn passed(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.check.ok && r.baseline.as_ref().is_none_or(|b| b.check.ok))
    }
}
