//! The launch of `kernels/route.cu`: the router, one warp per token. Part of the launch module,
//! so that every launch of the crate stays in `launch`.

use cudarc::driver::CudaSlice;
use moe_core::{DeviceError, Gate, Route};

use super::{blocks_for, need, Args, Config, Launcher};
use crate::kernels::{scoring_code, KernelId};
use crate::limits::ROUTE_MAX_EXPERTS;

/// The most warps (tokens in flight) per block: the kernel's `__launch_bounds__(256)`.
const MAX_WARPS: usize = 8;
/// The gate kernel's block: experts per block (`GATE_TE`) and tokens per block (`GATE_TM`).
const GATE_TE: usize = 32;
const GATE_TM: usize = 8;
/// Dynamic shared memory a block may use without raising its limit.
const SMEM_BUDGET: usize = 48 * 1024;

/// Bytes of dynamic shared memory of one warp: `c (Eg)` and `gscore (G)` floats.
fn smem_per_warp(p: &Route) -> usize {
    4 * (p.experts() + p.n_group())
}

/// Warps per block: as many as fit the default shared-memory budget, at most eight.
fn warps_per_block(p: &Route) -> usize {
    (SMEM_BUDGET / smem_per_warp(p)).clamp(1, MAX_WARPS)
}

// The largest router the entry points accept still fits one warp into the default budget.
const _: () = assert!(4 * 2 * ROUTE_MAX_EXPERTS <= SMEM_BUDGET);

impl Launcher<'_> {
    /// `moe_route(const float* logits, const float* bias, int* ids, float* w, u64* nan_at,
    /// long long M, int Eg, int topk, int scoring, int G, int TG, int renormalize, u32 scale_bits)`.
    ///
    /// `bias` is `None` exactly when `p` has none; `nan_at` must hold all ones (the kernel lowers
    /// it to the first `token * Eg + expert` with a NaN logit).
    pub(crate) fn route(
        &self,
        p: &Route,
        logits: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        ids: &mut CudaSlice<i32>,
        w: &mut CudaSlice<f32>,
        nan_at: &mut CudaSlice<u64>,
    ) -> Result<(), DeviceError> {
        let (m, eg, k) = (p.tokens(), p.experts(), p.topk());
        assert!(
            eg <= ROUTE_MAX_EXPERTS && p.has_bias() == bias.is_some(),
            "moe-cuda bug: router of {eg} experts (bias {}) reached the launch",
            bias.is_some()
        );
        need(logits, m * eg, "logits");
        if let Some(b) = bias {
            need(b, eg, "bias");
        }
        need(ids, m * k, "topk_ids");
        need(w, m * k, "topk_weights");
        need(nan_at, 1, "nan_at");
        let mut a = Args::new(self.stream);
        a.buf(logits).opt_buf(bias).buf_mut(ids).buf_mut(w).buf_mut(nan_at);
        a.i64(m).dim(eg).dim(k).i32(scoring_code(p.scoring())).dim(p.n_group()).dim(p.topk_group());
        a.i32(p.renormalize() as i32).u32(p.routed_scaling_factor().to_bits());
        let warps = warps_per_block(p);
        let grid = blocks_for(m, warps, self.dev.sm_count() * 16);
        let cfg = Config {
            dyn_smem: (warps * smem_per_warp(p)) as u32,
            ..Config::plain(grid, 32 * warps as u32)
        };
        // SAFETY: arguments match the C signature above in order and type (five device
        // pointers, bias null when absent, M as a 64-bit integer, seven ints and the scaling
        // factor's bits as an unsigned int). Warp w of a block uses dynamic shared memory
        // [w * (Eg + G), (w + 1) * (Eg + G)) floats, and the block has `warps` warps with
        // warps * (Eg + G) floats given here (within the 48 KiB default: asserted above and at
        // compile time). The kernel reads logits below M*Eg and bias below Eg, writes ids and w
        // below M*k (token m writes [m*k, m*k + k)) and one u64 of nan_at: within the lengths
        // asserted above. Every expert index it forms is below Eg (scanned indices, or keys
        // made from them), and k <= TG*Eg/G (the problem type) keeps every round's maximum a
        // real expert. 32 * warps <= 256 threads match its __launch_bounds__(256).
        unsafe { self.launch(KernelId::Route, "moe_route", cfg, a, "route") }
    }

    /// `moe_gate(const u16* x, const float* w, float* logits, long long M, int Eg, int K)`:
    /// blocks of 32 experts x 8 tokens (256 threads), token blocks striding over grid.y.
    pub(crate) fn gate(&self, p: &Gate, x: &CudaSlice<u16>, w: &CudaSlice<f32>, logits: &mut CudaSlice<f32>) -> Result<(), DeviceError> {
        let (m, eg, k) = (p.tokens(), p.experts(), p.k());
        need(x, m * k, "x");
        need(w, eg * k, "gate");
        need(logits, m * eg, "logits");
        let mut a = Args::new(self.stream);
        a.buf(x).buf(w).buf_mut(logits).i64(m).dim(eg).dim(k);
        let cfg = Config {
            grid: (eg.div_ceil(GATE_TE) as u32, m.div_ceil(GATE_TM).min(65_535) as u32, 1),
            block: (GATE_TE as u32, GATE_TM as u32, 1),
            ..Config::plain(1, 1)
        };
        // SAFETY: arguments match the C signature above (three device pointers, M as a 64-bit
        // integer, two ints; Eg and K fit i32: `Gate::new` bounds every product and `dim`
        // checks). Block (32, 8) matches its __launch_bounds__(256) and static shared arrays.
        // Thread (tx, ty) of block (bx, by) reads x[mm * K + kk] only for mm < M, kk < K, and
        // w[ee * K + kk] only for ee < Eg, kk < K, and writes logits[m * Eg + e] only for
        // m < M, e < Eg: within the lengths asserted above. Token blocks stride by grid.y.
        unsafe { self.launch(KernelId::Route, "moe_gate", cfg, a, "gate") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{RouterConfig, Scoring};

    #[test]
    fn blocks_hold_eight_warps_for_common_routers_and_one_for_the_largest() {
        let cfg = RouterConfig::new(8, Scoring::Softmax);
        assert_eq!(warps_per_block(&Route::new(1, 256, cfg).unwrap()), 8);
        let big = Route::new(1, ROUTE_MAX_EXPERTS, RouterConfig { n_group: ROUTE_MAX_EXPERTS, topk_group: 8, ..cfg }).unwrap();
        assert_eq!(warps_per_block(&big), 1);
        assert!(warps_per_block(&big) * smem_per_warp(&big) <= SMEM_BUDGET);
    }

}
