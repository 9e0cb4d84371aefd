//! The operations of `moe op` (SPEC §8): reading and validating their inputs, running them on a
//! backend, and naming their outputs.
//!
//! [`read_inputs`] turns arbitrary bytes into a validated [`OpInputs`] or an [`InputError`]
//! naming the tensor; everything data-dependent (`counts` in range, `topk_ids` in range, no
//! expert over capacity) is checked here, before any backend work. [`execute`] then cannot fail
//! on the input; it allocates the outputs zero-filled, so rows past `counts` read back as zero.

use half::bf16;
use moe_core::{
    check_counts, estimate_expected_m, Activation, BatchedExperts, BlockQuant, Experts, ExpertsInputs, ExpertsWorkspace, Finalize,
    GroupedGemm, Numerics, Prepare, ProblemError, Routing, ScaleBuf, ScaleFormat, ScaleLayout, SiluMulQuant, TokenGroupQuant, WeightsRef,
    GROUP,
};
use safetensors::Dtype;

use crate::error::{try_filled, CliError, InputError};
use crate::tensors::{decode_bf16, decode_f32, decode_i32, expect_shape, OutTensor, TensorFile};

/// The operations of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Op {
    /// `x (rows, K)` → `q`, `s (rows, K/128)` row-major (SPEC §5.1).
    TokenGroupQuant,
    /// `w (E, R, C)` → `q`, `s (E, ceil(R/128), ceil(C/128))` (SPEC §4).
    BlockQuant,
    /// `y (E, T, 2H)`, `counts` → `q (E, T, H)`, `s (E, H/128, T)` (SPEC §5.2).
    SiluMulQuant,
    /// `a`, `sa`, `b`, `sb`, `counts` → `d (E, T, N)` (SPEC §5.3).
    GroupedGemm,
    /// `a1q`, `a1s`, `w1`, `w1s`, `w2`, `w2s`, `counts` → `out (E, T, K)` (SPEC §5.4).
    Experts,
    /// `x (M, K)`, `topk_ids (M, k)` → `a1q`, `a1s`, `counts` (SPEC §5.5).
    Prepare,
    /// `expert_out`, `topk_ids`, `topk_weights` → `out (M, K)` (SPEC §5.5).
    Finalize,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 7] = [
        Op::TokenGroupQuant,
        Op::BlockQuant,
        Op::SiluMulQuant,
        Op::GroupedGemm,
        Op::Experts,
        Op::Prepare,
        Op::Finalize,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Op::TokenGroupQuant => "token-group-quant",
            Op::BlockQuant => "block-quant",
            Op::SiluMulQuant => "silu-mul-quant",
            Op::GroupedGemm => "grouped-gemm",
            Op::Experts => "experts",
            Op::Prepare => "prepare",
            Op::Finalize => "finalize",
        }
    }
}

/// The flags of `moe op` besides the files and the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpOptions {
    /// Activation scale format: of `s` (token-group-quant, silu-mul-quant), `sa` (grouped-gemm),
    /// `a1s` (experts, prepare). Unused by block-quant and finalize.
    pub scale_fmt: ScaleFormat,
    /// SiLU-mul-quant arithmetic (silu-mul-quant, experts).
    pub numerics: Numerics,
    /// block-quant only: ceil every weight scale to a power of two (UE8M0 weights).
    pub pow2: bool,
    /// prepare only: the number of local experts `E`.
    pub experts: Option<usize>,
    /// prepare only: the capacity `T`.
    pub capacity: Option<usize>,
}

/// bf16 or f32 activations, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum ActBuf {
    Bf16(Vec<bf16>),
    F32(Vec<f32>),
}

impl ActBuf {
    fn view(&self) -> Activation<'_> {
        match self {
            ActBuf::Bf16(v) => Activation::Bf16(v),
            ActBuf::F32(v) => Activation::F32(v),
        }
    }
}

/// The validated inputs of one operation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OpInputs {
    TokenGroupQuant {
        p: TokenGroupQuant,
        x: ActBuf,
    },
    BlockQuant {
        p: BlockQuant,
        w: ActBuf,
    },
    SiluMulQuant {
        p: SiluMulQuant,
        y: Vec<bf16>,
        counts: Vec<i32>,
    },
    GroupedGemm {
        p: GroupedGemm,
        a: Vec<u8>,
        sa: ScaleBuf,
        b: Vec<u8>,
        sb: Vec<f32>,
        counts: Vec<i32>,
    },
    Experts {
        p: Experts,
        a1q: Vec<u8>,
        a1s: ScaleBuf,
        w1: Vec<u8>,
        w1s: Vec<f32>,
        w2: Vec<u8>,
        w2s: Vec<f32>,
        counts: Vec<i32>,
    },
    Prepare {
        p: Prepare,
        x: Vec<bf16>,
        topk_ids: Vec<i32>,
    },
    Finalize {
        p: Finalize,
        expert_out: Vec<bf16>,
        topk_ids: Vec<i32>,
        topk_weights: Vec<f32>,
    },
}

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

fn counts(f: &TensorFile<'_>, e: usize, t: usize) -> Result<Vec<i32>, InputError> {
    let (sh, c) = f.i32("counts", 1, "(E)")?;
    expect_shape("counts", &sh, &[e], "(E)")?;
    check_counts(&c, e, t)?;
    Ok(c)
}

fn not_for(op: Op, flag: &str, applies: &str) -> InputError {
    InputError::Usage(format!("{flag} does not apply to op `{}` (only to {applies})", op.name()))
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
    let f = TensorFile::parse(bytes, op.name())?;
    let fmt = opts.scale_fmt;
    Ok(match op {
        Op::TokenGroupQuant => {
            let (sh, x) = activation(&f, "x", 2, "(rows, K)")?;
            let p = TokenGroupQuant::new(sh[0], sh[1], fmt, ScaleLayout::RowMajor)?;
            OpInputs::TokenGroupQuant { p, x }
        }
        Op::BlockQuant => {
            let (sh, w) = activation(&f, "w", 3, "(E, R, C)")?;
            let p = BlockQuant::new(sh[0], sh[1], sh[2], opts.pow2)?;
            OpInputs::BlockQuant { p, w }
        }
        Op::SiluMulQuant => {
            let (sh, y) = f.bf16("y", 3, "(E, T, 2H)")?;
            if sh[2] == 0 || sh[2] % (2 * GROUP) != 0 {
                return Err(ProblemError::NotMultiple {
                    tensor: "y",
                    dim: "2H",
                    got: sh[2],
                    multiple: 2 * GROUP,
                }
                .into());
            }
            let p = SiluMulQuant::new(sh[0], sh[1], sh[2] / 2, fmt, opts.numerics)?;
            let counts = counts(&f, sh[0], sh[1])?;
            OpInputs::SiluMulQuant { p, y, counts }
        }
        Op::GroupedGemm => {
            let (ash, a) = f.f8("a", 3, "(E, T, K)")?;
            let (bsh, b) = f.f8("b", 3, "(E, N, K)")?;
            expect_shape("b", &bsh, &[ash[0], bsh[1], ash[2]], "(E, N, K)")?;
            let p = GroupedGemm::new(ash[0], ash[1], bsh[1], ash[2], fmt)?;
            let sa = scales(
                &f,
                "sa",
                fmt,
                &p.sa_shape(),
                if fmt.is_packed() { "(E, ceil(K/512), T)" } else { "(E, K/128, T)" },
            )?;
            let (sbsh, sb) = f.f32("sb", 3, "(E, N/128, K/128)")?;
            expect_shape("sb", &sbsh, &p.sb_shape(), "(E, N/128, K/128)")?;
            let counts = counts(&f, p.experts(), p.capacity())?;
            let p = p.with_expected_m(estimate_expected_m(0, 1, p.experts(), p.capacity(), Some(&counts)));
            OpInputs::GroupedGemm { p, a, sa, b, sb, counts }
        }
        Op::Experts => {
            let (ash, a1q) = f.f8("a1q", 3, "(E, T, K)")?;
            let (e, t, k) = (ash[0], ash[1], ash[2]);
            let (w1sh, w1) = f.f8("w1", 3, "(E, 2I, K)")?;
            expect_shape("w1", &w1sh, &[e, w1sh[1], k], "(E, 2I, K)")?;
            if w1sh[1] == 0 || w1sh[1] % (2 * GROUP) != 0 {
                return Err(ProblemError::NotMultiple {
                    tensor: "w1",
                    dim: "2I",
                    got: w1sh[1],
                    multiple: 2 * GROUP,
                }
                .into());
            }
            let p = Experts::new(e, t, k, w1sh[1] / 2, fmt, opts.numerics)?;
            let a1s = scales(
                &f,
                "a1s",
                fmt,
                &p.a1s_shape(),
                if fmt.is_packed() { "(E, ceil(K/512), T)" } else { "(E, K/128, T)" },
            )?;
            let (w1ssh, w1s) = f.f32("w1s", 3, "(E, 2I/128, K/128)")?;
            expect_shape("w1s", &w1ssh, &p.gemm1().sb_shape(), "(E, 2I/128, K/128)")?;
            let (w2sh, w2) = f.f8("w2", 3, "(E, K, I)")?;
            expect_shape("w2", &w2sh, &[e, k, p.i()], "(E, K, I)")?;
            let (w2ssh, w2s) = f.f32("w2s", 3, "(E, K/128, I/128)")?;
            expect_shape("w2s", &w2ssh, &p.gemm2().sb_shape(), "(E, K/128, I/128)")?;
            let counts = counts(&f, e, t)?;
            let p = p.with_expected_m(estimate_expected_m(0, 1, e, t, Some(&counts)));
            OpInputs::Experts {
                p,
                a1q,
                a1s,
                w1,
                w1s,
                w2,
                w2s,
                counts,
            }
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
            OpInputs::Prepare { p, x, topk_ids }
        }
        Op::Finalize => {
            let (esh, expert_out) = f.bf16("expert_out", 3, "(E, T, K)")?;
            let (ish, topk_ids) = f.i32("topk_ids", 2, "(M, k)")?;
            let (wsh, topk_weights) = f.f32("topk_weights", 2, "(M, k)")?;
            expect_shape("topk_weights", &wsh, &ish, "(M, k)")?;
            let p = Finalize::new(ish[0], esh[2], ish[1], esh[0], esh[1])?;
            Routing::new(&topk_ids, p.tokens(), p.topk(), p.experts(), p.capacity())?;
            OpInputs::Finalize {
                p,
                expert_out,
                topk_ids,
                topk_weights,
            }
        }
    })
}

fn scale_out(name: &'static str, shape: &[usize], s: &ScaleBuf) -> OutTensor {
    match s {
        ScaleBuf::F32(v) => OutTensor::f32(name, shape, v),
        ScaleBuf::Packed(v) => OutTensor::i32(name, shape, v),
    }
}

fn scale_buf(tensor: &'static str, fmt: ScaleFormat, n: usize) -> Result<ScaleBuf, CliError> {
    Ok(if fmt.is_packed() {
        ScaleBuf::Packed(try_filled(tensor, n, 0)?)
    } else {
        ScaleBuf::F32(try_filled(tensor, n, 0.0)?)
    })
}

/// Runs the operation on `backend` and returns its outputs (SPEC §8 names, dtypes and physical
/// shapes), zero-initialized where the operation does not write.
pub fn execute(inputs: &OpInputs, backend: &dyn BatchedExperts) -> Result<Vec<OutTensor>, CliError> {
    Ok(match inputs {
        OpInputs::TokenGroupQuant { p, x } => {
            let shape = [p.rows(), p.k()];
            let mut q = try_filled("q", p.rows() * p.k(), 0u8)?;
            let ssh = p.scale_shape();
            let mut s = scale_buf("s", p.scale_format(), ssh[0] * ssh[1])?;
            backend.token_group_quant(p, x.view(), &mut q, s.view_mut())?;
            vec![OutTensor::f8("q", &shape, q), scale_out("s", &ssh, &s)]
        }
        OpInputs::BlockQuant { p, w } => {
            let shape = [p.experts(), p.rows(), p.cols()];
            let ssh = p.scale_shape();
            let mut q = try_filled("q", shape.iter().product(), 0u8)?;
            let mut s = try_filled("s", ssh.iter().product(), 0f32)?;
            backend.block_quant(p, w.view(), &mut q, &mut s)?;
            vec![OutTensor::f8("q", &shape, q), OutTensor::f32("s", &ssh, &s)]
        }
        OpInputs::SiluMulQuant { p, y, counts } => {
            let shape = [p.experts(), p.capacity(), p.h()];
            let ssh = p.scale_shape();
            let mut q = try_filled("q", shape.iter().product(), 0u8)?;
            let mut s = scale_buf("s", p.scale_format(), ssh.iter().product())?;
            backend.silu_mul_quant(p, y, counts, &mut q, s.view_mut())?;
            vec![OutTensor::f8("q", &shape, q), scale_out("s", &ssh, &s)]
        }
        OpInputs::GroupedGemm { p, a, sa, b, sb, counts } => {
            let shape = [p.experts(), p.capacity(), p.n()];
            let mut d = try_filled("d", shape.iter().product(), bf16::ZERO)?;
            backend.grouped_gemm(p, a, sa.view(), b, sb, counts, &mut d)?;
            vec![OutTensor::bf16("d", &shape, &d)]
        }
        OpInputs::Experts {
            p,
            a1q,
            a1s,
            w1,
            w1s,
            w2,
            w2s,
            counts,
        } => {
            let shape = [p.experts(), p.capacity(), p.k()];
            let mut out = try_filled("out", shape.iter().product(), bf16::ZERO)?;
            let ws13 = p.workspace_shapes().ws13;
            // Fail cleanly, before the workspace is allocated, if it cannot be.
            crate::error::try_reserve::<bf16>("ws13", ws13.iter().product())?;
            let mut ws = ExpertsWorkspace::new(p);
            let inputs = ExpertsInputs {
                a1q,
                a1s: a1s.view(),
                w1: WeightsRef { q: w1, s: w1s },
                w2: WeightsRef { q: w2, s: w2s },
                counts,
            };
            backend.apply(p, inputs, &mut ws, &mut out)?;
            vec![OutTensor::bf16("out", &shape, &out)]
        }
        OpInputs::Prepare { p, x, topk_ids } => {
            let shape = [p.experts(), p.capacity(), p.k()];
            let ssh = p.quant().scale_shape();
            let mut a1q = try_filled("a1q", shape.iter().product(), 0u8)?;
            let mut a1s = scale_buf("a1s", p.scale_format(), ssh.iter().product())?;
            let mut counts = try_filled("counts", p.experts(), 0i32)?;
            backend.prepare(p, x, topk_ids, &mut a1q, a1s.view_mut(), &mut counts)?;
            vec![
                OutTensor::f8("a1q", &shape, a1q),
                scale_out("a1s", &ssh, &a1s),
                OutTensor::i32("counts", &[p.experts()], &counts),
            ]
        }
        OpInputs::Finalize {
            p,
            expert_out,
            topk_ids,
            topk_weights,
        } => {
            let shape = [p.tokens(), p.k()];
            let mut out = try_filled("out", p.tokens() * p.k(), bf16::ZERO)?;
            backend.finalize(p, expert_out, topk_ids, topk_weights, &mut out)?;
            vec![OutTensor::bf16("out", &shape, &out)]
        }
    })
}

/// Reads, runs and serializes: the whole of `moe op` between the file system calls.
pub fn run_op(op: Op, opts: &OpOptions, input: &[u8], backend: &dyn BatchedExperts) -> Result<Vec<u8>, CliError> {
    let inputs = read_inputs(op, opts, input)?;
    let outputs = execute(&inputs, backend)?;
    crate::tensors::serialize(&outputs).map_err(|e| CliError::WriteOutput {
        path: "(serialization)".into(),
        source: std::io::Error::other(e.to_string()),
    })
}
