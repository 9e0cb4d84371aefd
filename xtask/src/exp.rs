//! `cargo xtask exp-check`: `exp_f32` against float64 `exp` over all 2^32 f32 inputs, and the
//! branch-free E4M3 encoder against its reference definition and the branch-free `round_bf16`
//! against `half::bf16::from_f32` over the same inputs; then, in a second pass, moe-core's E4M3
//! encoder against the `float8` crate's `F8E4M3::from_f32` over all 2^32 inputs
//! (`cargo xtask exp-check --float8-only` runs that pass alone).
//!
//! The error of each finite result is measured in units of the f32 ulp at the exact value
//! (`2^-149` below the normal range); a result that overflows must be `+inf` exactly when the
//! correctly rounded value is. NaN inputs must give the canonical NaN. Runs on every core.

use moe_core::format::{e4m3_from_f32, e4m3_from_f32_reference, round_bf16};
use moe_core::math::{exp_f32, CANONICAL_NAN};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn ulp_at(t: f64) -> f64 {
    let tf = t as f32;
    if tf < f32::MIN_POSITIVE {
        2f64.powi(-149)
    } else {
        let e = ((tf.to_bits() >> 23) & 0xFF) as i32 - 127;
        2f64.powi(e - 23)
    }
}

/// Error of `exp_f32(x)` in ulp, or `None` if the result is wrong outright (NaN mishandling or a
/// wrong overflow).
fn error_ulp(x: f32) -> Option<f64> {
    let y = exp_f32(x);
    if x.is_nan() {
        return (y.to_bits() == CANONICAL_NAN.to_bits()).then_some(0.0);
    }
    let t = (x as f64).exp();
    let tf = t as f32; // correctly rounded (f64 exp is within 1 ulp of f64, far inside half an f32 ulp except at ties)
    if tf.is_infinite() || y.is_infinite() {
        // Either both overflow, or the non-overflowing one is within 2 ulp of f32::MAX's ulp.
        if tf.is_infinite() && y.is_infinite() {
            return Some(0.0);
        }
        let err = ((y as f64).min(f64::MAX) - t).abs() / 2f64.powi(104);
        return if y.is_infinite() {
            Some(((t - f32::MAX as f64) / 2f64.powi(104)).abs() + 1.0)
        } else {
            Some(err)
        };
    }
    Some((y as f64 - t).abs() / ulp_at(t))
}

pub fn run(args: &[String]) -> Result<(), String> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match args {
        [] => {
            exp_pass(threads)?;
            float8_pass(threads)
        }
        [flag] if flag == "--float8-only" => float8_pass(threads),
        _ => Err(format!(
            "exp-check: unexpected arguments {args:?} (the only option is --float8-only)"
        )),
    }
}

/// Runs `f(first, end)` over every chunk of the 2^32 f32 bit patterns on `threads` threads.
fn for_all_f32(threads: usize, what: &str, f: impl Fn(u64, u64) + Sync) {
    const CHUNK: u64 = 1 << 24;
    let chunks = (1u64 << 32) / CHUNK;
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                f(c * CHUNK, (c + 1) * CHUNK);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_multiple_of(32) {
                    eprintln!("{what}: {d}/{chunks} chunks, {:.0} s", start.elapsed().as_secs_f64());
                }
            });
        }
    });
}

/// How `float8::F8E4M3::from_f32` relates to `e4m3_from_f32`, from reading and measuring both:
/// equal on every non-NaN f32; a NaN gives `0x7F` from moe-core (SPEC §2) but keeps its sign in
/// the `float8` crate (`0x7F` or `0xFF`).
fn float8_expected(x: f32, ours: u8) -> u8 {
    if x.is_nan() && x.is_sign_negative() {
        0xFF
    } else {
        ours
    }
}

/// Second pass: moe-core's encoder against the `float8` crate on all 2^32 inputs.
fn float8_pass(threads: usize) -> Result<(), String> {
    let start = std::time::Instant::now();
    let non_nan = AtomicU64::new(0);
    let nan = AtomicU64::new(0);
    let unexplained = AtomicU64::new(0);
    let examples = Mutex::new(Vec::<(u32, u8, u8)>::new());
    for_all_f32(threads, "float8-check", |first, end| {
        let (mut local_non_nan, mut local_nan, mut local_bad) = (0u64, 0u64, 0u64);
        for bits in first..end {
            let x = f32::from_bits(bits as u32);
            let ours = e4m3_from_f32(x);
            let theirs = float8::F8E4M3::from_f32(x).to_bits();
            if theirs == ours {
                continue;
            }
            if x.is_nan() {
                local_nan += 1;
            } else {
                local_non_nan += 1;
            }
            if theirs != float8_expected(x, ours) {
                local_bad += 1;
                let mut ex = examples.lock().expect("examples");
                if ex.len() < 8 {
                    ex.push((bits as u32, ours, theirs));
                }
            }
        }
        non_nan.fetch_add(local_non_nan, Ordering::Relaxed);
        nan.fetch_add(local_nan, Ordering::Relaxed);
        unexplained.fetch_add(local_bad, Ordering::Relaxed);
    });
    let (non_nan, nan, bad) = (
        non_nan.load(Ordering::Relaxed),
        nan.load(Ordering::Relaxed),
        unexplained.load(Ordering::Relaxed),
    );
    println!(
        "float8-check: 4294967296 inputs, F8E4M3::from_f32 differs from e4m3_from_f32 on {non_nan} non-NaN and {nan} NaN inputs \
         ({bad} not explained by the NaN sign), {:.0} s on {threads} threads",
        start.elapsed().as_secs_f64()
    );
    let ex = examples.into_inner().expect("examples");
    for (bits, ours, theirs) in &ex {
        println!(
            "  x = {:e} ({bits:#010x}): e4m3_from_f32 {ours:#04x}, float8 {theirs:#04x}",
            f32::from_bits(*bits)
        );
    }
    // Every negative NaN (sign set, exponent all ones, mantissa non-zero) and nothing else.
    const NEGATIVE_NANS: u64 = (1 << 23) - 1;
    if bad > 0 || non_nan > 0 || nan != NEGATIVE_NANS {
        return Err(format!(
            "float8's F8E4M3::from_f32 and e4m3_from_f32 differ beyond the documented NaN sign: {non_nan} non-NaN, {nan} NaN \
             (expected {NEGATIVE_NANS}), {bad} unexplained"
        ));
    }
    Ok(())
}

/// First pass: `exp_f32`, the fast E4M3 encoder and `round_bf16` on all 2^32 inputs.
fn exp_pass(threads: usize) -> Result<(), String> {
    let worst_bits = AtomicU64::new(0); // f64 bits of the worst error (non-negative, so ordered as u64)
    let worst_x = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    let e4m3_wrong = AtomicU64::new(0);
    let bf16_wrong = AtomicU64::new(0);
    let start = std::time::Instant::now();
    for_all_f32(threads, "exp-check", |first, end| {
        let mut local_worst = 0.0f64;
        let mut local_x = 0u32;
        for bits in first..end {
            let x = f32::from_bits(bits as u32);
            if e4m3_from_f32(x) != e4m3_from_f32_reference(x) {
                e4m3_wrong.fetch_add(1, Ordering::Relaxed);
            }
            if round_bf16(x).to_bits() != moe_core::bf16::from_f32(x).to_f32().to_bits() {
                bf16_wrong.fetch_add(1, Ordering::Relaxed);
            }
            match error_ulp(x) {
                Some(e) if e > local_worst => {
                    local_worst = e;
                    local_x = bits as u32;
                }
                Some(_) => {}
                None => {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let prev = worst_bits.fetch_max(local_worst.to_bits(), Ordering::Relaxed);
        if local_worst.to_bits() > prev {
            worst_x.store(local_x as u64, Ordering::Relaxed);
        }
    });
    let worst = f64::from_bits(worst_bits.load(Ordering::Relaxed));
    let wx = f32::from_bits(worst_x.load(Ordering::Relaxed) as u32);
    let wrong = wrong.load(Ordering::Relaxed);
    let e4m3_wrong = e4m3_wrong.load(Ordering::Relaxed);
    let bf16_wrong = bf16_wrong.load(Ordering::Relaxed);
    println!("bf16-check: 4294967296 inputs, {bf16_wrong} differences between round_bf16 and half::bf16::from_f32");
    println!("e4m3-check: 4294967296 inputs, {e4m3_wrong} differences between the fast and the reference encoder");
    println!(
        "exp-check: 4294967296 inputs, worst error {worst:.4} ulp at x = {wx:e} ({:#010x}), {wrong} wrong NaN results, {:.0} s on {threads} threads",
        wx.to_bits(),
        start.elapsed().as_secs_f64()
    );
    if bf16_wrong > 0 {
        return Err(format!("round_bf16 differs from half::bf16::from_f32 on {bf16_wrong} inputs"));
    }
    if e4m3_wrong > 0 {
        return Err(format!("the fast E4M3 encoder differs from its reference on {e4m3_wrong} inputs"));
    }
    if wrong > 0 || worst > 2.0 {
        return Err(format!("exp_f32 fails its contract: worst {worst} ulp, {wrong} NaN mismatches"));
    }
    Ok(())
}
