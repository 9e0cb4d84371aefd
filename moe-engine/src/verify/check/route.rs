//! The checks of prepare and finalize (bit-exact, with the routing errors).

use moe_core::{bf16, Backend, BatchedExperts, Prepare, ScaleBuf};
use moe_ref_cpu::NaiveCpu;

use super::*;

fn prepare_outputs(p: &Prepare) -> (Vec<u8>, ScaleBuf, Vec<i32>) {
    let sh = p.quant().scale_shape();
    (
        poison_u8(p.experts() * p.capacity() * p.k()),
        poison_scales(p.scale_format(), sh.iter().product()),
        vec![POISON_COUNT; p.experts()],
    )
}

/// §5.5 prepare: bit-exact `a1q`, `a1s`, `counts`; rows past the routed counts untouched.
pub fn check_prepare<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &PrepareCase) -> Checked {
    let p = &c.p;
    let (mut q0, mut s0, mut n0) = prepare_outputs(p);
    let (mut q1, mut s1, mut n1) = prepare_outputs(p);
    ref_ok("prepare", NaiveCpu.prepare(p, &c.x, &c.topk_ids, &mut q0, s0.view_mut(), &mut n0))?;
    dut_ok("prepare", dut.prepare(p, &c.x, &c.topk_ids, &mut q1, s1.view_mut(), &mut n1))?;
    same_bits("counts", &n1, &n0)?;
    untouched_rows("a1q", &q1, p.capacity(), p.k(), &n0, POISON_U8 as u64)?;
    untouched_scale_rows("a1s", &s1, p.quant().scale_shape()[1], p.capacity(), &n0)?;
    same_bits("a1q", &q1, &q0)?;
    same_scales("a1s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for prepare: ids outside `[-1, E)`, an expert over capacity, short `x`.
pub fn check_prepare_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &PrepareCase) -> Result<(), String> {
    let p = &c.p;
    let run = |what: &str, p: &Prepare, x: &[bf16], ids: &[i32]| {
        same_rejection(
            what,
            || prepare_outputs(p),
            |o| NaiveCpu.prepare(p, x, ids, &mut o.0, o.1.view_mut(), &mut o.2),
            |o| dut.prepare(p, x, ids, &mut o.0, o.1.view_mut(), &mut o.2),
        )
    };
    if !c.topk_ids.is_empty() {
        let last = c.topk_ids.len() - 1;
        let mut ids = c.topk_ids.clone();
        ids[last] = p.experts() as i32;
        run("topk id equal to E", p, &c.x, &ids)?;
        ids[last] = -2;
        run("topk id -2", p, &c.x, &ids)?;
        run("x too short", p, &c.x[1..], &c.topk_ids)?;
    }
    // T + 1 tokens all routed to the last expert.
    let m = p.capacity() + 1;
    let q = Prepare::new(m, p.k(), 1, p.experts(), p.capacity(), p.scale_format()).map_err(|e| e.to_string())?;
    let x = vec![bf16::ONE; m * p.k()];
    let ids = vec![p.experts() as i32 - 1; m];
    let err = run("an expert over capacity", &q, &x, &ids)?;
    match err.as_problem() {
        Some(moe_core::ProblemError::Overflow { expert, count, .. }) if *expert == p.experts() - 1 && *count == m => Ok(()),
        _ => Err(format!(
            "an expert over capacity: the error `{err}` does not name the expert and its count"
        )),
    }
}

/// §5.5 finalize: bit-exact.
pub fn check_finalize<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &FinalizeCase) -> Checked {
    let p = &c.p;
    let mut o0 = poison_bf16(p.tokens() * p.k());
    let mut o1 = o0.clone();
    ref_ok(
        "finalize",
        NaiveCpu.finalize(p, &c.expert_out, &c.topk_ids, &c.topk_weights, &mut o0),
    )?;
    dut_ok("finalize", dut.finalize(p, &c.expert_out, &c.topk_ids, &c.topk_weights, &mut o1))?;
    same_bits("out", &o1, &o0)?;
    Ok(Outcome::EXACT)
}

/// §7 for finalize: ids outside `[-1, E)`, short weights, short expert outputs.
pub fn check_finalize_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &FinalizeCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.tokens() * p.k();
    let run = |what: &str, eo: &[bf16], ids: &[i32], w: &[f32]| {
        same_rejection(
            what,
            || poison_bf16(n),
            |o| NaiveCpu.finalize(p, eo, ids, w, o),
            |o| dut.finalize(p, eo, ids, w, o),
        )
    };
    run("expert_out too short", &c.expert_out[1..], &c.topk_ids, &c.topk_weights)?;
    if !c.topk_ids.is_empty() {
        let mut ids = c.topk_ids.clone();
        ids[0] = p.experts() as i32;
        run("topk id equal to E", &c.expert_out, &ids, &c.topk_weights)?;
        run("topk_weights too short", &c.expert_out, &c.topk_ids, &c.topk_weights[1..])?;
    }
    Ok(())
}
