//! moe-testing (in progress)
