//! SPEC §5.2: against vLLM's own reference arithmetic (which calls the C library's `expf`),
//! `Numerics::VllmBf16` agrees on at least 99.99% of FP8 bytes and scales, and every difference
//! traces back to a 1-ulp difference of `exp`.
//!
//! The stand-in for `expf` is float64 `exp` rounded to f32 (a correctly rounded `expf`, which is
//! what glibc's `expf` returns on these inputs to within its documented error).

use moe_core::format::{e4m3_from_f32, round_bf16};
use moe_core::math::{exp_f32, vllm_ceil_pow2_bf16};
use moe_core::*;
use moe_ref_cpu::CpuBackend;

mod common;

use common::Rng;

fn expf_ref(x: f32) -> f32 {
    (x as f64).exp() as f32
}

/// vLLM's arithmetic for one group, with a pluggable `exp`; returns (codes, scale).
fn vllm_group(gate: &[bf16], up: &[bf16], ceil: bool, exp: impl Fn(f32) -> f32) -> (Vec<u8>, f32) {
    let v: Vec<f32> = gate
        .iter()
        .zip(up)
        .map(|(g, u)| {
            let g = g.to_f32();
            round_bf16(round_bf16(g / (1.0 + exp(-g))) * u.to_f32())
        })
        .collect();
    let amax = v.iter().fold(round_bf16(1e-10), |m, x| m.max(x.abs()));
    let mut s = bf16::from_f32(amax * round_bf16(1.0 / 448.0));
    if ceil {
        s = vllm_ceil_pow2_bf16(s);
    }
    let inv = round_bf16(1.0 / s.to_f32());
    (
        v.iter().map(|&x| e4m3_from_f32(round_bf16(x * inv).clamp(-448.0, 448.0))).collect(),
        s.to_f32(),
    )
}

#[test]
fn vllm_bf16_agrees_with_an_expf_reference_to_four_nines() {
    let (e, t, h) = (4, 64, 1024);
    let mut rng = Rng(11);
    let y: Vec<bf16> = (0..e * t * 2 * h).map(|_| bf16::from_f32(rng.normal_ish() * 6.0)).collect();
    let counts = vec![t as i32; e];
    for fmt in [ScaleFormat::F32, ScaleFormat::F32CeilUe8m0] {
        let p = SiluMulQuant::new(e, t, h, fmt, Numerics::VllmBf16).unwrap();
        let mut q = vec![0u8; e * t * h];
        let mut s = vec![0f32; e * (h / 128) * t];
        CpuBackend::new()
            .silu_mul_quant(&p, &y, &counts, &mut q, ScalesMut::F32(&mut s))
            .unwrap();
        let (mut bytes, mut byte_diffs, mut scales, mut scale_diffs) = (0usize, 0usize, 0usize, 0usize);
        for ei in 0..e {
            for ti in 0..t {
                let row = &y[(ei * t + ti) * 2 * h..][..2 * h];
                for g in 0..h / 128 {
                    let gate = &row[g * 128..][..128];
                    let up = &row[h + g * 128..][..128];
                    let (rq, rs) = vllm_group(gate, up, fmt.is_ceil(), expf_ref);
                    let ours = &q[(ei * t + ti) * h + g * 128..][..128];
                    let our_s = s[ei * (h / 128) * t + g * t + ti];
                    scales += 1;
                    bytes += 128;
                    let diff_bytes = rq.iter().zip(ours).filter(|(a, b)| a != b).count();
                    byte_diffs += diff_bytes;
                    if rs != our_s {
                        scale_diffs += 1;
                    }
                    if diff_bytes > 0 || rs != our_s {
                        // Every difference must come from exp: with the reference's exp replaced by
                        // ours on the differing inputs, the group must match exactly, and each such
                        // input's exp differs by exactly one ulp.
                        for x in gate.iter().map(|g| -g.to_f32()) {
                            let (a, b) = (exp_f32(x), expf_ref(x));
                            if a != b {
                                assert_eq!(
                                    (a.to_bits() as i64 - b.to_bits() as i64).abs(),
                                    1,
                                    "exp({x}) differs by more than 1 ulp"
                                );
                            }
                        }
                        let (mq, ms) = vllm_group(gate, up, fmt.is_ceil(), exp_f32);
                        assert_eq!((mq.as_slice(), ms), (ours, our_s), "difference not explained by exp");
                    }
                }
            }
        }
        let byte_agree = 1.0 - byte_diffs as f64 / bytes as f64;
        let scale_agree = 1.0 - scale_diffs as f64 / scales as f64;
        eprintln!(
            "{fmt}: bytes agree {:.6}% ({byte_diffs} of {bytes} differ), scales agree {:.6}% ({scale_diffs} of {scales})",
            byte_agree * 100.0,
            scale_agree * 100.0
        );
        assert!(byte_agree >= 0.9999 && scale_agree >= 0.9999);
    }
}

#[test]
fn exp_on_every_bf16_input_is_within_one_ulp_of_correct_rounding() {
    // SiLU only ever sees bf16 inputs: check all 2^16 of them.
    let mut differ = 0;
    for b in 0..=u16::MAX {
        let x = -bf16::from_bits(b).to_f32();
        if x.is_nan() {
            continue;
        }
        let (a, r) = (exp_f32(x), expf_ref(x));
        if a != r {
            differ += 1;
            assert_eq!((a.to_bits() as i64 - r.to_bits() as i64).abs(), 1, "exp({x})");
        }
    }
    eprintln!("exp_f32 differs from correct rounding on {differ} of the 65536 bf16 inputs, by 1 ulp each");
    assert!(differ < 65536 / 100);
}
