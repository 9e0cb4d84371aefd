//! The differential suites, mounted for the fast CPU backend (`CpuBackend`) on the global rayon
//! pool and on pools of 1 and 3 threads: every result must equal the naive reference bit for
//! bit, the GEMM included.

use std::sync::OnceLock;

use moe_engine::{DeviceKind, GemmContract};
use moe_ref_cpu::CpuBackend as Dut;

/// The CPU backend's GEMM contract (exact, the GEMM included), as its one owner states it.
const GEMM_TOL: GemmContract = DeviceKind::Cpu.gemm_contract();

/// The backends under test, labelled; the CPU is always present.
fn duts_or_skip(_test: &str) -> Option<&'static [(String, Dut)]> {
    static DUTS: OnceLock<Vec<(String, Dut)>> = OnceLock::new();
    Some(DUTS.get_or_init(|| {
        vec![
            ("cpu, global pool".to_string(), Dut::new()),
            ("cpu, 1 thread".to_string(), Dut::with_threads(1).expect("thread pool")),
            ("cpu, 3 threads".to_string(), Dut::with_threads(3).expect("thread pool")),
        ]
    }))
}

/// The device of the layer suite: the CPU backend.
fn layer_device_or_skip(_test: &str) -> Option<std::sync::Arc<moe_engine::Device>> {
    static DEV: OnceLock<std::sync::Arc<moe_engine::Device>> = OnceLock::new();
    Some(
        DEV.get_or_init(|| std::sync::Arc::new(moe_engine::Device::open(DeviceKind::Cpu).expect("the CPU backend")))
            .clone(),
    )
}

#[path = "suites/experts.rs"]
mod experts;
#[path = "suites/gate.rs"]
mod gate;
#[path = "suites/gemm.rs"]
mod gemm;
#[path = "suites/layer.rs"]
mod layer;
#[path = "suites/quant.rs"]
mod quant;
#[path = "suites/route.rs"]
mod route;
#[path = "suites/routing.rs"]
mod routing;
#[path = "suites/silu.rs"]
mod silu;
