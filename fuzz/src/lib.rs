//! Helpers shared by the fuzz targets.
//!
//! [`parse_op_inputs`] is a stand-in for the `moe op` input reader of `moe-cli` (not on main
//! yet): it parses a safetensors file from bytes, looks up the tensors of an operation by name,
//! checks dtype and rank, builds the validated problem and checks the buffers, exactly the path
//! that untrusted files take. When `moe-cli` exposes its reader, the `safetensors_op` target
//! switches to it.
#![forbid(unsafe_code)]

use half::bf16;
use moe_core::{GroupedGemm, MoeError, ProblemError, ScaleFormat, Scales, SiluMulQuant, TokenGroupQuant};
use safetensors::{Dtype, SafeTensors};

/// Why a file was rejected (never a panic).
#[derive(Debug)]
pub enum Rejected {
    Format(String),
    Problem(ProblemError),
    Backend(MoeError),
}

fn tensor<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype, rank: usize) -> Result<(Vec<usize>, &'a [u8]), Rejected> {
    let t = st.tensor(name).map_err(|e| Rejected::Format(format!("tensor `{name}`: {e}")))?;
    if t.dtype() != dtype {
        return Err(Rejected::Format(format!(
            "tensor `{name}`: dtype {:?}, expected {dtype:?}",
            t.dtype()
        )));
    }
    if t.shape().len() != rank {
        return Err(Rejected::Format(format!(
            "tensor `{name}`: rank {}, expected {rank}",
            t.shape().len()
        )));
    }
    Ok((t.shape().to_vec(), t.data()))
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Element limit of a parsed problem that the fuzz targets run (keeps each execution fast).
pub const RUN_LIMIT: usize = 1 << 16;

/// Parses the inputs of one operation (chosen by `op % 3`) from safetensors bytes, validates
/// them, and runs the naive reference on them when small.
pub fn parse_op_inputs(op: u8, bytes: &[u8]) -> Result<(), Rejected> {
    use moe_core::Backend;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Rejected::Format(e.to_string()))?;
    let be = moe_ref_cpu::NaiveCpu;
    match op % 3 {
        0 => {
            let (sh, x) = tensor(&st, "x", Dtype::F32, 2)?;
            let p = TokenGroupQuant::new(sh[0], sh[1], ScaleFormat::F32, moe_core::ScaleLayout::RowMajor).map_err(Rejected::Problem)?;
            let x: Vec<f32> = words(x).into_iter().map(f32::from_bits).collect();
            if sh[0].saturating_mul(sh[1]) > RUN_LIMIT {
                return Ok(());
            }
            let mut q = vec![0u8; sh[0] * sh[1]];
            let mut s = vec![0f32; p.scale_shape().iter().product()];
            be.token_group_quant(&p, moe_core::Activation::F32(&x), &mut q, moe_core::ScalesMut::F32(&mut s))
                .map_err(Rejected::Backend)
        }
        1 => {
            let (sh, y) = tensor(&st, "y", Dtype::BF16, 3)?;
            let (csh, counts) = tensor(&st, "counts", Dtype::I32, 1)?;
            if sh[2] % 2 != 0 {
                return Err(Rejected::Format("tensor `y`: odd last dimension".into()));
            }
            let p = SiluMulQuant::new(sh[0], sh[1], sh[2] / 2, ScaleFormat::Ue8m0Packed, moe_core::Numerics::VllmBf16)
                .map_err(Rejected::Problem)?;
            let y: Vec<bf16> = y
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            let counts: Vec<i32> = words(counts).into_iter().map(|w| w as i32).collect();
            let _ = csh;
            if sh.iter().product::<usize>() > RUN_LIMIT {
                return Ok(());
            }
            let mut q = vec![0u8; y.len() / 2];
            let mut s = vec![0i32; p.scale_shape().iter().product()];
            be.silu_mul_quant(&p, &y, &counts, &mut q, moe_core::ScalesMut::Packed(&mut s))
                .map_err(Rejected::Backend)
        }
        _ => {
            let (ash, a) = tensor(&st, "a", Dtype::F8_E4M3, 3)?;
            let (_, sa) = tensor(&st, "sa", Dtype::F32, 3)?;
            let (bsh, b) = tensor(&st, "b", Dtype::F8_E4M3, 3)?;
            let (_, sb) = tensor(&st, "sb", Dtype::F32, 3)?;
            let (_, counts) = tensor(&st, "counts", Dtype::I32, 1)?;
            let p = GroupedGemm::new(ash[0], ash[1], bsh[1], ash[2], ScaleFormat::F32).map_err(Rejected::Problem)?;
            let sa: Vec<f32> = words(sa).into_iter().map(f32::from_bits).collect();
            let sb: Vec<f32> = words(sb).into_iter().map(f32::from_bits).collect();
            let counts: Vec<i32> = words(counts).into_iter().map(|w| w as i32).collect();
            p.check_inputs(a, &Scales::F32(&sa), b, &sb, &counts).map_err(Rejected::Problem)?;
            let out = ash[0].saturating_mul(ash[1]).saturating_mul(bsh[1]);
            if out.saturating_mul(ash[2]) > RUN_LIMIT {
                return Ok(());
            }
            let mut d = vec![bf16::ZERO; out];
            be.grouped_gemm(&p, a, Scales::F32(&sa), b, &sb, &counts, &mut d)
                .map_err(Rejected::Backend)
        }
    }
}
