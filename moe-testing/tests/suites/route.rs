//! The router (SPEC §5.6): bit-exact ids and weights against the naive reference, hand-checked
//! DeepSeek-V3 and Qwen3 answers, ties to the lower index, the first NaN logit named with
//! nothing written, bad settings rejected with typed errors.
//!
//! Mounted per backend: the mounting file provides `duts_or_skip`.

use moe_core::{exp_f32, Backend, ProblemError, Route, RouterConfig, Scoring};
use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_engine::verify::compare::{POISON_F32, POISON_I32};
use moe_testing::property::{property, seeded};
use moe_testing::strategies;

use super::duts_or_skip;

/// DeepSeek-V3's router (moe-core's preset).
fn deepseek_v3() -> RouterConfig {
    RouterConfig::deepseek_v3()
}

/// Qwen3-MoE's router (moe-core's preset).
fn qwen3() -> RouterConfig {
    RouterConfig::qwen3_moe()
}

/// Runs `c` on `dut` into poisoned outputs.
fn route_on<B: Backend + ?Sized>(dut: &B, c: &RouteCase) -> Result<(Vec<i32>, Vec<f32>), String> {
    let n = c.p.tokens() * c.p.topk();
    let (mut ids, mut w) = (vec![POISON_I32; n], vec![f32::from_bits(POISON_F32); n]);
    dut.route(&c.p, &c.logits, c.bias.as_deref(), &mut ids, &mut w)
        .map_err(|e| e.to_string())?;
    Ok((ids, w))
}

/// The ids `want`, and weights within 2^-18 (relative, a few f32 ulps) of `want_w`, computed
/// in f64.
fn known_answer<B: Backend + ?Sized>(dut: &B, c: &RouteCase, want: &[i32], want_w: &[f64]) -> Result<(), String> {
    check_route(dut, c)?;
    let (ids, w) = route_on(dut, c)?;
    if ids != want {
        return Err(format!("topk_ids {ids:?}, expected {want:?}"));
    }
    for (j, (&got, &exp)) in w.iter().zip(want_w).enumerate() {
        if ((got as f64 - exp) / exp).abs() > 1.0 / (1 << 18) as f64 {
            return Err(format!("topk_weights[{j}] = {got}, expected {exp}"));
        }
    }
    Ok(())
}

fn sigmoid64(l: f64) -> f64 {
    1.0 / (1.0 + (-l).exp())
}

/// `s`, divided by its sum, times `f`.
fn renormalized(s: &[f64], f: f64) -> Vec<f64> {
    let sum: f64 = s.iter().sum();
    s.iter().map(|v| v / sum * f).collect()
}

#[test]
fn route_is_bit_exact_on_ties_and_special_values() {
    property(
        duts_or_skip("route_is_bit_exact_on_ties_and_special_values"),
        strategies::route_case(),
        |d, c| check_route(d, c).and_then(|_| check_route_rejects(d, c)),
    );
}

#[test]
fn route_matches_on_seeded_cases() {
    let duts = duts_or_skip("route_matches_on_seeded_cases");
    seeded(
        duts,
        61,
        48,
        |r: &mut Rng, i| RouteCase::random(r, i % 2 == 1),
        |d, c| {
            check_route(d, c)?;
            check_route_rejects(d, c)
        },
    );
}

/// One token over DeepSeek-V3's 256 experts (M = 1, Eg = 256), the answer worked out by hand.
///
/// Group scores (the sum of each group's two largest choice scores): group 2 has two experts
/// with logit 0 and bias +1 (c = 1.5 each: 3.0), group 0 two with logit 2 (0.881 each: 1.76),
/// group 4 two with logit 1.5 (0.818 each: 1.64), group 5 one with logit 10 (0.99995 + 0.5),
/// group 1 one with logit 4 (0.982 + 0.5 = 1.48), groups 3 and 7 nothing (1.0), group 6 a bias
/// of -1 everywhere (-1.0). The top four are 2, 0, 4, 5: the largest score alone, or twice it,
/// would have kept group 1 instead of group 4, and expert 32 of group 1 (c = 0.982) is out
/// although it beats six of the chosen. The eight experts: 64 and 65 (equal: the lower first),
/// 160, 0 and 1, 128 and 129, then the lowest with c = 0.5 in a kept group, 2. Their weights are
/// the scores without the bias (0.5 for 64 and 65), renormalized, x2.5.
#[test]
fn deepseek_v3_routes_one_token_as_worked_out_by_hand() {
    let Some(duts) = duts_or_skip("deepseek_v3_routes_one_token_as_worked_out_by_hand") else {
        return;
    };
    let mut logits = vec![0f32; 256];
    let mut bias = vec![0f32; 256];
    for (e, l) in [(0, 2.0), (1, 2.0), (32, 4.0), (128, 1.5), (129, 1.5), (160, 10.0)] {
        logits[e] = l;
    }
    bias[64] = 1.0;
    bias[65] = 1.0;
    bias[192..224].fill(-1.0);
    let c = RouteCase {
        p: Route::new(1, 256, deepseek_v3()).unwrap(),
        logits,
        bias: Some(bias),
    };
    let s: Vec<f64> = [0.0, 0.0, 10.0, 2.0, 2.0, 1.5, 1.5, 0.0].map(sigmoid64).to_vec();
    let want_w = renormalized(&s, 2.5);
    on_each(duts, |d| known_answer(d, &c, &[64, 65, 160, 0, 1, 128, 129, 2], &want_w)).unwrap();
}

/// Qwen3-MoE over 128 experts: logit 3 at expert 100, 2 at 7 and 50, 1 at 3, 90 and 120, 0.5 at
/// 64, -1 at 1 and 0 elsewhere: the order is 100, 7, 50, 3, 90, 120, 64, then the lowest expert
/// with logit 0, which is 0 (expert 1 has -1); softmax weights renormalized over the eight.
#[test]
fn qwen3_routes_one_token_as_worked_out_by_hand() {
    let Some(duts) = duts_or_skip("qwen3_routes_one_token_as_worked_out_by_hand") else {
        return;
    };
    let mut logits = vec![0f32; 128];
    for (e, l) in [
        (100, 3.0),
        (7, 2.0),
        (50, 2.0),
        (3, 1.0),
        (90, 1.0),
        (120, 1.0),
        (64, 0.5),
        (1, -1.0),
    ] {
        logits[e] = l;
    }
    let c = RouteCase {
        p: Route::new(1, 128, qwen3()).unwrap(),
        logits,
        bias: None,
    };
    // The softmax's denominator cancels in the renormalization.
    let z: Vec<f64> = [3.0f64, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.0]
        .iter()
        .map(|l| (l - 3.0).exp())
        .collect();
    let want_w = renormalized(&z, 1.0);
    on_each(duts, |d| known_answer(d, &c, &[100, 7, 50, 3, 90, 120, 64, 0], &want_w)).unwrap();
}

/// Equal logits: every score ties, so the groups and the experts go to the lower index, in
/// both scorings, with a bias of zeros (top-2 group sums) and without.
#[test]
fn equal_logits_go_to_the_lower_index() {
    let Some(duts) = duts_or_skip("equal_logits_go_to_the_lower_index") else {
        return;
    };
    for scoring in Scoring::ALL {
        for bias in [false, true] {
            // 4 groups of 4, top-2 groups, top-5: groups 0 and 1, experts 0 to 4.
            let cfg = RouterConfig {
                n_group: 4,
                topk_group: 2,
                bias,
                ..RouterConfig::new(5, scoring)
            };
            let c = RouteCase {
                p: Route::new(3, 16, cfg).unwrap(),
                logits: vec![0.75; 3 * 16],
                bias: bias.then(|| vec![0.0; 16]),
            };
            on_each(duts, |d| {
                check_route(d, &c)?;
                let (ids, w) = route_on(d, &c)?;
                let want: Vec<i32> = [0, 1, 2, 3, 4].repeat(3);
                if ids != want {
                    return Err(format!("{scoring} bias {bias}: topk_ids {ids:?}, expected {want:?}"));
                }
                // Equal scores give equal weights.
                if w.iter().any(|&v| v != w[0]) {
                    return Err(format!("{scoring} bias {bias}: unequal weights {w:?}"));
                }
                Ok(())
            })
            .unwrap();
        }
    }
    // A bias that makes group 3 win and, inside it, expert 13 tie with expert 12 ahead of it.
    let mut bias = vec![0f32; 16];
    bias[12..14].fill(0.5);
    let cfg = RouterConfig {
        n_group: 4,
        topk_group: 1,
        bias: true,
        ..RouterConfig::new(3, Scoring::Sigmoid)
    };
    let c = RouteCase {
        p: Route::new(1, 16, cfg).unwrap(),
        logits: vec![0.0; 16],
        bias: Some(bias),
    };
    let want_w = [0.5f64; 3];
    on_each(duts, |d| known_answer(d, &c, &[12, 13, 14], &want_w)).unwrap();
}

/// A NaN logit is the error naming the first one in (token, expert) order, on every backend,
/// and neither output is written.
#[test]
fn a_nan_logit_names_the_token_and_writes_nothing() {
    let Some(duts) = duts_or_skip("a_nan_logit_names_the_token_and_writes_nothing") else {
        return;
    };
    let (m, eg) = (5, 256);
    let mut r = Rng::new(62);
    let mut logits: Vec<f32> = (0..m * eg).map(|_| r.unit_signed() * 4.0).collect();
    logits[3 * eg + 200] = f32::NAN;
    logits[4 * eg] = f32::NAN;
    logits[2 * eg + 17] = -f32::NAN;
    let c = RouteCase {
        p: Route::new(m, eg, deepseek_v3()).unwrap(),
        logits,
        bias: Some(vec![0.01; eg]),
    };
    on_each(duts, |d| {
        let n = m * 8;
        let (mut ids, mut w) = (vec![POISON_I32; n], vec![f32::from_bits(POISON_F32); n]);
        let err = d.route(&c.p, &c.logits, c.bias.as_deref(), &mut ids, &mut w).unwrap_err();
        if err.as_problem() != Some(&ProblemError::NanLogit { token: 2, expert: 17 }) {
            return Err(format!("the error `{err}` does not name token 2, expert 17"));
        }
        if ids.iter().any(|&v| v != POISON_I32) || w.iter().any(|v| v.to_bits() != POISON_F32) {
            return Err("an output was written although the call failed".into());
        }
        Ok(())
    })
    .unwrap();
}

/// Bad settings are typed errors naming the setting, before any backend runs; a bias the
/// problem does not expect, or a missing one, is rejected by every backend like the reference.
#[test]
fn bad_settings_are_typed_errors() {
    let Some(duts) = duts_or_skip("bad_settings_are_typed_errors") else {
        return;
    };
    let ds = deepseek_v3();
    let cases = [
        (RouterConfig { n_group: 3, ..ds }, "n_group"),
        (RouterConfig { topk_group: 9, ..ds }, "topk_group"),
        (RouterConfig { topk_group: 0, ..ds }, "topk_group"),
        (RouterConfig { topk: 0, ..ds }, "topk"),
        (RouterConfig { topk: 129, ..ds }, "topk"),
        (
            RouterConfig {
                routed_scaling_factor: f32::NAN,
                ..ds
            },
            "routed_scaling_factor",
        ),
        (
            RouterConfig {
                routed_scaling_factor: -2.5,
                ..ds
            },
            "routed_scaling_factor",
        ),
        (
            RouterConfig {
                routed_scaling_factor: f32::INFINITY,
                ..ds
            },
            "routed_scaling_factor",
        ),
    ];
    for (cfg, want) in cases {
        match Route::new(1, 256, cfg) {
            Err(ProblemError::RouterSetting { setting, .. }) if setting == want => {}
            other => panic!("{cfg:?}: expected a `{want}` setting error, got {other:?}"),
        }
    }
    // DeepSeek-V3's groups with the bias of the one and the other kind of checkpoint.
    for bias in [false, true] {
        let mut r = Rng::new(63);
        let c = RouteCase {
            p: Route::new(2, 256, RouterConfig { bias, ..ds }).unwrap(),
            logits: (0..512).map(|_| r.unit_signed()).collect(),
            bias: bias.then(|| vec![0.0; 256]),
        };
        on_each(duts, |d| check_route_rejects(d, &c)).unwrap();
    }
}

/// One token over 256 experts (M = 1, Eg = 256), DeepSeek-V3 and Qwen3-like settings on random
/// logits; many tokens (past one warp each on a GPU); and the largest router the CUDA kernel
/// takes (4096 experts, one warp per block).
#[test]
fn route_matches_at_one_token_many_tokens_and_many_experts() {
    let duts = duts_or_skip("route_matches_at_one_token_many_tokens_and_many_experts");
    let shapes = [
        (1, 256, deepseek_v3()),
        (
            1,
            256,
            RouterConfig {
                bias: false,
                ..deepseek_v3()
            },
        ),
        (1, 256, qwen3()),
        (
            20_000,
            64,
            RouterConfig {
                n_group: 4,
                topk_group: 2,
                topk: 6,
                ..deepseek_v3()
            },
        ),
        (3, 4096, RouterConfig { topk: 64, ..qwen3() }),
    ];
    let make = |r: &mut Rng, i: u64| {
        let (m, eg, cfg) = shapes[i as usize];
        RouteCase {
            p: Route::new(m, eg, cfg).unwrap(),
            logits: (0..m * eg).map(|_| r.unit_signed() * 6.0).collect(),
            bias: cfg.bias.then(|| (0..eg).map(|_| r.unit_signed() * 0.1).collect()),
        }
    };
    seeded(duts, 64, shapes.len() as u64, make, check_route);
}

/// The weights of a sigmoid router whose selected scores all underflow to 0 divide 0 by 0 when
/// renormalized: every backend writes the canonical NaN `0x7FC00000`.
#[test]
fn weights_of_zero_scores_renormalize_to_the_canonical_nan() {
    let Some(duts) = duts_or_skip("weights_of_zero_scores_renormalize_to_the_canonical_nan") else {
        return;
    };
    let c = RouteCase {
        p: Route::new(
            2,
            8,
            RouterConfig {
                renormalize: true,
                ..RouterConfig::new(2, Scoring::Sigmoid)
            },
        )
        .unwrap(),
        logits: vec![-200.0; 16],
        bias: None,
    };
    assert_eq!(1.0 / (1.0 + exp_f32(200.0)), 0.0);
    on_each(duts, |d| {
        check_route(d, &c)?;
        let (ids, w) = route_on(d, &c)?;
        if ids != [0, 1, 0, 1] || w.iter().any(|v| v.to_bits() != 0x7FC0_0000) {
            return Err(format!(
                "ids {ids:?}, weights {:?}",
                w.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            ));
        }
        Ok(())
    })
    .unwrap();
}
