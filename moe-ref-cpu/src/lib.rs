//! moe-ref-cpu (in progress)
