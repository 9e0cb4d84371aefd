//! The fast path agrees with the naive path bit for bit, for several thread counts, and leaves
//! rows past `counts` untouched. (The full property-based suites live in `moe-testing`; these
//! are the crate's own quick checks.)

use moe_core::format::e4m3_from_f32;
use moe_core::*;
use moe_ref_cpu::{CpuBackend, NaiveCpu};

mod common;

use common::Rng;

fn backends() -> Vec<CpuBackend> {
    vec![
        CpuBackend::new(),
        CpuBackend::with_threads(1).unwrap(),
        CpuBackend::with_threads(3).unwrap(),
    ]
}

const POISON: u8 = 0xA5;

/// Asserts two slices are equal, reporting only the first difference.
#[track_caller]
fn same<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at {i}: {:?} vs {:?}", a[i], b[i]);
    }
}

fn scale_buf(fmt: ScaleFormat, len: usize) -> ScaleBuf {
    match fmt {
        ScaleFormat::Ue8m0Packed => ScaleBuf::Packed(vec![0x5A5A_5A5A; len]),
        _ => ScaleBuf::F32(vec![f32::from_bits(0x7FA5_A5A5); len]),
    }
}

#[test]
fn token_group_quant_agrees_in_every_format_and_layout() {
    let mut rng = Rng(1);
    for fmt in ScaleFormat::ALL {
        for layout in [ScaleLayout::RowMajor, ScaleLayout::MnMajor] {
            let (rows, k) = (7, 640);
            let p = TokenGroupQuant::new(rows, k, fmt, layout).unwrap();
            let x = rng.bf16s(rows * k);
            let xf: Vec<f32> = (0..rows * k).map(|_| rng.val()).collect();
            let sh = p.scale_shape();
            for input in [Activation::Bf16(&x), Activation::F32(&xf)] {
                let mut q0 = vec![POISON; rows * k];
                let mut s0 = scale_buf(fmt, sh[0] * sh[1]);
                NaiveCpu.token_group_quant(&p, input, &mut q0, s0.view_mut()).unwrap();
                for be in backends() {
                    let mut q1 = vec![POISON; rows * k];
                    let mut s1 = scale_buf(fmt, sh[0] * sh[1]);
                    be.token_group_quant(&p, input, &mut q1, s1.view_mut()).unwrap();
                    same(&q0, &q1, "q");
                    same(&s0.to_bits(), &s1.to_bits(), "s");
                }
            }
        }
    }
}

#[test]
fn batched_quant_silu_and_gemm_agree_and_leave_dead_rows_untouched() {
    let mut rng = Rng(2);
    let (e, t, k, n) = (3, 5, 256, 384);
    let counts = vec![0, 5, 3];
    for fmt in ScaleFormat::ALL {
        // Batched token-group quant.
        let p = BatchedTokenGroupQuant::new(e, t, k, fmt).unwrap();
        let x = rng.bf16s(e * t * k);
        let slen: usize = p.scale_shape().iter().product();
        let mut q0 = vec![POISON; e * t * k];
        let mut s0 = scale_buf(fmt, slen);
        NaiveCpu
            .batched_token_group_quant(&p, Activation::Bf16(&x), &counts, &mut q0, s0.view_mut())
            .unwrap();
        for be in backends() {
            let mut q1 = vec![POISON; e * t * k];
            let mut s1 = scale_buf(fmt, slen);
            be.batched_token_group_quant(&p, Activation::Bf16(&x), &counts, &mut q1, s1.view_mut())
                .unwrap();
            same(&q0, &q1, "q");
            same(&s0.to_bits(), &s1.to_bits(), "s");
        }
        // Dead rows keep the poison: expert 0 entirely, expert 2 from row 3.
        assert!(q0[..t * k].iter().all(|&b| b == POISON));
        assert!(q0[(2 * t + 3) * k..].iter().all(|&b| b == POISON));

        // SiLU-mul-quant, both numerics.
        for numerics in Numerics::ALL {
            let p = SiluMulQuant::new(e, t, k, fmt, numerics).unwrap();
            let y = rng.bf16s(e * t * 2 * k);
            let mut q0 = vec![POISON; e * t * k];
            let mut s0 = scale_buf(fmt, slen);
            NaiveCpu.silu_mul_quant(&p, &y, &counts, &mut q0, s0.view_mut()).unwrap();
            for be in backends() {
                let mut q1 = vec![POISON; e * t * k];
                let mut s1 = scale_buf(fmt, slen);
                be.silu_mul_quant(&p, &y, &counts, &mut q1, s1.view_mut()).unwrap();
                same(&q0, &q1, &format!("q {fmt} {numerics}"));
                same(&s0.to_bits(), &s1.to_bits(), &format!("s {fmt} {numerics}"));
            }
            assert!(q0[..t * k].iter().all(|&b| b == POISON));
        }

        // Grouped GEMM, with scales of the format.
        let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
        let a = rng.e4m3s(e * t * k);
        let b = rng.e4m3s(e * n * k);
        let sa_f: Vec<f32> = (0..e * (k / 128) * t).map(|i| 2f32.powi((i % 9) as i32 - 4)).collect();
        let sa = match fmt {
            ScaleFormat::Ue8m0Packed => {
                ScaleBuf::Packed(moe_core::scale::pack_ue8m0(&sa_f, e * t, k / 128, ScaleLayout::RowMajor).unwrap())
            }
            _ => ScaleBuf::F32(sa_f.clone()),
        };
        // The packed layout above is only used as opaque words: shape check needs (E, ceil(G/4), T).
        let sa = match sa {
            ScaleBuf::Packed(w) => ScaleBuf::Packed(w.into_iter().chain(std::iter::repeat(0)).take(e * t).collect()),
            other => other,
        };
        let sb: Vec<f32> = (0..e * (n / 128) * (k / 128)).map(|i| 0.001 * (i as f32 + 1.0)).collect();
        let poison = bf16::from_bits(0x7FA5);
        let mut d0 = vec![poison; e * t * n];
        let mut bound0 = vec![0f64; e * t * n];
        let inputs = GemmInputs {
            a: &a,
            sa: sa.view(),
            b: WeightsRef { q: &b, s: &sb },
            counts: &counts,
        };
        NaiveCpu.grouped_gemm_with_bound(&p, inputs, &mut d0, &mut bound0).unwrap();
        // The f32 accumulators: live rows hold the values whose rounding is `d`; dead rows keep
        // the poison.
        let acc_poison = f32::from_bits(0x7FA5_A5A5);
        let mut acc0 = vec![acc_poison; e * t * n];
        NaiveCpu.grouped_gemm_accumulators(&p, inputs, &mut acc0).unwrap();
        for (i, (&a, &d)) in acc0.iter().zip(&d0).enumerate() {
            if a.to_bits() == acc_poison.to_bits() {
                assert_eq!(d.to_bits(), poison.to_bits(), "acc[{i}] is untouched but d[{i}] was written");
            } else {
                assert_eq!(moe_core::format::bf16_out(a).to_bits(), d.to_bits(), "bf16(acc[{i}]) != d[{i}]");
            }
        }
        let mut short = vec![acc_poison; e * t * n - 1];
        assert!(NaiveCpu.grouped_gemm_accumulators(&p, inputs, &mut short).is_err());
        assert!(CpuBackend::new().grouped_gemm_accumulators(&p, inputs, &mut short).is_err());
        for be in backends() {
            let mut acc1 = vec![acc_poison; e * t * n];
            be.grouped_gemm_accumulators(&p, inputs, &mut acc1).unwrap();
            assert!(
                acc0.iter().zip(&acc1).all(|(x, y)| x.to_bits() == y.to_bits()),
                "accumulators differ"
            );
            let mut d1 = vec![poison; e * t * n];
            let mut bound1 = vec![0f64; e * t * n];
            be.grouped_gemm_with_bound(&p, inputs, &mut d1, &mut bound1).unwrap();
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            same(&bits(&d0), &bits(&d1), "d");
            assert!(bound0.iter().zip(&bound1).all(|(x, y)| x.to_bits() == y.to_bits()), "bounds differ");
            let mut d2 = vec![poison; e * t * n];
            be.grouped_gemm(&p, inputs, &mut d2).unwrap();
            same(&bits(&d0), &bits(&d2), "d");
        }
        assert!(d0[..t * n].iter().all(|v| v.to_bits() == poison.to_bits()));
    }
}

#[test]
fn block_quant_agrees_with_ragged_edges() {
    let mut rng = Rng(3);
    for pow2 in [false, true] {
        let (e, r, c) = (2, 200, 300);
        let p = BlockQuant::new(e, r, c, pow2).unwrap();
        let w: Vec<f32> = (0..e * r * c).map(|_| rng.val()).collect();
        let sl: usize = p.scale_shape().iter().product();
        let mut q0 = vec![0u8; e * r * c];
        let mut s0 = vec![0f32; sl];
        NaiveCpu.block_quant(&p, Activation::F32(&w), &mut q0, &mut s0).unwrap();
        for be in backends() {
            let mut q1 = vec![0u8; e * r * c];
            let mut s1 = vec![0f32; sl];
            be.block_quant(&p, Activation::F32(&w), &mut q1, &mut s1).unwrap();
            assert_eq!(q0, q1);
            assert_eq!(
                s0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn prepare_and_finalize_agree() {
    let mut rng = Rng(4);
    let (m, k, topk, e, t) = (37, 256, 3, 5, 37);
    let x = rng.bf16s(m * k);
    let ids: Vec<i32> = (0..m * topk).map(|_| (rng.next() % (e as u64 + 1)) as i32 - 1).collect();
    let w: Vec<f32> = (0..m * topk).map(|_| rng.val()).collect();
    for fmt in ScaleFormat::ALL {
        let p = Prepare::new(m, k, topk, e, t, fmt).unwrap();
        let slen: usize = p.quant().scale_shape().iter().product();
        let mut q0 = vec![POISON; e * t * k];
        let mut s0 = scale_buf(fmt, slen);
        let mut c0 = vec![-7; e];
        NaiveCpu.prepare(&p, &x, &ids, &mut q0, s0.view_mut(), &mut c0).unwrap();
        for be in backends() {
            let mut q1 = vec![POISON; e * t * k];
            let mut s1 = scale_buf(fmt, slen);
            let mut c1 = vec![-7; e];
            be.prepare(&p, &x, &ids, &mut q1, s1.view_mut(), &mut c1).unwrap();
            assert_eq!((&q0, s0.to_bits(), &c0), (&q1, s1.to_bits(), &c1));
        }
    }
    let p = Finalize::new(m, k, topk, e, t).unwrap();
    let eo = rng.bf16s(e * t * k);
    let mut o0 = vec![bf16::ZERO; m * k];
    NaiveCpu.finalize(&p, &eo, &ids, &w, &mut o0).unwrap();
    for be in backends() {
        let mut o1 = vec![bf16::ZERO; m * k];
        be.finalize(&p, &eo, &ids, &w, &mut o1).unwrap();
        assert_eq!(
            o0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            o1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn known_answers_from_the_spec() {
    // Token-group quant of one group whose max is 448·2: scale 2, every value halves.
    let p = TokenGroupQuant::new(1, 128, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap();
    let mut x = vec![0f32; 128];
    x[0] = 896.0;
    x[1] = -3.0;
    x[2] = 1.0;
    let mut q = vec![0u8; 128];
    let mut s = vec![0f32; 1];
    CpuBackend::new()
        .token_group_quant(&p, Activation::F32(&x), &mut q, ScalesMut::F32(&mut s))
        .unwrap();
    assert_eq!(s[0], 2.0);
    assert_eq!(e4m3_to_f32(q[0]), 448.0);
    assert_eq!(e4m3_to_f32(q[1]), -1.5);
    assert_eq!(e4m3_to_f32(q[2]), 0.5);
    // An all-zero group takes the epsilon path: scale 1e-10/448, all codes zero.
    let mut s = vec![0f32; 1];
    CpuBackend::new()
        .token_group_quant(&p, Activation::F32(&[0.0; 128]), &mut q, ScalesMut::F32(&mut s))
        .unwrap();
    assert_eq!(s[0], 1e-10f32 / 448.0);
    assert!(q.iter().all(|&b| b == 0));

    // GEMM of one 128-block: a = 1.0 everywhere, b = 0.5, sa = 2, sb = 0.25 -> 128 * 0.5 * 0.5 = 32.
    let p = GroupedGemm::new(1, 1, 128, 128, ScaleFormat::F32).unwrap();
    let a = vec![e4m3_from_f32(1.0); 128];
    let b = vec![e4m3_from_f32(0.5); 128 * 128];
    let mut d = vec![bf16::ZERO; 128];
    let inputs = GemmInputs {
        a: &a,
        sa: Scales::F32(&[2.0]),
        b: WeightsRef { q: &b, s: &[0.25] },
        counts: &[1],
    };
    NaiveCpu.grouped_gemm(&p, inputs, &mut d).unwrap();
    assert!(d.iter().all(|v| v.to_f32() == 32.0), "{}", d[0]);
}

#[test]
fn bad_input_is_rejected_before_any_write() {
    let p = SiluMulQuant::new(2, 4, 128, ScaleFormat::F32, Numerics::VllmBf16).unwrap();
    let y = vec![bf16::ONE; 2 * 4 * 256];
    for be in [&NaiveCpu as &dyn Backend, &CpuBackend::new()] {
        let mut q = vec![POISON; 2 * 4 * 128];
        let mut s = vec![0f32; 8];
        let e = be.silu_mul_quant(&p, &y, &[1, 5], &mut q, ScalesMut::F32(&mut s)).unwrap_err();
        assert_eq!(
            e,
            MoeError::Problem(ProblemError::Count {
                expert: 1,
                count: 5,
                capacity: 4
            })
        );
        assert!(q.iter().all(|&b| b == POISON), "nothing written");
        let e = be.silu_mul_quant(&p, &y[1..], &[1, 1], &mut q, ScalesMut::F32(&mut s)).unwrap_err();
        assert_eq!(e.as_problem().map(|p| p.tensor()), Some("y"));
        let mut sp = vec![0i32; 8];
        let e = be.silu_mul_quant(&p, &y, &[1, 1], &mut q, ScalesMut::Packed(&mut sp)).unwrap_err();
        assert!(matches!(e, MoeError::Problem(ProblemError::ScaleKind { tensor: "s", .. })));
    }
    let p = Prepare::new(3, 128, 2, 2, 1, ScaleFormat::F32).unwrap();
    let x = vec![bf16::ONE; 3 * 128];
    let mut q = vec![POISON; 2 * 128];
    let mut s = vec![0f32; 2];
    let mut c = vec![0; 2];
    let e = CpuBackend::new()
        .prepare(&p, &x, &[0, 1, 0, -1, 1, -1], &mut q, ScalesMut::F32(&mut s), &mut c)
        .unwrap_err();
    assert_eq!(
        e,
        MoeError::Problem(ProblemError::Overflow {
            expert: 0,
            count: 2,
            capacity: 1
        })
    );
    assert!(q.iter().all(|&b| b == POISON));
}

#[test]
fn experts_apply_reuses_a_matching_workspace_and_replaces_a_mismatched_one() {
    let (e, t, k, i) = (2, 3, 128, 128);
    let p = ExpertsStage::new(e, t, k, i, ScaleFormat::Ue8m0Packed, Numerics::VllmBf16).unwrap();
    let mut rng = Rng(11);
    let a1q = rng.e4m3s(e * t * k);
    let a1s = vec![0x7F7F_7F7Fi32; e * t];
    let w1 = rng.e4m3s(e * 2 * i * k);
    let w1s = vec![0.01f32; e * 2];
    let w2 = rng.e4m3s(e * k * i);
    let w2s = vec![0.01f32; e];
    let inputs = ExpertsInputs {
        a1q: &a1q,
        a1s: Scales::Packed(&a1s),
        w1: WeightsRef { q: &w1, s: &w1s },
        w2: WeightsRef { q: &w2, s: &w2s },
        counts: &[3, 1],
    };
    for be in [&NaiveCpu as &dyn BatchedExperts, &CpuBackend::new()] {
        let mut ws = ExpertsWorkspace::new(&p);
        let ptrs = (ws.h1.as_ptr(), ws.q2.as_ptr());
        let mut out = vec![bf16::ZERO; e * t * k];
        be.apply(&p, inputs, &mut ws, &mut out).unwrap();
        assert_eq!((ws.h1.as_ptr(), ws.q2.as_ptr()), ptrs, "a matching workspace is reused");
        // A workspace of another problem is replaced by one that fits, with the same result.
        let mut small = ExpertsWorkspace::new(&ExpertsStage::new(1, 1, 128, 128, ScaleFormat::F32, Numerics::F32).unwrap());
        let mut out2 = vec![bf16::ZERO; e * t * k];
        be.apply(&p, inputs, &mut small, &mut out2).unwrap();
        assert!(small.matches(&p));
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        same(&bits(&small.h1), &bits(&ws.h1), "h1");
        same(&small.q2, &ws.q2, "q2");
        same(&small.s2.to_bits(), &ws.s2.to_bits(), "s2");
        same(&bits(&out), &bits(&out2), "out");
    }
}

#[test]
fn route_agrees_with_groups_ties_and_infinite_logits() {
    let mut rng = Rng(9);
    let ds = RouterConfig::deepseek_v3();
    let configs = [
        (256, ds),
        (256, RouterConfig { bias: false, ..ds }),
        (128, RouterConfig::qwen3_moe()),
        (
            12,
            RouterConfig {
                n_group: 4,
                topk_group: 2,
                ..RouterConfig::new(5, Scoring::Softmax)
            },
        ),
        (6, RouterConfig::new(6, Scoring::Sigmoid)),
    ];
    for (eg, cfg) in configs {
        let m = 37;
        let p = Route::new(m, eg, cfg).unwrap();
        // Logits on a coarse grid (many ties), some infinite.
        let logits: Vec<f32> = (0..m * eg)
            .map(|_| match rng.next() % 400 {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                _ => (rng.normal_ish() * 8.0).round() / 4.0,
            })
            .collect();
        let bias: Vec<f32> = (0..eg).map(|i| ((i % 5) as f32 - 2.0) * 0.125).collect();
        let bias = cfg.bias.then_some(&bias[..]);
        let (mut ids0, mut w0) = (vec![-9i32; m * cfg.topk], vec![f32::from_bits(0x7FA5_A5A5); m * cfg.topk]);
        NaiveCpu.route(&p, &logits, bias, &mut ids0, &mut w0).unwrap();
        for be in backends() {
            let (mut ids1, mut w1) = (vec![-9i32; m * cfg.topk], vec![0f32; m * cfg.topk]);
            be.route(&p, &logits, bias, &mut ids1, &mut w1).unwrap();
            same(&ids0, &ids1, "topk_ids");
            same(
                &w0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                &w1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "topk_weights",
            );
        }
        // Every token lists k distinct experts.
        for ids in ids0.chunks(cfg.topk) {
            let mut v = ids.to_vec();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), cfg.topk);
            assert!(v.iter().all(|&e| (0..eg as i32).contains(&e)));
        }
    }
}
