//! `cargo xtask golden` (in progress).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("`golden` is not implemented yet".into())
}
