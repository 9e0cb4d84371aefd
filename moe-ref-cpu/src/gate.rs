//! The gate GEMM (SPEC §5.7 step 1) on the CPU: each logit is moe-core's [`gate_logit`], the
//! float64 sum in increasing `k`, rounded once.

use half::bf16;
use moe_core::{finish_logit, gate_logit, Gate, MoeResult};
use rayon::prelude::*;

use crate::fast::CpuBackend;

/// The plain loop nest, one [`gate_logit`] per (token, expert).
pub(crate) fn naive(p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
    p.check(x, w, logits)?;
    let (eg, k) = (p.experts(), p.k());
    for (m, row) in logits.chunks_exact_mut(eg.max(1)).enumerate().take(p.tokens()) {
        for (e, l) in row.iter_mut().enumerate() {
            *l = gate_logit(&x[m * k..(m + 1) * k], &w[e * k..(e + 1) * k]);
        }
    }
    Ok(())
}

/// Experts computed together per pass over a token's row: independent float64 chains, each
/// still summed in increasing `k` (so bit-identical to [`gate_logit`]).
const LANES: usize = 4;

/// Tokens in parallel on the backend's pool; per token, [`LANES`] experts at a time.
pub(crate) fn fast(b: &CpuBackend, p: &Gate, x: &[bf16], w: &[f32], logits: &mut [f32]) -> MoeResult<()> {
    p.check(x, w, logits)?;
    let (eg, k) = (p.experts(), p.k());
    if p.tokens() == 0 {
        return Ok(());
    }
    b.install(|| {
        logits.par_chunks_exact_mut(eg).zip(x.par_chunks_exact(k)).for_each(|(row, xr)| {
            let xs: Vec<f64> = xr.iter().map(|v| f64::from(v.to_f32())).collect();
            let mut e0 = 0;
            while e0 + LANES <= eg {
                let ws: [&[f32]; LANES] = std::array::from_fn(|j| &w[(e0 + j) * k..(e0 + j + 1) * k]);
                let mut acc = [0f64; LANES];
                for (i, &xv) in xs.iter().enumerate() {
                    for j in 0..LANES {
                        acc[j] += xv * f64::from(ws[j][i]);
                    }
                }
                for j in 0..LANES {
                    row[e0 + j] = finish_logit(acc[j]);
                }
                e0 += LANES;
            }
            for e in e0..eg {
                row[e] = gate_logit(xr, &w[e * k..(e + 1) * k]);
            }
        });
    });
    Ok(())
}
