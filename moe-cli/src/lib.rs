//! # moe-cli
//!
//! The library behind the `moe` command (the binary is a thin clap front end over it), exposed
//! so that tests and the fuzz target can drive it without a process.
//!
//! What it promises:
//! - [`ops::read_inputs`] accepts **any** bytes and returns either the validated inputs of a
//!   `moe op` operation or an [`InputError`] naming the tensor at fault (missing, wrong dtype,
//!   wrong rank or shape, malformed or truncated file, `counts` or `topk_ids` out of range, a
//!   dimension that is not a multiple of 128); it never panics.
//! - [`ops::execute`] runs validated inputs on any backend and returns the outputs of SPEC §8
//!   (names, safetensors dtypes, physical shapes), zero-initialized where the operation does not
//!   write, so rows `t >= counts[e]` read back as zero.
//! - [`tensors::write_atomic`] writes through a temporary file and a rename, so the output path
//!   is either untouched or complete.
//! - [`run::run`] is `moe run`: a seeded synthetic expert layer through prepare → experts →
//!   finalize, timed, and checked against the naive reference (bit for bit on the CPU, within the
//!   SPEC §5.3 bound for the GEMMs of another backend).
//!
//! What it trusts: moe-core's validated problem types and the backends' contracts.
#![forbid(unsafe_code)]

pub mod engine;
pub mod error;
pub mod ops;
pub mod run;
pub mod synth;
pub mod tensors;

pub use engine::BackendKind;
pub use error::{CliError, InputError, EXIT_FAILURE, EXIT_INPUT};
pub use ops::{execute, read_inputs, run_op, Op, OpInputs, OpOptions};
pub use run::{RunConfig, RunReport};
