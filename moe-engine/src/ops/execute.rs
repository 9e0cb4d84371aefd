//! Running validated inputs on a backend and naming the outputs.

use half::bf16;
use moe_core::{BatchedExperts, ExpertsWorkspace, GemmInputs, ScaleBuf, ScaleFormat, WeightsRef};

use super::*;
use crate::error::{try_filled, EngineError};
use crate::weights::safetensors::OutTensor;

fn scale_out(name: &'static str, shape: &[usize], s: &ScaleBuf) -> OutTensor {
    match s {
        ScaleBuf::F32(v) => OutTensor::f32(name, shape, v),
        ScaleBuf::Packed(v) => OutTensor::i32(name, shape, v),
    }
}

fn scale_buf(tensor: &'static str, fmt: ScaleFormat, n: usize) -> Result<ScaleBuf, EngineError> {
    Ok(if fmt.is_packed() {
        ScaleBuf::Packed(try_filled(tensor, n, 0)?)
    } else {
        ScaleBuf::F32(try_filled(tensor, n, 0.0)?)
    })
}

/// Runs the operation on `backend` and returns its outputs (SPEC §8 names, dtypes and physical
/// shapes), zero-initialized where the operation does not write.
pub fn execute(inputs: &OpInputs, backend: &dyn BatchedExperts) -> Result<Vec<OutTensor>, EngineError> {
    Ok(match inputs {
        OpInputs::TokenGroupQuant(TokenGroupQuantCase { p, x }) => {
            let shape = [p.rows(), p.k()];
            let mut q = try_filled("q", p.rows() * p.k(), 0u8)?;
            let ssh = p.scale_shape();
            let mut s = scale_buf("s", p.scale_format(), ssh[0] * ssh[1])?;
            backend.token_group_quant(p, x.view(), &mut q, s.view_mut())?;
            vec![OutTensor::f8("q", &shape, q), scale_out("s", &ssh, &s)]
        }
        OpInputs::BlockQuant(BlockQuantCase { p, w }) => {
            let shape = [p.experts(), p.rows(), p.cols()];
            let ssh = p.scale_shape();
            let mut q = try_filled("q", shape.iter().product(), 0u8)?;
            let mut s = try_filled("s", ssh.iter().product(), 0f32)?;
            backend.block_quant(p, w.view(), &mut q, &mut s)?;
            vec![OutTensor::f8("q", &shape, q), OutTensor::f32("s", &ssh, &s)]
        }
        OpInputs::SiluMulQuant(SiluMulQuantCase { p, y, counts }) => {
            let shape = [p.experts(), p.capacity(), p.h()];
            let ssh = p.scale_shape();
            let mut q = try_filled("q", shape.iter().product(), 0u8)?;
            let mut s = scale_buf("s", p.scale_format(), ssh.iter().product())?;
            backend.silu_mul_quant(p, y, counts, &mut q, s.view_mut())?;
            vec![OutTensor::f8("q", &shape, q), scale_out("s", &ssh, &s)]
        }
        OpInputs::GroupedGemm(GemmCase { p, a, sa, b, sb, counts }) => {
            let shape = [p.experts(), p.capacity(), p.n()];
            let mut d = try_filled("d", shape.iter().product(), bf16::ZERO)?;
            backend.grouped_gemm(
                p,
                GemmInputs {
                    a,
                    sa: sa.view(),
                    b: WeightsRef { q: b, s: sb },
                    counts,
                },
                &mut d,
            )?;
            vec![OutTensor::bf16("d", &shape, &d)]
        }
        OpInputs::Experts(c) => {
            let p = &c.p;
            let shape = [p.experts(), p.capacity(), p.k()];
            let mut out = try_filled("out", shape.iter().product(), bf16::ZERO)?;
            let ws13 = p.workspace_shapes().ws13;
            // Fail cleanly, before the workspace is allocated, if it cannot be.
            crate::error::try_reserve::<bf16>("ws13", ws13.iter().product())?;
            let mut ws = ExpertsWorkspace::new(p);
            backend.apply(p, c.inputs(), &mut ws, &mut out)?;
            vec![OutTensor::bf16("out", &shape, &out)]
        }
        OpInputs::Prepare(PrepareCase { p, x, topk_ids }) => {
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
        OpInputs::Finalize(FinalizeCase {
            p,
            expert_out,
            topk_ids,
            topk_weights,
        }) => {
            let shape = [p.tokens(), p.k()];
            let mut out = try_filled("out", p.tokens() * p.k(), bf16::ZERO)?;
            backend.finalize(p, expert_out, topk_ids, topk_weights, &mut out)?;
            vec![OutTensor::bf16("out", &shape, &out)]
        }
        OpInputs::Route(RouteCase { p, logits, bias }) => {
            let shape = [p.tokens(), p.topk()];
            let mut ids = try_filled("topk_ids", p.tokens() * p.topk(), 0i32)?;
            let mut w = try_filled("topk_weights", p.tokens() * p.topk(), 0f32)?;
            backend.route(p, logits, bias.as_deref(), &mut ids, &mut w)?;
            vec![OutTensor::i32("topk_ids", &shape, &ids), OutTensor::f32("topk_weights", &shape, &w)]
        }
    })
}

/// Reads, runs and serializes: the whole of `moe op` between the file system calls.
pub fn run_op(op: Op, opts: &OpOptions, input: &[u8], backend: &dyn BatchedExperts) -> Result<Vec<u8>, EngineError> {
    let inputs = read_inputs(op, opts, input)?;
    let outputs = execute(&inputs, backend)?;
    crate::weights::safetensors::serialize(&outputs).map_err(|e| EngineError::WriteOutput {
        path: "(serialization)".into(),
        source: std::io::Error::other(e.to_string()),
    })
}
