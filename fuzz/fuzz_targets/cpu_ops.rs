//! Every CPU operation on small arbitrary inputs: `NaiveCpu` and `CpuBackend` must agree bit for
//! bit (outputs pre-filled identically, so untouched rows are compared too), and return the same
//! error for invalid counts or ids.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use moe_core::*;
use moe_ref_cpu::{CpuBackend, NaiveCpu};
use std::sync::OnceLock;

fn fast() -> &'static CpuBackend {
    static B: OnceLock<CpuBackend> = OnceLock::new();
    B.get_or_init(|| CpuBackend::with_threads(2).expect("pool"))
}

fn f32s(u: &mut Unstructured<'_>, n: usize) -> arbitrary::Result<Vec<f32>> {
    (0..n).map(|_| Ok(f32::from_bits(u32::arbitrary(u)?))).collect()
}
fn bf16s(u: &mut Unstructured<'_>, n: usize) -> arbitrary::Result<Vec<bf16>> {
    (0..n).map(|_| Ok(bf16::from_bits(u16::arbitrary(u)?))).collect()
}
fn bytes(u: &mut Unstructured<'_>, n: usize) -> arbitrary::Result<Vec<u8>> {
    (0..n).map(|_| u8::arbitrary(u)).collect()
}
fn counts(u: &mut Unstructured<'_>, e: usize, t: usize) -> arbitrary::Result<Vec<i32>> {
    // Mostly valid, sometimes out of range (both backends must reject alike).
    (0..e)
        .map(|_| {
            Ok(if u8::arbitrary(u)? < 8 {
                i32::arbitrary(u)?
            } else {
                u8::arbitrary(u)? as i32 % (t as i32 + 1)
            })
        })
        .collect()
}
fn sbuf(fmt: ScaleFormat, n: usize) -> ScaleBuf {
    if fmt.is_packed() {
        ScaleBuf::Packed(vec![0x5A5A_5A5A; n])
    } else {
        ScaleBuf::F32(vec![f32::from_bits(0x7FA5_A5A5); n])
    }
}
fn bits(s: &ScaleBuf) -> Vec<u32> {
    s.to_bits()
}

/// Runs `f` on both backends with identical pre-filled outputs and asserts identical results.
fn both<O: Clone + std::fmt::Debug>(out: O, f: impl Fn(&dyn Backend, &mut O) -> MoeResult<()>, eq: impl Fn(&O, &O) -> bool) {
    let (mut a, mut b) = (out.clone(), out);
    let ra = f(&NaiveCpu, &mut a);
    let rb = f(fast(), &mut b);
    assert_eq!(ra, rb, "results differ");
    assert!(eq(&a, &b), "outputs differ: {a:?} vs {b:?}");
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let op = u8::arbitrary(u)? % 8;
    let (e, t, g) = (
        1 + u8::arbitrary(u)? as usize % 3,
        1 + u8::arbitrary(u)? as usize % 5,
        1 + u8::arbitrary(u)? as usize % 3,
    );
    let k = g * 128;
    let fmt = ScaleFormat::ALL[u8::arbitrary(u)? as usize % 3];
    let cols = fmt.columns(g);
    match op {
        0 => {
            let layout = if bool::arbitrary(u)? {
                ScaleLayout::RowMajor
            } else {
                ScaleLayout::MnMajor
            };
            let p = TokenGroupQuant::new(t, k, fmt, layout).unwrap();
            let x = f32s(u, t * k)?;
            both(
                (vec![0xA5u8; t * k], sbuf(fmt, t * cols)),
                |be, o| be.token_group_quant(&p, Activation::F32(&x), &mut o.0, o.1.view_mut()),
                |a, b| a.0 == b.0 && bits(&a.1) == bits(&b.1),
            );
        }
        1 => {
            let p = BatchedTokenGroupQuant::new(e, t, k, fmt).unwrap();
            let x = bf16s(u, e * t * k)?;
            let c = counts(u, e, t)?;
            both(
                (vec![0xA5u8; e * t * k], sbuf(fmt, e * t * cols)),
                |be, o| be.batched_token_group_quant(&p, Activation::Bf16(&x), &c, &mut o.0, o.1.view_mut()),
                |a, b| a.0 == b.0 && bits(&a.1) == bits(&b.1),
            );
        }
        2 => {
            let (r, c) = (1 + u8::arbitrary(u)? as usize % 140, 1 + u8::arbitrary(u)? as usize % 140);
            let p = BlockQuant::new(1, r, c, bool::arbitrary(u)?).unwrap();
            let w = bf16s(u, r * c)?;
            let sn: usize = p.scale_shape().iter().product();
            both(
                (vec![0u8; r * c], vec![0f32; sn]),
                |be, o| be.block_quant(&p, Activation::Bf16(&w), &mut o.0, &mut o.1),
                |a, b| a.0 == b.0 && a.1.iter().map(|v| v.to_bits()).eq(b.1.iter().map(|v| v.to_bits())),
            );
        }
        3 => {
            let num = if bool::arbitrary(u)? { Numerics::F32 } else { Numerics::VllmBf16 };
            let p = SiluMulQuant::new(e, t, k, fmt, num).unwrap();
            let y = bf16s(u, e * t * 2 * k)?;
            let c = counts(u, e, t)?;
            both(
                (vec![0xA5u8; e * t * k], sbuf(fmt, e * t * cols)),
                |be, o| be.silu_mul_quant(&p, &y, &c, &mut o.0, o.1.view_mut()),
                |a, b| a.0 == b.0 && bits(&a.1) == bits(&b.1),
            );
        }
        4 => {
            let n = 128 * (1 + u8::arbitrary(u)? as usize % 2);
            let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
            let a = bytes(u, e * t * k)?;
            let b = bytes(u, e * n * k)?;
            let sa = match fmt {
                ScaleFormat::Ue8m0Packed => ScaleBuf::Packed((0..e * cols * t).map(|_| i32::arbitrary(u)).collect::<Result<_, _>>()?),
                _ => ScaleBuf::F32(f32s(u, e * cols * t)?),
            };
            let sb = f32s(u, e * (n / 128) * g)?;
            let c = counts(u, e, t)?;
            both(
                vec![bf16::from_bits(0xA5A5); e * t * n],
                |be, o| {
                    be.grouped_gemm(
                        &p,
                        GemmInputs {
                            a: &a,
                            sa: sa.view(),
                            b: WeightsRef { q: &b, s: &sb },
                            counts: &c,
                        },
                        o,
                    )
                },
                |a, b| a.iter().map(|v| v.to_bits()).eq(b.iter().map(|v| v.to_bits())),
            );
        }
        5 => {
            let (m, topk) = (u8::arbitrary(u)? as usize % 6, 1 + u8::arbitrary(u)? as usize % 3);
            let ids: Vec<i32> = (0..m * topk)
                .map(|_| Ok(i8::arbitrary(u)? as i32 % (e as i32 + 2)))
                .collect::<Result<_, _>>()?;
            let p = Prepare::new(m, k, topk, e, t, fmt).unwrap();
            let x = bf16s(u, m * k)?;
            both(
                (vec![0xA5u8; e * t * k], sbuf(fmt, e * t * cols), vec![-7i32; e]),
                |be, o| be.prepare(&p, &x, &ids, &mut o.0, o.1.view_mut(), &mut o.2),
                |a, b| a.0 == b.0 && bits(&a.1) == bits(&b.1) && a.2 == b.2,
            );
        }
        6 => {
            // The router over `t` tokens: arbitrary logit and bias bits (NaN logits must give
            // the same error), groups of 2 to 7 experts.
            let gr = 1 + u8::arbitrary(u)? as usize % 4;
            let eg = gr * (2 + u8::arbitrary(u)? as usize % 6);
            let tg = 1 + u8::arbitrary(u)? as usize % gr;
            let scoring = if bool::arbitrary(u)? { Scoring::Sigmoid } else { Scoring::Softmax };
            let cfg = RouterConfig {
                n_group: gr,
                topk_group: tg,
                renormalize: bool::arbitrary(u)?,
                routed_scaling_factor: f32::from_bits(u32::arbitrary(u)?).abs(),
                bias: bool::arbitrary(u)?,
                ..RouterConfig::new(1 + u8::arbitrary(u)? as usize % (tg * eg / gr), scoring)
            };
            // A non-finite scaling factor is the problem type's to reject.
            let Ok(p) = Route::new(t, eg, cfg) else { return Ok(()) };
            let logits = f32s(u, t * eg)?;
            let bias = f32s(u, eg)?;
            let bias = cfg.bias.then_some(&bias[..]);
            let n = t * cfg.topk;
            both(
                (vec![-7i32; n], vec![f32::from_bits(0x7FA5_A5A5); n]),
                |be, o| be.route(&p, &logits, bias, &mut o.0, &mut o.1),
                |a, b| a.0 == b.0 && a.1.iter().map(|v| v.to_bits()).eq(b.1.iter().map(|v| v.to_bits())),
            );
        }
        _ => {
            let (m, topk, kk) = (
                u8::arbitrary(u)? as usize % 6,
                1 + u8::arbitrary(u)? as usize % 3,
                1 + u8::arbitrary(u)? as usize % 200,
            );
            let ids: Vec<i32> = (0..m * topk)
                .map(|_| Ok(i8::arbitrary(u)? as i32 % (e as i32 + 2)))
                .collect::<Result<_, _>>()?;
            let p = Finalize::new(m, kk, topk, e, t).unwrap();
            let eo = bf16s(u, e * t * kk)?;
            let w = f32s(u, m * topk)?;
            both(
                vec![bf16::from_bits(0xA5A5); m * kk],
                |be, o| be.finalize(&p, &eo, &ids, &w, o),
                |a, b| a.iter().map(|v| v.to_bits()).eq(b.iter().map(|v| v.to_bits())),
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
