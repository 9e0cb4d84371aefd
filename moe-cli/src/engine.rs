//! Backend selection (`--backend`) and what `moe info` reports.

use moe_core::BatchedExperts;
use moe_ref_cpu::CpuBackend;

use crate::error::CliError;

/// The backends the command line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// The fast CPU reference (`CpuBackend`, rayon).
    #[default]
    Cpu,
    /// The CUDA backend (H100/H200); needs a build with `--features cuda`.
    Cuda,
}

impl BackendKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// The backends compiled into this binary.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu", "cpu-naive (check only)"];
    if moe_cuda::ENABLED {
        v.push("cuda");
    }
    v
}

/// The backend `kind`; the CPU backend runs on rayon's global pool (see `--threads`).
/// `cuda` opens GPU 0 and compiles every kernel now, so that no timing includes compilation.
pub fn open(kind: BackendKind) -> Result<Box<dyn BatchedExperts>, CliError> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuBackend::new())),
        BackendKind::Cuda => open_cuda(),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Box<dyn BatchedExperts>, CliError> {
    let b = moe_cuda::CudaBackend::new()?;
    b.compile_all()?;
    Ok(Box::new(b))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Box<dyn BatchedExperts>, CliError> {
    Err(CliError::BackendUnavailable(
        "backend `cuda` is not compiled into this binary; rebuild with `cargo build --release -p moe-cli --features cuda`".into(),
    ))
}

/// The GPUs the CUDA backend can open, as lines for `moe info`, or the typed reason there is none.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Vec<String> {
    let mut lines = Vec::new();
    // moe-cuda exposes no device count: open ordinals until the first that fails.
    for ordinal in 0.. {
        match moe_cuda::CudaBackend::with_ordinal(ordinal) {
            Ok(b) => lines.push(format!("GPU {ordinal}: {}", b.device_name())),
            Err(e) => {
                if ordinal == 0 {
                    lines.push(format!("no usable GPU: {e}"));
                }
                break;
            }
        }
    }
    lines
}

/// Without the `cuda` feature there is nothing to probe.
#[cfg(not(feature = "cuda"))]
pub fn cuda_devices() -> Vec<String> {
    vec!["CUDA backend not compiled in (build with `--features cuda`)".into()]
}
