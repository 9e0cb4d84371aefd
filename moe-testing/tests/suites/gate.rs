//! The gate GEMM (SPEC §5.7 step 1): every logit bit-identical to the naive reference (the
//! float64 sum in increasing `k`, rounded once, NaN canonical), including a sum whose value
//! depends on the order, special values, K not a multiple of the kernel's 32-wide chunks, and
//! bad lengths rejected with nothing written.
//!
//! Mounted per backend: the mounting file provides `duts_or_skip`.

use moe_core::{bf16, Backend, Gate, GATE_NAN_BITS};
use moe_engine::rng::Rng;
use moe_engine::verify::check::on_each;
use moe_engine::verify::compare::POISON_F32;
use moe_ref_cpu::NaiveCpu;

use super::duts_or_skip;

/// A value of either sign spread over many binades, with the IEEE specials now and then.
fn value(rng: &mut Rng, specials: bool) -> f32 {
    let r = rng.next_u64();
    if specials {
        match r % 97 {
            0 => return f32::NAN,
            1 => return f32::INFINITY,
            2 => return f32::NEG_INFINITY,
            3 => return -0.0,
            4 => return f32::from_bits(1),
            _ => {}
        }
    }
    let mag = ((r >> 8) % 1_000_000) as f32 / 1e6 + 0.5;
    let exp = ((r >> 40) % 41) as i32 - 20;
    let v = mag * 2f32.powi(exp);
    if r & 1 == 1 {
        -v
    } else {
        v
    }
}

/// Runs the gate on `dut` into poisoned logits.
fn gate_on<B: Backend + ?Sized>(dut: &B, p: &Gate, x: &[bf16], w: &[f32]) -> Result<Vec<u32>, String> {
    let mut logits = vec![f32::from_bits(POISON_F32); p.tokens() * p.experts()];
    dut.gate(p, x, w, &mut logits).map_err(|e| e.to_string())?;
    Ok(logits.iter().map(|v| v.to_bits()).collect())
}

fn check_case<B: Backend + ?Sized>(dut: &B, p: &Gate, x: &[bf16], w: &[f32]) -> Result<(), String> {
    let want = gate_on(&NaiveCpu, p, x, w)?;
    let got = gate_on(dut, p, x, w)?;
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "gate (M, Eg, K) = ({}, {}, {}): logit (token {}, expert {}) = {:#010x}, reference {:#010x}",
            p.tokens(),
            p.experts(),
            p.k(),
            i / p.experts(),
            i % p.experts(),
            got[i],
            want[i]
        )),
    }
}

#[test]
fn gate_logits_are_bit_exact_on_seeded_cases() {
    let Some(duts) = duts_or_skip("gate_logits_are_bit_exact_on_seeded_cases") else {
        return;
    };
    let mut rng = Rng::new(71);
    let mut cases = 0;
    for &(m, eg, k) in &[
        (1, 1, 1),
        (5, 7, 31),
        (8, 32, 33),
        (33, 64, 100),
        (3, 256, 7168),
        (17, 40, 512),
        (0, 16, 64),
    ] {
        for specials in [false, true] {
            let p = Gate::new(m, eg, k).unwrap();
            let x: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(value(&mut rng, specials))).collect();
            let w: Vec<f32> = (0..eg * k).map(|_| value(&mut rng, specials)).collect();
            on_each(duts, |d| check_case(d, &p, &x, &w)).unwrap();
            cases += 1;
        }
    }
    println!("CASES gate: {cases} seeded shapes bit-exact");
}

/// `2^60 + 1 - 2^60` is 0 in the reference's order (the 1 is lost to the first term) and 1 in
/// most other orders: a backend that sums in chunks, trees or any other order shows it.
#[test]
fn gate_keeps_the_references_summation_order() {
    let Some(duts) = duts_or_skip("gate_keeps_the_references_summation_order") else {
        return;
    };
    let k = 70;
    let p = Gate::new(2, 3, k).unwrap();
    let x = vec![bf16::ONE; 2 * k];
    let mut w = vec![0f32; 3 * k];
    // Expert 0: 2^60 (k 0), 1 (k 40), -2^60 (k 69): 0 in order, 1 if the two large terms meet
    // first (e.g. chunk sums added in another order). Expert 1: 2^60, -2^60, 1 adjacent: 1 in
    // order, 0 if the 1 meets a large term first. Expert 2: 1, 2^60, then -2^60: 0 in order.
    w[0] = 2f32.powi(60);
    w[40] = 1.0;
    w[69] = -(2f32.powi(60));
    w[k + 10] = 2f32.powi(60);
    w[k + 11] = -(2f32.powi(60));
    w[k + 12] = 1.0;
    w[2 * k + 33] = 1.0;
    w[2 * k + 34] = 2f32.powi(60);
    w[2 * k + 66] = -(2f32.powi(60));
    let want = gate_on(&NaiveCpu, &p, &x, &w).unwrap();
    assert_eq!(f32::from_bits(want[0]), 0.0, "the reference loses the 1 after 2^60");
    assert_eq!(f32::from_bits(want[1]), 1.0, "the 1 after the cancellation is kept");
    assert_eq!(f32::from_bits(want[2]), 0.0, "the 1 before 2^60 is lost");
    on_each(duts, |d| check_case(d, &p, &x, &w)).unwrap();
}

#[test]
fn gate_nan_is_canonical_and_bad_lengths_write_nothing() {
    let Some(duts) = duts_or_skip("gate_nan_is_canonical_and_bad_lengths_write_nothing") else {
        return;
    };
    let p = Gate::new(1, 2, 2).unwrap();
    let x = [bf16::INFINITY, bf16::ONE];
    let w = [1.0, 0.0, 1.0, f32::NEG_INFINITY];
    on_each(duts, |d| {
        let got = gate_on(d, &p, &x, &w)?;
        if got != [f32::INFINITY.to_bits(), GATE_NAN_BITS] {
            return Err(format!("logits {got:x?}, expected [inf, canonical NaN]"));
        }
        let mut logits = vec![f32::from_bits(POISON_F32); 2];
        let e = d.gate(&p, &x[..1], &w, &mut logits).err().ok_or("a short x was accepted")?;
        if !e.to_string().contains("x") {
            return Err(format!("the error does not name x: {e}"));
        }
        if logits.iter().any(|v| v.to_bits() != POISON_F32) {
            return Err("logits written on error".into());
        }
        Ok(())
    })
    .unwrap();
}
