//! # moe-cuda
//!
//! The CUDA backend of moe-fp8 for Hopper GPUs (H100, H200; `sm_90a`): every operation of
//! SPEC §5 behind the `cuda` cargo feature.
//!
//! What it promises: `CudaBackend` implements `moe_core::Backend` and `BatchedExperts` with
//! results bit-identical to the CPU reference for token-group quantization, block quantization,
//! SiLU-mul-quant, prepare, finalize and the router, and within the SPEC §5.3 bound for the
//! grouped GEMM (and so the experts stage); rows past `counts` are never written; every invalid
//! input is rejected with the CPU's error before any allocation or launch (but the router's NaN
//! logits, which its kernel finds: the same error, nothing written); a missing driver or GPU is
//! `DeviceError::NoDevice`, never a panic. Device-resident `counts` are clamped into `[0, T]` by
//! every kernel, so nothing is read or written out of bounds whatever they hold.
//! Every host-slice call writes its outputs only once the whole call succeeded (downloads are
//! staged in host temporaries), and rejects dimensions its 32-bit kernel indices cannot reach
//! with a `ProblemError` naming the tensor and dimension. `ResidentExperts` keeps the experts
//! stage's buffers on the device, with the weights uploaded once and the activations per
//! step, enqueues it without host synchronization and captures it in a CUDA graph.
//!
//! What it trusts: moe-core's validated problem types, the CUDA driver, and NVRTC (CUDA 13),
//! loaded at run time (cudarc's dynamic loading), so the crate builds without a toolkit.
//!
//! Layout: kernels are `.cu` files under `kernels/` that `#include "common.cuh"` (handed to
//! NVRTC as named headers with `codes.cuh`, whose enum codes a test ties to [`kernels::fmt_code`],
//! [`kernels::numerics_code`] and [`kernels::scoring_code`]), compiled by NVRTC at first use with
//! `--fmad=false --prec-div=true --ftz=false` for `sm_90a` and cached per context ([`KernelId`]
//! indexes them). Private modules: `memory` (uploads, staged downloads, casts), `launch` (every
//! launch, through one `cuLaunchKernelEx` helper), `limits` (the dimensions the kernels index),
//! `stage` (the experts stage's buffers and launches, used by `CudaBackend::apply` and
//! `ResidentExperts`; `resident` depends on `backend`, never the reverse). This is the only crate of
//! the workspace with `unsafe`, each block with a `// SAFETY:` proof.
//!
//! Without the `cuda` feature the crate holds only the kernel sources ([`KernelId`]).
#![cfg_attr(not(feature = "cuda"), forbid(unsafe_code))]
#![warn(missing_docs)]

pub mod kernels;

pub use kernels::{GemmKernel, KernelId, C_WGMMA, NVRTC_OPTIONS};

/// Items that exist only with the `cuda` feature.
macro_rules! with_cuda {
    ($($item:item)*) => { $(#[cfg(feature = "cuda")] $item)* };
}

with_cuda! {
    mod backend;
    pub mod bench;
    pub mod compile;
    mod device;
    mod launch;
    mod limits;
    mod memory;
    mod resident;
    mod stage;
    mod tma;

    pub use backend::CudaBackend;
    pub use resident::{CountsMode, ResidentExperts};
}

/// Whether this build contains the CUDA backend (the `cuda` feature).
pub const ENABLED: bool = cfg!(feature = "cuda");
