//! The TMA + `wgmma` grouped GEMM (`gemm_wgmma.cu`, `CudaBackend::grouped_gemm_wgmma`), built
//! up in the order a failure is easiest to read:
//!
//! - `probe_a_*`: one TMA box with the 128-byte swizzle, byte for byte (tensor-map encoding,
//!   swizzle pattern, zero fill past the rows, no box crossing into the next expert).
//! - `probe_b_*`: one 64 x 128 tile of four chained `wgmma m64n128k32` E4M3 against exact
//!   dot products (shared-memory descriptor, accumulator fragment layout, scale-d = 0).
//! - `probe_c_*`: the 4-stage mbarrier ring moving more tiles than it has stages (parities,
//!   transaction counts).
//! - `probe_d_*`: how the FP8 tensor cores accumulate inside a partial (one large product and
//!   small ones at every distance below it, in its k32 or in later ones, and the adversarial
//!   case of the bound's derivation), which sets the kernel's own bound `C_WGMMA`.
//! - `gemm_*`: the whole kernel against the CPU reference within its bound (`C_WGMMA`, SPEC
//!   §5.3's form with a larger constant), against
//!   gemm.cu's `mma.sync` kernel (max difference reported), rows past the counts untouched,
//!   batch invariance, the packed-scale fallback and bad inputs.
//!
//! Each test skips visibly without a GPU (tests/common). Run with
//! `cargo test -p moe-cuda --features cuda --release --test wgmma -- --nocapture --test-threads 1`.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use moe_core::{bf16, Backend, GemmInputs, GroupedGemm, ScaleBuf, ScaleFormat, WeightsRef, E4M3_DECODE, GROUP};
use moe_cuda::C_WGMMA;
use moe_ref_cpu::{CpuBackend, NaiveCpu};

/// Where the TMA unit's 128-byte swizzle puts logical byte (r, k) of a box of 128-byte rows
/// (a 1024-byte-aligned destination): the 16-byte chunk index is XORed with r % 8.
fn sw128(r: usize, k: usize) -> usize {
    r * 128 + (((k >> 4) ^ (r & 7)) << 4) + (k & 15)
}

/// The logical 64 x 128 box of `src (E, rows, K)` at (k0, r0, e): rows past `rows` are 0.
fn logical_box(src: &[u8], (rows, k): (usize, usize), (k0, r0, e): (usize, usize, usize)) -> Vec<u8> {
    let mut out = vec![0u8; 64 * 128];
    for r in 0..64 {
        if r0 + r < rows {
            out[r * 128..][..128].copy_from_slice(&src[(e * rows + r0 + r) * k + k0..][..128]);
        }
    }
    out
}

fn swizzled(logical: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; logical.len()];
    for r in 0..64 {
        for k in 0..128 {
            out[sw128(r, k)] = logical[r * 128 + k];
        }
    }
    out
}

/// `(E, rows, K)` of a tensor, or `(K byte, row, expert)` of a box.
type Dims3 = (usize, usize, usize);

/// Loads one box through probe (a) and panics with a diagnosis unless it is byte-exact.
fn check_box(gpu: &moe_cuda::CudaBackend, src: &[u8], (e, rows, k): (usize, usize, usize), at: (usize, usize, usize)) {
    let got = gpu.wgmma_probe_tma(src, (e, rows, k), at).unwrap();
    let logical = logical_box(src, (rows, k), at);
    let want = swizzled(&logical);
    if got == want {
        return;
    }
    let diagnosis = if got == logical {
        "the bytes are in logical order: the tensor map's swizzle is off".to_string()
    } else if at.1 + 64 > rows && {
        // What a 2-D map over all E·T rows would load: the next expert's rows past T.
        let mut flat = vec![0u8; 64 * 128];
        for r in 0..64 {
            let g = at.2 * rows + at.1 + r;
            if g < e * rows {
                flat[r * 128..][..128].copy_from_slice(&src[g * k + at.0..][..128]);
            }
        }
        swizzled(&flat) == got
    } {
        "the rows past T hold the next expert's rows: the map is not 3-D (K, T, E)".to_string()
    } else {
        let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
        let n = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        format!(
            "{n} of 8192 bytes differ; first at smem offset {i} (row {}, chunk {}): got {:#04x}, want {:#04x}",
            i / 128,
            (i % 128) / 16,
            got[i],
            want[i]
        )
    };
    panic!("TMA box at (k0, row0, e) = {at:?} of ({e}, {rows}, {k}): {diagnosis}");
}

#[test]
fn probe_a_tma_box_lands_with_the_128b_swizzle_and_zero_fill() {
    let Some(gpu) = gpu("probe_a_tma") else { return };
    let mut rng = Rng::new(40);
    // (E, rows, K) and boxes (K byte, row, expert): aligned, an unaligned row start, a box past
    // the rows of expert 1 (rows 100..128 must be zeros, not expert 2's first rows), the last
    // expert; then experts of 5 rows (a box taller than the tensor: 59 zero rows).
    let cases: &[(Dims3, &[Dims3])] = &[
        ((3, 100, 384), &[(0, 0, 0), (128, 36, 0), (256, 64, 1), (128, 99, 2)]),
        ((2, 5, 256), &[(0, 0, 0), (128, 3, 1)]),
    ];
    let mut boxes = 0;
    for &((e, rows, k), ats) in cases {
        // Nonzero bytes everywhere, so a zero-filled row is told apart from data.
        let src: Vec<u8> = (0..e * rows * k).map(|_| (rng.u64() % 255) as u8 + 1).collect();
        for &at in ats {
            check_box(gpu, &src, (e, rows, k), at);
            boxes += 1;
        }
    }
    println!("PROBE a: {boxes} TMA boxes byte-exact (128B swizzle, zero fill past T, no crossing into the next expert)");
}

/// Exact `Σ_k a[r,k]·b[c,k]` and `Σ |a·b|` of a 64 x 128 by 128 x 128 tile (f64 is exact here).
fn exact_tile(a: &[u8], b: &[u8]) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut abs) = (vec![0f64; 64 * 128], vec![0f64; 64 * 128]);
    for r in 0..64 {
        for c in 0..128 {
            for k in 0..128 {
                let p = E4M3_DECODE[a[r * 128 + k] as usize] as f64 * E4M3_DECODE[b[c * 128 + k] as usize] as f64;
                s[r * 128 + c] += p;
                abs[r * 128 + c] += p.abs();
            }
        }
    }
    (s, abs)
}

#[test]
fn probe_b_one_wgmma_tile_matches_exact_dot_products() {
    let Some(gpu) = gpu("probe_b_wgmma") else { return };
    let mut rng = Rng::new(41);
    // One-hot first: a[r, k] = 1 iff k = r, b[c, k] = 1 iff k = c, so the partial is the identity
    // (64 x 128): a misplaced row, column, swizzle or descriptor field shows as a moved 1.
    let mut a1 = vec![0u8; 64 * 128];
    let mut b1 = vec![0u8; 128 * 128];
    (0..64).for_each(|r| a1[r * 128 + r] = 0x38);
    (0..128).for_each(|c| b1[c * 128 + c] = 0x38);
    let got = gpu.wgmma_probe_mma(&a1, &b1).unwrap();
    let ones: Vec<(usize, usize)> = (0..64 * 128).filter(|&i| got[i] != 0.0).map(|i| (i / 128, i % 128)).collect();
    let want: Vec<(usize, usize)> = (0..64).map(|r| (r, r)).collect();
    assert!(
        ones == want && (0..64).all(|r| got[r * 128 + r] == 1.0),
        "one-hot tile: nonzeros at {:?}... ({} of them; want the 64 diagonal ones, value 1); NaN present: {}",
        &ones[..ones.len().min(12)],
        ones.len(),
        got.iter().any(|v| v.is_nan())
    );
    let c = C_WGMMA;
    let mut worst = 0f64;
    for kind in ["full", "narrow", "cancel"] {
        for _ in 0..4 {
            let (a, b) = (
                tile_operands(&mut rng, kind, 64 * 128, false),
                tile_operands(&mut rng, kind, 128 * 128, true),
            );
            let got = gpu.wgmma_probe_mma(&a, &b).unwrap();
            let (s, abs) = exact_tile(&a, &b);
            for i in 0..64 * 128 {
                let err = (got[i] as f64 - s[i]).abs();
                let ratio = if abs[i] > 0.0 {
                    err / abs[i]
                } else if err == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                };
                assert!(
                    ratio <= c,
                    "[{kind}] partial at (row {}, col {}): gpu {} exact {} (|err| = {err:e} = {ratio:e} x Σ|a·b|, bound C_WGMMA)",
                    i / 128,
                    i % 128,
                    got[i],
                    s[i]
                );
                worst = worst.max(ratio);
            }
        }
    }
    println!(
        "PROBE b: wgmma m64n128k32 e4m3 x4 partials within C_WGMMA·Σ|a·b| on random operands; worst |p - S| / Σ|a·b| = {worst:e} = 2^{:.2}",
        worst.log2()
    );
}

/// E4M3 code of `±2^e` (`e` in -9..=8; subnormal below -6).
fn pow2_e4m3(e: i32, negative: bool) -> u8 {
    let code = if e >= -6 { ((e + 7) as u8) << 3 } else { 1u8 << (e + 9) };
    code | if negative { 0x80 } else { 0 }
}

#[test]
fn probe_d_fp8_partials_drop_every_bit_13_places_below_the_largest_addend() {
    let Some(gpu) = gpu("probe_d_wgmma_accumulation") else { return };
    // One large product 2^16 (a = b = 256 at k = 0) and m small products ±2^(16 - s) in row
    // m - 1 (m = 1..=32; rows 32..63 the same with negative small products), placed in the same
    // k32 as the large one (k = 1..=m, `same`) or spread over the later k32s (k = 32.. , `later`):
    // exact sum 2^16 ± m·2^(16 - s). Every column holds the same dot product.
    let mut worst = 0f64;
    let mut kept = Vec::new();
    for later in [false, true] {
        for s in 0..=30i32 {
            let (ea, eb) = (8 - (s + 1) / 2, 8 - s / 2);
            let mut a = vec![0u8; 64 * 128];
            let mut b = vec![0u8; 128 * 128];
            for c in 0..128 {
                b[c * 128] = pow2_e4m3(8, false);
                (1..128).for_each(|k| b[c * 128 + k] = pow2_e4m3(eb, false));
            }
            for r in 0..64 {
                let (m, neg) = (r % 32 + 1, r >= 32);
                a[r * 128] = pow2_e4m3(8, false);
                for j in 0..m {
                    let k = if later { 32 + j * 3 % 96 } else { 1 + j };
                    a[r * 128 + k] = pow2_e4m3(ea, neg);
                }
            }
            let got = gpu.wgmma_probe_mma(&a, &b).unwrap();
            let (exact, abs) = exact_tile(&a, &b);
            let mut row_kept = Vec::new();
            for r in [0usize, 15, 31, 32, 63] {
                let i = r * 128 + 7;
                let small = exact[i] - 65536.0;
                let lost = exact[i] - got[i] as f64;
                worst = worst.max(lost.abs() / abs[i]);
                row_kept.push(format!(
                    "m={}{}: {:.3}",
                    r % 32 + 1,
                    if r >= 32 { "-" } else { "+" },
                    1.0 - lost / small
                ));
            }
            kept.push(format!(
                "{} s={s:2}: kept fraction of the small terms {}",
                if later { "later" } else { "same " },
                row_kept.join(", ")
            ));
        }
    }
    println!("PROBE d: one product 2^16 with m products 2^(16-s)\n  {}", kept.join("\n  "));
    // The adversarial case of the bound's derivation: k32 #0 holds the product 2^16 alone, the
    // three later k32 hold 32 products of 7 = 1.75 · 4 each, just under the cut at 2^(16-13):
    // all 96 are dropped, 672 of 66208 (2^-6.62).
    let mut a = vec![0u8; 64 * 128];
    let mut b = vec![0u8; 128 * 128];
    for r in 0..64 {
        a[r * 128] = pow2_e4m3(8, false);
        (32..128).for_each(|k| a[r * 128 + k] = 0x3E);
    }
    for c in 0..128 {
        b[c * 128] = pow2_e4m3(8, false);
        (32..128).for_each(|k| b[c * 128 + k] = pow2_e4m3(2, false));
    }
    let got = gpu.wgmma_probe_mma(&a, &b).unwrap();
    let (exact, abs) = exact_tile(&a, &b);
    let adversarial = (0..64 * 128)
        .map(|i| (exact[i] - got[i] as f64).abs() / abs[i])
        .fold(0f64, f64::max);
    println!(
        "PROBE d: adversarial partial: gpu {} exact {} (|p - S| / Σ|a·b| = 2^{:.2})",
        got[0],
        exact[0],
        adversarial.log2()
    );
    worst = worst.max(adversarial);
    println!(
        "PROBE d: worst |p - S| / Σ|a·b| = {worst:e} = 2^{:.2} (bound C_WGMMA = 2^{:.0})",
        worst.log2(),
        C_WGMMA.log2()
    );
    assert!(
        worst <= C_WGMMA,
        "the partials lose more than the kernel's bound: {worst:e} > {C_WGMMA:e}"
    );
}

/// E4M3 operands (never NaN): "full" every code, "narrow" magnitudes in [1, 2) with random
/// signs, "cancel" pairs of K positions whose products cancel exactly except one pair in 16.
fn tile_operands(rng: &mut Rng, kind: &str, n: usize, is_b: bool) -> Vec<u8> {
    match kind {
        "full" => e4m3_bytes(rng, n),
        "narrow" => (0..n).map(|_| 0x38 | (rng.u64() as u8 & 0x87)).collect(),
        "cancel" => {
            let mut v = e4m3_bytes(rng, n);
            for j in (0..n - 1).step_by(2) {
                v[j + 1] = if is_b && (j / 2) % 16 != 5 { v[j] ^ 0x80 } else { v[j] };
            }
            v
        }
        _ => unreachable!(),
    }
}

#[test]
fn probe_c_the_4_stage_ring_moves_every_tile_in_order() {
    let Some(gpu) = gpu("probe_c_ring") else { return };
    let mut rng = Rng::new(42);
    let (e, rows, k): (usize, usize, usize) = (2, 130, 512);
    let (kb, mt) = (k / 128, rows.div_ceil(64));
    let src: Vec<u8> = (0..e * rows * k).map(|_| (rng.u64() % 255) as u8 + 1).collect();
    // 24 distinct tiles and 5 more (the ring wraps 7 times: both parities of every stage).
    let ntiles = e * kb * mt + 5;
    let got = gpu.wgmma_probe_ring(&src, (e, rows, k), ntiles).unwrap();
    let tile = |i: usize| logical_box(&src, (rows, k), ((i % kb) * 128, ((i / kb) % mt) * 64, (i / (kb * mt)) % e));
    for i in 0..ntiles {
        let g = &got[i * 8192..][..8192];
        if g == tile(i).as_slice() {
            continue;
        }
        let other = (0..ntiles).find(|&j| g == tile(j).as_slice());
        let diagnosis = match other {
            Some(j) => format!(
                "it holds tile {j} (stage {} / phase {}): a parity or stage error",
                j % 4,
                (j / 4) % 2
            ),
            None if g == swizzled(&tile(i)).as_slice() => "it is still swizzled (consumer un-swizzle)".into(),
            None if g.iter().all(|&b| b == 0) => "it is all zeros: the consumer read before the TMA completed".into(),
            None => format!("{} of 8192 bytes differ", g.iter().zip(tile(i)).filter(|(a, b)| **a != *b).count()),
        };
        panic!("ring tile {i} (stage {}, phase {}): {diagnosis}", i % 4, (i / 4) % 2);
    }
    println!("PROBE c: {ntiles} tiles through the 4-stage ring, in order and byte-exact");
}

// ---- the grouped GEMM ----------------------------------------------------------------------

struct Case {
    p: GroupedGemm,
    a: Vec<u8>,
    sa: ScaleBuf,
    b: Vec<u8>,
    sb: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, (e, t, n, k): (usize, usize, usize, usize), fmt: ScaleFormat, kind: &str) -> Case {
        let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
        let a = tile_operands(rng, kind, e * t * k, false);
        let b = tile_operands(rng, kind, e * n * k, true);
        let g = k / GROUP;
        let vals: Vec<f32> = (0..e * g * t)
            .map(|_| {
                let v = rng.value(-9, -5).abs() + 1e-6;
                if fmt.is_ceil() {
                    moe_core::ceil_pow2(v)
                } else {
                    v
                }
            })
            .collect();
        let sa = if fmt.is_packed() {
            let mut words = Vec::new();
            for ex in 0..e {
                words.extend(moe_core::scale::pack_ue8m0(&vals[ex * g * t..][..g * t], t, g, moe_core::ScaleLayout::MnMajor).unwrap());
            }
            ScaleBuf::Packed(words)
        } else {
            ScaleBuf::F32(vals)
        };
        let sb = (0..e * (n / GROUP) * g).map(|_| rng.value(-10, -6).abs() + 1e-7).collect();
        Case { p, a, sa, b, sb }
    }

    fn inputs<'a>(&'a self, counts: &'a [i32]) -> GemmInputs<'a> {
        GemmInputs {
            a: &self.a,
            sa: self.sa.view(),
            b: WeightsRef { q: &self.b, s: &self.sb },
            counts,
        }
    }

    fn dims(&self) -> (usize, usize, usize) {
        (self.p.experts(), self.p.capacity(), self.p.n())
    }
}

/// A signalling-NaN pattern no kernel writes.
const POISON: u16 = 0x7F81;

/// Asserts rows `t >= counts[e]` still hold the poison and rows below were written.
#[track_caller]
fn check_rows(what: &str, d: &[bf16], counts: &[i32], (e, t, n): (usize, usize, usize)) {
    for ex in 0..e {
        for row in 0..t {
            let r = &d[(ex * t + row) * n..][..n];
            let poisoned = r.iter().filter(|v| v.to_bits() == POISON).count();
            if row >= counts[ex] as usize {
                assert!(
                    poisoned == n,
                    "{what}: dead row {row} of expert {ex} (count {}) was written ({} of {n} values changed)",
                    counts[ex],
                    n - poisoned
                );
            } else {
                assert!(
                    poisoned == 0,
                    "{what}: live row {row} of expert {ex} (count {}) has {poisoned} of {n} values not written",
                    counts[ex]
                );
            }
        }
    }
}

/// Max |a - b| in units of ulp_bf16(b), and how many elements differ.
fn max_diff_ulps(a: &[bf16], b: &[bf16]) -> (f64, usize) {
    let mut worst = 0f64;
    let mut n = 0;
    for (x, y) in a.iter().zip(b) {
        if x.to_bits() != y.to_bits() {
            n += 1;
            worst = worst.max((x.to_f64() - y.to_f64()).abs() / ulp_bf16(*y));
        }
    }
    (worst, n)
}

/// Counts for `e` experts of capacity `t`: the issue's edge values (0, 1, 63, 64, 65, T)
/// clamped to T, cycled from `offset`.
fn edge_counts(e: usize, t: usize, offset: usize) -> Vec<i32> {
    let edges = [0usize, 1, 63, 64, 65, t, t.saturating_sub(1)];
    (0..e).map(|i| edges[(i + offset) % edges.len()].min(t) as i32).collect()
}

/// Runs one case and count set: wgmma vs CPU (its bound, c = C_WGMMA) and vs gemm.cu (reported).
/// Returns (worst c, worst |wgmma - mma.sync| in ulps, differing elements).
fn run_case(gpu: &moe_cuda::CudaBackend, what: &str, case: &Case, counts: &[i32]) -> (f64, f64, usize) {
    let (e, t, n) = case.dims();
    let mut d_ref = vec![bf16::from_bits(POISON); e * t * n];
    let mut bound = vec![0f64; e * t * n];
    CpuBackend::new()
        .grouped_gemm_with_bound(&case.p, case.inputs(counts), &mut d_ref, &mut bound)
        .unwrap();
    let mut d = vec![bf16::from_bits(POISON); e * t * n];
    gpu.grouped_gemm_wgmma(&case.p, case.inputs(counts), &mut d).unwrap();
    check_rows(what, &d, counts, (e, t, n));
    let worst = check_gemm_bound(what, &d, &d_ref, &bound, C_WGMMA);
    let mut d_mma = vec![bf16::from_bits(POISON); e * t * n];
    gpu.grouped_gemm(&case.p, case.inputs(counts), &mut d_mma).unwrap();
    let (ulps, ndiff) = max_diff_ulps(&d, &d_mma);
    (worst, ulps, ndiff)
}

#[test]
fn gemm_is_within_the_bound_and_close_to_mma_sync_on_the_issue_shapes() {
    let Some(gpu) = gpu("gemm_issue_shapes") else { return };
    let mut rng = Rng::new(43);
    // (E, T, N, K): K = 128 (one block) and 7168, N = 128 and 4096, T = 1, 63, 64, 65, 130, 300.
    let shapes: &[(usize, usize, usize, usize)] = if small() {
        &[(1, 65, 128, 128), (2, 130, 256, 256)]
    } else {
        &[
            (1, 1, 128, 128),
            (1, 63, 128, 7168),
            (1, 64, 4096, 128),
            (1, 65, 128, 128),
            (8, 130, 128, 7168),
            (8, 300, 4096, 128),
            (8, 65, 4096, 7168),
            (2, 300, 256, 1024),
        ]
    };
    let (mut cases, mut live) = (0usize, 0usize);
    let (mut worst_c, mut worst_ulps, mut ndiff_total) = (0f64, 0f64, 0usize);
    for (si, &shape) in shapes.iter().enumerate() {
        let (e, t, n, k) = shape;
        let big = e * n * k > 64 << 20;
        let kinds: &[&str] = if big { &["full"] } else { &["full", "narrow", "cancel"] };
        for (ki, kind) in kinds.iter().enumerate() {
            let fmt = [ScaleFormat::F32, ScaleFormat::F32CeilUe8m0][(si + ki) % 2];
            let case = Case::new(&mut rng, shape, fmt, kind);
            // E = 1: every edge count in turn (a few for the big shapes); E = 8: all at once.
            let sets: Vec<Vec<i32>> = if e == 1 {
                (0..if big { 2 } else { 7 }).map(|o| edge_counts(1, t, o)).collect()
            } else {
                vec![edge_counts(e, t, si)]
            };
            for counts in sets {
                let what = format!("wgmma gemm {kind} (E, T, N, K) = {shape:?} {fmt} counts {counts:?}");
                let (c, ulps, nd) = run_case(gpu, &what, &case, &counts);
                println!("  {what}: c = {c:e}, vs mma.sync: {nd} elements differ, max {ulps} ulp");
                worst_c = worst_c.max(c);
                worst_ulps = worst_ulps.max(ulps);
                ndiff_total += nd;
                cases += 1;
                live += counts.iter().map(|&x| x as usize * n).sum::<usize>();
            }
        }
    }
    println!(
        "GEMM wgmma: {cases} cases ({live} live elements) within the bound; worst c = {worst_c:e} = 2^{:.2}; vs mma.sync: {ndiff_total} elements differ, max {worst_ulps} ulp",
        worst_c.log2()
    );
}

#[test]
fn gemm_rows_are_batch_invariant() {
    let Some(gpu) = gpu("gemm_batch_invariance") else { return };
    let mut rng = Rng::new(44);
    let (e, t, n, k) = if small() { (2, 130, 128, 256) } else { (3, 300, 256, 1024) };
    let case = Case::new(&mut rng, (e, t, n, k), ScaleFormat::F32, "full");
    let sets: Vec<Vec<i32>> = vec![
        vec![t as i32; e],
        vec![1, 65, 300.min(t) as i32],
        vec![64, 0, 130],
        vec![299.min(t) as i32, 63, 1],
    ]
    .into_iter()
    .map(|mut v| {
        v.resize(e, 7);
        v
    })
    .collect();
    let runs: Vec<Vec<bf16>> = sets
        .iter()
        .map(|c| {
            let mut d = vec![bf16::from_bits(POISON); e * t * n];
            gpu.grouped_gemm_wgmma(&case.p, case.inputs(c), &mut d).unwrap();
            check_rows("batch invariance", &d, c, (e, t, n));
            d
        })
        .collect();
    let mut rows = 0;
    for (i, ci) in sets.iter().enumerate() {
        for ex in 0..e {
            for row in 0..ci[ex] as usize {
                let r = &runs[i][(ex * t + row) * n..][..n];
                let full = &runs[0][(ex * t + row) * n..][..n];
                assert!(
                    bits_u16(r) == bits_u16(full),
                    "row {row} of expert {ex} differs between counts {ci:?} and {:?}",
                    sets[0]
                );
                rows += 1;
            }
        }
    }
    println!(
        "GEMM wgmma batch invariance: {rows} rows bit-identical across {} count sets",
        sets.len()
    );
}

#[test]
fn gemm_packed_scales_fall_back_to_mma_sync_bit_for_bit() {
    let Some(gpu) = gpu("gemm_packed_fallback") else { return };
    let mut rng = Rng::new(45);
    let case = Case::new(&mut rng, (2, 70, 256, 512), ScaleFormat::Ue8m0Packed, "full");
    let counts = [70, 33];
    let mut d = vec![bf16::from_bits(POISON); 2 * 70 * 256];
    let mut d_mma = d.clone();
    gpu.grouped_gemm_wgmma(&case.p, case.inputs(&counts), &mut d).unwrap();
    gpu.grouped_gemm(&case.p, case.inputs(&counts), &mut d_mma).unwrap();
    assert_same("packed-scale fallback", &bits_u16(&d), &bits_u16(&d_mma));
    println!("GEMM wgmma with packed UE8M0 scales: equal to gemm.cu bit for bit (fallback)");
}

#[test]
fn gemm_bad_inputs_are_rejected_with_the_cpu_error_and_nothing_written() {
    let Some(gpu) = gpu("gemm_bad_inputs") else { return };
    let p = GroupedGemm::new(2, 4, 128, 256, ScaleFormat::F32).unwrap();
    let a = vec![0x38u8; 2 * 4 * 256];
    let sa = vec![1f32; 2 * 2 * 4];
    let b = vec![0x38u8; 2 * 128 * 256];
    let sb = vec![1f32; 2 * 2];
    let mut d = vec![bf16::from_bits(3); 2 * 4 * 128];
    for (cnt, short_b) in [(vec![5, 0], 0), (vec![0, -2], 0), (vec![1], 0), (vec![1, 1], 1)] {
        let inputs = GemmInputs {
            a: &a,
            sa: moe_core::Scales::F32(&sa),
            b: WeightsRef {
                q: &b[..b.len() - short_b],
                s: &sb,
            },
            counts: &cnt,
        };
        let eg = gpu.grouped_gemm_wgmma(&p, inputs, &mut d).unwrap_err();
        let ec = NaiveCpu.grouped_gemm(&p, inputs, &mut d.clone()).unwrap_err();
        assert_eq!(eg, ec, "counts {cnt:?}, b short by {short_b}");
        assert!(d.iter().all(|v| v.to_bits() == 3), "a rejected call wrote d");
    }
    println!("GEMM wgmma bad-input rejections equal to the CPU's: 4");
}
