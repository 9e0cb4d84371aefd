//! The checks of the router (SPEC §5.6): bit-exact ids and weights, the first NaN logit and
//! bad buffers rejected like the reference with nothing written.

use moe_core::{Backend, ProblemError, Route};
use moe_ref_cpu::NaiveCpu;

use super::*;

/// Poisoned `topk_ids` and `topk_weights` for `p`.
fn route_outputs(p: &Route) -> (Vec<i32>, Vec<f32>) {
    let n = p.tokens() * p.topk();
    (vec![POISON_I32; n], vec![f32::from_bits(POISON_F32); n])
}

/// §5.6 route: bit-exact `topk_ids` and `topk_weights`.
pub fn check_route<B: Backend + ?Sized>(dut: &B, c: &RouteCase) -> Checked {
    let p = &c.p;
    let bias = c.bias.as_deref();
    let (mut i0, mut w0) = route_outputs(p);
    let (mut i1, mut w1) = route_outputs(p);
    ref_ok("route", NaiveCpu.route(p, &c.logits, bias, &mut i0, &mut w0))?;
    dut_ok("route", dut.route(p, &c.logits, bias, &mut i1, &mut w1))?;
    same_bits("topk_ids", &i1, &i0)?;
    same_bits("topk_weights", &w1, &w0)?;
    Ok(Outcome::EXACT)
}

/// §7 for the router: NaN logits (the error names the first one in (token, expert) order),
/// short buffers, a bias the problem does not expect or a missing one.
pub fn check_route_rejects<B: Backend + ?Sized>(dut: &B, c: &RouteCase) -> Result<(), String> {
    let p = &c.p;
    let run = |what: &str, make: &dyn Fn() -> (Vec<i32>, Vec<f32>), logits: &[f32], bias: Option<&[f32]>| {
        same_rejection(
            what,
            make,
            |o| NaiveCpu.route(p, logits, bias, &mut o.0, &mut o.1),
            |o| dut.route(p, logits, bias, &mut o.0, &mut o.1),
        )
    };
    let outputs = || route_outputs(p);
    let bias = c.bias.as_deref();
    let (m, eg) = (p.tokens(), p.experts());
    let other_bias = vec![0f32; eg];
    run(
        "bias absent or unexpected",
        &outputs,
        &c.logits,
        if bias.is_some() { None } else { Some(&other_bias) },
    )?;
    if m == 0 {
        return Ok(());
    }
    // NaNs in the last token and, later in its row, in the one before: the error names the
    // earlier token's.
    let mut logits = c.logits.clone();
    logits[(m - 1) * eg] = f32::NAN;
    let (token, expert) = if m > 1 { (m - 2, eg - 1) } else { (0, 0) };
    logits[token * eg + expert] = -f32::NAN;
    let err = run("NaN logits", &outputs, &logits, bias)?;
    if err.as_problem() != Some(&ProblemError::NanLogit { token, expert }) {
        return Err(format!(
            "NaN logits: the error `{err}` does not name token {token}, expert {expert}"
        ));
    }
    run("logits too short", &outputs, &c.logits[1..], bias)?;
    let short_ids = || {
        let (mut ids, w) = route_outputs(p);
        ids.pop();
        (ids, w)
    };
    run("topk_ids too short", &short_ids, &c.logits, bias)?;
    let short_weights = || {
        let (ids, mut w) = route_outputs(p);
        w.pop();
        (ids, w)
    };
    run("topk_weights too short", &short_weights, &c.logits, bias)?;
    Ok(())
}
