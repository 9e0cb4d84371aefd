//! The stage-by-stage check of a layer's forward (SPEC §5.7): every stage recomputed by the CPU
//! reference from the backend's own inputs, so a near tie decided differently upstream is not
//! an error downstream.
//!
//! Bit-exact: the gate, the router, prepare, finalize and the final add. The experts stages
//! (routed and shared) and `y` against the CPU's own forward follow the backend's GEMM contract:
//! bit-exact on the CPU, `calc_diff` below SPEC §5.4's 1e-5 (over the live rows) on the GPU.

use moe_core::{bf16, calc_diff_bf16, ExpertsStage, Finalize, Gate, Prepare, Route, ScaleBuf};
use moe_ref_cpu::CpuBackend;

use super::{add_bf16, LayerOutput, MoeLayer};
use crate::device::GemmContract;
use crate::error::EngineError;

/// One stage's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct StageCheck {
    /// The stage (`gate`, `route`, `prepare`, `experts`, `finalize`, `shared`, `add`, `y`).
    pub stage: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was compared and found.
    pub detail: String,
}

/// Every stage's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerCheck {
    /// In pipeline order.
    pub stages: Vec<StageCheck>,
}

impl LayerCheck {
    /// Whether every stage passed.
    pub fn ok(&self) -> bool {
        self.stages.iter().all(|s| s.ok)
    }
}

fn bits_equal<T: PartialEq>(stage: &'static str, what: &str, got: &[T], want: &[T]) -> StageCheck {
    let bad = got.iter().zip(want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len());
    StageCheck {
        stage,
        ok: bad == 0,
        detail: if bad == 0 {
            format!("{what}: bit-identical ({} values)", want.len())
        } else {
            format!("{what}: {bad} of {} values differ", want.len())
        },
    }
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit-exact under an exact contract, `calc_diff` below the bound otherwise.
fn bounded(stage: &'static str, against: &str, contract: GemmContract, got: &[bf16], want: &[bf16]) -> StageCheck {
    match contract {
        GemmContract::Exact => bits_equal(stage, &format!("against {against}"), got, want),
        GemmContract::Bounded { .. } => {
            let cd = calc_diff_bf16(got, want);
            StageCheck {
                stage,
                ok: cd < GemmContract::CALC_DIFF_MAX,
                detail: format!(
                    "calc_diff {cd:.2e} against {against} (accepted below {:.0e})",
                    GemmContract::CALC_DIFF_MAX
                ),
            }
        }
    }
}

/// The live rows `(e, t < counts[e])` of an `(E, T, K)` tensor, concatenated.
fn live_rows(v: &[bf16], counts: &[i32], t: usize, k: usize) -> Vec<bf16> {
    let mut out = Vec::new();
    for (e, &c) in counts.iter().enumerate() {
        let c = c.clamp(0, t as i32) as usize;
        out.extend_from_slice(&v[e * t * k..(e * t + c) * k]);
    }
    out
}

/// Checks `out`, a forward of `x` by `layer` on its device, stage by stage against the CPU.
pub fn check_layer(layer: &MoeLayer, x: &[bf16], out: &LayerOutput) -> Result<LayerCheck, EngineError> {
    let cpu = CpuBackend::new();
    let d = layer.dims();
    let (m, k, eg, topk, cap) = (out.tokens, d.k, d.experts, d.topk, out.capacity);
    let (fmt, numerics) = (layer.options().scale_fmt, layer.options().numerics);
    let w = layer.weights();
    let contract = layer.device().gemm_contract();
    let mut stages = Vec::new();
    use moe_core::{Backend, BatchedExperts};
    // Gate and router.
    let mut logits = vec![0f32; m * eg];
    cpu.gate(&Gate::new(m, eg, k)?, x, &w.gate, &mut logits)?;
    stages.push(bits_equal("gate", "logits", &f32_bits(&out.logits), &f32_bits(&logits)));
    let (mut ids, mut tw) = (vec![0i32; m * topk], vec![0f32; m * topk]);
    cpu.route(
        &Route::new(m, eg, *layer.router())?,
        &out.logits,
        w.bias.as_deref(),
        &mut ids,
        &mut tw,
    )?;
    let mut route = bits_equal("route", "topk_ids", &out.topk_ids, &ids);
    let weights = bits_equal("route", "topk_weights", &f32_bits(&out.topk_weights), &f32_bits(&tw));
    route.ok &= weights.ok;
    route.detail = format!("{}; {}", route.detail, weights.detail);
    stages.push(route);
    // Prepare, on the backend's ids.
    let prep = Prepare::new(m, k, topk, eg, cap, fmt)?;
    let mut a1q = vec![0u8; eg * cap * k];
    let mut a1s = ScaleBuf::zeros(fmt, prep.quant().scale_shape().iter().product());
    let mut counts = vec![0i32; eg];
    cpu.prepare(&prep, x, &out.topk_ids, &mut a1q, a1s.view_mut(), &mut counts)?;
    let mut p = bits_equal("prepare", "a1q", &out.a1q, &a1q);
    let ps = bits_equal("prepare", "a1s", &out.a1s.to_bits(), &a1s.to_bits());
    let pc = bits_equal("prepare", "counts", &out.counts, &counts);
    p.ok &= ps.ok && pc.ok;
    p.detail = format!("{}; {}; {}", p.detail, ps.detail, pc.detail);
    stages.push(p);
    // The routed experts, on the backend's a1q, a1s and counts (live rows).
    let stage = ExpertsStage::new(eg, cap, k, d.i, fmt, numerics)?;
    let mut eo = vec![bf16::ZERO; eg * cap * k];
    let mut ws = moe_core::ExpertsWorkspace::new(&stage);
    let inputs = moe_core::ExpertsInputs {
        a1q: &out.a1q,
        a1s: out.a1s.view(),
        w1: w.w1.view(),
        w2: w.w2.view(),
        counts: &out.counts,
    };
    cpu.apply(&stage, inputs, &mut ws, &mut eo)?;
    stages.push(bounded(
        "experts",
        "CpuBackend",
        contract,
        &live_rows(&out.expert_out, &out.counts, cap, k),
        &live_rows(&eo, &out.counts, cap, k),
    ));
    // Finalize, on the backend's expert outputs.
    let mut routed = vec![bf16::ZERO; m * k];
    cpu.finalize(
        &Finalize::new(m, k, topk, eg, cap)?,
        &out.expert_out,
        &out.topk_ids,
        &out.topk_weights,
        &mut routed,
    )?;
    stages.push(bits_equal("finalize", "routed", &out.routed, &routed));
    // The shared experts and the add.
    let reference = layer.forward_on_cpu(x)?;
    if let (Some(h), Some(h_ref)) = (&out.shared, &reference.shared) {
        stages.push(bounded("shared", "CpuBackend", contract, h, h_ref));
        stages.push(bits_equal("add", "y = bf16(routed + shared)", &out.y, &add_bf16(&out.routed, h)));
    } else if out.shared.is_some() != reference.shared.is_some() {
        stages.push(StageCheck {
            stage: "shared",
            ok: false,
            detail: "shared experts ran on one side only".into(),
        });
    }
    // End to end.
    stages.push(bounded("y", "the CPU's forward", contract, &out.y, &reference.y));
    Ok(LayerCheck { stages })
}
