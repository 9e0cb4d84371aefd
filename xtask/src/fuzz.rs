//! `cargo xtask fuzz` (in progress).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("`fuzz` is not implemented yet".into())
}
