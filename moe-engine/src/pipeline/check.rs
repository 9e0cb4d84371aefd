//! The check of the pipeline (`moe run`): each stage recomputed by the naive reference from the
//! backend's own input to that stage, in full where it is cheap (prepare, SiLU-mul-quant,
//! finalize) and on sampled rows and blocks where it is not (the GEMMs, weight quantization).

use half::bf16;
use moe_core::{Activation, Backend, BlockQuant, GemmInputs, GroupedGemm, ScaleBuf, Scales, WeightsRef, GROUP};
use moe_ref_cpu::NaiveCpu;
use rayon::prelude::*;

use super::config::RunConfig;
use crate::device::GemmContract;
use crate::error::EngineError;
use crate::rng::Rng;
use crate::weights::synth;

/// One verdict of the check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// The name shown in the report.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

pub(crate) fn bits16(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub(crate) fn bits_check(name: &str, equal: &[bool], elements: usize) -> Check {
    let ok = equal.iter().all(|&b| b);
    Check {
        name: name.into(),
        ok,
        detail: if ok {
            format!("bit-identical to NaiveCpu ({elements} elements)")
        } else {
            "differs from NaiveCpu".into()
        },
    }
}

/// The rows of every expert whose GEMM outputs are recomputed, ascending: always the first and
/// the last live row (where tile and count edges fall), plus up to `n` distinct random ones.
pub(crate) fn sample_rows(rng: &mut Rng, counts: &[i32], n: usize) -> Vec<(usize, Vec<usize>)> {
    let mut out = Vec::new();
    for (e, &c) in counts.iter().enumerate() {
        let live = c.max(0) as usize;
        let mut rows: Vec<usize> = (0..live).collect();
        rng.shuffle(&mut rows);
        rows.truncate(n);
        if live > 0 {
            rows.extend([0, live - 1]);
        }
        rows.sort_unstable();
        rows.dedup();
        if !rows.is_empty() {
            out.push((e, rows));
        }
    }
    out
}

/// Recomputes the GEMM rows `samples` with `NaiveCpu` (each expert's rows as a one-expert
/// problem) and compares them with the backend's `d`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_gemm(
    name: &str,
    g: &GroupedGemm,
    a: &[u8],
    sa: Scales<'_>,
    b: &[u8],
    sb: &[f32],
    samples: &[(usize, Vec<usize>)],
    d: &[bf16],
    contract: GemmContract,
) -> Result<Check, EngineError> {
    let exact = contract == GemmContract::Exact;
    let (t_cap, n, kd, fmt) = (g.capacity(), g.n(), g.k(), g.scale_format());
    let cols = fmt.columns(g.k_blocks());
    let sb_per = (n / GROUP) * (kd / GROUP);
    // Per expert: (elements checked, elements outside, worst |diff| / allowed).
    let per: Vec<Result<(usize, usize, f64), EngineError>> = samples
        .par_iter()
        .map(|(e, rows)| {
            let (e, r) = (*e, rows.len());
            let sub = GroupedGemm::new(1, r, n, kd, fmt)?;
            let a_sub: Vec<u8> = rows.iter().flat_map(|&t| a[(e * t_cap + t) * kd..][..kd].iter().copied()).collect();
            // The sampled rows' scale columns, MN-major `(1, cols, r)`, in the same storage.
            let gather = |src: &[u32]| -> Vec<u32> {
                (0..cols)
                    .flat_map(|c| rows.iter().map(move |&t| src[(e * cols + c) * t_cap + t]))
                    .collect()
            };
            let sub_s = match sa {
                Scales::F32(s) => ScaleBuf::F32(
                    gather(&s.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                        .into_iter()
                        .map(f32::from_bits)
                        .collect(),
                ),
                Scales::Packed(s) => ScaleBuf::Packed(
                    gather(&s.iter().map(|&v| v as u32).collect::<Vec<_>>())
                        .into_iter()
                        .map(|v| v as i32)
                        .collect(),
                ),
            };
            let (mut d_ref, mut bound) = (vec![bf16::ZERO; r * n], vec![0f64; r * n]);
            let sub_inputs = GemmInputs {
                a: &a_sub,
                sa: sub_s.view(),
                b: WeightsRef {
                    q: &b[e * n * kd..][..n * kd],
                    s: &sb[e * sb_per..][..sb_per],
                },
                counts: &[r as i32],
            };
            NaiveCpu.grouped_gemm_with_bound(&sub, sub_inputs, &mut d_ref, &mut bound)?;
            let (mut bad, mut worst) = (0usize, 0f64);
            for (j, &t) in rows.iter().enumerate() {
                for col in 0..n {
                    let (rf, dut) = (d_ref[j * n + col], d[(e * t_cap + t) * n + col]);
                    let ok = if exact {
                        rf.to_bits() == dut.to_bits()
                    } else if rf.is_nan() || dut.is_nan() {
                        rf.is_nan() && dut.is_nan()
                    } else {
                        let diff = (dut.to_f64() - rf.to_f64()).abs();
                        let allowed = moe_core::ulp_bf16(rf) + contract.c() * bound[j * n + col];
                        worst = worst.max(diff / allowed);
                        diff <= allowed
                    };
                    bad += usize::from(!ok);
                }
            }
            Ok((r * n, bad, worst))
        })
        .collect();
    let (mut total, mut bad, mut worst) = (0, 0, 0f64);
    for p in per {
        let (c, b, w) = p?;
        total += c;
        bad += b;
        worst = worst.max(w);
    }
    let detail = match (exact, bad) {
        (true, 0) => format!("bit-identical to NaiveCpu ({total} elements)"),
        (true, _) => format!("{bad} of {total} elements differ from NaiveCpu"),
        (false, 0) => format!(
            "within the §5.3 bound, {} ({total} elements, worst {worst:.3} of allowed)",
            contract.describe()
        ),
        (false, _) => format!("{bad} of {total} elements outside the §5.3 bound (worst {worst:.3} of allowed)"),
    };
    Ok(Check {
        name: name.into(),
        ok: bad == 0,
        detail,
    })
}

/// Recomputes `check_blocks` random 128×128 blocks per expert of a quantized weight from the
/// regenerated full-precision values and compares them bit for bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_block_quant(
    cfg: &RunConfig,
    rng: &mut Rng,
    stream: u64,
    r: usize,
    c: usize,
    label: &str,
    q: &[u8],
    s: &[f32],
) -> Result<Check, EngineError> {
    let pow2 = cfg.scale_fmt.is_ceil();
    let (rbs, cbs) = (r.div_ceil(GROUP), c.div_ceil(GROUP));
    let key = synth::key(cfg.seed, stream);
    let (mut bad, mut blocks) = (0usize, 0usize);
    for ex in 0..cfg.experts {
        for _ in 0..cfg.check_blocks {
            let (rb, cb) = (rng.up_to(rbs - 1), rng.up_to(cbs - 1));
            let (rows, cols) = ((r - rb * GROUP).min(GROUP), (c - cb * GROUP).min(GROUP));
            let idx = |rr: usize, cc: usize| ex * r * c + (rb * GROUP + rr) * c + cb * GROUP + cc;
            let w: Vec<bf16> = (0..rows)
                .flat_map(|rr| {
                    (0..cols).map(move |cc| bf16::from_f32(synth::value(key, idx(rr, cc) as u64).to_f32() * synth::WEIGHT_SCALE))
                })
                .collect();
            let p = BlockQuant::new(1, rows, cols, pow2)?;
            let (mut qr, mut sr) = (vec![0u8; rows * cols], [0f32]);
            NaiveCpu.block_quant(&p, Activation::Bf16(&w), &mut qr, &mut sr)?;
            let same_q = (0..rows).all(|rr| (0..cols).all(|cc| qr[rr * cols + cc] == q[idx(rr, cc)]));
            let same_s = sr[0].to_bits() == s[ex * rbs * cbs + rb * cbs + cb].to_bits();
            bad += usize::from(!(same_q && same_s));
            blocks += 1;
        }
    }
    Ok(Check {
        name: format!("block-quant {label} ({blocks} sampled blocks)"),
        ok: bad == 0,
        detail: if bad == 0 {
            "bit-identical to NaiveCpu".into()
        } else {
            format!("{bad} blocks differ from NaiveCpu")
        },
    })
}

/// Checks that rows `t >= counts[e]` of every per-expert output (zero-initialized by the
/// pipeline) are still zero: byte tensors `(name, data, width)` and bf16 tensors likewise.
pub(crate) fn dead_rows_zero(counts: &[i32], t_cap: usize, bytes: &[(&str, &[u8], usize)], halves: &[(&str, &[bf16], usize)]) -> Check {
    let mut bad = Vec::new();
    let mut dead = 0usize;
    for (e, &c) in counts.iter().enumerate() {
        for t in (c.max(0) as usize).min(t_cap)..t_cap {
            dead += 1;
            for &(name, data, w) in bytes {
                if data[(e * t_cap + t) * w..][..w].iter().any(|&b| b != 0) {
                    bad.push(format!("{name}[{e}, {t}]"));
                }
            }
            for &(name, data, w) in halves {
                if data[(e * t_cap + t) * w..][..w].iter().any(|v| v.to_bits() != 0) {
                    bad.push(format!("{name}[{e}, {t}]"));
                }
            }
        }
    }
    let names: Vec<&str> = bytes.iter().map(|b| b.0).chain(halves.iter().map(|h| h.0)).collect();
    Check {
        name: format!("rows past the counts ({})", names.join(", ")),
        ok: bad.is_empty(),
        detail: if bad.is_empty() {
            format!("untouched: all zero ({dead} dead rows)")
        } else {
            format!("{} dead rows written, first {}", bad.len(), bad[0])
        },
    }
}
