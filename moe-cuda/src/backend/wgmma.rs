//! The opt-in TMA + `wgmma` grouped GEMM on [`CudaBackend`], and the host side of its probe
//! kernels (test support). The trait's `grouped_gemm` still runs gemm.cu; the switch waits for
//! the GPU validation of this path (tests/wgmma.rs).

use half::bf16;
use moe_core::{GemmInputs, GroupedGemm, MoeResult};

use super::{CudaBackend, GemmOperands};
use crate::launch::gemm_layouts;
use crate::limits;
use crate::memory::{alloc, bf16_bits_mut, commit1, fetch, sync, upload};

/// Bytes of one probe box: 64 rows of 128 bytes.
const BOX_BYTES: usize = 64 * 128;

impl CudaBackend {
    /// The grouped GEMM of SPEC §5.3 through `gemm_wgmma.cu` (TMA loads into a 4-stage
    /// shared-memory ring, `wgmma m64n128k32` E4M3 on one consumer warpgroup, promotion per
    /// 128-K block in f32, predicated bf16 stores of the live rows).
    ///
    /// Same validation, errors and all-or-nothing commit of `d` as
    /// [`Backend::grouped_gemm`](moe_core::Backend::grouped_gemm), plus the TMA unit's limits
    /// (a `ProblemError` naming the tensor and dimension, before any device work). Packed UE8M0
    /// activation scales are not taken by this kernel: such a call runs gemm.cu's
    /// `mma.sync` kernel instead (same contract, same bound).
    pub fn grouped_gemm_wgmma(&self, p: &GroupedGemm, inputs: GemmInputs<'_>, d: &mut [bf16]) -> MoeResult<()> {
        const OP: &str = "grouped gemm (wgmma)";
        p.check(&inputs, d)?;
        if p.scale_format().is_packed() {
            return self.grouped_gemm_variant(p, inputs, d, true);
        }
        let (e, t, n, k) = (p.experts(), p.capacity(), p.n(), p.k());
        limits::grouped_gemm(e, t, n, k)?;
        gemm_layouts(e, t, n, k)?;
        let _g = self.guard();
        let s = &self.stream;
        let mut g = GemmOperands::upload(s, inputs, d, OP)?;
        self.launcher()
            .grouped_gemm_wgmma(&g.a, &g.sa, &g.b, &g.sb, &mut g.d, &g.counts, (e, t, n, k))?;
        commit1(|| fetch(s, &g.d, OP), bf16_bits_mut(d), || sync(&self.dev, s, OP))?;
        Ok(())
    }

    /// Probe (a): one TMA box `(128 B, 64 rows, 1)` of `src`, an `(E, rows, K)` E4M3 tensor, at
    /// K byte `k0`, row `row0` and expert `e0`, through the GEMM's tensor-map encoding (128-byte
    /// swizzle); returns the 8192 bytes of shared memory as the TMA unit wrote them (swizzled;
    /// rows past `rows` zero-filled). Test support.
    #[doc(hidden)]
    pub fn wgmma_probe_tma(&self, src: &[u8], shape: (usize, usize, usize), at: (usize, usize, usize)) -> MoeResult<Vec<u8>> {
        const OP: &str = "wgmma probe (tma)";
        let (e, rows, k) = shape;
        assert!(src.len() == e * rows * k && k % 128 == 0 && at.0 % 128 == 0 && at.0 < k && at.1 < rows && at.2 < e);
        let _g = self.guard();
        let st = &self.stream;
        let src_d = upload(st, src, OP)?;
        let mut out = alloc::<u8>(st, BOX_BYTES, OP)?;
        self.launcher().wgmma_probe_tma(&src_d, shape, at, &mut out)?;
        let mut host = vec![0u8; BOX_BYTES];
        commit1(|| fetch(st, &out, OP), &mut host, || sync(&self.dev, st, OP))?;
        Ok(host)
    }

    /// Probe (b): the f32 tensor-core partial of one 64 x 128 tile over K = 128, `a` 64 x 128
    /// and `b` 128 x 128 row-major E4M3 (`out[r * 128 + c] = Σ_k a[r, k]·b[c, k]` as the four
    /// chained `wgmma m64n128k32` compute it). Test support.
    #[doc(hidden)]
    pub fn wgmma_probe_mma(&self, a: &[u8], b: &[u8]) -> MoeResult<Vec<f32>> {
        const OP: &str = "wgmma probe (mma)";
        assert!(a.len() == 64 * 128 && b.len() == 128 * 128);
        let _g = self.guard();
        let st = &self.stream;
        let a_d = upload(st, a, OP)?;
        let b_d = upload(st, b, OP)?;
        let mut out = alloc::<f32>(st, 64 * 128, OP)?;
        self.launcher().wgmma_probe_mma(&a_d, &b_d, &mut out)?;
        let mut host = vec![0f32; 64 * 128];
        commit1(|| fetch(st, &out, OP), &mut host, || sync(&self.dev, st, OP))?;
        Ok(host)
    }

    /// Probe (c): `ntiles` boxes of `src` (`(E, rows, K)` E4M3; tile i at K block `i % KB`, row
    /// tile `(i / KB) % ceil(rows / 64)`, expert `(i / (KB·MT)) % E`) moved through the GEMM's
    /// 4-stage mbarrier ring, each un-swizzled into `out[i * 8192 ..]` (row-major 64 x 128).
    /// Test support.
    #[doc(hidden)]
    pub fn wgmma_probe_ring(&self, src: &[u8], shape: (usize, usize, usize), ntiles: usize) -> MoeResult<Vec<u8>> {
        const OP: &str = "wgmma probe (ring)";
        let (e, rows, k) = shape;
        assert!(src.len() == e * rows * k && k % 128 == 0 && ntiles >= 1);
        let _g = self.guard();
        let st = &self.stream;
        let src_d = upload(st, src, OP)?;
        let mut out = alloc::<u8>(st, ntiles * BOX_BYTES, OP)?;
        self.launcher().wgmma_probe_ring(&src_d, shape, ntiles, &mut out)?;
        let mut host = vec![0u8; ntiles * BOX_BYTES];
        commit1(|| fetch(st, &out, OP), &mut host, || sync(&self.dev, st, OP))?;
        Ok(host)
    }
}
