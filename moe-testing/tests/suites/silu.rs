//! SiLU-and-multiply + quantization: bit-exact in both numerics and every scale format, dead rows
//! untouched (SPEC §5.2).

use moe_engine::ops::*;
use moe_engine::rng::Rng;
use moe_engine::verify::check::*;
use moe_testing::property::{property, seeded};
use moe_testing::strategies;

use super::duts_or_skip;

#[test]
fn silu_mul_quant_is_bit_exact_in_both_numerics_and_every_format() {
    property(
        duts_or_skip("silu_mul_quant_is_bit_exact_in_both_numerics_and_every_format"),
        strategies::silu_mul_quant_case(),
        check_silu_mul_quant,
    );
}

#[test]
fn silu_mul_quant_matches_on_every_numerics_and_format_combination() {
    let Some(duts) = duts_or_skip("silu_mul_quant_matches_on_every_numerics_and_format_combination") else {
        return;
    };
    for i in 0..12u64 {
        let mut r = Rng::for_case(21, 0, i);
        let base = SiluMulQuantCase::random(&mut r, i % 2 == 1);
        for fmt in moe_core::ScaleFormat::ALL {
            for num in moe_core::Numerics::ALL {
                let p = base.p;
                let c = SiluMulQuantCase {
                    p: moe_core::SiluMulQuant::new(p.experts(), p.capacity(), p.h(), fmt, num).unwrap(),
                    ..base.clone()
                };
                on_each(duts, |d| check_silu_mul_quant(d, &c)).unwrap();
            }
        }
    }
}

#[test]
fn silu_mul_quant_rejects_bad_input_like_the_reference_and_writes_nothing() {
    let duts = duts_or_skip("silu_mul_quant_rejects_bad_input_like_the_reference_and_writes_nothing");
    seeded(duts, 22, 8, |r, _| SiluMulQuantCase::random(r, false), check_silu_mul_quant_rejects);
}
