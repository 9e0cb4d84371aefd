//! Reading and validating the inputs of an operation from the bytes of a safetensors file.

use moe_core::{
    check_counts, estimate_expected_m, BlockQuant, ExpertsStage, Finalize, GroupedGemm, Prepare, ProblemError, Route, RouterConfig,
    Routing, ScaleBuf, ScaleFormat, ScaleLayout, SiluMulQuant, TokenGroupQuant, GROUP,
};
use safetensors::Dtype;

use super::*;
use crate::error::InputError;
use crate::weights::safetensors::{decode_bf16, decode_f32, decode_i32, expect_shape, TensorFile};

fn activation(f: &TensorFile<'_>, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, ActBuf), InputError> {
    let t = f.raw(name, &[Dtype::BF16, Dtype::F32], rank, layout)?;
    let buf = if t.dtype == Dtype::BF16 {
        ActBuf::Bf16(decode_bf16(t.bytes))
    } else {
        ActBuf::F32(decode_f32(t.bytes))
    };
    Ok((t.shape, buf))
}

/// Activation scales `name` of MN-major shape `shape` in format `fmt`: F32, or I32 when packed.
fn scales(f: &TensorFile<'_>, name: &'static str, fmt: ScaleFormat, shape: &[usize], layout: &'static str) -> Result<ScaleBuf, InputError> {
    let dtype = if fmt.is_packed() { Dtype::I32 } else { Dtype::F32 };
    let t = f.raw(name, &[dtype], shape.len(), layout).map_err(|e| match e {
        InputError::Dtype { tensor, got, expected } => InputError::Dtype {
            tensor,
            got,
            expected: format!("{expected} (--scale-fmt {fmt})"),
        },
        e => e,
    })?;
    expect_shape(name, &t.shape, shape, layout)?;
    Ok(if fmt.is_packed() {
        ScaleBuf::Packed(decode_i32(t.bytes))
    } else {
        ScaleBuf::F32(decode_f32(t.bytes))
    })
}

/// The MN-major activation scales `name` (`(E, K/128, T)` f32, or packed words) of a K-long
/// reduction.
fn k_scales(f: &TensorFile<'_>, name: &'static str, fmt: ScaleFormat, shape: &[usize]) -> Result<ScaleBuf, InputError> {
    scales(
        f,
        name,
        fmt,
        shape,
        if fmt.is_packed() { "(E, ceil(K/512), T)" } else { "(E, K/128, T)" },
    )
}

/// The f32 tensor `name` of exactly `shape` (a weight's block scales).
fn f32_of_shape(f: &TensorFile<'_>, name: &'static str, shape: &[usize], layout: &'static str) -> Result<Vec<f32>, InputError> {
    let (sh, v) = f.f32(name, shape.len(), layout)?;
    expect_shape(name, &sh, shape, layout)?;
    Ok(v)
}

/// Checks that dimension `dim` of `tensor` (gate and up halves side by side) is a positive
/// multiple of 256, so each half is a multiple of 128.
pub(crate) fn twice_groups(tensor: &'static str, dim: &'static str, got: usize) -> Result<(), InputError> {
    if got == 0 || got % (2 * GROUP) != 0 {
        return Err(ProblemError::NotMultiple {
            tensor,
            dim,
            got,
            multiple: 2 * GROUP,
        }
        .into());
    }
    Ok(())
}

fn counts(f: &TensorFile<'_>, e: usize, t: usize) -> Result<Vec<i32>, InputError> {
    let (sh, c) = f.i32("counts", 1, "(E)")?;
    expect_shape("counts", &sh, &[e], "(E)")?;
    check_counts(&c, e, t)?;
    Ok(c)
}

fn not_for(op: Op, flag: &str, applies: &str) -> InputError {
    InputError::Usage(format!("{flag} does not apply to op `{}` (only to {applies})", op.name()))
}

/// The router's flags that are set, by name.
fn route_flags(opts: &OpOptions) -> impl Iterator<Item = &'static str> {
    [
        ("--topk", opts.topk.is_some()),
        ("--scoring", opts.scoring.is_some()),
        ("--groups", opts.groups.is_some()),
        ("--topk-groups", opts.topk_groups.is_some()),
        ("--renormalize", opts.renormalize),
        ("--routed-scaling", opts.routed_scaling.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
}

/// `logits (M, Eg)` F32 and the optional `bias (Eg)` F32, routed with the flags; a NaN logit is
/// rejected here, before any backend runs.
fn route_case(f: &TensorFile<'_>, opts: &OpOptions) -> Result<RouteCase, InputError> {
    let (Some(topk), Some(scoring)) = (opts.topk, opts.scoring) else {
        return Err(InputError::Usage("op `route` needs --topk k and --scoring sigmoid|softmax".into()));
    };
    let (n_group, topk_group) = match (opts.groups, opts.topk_groups) {
        (None, None) => (1, 1),
        (Some(g), Some(tg)) => (g, tg),
        _ => return Err(InputError::Usage("op `route`: --groups G and --topk-groups TG go together".into())),
    };
    let (sh, logits) = f.f32("logits", 2, "(M, Eg)")?;
    let bias = if f.has("bias") {
        let (bsh, b) = f.f32("bias", 1, "(Eg)")?;
        expect_shape("bias", &bsh, &[sh[1]], "(Eg)")?;
        Some(b)
    } else {
        None
    };
    let cfg = RouterConfig {
        topk,
        scoring,
        n_group,
        topk_group,
        renormalize: opts.renormalize,
        routed_scaling_factor: opts.routed_scaling.unwrap_or(1.0),
        bias: bias.is_some(),
    };
    let p = Route::new(sh[0], sh[1], cfg)?;
    p.check_logits(&logits)?;
    Ok(RouteCase { p, logits, bias })
}

/// Parses and validates the inputs of `op` from the bytes of a safetensors file.
///
/// Never panics, whatever the bytes; every error names the tensor (or the flag) at fault.
pub fn read_inputs(op: Op, opts: &OpOptions, bytes: &[u8]) -> Result<OpInputs, InputError> {
    if opts.pow2 && op != Op::BlockQuant {
        return Err(not_for(op, "--pow2", "block-quant"));
    }
    if op != Op::Prepare {
        if opts.experts.is_some() {
            return Err(not_for(op, "--experts", "prepare"));
        }
        if opts.capacity.is_some() {
            return Err(not_for(op, "--capacity", "prepare"));
        }
    }
    if op != Op::Route {
        if let Some(flag) = route_flags(opts).next() {
            return Err(not_for(op, flag, "route"));
        }
    }
    if !op.has_file_form() {
        return Err(InputError::Usage(format!(
            "op `{op}` has no file form (SPEC §8 lists the operations of `moe op`)"
        )));
    }
    let f = TensorFile::parse(bytes, op.name())?;
    let fmt = opts.scale_fmt;
    Ok(match op {
        Op::TokenGroupQuant => {
            let (sh, x) = activation(&f, "x", 2, "(rows, K)")?;
            let p = TokenGroupQuant::new(sh[0], sh[1], fmt, ScaleLayout::RowMajor)?;
            OpInputs::TokenGroupQuant(TokenGroupQuantCase { p, x })
        }
        Op::BlockQuant => {
            let (sh, w) = activation(&f, "w", 3, "(E, R, C)")?;
            let p = BlockQuant::new(sh[0], sh[1], sh[2], opts.pow2)?;
            OpInputs::BlockQuant(BlockQuantCase { p, w })
        }
        Op::SiluMulQuant => {
            let (sh, y) = f.bf16("y", 3, "(E, T, 2H)")?;
            twice_groups("y", "2H", sh[2])?;
            let p = SiluMulQuant::new(sh[0], sh[1], sh[2] / 2, fmt, opts.numerics)?;
            let counts = counts(&f, sh[0], sh[1])?;
            OpInputs::SiluMulQuant(SiluMulQuantCase { p, y, counts })
        }
        Op::GroupedGemm => {
            let (ash, a) = f.f8("a", 3, "(E, T, K)")?;
            let (bsh, b) = f.f8("b", 3, "(E, N, K)")?;
            expect_shape("b", &bsh, &[ash[0], bsh[1], ash[2]], "(E, N, K)")?;
            let p = GroupedGemm::new(ash[0], ash[1], bsh[1], ash[2], fmt)?;
            let sa = k_scales(&f, "sa", fmt, &p.sa_shape())?;
            let sb = f32_of_shape(&f, "sb", &p.sb_shape(), "(E, N/128, K/128)")?;
            let counts = counts(&f, p.experts(), p.capacity())?;
            let p = p.with_expected_m(estimate_expected_m(0, 1, p.experts(), p.capacity(), Some(&counts)));
            OpInputs::GroupedGemm(GemmCase { p, a, sa, b, sb, counts })
        }
        Op::Experts => {
            let (ash, a1q) = f.f8("a1q", 3, "(E, T, K)")?;
            let (e, t, k) = (ash[0], ash[1], ash[2]);
            let (w1sh, w1) = f.f8("w1", 3, "(E, 2I, K)")?;
            expect_shape("w1", &w1sh, &[e, w1sh[1], k], "(E, 2I, K)")?;
            twice_groups("w1", "2I", w1sh[1])?;
            let p = ExpertsStage::new(e, t, k, w1sh[1] / 2, fmt, opts.numerics)?;
            let a1s = k_scales(&f, "a1s", fmt, &p.a1s_shape())?;
            let w1s = f32_of_shape(&f, "w1s", &p.gemm1().sb_shape(), "(E, 2I/128, K/128)")?;
            let (w2sh, w2) = f.f8("w2", 3, "(E, K, I)")?;
            expect_shape("w2", &w2sh, &[e, k, p.i()], "(E, K, I)")?;
            let w2s = f32_of_shape(&f, "w2s", &p.gemm2().sb_shape(), "(E, K/128, I/128)")?;
            let counts = counts(&f, e, t)?;
            let p = p.with_expected_m(estimate_expected_m(0, 1, e, t, Some(&counts)));
            OpInputs::Experts(ExpertsCase::new(p, a1q, a1s, (w1, w1s), (w2, w2s), counts, false))
        }
        Op::Prepare => {
            let (Some(experts), Some(capacity)) = (opts.experts, opts.capacity) else {
                return Err(InputError::Usage("op `prepare` needs --experts E and --capacity T".into()));
            };
            let (xsh, x) = f.bf16("x", 2, "(M, K)")?;
            let (ish, topk_ids) = f.i32("topk_ids", 2, "(M, k)")?;
            expect_shape("topk_ids", &ish, &[xsh[0], ish[1]], "(M, k)")?;
            let p = Prepare::new(xsh[0], xsh[1], ish[1], experts, capacity, fmt)?;
            Routing::new(&topk_ids, p.tokens(), p.topk(), experts, capacity)?;
            OpInputs::Prepare(PrepareCase { p, x, topk_ids })
        }
        Op::BatchedQuant => unreachable!("rejected above: no file form"),
        Op::Finalize => {
            let (esh, expert_out) = f.bf16("expert_out", 3, "(E, T, K)")?;
            let (ish, topk_ids) = f.i32("topk_ids", 2, "(M, k)")?;
            let (wsh, topk_weights) = f.f32("topk_weights", 2, "(M, k)")?;
            expect_shape("topk_weights", &wsh, &ish, "(M, k)")?;
            let p = Finalize::new(ish[0], esh[2], ish[1], esh[0], esh[1])?;
            Routing::new(&topk_ids, p.tokens(), p.topk(), p.experts(), p.capacity())?;
            OpInputs::Finalize(FinalizeCase {
                p,
                expert_out,
                topk_ids,
                topk_weights,
            })
        }
        Op::Route => OpInputs::Route(route_case(&f, opts)?),
    })
}
