//! # moe-testing
//!
//! The property-based side of moe-fp8's differential testing, a crate that only tests depend on
//! (no product crate links it, so proptest stays out of the `moe` binary):
//!
//! - [`strategies`]: proptest strategies that aim at the hard cases on purpose (E4M3 midpoints,
//!   the 448/464 boundary, the epsilon path, scales just above a power of two, ...), building the
//!   engine's owned case types (`moe_engine::ops::*Case`).
//! - [`property`]: the runner of the suites' properties (cases, persistence, every backend).
//! - [`oracle`]: independent re-statements of the encoders used to check moe-core's.
//!
//! The checks themselves (poisoned outputs, dead rows, the SPEC §5.3 bound, bad input rejected
//! with nothing written) live in `moe_engine::verify`, shared with `moe diff`. The test suites
//! (`tests/suites/*.rs`) are plain test functions over a backend type `Dut`, mounted per backend
//! by `tests/cpu.rs` and `tests/cuda.rs` with `#[path]` modules; golden vectors from an
//! independent numpy/ml_dtypes oracle are in `golden/`.
//!
//! What it trusts: `NaiveCpu`. What it promises: a failing check names the tensor, the element
//! and both bit patterns.
#![forbid(unsafe_code)]

pub mod oracle;
pub mod property;
pub mod strategies;
