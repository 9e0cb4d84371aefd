//! The launches of `gemm_wgmma.cu`: the TMA + `wgmma` grouped GEMM and its three probe kernels
//! (test support). The tensor maps are encoded here, from the borrowed buffers, so a map never
//! outlives the borrow of the memory it points at.
//!
//! The constants below mirror the `WG_*` macros of the kernel file; the shared-memory sizes are
//! the kernel's layout plus 1024 bytes of slack for rounding the base up to 1024.

use cudarc::driver::{CudaSlice, DevicePtr};
use moe_core::{DeviceError, ProblemError, GROUP};

use super::{need, need_gemm, Arg, Args, Config, Launcher};
use crate::kernels::KernelId;
use crate::tma::TiledE4m3;

/// Rows per tile (`WG_BM`): two consumer warpgroups of 64 rows (the wgmma M).
pub(crate) const WG_BM: usize = 128;
/// Columns per tile (`WG_BN`): the wgmma N, one weight-scale block.
pub(crate) const WG_BN: usize = 128;
/// Stages of the GEMM's shared-memory ring (`WG_STAGES`).
const WG_STAGES: u32 = 6;
/// Bytes of one A box (128 rows x 128 K) and one B box (128 rows x 128 K).
const A_BYTES: u32 = (WG_BM * GROUP) as u32;
const B_BYTES: u32 = (WG_BN * GROUP) as u32;
/// The probes' boxes: 64 rows (`PB_ROWS`) x 128 K, through a 4-stage ring (`PB_STAGES`).
const PB_ROWS: usize = 64;
const PB_BOX_BYTES: u32 = (PB_ROWS * GROUP) as u32;
const PB_STAGES: u32 = 4;
/// The probes' block: one consumer warpgroup and one producer warp (`PB_THREADS`).
const PB_THREADS: u32 = 160;
/// Slack for aligning the dynamic shared memory to 1024 bytes (the 128-byte swizzle's period).
const ALIGN_SLACK: u32 = 1024;
/// One producer warpgroup and two consumer warpgroups (`WG_THREADS`).
const WG_THREADS: u32 = 384;
/// Dynamic shared memory of the GEMM: the ring's stages, then 2 x STAGES mbarriers of 8 bytes.
pub(crate) const GEMM_SMEM: u32 = ALIGN_SLACK + WG_STAGES * (A_BYTES + B_BYTES) + 2 * WG_STAGES * 8;
/// CTAs per SM the grid is sized for (the kernel's `__launch_bounds__(384, 1)`: the consumers
/// raise their registers to 232 with `setmaxnreg`, which fills the SM's file).
const CTAS_PER_SM: u32 = 1;

/// The tensor maps' layouts of `a (E, T, K)` (boxes of 128 rows) and `b (E, N, K)` (boxes of
/// 128 rows), or the TMA limit that the shape breaks, by tensor and dimension.
pub(crate) fn gemm_layouts(e: usize, t: usize, n: usize, k: usize) -> Result<(TiledE4m3, TiledE4m3), ProblemError> {
    Ok((TiledE4m3::new("a", e, t, k, WG_BM)?, TiledE4m3::new("b", e, n, k, WG_BN)?))
}

impl<'a> Args<'a> {
    /// The tensor map of `buf` with `layout`, by value; `buf` stays borrowed until the launch.
    fn tensor_map(&mut self, buf: &'a CudaSlice<u8>, layout: &TiledE4m3, op: &'static str) -> Result<&mut Self, DeviceError> {
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        self.vals.push(Arg::Map(layout.encode(ptr, op)?));
        Ok(self)
    }
}

// The CTA fits in an SM's 228 KiB (1 KiB per CTA is reserved by the system), and within the
// launch helper's limit; the probes need no raised limit.
const _: () = assert!(CTAS_PER_SM * (GEMM_SMEM + 1024) <= 228 * 1024);
const _: () = assert!(GEMM_SMEM <= super::config::MAX_DYN_SMEM);
const _: () = assert!(PROBE_TMA_SMEM <= 48 * 1024 && PROBE_MMA_SMEM <= 48 * 1024 && PROBE_RING_SMEM <= 48 * 1024);

/// Dynamic shared memory of a probe kernel, in bytes.
const PROBE_TMA_SMEM: u32 = ALIGN_SLACK + PB_BOX_BYTES + 8;
const PROBE_MMA_SMEM: u32 = ALIGN_SLACK + PB_BOX_BYTES + B_BYTES;
const PROBE_RING_SMEM: u32 = ALIGN_SLACK + PB_STAGES * PB_BOX_BYTES + 2 * PB_STAGES * 8;

fn with_smem(grid: u32, block: u32, dyn_smem: u32) -> Config {
    Config {
        dyn_smem,
        ..Config::plain(grid, block)
    }
}

impl Launcher<'_> {
    /// `moe_grouped_gemm_wgmma(const TmaMap map_a, const TmaMap map_b, const float* sa,
    /// const float* sb, u16* d, const int* counts, int E, int T, int N, int K)`.
    ///
    /// `sa` holds f32 scales (F32 or F32CeilUe8m0) MN-major `(E, K/128, T)`, as raw words.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_gemm_wgmma(
        &self,
        a: &CudaSlice<u8>,
        sa: &CudaSlice<u32>,
        bw: &CudaSlice<u8>,
        sb: &CudaSlice<f32>,
        d: &mut CudaSlice<u16>,
        counts: &CudaSlice<i32>,
        (e, t, n, k): (usize, usize, usize, usize),
    ) -> Result<(), DeviceError> {
        const OP: &str = "grouped gemm (wgmma)";
        assert!(n % WG_BN == 0 && k % GROUP == 0, "moe-cuda bug: N = {n}, K = {k}");
        let (la, lb) = gemm_layouts(e, t, n, k).expect("moe-cuda bug: the entry point validated the TMA layouts");
        need_gemm(a, sa, k / GROUP, bw, sb, d, counts, (e, t, n, k));
        let mut args = Args::new(self.stream);
        args.tensor_map(a, &la, OP)?.tensor_map(bw, &lb, OP)?;
        args.buf(sa).buf(sb).buf_mut(d).buf(counts).dim(e).dim(t).dim(n).dim(k);
        let tiles = e * t.div_ceil(WG_BM) * (n / WG_BN);
        let grid = super::blocks_for(tiles, 1, self.dev.sm_count() * CTAS_PER_SM);
        // SAFETY: arguments match the C signature above in order and type (two 128-byte maps
        // by value, four device pointers, four ints). The maps describe `a` as (K, T, E) and `b`
        // as (K, N, E) bytes at those buffers' addresses, whose lengths were asserted above, so
        // the TMA unit reads only inside them (rows past T are zero-filled, never read). The
        // kernel walks tiles (e < E, m0 < T, n0 < N) of the fixed tile space, reads `sa` at
        // (e, kb, t) only for t < clamp(counts[e], 0, T) <= T, `sb` at (e, n0/128, kb) with
        // kb < K/128, and writes `d` at (e, t, n0..n0+128) only for t < clamp(counts[e], 0, T):
        // all within the asserted lengths. It needs exactly 384 threads (a producer warpgroup
        // and two consumer warpgroups; its empty barriers count 8 arrivals) and GEMM_SMEM bytes of dynamic
        // shared memory (1024 slack + 6 stages x 32 KiB + 12 barriers).
        unsafe {
            self.launch(
                KernelId::GemmWgmma,
                "moe_grouped_gemm_wgmma",
                with_smem(grid, WG_THREADS, GEMM_SMEM),
                args,
                OP,
            )
        }
    }

    /// `moe_wgmma_probe_tma(const TmaMap map, int c0, int c1, int c2, u8* out)`: one
    /// `(128, 64, 1)` box of `src` seen as `(E, rows, K)`, at `coords` (K byte, row, expert), as
    /// raw (swizzled) shared-memory bytes into `out[0..8192)`.
    pub(crate) fn wgmma_probe_tma(
        &self,
        src: &CudaSlice<u8>,
        (e, rows, k): (usize, usize, usize),
        coords: (usize, usize, usize),
        out: &mut CudaSlice<u8>,
    ) -> Result<(), DeviceError> {
        const OP: &str = "wgmma probe (tma)";
        let layout = TiledE4m3::new("src", e, rows, k, PB_ROWS).expect("moe-cuda bug: probe shape");
        need(src, e * rows * k, "src");
        need(out, PB_BOX_BYTES as usize, "out");
        let mut args = Args::new(self.stream);
        args.tensor_map(src, &layout, OP)?;
        args.dim(coords.0).dim(coords.1).dim(coords.2).buf_mut(out);
        // SAFETY: arguments match the C signature above. The map describes `src` (length
        // asserted) and the TMA unit zero-fills whatever part of the box lies outside it (any
        // coordinates are safe); the kernel writes out[0..8192) (asserted) with 128 threads and
        // uses 1024 + 8192 + 8 bytes of dynamic shared memory.
        unsafe {
            self.launch(
                KernelId::GemmWgmma,
                "moe_wgmma_probe_tma",
                with_smem(1, 128, PROBE_TMA_SMEM),
                args,
                OP,
            )
        }
    }

    /// `moe_wgmma_probe_mma(const u8* a, const u8* b, float* out)`: the f32 partial of one
    /// 64 x 128 tile over K = 128 (`a` 64 x 128 and `b` 128 x 128 row-major E4M3).
    pub(crate) fn wgmma_probe_mma(&self, a: &CudaSlice<u8>, b: &CudaSlice<u8>, out: &mut CudaSlice<f32>) -> Result<(), DeviceError> {
        const OP: &str = "wgmma probe (mma)";
        need(a, PB_BOX_BYTES as usize, "a");
        need(b, B_BYTES as usize, "b");
        need(out, PB_ROWS * WG_BN, "out");
        let mut args = Args::new(self.stream);
        args.buf(a).buf(b).buf_mut(out);
        // SAFETY: arguments match the C signature above (three device pointers). The kernel
        // reads a[0..8192) and b[0..16384) and writes out[0..64*128) (lengths asserted), with
        // exactly one warpgroup (128 threads) and 1024 + 24576 bytes of dynamic shared memory.
        unsafe {
            self.launch(
                KernelId::GemmWgmma,
                "moe_wgmma_probe_mma",
                with_smem(1, 128, PROBE_MMA_SMEM),
                args,
                OP,
            )
        }
    }

    /// `moe_wgmma_probe_ring(const TmaMap map, int E, int T, int K, int ntiles, u8* out)`:
    /// `ntiles` boxes of `src` seen as `(E, rows, K)` through the 4-stage ring, un-swizzled
    /// into `out[i * 8192 ..]`.
    pub(crate) fn wgmma_probe_ring(
        &self,
        src: &CudaSlice<u8>,
        (e, rows, k): (usize, usize, usize),
        ntiles: usize,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), DeviceError> {
        const OP: &str = "wgmma probe (ring)";
        let layout = TiledE4m3::new("src", e, rows, k, PB_ROWS).expect("moe-cuda bug: probe shape");
        need(src, e * rows * k, "src");
        need(out, ntiles * PB_BOX_BYTES as usize, "out");
        let mut args = Args::new(self.stream);
        args.tensor_map(src, &layout, OP)?;
        args.dim(e).dim(rows).dim(k).dim(ntiles).buf_mut(out);
        // SAFETY: arguments match the C signature above. Every box the producer loads has
        // coordinates (kb * 128 < K, row tile * 64 < rows, expert < E) inside the map of `src`
        // (length asserted; rows past `rows` are zero-filled); the consumers write
        // out[0..ntiles * 8192) (asserted). 160 threads (4 consumer warps, the empty barriers'
        // count, and a producer warp) and 1024 + 4 x 8192 + 64 bytes of dynamic shared memory.
        unsafe {
            self.launch(
                KernelId::GemmWgmma,
                "moe_wgmma_probe_ring",
                with_smem(1, PB_THREADS, PROBE_RING_SMEM),
                args,
                OP,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gemm_shared_memory_is_the_kernels_layout() {
        assert_eq!(GEMM_SMEM, 1024 + 6 * 32768 + 96);
    }

    #[test]
    fn the_layouts_reject_what_the_tma_unit_cannot_address() {
        let (a, b) = gemm_layouts(8, 65, 4096, 7168).unwrap();
        assert_ne!(a, b);
        assert!(gemm_layouts(1, 1 << 33, 128, 128).is_err());
    }
}
