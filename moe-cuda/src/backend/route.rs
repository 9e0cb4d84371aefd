//! The router (SPEC §5.6) on [`CudaBackend`]: `route.cu`, one warp per token; and the gate GEMM
//! before it (SPEC §5.7 step 1).
//!
//! The kernel records the first NaN logit in a device word instead of an error; the host turns
//! it into moe-core's `NanLogit`, the error the CPU reference returns, and then writes neither
//! output (the downloads are staged like every other call's).

use half::bf16;
use moe_core::{Gate, MoeResult, ProblemError, Route};

use super::CudaBackend;
use crate::limits;
use crate::memory::{alloc, bf16_bits, fetch, sync, upload};

/// [`Backend::route`](moe_core::Backend::route) on `b`.
pub(super) fn run(
    b: &CudaBackend,
    p: &Route,
    logits: &[f32],
    bias: Option<&[f32]>,
    topk_ids: &mut [i32],
    topk_weights: &mut [f32],
) -> MoeResult<()> {
    const OP: &str = "route";
    p.check(logits, bias, topk_ids, topk_weights)?;
    limits::route(p.experts())?;
    if p.tokens() == 0 {
        return Ok(());
    }
    let _g = b.guard();
    let st = &b.stream;
    let logits_d = upload(st, logits, OP)?;
    let bias_d = bias.map(|v| upload(st, v, OP)).transpose()?;
    let mut ids_d = alloc::<i32>(st, topk_ids.len(), OP)?;
    let mut w_d = alloc::<f32>(st, topk_weights.len(), OP)?;
    // All ones: no NaN seen; the kernel lowers it to the first `token * Eg + expert` with one.
    let mut nan_d = upload(st, &[u64::MAX], OP)?;
    b.launcher().route(p, &logits_d, bias_d.as_ref(), &mut ids_d, &mut w_d, &mut nan_d)?;
    let nan_at = fetch(st, &nan_d, OP)?;
    let ids = fetch(st, &ids_d, OP)?;
    let w = fetch(st, &w_d, OP)?;
    sync(&b.dev, st, OP)?;
    if let Some(&at) = nan_at.first().filter(|&&at| at != u64::MAX) {
        let eg = p.experts() as u64;
        return Err(ProblemError::NanLogit {
            token: (at / eg) as usize,
            expert: (at % eg) as usize,
        }
        .into());
    }
    topk_ids.copy_from_slice(&ids);
    topk_weights.copy_from_slice(&w);
    Ok(())
}

/// [`Backend::gate`](moe_core::Backend::gate) on `b`: `route.cu`'s `moe_gate`, exact float64
/// sums in the reference's order, so bit-identical to the CPU.
pub(super) fn gate(b: &CudaBackend, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
    const OP: &str = "gate";
    p.check(x, w, logits)?;
    limits::gate(p.experts(), p.k())?;
    if p.tokens() == 0 {
        return Ok(());
    }
    let _g = b.guard();
    let st = &b.stream;
    let x_d = upload(st, bf16_bits(x), OP)?;
    let w_d = upload(st, w, OP)?;
    let mut l_d = alloc::<f32>(st, logits.len(), OP)?;
    b.launcher().gate(p, &x_d, &w_d, &mut l_d)?;
    let out = fetch(st, &l_d, OP)?;
    sync(&b.dev, st, OP)?;
    logits.copy_from_slice(&out);
    Ok(())
}
