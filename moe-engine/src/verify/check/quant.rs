//! The checks of the quantizers: token-group (plain and batched), block, SiLU-mul-quant.

use moe_core::{Backend, BatchedExperts, ScaleBuf};
use moe_ref_cpu::NaiveCpu;

use super::*;

/// §5.1: bit-exact `q` and scales.
pub fn check_token_group_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &TokenGroupQuantCase) -> Checked {
    let p = &c.p;
    let n = p.rows() * p.k();
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(n), poison_scales(p.scale_format(), sh[0] * sh[1]));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "token_group_quant",
        NaiveCpu.token_group_quant(p, c.x.view(), &mut q0, s0.view_mut()),
    )?;
    dut_ok("token_group_quant", dut.token_group_quant(p, c.x.view(), &mut q1, s1.view_mut()))?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for token-group quantization: wrong lengths and scale kinds.
pub fn check_token_group_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &TokenGroupQuantCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.rows() * p.k();
    let sh = p.scale_shape();
    let good_s = poison_scales(p.scale_format(), sh[0] * sh[1]);
    let short_x = c.x.shortened();
    let variants: Vec<(&str, &ActBuf, usize, ScaleBuf)> = vec![
        ("x too short", &short_x, n, good_s.clone()),
        ("q too long", &c.x, n + 1, good_s.clone()),
        ("scales of the wrong kind", &c.x, n, wrong_kind(&good_s)),
        ("scales too long", &c.x, n, {
            let mut s = good_s.clone();
            match &mut s {
                ScaleBuf::F32(v) => v.push(0.0),
                ScaleBuf::Packed(v) => v.push(0),
            }
            s
        }),
    ];
    for (what, x, qn, s) in variants {
        if what == "x too short" && n == 0 {
            continue;
        }
        let make = || (poison_u8(qn), s.clone());
        same_rejection(
            what,
            make,
            |o| NaiveCpu.token_group_quant(p, x.view(), &mut o.0, o.1.view_mut()),
            |o| dut.token_group_quant(p, x.view(), &mut o.0, o.1.view_mut()),
        )?;
    }
    Ok(())
}

/// §5.1 batched: bit-exact live rows, dead rows untouched.
pub fn check_batched_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BatchedQuantCase) -> Checked {
    let p = &c.p;
    let (t, k) = (p.capacity(), p.k());
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(p.experts() * t * k), poison_scales(p.scale_format(), sh.iter().product()));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "batched_token_group_quant",
        NaiveCpu.batched_token_group_quant(p, c.x.view(), &c.counts, &mut q0, s0.view_mut()),
    )?;
    dut_ok(
        "batched_token_group_quant",
        dut.batched_token_group_quant(p, c.x.view(), &c.counts, &mut q1, s1.view_mut()),
    )?;
    untouched_rows("q", &q1, t, k, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s", &s1, sh[1], t, &c.counts)?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for batched quantization: bad counts, short input.
pub fn check_batched_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BatchedQuantCase) -> Result<(), String> {
    let p = &c.p;
    let sh = p.scale_shape();
    let make = || {
        (
            poison_u8(p.experts() * p.capacity() * p.k()),
            poison_scales(p.scale_format(), sh.iter().product()),
        )
    };
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        same_rejection(
            what,
            make,
            |o| NaiveCpu.batched_token_group_quant(p, c.x.view(), &counts, &mut o.0, o.1.view_mut()),
            |o| dut.batched_token_group_quant(p, c.x.view(), &counts, &mut o.0, o.1.view_mut()),
        )?;
    }
    let x = c.x.shortened();
    same_rejection(
        "x too short",
        make,
        |o| NaiveCpu.batched_token_group_quant(p, x.view(), &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.batched_token_group_quant(p, x.view(), &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Block quantization.

/// §4: bit-exact `q` and scales.
pub fn check_block_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BlockQuantCase) -> Checked {
    let p = &c.p;
    let n = p.experts() * p.rows() * p.cols();
    let sn: usize = p.scale_shape().iter().product();
    let (mut q0, mut s0) = (poison_u8(n), vec![f32::from_bits(POISON_F32); sn]);
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok("block_quant", NaiveCpu.block_quant(p, c.w.view(), &mut q0, &mut s0))?;
    dut_ok("block_quant", dut.block_quant(p, c.w.view(), &mut q1, &mut s1))?;
    same_bits("q", &q1, &q0)?;
    same_bits("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for block quantization: short weights, short scales.
pub fn check_block_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &BlockQuantCase) -> Result<(), String> {
    let p = &c.p;
    let n = p.experts() * p.rows() * p.cols();
    let sn: usize = p.scale_shape().iter().product();
    let w = c.w.shortened();
    let make = || (poison_u8(n), vec![f32::from_bits(POISON_F32); sn]);
    same_rejection(
        "w too short",
        make,
        |o| NaiveCpu.block_quant(p, w.view(), &mut o.0, &mut o.1),
        |o| dut.block_quant(p, w.view(), &mut o.0, &mut o.1),
    )?;
    let make = || (poison_u8(n), vec![f32::from_bits(POISON_F32); sn - 1]);
    same_rejection(
        "s too short",
        make,
        |o| NaiveCpu.block_quant(p, c.w.view(), &mut o.0, &mut o.1),
        |o| dut.block_quant(p, c.w.view(), &mut o.0, &mut o.1),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SiLU-mul-quant.

/// §5.2: bit-exact live rows in both numerics and every format, dead rows untouched.
pub fn check_silu_mul_quant<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &SiluMulQuantCase) -> Checked {
    let p = &c.p;
    let (t, h) = (p.capacity(), p.h());
    let sh = p.scale_shape();
    let (mut q0, mut s0) = (poison_u8(p.experts() * t * h), poison_scales(p.scale_format(), sh.iter().product()));
    let (mut q1, mut s1) = (q0.clone(), s0.clone());
    ref_ok(
        "silu_mul_quant",
        NaiveCpu.silu_mul_quant(p, &c.y, &c.counts, &mut q0, s0.view_mut()),
    )?;
    dut_ok("silu_mul_quant", dut.silu_mul_quant(p, &c.y, &c.counts, &mut q1, s1.view_mut()))?;
    untouched_rows("q", &q1, t, h, &c.counts, POISON_U8 as u64)?;
    untouched_scale_rows("s", &s1, sh[1], t, &c.counts)?;
    same_bits("q", &q1, &q0)?;
    same_scales("s", &s1, &s0)?;
    Ok(Outcome::EXACT)
}

/// §7 for SiLU-mul-quant: bad counts, short input, wrong scale kind.
pub fn check_silu_mul_quant_rejects<B: Backend + BatchedExperts + ?Sized>(dut: &B, c: &SiluMulQuantCase) -> Result<(), String> {
    let p = &c.p;
    let sh = p.scale_shape();
    let qn = p.experts() * p.capacity() * p.h();
    let make = || (poison_u8(qn), poison_scales(p.scale_format(), sh.iter().product()));
    for (what, counts) in bad_counts(&c.counts, p.capacity()) {
        same_rejection(
            what,
            make,
            |o| NaiveCpu.silu_mul_quant(p, &c.y, &counts, &mut o.0, o.1.view_mut()),
            |o| dut.silu_mul_quant(p, &c.y, &counts, &mut o.0, o.1.view_mut()),
        )?;
    }
    let y = &c.y[1..];
    same_rejection(
        "y too short",
        make,
        |o| NaiveCpu.silu_mul_quant(p, y, &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.silu_mul_quant(p, y, &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    let make = || (poison_u8(qn), wrong_kind(&poison_scales(p.scale_format(), sh.iter().product())));
    same_rejection(
        "scales of the wrong kind",
        make,
        |o| NaiveCpu.silu_mul_quant(p, &c.y, &c.counts, &mut o.0, o.1.view_mut()),
        |o| dut.silu_mul_quant(p, &c.y, &c.counts, &mut o.0, o.1.view_mut()),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMM.
