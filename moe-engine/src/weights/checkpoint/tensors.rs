//! Typed reads of a checkpoint's tensors: the gate and its bias widened to f32, and the expert
//! matrices as E4M3 with their block scales (copied from FP8 files, block-quantized from BF16).

use moe_core::{Activation, Backend, BlockQuant};
use moe_ref_cpu::CpuBackend;
use safetensors::Dtype;

use super::error::CheckpointError;
use super::shards::Shards;
use crate::error::EngineError;
use crate::weights::safetensors::{check_tensor, decode_bf16, decode_f32, RawTensor};

/// Tensor `name` of exactly `shape` and one of `dtypes`, or the error naming it and its file.
pub(super) fn read<'a>(
    shards: &'a Shards,
    name: &str,
    dtypes: &[Dtype],
    shape: &[usize],
    layout: &str,
) -> Result<RawTensor<'a>, EngineError> {
    let found = shards.lookup(name)?;
    check_tensor(name, found.tensor, dtypes, shape, layout).map_err(|error| {
        CheckpointError::Tensor {
            file: found.file.display().to_string(),
            error,
        }
        .into()
    })
}

/// A BF16 or F32 tensor widened exactly to f32.
pub(super) fn widened(t: &RawTensor<'_>) -> Vec<f32> {
    match t.dtype {
        Dtype::BF16 => decode_bf16(t.bytes).into_iter().map(f32::from).collect(),
        _ => decode_f32(t.bytes),
    }
}

/// One `(R, C)` weight matrix of the checkpoint, found and checked, not yet copied.
#[derive(Debug)]
pub(super) enum Matrix<'a> {
    /// E4M3 bytes and the f32 bytes of their `(ceil(R/128), ceil(C/128))` scales.
    Fp8 { q: &'a [u8], s: &'a [u8] },
    /// BF16 bytes, block-quantized when copied.
    Bf16 { rows: usize, cols: usize, w: &'a [u8] },
}

/// Finds `{prefix}.weight` of shape `(R, C)`: F8_E4M3 with `{prefix}.weight_scale_inv` F32 of
/// shape `(ceil(R/128), ceil(C/128))`, or BF16 (no scales read). `dims` gives `R` and `C` with
/// their symbolic names, e.g. `[("I", 256), ("K", 512)]`.
pub(super) fn matrix<'a>(shards: &'a Shards, prefix: &str, dims: [(&str, usize); 2]) -> Result<Matrix<'a>, EngineError> {
    let [(rn, rows), (cn, cols)] = dims;
    let name = format!("{prefix}.weight");
    let w = read(
        shards,
        &name,
        &[Dtype::F8_E4M3, Dtype::BF16],
        &[rows, cols],
        &format!("({rn}, {cn})"),
    )?;
    if w.dtype == Dtype::BF16 {
        return Ok(Matrix::Bf16 { rows, cols, w: w.bytes });
    }
    let sname = format!("{prefix}.weight_scale_inv");
    let sshape = [rows.div_ceil(128), cols.div_ceil(128)];
    let s = read(shards, &sname, &[Dtype::F32], &sshape, &format!("(ceil({rn}/128), ceil({cn}/128))"))?;
    Ok(Matrix::Fp8 { q: w.bytes, s: s.bytes })
}

impl Matrix<'_> {
    /// Writes the matrix into `q` (`R·C` E4M3 bytes) and `s` (its block scales): FP8 bytes as
    /// they are, BF16 block-quantized by SPEC §4 with the CPU backend (`pow2`: power-of-two
    /// scales). The slices' lengths are the matrix's, as [`matrix`] checked them.
    pub fn copy_into(&self, pow2: bool, q: &mut [u8], s: &mut [f32]) -> Result<(), EngineError> {
        match self {
            Matrix::Fp8 { q: qb, s: sb } => {
                q.copy_from_slice(qb);
                for (o, c) in s.iter_mut().zip(sb.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            &Matrix::Bf16 { rows, cols, w } => {
                let p = BlockQuant::new(1, rows, cols, pow2)?;
                CpuBackend::new().block_quant(&p, Activation::Bf16(&decode_bf16(w)), q, s)?;
            }
        }
        Ok(())
    }
}
