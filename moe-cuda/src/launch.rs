//! Every kernel launch of the crate, and nothing else: one function per entry point.
//!
//! **Architecture invariant:** kernels are launched only from this module.
//!
//! Each function takes typed device buffers and the problem's dimensions, asserts that every
//! buffer is at least as long as the kernel will index (a failure is a bug of this crate, not a
//! user error: the public entry points validated the shapes), and pushes the arguments in the
//! order of the kernel's C signature, quoted above each launch. Grids are grid-stride loops, so
//! any grid size covers the work; sizes here only bound the parallelism.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use moe_core::{DeviceError, Numerics, ScaleFormat, GROUP};

use crate::device::{driver_err, Device};
use crate::kernels::KernelId;

/// Rows per tile of the grouped GEMM (`BM` in gemm.cu); the tile prefix is computed for it.
pub(crate) const GEMM_BM: usize = 64;
/// Columns per tile of the grouped GEMM (`BN` in gemm.cu).
pub(crate) const GEMM_BN: usize = 64;

/// Where launches go: the device (for functions) and the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launcher<'a> {
    pub(crate) dev: &'a Device,
    pub(crate) stream: &'a Arc<CudaStream>,
}

/// A bf16 (as raw `u16` bits) or f32 input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum XIn<'a> {
    Bf16(&'a CudaSlice<u16>),
    F32(&'a CudaSlice<f32>),
}

impl XIn<'_> {
    fn len(&self) -> usize {
        match self {
            XIn::Bf16(b) => b.len(),
            XIn::F32(b) => b.len(),
        }
    }
}

#[track_caller]
fn need<T>(buf: &CudaSlice<T>, n: usize, what: &str) {
    assert!(
        buf.len() >= n,
        "moe-cuda bug: device buffer `{what}` holds {} elements, the launch indexes {n}",
        buf.len()
    );
}

#[track_caller]
fn int(v: usize) -> i32 {
    i32::try_from(v).expect("moe-cuda bug: a dimension past i32 reached a launch (the entry points reject it)")
}

fn blocks_for(items: usize, per_block: usize, cap: u32) -> u32 {
    let b = items.div_ceil(per_block.max(1)).max(1);
    (b.min(cap as usize)) as u32
}

fn fmt_code(fmt: ScaleFormat) -> i32 {
    match fmt {
        ScaleFormat::F32 => 0,
        ScaleFormat::F32CeilUe8m0 => 1,
        ScaleFormat::Ue8m0Packed => 2,
    }
}

const NULL: u64 = 0;

impl Launcher<'_> {
    /// `moe_counts_prefix(const int* counts, int E, int T, int bm, int* prefix, int* tile_prefix)`.
    pub(crate) fn counts_prefix(
        &self,
        counts: &CudaSlice<i32>,
        e: usize,
        t: usize,
        bm: usize,
        prefix: &mut CudaSlice<i32>,
        tile_prefix: &mut CudaSlice<i32>,
    ) -> Result<(), DeviceError> {
        const OP: &str = "counts prefix";
        need(counts, e, "counts");
        need(prefix, e + 1, "prefix");
        need(tile_prefix, e + 1, "tile_prefix");
        let f = self.dev.function(KernelId::Counts, "moe_counts_prefix")?;
        let (ei, ti, bmi) = (int(e), int(t), int(bm));
        let mut b = self.stream.launch_builder(&f);
        b.arg(counts).arg(&ei).arg(&ti).arg(&bmi).arg(prefix).arg(tile_prefix);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type (three pointers to
        // device i32 buffers, three ints). The kernel reads counts[0..E) and writes
        // prefix[0..=E] and tile_prefix[0..=E]; the lengths were asserted above. It must run
        // with exactly 1024 threads (its shared arrays have 1024 entries), which `cfg` gives.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_token_group_quant(const void* x, int x_is_f32, const int* gather, u8* q, u32* s,
    /// int E, int T, int K, const int* prefix, int fmt, int mn_major)`.
    ///
    /// `x_rows` is the number of rows of `x` (`E*T`, or `M` when gathering: every gather entry
    /// of a live row must be below it). Without `prefix` every one of the `E*T` rows is written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn token_group_quant(
        &self,
        x: XIn<'_>,
        x_rows: usize,
        gather: Option<&CudaSlice<i32>>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<u32>,
        (e, t, k): (usize, usize, usize),
        prefix: Option<&CudaSlice<i32>>,
        fmt: ScaleFormat,
        mn_major: bool,
    ) -> Result<(), DeviceError> {
        const OP: &str = "token-group quant";
        let cols = fmt.columns(k / GROUP);
        assert!(
            k % GROUP == 0 && x.len() >= x_rows * k,
            "moe-cuda bug: x holds {} elements, needs {x_rows}x{k}",
            x.len()
        );
        if gather.is_none() {
            assert!(x_rows >= e * t, "moe-cuda bug: x has {x_rows} rows, needs {}", e * t);
        }
        if let Some(g) = gather {
            need(g, e * t, "gather");
        }
        need(q, e * t * k, "q");
        need(s, e * t * cols, "s");
        if let Some(p) = prefix {
            need(p, e + 1, "prefix");
        }
        let f = self.dev.function(KernelId::Quant, "moe_token_group_quant")?;
        let is_f32: i32 = matches!(x, XIn::F32(_)) as i32;
        let (ei, ti, ki, fmti, mni) = (int(e), int(t), int(k), fmt_code(fmt), mn_major as i32);
        let mut b = self.stream.launch_builder(&f);
        match x {
            XIn::Bf16(v) => b.arg(v),
            XIn::F32(v) => b.arg(v),
        };
        b.arg(&is_f32);
        match gather {
            Some(g) => b.arg(g),
            None => b.arg(&NULL),
        };
        b.arg(q).arg(s).arg(&ei).arg(&ti).arg(&ki);
        match prefix {
            Some(p) => b.arg(p),
            None => b.arg(&NULL),
        };
        b.arg(&fmti).arg(&mni);
        let warps = e * t * cols;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(warps, 8, self.dev.sm_count() * 16), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type (x as a device
        // pointer with its element type flag, gather/prefix as device pointers or null, q and
        // s device pointers, five ints). The kernel visits logical rows (e, t) with e < E and
        // t < T (t < prefix-derived counts <= T when `prefix` is given: the prefix kernel
        // clamps), reads x rows below `x_rows` (identity or gather entries, which the caller
        // guarantees), writes q[(e*T+t)*K ..+K] and one scale word per (row, column): all
        // within the lengths asserted above. 256 threads per block = 8 whole warps.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_block_quant(const void* w, int w_is_f32, u8* q, float* s, int E, int R, int C, int pow2)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn block_quant(
        &self,
        w: XIn<'_>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<f32>,
        e: usize,
        r: usize,
        c: usize,
        pow2: bool,
    ) -> Result<(), DeviceError> {
        const OP: &str = "block quant";
        let nblocks = e * r.div_ceil(GROUP) * c.div_ceil(GROUP);
        assert!(w.len() >= e * r * c, "moe-cuda bug: w too short");
        need(q, e * r * c, "q");
        need(s, nblocks, "s");
        let f = self.dev.function(KernelId::Quant, "moe_block_quant")?;
        let is_f32: i32 = matches!(w, XIn::F32(_)) as i32;
        let (ei, ri, ci, p2) = (int(e), int(r), int(c), pow2 as i32);
        let mut b = self.stream.launch_builder(&f);
        match w {
            XIn::Bf16(v) => b.arg(v),
            XIn::F32(v) => b.arg(v),
        };
        b.arg(&is_f32).arg(q).arg(s).arg(&ei).arg(&ri).arg(&ci).arg(&p2);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(nblocks, 1, self.dev.sm_count() * 16), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type. Each block reads and
        // writes only elements (e, r, c) with r < R and c < C (bounds-checked in the kernel) and
        // one scale per 128x128 block, within the lengths asserted above; its shared reduction
        // array has 8 entries, one per warp of the 256-thread block given here.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_silu_mul_quant(const u16* y, u8* q, u32* s, int E, int T, int H, const int* prefix,
    /// int fmt, int numerics)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn silu_mul_quant(
        &self,
        y: &CudaSlice<u16>,
        q: &mut CudaSlice<u8>,
        s: &mut CudaSlice<u32>,
        (e, t, h): (usize, usize, usize),
        prefix: &CudaSlice<i32>,
        fmt: ScaleFormat,
        numerics: Numerics,
    ) -> Result<(), DeviceError> {
        const OP: &str = "silu-mul-quant";
        let cols = fmt.columns(h / GROUP);
        assert!(h % GROUP == 0);
        need(y, e * t * 2 * h, "y");
        need(q, e * t * h, "q");
        need(s, e * cols * t, "s");
        need(prefix, e + 1, "prefix");
        let f = self.dev.function(KernelId::Silu, "moe_silu_mul_quant")?;
        let (ei, ti, hi, fmti) = (int(e), int(t), int(h), fmt_code(fmt));
        let num: i32 = match numerics {
            Numerics::VllmBf16 => 0,
            Numerics::F32 => 1,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(y).arg(q).arg(s).arg(&ei).arg(&ti).arg(&hi).arg(prefix).arg(&fmti).arg(&num);
        // A fixed grid for the shape (never for the counts), so a graph replay with other
        // counts stays valid.
        let warps = e * t * cols;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(warps, 8, self.dev.sm_count() * 16), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type. The kernel visits
        // only live rows t < clamp(counts[e], 0, T) through `prefix` (E+1 entries, computed by
        // moe_counts_prefix from clamped counts), reads y[(e*T+t)*2H ..+2H], writes
        // q[(e*T+t)*H ..+H] and s[(e*cols+col)*T+t]: within the lengths asserted above.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_grouped_gemm[_k32](const u8* a, const u32* sa, int sa_packed, const u8* b,
    /// const float* sb, u16* d, const int* counts, const int* tile_prefix, int E, int T, int N, int K)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_gemm(
        &self,
        a: &CudaSlice<u8>,
        sa: &CudaSlice<u32>,
        sa_fmt: ScaleFormat,
        bw: &CudaSlice<u8>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<u16>,
        counts: &CudaSlice<i32>,
        tile_prefix: &CudaSlice<i32>,
        (e, t, n, k): (usize, usize, usize, usize),
        chain: bool,
    ) -> Result<(), DeviceError> {
        const OP: &str = "grouped gemm";
        assert!(n % GROUP == 0 && k % GROUP == 0 && GROUP % GEMM_BN == 0);
        let kb = k / GROUP;
        need(a, e * t * k, "a");
        need(sa, e * sa_fmt.columns(kb) * t, "sa");
        need(bw, e * n * k, "b");
        need(sb, e * (n / GROUP) * kb, "sb");
        need(d, e * t * n, "d");
        need(counts, e, "counts");
        need(tile_prefix, e + 1, "tile_prefix");
        let name = if chain { "moe_grouped_gemm" } else { "moe_grouped_gemm_k32" };
        let f = self.dev.function(KernelId::Gemm, name)?;
        let packed: i32 = sa_fmt.is_packed() as i32;
        let (ei, ti, ni, ki) = (int(e), int(t), int(n), int(k));
        let mut b = self.stream.launch_builder(&f);
        b.arg(a)
            .arg(sa)
            .arg(&packed)
            .arg(bw)
            .arg(sb)
            .arg(d)
            .arg(counts)
            .arg(tile_prefix)
            .arg(&ei)
            .arg(&ti)
            .arg(&ni)
            .arg(&ki);
        let max_tiles = e * t.div_ceil(GEMM_BM) * (n / GEMM_BN);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(max_tiles, 1, self.dev.sm_count() * 4), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type. The tile prefix
        // was computed by moe_counts_prefix with bm = GEMM_BM from the same `counts`, so every
        // visited tile has e < E and rows m0 + r < T; the kernel reads `a` only for rows below
        // clamp(counts[e], 0, T) <= T, `b` rows n0..n0+64 < N, `sa` and `sb` at their layouts'
        // indices for kb < K/128, and writes `d` only for live rows: within the lengths
        // asserted above. It needs exactly 4 warps (128 threads), which `cfg` gives; its 18 KiB
        // of shared memory is static.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_finalize(const u16* eo, const int* ids, const int* rows, const float* w, u16* out,
    /// long long M, int K, int topk, int E, int T)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finalize(
        &self,
        eo: &CudaSlice<u16>,
        ids: &CudaSlice<i32>,
        rows: &CudaSlice<i32>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<u16>,
        (m, k, topk, e, t): (usize, usize, usize, usize, usize),
    ) -> Result<(), DeviceError> {
        const OP: &str = "finalize";
        need(eo, e * t * k, "expert_out");
        need(ids, m * topk, "topk_ids");
        need(rows, m * topk, "rows");
        need(w, m * topk, "topk_weights");
        need(out, m * k, "out");
        let f = self.dev.function(KernelId::Finalize, "moe_finalize")?;
        let mi = m as i64;
        let (ki, topki, ei, ti) = (int(k), int(topk), int(e), int(t));
        let mut b = self.stream.launch_builder(&f);
        b.arg(eo)
            .arg(ids)
            .arg(rows)
            .arg(w)
            .arg(out)
            .arg(&mi)
            .arg(&ki)
            .arg(&topki)
            .arg(&ei)
            .arg(&ti);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(m * k, 256, self.dev.sm_count() * 16), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature above in order and type (M as a 64-bit
        // integer). The kernel reads expert_out only at (id, row) with 0 <= id < E and
        // 0 <= row < T (checked in the kernel) and k < K, reads ids/rows/w below M*topk, and
        // writes out below M*K: within the lengths asserted above.
        unsafe { b.launch(cfg) }.map_err(driver_err(OP))?;
        Ok(())
    }

    /// `moe_exp_f32_range(u32 start, long long n, float* out)`.
    pub(crate) fn exp_f32_range(&self, start: u32, n: usize, out: &mut CudaSlice<f32>) -> Result<(), DeviceError> {
        need(out, n, "out");
        let f = self.dev.function(KernelId::Selftest, "moe_exp_f32_range")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&start).arg(&ni).arg(out);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n, 256, self.dev.sm_count() * 32), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature in order and type; the kernel writes out[i]
        // for i < n only, and `out` holds at least n elements (asserted).
        unsafe { b.launch(cfg) }.map_err(driver_err("exp self-test"))?;
        Ok(())
    }

    /// `moe_e4m3_range(u32 start, long long n, u8* out)`.
    pub(crate) fn e4m3_range(&self, start: u32, n: usize, out: &mut CudaSlice<u8>) -> Result<(), DeviceError> {
        need(out, n, "out");
        let f = self.dev.function(KernelId::Selftest, "moe_e4m3_range")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&start).arg(&ni).arg(out);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n, 256, self.dev.sm_count() * 32), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the C signature in order and type; the kernel writes out[i]
        // for i < n only, and `out` holds at least n elements (asserted).
        unsafe { b.launch(cfg) }.map_err(driver_err("e4m3 self-test"))?;
        Ok(())
    }

    /// `moe_vllm_ceil_table(u16* out)`: 65536 entries.
    pub(crate) fn vllm_ceil_table(&self, out: &mut CudaSlice<u16>) -> Result<(), DeviceError> {
        need(out, 65536, "out");
        let f = self.dev.function(KernelId::Selftest, "moe_vllm_ceil_table")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(out);
        let cfg = LaunchConfig {
            grid_dim: (256, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one argument, a device pointer to at least 65536 u16 (asserted); the kernel
        // writes out[i] for i < 65536 only, and 256 x 256 threads cover exactly that range.
        unsafe { b.launch(cfg) }.map_err(driver_err("vllm ceil self-test"))?;
        Ok(())
    }
}
