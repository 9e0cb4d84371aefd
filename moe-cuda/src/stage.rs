//! The experts stage on device buffers, shared by [`CudaBackend`](crate::CudaBackend)'s
//! host-slice `apply` and by [`ResidentExperts`](crate::ResidentExperts): the buffers, their validated
//! uploads and staged downloads, and the four launches of one step.
//!
//! The buffers are split by lifetime: [`Weights`] (uploaded once, kept resident),
//! [`Activations`] (uploaded per step) and [`Work`] (the intermediates, the output and the
//! counts prefixes).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use moe_core::{check_counts, check_len, DeviceError, ExpertsStage, ExpertsWorkspace, MoeResult, ProblemError, Scales, WeightsRef};

use crate::kernels::GemmKernel;
use crate::launch::{gemm_layouts, Launcher, GEMM_BM};
use crate::limits;
use crate::memory::{alloc, bf16_bits, fetch, scale_words, upload_into};

const OP: &str = "experts";

/// `w1 (E, 2I, K)`, `w2 (E, K, I)` and their block scales.
#[derive(Debug)]
pub(crate) struct Weights {
    w1: CudaSlice<u8>,
    w1s: CudaSlice<f32>,
    w2: CudaSlice<u8>,
    w2s: CudaSlice<f32>,
}

/// `a1q (E, T, K)`, its scales and the device `counts`.
#[derive(Debug)]
pub(crate) struct Activations {
    a1q: CudaSlice<u8>,
    a1s: CudaSlice<u32>,
    pub(crate) counts: CudaSlice<i32>,
}

/// The intermediates `h1`, `q2`, `s2`, the output, and the counts prefixes.
#[derive(Debug)]
pub(crate) struct Work {
    h1: CudaSlice<u16>,
    q2: CudaSlice<u8>,
    s2: CudaSlice<u32>,
    out: CudaSlice<u16>,
    prefix: CudaSlice<i32>,
    tile_prefix: CudaSlice<i32>,
}

/// Host copies of the intermediates, downloaded but not yet handed to the caller.
#[derive(Debug)]
pub(crate) struct HostWork {
    h1: Vec<u16>,
    q2: Vec<u8>,
    s2: Vec<u32>,
}

impl HostWork {
    /// Copies into `ws` (whose shapes [`check_workspace`] accepted).
    pub(crate) fn copy_into(self, ws: &mut ExpertsWorkspace) {
        crate::memory::bf16_bits_mut(&mut ws.h1).copy_from_slice(&self.h1);
        ws.q2.copy_from_slice(&self.q2);
        crate::memory::scale_buf_words_mut(&mut ws.s2).copy_from_slice(&self.s2);
    }
}

/// Rejects a problem whose dimensions the kernels cannot index.
pub(crate) fn check_dims(p: &ExpertsStage) -> Result<(), ProblemError> {
    limits::experts(p.experts(), p.capacity(), p.k(), p.i())
}

/// Validates `ws` against `p`'s intermediates, naming the first wrong tensor.
pub(crate) fn check_workspace(p: &ExpertsStage, ws: &ExpertsWorkspace) -> Result<(), ProblemError> {
    let (e, t, i) = (p.experts(), p.capacity(), p.i());
    check_len("h1", ws.h1.len(), &[e, t, 2 * i])?;
    check_len("q2", ws.q2.len(), &[e, t, i])?;
    let sh = p.silu().scale_shape();
    ws.s2.view().check("s2", p.scale_format(), sh.iter().product(), &sh)
}

impl Weights {
    /// Zero-filled weights for `p`.
    pub(crate) fn alloc(stream: &Arc<CudaStream>, p: &ExpertsStage) -> Result<Self, DeviceError> {
        let (e, k, i) = (p.experts(), p.k(), p.i());
        Ok(Weights {
            w1: alloc(stream, e * 2 * i * k, OP)?,
            w1s: alloc(stream, p.gemm1().sb_shape().iter().product(), OP)?,
            w2: alloc(stream, e * k * i, OP)?,
            w2s: alloc(stream, p.gemm2().sb_shape().iter().product(), OP)?,
        })
    }

    /// Validates `w1` and `w2` exactly like `ExpertsStage::check`, then uploads them.
    pub(crate) fn upload(&mut self, stream: &Arc<CudaStream>, p: &ExpertsStage, w1: &WeightsRef<'_>, w2: &WeightsRef<'_>) -> MoeResult<()> {
        let (e, k, i) = (p.experts(), p.k(), p.i());
        check_len("w1", w1.q.len(), &[e, 2 * i, k])?;
        check_len("w1s", w1.s.len(), &p.gemm1().sb_shape())?;
        check_len("w2", w2.q.len(), &[e, k, i])?;
        check_len("w2s", w2.s.len(), &p.gemm2().sb_shape())?;
        upload_into(stream, w1.q, &mut self.w1, OP)?;
        upload_into(stream, w1.s, &mut self.w1s, OP)?;
        upload_into(stream, w2.q, &mut self.w2, OP)?;
        upload_into(stream, w2.s, &mut self.w2s, OP)?;
        Ok(())
    }
}

impl Activations {
    /// Zero-filled activations and counts for `p`.
    pub(crate) fn alloc(stream: &Arc<CudaStream>, p: &ExpertsStage) -> Result<Self, DeviceError> {
        let (e, t, k) = (p.experts(), p.capacity(), p.k());
        Ok(Activations {
            a1q: alloc(stream, e * t * k, OP)?,
            a1s: alloc(stream, p.a1s_shape().iter().product(), OP)?,
            counts: alloc(stream, e, OP)?,
        })
    }

    /// Validates `a1q`, `a1s` and `counts` exactly like `ExpertsStage::check`, then uploads them.
    pub(crate) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        p: &ExpertsStage,
        a1q: &[u8],
        a1s: &Scales<'_>,
        counts: &[i32],
    ) -> MoeResult<()> {
        let (e, t, k) = (p.experts(), p.capacity(), p.k());
        check_len("a1q", a1q.len(), &[e, t, k])?;
        let sh = p.a1s_shape();
        a1s.check("a1s", p.scale_format(), sh.iter().product(), &sh)?;
        check_counts(counts, e, t)?;
        upload_into(stream, a1q, &mut self.a1q, OP)?;
        upload_into(stream, scale_words(a1s), &mut self.a1s, OP)?;
        upload_into(stream, counts, &mut self.counts, OP)?;
        Ok(())
    }

    /// Overwrites the device counts with any `E` values (not range-checked).
    pub(crate) fn set_counts(&mut self, stream: &Arc<CudaStream>, p: &ExpertsStage, counts: &[i32]) -> MoeResult<()> {
        check_len("counts", counts.len(), &[p.experts()])?;
        upload_into(stream, counts, &mut self.counts, OP)?;
        Ok(())
    }
}

impl Work {
    /// Zero-filled intermediates and output for `p`.
    pub(crate) fn alloc(stream: &Arc<CudaStream>, p: &ExpertsStage) -> Result<Self, DeviceError> {
        let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
        Ok(Work {
            h1: alloc(stream, e * t * 2 * i, OP)?,
            q2: alloc(stream, e * t * i, OP)?,
            s2: alloc(stream, p.silu().scale_shape().iter().product(), OP)?,
            out: alloc(stream, e * t * k, OP)?,
            prefix: alloc(stream, e + 1, OP)?,
            tile_prefix: alloc(stream, e + 1, OP)?,
        })
    }

    /// Uploads the caller's output (its rows past `counts` keep these values).
    pub(crate) fn upload_output(&mut self, stream: &Arc<CudaStream>, p: &ExpertsStage, out: &[bf16]) -> MoeResult<()> {
        check_len("out", out.len(), &p.workspace_shapes().output)?;
        upload_into(stream, bf16_bits(out), &mut self.out, OP)?;
        Ok(())
    }

    /// Uploads the intermediates (so that their rows past `counts` round-trip unchanged).
    pub(crate) fn upload_workspace(&mut self, stream: &Arc<CudaStream>, p: &ExpertsStage, ws: &ExpertsWorkspace) -> MoeResult<()> {
        check_workspace(p, ws)?;
        upload_into(stream, bf16_bits(&ws.h1), &mut self.h1, OP)?;
        upload_into(stream, &ws.q2, &mut self.q2, OP)?;
        upload_into(stream, scale_words(&ws.s2.view()), &mut self.s2, OP)?;
        Ok(())
    }

    /// The output, downloaded into a host `Vec` (staged: not yet the caller's buffer).
    pub(crate) fn fetch_output(&self, stream: &Arc<CudaStream>) -> Result<Vec<bf16>, DeviceError> {
        let bits = fetch(stream, &self.out, OP)?;
        Ok(bits.into_iter().map(bf16::from_bits).collect())
    }

    /// The intermediates, downloaded into host `Vec`s (staged).
    pub(crate) fn fetch_workspace(&self, stream: &Arc<CudaStream>) -> Result<HostWork, DeviceError> {
        Ok(HostWork {
            h1: fetch(stream, &self.h1, OP)?,
            q2: fetch(stream, &self.q2, OP)?,
            s2: fetch(stream, &self.s2, OP)?,
        })
    }
}

/// Whether `kernel` can run the stage's two GEMMs: `Err` names the limit the shape breaks (the
/// wgmma kernel's TMA layouts); packed UE8M0 scales are `Ok` (the stage then runs `mma.sync`).
pub(crate) fn check_kernel(p: &ExpertsStage, kernel: GemmKernel) -> Result<(), ProblemError> {
    let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
    if kernel == GemmKernel::Wgmma && !p.scale_format().is_packed() {
        gemm_layouts(e, t, 2 * i, k)?;
        gemm_layouts(e, t, k, i)?;
    }
    Ok(())
}

/// Enqueues one step of the stage on `l`'s stream: the counts prefix, GEMM1, SiLU-mul-quant,
/// GEMM2. Every grid depends on the shape only and every kernel clamps the device counts, so
/// the sequence allocates nothing, synchronizes nothing and can be captured in a graph.
/// `kernel` picks the GEMM kernel (`Wgmma` needs [`check_kernel`] first; with packed scales it
/// runs `mma.sync`).
pub(crate) fn enqueue(
    l: &Launcher<'_>,
    p: &ExpertsStage,
    kernel: GemmKernel,
    w: &Weights,
    a: &Activations,
    work: &mut Work,
) -> Result<(), DeviceError> {
    let (e, t, k, i) = (p.experts(), p.capacity(), p.k(), p.i());
    let fmt = p.scale_format();
    if kernel == GemmKernel::Wgmma && !fmt.is_packed() {
        l.grouped_gemm_wgmma(&a.a1q, &a.a1s, &w.w1, &w.w1s, &mut work.h1, &a.counts, (e, t, 2 * i, k))?;
        l.counts_prefix(&a.counts, e, t, GEMM_BM, &mut work.prefix, &mut work.tile_prefix)?;
        l.silu_mul_quant(&work.h1, &mut work.q2, &mut work.s2, (e, t, i), &work.prefix, fmt, p.numerics())?;
        return l.grouped_gemm_wgmma(&work.q2, &work.s2, &w.w2, &w.w2s, &mut work.out, &a.counts, (e, t, k, i));
    }
    l.counts_prefix(&a.counts, e, t, GEMM_BM, &mut work.prefix, &mut work.tile_prefix)?;
    l.grouped_gemm(
        &a.a1q,
        &a.a1s,
        fmt,
        &w.w1,
        &w.w1s,
        &mut work.h1,
        &a.counts,
        &work.tile_prefix,
        (e, t, 2 * i, k),
        true,
    )?;
    l.silu_mul_quant(&work.h1, &mut work.q2, &mut work.s2, (e, t, i), &work.prefix, fmt, p.numerics())?;
    l.grouped_gemm(
        &work.q2,
        &work.s2,
        fmt,
        &w.w2,
        &w.w2s,
        &mut work.out,
        &a.counts,
        &work.tile_prefix,
        (e, t, k, i),
        true,
    )
}

#[cfg(test)]
mod tests {
    use moe_core::{Numerics, ScaleBuf, ScaleFormat};

    use super::*;

    #[test]
    fn the_workspace_is_checked_from_the_shapes_alone() {
        let p = ExpertsStage::new(3, 5, 256, 384, ScaleFormat::Ue8m0Packed, Numerics::VllmBf16).unwrap();
        let good = ExpertsWorkspace::new(&p);
        assert!(check_workspace(&p, &good).is_ok());
        let mut ws = good.clone();
        ws.h1.pop();
        assert_eq!(check_workspace(&p, &ws).unwrap_err().tensor(), "h1");
        let mut ws = good.clone();
        ws.q2.push(0);
        assert_eq!(check_workspace(&p, &ws).unwrap_err().tensor(), "q2");
        // Same length, wrong kind: f32 scales where packed words are expected.
        let mut ws = good.clone();
        ws.s2 = ScaleBuf::F32(vec![0.0; good.s2.len()]);
        assert_eq!(check_workspace(&p, &ws).unwrap_err().tensor(), "s2");
        let empty = ExpertsWorkspace {
            h1: Vec::new(),
            q2: Vec::new(),
            s2: ScaleBuf::Packed(Vec::new()),
        };
        assert!(check_workspace(&p, &empty).is_err());
    }

    #[test]
    fn the_experts_dimensions_go_through_the_kernel_limits() {
        let p = ExpertsStage::new(1 << 16, 1 << 15, 128, 128, ScaleFormat::F32, Numerics::F32).unwrap();
        assert!(check_dims(&p).is_err());
        let p = ExpertsStage::new(8, 256, 7168, 2048, ScaleFormat::F32, Numerics::F32).unwrap();
        assert!(check_dims(&p).is_ok());
    }
}
