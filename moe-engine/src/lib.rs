//! # moe-engine
//!
//! The runtime of moe-fp8, between the backends (moe-ref-cpu, moe-cuda) and the front ends (the
//! `moe` binary, the fuzz targets, and later the Python module): the one place that picks a
//! backend and knows its GEMM contract ([`device`]), every operation of SPEC §8 on named tensors
//! ([`ops`]) and on `ndarray` arrays ([`array`](mod@array)), weights, tensor files and Hugging Face
//! checkpoints ([`weights`]), the prepare → experts → finalize run with its stage timing
//! ([`pipeline`]) and the differential harness ([`verify`]).
//!
//! What it promises:
//! - [`ops::read_inputs`] accepts **any** bytes and returns either the validated inputs of an
//!   operation or an [`InputError`] naming the tensor at fault; it never panics.
//! - [`ops::execute`] runs validated inputs on any backend and returns the outputs of SPEC §8
//!   (names, safetensors dtypes, physical shapes), zero-initialized where the operation does not
//!   write, so rows `t >= counts[e]` read back as zero.
//! - [`weights::checkpoint::Checkpoint`] opens any directory and loads any layer, or returns an
//!   [`InputError::Checkpoint`] naming the file, the tensor or the config key; it never panics.
//! - [`weights::safetensors::write_atomic`] writes through a temporary file and a rename, so the
//!   output path is either untouched or complete.
//! - Every failure is one [`EngineError`]; [`EngineError::is_input`] says whether the caller's
//!   input is at fault.
//!
//! What it trusts: moe-core's validated problem types and the backends' contracts. Its one
//! `unsafe` is the read-only memory map of [`weights::MappedFile`].
//!
//! # Example
//!
//! Quantize a small layer, run the experts stage on the backend the build offers (the GPU with
//! the `cuda` feature and a GPU present, else the CPU), and compare it with the reference:
//!
//! ```
//! use half::bf16;
//! use moe_engine::array::{self, ExpertsWeights};
//! use moe_engine::{Device, DeviceKind, GemmContract};
//! use moe_core::{Numerics, ScaleFormat};
//! use ndarray::{Array1, Array2, Array3};
//!
//! # fn main() -> Result<(), moe_engine::EngineError> {
//! let (e, t, k, i) = (2, 4, 256, 128);
//! // Full-precision weights, block-quantized at load time (SPEC §4).
//! let w1 = Array3::from_shape_fn((e, 2 * i, k), |(x, r, c)| bf16::from_f32(((x + 3 * r + 7 * c) % 17) as f32 * 0.01 - 0.08));
//! let w2 = Array3::from_shape_fn((e, k, i), |(x, r, c)| bf16::from_f32(((5 * x + r + 3 * c) % 13) as f32 * 0.01 - 0.06));
//! let device = if DeviceKind::Cuda.compiled_in() {
//!     Device::open(DeviceKind::Cuda).or_else(|_| Device::open(DeviceKind::Cpu))?
//! } else {
//!     Device::open(DeviceKind::Cpu)?
//! };
//! let weights = ExpertsWeights::quantize(&device, w1.view(), w2.view(), false)?;
//!
//! // Tokens routed to experts and quantized (prepare), then the experts stage.
//! let x = Array2::from_shape_fn((3, k), |(m, c)| bf16::from_f32(((m * 31 + c) % 11) as f32 * 0.1 - 0.5));
//! let topk_ids = Array2::from_shape_vec((3, 2), vec![0, 1, 1, -1, 0, 1]).unwrap();
//! let fmt = ScaleFormat::F32;
//! let acts = array::prepare(&device, x.view(), topk_ids.view(), e, t, fmt)?;
//! let out = array::experts(&device, &acts, &weights, Numerics::VllmBf16)?;
//!
//! // The same on the reference, and the comparison the device's contract allows.
//! let reference = Device::open(DeviceKind::Cpu)?;
//! let expected = array::experts(&reference, &acts, &weights, Numerics::VllmBf16)?;
//! assert_eq!(out.dim(), (e, t, k));
//! match device.gemm_contract() {
//!     GemmContract::Exact => assert_eq!(out, expected),
//!     GemmContract::Bounded { .. } => assert!(moe_core::calc_diff_bf16(out.as_slice().unwrap(), expected.as_slice().unwrap()) < 1e-5),
//! }
//! assert_eq!(acts.counts, Array1::from(vec![2, 3]));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod array;
pub mod bench;
pub mod device;
pub mod error;
pub mod layer;
pub mod ops;
pub mod pipeline;
pub mod rng;
pub mod verify;
pub mod weights;

pub use device::{Device, DeviceKind, GemmContract};
pub use error::{EngineError, InputError};
pub use ops::{execute, read_inputs, run_op, Op, OpInputs, OpOptions};
pub use pipeline::{RunConfig, RunReport};
