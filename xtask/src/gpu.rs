//! `cargo xtask nvrtc-check` and `cargo xtask gpu-bundle` (in progress).

pub fn nvrtc_check(_args: &[String]) -> Result<(), String> {
    Err("`nvrtc-check` is not implemented yet".into())
}

pub fn bundle(_args: &[String]) -> Result<(), String> {
    Err("`gpu-bundle` is not implemented yet".into())
}
