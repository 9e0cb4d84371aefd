//! Reading and writing the safetensors files of `moe op` (SPEC §8).
//!
//! [`TensorFile::parse`] accepts any bytes: a malformed or truncated file is an
//! [`InputError::Malformed`], never a panic. Each getter checks the tensor's presence, dtype and
//! rank and returns its elements decoded from little-endian bytes (the file's data has no
//! alignment guarantee, so nothing is reinterpreted in place).
//!
//! Names known only at run time (a checkpoint's `model.layers.{l}.mlp.experts.{e}...`) are looked
//! up with [`TensorFile::tensor`] or, for a file whose header is parsed once and kept next to its
//! memory map, [`Header::tensor`]; both check the dtype and the shape through [`check_tensor`]
//! and report a [`TensorError`] that owns the name.

use half::bf16;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView};

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

    /// Tensor `name` (any name, e.g. one built at run time) with one of `dtypes` and exactly
    /// `shape`; `layout` is the symbolic shape used in messages, e.g. `(I, K)`.
    pub fn tensor(&self, name: &str, dtypes: &[Dtype], shape: &[usize], layout: &str) -> Result<RawTensor<'a>, TensorError> {
        let found = self.st.tensor(name).ok().map(|v| RawTensor {
            shape: v.shape().to_vec(),
            dtype: v.dtype(),
            bytes: v.data(),
        });
        check_tensor(name, found, dtypes, shape, layout)
    }

    /// An `I32` tensor.
    pub fn i32(&self, name: &'static str, rank: usize, layout: &'static str) -> Result<(Vec<usize>, Vec<i32>), InputError> {
        let t = self.raw(name, &[Dtype::I32], rank, layout)?;
        Ok((t.shape, decode_i32(t.bytes)))
    }
}

/// A tensor looked up by a name known at run time is missing, or has the wrong dtype or shape.
/// Unlike [`InputError`], it owns the tensor's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// No tensor of that name.
    #[error("tensor `{tensor}`: missing")]
    Missing {
        /// The tensor.
        tensor: String,
    },
    /// The tensor's dtype is not one of those accepted.
    #[error("tensor `{tensor}`: dtype {got}, expected {expected}")]
    Dtype {
        /// The tensor.
        tensor: String,
        /// What the file has.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// The tensor's shape is not the one expected.
    #[error("tensor `{tensor}`: shape {got}, expected {expected}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// What the file has.
        got: String,
        /// What was expected: the symbolic layout and its value, e.g. `(I, K) = (256, 512)`.
        expected: String,
    },
}

impl TensorError {
    /// The tensor this error is about.
    pub fn tensor(&self) -> &str {
        match self {
            TensorError::Missing { tensor } | TensorError::Dtype { tensor, .. } | TensorError::Shape { tensor, .. } => tensor,
        }
    }
}

/// Checks a looked-up tensor (`None`: absent) against the accepted `dtypes` and the exact
/// `shape` (`layout` names it in messages): the one check behind [`TensorFile::tensor`] and
/// [`Header::tensor`].
pub fn check_tensor<'a>(
    name: &str,
    found: Option<RawTensor<'a>>,
    dtypes: &[Dtype],
    shape: &[usize],
    layout: &str,
) -> Result<RawTensor<'a>, TensorError> {
    let t = found.ok_or_else(|| TensorError::Missing { tensor: name.to_string() })?;
    if !dtypes.contains(&t.dtype) {
        return Err(TensorError::Dtype {
            tensor: name.to_string(),
            got: format!("{:?}", t.dtype),
            expected: dtype_list(dtypes),
        });
    }
    if t.shape != shape {
        return Err(TensorError::Shape {
            tensor: name.to_string(),
            got: shape_str(&t.shape),
            expected: format!("{layout} = {}", shape_str(shape)),
        });
    }
    Ok(t)
}

/// Why a safetensors header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The header or the data it describes runs past the end of the file.
    #[error("truncated: {0}")]
    Truncated(String),
    /// Anything else: not JSON, bad offsets, bytes past the data the header describes.
    #[error("{0}")]
    Malformed(String),
}

/// The size of the header-length prefix of a safetensors file.
const LEN_PREFIX: usize = 8;

/// A parsed safetensors header that owns its metadata (it borrows nothing), so that it can be
/// kept next to the file's memory map and parsed once however many tensors are read.
///
/// [`Header::parse`] validates what [`TensorFile::parse`] validates (offsets contiguous and
/// sized by dtype and shape, the data ending exactly at the end of the file), reading only the
/// header's bytes; so every tensor it hands out lies inside the file.
#[derive(Debug)]
pub struct Header {
    meta: Metadata,
    data_start: usize,
}

impl Header {
    /// Parses the header of a safetensors file of which `bytes` is the whole content.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        let len = bytes.len();
        let Some(prefix) = bytes.get(..LEN_PREFIX) else {
            return Err(HeaderError::Truncated(format!(
                "{len} bytes, shorter than the {LEN_PREFIX}-byte header length"
            )));
        };
        let mut n_bytes = [0u8; LEN_PREFIX];
        n_bytes.copy_from_slice(prefix);
        let n = u64::from_le_bytes(n_bytes);
        if n > (len - LEN_PREFIX) as u64 {
            return Err(HeaderError::Truncated(format!(
                "the header is {n} bytes, the file holds {} after the header length",
                len - LEN_PREFIX
            )));
        }
        let data_start = LEN_PREFIX + n as usize;
        match SafeTensors::read_metadata(bytes) {
            Ok((_, meta)) => Ok(Self { meta, data_start }),
            Err(safetensors::SafeTensorError::MetadataIncompleteBuffer) => {
                let held = len - data_start;
                let described = described_data_len(&bytes[LEN_PREFIX..data_start]);
                Err(match described {
                    Some(d) if d > held => HeaderError::Truncated(format!("the header describes {d} bytes of data, the file holds {held}")),
                    Some(d) => HeaderError::Malformed(format!("{held} bytes of data, the header describes {d}")),
                    None => HeaderError::Malformed("the data does not match the header".into()),
                })
            }
            Err(e) => Err(HeaderError::Malformed(e.to_string())),
        }
    }

    /// Tensor `name` inside `bytes`, the content of the file this header was parsed from; `None`
    /// if the file has no such tensor.
    pub fn tensor<'a>(&self, bytes: &'a [u8], name: &str) -> Option<RawTensor<'a>> {
        let info = self.meta.info(name)?;
        let (start, end) = info.data_offsets;
        let data = bytes.get(self.data_start + start..self.data_start + end)?;
        Some(RawTensor {
            shape: info.shape.clone(),
            dtype: info.dtype,
            bytes: data,
        })
    }

    /// The names of the file's tensors, in data order.
    pub fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }
}

/// The largest end offset a (syntactically valid) header describes, for the message of a file
/// whose data length disagrees with it.
fn described_data_len(header: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64().map(|e| e as usize))
        .try_fold(0usize, |m, e| Some(m.max(e?)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Vec<u8> {
        serialize(&[
            OutTensor::f32("a", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            OutTensor::f8("b.weight", &[4], vec![1, 2, 3, 4]),
        ])
        .unwrap()
    }

    #[test]
    fn header_finds_tensors_by_runtime_names() {
        let bytes = file();
        let h = Header::parse(&bytes).unwrap();
        let name = format!("b.{}", "weight");
        let t = check_tensor(&name, h.tensor(&bytes, &name), &[Dtype::F8_E4M3], &[4], "(N)").unwrap();
        assert_eq!(t.bytes, &[1, 2, 3, 4]);
        assert_eq!(decode_f32(h.tensor(&bytes, "a").unwrap().bytes), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(h.tensor(&bytes, "c").is_none());
        assert_eq!(h.names(), vec!["a".to_string(), "b.weight".to_string()]);
    }

    #[test]
    fn tensor_errors_own_the_name_and_say_what_was_expected() {
        let bytes = file();
        let f = TensorFile::parse(&bytes, "test").unwrap();
        let name = String::from("a");
        let e = f.tensor(&name, &[Dtype::BF16], &[2, 3], "(R, C)").unwrap_err();
        assert_eq!(e.to_string(), "tensor `a`: dtype F32, expected BF16");
        let e = f.tensor(&name, &[Dtype::F32], &[3, 2], "(R, C)").unwrap_err();
        assert_eq!(e.to_string(), "tensor `a`: shape (2, 3), expected (R, C) = (3, 2)");
        let e = f.tensor("zz", &[Dtype::F32], &[1], "(R)").unwrap_err();
        assert_eq!((e.tensor(), e.to_string().as_str()), ("zz", "tensor `zz`: missing"));
        assert_eq!(f.tensor(&name, &[Dtype::F32], &[2, 3], "(R, C)").unwrap().bytes.len(), 24);
    }

    #[test]
    fn truncation_is_told_apart_from_other_damage() {
        let bytes = file();
        for cut in [0, 5, 8, 20, bytes.len() - 1] {
            let e = Header::parse(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, HeaderError::Truncated(_)), "cut at {cut}: {e}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Header::parse(&longer).unwrap_err(), HeaderError::Malformed(_)));
        let mut garbled = bytes.clone();
        garbled[9] = b'!';
        assert!(matches!(Header::parse(&garbled).unwrap_err(), HeaderError::Malformed(_)));
    }
}
