//! The differential suites, mounted for the CUDA backend (`CudaBackend`), unchanged.
//!
//! Needs the `cuda` feature (`cargo test -p moe-testing --features cuda`). Without a usable
//! device (no driver, no GPU: `DeviceError::NoDevice`) every test prints a counted
//! `SKIP: no CUDA device` line (written past the test harness's output capture, so it is always
//! visible) and passes; with `MOE_REQUIRE_GPU=1` it fails instead. Any other error while opening
//! the backend (a driver failure, a kernel that does not compile) is a failure, never a skip.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use moe_core::DeviceError;
use moe_cuda::CudaBackend as Dut;
use moe_engine::{DeviceKind, GemmContract};

/// The CUDA backend's GEMM contract, as its one owner (`moe_engine::DeviceKind`) states it.
const GEMM_TOL: GemmContract = DeviceKind::Cuda.gemm_contract();

static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// The backend on GPU 0, or a counted skip (a failure under `MOE_REQUIRE_GPU=1`).
fn duts_or_skip(test: &str) -> Option<&'static [(String, Dut)]> {
    static DUTS: OnceLock<Result<Vec<(String, Dut)>, String>> = OnceLock::new();
    let duts = DUTS.get_or_init(|| {
        skip_only_without_device(Dut::new().and_then(|d| d.compile_all().map(|()| d)))
            .map(|d| vec![(format!("cuda, {}", d.device_name()), d)])
    });
    match duts {
        Ok(d) => Some(d),
        Err(reason) => {
            if std::env::var("MOE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MOE_REQUIRE_GPU=1 but no CUDA device: {reason}");
            }
            let n = SKIPPED.fetch_add(1, Ordering::Relaxed) + 1;
            // Written to the process's stderr directly, which the harness does not capture.
            let _ = writeln!(std::io::stderr(), "SKIP: no CUDA device ({reason}): {test} [{n} skipped so far]");
            None
        }
    }
}

/// `Err(reason)` (a skip) only for a missing device; any other error fails the test.
fn skip_only_without_device<T>(opened: Result<T, DeviceError>) -> Result<T, String> {
    match opened {
        Ok(d) => Ok(d),
        Err(DeviceError::NoDevice { reason }) => Err(reason),
        Err(other) => panic!("the CUDA backend failed to open with an error that is not a missing device: {other}"),
    }
}

#[test]
fn only_a_missing_device_is_a_skip() {
    let no_device = skip_only_without_device::<()>(Err(DeviceError::NoDevice {
        reason: "no driver".into(),
    }));
    assert_eq!(no_device, Err("no driver".to_string()));
    let driver = std::panic::catch_unwind(|| {
        skip_only_without_device::<()>(Err(DeviceError::Driver {
            op: "open",
            detail: "CUDA_ERROR_LAUNCH_FAILED".into(),
        }))
    });
    assert!(driver.is_err(), "a driver error must fail, not skip");
}

/// The device of the layer suite: the GPU, or `None` after a counted skip (a failure with
/// `MOE_REQUIRE_GPU=1`), like every other suite's.
fn layer_device_or_skip(test: &str) -> Option<std::sync::Arc<moe_engine::Device>> {
    duts_or_skip(test)?;
    static DEV: OnceLock<std::sync::Arc<moe_engine::Device>> = OnceLock::new();
    Some(
        DEV.get_or_init(|| std::sync::Arc::new(moe_engine::Device::open(DeviceKind::Cuda).expect("the GPU opened once already")))
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
