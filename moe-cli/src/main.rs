//! `moe`: the command line of moe-fp8.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod diff;

#[derive(Parser, Debug)]
#[command(
    name = "moe",
    about = "FP8 block-quantized MoE expert stage: reference, CUDA backend, differential testing"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Compare a backend with the naive CPU reference on random cases of every operation.
    Diff(diff::DiffArgs),
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Diff(a) => diff::run(a),
    }
}
