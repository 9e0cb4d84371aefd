//! Arbitrary bytes as the input file of `moe op`, through moe-cli's own reader
//! (`moe_engine::read_inputs`: safetensors parsing, tensor lookup, dtype and shape checks, problem
//! validation) and, when it accepts them, the execution on the naive reference. The first bytes
//! pick the operation and the options; neither step may panic or abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_core::{Numerics, ScaleFormat, Scoring};
use moe_engine::{Op, OpOptions};

fuzz_target!(|data: &[u8]| {
    let [op, fmt, flags, e, t, route, rest @ ..] = data else { return };
    let opts = OpOptions {
        scale_fmt: ScaleFormat::ALL[*fmt as usize % 3],
        numerics: Numerics::ALL[(*flags & 1) as usize],
        pow2: flags & 2 != 0,
        // Small, so that a valid prepare's outputs stay small; zero and absent are covered.
        experts: (flags & 4 != 0).then_some(*e as usize % 64),
        capacity: (flags & 8 != 0).then_some(*t as usize % 64),
        // The router's flags, small and sometimes absent or out of range (k, G and TG of 0).
        topk: (flags & 16 != 0).then_some(*route as usize % 16),
        scoring: (flags & 32 != 0).then_some(Scoring::ALL[(*route >> 4) as usize & 1]),
        groups: (flags & 64 != 0).then_some((*e as usize >> 6) % 9),
        topk_groups: (flags & 64 != 0).then_some((*t as usize >> 6) % 9),
        renormalize: route & 0x20 != 0,
        routed_scaling: (flags & 128 != 0).then_some([1.0, 2.5, 0.0, -1.0, f32::NAN][((*route >> 6) as usize + (*fmt as usize >> 4)) % 5]),
    };
    let op = Op::FILE_OPS[*op as usize % Op::FILE_OPS.len()];
    if let Ok(inputs) = moe_engine::read_inputs(op, &opts, rest) {
        if rest.len() <= 1 << 16 {
            let _ = moe_engine::execute(&inputs, &moe_ref_cpu::NaiveCpu);
        }
    }
});
