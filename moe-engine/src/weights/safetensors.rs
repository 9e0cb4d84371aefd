//! Reading and writing the safetensors files of `moe op` (SPEC §8).
//!
//! [`TensorFile::parse`] accepts any bytes: a malformed or truncated file is an
//! [`InputError::Malformed`], never a panic. Each getter checks the tensor's presence, dtype and
//! rank and returns its elements decoded from little-endian bytes (the file's data has no
//! alignment guarantee, so nothing is reinterpreted in place).

use half::bf16;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::InputError;

/// A parsed safetensors file whose tensors are looked up by the operation `op`.
#[derive(Debug)]
pub struct TensorFile<'a> {
    st: SafeTensors<'a>,
    op: &'static str,
}

/// A tensor's shape and its raw little-endian bytes.
#[derive(Debug)]
pub struct RawTensor<'a> {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its data, little-endian, unaligned.
    pub bytes: &'a [u8],
}

/// The shape as `(a, b, c)`.
pub fn shape_str(shape: &[usize]) -> String {
    moe_core::error::ShapeDisplay(shape).to_string()
}

fn dtype_list(dtypes: &[Dtype]) -> String {
    dtypes.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(" or ")
}

impl<'a> TensorFile<'a> {
    /// Parses `bytes` as a safetensors file (header, offsets and total length are validated).
    pub fn parse(bytes: &'a [u8], op: &'static str) -> Result<Self, InputError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| InputError::Malformed { reason: e.to_string() })?;
        Ok(Self { st, op })
    }

    /// Whether the file holds a tensor `name` (for the optional ones).
    pub fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    /// Tensor `name` with one of `dtypes` and `layout.len()` dimensions; `layout` is the symbolic
    /// shape used in messages, e.g. `(E, T, K)`.
    pub fn raw(&self, name: &'static str, dtypes: &[Dtype], rank: usize, layout: &'static str) -> Result<RawTensor<'a>, InputError> {
        let view: TensorView<'a> = self.st.tensor(name).map_err(|_| InputError::Missing {
            tensor: name,
            op: self.op,
            needs: layout,
        })?;
        if !dtypes.contains(&view.dtype()) {
            return Err(InputError::Dtype {
                tensor: name,
                got: format!("{:?}", view.dtype()),
                expected: dtype_list(dtypes),
            });
        }
        if view.shape().len() != rank {
            return Err(InputError::Rank {
                tensor: name,
                got: shape_str(view.shape()),
                rank: view.shape().len(),
                expected: rank,
                layout,
            });
        }
        Ok(RawTensor {
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
            bytes: view.data(),
        })
    }

    /// An `F8_E4M3` tensor as bytes.
    pub fn f8(&self, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, Vec<u8>), InputError> {
        let t = self.raw(name, &[Dtype::F8_E4M3], rank, layout)?;
        Ok((t.shape, t.bytes.to_vec()))
    }

    /// A `BF16` tensor.
    pub fn bf16(&self, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, Vec<bf16>), InputError> {
        let t = self.raw(name, &[Dtype::BF16], rank, layout)?;
        Ok((t.shape, decode_bf16(t.bytes)))
    }

    /// An `F32` tensor.
    pub fn f32(&self, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, Vec<f32>), InputError> {
        let t = self.raw(name, &[Dtype::F32], rank, layout)?;
        Ok((t.shape, decode_f32(t.bytes)))
    }

    /// An `I32` tensor.
    pub fn i32(&self, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, Vec<i32>), InputError> {
        let t = self.raw(name, &[Dtype::I32], rank, layout)?;
        Ok((t.shape, decode_i32(t.bytes)))
    }
}

/// Little-endian bf16 elements.
pub fn decode_bf16(b: &[u8]) -> Vec<bf16> {
    b.chunks_exact(2)
        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// Little-endian f32 elements.
pub fn decode_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Little-endian i32 elements.
pub fn decode_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Checks that `got` equals `expected`, else a shape error naming `tensor` with the symbolic `layout`.
pub fn expect_shape(tensor: &'static str, got: &[usize], expected: &[usize], layout: &'static str) -> Result<(), InputError> {
    if got != expected {
        return Err(InputError::Shape {
            tensor,
            got: shape_str(got),
            expected: shape_str(expected),
            layout,
        });
    }
    Ok(())
}

/// An output tensor, ready to serialize.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    /// Its name in the file.
    pub name: &'static str,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its data, little-endian.
    pub bytes: Vec<u8>,
}

impl OutTensor {
    /// `F8_E4M3` bytes.
    pub fn f8(name: &'static str, shape: &[usize], q: Vec<u8>) -> Self {
        Self {
            name,
            dtype: Dtype::F8_E4M3,
            shape: shape.to_vec(),
            bytes: q,
        }
    }
    /// `BF16` values.
    pub fn bf16(name: &'static str, shape: &[usize], v: &[bf16]) -> Self {
        Self {
            name,
            dtype: Dtype::BF16,
            shape: shape.to_vec(),
            bytes: v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        }
    }
    /// `F32` values.
    pub fn f32(name: &'static str, shape: &[usize], v: &[f32]) -> Self {
        Self {
            name,
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    /// `I32` values.
    pub fn i32(name: &'static str, shape: &[usize], v: &[i32]) -> Self {
        Self {
            name,
            dtype: Dtype::I32,
            shape: shape.to_vec(),
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Serializes tensors into safetensors bytes.
pub fn serialize(tensors: &[OutTensor]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let views = tensors
        .iter()
        .map(|t| Ok((t.name, TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::tensor::serialize(views, None)
}

/// Writes `bytes` to `path` atomically: into a temporary file of the same directory, then
/// renamed over `path`; on any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the output path names no file"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
