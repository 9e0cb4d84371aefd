//! The router (SPEC §5.6) on [`CudaBackend`]: `route.cu`, one warp per token.
//!
//! The kernel records the first NaN logit in a device word instead of an error; the host turns
//! it into moe-core's `NanLogit`, the error the CPU reference returns, and then writes neither
//! output (the downloads are staged like every other call's).

use moe_core::{MoeResult, ProblemError, Route};

use super::CudaBackend;
use crate::limits;
use crate::memory::{alloc, fetch, sync, upload};

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
