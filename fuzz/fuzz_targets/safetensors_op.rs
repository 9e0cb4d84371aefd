//! Arbitrary bytes as the input file of `moe op`, through moe-cli's own reader
//! (`moe_engine::read_inputs`: safetensors parsing, tensor lookup, dtype and shape checks, problem
//! validation) and, when it accepts them, the execution on the naive reference. The first bytes
//! pick the operation and the options; neither step may panic or abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_core::{Numerics, ScaleFormat};
use moe_engine::{Op, OpOptions};

fuzz_target!(|data: &[u8]| {
    let [op, fmt, flags, e, t, rest @ ..] = data else { return };
    let opts = OpOptions {
        scale_fmt: ScaleFormat::ALL[*fmt as usize % 3],
        numerics: Numerics::ALL[(*flags & 1) as usize],
        pow2: flags & 2 != 0,
        // Small, so that a valid prepare's outputs stay small; zero and absent are covered.
        experts: (flags & 4 != 0).then_some(*e as usize % 64),
        capacity: (flags & 8 != 0).then_some(*t as usize % 64),
    };
    let op = Op::FILE_OPS[*op as usize % Op::FILE_OPS.len()];
    if let Ok(inputs) = moe_engine::read_inputs(op, &opts, rest) {
        if rest.len() <= 1 << 16 {
            let _ = moe_engine::execute(&inputs, &moe_ref_cpu::NaiveCpu);
        }
    }
});
