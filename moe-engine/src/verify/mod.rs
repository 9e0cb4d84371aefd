//! The differential harness, without proptest: every backend is checked against the naive CPU
//! reference (`moe_ref_cpu::NaiveCpu`, which defines the results; the bit-identical fast path
//! stands in for it on shapes too big for it, see [`check::Reference`]) with the exactness or
//! bound of SPEC §5.
//!
//! - [`check`]: one case of one operation, compared bit for bit (or, for the GEMM, with the
//!   SPEC §5.3 bound), with poisoned outputs, dead rows checked untouched, and bad input checked
//!   to be rejected with the reference's error and nothing written; and, in aggregate, the
//!   rounding of the GEMM's epilogue (`check_gemm_rounding_bias`), which the per-element bound
//!   cannot see.
//! - [`cases`]: owned case inputs and seeded random builders (on [`crate::rng::Rng`]).
//! - [`tiles`]: seeded builders of shapes at the tile edges of the GEMM kernels (T up to 300,
//!   N and K past 1024, counts at every row-tile edge ±1).
//! - [`diff`]: the engine of `moe diff`: all operations over N seeded random cases.
//! - [`compare`]: poison patterns and bit comparisons.
//! - [`tamper`]: a backend with a planted GEMM bug, to prove a check can fail.
//!
//! moe-testing builds its proptest strategies and suites on these types; the checks return
//! `Err(message)` instead of panicking, so that `moe diff` can count failures.

pub mod cases;
pub mod check;
pub mod compare;
pub mod diff;
pub mod tiles;

pub use check::{Checked, Outcome};
pub mod tamper;
