//! The one place that picks a backend, and the one owner of each backend's GEMM contract.
//!
//! [`DeviceKind`] names a backend; [`Device`] is an opened one. Every checker of the workspace
//! (the pipeline's check, `moe diff`, the mounted test suites) asks [`DeviceKind::gemm_contract`]
//! how the grouped GEMM of a backend compares with the reference, so the constant of SPEC §5.3
//! is written once, here.

use moe_core::BatchedExperts;
use moe_ref_cpu::CpuBackend;

use crate::error::{EngineError, InputError};

/// The backends the engine can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceKind {
    /// The fast CPU reference (`CpuBackend`, rayon); bit-identical to the naive reference.
    #[default]
    Cpu,
    /// The CUDA backend (H100/H200); available in builds with the `cuda` feature.
    Cuda,
}

/// How a backend's grouped GEMM (and so the experts stage) relates to the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GemmContract {
    /// Bit-identical to the naive reference.
    Exact,
    /// SPEC §5.3: `|d - d_ref| <= ulp_bf16(d_ref) + c · Σ_kb |s_kb| · Σ |a·b|`, NaN positions equal.
    Bounded {
        /// The constant `c` (measured on the hardware, at most 2^-12).
        c: f64,
    },
}

impl GemmContract {
    /// The largest `c` SPEC §5.3 allows.
    pub const C_MAX: f64 = 1.0 / 4096.0;

    /// SPEC §5.4 and §5.7: the largest `calc_diff` of an experts stage or a layer against the
    /// reference on random data, for a bounded GEMM (an exact one is checked bit for bit).
    pub const CALC_DIFF_MAX: f64 = 1e-5;

    /// The contract of the CUDA backend's GEMM kernel `kernel`: SPEC §5.3's for `mma.sync` (the
    /// backend's `grouped_gemm` and experts stage); for the opt-in `wgmma` kernel its own
    /// constant [`moe_cuda::C_WGMMA`], above SPEC's `2^-12` (Hopper's FP8 tensor cores keep
    /// about 14 bits inside a partial: docs/numerics.md, "The wgmma kernel's contract").
    pub const fn of_cuda_kernel(kernel: moe_cuda::GemmKernel) -> GemmContract {
        GemmContract::Bounded { c: kernel.bound_c() }
    }

    /// A bounded contract with a caller-chosen `c` (e.g. `moe diff --gemm-c`), which must be a
    /// finite number in `[0, 2^-12]`: a larger or infinite `c` would pass any GEMM.
    pub fn bounded(c: f64) -> Result<Self, InputError> {
        if c.is_finite() && (0.0..=Self::C_MAX).contains(&c) {
            Ok(GemmContract::Bounded { c })
        } else {
            Err(InputError::Usage(format!(
                "the GEMM bound constant c = {c} must be a finite number in [0, 2^-12 = {}]",
                Self::C_MAX
            )))
        }
    }

    /// The constant `c` (0 for an exact contract).
    pub fn c(self) -> f64 {
        match self {
            GemmContract::Exact => 0.0,
            GemmContract::Bounded { c } => c,
        }
    }

    /// `exact`, or `bounded, c = 2^-12`.
    pub fn describe(self) -> String {
        match self {
            GemmContract::Exact => "exact".into(),
            GemmContract::Bounded { c } => format!("bounded, c = 2^{:.1}", c.log2()),
        }
    }
}

impl DeviceKind {
    /// Every kind, compiled in or not.
    pub const ALL: [DeviceKind; 2] = [DeviceKind::Cpu, DeviceKind::Cuda];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// The kind named `s` (`cpu` or `cuda`).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether this build can open the kind.
    pub fn compiled_in(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Cuda => moe_cuda::ENABLED,
        }
    }

    /// The GEMM contract of the backend: exact on the CPU; on CUDA, bounded with the tested
    /// constant 2^-12 (the measured one is 2^-25.3 on H100/H200, see `docs/gpu-validation.md`).
    pub const fn gemm_contract(self) -> GemmContract {
        match self {
            DeviceKind::Cpu => GemmContract::Exact,
            DeviceKind::Cuda => GemmContract::Bounded { c: GemmContract::C_MAX },
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An opened backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum Device {
    /// The fast CPU reference.
    Cpu(CpuBackend),
    /// A CUDA GPU, kernels compiled.
    #[cfg(feature = "cuda")]
    Cuda(moe_cuda::CudaBackend),
}

impl Device {
    /// Opens `kind`. The CPU backend runs on rayon's global pool. `Cuda` opens GPU 0 and compiles
    /// every kernel now, so that no timing includes compilation.
    pub fn open(kind: DeviceKind) -> Result<Self, EngineError> {
        match kind {
            DeviceKind::Cpu => Ok(Device::Cpu(CpuBackend::new())),
            DeviceKind::Cuda => open_cuda(),
        }
    }

    /// The CPU backend on its own pool of `threads` workers.
    pub fn cpu_with_threads(threads: usize) -> Result<Self, EngineError> {
        if threads == 0 {
            return Err(InputError::Usage("the CPU backend needs at least 1 thread".into()).into());
        }
        let b = CpuBackend::with_threads(threads).map_err(|e| InputError::Usage(format!("--threads {threads}: {e}")))?;
        Ok(Device::Cpu(b))
    }

    /// Which kind this is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Device::Cpu(_) => DeviceKind::Cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => DeviceKind::Cuda,
        }
    }

    /// The backend, for the host-slice traits of moe-core.
    pub fn backend(&self) -> &dyn BatchedExperts {
        match self {
            Device::Cpu(b) => b,
            #[cfg(feature = "cuda")]
            Device::Cuda(b) => b,
        }
    }

    /// The GEMM contract of this backend ([`DeviceKind::gemm_contract`]).
    pub fn gemm_contract(&self) -> GemmContract {
        self.kind().gemm_contract()
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, EngineError> {
    let b = moe_cuda::CudaBackend::new()?;
    b.compile_all()?;
    Ok(Device::Cuda(b))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, EngineError> {
    Err(EngineError::BackendUnavailable(
        "backend `cuda` is not compiled into this binary; rebuild with `cargo build --release -p moe-cli --features cuda`".into(),
    ))
}

/// The backends compiled into this build, as `moe info` lists them.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["cpu", "cpu-naive (check only)"];
    if moe_cuda::ENABLED {
        v.push("cuda");
    }
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in DeviceKind::ALL {
            assert_eq!(DeviceKind::from_name(k.name()), Some(k));
        }
        assert_eq!(DeviceKind::from_name("tpu"), None);
    }

    #[test]
    fn a_bound_constant_that_passes_everything_is_refused() {
        for c in [f64::INFINITY, f64::NAN, -1.0, 1.0, GemmContract::C_MAX * 2.0] {
            assert!(GemmContract::bounded(c).is_err(), "c = {c}");
        }
        assert_eq!(GemmContract::bounded(0.0).unwrap().c(), 0.0);
        assert_eq!(GemmContract::bounded(GemmContract::C_MAX).unwrap().c(), GemmContract::C_MAX);
    }

    #[test]
    fn the_cpu_is_exact_and_cuda_is_bounded_by_at_most_2_to_minus_12() {
        assert_eq!(DeviceKind::Cpu.gemm_contract(), GemmContract::Exact);
        let c = DeviceKind::Cuda.gemm_contract().c();
        assert!(c > 0.0 && c <= GemmContract::C_MAX);
    }
}
