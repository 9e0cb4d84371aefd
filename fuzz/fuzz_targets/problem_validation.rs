//! Problem validation on arbitrary shapes, counts, topk ids and router settings: every
//! constructor, `check*` method and `Routing::new` must return `Ok` or an error, never panic or
//! abort.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use moe_core::*;

/// A dimension: usually small, sometimes huge (to probe the overflow checks).
fn dim(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(match u8::arbitrary(u)? % 8 {
        0 => usize::arbitrary(u)?,
        1 => 128 * (u16::arbitrary(u)? as usize),
        2 => 1usize << (u8::arbitrary(u)? % 64),
        _ => u8::arbitrary(u)? as usize,
    })
}

fn fmt(u: &mut Unstructured<'_>) -> arbitrary::Result<ScaleFormat> {
    Ok(ScaleFormat::ALL[u8::arbitrary(u)? as usize % 3])
}

/// A buffer length near `want` (bounded so the fuzzer never allocates much).
fn len(u: &mut Unstructured<'_>, want: usize) -> arbitrary::Result<usize> {
    let l = if bool::arbitrary(u)? {
        want
    } else {
        want.wrapping_add(u8::arbitrary(u)? as usize).wrapping_sub(128)
    };
    Ok(l.min(1 << 14))
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let (e, t, k, n) = (dim(u)?, dim(u)?, dim(u)?, dim(u)?);
    let counts: Vec<i32> = Vec::arbitrary(u)?;
    let ids: Vec<i32> = Vec::arbitrary(u)?;
    let _ = check_counts(&counts, e, t);
    let _ = clamp_count(i32::arbitrary(u)?, t);
    let (m, topk) = (dim(u)?, dim(u)?);
    // `topk = 0` with a huge `m` used to loop `m` times (a hang); it is now `TooSmall`.
    // `Routing::new` takes O(E) memory by contract (a count and an offset per expert), so the
    // direct call keeps `E <= 2^20` to stay inside libFuzzer's RSS limit; through `Prepare` and
    // `Finalize` below, `E` is bounded by the caller's buffers, which are checked first.
    let _ = Routing::new(&ids, m, topk, e.min(1 << 20), t);
    if let Ok(p) = TokenGroupQuant::new(n, k, fmt(u)?, ScaleLayout::MnMajor) {
        let sh = p.scale_shape();
        let x = vec![0f32; len(u, p.rows().saturating_mul(p.k()))?];
        let q = vec![0u8; len(u, x.len())?];
        let mut s = vec![0f32; len(u, sh[0].saturating_mul(sh[1]))?];
        let _ = p.check(&Activation::F32(&x), &q, &ScalesMut::F32(&mut s));
    }
    if let Ok(p) = BatchedTokenGroupQuant::new(e, t, k, fmt(u)?) {
        let n = e.saturating_mul(t).saturating_mul(k);
        let x = vec![bf16::ZERO; len(u, n)?];
        let q = vec![0u8; len(u, n)?];
        let mut s = vec![0i32; len(u, p.scale_shape().iter().fold(1usize, |a, b| a.saturating_mul(*b)))?];
        let _ = p.check(&Activation::Bf16(&x), &counts, &q, &ScalesMut::Packed(&mut s));
    }
    if let Ok(p) = BlockQuant::new(e, t, k, bool::arbitrary(u)?) {
        let _ = p.scale_shape();
        let _ = p.check(&Activation::F32(&[]), &[], &[]);
    }
    if let Ok(p) = SiluMulQuant::new(e, t, k, fmt(u)?, Numerics::F32) {
        let y = vec![bf16::ZERO; len(u, e.saturating_mul(t).saturating_mul(k).saturating_mul(2))?];
        let _ = p.check(&y, &counts, &[], &ScalesMut::F32(&mut []));
    }
    if let Ok(p) = GroupedGemm::new(e, t, n, k, fmt(u)?) {
        let p = p.with_expected_m(dim(u)?);
        let a = vec![0u8; len(u, e.saturating_mul(t).saturating_mul(k))?];
        let sa = vec![0f32; len(u, p.sa_shape().iter().fold(1usize, |a, b| a.saturating_mul(*b)))?];
        let b = vec![0u8; len(u, e.saturating_mul(n).saturating_mul(k))?];
        let sb = vec![0f32; len(u, p.sb_shape().iter().fold(1usize, |a, b| a.saturating_mul(*b)))?];
        let inputs = GemmInputs {
            a: &a,
            sa: Scales::F32(&sa),
            b: WeightsRef { q: &b, s: &sb },
            counts: &counts,
        };
        let _ = p.check(&inputs, &[]);
    }
    if let Ok(p) = ExpertsStage::new(e, t, k, n, fmt(u)?, Numerics::VllmBf16) {
        let _ = (p.gemm1(), p.gemm2(), p.silu(), p.workspace_shapes(), p.a1s_shape());
        let w = WeightsRef { q: &[], s: &[] };
        let inputs = ExpertsInputs {
            a1q: &[],
            a1s: Scales::F32(&[]),
            w1: w,
            w2: w,
            counts: &counts,
        };
        let _ = (p.check_inputs(&inputs), p.check(&inputs, &[]));
    }
    if let Ok(p) = Prepare::new(m, k, topk, e, t, fmt(u)?) {
        let x = vec![bf16::ZERO; len(u, m.saturating_mul(k))?];
        let _ = p.check(&x, &ids, &[], &ScalesMut::F32(&mut []), &counts);
    }
    if let Ok(p) = Finalize::new(m, k, topk, e, t) {
        let w = vec![0f32; len(u, m.saturating_mul(topk))?];
        let _ = p.check(&[], &ids, &w, &[]);
    }
    let cfg = RouterConfig {
        n_group: dim(u)?,
        topk_group: dim(u)?,
        renormalize: bool::arbitrary(u)?,
        routed_scaling_factor: f32::from_bits(u32::arbitrary(u)?),
        bias: bool::arbitrary(u)?,
        ..RouterConfig::new(topk, Scoring::Sigmoid)
    };
    if let Ok(p) = Route::new(m, e, cfg) {
        let logits = vec![0f32; len(u, m.saturating_mul(e))?];
        let w = vec![0f32; len(u, m.saturating_mul(topk))?];
        let _ = (p.check(&logits, None, &ids, &w), p.check_logits(&logits));
    }
    let _ = estimate_expected_m(dim(u)?, dim(u)?, dim(u)?, t, Some(&counts));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
