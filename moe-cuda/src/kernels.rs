//! The CUDA kernel sources, indexed by [`KernelId`].
//!
//! Each `.cu` file under `moe-cuda/kernels/` is one NVRTC program; `common.cuh` (the device
//! translations of moe-core's formats, `exp_f32` and `vllm_ceil_pow2_bf16`) is prepended to each
//! at build time with `concat!`, so NVRTC needs no include path and no toolkit header. The
//! sources are plain data and are available without the `cuda` feature.

/// One NVRTC program (a `.cu` file) and the entry points it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelId {
    /// `counts.cu`: prefix sums of the clamped device counts (rows and row tiles).
    Counts,
    /// `quant.cu`: token-group quantization (plain, batched, gathered) and block quantization.
    Quant,
    /// `silu.cu`: persistent SiLU-and-multiply + group quantization.
    Silu,
    /// `gemm.cu`: masked grouped FP8 GEMM on the tensor cores.
    Gemm,
    /// `finalize.cu`: router-weighted combine.
    Finalize,
    /// `selftest.cu`: device helpers over whole input ranges (exp, vLLM ceil scale, E4M3 encode).
    Selftest,
}

macro_rules! source {
    ($file:literal) => {
        concat!(
            include_str!("../kernels/common.cuh"),
            "\n#line 1 \"",
            $file,
            "\"\n",
            include_str!(concat!("../kernels/", $file))
        )
    };
}

impl KernelId {
    /// Every program, in a fixed order.
    pub const ALL: [KernelId; 6] = [
        KernelId::Counts,
        KernelId::Quant,
        KernelId::Silu,
        KernelId::Gemm,
        KernelId::Finalize,
        KernelId::Selftest,
    ];

    /// The file name under `moe-cuda/kernels/`.
    pub fn file(self) -> &'static str {
        match self {
            KernelId::Counts => "counts.cu",
            KernelId::Quant => "quant.cu",
            KernelId::Silu => "silu.cu",
            KernelId::Gemm => "gemm.cu",
            KernelId::Finalize => "finalize.cu",
            KernelId::Selftest => "selftest.cu",
        }
    }

    /// The full NVRTC source (`common.cuh` followed by the file).
    pub fn source(self) -> &'static str {
        match self {
            KernelId::Counts => source!("counts.cu"),
            KernelId::Quant => source!("quant.cu"),
            KernelId::Silu => source!("silu.cu"),
            KernelId::Gemm => source!("gemm.cu"),
            KernelId::Finalize => source!("finalize.cu"),
            KernelId::Selftest => source!("selftest.cu"),
        }
    }

    /// The `extern "C"` entry points of the program.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            KernelId::Counts => &["moe_counts_prefix"],
            KernelId::Quant => &["moe_token_group_quant", "moe_block_quant"],
            KernelId::Silu => &["moe_silu_mul_quant"],
            KernelId::Gemm => &["moe_grouped_gemm", "moe_grouped_gemm_k32"],
            KernelId::Finalize => &["moe_finalize"],
            KernelId::Selftest => &["moe_exp_f32_range", "moe_vllm_ceil_table", "moe_e4m3_range"],
        }
    }
}

/// The NVRTC options every kernel is compiled with: Hopper's `sm_90a`, no contraction of
/// multiplies and adds, IEEE division and square root, no flush-to-zero (SPEC §5).
pub const NVRTC_OPTIONS: &[&str] = &[
    "--gpu-architecture=sm_90a",
    "--fmad=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
    "--std=c++17",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        for id in KernelId::ALL {
            assert!(
                id.source().contains("__device__ __forceinline__ float exp_f32"),
                "{id:?} lacks common.cuh"
            );
            for name in id.entry_points() {
                assert!(
                    id.source().contains(&format!("void {name}(")) || id.source().contains(&format!(" {name}(")),
                    "{id:?}: {name}"
                );
            }
        }
    }

    #[test]
    fn options_forbid_contraction_and_fast_math() {
        assert!(NVRTC_OPTIONS.contains(&"--fmad=false"));
        assert!(NVRTC_OPTIONS.contains(&"--prec-div=true"));
        assert!(NVRTC_OPTIONS.contains(&"--ftz=false"));
        assert!(!NVRTC_OPTIONS.iter().any(|o| o.contains("fast-math")));
    }
}
