//! The grouped GEMM within the SPEC §5.3 bound (and the measured constant `c`), the experts
//! stage stage by stage, resident weights over many steps, CUDA-graph capture and replay,
//! device counts out of range, and the bandwidth kernels on many-expert shapes larger than
//! the ones moe-testing's mounted suites draw (those suites cover every operation, format and
//! bad input on small shapes).
#![cfg(feature = "cuda")]

mod common;

use common::*;
use moe_core::scale::pack_ue8m0;
use moe_core::{
    bf16, check_counts, Activation, Backend, BatchedExperts, BatchedTokenGroupQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace,
    Finalize, GemmInputs, GroupedGemm, MoeError, Numerics, Prepare, ScaleBuf, ScaleFormat, ScaleLayout, Scales, SiluMulQuant, WeightsRef,
    GROUP,
};
use moe_cuda::{CountsMode, GemmKernel, ResidentExperts};
use moe_ref_cpu::NaiveCpu;

/// Activation scales `(E, cols, T)` in `fmt`: random positive f32, powers of two for the ceil
/// formats.
fn act_scales(rng: &mut Rng, fmt: ScaleFormat, e: usize, t: usize, groups: usize) -> ScaleBuf {
    let vals: Vec<f32> = (0..e * groups * t)
        .map(|_| {
            let v = rng.value(-9, -5).abs() + 1e-6;
            if fmt.is_ceil() {
                moe_core::ceil_pow2(v)
            } else {
                v
            }
        })
        .collect();
    if fmt.is_packed() {
        let mut words = Vec::new();
        for ex in 0..e {
            words.extend(
                pack_ue8m0(&vals[ex * groups * t..(ex + 1) * groups * t], t, groups, ScaleLayout::MnMajor).expect("sizes from the shape"),
            );
        }
        ScaleBuf::Packed(words)
    } else {
        ScaleBuf::F32(vals)
    }
}

fn weight_scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.value(-10, -6).abs() + 1e-7).collect()
}

fn gemm_inputs<'a>(a: &'a [u8], sa: Scales<'a>, b: WeightsRef<'a>, counts: &'a [i32]) -> GemmInputs<'a> {
    GemmInputs { a, sa, b, counts }
}

/// The CPU reference of one GEMM, starting from a copy of `d0`, and its SPEC §5.3 bound.
fn gemm_ref(p: &GroupedGemm, inputs: GemmInputs<'_>, d0: &[bf16]) -> (Vec<bf16>, Vec<f64>) {
    let (mut d, mut bound) = (d0.to_vec(), vec![0f64; d0.len()]);
    NaiveCpu.grouped_gemm_with_bound(p, inputs, &mut d, &mut bound).unwrap();
    (d, bound)
}

/// Asserts that rows `counts[e]..T` (counts clamped into `[0, T]`) of every expert of
/// `d (E, T, n)` still hold the bits `poison`.
#[track_caller]
fn assert_dead_rows_untouched(d: &[bf16], counts: &[i32], t: usize, n: usize, poison: u16) {
    for (ex, &c) in counts.iter().enumerate() {
        for row in c.clamp(0, t as i32) as usize..t {
            let r = &d[(ex * t + row) * n..][..n];
            assert!(r.iter().all(|v| v.to_bits() == poison), "row {row} of expert {ex} was written");
        }
    }
}

/// `calc_diff` over the live rows (counts clamped into `[0, T]`) of two `(E, T, k)` outputs, and
/// the number of live elements.
fn live_calc_diff(gpu: &[bf16], cpu: &[bf16], counts: &[i32], t: usize, k: usize) -> (f64, usize) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (ex, &c) in counts.iter().enumerate() {
        let live = c.clamp(0, t as i32) as usize * k;
        xs.extend_from_slice(&gpu[ex * t * k..][..live]);
        ys.extend_from_slice(&cpu[ex * t * k..][..live]);
    }
    (calc_diff(&xs, &ys), xs.len())
}

/// E4M3 operands of one of three kinds: every non-NaN code ("full": products over 2^-18..2^17,
/// a few large terms dominate), magnitudes in [1, 2) with random signs ("narrow": all 128
/// products of a block alike, the case where a reduced-precision tensor-core accumulation would
/// show most), and [1, 2) all positive ("positive": no cancellation, partials near 128·max).
/// "cancel" (adversarial for the accumulator): full-range values in which the K positions pair
/// up, `a[2j+1] = a[2j]` in every row of A and `b[2j+1] = -b[2j]` in every row of B except one
/// pair in 16, so almost every product cancels exactly against its neighbour: the exact partial
/// is small while the absolute sum is large, and any precision the tensor cores drop while
/// accumulating shows in the result instead of hiding under its bf16 rounding.
fn operands(rng: &mut Rng, kind: &str, n: usize, is_b: bool) -> Vec<u8> {
    match kind {
        "full" => e4m3_bytes(rng, n),
        "cancel" => {
            let mut v = e4m3_bytes(rng, n);
            for j in (0..n - 1).step_by(2) {
                v[j + 1] = if is_b && (j / 2) % 16 != 5 { v[j] ^ 0x80 } else { v[j] };
            }
            v
        }
        "narrow" => (0..n).map(|_| 0x38 | (rng.u64() as u8 & 0x87)).collect(),
        "positive" => (0..n).map(|_| 0x38 | (rng.u64() as u8 & 0x07)).collect(),
        _ => unreachable!(),
    }
}

#[test]
fn grouped_gemm_is_within_the_bound_and_measures_c() {
    let Some(gpu) = gpu("grouped_gemm") else { return };
    let mut rng = Rng::new(10);
    let shapes: &[(usize, usize, usize, usize)] = if small() {
        &[(2, 70, 128, 256)]
    } else {
        &[
            (3, 70, 256, 512),
            (2, 16, 512, 2048),
            (1, 1, 128, 128),
            (4, 130, 384, 1024),
            (2, 8, 1024, 7168),
        ]
    };
    let (mut elems, mut cases) = (0usize, 0);
    for kind in ["full", "narrow", "positive", "cancel"] {
        let (mut c_chain, mut c_k32) = (0f64, 0f64);
        for &(e, t, n, k) in shapes {
            for fmt in ScaleFormat::ALL {
                let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
                let cnt = counts(&mut rng, e, t);
                let a = operands(&mut rng, kind, e * t * k, false);
                let b = operands(&mut rng, kind, e * n * k, true);
                let sa = act_scales(&mut rng, fmt, e, t, k / GROUP);
                let sb = weight_scales(&mut rng, e * (n / GROUP) * (k / GROUP));
                let poison = bf16::from_bits(0x7F81); // a signalling-NaN pattern no kernel writes
                let inputs = gemm_inputs(&a, sa.view(), WeightsRef { q: &b, s: &sb }, &cnt);
                let (d_ref, bound) = gemm_ref(&p, inputs, &vec![poison; e * t * n]);
                for chain in [true, false] {
                    let mut d = vec![poison; e * t * n];
                    gpu.grouped_gemm_variant(&p, inputs, &mut d, chain).unwrap();
                    assert_dead_rows_untouched(&d, &cnt, t, n, poison.to_bits());
                    let what = format!("gemm {kind} e={e} t={t} n={n} k={k} {fmt} chain={chain}");
                    let worst = check_gemm_bound(&what, &d, &d_ref, &bound, f64::INFINITY);
                    if chain {
                        c_chain = c_chain.max(worst);
                        elems += cnt.iter().map(|&c| c as usize * n).sum::<usize>();
                        cases += 1;
                    } else {
                        c_k32 = c_k32.max(worst);
                    }
                }
            }
        }
        println!(
            "GEMM c [{kind} operands] (mma chained over each 128-K block, the SPEC arithmetic) = {c_chain:e} = 2^{:.2}",
            c_chain.log2()
        );
        println!(
            "GEMM c [{kind} operands] (diagnostic: each k32 mma from zero, summed in f32) = {c_k32:e} = 2^{:.2}",
            c_k32.log2()
        );
        assert!(c_chain <= C_MAX, "[{kind}] c = {c_chain:e} exceeds 2^-12");
    }
    println!("GEMM cases within the bound: {cases} ({elems} live elements)");
}

/// The inputs of one experts problem, owned.
struct ExpertsData {
    a1q: Vec<u8>,
    a1s: ScaleBuf,
    w1: (Vec<u8>, Vec<f32>),
    w2: (Vec<u8>, Vec<f32>),
}

impl ExpertsData {
    /// Random weights `w1`, `w2` and their block scales for `p`, after the given activations.
    fn with_random_weights(rng: &mut Rng, p: &ExpertsStage, a1q: Vec<u8>, a1s: ScaleBuf) -> Self {
        let (e, k, i) = (p.experts(), p.k(), p.i());
        let w1 = e4m3_bytes(rng, e * 2 * i * k);
        let w1s = weight_scales(rng, e * (2 * i / GROUP) * (k / GROUP));
        let w2 = e4m3_bytes(rng, e * k * i);
        let w2s = weight_scales(rng, e * (k / GROUP) * (i / GROUP));
        Self {
            a1q,
            a1s,
            w1: (w1, w1s),
            w2: (w2, w2s),
        }
    }

    fn w1(&self) -> WeightsRef<'_> {
        WeightsRef {
            q: &self.w1.0,
            s: &self.w1.1,
        }
    }

    fn w2(&self) -> WeightsRef<'_> {
        WeightsRef {
            q: &self.w2.0,
            s: &self.w2.1,
        }
    }

    fn inputs<'a>(&'a self, counts: &'a [i32]) -> ExpertsInputs<'a> {
        ExpertsInputs {
            a1q: &self.a1q,
            a1s: self.a1s.view(),
            w1: self.w1(),
            w2: self.w2(),
            counts,
        }
    }
}

fn random_experts(rng: &mut Rng, p: &ExpertsStage) -> ExpertsData {
    let (e, t, k) = (p.experts(), p.capacity(), p.k());
    // Activations through the CPU quantizer, so that they look like real ones.
    let x = to_bf16(&values_with_specials(rng, e * t * k, false));
    let q = moe_core::BatchedTokenGroupQuant::new(e, t, k, p.scale_format()).unwrap();
    let mut a1q = vec![0u8; e * t * k];
    let mut a1s = ScaleBuf::zeros(p.scale_format(), q.scale_shape().iter().product());
    NaiveCpu
        .batched_token_group_quant(&q, moe_core::Activation::Bf16(&x), &vec![t as i32; e], &mut a1q, a1s.view_mut())
        .unwrap();
    ExpertsData::with_random_weights(rng, p, a1q, a1s)
}

#[test]
fn experts_apply_is_checked_stage_by_stage() {
    let Some(gpu) = gpu("experts_apply") else { return };
    let mut rng = Rng::new(11);
    let shapes: &[(usize, usize, usize, usize)] = if small() {
        &[(2, 20, 256, 128)]
    } else {
        &[(3, 40, 256, 256), (2, 70, 512, 384)]
    };
    let mut cases = 0;
    let mut worst_diff = 0f64;
    let mut worst_c = 0f64;
    for &(e, t, k, i) in shapes {
        for fmt in ScaleFormat::ALL {
            for numerics in Numerics::ALL {
                let p = ExpertsStage::new(e, t, k, i, fmt, numerics).unwrap();
                let data = random_experts(&mut rng, &p);
                let cnt = counts(&mut rng, e, t);
                let inputs = data.inputs(&cnt);
                let poison = bf16::from_bits(0x7F81);
                let mut ws = ExpertsWorkspace::new(&p);
                ws.h1.fill(poison);
                ws.q2.fill(0x6B);
                let ws_before = ws.clone();
                let mut out = vec![poison; e * t * k];
                gpu.apply(&p, inputs, &mut ws, &mut out).unwrap();
                let what = format!("experts e={e} t={t} k={k} i={i} {fmt} {numerics}");
                // Stage 1: GEMM1 within the bound.
                let g1 = gemm_inputs(&data.a1q, data.a1s.view(), data.w1(), &cnt);
                let (h1_ref, b1) = gemm_ref(&p.gemm1(), g1, &ws_before.h1);
                worst_c = worst_c.max(check_gemm_bound(&format!("{what} h1"), &ws.h1, &h1_ref, &b1, C_MAX));
                // Stage 2: SiLU-mul-quant of the GPU's own h1, bit-exact.
                let mut q2_ref = ws_before.q2.clone();
                let mut s2_ref = ws_before.s2.clone();
                NaiveCpu
                    .silu_mul_quant(&p.silu(), &ws.h1, &cnt, &mut q2_ref, s2_ref.view_mut())
                    .unwrap();
                assert_same(&format!("{what} q2"), &ws.q2, &q2_ref);
                assert_same(&format!("{what} s2"), &ws.s2.to_bits(), &s2_ref.to_bits());
                // Stage 3: GEMM2 of the GPU's own q2, within the bound; rows past counts untouched.
                let g2 = gemm_inputs(&ws.q2, ws.s2.view(), data.w2(), &cnt);
                let (out_ref, b2) = gemm_ref(&p.gemm2(), g2, &vec![poison; e * t * k]);
                worst_c = worst_c.max(check_gemm_bound(&format!("{what} out"), &out, &out_ref, &b2, C_MAX));
                // End to end against the CPU's own pipeline.
                let mut ws_cpu = ws_before.clone();
                let mut out_cpu = vec![poison; e * t * k];
                NaiveCpu.apply(&p, inputs, &mut ws_cpu, &mut out_cpu).unwrap();
                let (cd, _) = live_calc_diff(&out, &out_cpu, &cnt, t, k);
                worst_diff = worst_diff.max(cd);
                assert!(cd < 1e-5, "{what}: calc_diff {cd:e}");
                assert_same(
                    &format!("{what} dead rows of out"),
                    &bits_u16(&out)
                        .iter()
                        .zip(&bits_u16(&out_cpu))
                        .map(|(&g, &c)| (g == 0x7F81) == (c == 0x7F81))
                        .collect::<Vec<_>>(),
                    &vec![true; out.len()],
                );
                cases += 1;
            }
        }
    }
    println!("CASES experts stage-by-stage: {cases}, worst end-to-end calc_diff {worst_diff:e}");
    println!(
        "GEMM c [experts stages, quantized activations] = {worst_c:e} = 2^{:.2}",
        worst_c.log2()
    );
}

fn eager(ex: &mut ResidentExperts, counts: &[i32], out0: &[bf16]) -> Vec<bf16> {
    ex.set_counts(counts).unwrap();
    ex.upload_output(out0).unwrap();
    ex.apply_on_stream(CountsMode::Unchecked).unwrap();
    let mut out = out0.to_vec();
    ex.download_output(&mut out).unwrap();
    out
}

fn replay(ex: &mut ResidentExperts, counts: &[i32], out0: &[bf16]) -> Vec<bf16> {
    ex.set_counts(counts).unwrap();
    ex.upload_output(out0).unwrap();
    ex.replay_graph().unwrap();
    let mut out = out0.to_vec();
    ex.download_output(&mut out).unwrap();
    out
}

#[test]
fn graph_replay_with_new_device_counts_equals_eager_and_clamps_bad_counts() {
    let Some(gpu) = gpu("graph_replay") else { return };
    let mut rng = Rng::new(12);
    let (e, t, k, i) = if small() { (3, 20, 256, 128) } else { (4, 70, 512, 256) };
    let p = ExpertsStage::new(e, t, k, i, ScaleFormat::F32CeilUe8m0, Numerics::VllmBf16).unwrap();
    let data = random_experts(&mut rng, &p);
    let cnt0 = counts(&mut rng, e, t);
    let inputs = data.inputs(&cnt0);
    let mut ex = gpu.experts(p).unwrap();
    ex.upload_weights(inputs.w1, inputs.w2).unwrap();
    ex.upload_activations(&data.a1q, data.a1s.view(), &cnt0).unwrap();
    ex.capture_graph().unwrap();
    assert!(ex.has_graph());
    let out0 = vec![bf16::from_bits(0x7F81); e * t * k];
    let ti = t as i32;
    let sets: Vec<Vec<i32>> = vec![
        cnt0.clone(),
        vec![0; e],
        vec![ti; e],
        (0..e as i32).map(|x| (x * 7) % (ti + 1)).collect(),
    ];
    let mut replays = 0;
    let mut worst_cd = 0f64;
    for c in &sets {
        let g = replay(&mut ex, c, &out0);
        let r = eager(&mut ex, c, &out0);
        assert_same(&format!("graph vs eager, counts {c:?}"), &bits_u16(&g), &bits_u16(&r));
        // And the CPU's pipeline agrees (end to end).
        let inputs_c = ExpertsInputs { counts: c, ..inputs };
        let mut ws = ExpertsWorkspace::new(&p);
        let mut out_cpu = out0.clone();
        NaiveCpu.apply(&p, inputs_c, &mut ws, &mut out_cpu).unwrap();
        // Over the live rows only (dead rows hold the NaN poison on both sides).
        let (cd, live) = live_calc_diff(&g, &out_cpu, c, t, k);
        assert!(cd < 1e-5, "graph vs CPU calc_diff {cd:e} over {live} live elements");
        worst_cd = worst_cd.max(cd);
        assert_dead_rows_untouched(&g, c, t, k, 0x7F81);
        replays += 1;
    }
    // Out-of-range device counts: the checked mode reports the CPU's error before any launch,
    // the unchecked mode and the graph clamp into [0, T].
    let bad: Vec<i32> = (0..e)
        .map(|x| match x % 3 {
            0 => -5,
            1 => ti + 100,
            _ => i32::MAX,
        })
        .collect();
    let clamped: Vec<i32> = bad.iter().map(|&c| c.clamp(0, ti)).collect();
    ex.set_counts(&bad).unwrap();
    ex.upload_output(&out0).unwrap();
    let err = ex.apply_on_stream(CountsMode::Checked).unwrap_err();
    assert_eq!(err, MoeError::from(check_counts(&bad, e, t).unwrap_err()));
    let mut untouched = out0.clone();
    ex.download_output(&mut untouched).unwrap();
    assert_same("checked mode launched nothing", &bits_u16(&untouched), &bits_u16(&out0));
    let g = replay(&mut ex, &bad, &out0);
    let u = eager(&mut ex, &bad, &out0);
    let c = eager(&mut ex, &clamped, &out0);
    assert_same("graph with bad counts equals clamped", &bits_u16(&g), &bits_u16(&c));
    assert_same("unchecked with bad counts equals clamped", &bits_u16(&u), &bits_u16(&c));
    // The host API rejects them with the CPU's error.
    let mut ws = ExpertsWorkspace::new(&p);
    let mut out = out0.clone();
    let inputs_bad = ExpertsInputs { counts: &bad, ..inputs };
    let eg = gpu.apply(&p, inputs_bad, &mut ws, &mut out).unwrap_err();
    let ec = NaiveCpu.apply(&p, inputs_bad, &mut ws.clone(), &mut out.clone()).unwrap_err();
    assert_eq!(eg, ec);
    assert_same("host apply wrote nothing", &bits_u16(&out), &bits_u16(&out0));
    println!("GRAPH replays equal to eager: {replays} count sets + 1 out-of-range set (clamped), checked mode error equals the CPU's; worst calc_diff vs CPU {worst_cd:e}");
}

#[test]
fn resident_weights_serve_many_steps_with_new_activations() {
    let Some(gpu) = gpu("resident_weights") else { return };
    let mut rng = Rng::new(14);
    let (e, t, k, i) = if small() { (2, 20, 256, 128) } else { (4, 50, 512, 256) };
    let p = ExpertsStage::new(e, t, k, i, ScaleFormat::Ue8m0Packed, Numerics::VllmBf16).unwrap();
    let weights = random_experts(&mut rng, &p);
    let (w1r, w2r) = (weights.w1(), weights.w2());
    let mut ex = ResidentExperts::new(gpu, p).unwrap();
    let out0 = vec![bf16::from_bits(0x7F81); e * t * k];
    // Before the weights: refused, nothing written.
    let acts = random_experts(&mut rng, &p);
    let mut out = out0.clone();
    assert!(ex.step(&acts.a1q, acts.a1s.view(), &vec![1; e], &mut out).is_err());
    assert_same("step before weights wrote nothing", &bits_u16(&out), &bits_u16(&out0));
    ex.upload_weights(w1r, w2r).unwrap();
    assert!(ex.has_weights());
    let mut steps = 0;
    for _ in 0..3 {
        // New activations and counts each step; the weights stay resident.
        let acts = random_experts(&mut rng, &p);
        let cnt = counts(&mut rng, e, t);
        let mut out_step = out0.clone();
        ex.step(&acts.a1q, acts.a1s.view(), &cnt, &mut out_step).unwrap();
        let inputs = ExpertsInputs {
            w1: w1r,
            w2: w2r,
            ..acts.inputs(&cnt)
        };
        // The first apply gets a workspace of the wrong shapes: replaced, results unchanged.
        let mut ws = if steps == 0 {
            ExpertsWorkspace {
                h1: Vec::new(),
                q2: vec![1],
                s2: ScaleBuf::F32(Vec::new()),
            }
        } else {
            ExpertsWorkspace::new(&p)
        };
        let mut out_apply = out0.clone();
        gpu.apply(&p, inputs, &mut ws, &mut out_apply).unwrap();
        assert_same("step equals apply", &bits_u16(&out_step), &bits_u16(&out_apply));
        assert_eq!(
            (ws.h1.len(), ws.q2.len(), ws.s2.view().is_packed()),
            (e * t * 2 * i, e * t * i, true)
        );
        steps += 1;
    }
    // A bad step is rejected with the CPU's error before anything is uploaded or written.
    let acts = random_experts(&mut rng, &p);
    let mut out = out0.clone();
    let err = ex.step(&acts.a1q, acts.a1s.view(), &vec![t as i32 + 1; e], &mut out).unwrap_err();
    assert_eq!(err, MoeError::from(check_counts(&vec![t as i32 + 1; e], e, t).unwrap_err()));
    assert_same("rejected step wrote nothing", &bits_u16(&out), &bits_u16(&out0));
    println!("STEPS on resident weights equal to the host apply: {steps}");
}

#[test]
fn gemm_bad_inputs_are_rejected_with_the_cpu_error() {
    let Some(gpu) = gpu("gemm_bad_inputs") else { return };
    let p = GroupedGemm::new(2, 4, 128, 256, ScaleFormat::F32).unwrap();
    let a = vec![0x38u8; 2 * 4 * 256];
    let sa = vec![1f32; 2 * 2 * 4];
    let b = vec![0x38u8; 2 * 128 * 256];
    let sb = vec![1f32; 2 * 2];
    let mut d = vec![bf16::from_bits(3); 2 * 4 * 128];
    // The GPU rejects `inputs` with the CPU's error and writes nothing.
    let mut rejects = |inputs: GemmInputs<'_>| {
        let eg = gpu.grouped_gemm(&p, inputs, &mut d).unwrap_err();
        let ec = NaiveCpu.grouped_gemm(&p, inputs, &mut d.clone()).unwrap_err();
        assert_eq!(eg, ec);
        assert!(d.iter().all(|v| v.to_bits() == 3));
    };
    let cases: Vec<(Vec<i32>, usize)> = vec![(vec![5, 0], 0), (vec![0, -2], 0), (vec![1], 0), (vec![1, 1], 1)];
    for (cnt, short_b) in cases {
        let bb = WeightsRef {
            q: &b[..b.len() - short_b],
            s: &sb,
        };
        rejects(gemm_inputs(&a, Scales::F32(&sa), bb, &cnt));
    }
    // Packed scales where F32 were promised.
    let sp = vec![0i32; 2 * 4]; // (E, ceil(G/4) = 1, T)
    rejects(gemm_inputs(&a, Scales::Packed(&sp), WeightsRef { q: &b, s: &sb }, &[1, 1]));
    println!("CASES gemm bad-input rejections equal to the CPU's: 5");
}

// The experts stage's timing lives in `moe bench --suite stage` (CUDA graphs, an L2 flush before
// each sample, CUDA events, the median of at least 30 samples); no test times anything.

/// Ids in `[-1, E)` with duplicates, redrawn until no expert overflows `T`.
fn routable_ids(rng: &mut Rng, m: usize, topk: usize, e: usize, t: usize) -> Vec<i32> {
    loop {
        let ids: Vec<i32> = (0..m * topk).map(|_| rng.below(e + 1) as i32 - 1).collect();
        if moe_core::Routing::new(&ids, m, topk, e, t).is_ok() {
            return ids;
        }
    }
}

#[test]
fn bandwidth_kernels_are_bit_exact_on_many_expert_shapes() {
    let Some(gpu) = gpu("many_expert_shapes") else { return };
    let mut rng = Rng::new(15);
    let (e, t, k, m, topk) = if small() { (5, 9, 256, 12, 3) } else { (16, 40, 2048, 64, 8) };
    let mut cases = 0;
    for fmt in ScaleFormat::ALL {
        let sn = e * fmt.columns(k / GROUP) * t;
        let poison = |v: i32| {
            if fmt.is_packed() {
                ScaleBuf::Packed(vec![v; sn])
            } else {
                ScaleBuf::F32(vec![v as f32; sn])
            }
        };
        // Batched token-group quantization, live rows only.
        let p = BatchedTokenGroupQuant::new(e, t, k, fmt).unwrap();
        let cnt = counts(&mut rng, e, t);
        let x = to_bf16(&values_with_specials(&mut rng, e * t * k, true));
        let (mut qg, mut qc, mut sg, mut sc) = (vec![0xA5u8; e * t * k], vec![0xA5u8; e * t * k], poison(7), poison(7));
        gpu.batched_token_group_quant(&p, Activation::Bf16(&x), &cnt, &mut qg, sg.view_mut())
            .unwrap();
        NaiveCpu
            .batched_token_group_quant(&p, Activation::Bf16(&x), &cnt, &mut qc, sc.view_mut())
            .unwrap();
        assert_same(&format!("batched tgq {fmt} q"), &qg, &qc);
        assert_same(&format!("batched tgq {fmt} s"), &sg.to_bits(), &sc.to_bits());
        // SiLU-mul-quant with H = K, both numerics.
        for numerics in Numerics::ALL {
            let p = SiluMulQuant::new(e, t, k, fmt, numerics).unwrap();
            let y = to_bf16(&values_with_specials(&mut rng, e * t * 2 * k, true));
            let (mut qg, mut qc, mut sg, mut sc) = (vec![0x3Cu8; e * t * k], vec![0x3Cu8; e * t * k], poison(3), poison(3));
            gpu.silu_mul_quant(&p, &y, &cnt, &mut qg, sg.view_mut()).unwrap();
            NaiveCpu.silu_mul_quant(&p, &y, &cnt, &mut qc, sc.view_mut()).unwrap();
            assert_same(&format!("silu {fmt} {numerics} q"), &qg, &qc);
            assert_same(&format!("silu {fmt} {numerics} s"), &sg.to_bits(), &sc.to_bits());
        }
        // Prepare: routing on the host, a gathered quantization on the device.
        let p = Prepare::new(m, k, topk, e, t, fmt).unwrap();
        let ids = routable_ids(&mut rng, m, topk, e, t);
        let x = to_bf16(&values_with_specials(&mut rng, m * k, true));
        let (mut qg, mut qc, mut sg, mut sc) = (vec![0x11u8; e * t * k], vec![0x11u8; e * t * k], poison(5), poison(5));
        let (mut cg, mut cc) = (vec![-7i32; e], vec![-7i32; e]);
        gpu.prepare(&p, &x, &ids, &mut qg, sg.view_mut(), &mut cg).unwrap();
        NaiveCpu.prepare(&p, &x, &ids, &mut qc, sc.view_mut(), &mut cc).unwrap();
        assert_same(&format!("prepare {fmt} counts"), &cg, &cc);
        assert_same(&format!("prepare {fmt} a1q"), &qg, &qc);
        assert_same(&format!("prepare {fmt} a1s"), &sg.to_bits(), &sc.to_bits());
        cases += 4;
    }
    // Finalize with a K that is not a multiple of 128.
    let kf = k - 24;
    let p = Finalize::new(m, kf, topk, e, t).unwrap();
    let ids = routable_ids(&mut rng, m, topk, e, t);
    let eo = to_bf16(&values_with_specials(&mut rng, e * t * kf, true));
    let w: Vec<f32> = (0..m * topk).map(|_| rng.value(-4, 0)).collect();
    let (mut og, mut oc) = (vec![bf16::from_bits(0x1234); m * kf], vec![bf16::from_bits(0x1234); m * kf]);
    gpu.finalize(&p, &eo, &ids, &w, &mut og).unwrap();
    NaiveCpu.finalize(&p, &eo, &ids, &w, &mut oc).unwrap();
    assert_same("finalize", &bits_u16(&og), &bits_u16(&oc));
    println!("CASES many-expert bandwidth kernels bit-exact (E={e}, T={t}, K={k}): {}", cases + 1);
}

#[test]
fn resident_stage_runs_the_wgmma_kernel_on_request() {
    let Some(gpu) = gpu("resident_stage_wgmma") else { return };
    let mut rng = Rng::new(13);
    let (e, t, k, i) = if small() { (3, 20, 256, 128) } else { (4, 150, 512, 256) };
    let mut worst = 0f64;
    for fmt in ScaleFormat::ALL {
        let p = ExpertsStage::new(e, t, k, i, fmt, Numerics::VllmBf16).unwrap();
        let data = random_experts(&mut rng, &p);
        let cnt = counts(&mut rng, e, t);
        let inputs = data.inputs(&cnt);
        let poison = bf16::from_bits(0x7F81);
        let mut ex = gpu.experts(p).unwrap();
        ex.upload_weights(inputs.w1, inputs.w2).unwrap();
        let mut out_mma = vec![poison; e * t * k];
        ex.step(&data.a1q, data.a1s.view(), &cnt, &mut out_mma).unwrap();
        ex.set_gemm_kernel(GemmKernel::Wgmma).unwrap();
        assert_eq!(ex.gemm_kernel(), GemmKernel::Wgmma);
        let mut out = vec![poison; e * t * k];
        ex.step(&data.a1q, data.a1s.view(), &cnt, &mut out).unwrap();
        let what = format!("resident stage, wgmma, e={e} t={t} k={k} i={i} {fmt}");
        if fmt.is_packed() {
            // The wgmma kernel takes f32 scales only: packed ones keep mma.sync.
            assert_same(&format!("{what} (packed: mma.sync)"), &bits_u16(&out), &bits_u16(&out_mma));
            continue;
        }
        let mut ws = ExpertsWorkspace::new(&p);
        let mut out_cpu = vec![poison; e * t * k];
        NaiveCpu.apply(&p, inputs, &mut ws, &mut out_cpu).unwrap();
        let (cd, _) = live_calc_diff(&out, &out_cpu, &cnt, t, k);
        worst = worst.max(cd);
        // The wgmma stage's acceptance (moe-engine's STAGE_CALC_DIFF_MAX_WGMMA): above SPEC
        // §5.4's 1e-5, because of the FP8 tensor cores' partials (docs/numerics.md).
        assert!(cd < 1e-4, "{what}: calc_diff {cd:e}");
        for (j, (&g, &c)) in bits_u16(&out).iter().zip(&bits_u16(&out_cpu)).enumerate() {
            assert_eq!(g == 0x7F81, c == 0x7F81, "{what}: row {} written or not like the CPU's", j / k);
        }
        // A captured graph replays the wgmma stage bit for bit.
        ex.upload_activations(&data.a1q, data.a1s.view(), &cnt).unwrap();
        ex.capture_graph().unwrap();
        let replayed = replay(&mut ex, &cnt, &vec![poison; e * t * k]);
        assert_same(&format!("{what} graph replay"), &bits_u16(&replayed), &bits_u16(&out));
    }
    println!("CASES resident stage with wgmma: worst end-to-end calc_diff {worst:e}");
}
