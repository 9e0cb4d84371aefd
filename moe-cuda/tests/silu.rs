//! SiLU-mul-quant (SPEC §5.2) on shapes chosen for the kernel's work split: one group per row
//! (H = 128), an even and an odd number of groups (256, 384), packed scales whose last word is
//! partly past G (H = 640, G = 5), 56 groups (H = 7168); counts 0, 1, T and random, T not a
//! multiple of 4, E = 1 and E = 256 with tiny T, and enough live rows for every unit size the
//! kernel picks on the device (2, 4 or 8 groups per warp). Every format and both numerics,
//! against `CpuBackend` bit for bit, with the outputs poisoned before the call and checked
//! untouched past the counts.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use moe_core::{Backend, Numerics, ScaleBuf, ScaleFormat, SiluMulQuant, GROUP};
use moe_ref_cpu::CpuBackend;

/// How a case draws its counts.
#[derive(Debug, Clone, Copy)]
enum Counts {
    /// Exactly these (one per expert).
    Fixed(&'static [i32]),
    /// `common::counts`: random in [0, T], with one 0 and one T when E >= 2.
    Random,
    /// Every row live.
    Full,
}

const Q_POISON: u8 = 0x5A;
const S_POISON: u32 = 0x7F81_2345; // a NaN pattern no kernel produces

fn poison(fmt: ScaleFormat, n: usize) -> ScaleBuf {
    if fmt.is_packed() {
        ScaleBuf::Packed(vec![S_POISON as i32; n])
    } else {
        ScaleBuf::F32(vec![f32::from_bits(S_POISON); n])
    }
}

fn run_case(rng: &mut Rng, e: usize, t: usize, h: usize, kind: Counts) -> usize {
    let gpu = gpu("silu_work_split").expect("checked by the caller");
    let cnt: Vec<i32> = match kind {
        Counts::Fixed(c) => {
            assert_eq!(c.len(), e);
            c.to_vec()
        }
        Counts::Random => counts(rng, e, t),
        Counts::Full => vec![t as i32; e],
    };
    let groups = h / GROUP;
    let y = to_bf16(&values_with_specials(rng, e * t * 2 * h, true));
    let mut cases = 0;
    for fmt in ScaleFormat::ALL {
        let cols = fmt.columns(groups);
        let sn = e * cols * t;
        for numerics in Numerics::ALL {
            let what = format!("silu E={e} T={t} H={h} counts={kind:?} {fmt} {numerics}");
            let p = SiluMulQuant::new(e, t, h, fmt, numerics).unwrap();
            let (mut qg, mut qc) = (vec![Q_POISON; e * t * h], vec![Q_POISON; e * t * h]);
            let (mut sg, mut sc) = (poison(fmt, sn), poison(fmt, sn));
            gpu.silu_mul_quant(&p, &y, &cnt, &mut qg, sg.view_mut()).unwrap();
            CpuBackend::new().silu_mul_quant(&p, &y, &cnt, &mut qc, sc.view_mut()).unwrap();
            assert_same(&format!("{what}: q"), &qg, &qc);
            let (sgb, scb) = (sg.to_bits(), sc.to_bits());
            assert_same(&format!("{what}: s"), &sgb, &scb);
            // Dead rows untouched on the GPU (the CPU's are checked by its own suites, and the
            // comparison above makes the two agree).
            for (ex, &c) in cnt.iter().enumerate() {
                let live = c.clamp(0, t as i32) as usize;
                for row in live..t {
                    let off = (ex * t + row) * h;
                    assert!(
                        qg[off..off + h].iter().all(|&b| b == Q_POISON),
                        "{what}: q of dead row (e {ex}, t {row}) written"
                    );
                    for col in 0..cols {
                        assert_eq!(
                            sgb[(ex * cols + col) * t + row],
                            S_POISON,
                            "{what}: scale of dead row (e {ex}, t {row}) column {col} written"
                        );
                    }
                }
                // Live rows written: no scale word can equal the poison (an f32 scale is never
                // NaN; a packed byte is at least 0x55, the exponent of 1e-10/448, or 0).
                for row in 0..live {
                    for col in 0..cols {
                        assert_ne!(
                            sgb[(ex * cols + col) * t + row],
                            S_POISON,
                            "{what}: scale of live row (e {ex}, t {row}) column {col} not written"
                        );
                    }
                }
            }
            cases += 1;
        }
    }
    cases
}

#[test]
fn silu_mul_quant_is_bit_exact_on_every_work_split() {
    if gpu("silu_work_split").is_none() {
        return;
    }
    let mut rng = Rng::new(0x5111);
    let mut list: Vec<(usize, usize, usize, Counts)> = vec![
        (1, 1, 128, Counts::Fixed(&[1])),
        (1, 5, 128, Counts::Fixed(&[5])),
        (1, 5, 128, Counts::Fixed(&[0])),
        (1, 7, 256, Counts::Fixed(&[3])),
        (3, 7, 256, Counts::Fixed(&[0, 1, 7])),
        (2, 6, 384, Counts::Random),
        (3, 3, 384, Counts::Fixed(&[3, 2, 0])),
        (4, 9, 640, Counts::Fixed(&[9, 0, 3, 1])),
        (5, 3, 512, Counts::Full),
        (256, 2, 128, Counts::Random),
        (256, 3, 384, Counts::Random),
        (256, 1, 640, Counts::Random),
        (4, 6, 7168, Counts::Fixed(&[6, 0, 1, 5])),
        (8, 64, 2048, Counts::Random),
    ];
    if !small() {
        // Enough live rows that the kernel takes 8 groups per warp (4 per half-warp) on a
        // full-size GPU, and 4 on the way there.
        list.extend([
            (16, 64, 7168, Counts::Random),
            (8, 512, 640, Counts::Full),
            (8, 512, 640, Counts::Random),
            (32, 96, 1152, Counts::Random),
            (64, 130, 2048, Counts::Random),
        ]);
    }
    let mut cases = 0;
    for &(e, t, h, kind) in &list {
        cases += run_case(&mut rng, e, t, h, kind);
    }
    println!("CASES silu-mul-quant work split bit-exact against CpuBackend: {cases}");
}
