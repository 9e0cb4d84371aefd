//! Bit-exact differential tests of the quantizers, SiLU-mul-quant, prepare and finalize
//! against the naive CPU reference, with poisoned outputs and bad inputs.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use moe_core::{
    bf16, Activation, Backend, BatchedTokenGroupQuant, BlockQuant, Finalize, Numerics, Prepare, ScaleBuf, ScaleFormat, ScaleLayout,
    SiluMulQuant, TokenGroupQuant,
};
use moe_ref_cpu::NaiveCpu;

fn poison_scales(fmt: ScaleFormat, n: usize) -> ScaleBuf {
    if fmt.is_packed() {
        ScaleBuf::Packed(vec![0x5A5A_5A5Ai32; n])
    } else {
        ScaleBuf::F32(vec![f32::from_bits(0x7FBA_DBAD); n])
    }
}

#[test]
fn token_group_quant_is_bit_exact_in_every_format_layout_and_dtype() {
    let Some(gpu) = gpu("token_group_quant") else { return };
    let mut rng = Rng::new(1);
    let shapes: &[(usize, usize)] = if small() {
        &[(3, 640), (0, 128)]
    } else {
        &[(1, 128), (37, 384), (64, 640), (130, 2048), (0, 128)]
    };
    let mut cases = 0;
    for &(rows, k) in shapes {
        for fmt in ScaleFormat::ALL {
            for layout in [ScaleLayout::RowMajor, ScaleLayout::MnMajor] {
                for f32_in in [false, true] {
                    let p = TokenGroupQuant::new(rows, k, fmt, layout).unwrap();
                    let xs = values_with_specials(&mut rng, rows * k, true);
                    let xb = to_bf16(&xs);
                    let x = if f32_in { Activation::F32(&xs) } else { Activation::Bf16(&xb) };
                    let sh = p.scale_shape();
                    let (mut qg, mut qc) = (vec![0xEEu8; rows * k], vec![0xEEu8; rows * k]);
                    let (mut sg, mut sc) = (poison_scales(fmt, sh[0] * sh[1]), poison_scales(fmt, sh[0] * sh[1]));
                    gpu.token_group_quant(&p, x, &mut qg, sg.view_mut()).unwrap();
                    NaiveCpu.token_group_quant(&p, x, &mut qc, sc.view_mut()).unwrap();
                    let what = format!("tgq rows={rows} k={k} {fmt} {layout:?} f32={f32_in}");
                    assert_same(&format!("{what} q"), &qg, &qc);
                    assert_same(&format!("{what} s"), &sg.to_bits(), &sc.to_bits());
                    cases += 1;
                }
            }
        }
    }
    println!("CASES token-group-quant bit-exact: {cases}");
}

#[test]
fn batched_token_group_quant_writes_only_live_rows_bit_exact() {
    let Some(gpu) = gpu("batched_token_group_quant") else { return };
    let mut rng = Rng::new(2);
    let shapes: &[(usize, usize, usize)] = if small() {
        &[(3, 5, 640)]
    } else {
        &[(3, 5, 640), (8, 33, 512), (1, 1, 128), (5, 70, 2048)]
    };
    let mut cases = 0;
    for &(e, t, k) in shapes {
        for fmt in ScaleFormat::ALL {
            for f32_in in [false, true] {
                let p = BatchedTokenGroupQuant::new(e, t, k, fmt).unwrap();
                let cnt = counts(&mut rng, e, t);
                let xs = values_with_specials(&mut rng, e * t * k, true);
                let xb = to_bf16(&xs);
                let x = if f32_in { Activation::F32(&xs) } else { Activation::Bf16(&xb) };
                let n_s: usize = p.scale_shape().iter().product();
                let (mut qg, mut qc) = (vec![0xA5u8; e * t * k], vec![0xA5u8; e * t * k]);
                let (mut sg, mut sc) = (poison_scales(fmt, n_s), poison_scales(fmt, n_s));
                gpu.batched_token_group_quant(&p, x, &cnt, &mut qg, sg.view_mut()).unwrap();
                NaiveCpu.batched_token_group_quant(&p, x, &cnt, &mut qc, sc.view_mut()).unwrap();
                let what = format!("batched tgq e={e} t={t} k={k} {fmt} f32={f32_in} counts={cnt:?}");
                assert_same(&format!("{what} q"), &qg, &qc);
                assert_same(&format!("{what} s"), &sg.to_bits(), &sc.to_bits());
                cases += 1;
            }
        }
    }
    println!("CASES batched-token-group-quant bit-exact: {cases}");
}

#[test]
fn block_quant_is_bit_exact_with_ragged_edges() {
    let Some(gpu) = gpu("block_quant") else { return };
    let mut rng = Rng::new(3);
    let shapes: &[(usize, usize, usize)] = if small() {
        &[(1, 130, 257)]
    } else {
        &[(1, 130, 257), (2, 256, 384), (3, 1, 1), (2, 300, 129)]
    };
    let mut cases = 0;
    for &(e, r, c) in shapes {
        for pow2 in [false, true] {
            for f32_in in [false, true] {
                let p = BlockQuant::new(e, r, c, pow2).unwrap();
                let ws = values_with_specials(&mut rng, e * r * c, true);
                let wb = to_bf16(&ws);
                let w = if f32_in { Activation::F32(&ws) } else { Activation::Bf16(&wb) };
                let ns: usize = p.scale_shape().iter().product();
                let (mut qg, mut qc) = (vec![1u8; e * r * c], vec![1u8; e * r * c]);
                let (mut sg, mut sc) = (vec![-1f32; ns], vec![-1f32; ns]);
                gpu.block_quant(&p, w, &mut qg, &mut sg).unwrap();
                NaiveCpu.block_quant(&p, w, &mut qc, &mut sc).unwrap();
                let what = format!("block quant {e}x{r}x{c} pow2={pow2} f32={f32_in}");
                assert_same(&format!("{what} q"), &qg, &qc);
                assert_same(
                    &format!("{what} s"),
                    &sg.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    &sc.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                );
                cases += 1;
            }
        }
    }
    println!("CASES block-quant bit-exact: {cases}");
}

#[test]
fn silu_mul_quant_is_bit_exact_for_both_numerics_and_every_format() {
    let Some(gpu) = gpu("silu_mul_quant") else { return };
    let mut rng = Rng::new(4);
    let shapes: &[(usize, usize, usize)] = if small() {
        &[(3, 5, 640)]
    } else {
        &[(3, 5, 640), (4, 33, 384), (2, 70, 2048), (9, 16, 128)]
    };
    let mut cases = 0;
    for &(e, t, h) in shapes {
        for numerics in Numerics::ALL {
            for fmt in ScaleFormat::ALL {
                let p = SiluMulQuant::new(e, t, h, fmt, numerics).unwrap();
                let cnt = counts(&mut rng, e, t);
                let y = to_bf16(&values_with_specials(&mut rng, e * t * 2 * h, true));
                let n_s: usize = p.scale_shape().iter().product();
                let (mut qg, mut qc) = (vec![0x3Cu8; e * t * h], vec![0x3Cu8; e * t * h]);
                let (mut sg, mut sc) = (poison_scales(fmt, n_s), poison_scales(fmt, n_s));
                gpu.silu_mul_quant(&p, &y, &cnt, &mut qg, sg.view_mut()).unwrap();
                NaiveCpu.silu_mul_quant(&p, &y, &cnt, &mut qc, sc.view_mut()).unwrap();
                let what = format!("silu e={e} t={t} h={h} {numerics} {fmt} counts={cnt:?}");
                assert_same(&format!("{what} q"), &qg, &qc);
                assert_same(&format!("{what} s"), &sg.to_bits(), &sc.to_bits());
                cases += 1;
            }
        }
    }
    println!("CASES silu-mul-quant bit-exact: {cases}");
}

#[test]
fn prepare_routes_and_quantizes_bit_exact() {
    let Some(gpu) = gpu("prepare") else { return };
    let mut rng = Rng::new(5);
    let shapes: &[(usize, usize, usize, usize, usize)] = if small() {
        &[(20, 256, 3, 5, 16)]
    } else {
        &[(20, 256, 3, 5, 16), (0, 128, 2, 3, 4), (64, 640, 8, 16, 40), (7, 128, 1, 1, 7)]
    };
    let mut cases = 0;
    for &(m, k, topk, e, t) in shapes {
        for fmt in ScaleFormat::ALL {
            let p = Prepare::new(m, k, topk, e, t, fmt).unwrap();
            // Ids in [-1, E) with duplicates; retry until no expert overflows T.
            let ids: Vec<i32> = loop {
                let ids: Vec<i32> = (0..m * topk).map(|_| rng.below(e + 1) as i32 - 1).collect();
                if moe_core::Routing::new(&ids, m, topk, e, t).is_ok() {
                    break ids;
                }
            };
            let x = to_bf16(&values_with_specials(&mut rng, m * k, true));
            let n_s: usize = p.quant().scale_shape().iter().product();
            let (mut qg, mut qc) = (vec![0x11u8; e * t * k], vec![0x11u8; e * t * k]);
            let (mut sg, mut sc) = (poison_scales(fmt, n_s), poison_scales(fmt, n_s));
            let (mut cg, mut cc) = (vec![-7i32; e], vec![-7i32; e]);
            gpu.prepare(&p, &x, &ids, &mut qg, sg.view_mut(), &mut cg).unwrap();
            NaiveCpu.prepare(&p, &x, &ids, &mut qc, sc.view_mut(), &mut cc).unwrap();
            let what = format!("prepare m={m} k={k} topk={topk} e={e} t={t} {fmt}");
            assert_same(&format!("{what} counts"), &cg, &cc);
            assert_same(&format!("{what} a1q"), &qg, &qc);
            assert_same(&format!("{what} a1s"), &sg.to_bits(), &sc.to_bits());
            cases += 1;
        }
    }
    println!("CASES prepare bit-exact: {cases}");
}

#[test]
fn finalize_is_bit_exact() {
    let Some(gpu) = gpu("finalize") else { return };
    let mut rng = Rng::new(6);
    let shapes: &[(usize, usize, usize, usize, usize)] = if small() {
        &[(20, 200, 3, 5, 16)]
    } else {
        &[(20, 200, 3, 5, 16), (0, 128, 2, 3, 4), (64, 1000, 8, 16, 40), (5, 1, 1, 1, 5)]
    };
    let mut cases = 0;
    for &(m, k, topk, e, t) in shapes {
        let p = Finalize::new(m, k, topk, e, t).unwrap();
        let ids: Vec<i32> = loop {
            let ids: Vec<i32> = (0..m * topk).map(|_| rng.below(e + 1) as i32 - 1).collect();
            if moe_core::Routing::new(&ids, m, topk, e, t).is_ok() {
                break ids;
            }
        };
        let eo = to_bf16(&values_with_specials(&mut rng, e * t * k, true));
        let w: Vec<f32> = (0..m * topk).map(|_| rng.value(-4, 0)).collect();
        let (mut og, mut oc) = (vec![bf16::from_bits(0x1234); m * k], vec![bf16::from_bits(0x1234); m * k]);
        gpu.finalize(&p, &eo, &ids, &w, &mut og).unwrap();
        NaiveCpu.finalize(&p, &eo, &ids, &w, &mut oc).unwrap();
        assert_same(
            &format!("finalize m={m} k={k} topk={topk} e={e} t={t}"),
            &bits_u16(&og),
            &bits_u16(&oc),
        );
        cases += 1;
    }
    println!("CASES finalize bit-exact: {cases}");
}

#[test]
fn bad_inputs_are_rejected_with_the_cpu_error_and_nothing_is_written() {
    let Some(gpu) = gpu("bad_inputs") else { return };
    let mut cases = 0;
    // Wrong length of x.
    let p = TokenGroupQuant::new(2, 256, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap();
    let x = vec![bf16::ONE; 511];
    let (mut qg, mut sg) = (vec![9u8; 512], vec![3f32; 4]);
    let (mut qc, mut sc) = (qg.clone(), sg.clone());
    let eg = gpu
        .token_group_quant(&p, Activation::Bf16(&x), &mut qg, moe_core::ScalesMut::F32(&mut sg))
        .unwrap_err();
    let ec = NaiveCpu
        .token_group_quant(&p, Activation::Bf16(&x), &mut qc, moe_core::ScalesMut::F32(&mut sc))
        .unwrap_err();
    assert_eq!(eg, ec);
    assert_eq!((qg.clone(), sg.clone()), (qc.clone(), sc.clone()));
    cases += 1;
    // Packed scales where f32 were expected.
    let mut pk = vec![0i32; 2];
    let eg = gpu
        .token_group_quant(
            &p,
            Activation::Bf16(&[bf16::ONE; 512]),
            &mut qg,
            moe_core::ScalesMut::Packed(&mut pk),
        )
        .unwrap_err();
    let ec = NaiveCpu
        .token_group_quant(
            &p,
            Activation::Bf16(&[bf16::ONE; 512]),
            &mut qc,
            moe_core::ScalesMut::Packed(&mut pk),
        )
        .unwrap_err();
    assert_eq!(eg, ec);
    cases += 1;
    // Counts out of range (both signs) in the batched quantizer and SiLU-mul-quant.
    for bad in [[-1, 2], [0, 6]] {
        let p = BatchedTokenGroupQuant::new(2, 5, 128, ScaleFormat::F32).unwrap();
        let x = vec![bf16::ONE; 2 * 5 * 128];
        let (mut qg, mut sg) = (vec![9u8; 1280], vec![3f32; 10]);
        let eg = gpu
            .batched_token_group_quant(&p, Activation::Bf16(&x), &bad, &mut qg, moe_core::ScalesMut::F32(&mut sg))
            .unwrap_err();
        let ec = NaiveCpu
            .batched_token_group_quant(
                &p,
                Activation::Bf16(&x),
                &bad,
                &mut qg.clone(),
                moe_core::ScalesMut::F32(&mut sg.clone()),
            )
            .unwrap_err();
        assert_eq!(eg, ec);
        assert!(qg.iter().all(|&b| b == 9) && sg.iter().all(|&v| v == 3.0), "nothing written");
        let p = SiluMulQuant::new(2, 5, 128, ScaleFormat::Ue8m0Packed, Numerics::VllmBf16).unwrap();
        let y = vec![bf16::ONE; 2 * 5 * 256];
        let (mut qg, mut sg) = (vec![9u8; 1280], vec![3i32; 10]);
        let eg = gpu
            .silu_mul_quant(&p, &y, &bad, &mut qg, moe_core::ScalesMut::Packed(&mut sg))
            .unwrap_err();
        let ec = NaiveCpu
            .silu_mul_quant(&p, &y, &bad, &mut qg.clone(), moe_core::ScalesMut::Packed(&mut sg.clone()))
            .unwrap_err();
        assert_eq!(eg, ec);
        assert!(qg.iter().all(|&b| b == 9) && sg.iter().all(|&v| v == 3), "nothing written");
        cases += 2;
    }
    // Prepare: an id out of range, and an expert over capacity.
    let p = Prepare::new(3, 128, 2, 2, 2, ScaleFormat::F32).unwrap();
    let x = vec![bf16::ONE; 3 * 128];
    for ids in [vec![0, 1, 2, 0, 1, -1], vec![0, 1, 0, -1, 0, 1]] {
        let (mut qg, mut sg, mut cg) = (vec![9u8; 512], vec![3f32; 4], vec![5i32; 2]);
        let eg = gpu
            .prepare(&p, &x, &ids, &mut qg, moe_core::ScalesMut::F32(&mut sg), &mut cg)
            .unwrap_err();
        let ec = NaiveCpu
            .prepare(
                &p,
                &x,
                &ids,
                &mut qg.clone(),
                moe_core::ScalesMut::F32(&mut sg.clone()),
                &mut cg.clone(),
            )
            .unwrap_err();
        assert_eq!(eg, ec);
        assert!(qg.iter().all(|&b| b == 9) && cg == [5, 5], "nothing written");
        cases += 1;
    }
    // Finalize: wrong weights length.
    let p = Finalize::new(3, 128, 2, 2, 4).unwrap();
    let eo = vec![bf16::ONE; 2 * 4 * 128];
    let ids = vec![0, 1, 1, -1, 0, 0];
    let mut og = vec![bf16::from_bits(7); 384];
    let eg = gpu.finalize(&p, &eo, &ids, &[1.0; 5], &mut og).unwrap_err();
    let ec = NaiveCpu.finalize(&p, &eo, &ids, &[1.0; 5], &mut og.clone()).unwrap_err();
    assert_eq!(eg, ec);
    assert!(og.iter().all(|v| v.to_bits() == 7));
    cases += 1;
    println!("CASES bad-input rejections equal to the CPU's: {cases}");
}
