//! The CUDA kernel sources, indexed by [`KernelId`], and the headers they include.
//!
//! Each `.cu` file under `moe-cuda/kernels/` is one NVRTC program and starts with
//! `#include "common.cuh"`. The headers ([`HEADERS`]: `common.cuh`, the device translations of
//! moe-core's formats, `exp_f32` and `vllm_ceil_pow2_bf16`, and `codes.cuh`, the enum codes
//! shared with the host) are embedded at build time and handed to NVRTC as named headers
//! (`nvrtcCreateProgram`'s `headers`/`includeNames`), so NVRTC needs no include path and no
//! toolkit header. The sources are plain data and are available without the `cuda` feature.

use moe_core::{Numerics, ScaleFormat, Scoring};

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
    /// `route.cu`: the router (scores, group selection, top-k, weights), one warp per token,
    /// and the gate GEMM before it (exact float64 sums).
    Route,
    /// `bench.cu`: the benchmark harness's read-only streaming ceiling and spin kernel.
    Bench,
    /// `gemm_wgmma.cu`: the masked grouped FP8 GEMM on Hopper's asynchronous tensor cores (TMA +
    /// `wgmma`), opt-in through `CudaBackend::grouped_gemm_wgmma`, and its probe kernels.
    GemmWgmma,
    /// `selftest.cu`: device helpers over whole input ranges (exp, vLLM ceil scale, E4M3 encode).
    ///
    /// Test support: not in [`KernelId::ALL`] (so not compiled by the backend's `compile_all`);
    /// only the hidden self-test entry points of the backend compile and launch it.
    Selftest,
}

/// `kernels/codes.cuh`: the codes of [`fmt_code`], [`numerics_code`] and [`scoring_code`] as C
/// macros.
pub const CODES_HEADER: &str = include_str!("../kernels/codes.cuh");

/// Every header a kernel may `#include`, as `(include name, source)`: NVRTC resolves
/// `#include "name"` against this list only.
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("../kernels/common.cuh")), ("codes.cuh", CODES_HEADER)];

impl KernelId {
    /// Every program of the backend, in a fixed order (the self-test program is not one).
    pub const ALL: [KernelId; 8] = [
        KernelId::Counts,
        KernelId::Quant,
        KernelId::Silu,
        KernelId::Gemm,
        KernelId::Finalize,
        KernelId::Route,
        KernelId::Bench,
        KernelId::GemmWgmma,
    ];

    /// The programs only tests compile: [`KernelId::Selftest`].
    #[doc(hidden)]
    pub const TEST_SUPPORT: [KernelId; 1] = [KernelId::Selftest];

    /// The file name under `moe-cuda/kernels/` (also the NVRTC program name).
    pub fn file(self) -> &'static str {
        match self {
            KernelId::Counts => "counts.cu",
            KernelId::Quant => "quant.cu",
            KernelId::Silu => "silu.cu",
            KernelId::Gemm => "gemm.cu",
            KernelId::Finalize => "finalize.cu",
            KernelId::Route => "route.cu",
            KernelId::Bench => "bench.cu",
            KernelId::GemmWgmma => "gemm_wgmma.cu",
            KernelId::Selftest => "selftest.cu",
        }
    }

    /// The program's own source; it `#include`s headers of [`HEADERS`].
    pub fn source(self) -> &'static str {
        match self {
            KernelId::Counts => include_str!("../kernels/counts.cu"),
            KernelId::Quant => include_str!("../kernels/quant.cu"),
            KernelId::Silu => include_str!("../kernels/silu.cu"),
            KernelId::Gemm => include_str!("../kernels/gemm.cu"),
            KernelId::Finalize => include_str!("../kernels/finalize.cu"),
            KernelId::Route => include_str!("../kernels/route.cu"),
            KernelId::Bench => include_str!("../kernels/bench.cu"),
            KernelId::GemmWgmma => include_str!("../kernels/gemm_wgmma.cu"),
            KernelId::Selftest => include_str!("../kernels/selftest.cu"),
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
            KernelId::Route => &["moe_route", "moe_gate"],
            KernelId::Bench => &["moe_bench_read", "moe_bench_spin"],
            KernelId::GemmWgmma => &[
                "moe_grouped_gemm_wgmma",
                "moe_wgmma_probe_tma",
                "moe_wgmma_probe_mma",
                "moe_wgmma_probe_ring",
            ],
            KernelId::Selftest => &["moe_exp_f32_range", "moe_vllm_ceil_table", "moe_e4m3_range"],
        }
    }
}

/// The `int` code the kernels take for a scale format (`MOE_FMT_*` in `kernels/codes.cuh`; a
/// test checks that both sides agree).
pub fn fmt_code(fmt: ScaleFormat) -> i32 {
    match fmt {
        ScaleFormat::F32 => 0,
        ScaleFormat::F32CeilUe8m0 => 1,
        ScaleFormat::Ue8m0Packed => 2,
    }
}

/// The `int` code the kernels take for a numerics (`MOE_NUMERICS_*` in `kernels/codes.cuh`).
pub fn numerics_code(numerics: Numerics) -> i32 {
    match numerics {
        Numerics::VllmBf16 => 0,
        Numerics::F32 => 1,
    }
}

/// The `int` code the kernels take for a scoring (`MOE_SCORING_*` in `kernels/codes.cuh`).
pub fn scoring_code(scoring: Scoring) -> i32 {
    match scoring {
        Scoring::Sigmoid => 0,
        Scoring::Softmax => 1,
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

/// The grouped GEMM kernels of the CUDA backend.
///
/// `MmaSync` (gemm.cu) is the backend's `grouped_gemm` and meets SPEC §5.3's bound with
/// `c = 2^-12` (measured `2^-25`); `Wgmma` (gemm_wgmma.cu: TMA, `wgmma` E4M3, warp-specialized,
/// persistent) is opt-in: Hopper's FP8 tensor cores keep about 14 bits inside a 128-K partial,
/// so it has its own, looser contract (docs/numerics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GemmKernel {
    /// `mma.sync.m16n8k32` E4M3, 4 warps, persistent grid over live row tiles.
    #[default]
    MmaSync,
    /// TMA + `wgmma m64n128k32` E4M3, one producer and two consumer warpgroups.
    Wgmma,
}

impl GemmKernel {
    /// Every kernel.
    pub const ALL: [GemmKernel; 2] = [GemmKernel::MmaSync, GemmKernel::Wgmma];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            GemmKernel::MmaSync => "mma-sync",
            GemmKernel::Wgmma => "wgmma",
        }
    }

    /// The kernel called `name`, if any.
    pub fn from_name(name: &str) -> Option<GemmKernel> {
        GemmKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The constant `c` of the kernel's GEMM bound `|d - d_ref| <= ulp_bf16(d_ref) + c · Σ_kb
    /// |s_kb| · Σ |a·b|` (SPEC §5.3's form): SPEC's `2^-12` for `MmaSync` (it measures
    /// `2^-25`); [`C_WGMMA`] for `Wgmma`.
    pub const fn bound_c(self) -> f64 {
        match self {
            GemmKernel::MmaSync => 1.0 / 4096.0,
            GemmKernel::Wgmma => C_WGMMA,
        }
    }
}

/// The bound constant of the `wgmma` kernel, `2^-6`, above SPEC §5.3's `2^-12`.
///
/// Measured on an H200 (tests/wgmma.rs, `probe_d`): one `wgmma ...k32` E4M3 step adds its 32
/// products and the accumulator after aligning them to the largest, and drops every bit more
/// than 13 places below that one (a product `2^(E-13)` is kept, `2^(E-14)` is lost whole, in
/// either sign: truncation toward zero). So a step loses less than `32 · 2^(E-13)` with `2^E` at
/// most the largest addend, itself at most `Σ|a·b|` of the block so far; four chained steps per
/// 128-K block lose less than `4 · 32 · 2^-13 = 2^-6` of the block's `Σ|a·b|`. The probe's
/// adversarial case loses `2^-6.62`; random full-range operands stay near `2^-11`
/// (docs/numerics.md, "The wgmma kernel's contract").
pub const C_WGMMA: f64 = 1.0 / 64.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn every_program() -> impl Iterator<Item = KernelId> {
        KernelId::ALL.into_iter().chain(KernelId::TEST_SUPPORT)
    }

    /// The quoted names of a source's `#include "..."` lines.
    fn includes(src: &str) -> Vec<&str> {
        src.lines()
            .filter_map(|l| l.trim().strip_prefix("#include"))
            .map(|rest| rest.trim().trim_matches('"'))
            .collect()
    }

    #[test]
    fn every_program_includes_common_and_every_include_is_a_known_header() {
        for id in every_program() {
            assert!(includes(id.source()).contains(&"common.cuh"), "{id:?} does not include common.cuh");
        }
        let sources = every_program().map(|id| (id.file(), id.source())).chain(HEADERS.iter().copied());
        for (file, src) in sources {
            for inc in includes(src) {
                assert!(
                    HEADERS.iter().any(|(n, _)| *n == inc),
                    "{file}: #include \"{inc}\" is not in HEADERS"
                );
            }
        }
        assert!(HEADERS.iter().any(|(_, s)| s.contains("__device__ __forceinline__ float exp_f32")));
    }

    #[test]
    fn the_self_test_program_is_not_a_backend_program() {
        assert!(!KernelId::ALL.contains(&KernelId::Selftest));
        assert_eq!(every_program().count(), 9);
    }

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        for id in every_program() {
            for name in id.entry_points() {
                assert!(
                    id.source().contains(&format!("void {name}(")) || id.source().contains(&format!(" {name}(")),
                    "{id:?}: {name}"
                );
            }
        }
    }

    /// The `#define NAME VALUE` lines of a header.
    fn defines(src: &str) -> Vec<(String, i32)> {
        src.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define")).then_some(())?;
                let name = w.next()?.to_string();
                let value = w.next()?.parse().ok()?;
                Some((name, value))
            })
            .collect()
    }

    fn fmt_macro(fmt: ScaleFormat) -> &'static str {
        match fmt {
            ScaleFormat::F32 => "MOE_FMT_F32",
            ScaleFormat::F32CeilUe8m0 => "MOE_FMT_F32_CEIL_UE8M0",
            ScaleFormat::Ue8m0Packed => "MOE_FMT_UE8M0_PACKED",
        }
    }

    fn numerics_macro(n: Numerics) -> &'static str {
        match n {
            Numerics::VllmBf16 => "MOE_NUMERICS_VLLM_BF16",
            Numerics::F32 => "MOE_NUMERICS_F32",
        }
    }

    fn scoring_macro(s: Scoring) -> &'static str {
        match s {
            Scoring::Sigmoid => "MOE_SCORING_SIGMOID",
            Scoring::Softmax => "MOE_SCORING_SOFTMAX",
        }
    }

    #[test]
    fn header_codes_equal_the_rust_mapping() {
        let defs = defines(CODES_HEADER);
        let get = |name: &str| defs.iter().find(|(n, _)| n == name).map(|&(_, v)| v);
        for fmt in ScaleFormat::ALL {
            assert_eq!(get(fmt_macro(fmt)), Some(fmt_code(fmt)), "{fmt:?}");
        }
        for n in Numerics::ALL {
            assert_eq!(get(numerics_macro(n)), Some(numerics_code(n)), "{n:?}");
        }
        for s in Scoring::ALL {
            assert_eq!(get(scoring_macro(s)), Some(scoring_code(s)), "{s:?}");
        }
        // No code the Rust side does not know.
        let count = |prefix: &str| defs.iter().filter(|(n, _)| n.starts_with(prefix)).count();
        assert_eq!(
            (count("MOE_FMT_"), count("MOE_NUMERICS_"), count("MOE_SCORING_")),
            (ScaleFormat::ALL.len(), Numerics::ALL.len(), Scoring::ALL.len())
        );
    }

    #[test]
    fn kernels_compare_codes_by_name_not_by_number() {
        for id in every_program() {
            let src = id.source();
            for var in ["fmt", "numerics", "scoring"] {
                for op in ["==", "!="] {
                    let pat = format!("{var} {op} ");
                    for (i, _) in src.match_indices(&pat) {
                        let next = src[i + pat.len()..].chars().next();
                        assert!(
                            !next.is_some_and(|c| c.is_ascii_digit()),
                            "{}: `{pat}` followed by a number; use the MOE_* codes of codes.cuh",
                            id.file()
                        );
                    }
                }
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
