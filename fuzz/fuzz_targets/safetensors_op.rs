//! Arbitrary bytes as the safetensors input of `moe op`: parsing, lookup, validation and (when
//! small) the reference run must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&op, rest)) = data.split_first() {
        let _ = moe_fuzz::parse_op_inputs(op, rest);
    }
});
