//! # moe-ref-cpu
//!
//! The exact CPU reference of moe-fp8: every operation of SPEC §5, implemented twice.
//!
//! - [`NaiveCpu`]: the plain loop nests of the spec, one element at a time. It defines the result.
//! - [`CpuBackend`]: the same arithmetic, parallel with rayon and organised for speed (the GEMM's
//!   block partials come from a float64 matrix product, which is exact for E4M3 inputs; see
//!   the module `gemm` in the source). Its results are bit-identical to [`NaiveCpu`]'s for
//!   any thread count; the test suites in `moe-testing` check this.
//!
//! What it promises: bit-exact results for every operation, including the GEMM (whose GPU
//! implementations are only bounded), rows past `counts` untouched, and every invalid input
//! rejected (through `moe-core`'s `check*` methods) before any output is written.
//! What it trusts: `moe-core`'s validated problem types.
//!
//! ```
//! use moe_core::{Backend, Activation, TokenGroupQuant, ScaleFormat, ScaleLayout, ScalesMut, bf16};
//! use moe_ref_cpu::{CpuBackend, NaiveCpu};
//!
//! let p = TokenGroupQuant::new(2, 256, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap();
//! let x: Vec<bf16> = (0..512).map(|i| bf16::from_f32(i as f32 - 200.0)).collect();
//! let (mut q1, mut s1) = (vec![0u8; 512], vec![0f32; 4]);
//! let (mut q2, mut s2) = (vec![0u8; 512], vec![0f32; 4]);
//! NaiveCpu.token_group_quant(&p, Activation::Bf16(&x), &mut q1, ScalesMut::F32(&mut s1)).unwrap();
//! CpuBackend::new().token_group_quant(&p, Activation::Bf16(&x), &mut q2, ScalesMut::F32(&mut s2)).unwrap();
//! assert_eq!((q1, s1), (q2, s2));
//! ```
#![forbid(unsafe_code)]

mod common;
mod fast;
mod gate;
mod gemm;
mod naive;
mod route;

pub use fast::CpuBackend;
pub use naive::NaiveCpu;
