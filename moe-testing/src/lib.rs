//! # moe-testing
//!
//! The differential harness of moe-fp8: every backend is checked against the naive CPU reference
//! (`moe_ref_cpu::NaiveCpu`, which defines the results) with the exactness or bound of SPEC §5.
//!
//! - [`check`]: one case of one operation, compared bit for bit (or, for the GEMM, with the
//!   SPEC §5.3 bound), with poisoned outputs, dead rows checked untouched, and bad input checked
//!   to be rejected with the reference's error and nothing written.
//! - [`cases`] and [`rng`]: owned case inputs and seeded random builders (used by `moe diff`).
//! - [`strategies`]: proptest strategies that aim at the hard cases on purpose (E4M3 midpoints,
//!   the 448/464 boundary, the epsilon path, scales just above a power of two, ...).
//! - [`diff`]: the engine of `moe diff`: all operations over N seeded random cases.
//! - [`compare`]: poison patterns, `ulp_bf16`, `calc_diff`.
//!
//! The test suites (`tests/suites/*.rs`) are plain test functions over a backend type `Dut`,
//! mounted per backend by `tests/cpu.rs` and `tests/cuda.rs` with `#[path]` modules.
//!
//! What it trusts: `NaiveCpu`. What it promises: a failing check names the tensor, the element
//! and both bit patterns.
#![forbid(unsafe_code)]

pub mod cases;
pub mod check;
pub mod compare;
pub mod diff;
pub mod oracle;
pub mod rng;
pub mod strategies;

pub use check::{GemmTol, Outcome};
