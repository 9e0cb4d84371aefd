//! moe-cuda (in progress)
