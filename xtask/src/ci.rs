//! `cargo xtask ci`: what CI runs, cheapest first.

use crate::util::{cargo, run as sh};

pub fn run_ci() -> Result<(), String> {
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    sh(cargo().args(["test", "--workspace"]))?;
    crate::exp::run(&[])?;
    // About 10 minutes on two cores (install cargo-fuzz, build the fuzz workspace, 3 x 20 s).
    crate::fuzz::run(&["--smoke".to_string()])?;
    sh(cargo().args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    Ok(())
}

pub fn run(_args: &[String]) -> Result<(), String> {
    run_ci()
}
