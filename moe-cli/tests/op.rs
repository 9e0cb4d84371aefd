//! `moe op`: every operation on files written by the test gives the same bytes as calling
//! `CpuBackend` directly, and rows past `counts` read back as zero.

mod common;

use common::*;
use half::bf16;
use moe_core::{
    Activation, Backend, BatchedExperts, BlockQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace, Finalize, GemmInputs, GroupedGemm,
    Numerics, Prepare, Route, RouterConfig, ScaleBuf, ScaleFormat, ScaleLayout, Scales, SiluMulQuant, TokenGroupQuant, WeightsRef,
};
use moe_engine::rng::Rng;
use moe_ref_cpu::CpuBackend;

fn scale_t(name: &'static str, shape: &[usize], s: &ScaleBuf) -> T {
    match s {
        ScaleBuf::F32(v) => f32_t(name, shape, v),
        ScaleBuf::Packed(v) => i32_t(name, shape, v),
    }
}

/// Runs `moe op` and returns the output file's tensors.
fn run_op(dir: &std::path::Path, op: &str, input: &[T], extra: &[&str]) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let inp = write_st(dir, &format!("{op}-in.safetensors"), input);
    let out = dir.join(format!("{op}-out.safetensors"));
    let mut args = vec!["op", op, "--in", inp.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = moe(&args);
    assert!(o.status.success(), "moe {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    read_st(&out)
}

#[test]
fn token_group_quant_matches_cpu_backend_in_every_scale_format_and_input_dtype() {
    let dir = tmp_dir("tgq");
    let mut rng = Rng::new(1);
    let (rows, k) = (5, 640);
    let xb = rand_bf16(&mut rng, rows * k);
    let xf = rand_f32(&mut rng, rows * k);
    for fmt in ScaleFormat::ALL {
        for f32_input in [false, true] {
            let p = TokenGroupQuant::new(rows, k, fmt, ScaleLayout::RowMajor).unwrap();
            let sh = p.scale_shape();
            let (mut q, mut s) = (vec![0u8; rows * k], ScaleBuf::zeros(fmt, sh[0] * sh[1]));
            let (x, input) = if f32_input {
                (Activation::F32(&xf), f32_t("x", &[rows, k], &xf))
            } else {
                (Activation::Bf16(&xb), bf16_t("x", &[rows, k], &xb))
            };
            CpuBackend::new().token_group_quant(&p, x, &mut q, s.view_mut()).unwrap();
            let got = run_op(&dir, "token-group-quant", &[input], &["--scale-fmt", fmt.name()]);
            let want = sorted(vec![f8_t("q", &[rows, k], &q), scale_t("s", &sh, &s)]);
            assert_eq!(got, want, "{fmt} f32 input {f32_input}");
            // Packed: (rows, ceil(K/512)) I32.
            assert_eq!(got[1].2, if fmt.is_packed() { vec![rows, 2] } else { vec![rows, 5] });
        }
    }
}

#[test]
fn block_quant_matches_cpu_backend_with_and_without_pow2() {
    let dir = tmp_dir("bq");
    let mut rng = Rng::new(2);
    let (e, r, c) = (2, 130, 200);
    let w = rand_f32(&mut rng, e * r * c);
    for pow2 in [false, true] {
        let p = BlockQuant::new(e, r, c, pow2).unwrap();
        let (mut q, mut s) = (vec![0u8; e * r * c], vec![0f32; p.scale_shape().iter().product()]);
        CpuBackend::new().block_quant(&p, Activation::F32(&w), &mut q, &mut s).unwrap();
        let extra: &[&str] = if pow2 { &["--pow2"] } else { &[] };
        let got = run_op(&dir, "block-quant", &[f32_t("w", &[e, r, c], &w)], extra);
        assert_eq!(
            got,
            sorted(vec![f8_t("q", &[e, r, c], &q), f32_t("s", &[2, 2, 2], &s)]),
            "pow2 {pow2}"
        );
    }
}

#[test]
fn silu_mul_quant_matches_cpu_backend_and_dead_rows_are_zero() {
    let dir = tmp_dir("silu");
    let mut rng = Rng::new(3);
    let (e, t, h) = (2, 5, 256);
    let y = rand_bf16(&mut rng, e * t * 2 * h);
    let counts = [3, 0];
    for (fmt, numerics) in [
        (ScaleFormat::F32, Numerics::VllmBf16),
        (ScaleFormat::F32CeilUe8m0, Numerics::F32),
        (ScaleFormat::Ue8m0Packed, Numerics::VllmBf16),
    ] {
        let p = SiluMulQuant::new(e, t, h, fmt, numerics).unwrap();
        let sh = p.scale_shape();
        let (mut q, mut s) = (vec![0u8; e * t * h], ScaleBuf::zeros(fmt, sh.iter().product()));
        CpuBackend::new().silu_mul_quant(&p, &y, &counts, &mut q, s.view_mut()).unwrap();
        let input = [bf16_t("y", &[e, t, 2 * h], &y), i32_t("counts", &[e], &counts)];
        let got = run_op(
            &dir,
            "silu-mul-quant",
            &input,
            &["--scale-fmt", fmt.name(), "--numerics", numerics.name()],
        );
        assert_eq!(
            got,
            sorted(vec![f8_t("q", &[e, t, h], &q), scale_t("s", &sh, &s)]),
            "{fmt} {numerics}"
        );
        let qf = &got[0].3;
        assert!(qf[3 * h..t * h].iter().all(|&b| b == 0), "rows past counts[0] are zero");
        assert!(qf[t * h..].iter().all(|&b| b == 0), "expert 1 has no live row");
    }
}

#[test]
fn grouped_gemm_matches_cpu_backend_with_f32_and_packed_scales() {
    let dir = tmp_dir("gemm");
    let mut rng = Rng::new(4);
    let (e, t, n, k) = (2, 4, 256, 256);
    let a = rand_f8(&mut rng, e * t * k);
    let b = rand_f8(&mut rng, e * n * k);
    let sb = rand_scales(&mut rng, e * 2 * 2);
    let counts = [4, 1];
    for fmt in ScaleFormat::ALL {
        let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
        let sa = match fmt {
            ScaleFormat::F32 => ScaleBuf::F32(rand_scales(&mut rng, e * 2 * t)),
            ScaleFormat::F32CeilUe8m0 => ScaleBuf::F32((0..e * 2 * t).map(|i| 2f32.powi(-(i as i32 % 9))).collect()),
            ScaleFormat::Ue8m0Packed => ScaleBuf::Packed((0..e * t).map(|i| 0x7A7B_7C7D_i32.wrapping_add(i as i32 & 0x0101)).collect()),
        };
        let mut d = vec![bf16::ZERO; e * t * n];
        CpuBackend::new()
            .grouped_gemm(
                &p,
                GemmInputs {
                    a: &a,
                    sa: sa.view(),
                    b: WeightsRef { q: &b, s: &sb },
                    counts: &counts,
                },
                &mut d,
            )
            .unwrap();
        let input = [
            f8_t("a", &[e, t, k], &a),
            scale_t("sa", &p.sa_shape(), &sa),
            f8_t("b", &[e, n, k], &b),
            f32_t("sb", &[e, 2, 2], &sb),
            i32_t("counts", &[e], &counts),
        ];
        let got = run_op(&dir, "grouped-gemm", &input, &["--scale-fmt", fmt.name()]);
        assert_eq!(got, sorted(vec![bf16_t("d", &[e, t, n], &d)]), "{fmt}");
        assert!(got[0].3[(t + 1) * n * 2..].iter().all(|&b| b == 0), "rows past counts[1] are zero");
    }
}

#[test]
fn experts_matches_cpu_backend_apply() {
    let dir = tmp_dir("experts");
    let mut rng = Rng::new(5);
    let (e, t, k, i) = (2, 3, 256, 128);
    let fmt = ScaleFormat::F32CeilUe8m0;
    let p = ExpertsStage::new(e, t, k, i, fmt, Numerics::VllmBf16).unwrap();
    let a1q = rand_f8(&mut rng, e * t * k);
    let a1s: Vec<f32> = (0..e * 2 * t).map(|i| 2f32.powi(-(i as i32 % 7))).collect();
    let w1 = rand_f8(&mut rng, e * 2 * i * k);
    let w1s = rand_scales(&mut rng, e * 2 * 2);
    let w2 = rand_f8(&mut rng, e * k * i);
    let w2s = rand_scales(&mut rng, e * 2);
    let counts = [2, 3];
    let mut out = vec![bf16::ZERO; e * t * k];
    let mut ws = ExpertsWorkspace::new(&p);
    let inputs = ExpertsInputs {
        a1q: &a1q,
        a1s: Scales::F32(&a1s),
        w1: WeightsRef { q: &w1, s: &w1s },
        w2: WeightsRef { q: &w2, s: &w2s },
        counts: &counts,
    };
    CpuBackend::new().apply(&p, inputs, &mut ws, &mut out).unwrap();
    let input = [
        f8_t("a1q", &[e, t, k], &a1q),
        f32_t("a1s", &[e, 2, t], &a1s),
        f8_t("w1", &[e, 2 * i, k], &w1),
        f32_t("w1s", &[e, 2, 2], &w1s),
        f8_t("w2", &[e, k, i], &w2),
        f32_t("w2s", &[e, 2, 1], &w2s),
        i32_t("counts", &[e], &counts),
    ];
    let got = run_op(&dir, "experts", &input, &["--scale-fmt", fmt.name()]);
    assert_eq!(got, sorted(vec![bf16_t("out", &[e, t, k], &out)]));
}

#[test]
fn prepare_and_finalize_match_cpu_backend() {
    let dir = tmp_dir("prepfin");
    let mut rng = Rng::new(6);
    let (m, k, topk, e, t) = (6, 256, 2, 3, 4);
    let x = rand_bf16(&mut rng, m * k);
    let ids = [0, 2, 1, -1, 0, 0, 2, 1, -1, -1, 0, 1];
    for fmt in ScaleFormat::ALL {
        let p = Prepare::new(m, k, topk, e, t, fmt).unwrap();
        let sh = p.quant().scale_shape();
        let (mut q, mut s, mut c) = (vec![0u8; e * t * k], ScaleBuf::zeros(fmt, sh.iter().product()), vec![0i32; e]);
        CpuBackend::new().prepare(&p, &x, &ids, &mut q, s.view_mut(), &mut c).unwrap();
        let input = [bf16_t("x", &[m, k], &x), i32_t("topk_ids", &[m, topk], &ids)];
        let got = run_op(
            &dir,
            "prepare",
            &input,
            &["--experts", "3", "--capacity", "4", "--scale-fmt", fmt.name()],
        );
        assert_eq!(
            got,
            sorted(vec![
                f8_t("a1q", &[e, t, k], &q),
                scale_t("a1s", &sh, &s),
                i32_t("counts", &[e], &c)
            ]),
            "{fmt}"
        );
    }
    let expert_out = rand_bf16(&mut rng, e * t * k);
    let weights = rand_f32(&mut rng, m * topk);
    let p = Finalize::new(m, k, topk, e, t).unwrap();
    let mut out = vec![bf16::ZERO; m * k];
    CpuBackend::new().finalize(&p, &expert_out, &ids, &weights, &mut out).unwrap();
    let input = [
        bf16_t("expert_out", &[e, t, k], &expert_out),
        i32_t("topk_ids", &[m, topk], &ids),
        f32_t("topk_weights", &[m, topk], &weights),
    ];
    let got = run_op(&dir, "finalize", &input, &[]);
    assert_eq!(got, sorted(vec![bf16_t("out", &[m, k], &out)]));
}

#[test]
fn route_matches_cpu_backend_for_deepseek_v3_and_qwen3() {
    let dir = tmp_dir("route");
    let mut rng = Rng::new(7);
    let m = 5;
    // DeepSeek-V3: sigmoid, a bias, 8 groups of 32, top-4 groups, top-8, renormalized, x2.5.
    let ds = RouterConfig::deepseek_v3();
    let ds_flags = [
        "--topk",
        "8",
        "--scoring",
        "sigmoid",
        "--groups",
        "8",
        "--topk-groups",
        "4",
        "--renormalize",
        "--routed-scaling",
        "2.5",
    ];
    // Qwen3-MoE: softmax over 128 experts, top-8, renormalized, no bias.
    let qwen = RouterConfig::qwen3_moe();
    let qwen_flags = ["--topk", "8", "--scoring", "softmax", "--renormalize"];
    for (eg, cfg, flags) in [(256, ds, &ds_flags[..]), (128, qwen, &qwen_flags[..])] {
        let p = Route::new(m, eg, cfg).unwrap();
        let logits = rand_f32(&mut rng, m * eg);
        let bias: Vec<f32> = rand_f32(&mut rng, eg).iter().map(|b| b * 0.05).collect();
        let bias = cfg.bias.then_some(bias);
        let (mut ids, mut w) = (vec![0i32; m * 8], vec![0f32; m * 8]);
        CpuBackend::new().route(&p, &logits, bias.as_deref(), &mut ids, &mut w).unwrap();
        let mut input = vec![f32_t("logits", &[m, eg], &logits)];
        input.extend(bias.as_deref().map(|b| f32_t("bias", &[eg], b)));
        let got = run_op(&dir, "route", &input, flags);
        assert_eq!(
            got,
            sorted(vec![i32_t("topk_ids", &[m, 8], &ids), f32_t("topk_weights", &[m, 8], &w)]),
            "{eg} experts"
        );
        // Renormalized and scaled: each token's weights sum to the scaling factor.
        for tw in w.chunks(8) {
            let sum: f32 = tw.iter().sum();
            assert!((sum - cfg.routed_scaling_factor).abs() < 1e-5, "{sum}");
        }
    }
}
