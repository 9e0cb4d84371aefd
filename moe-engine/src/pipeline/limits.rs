//! The limits of `moe run`: every buffer the run allocates, sized with checked arithmetic
//! from the flags, and the validation that refuses a run whose buffers overflow `usize` or cannot
//! be allocated, naming the flags at fault (so huge flags give a usage error, never an abort).

use moe_core::GROUP;

use super::RunConfig;
use crate::error::InputError;

/// Validates the dimensions of `cfg` the way the command line reports them: zero or misaligned
/// sizes, and sizes whose buffers overflow `usize` or cannot be allocated, are an
/// [`InputError::Usage`] naming the flags at fault.
///
/// Every buffer the run allocates (see [`footprint`]) is sized with checked arithmetic; then
/// their total is reserved and released again without being touched, so a run that cannot get
/// its memory is refused before any work instead of aborting half-way.
pub fn validate(cfg: &RunConfig) -> Result<(), InputError> {
    for (flag, v) in [("--experts", cfg.experts), ("--capacity", cfg.capacity), ("--topk", cfg.topk)] {
        if v == 0 {
            return Err(InputError::Usage(format!("{flag} must be at least 1")));
        }
    }
    for (flag, v) in [("--hidden", cfg.hidden), ("--intermediate", cfg.intermediate)] {
        if v == 0 || v % GROUP != 0 {
            return Err(InputError::Usage(format!("{flag} = {v} must be a positive multiple of 128")));
        }
    }
    let buffers = footprint(cfg);
    let flags_of = |b: &Buffer| {
        b.flags
            .iter()
            .map(|f| format!("{f} {}", flag_value(cfg, f)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut total = 0usize;
    for b in &buffers {
        let Some(bytes) = b.bytes.filter(|&n| n <= isize::MAX as usize) else {
            return Err(InputError::Usage(format!(
                "{}: buffer `{}` ({}) is too large to address",
                flags_of(b),
                b.name,
                b.shape
            )));
        };
        total = total
            .checked_add(bytes)
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| InputError::Usage(format!("{}: the run's buffers together are too large to address", flags_of(b))))?;
    }
    let largest = buffers.iter().max_by_key(|b| b.bytes).expect("the run has buffers");
    crate::error::try_reserve::<u8>("the run's buffers", total).map_err(|_| {
        InputError::Usage(format!(
            "{}: the run needs {total} bytes of buffers (the largest, `{}` {}, {} bytes), which this machine cannot allocate",
            flags_of(largest),
            largest.name,
            largest.shape,
            largest.bytes.unwrap_or(0)
        ))
    })?;
    Ok(())
}

/// One buffer of the run: its name, symbolic shape, the flags its size depends on, and its
/// size in bytes (`None` if that overflows `usize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    /// The tensor's name.
    pub name: &'static str,
    /// Its symbolic shape and element size.
    pub shape: &'static str,
    /// The flags its size depends on.
    pub flags: &'static [&'static str],
    /// Its size in bytes, or `None` if that overflows `usize`.
    pub bytes: Option<usize>,
}

fn flag_value(cfg: &RunConfig, flag: &str) -> usize {
    match flag {
        "--experts" => cfg.experts,
        "--capacity" => cfg.capacity,
        "--hidden" => cfg.hidden,
        "--intermediate" => cfg.intermediate,
        "--tokens" => cfg.tokens,
        "--topk" => cfg.topk,
        _ => unreachable!("not a size flag: {flag}"),
    }
}

/// Every buffer [`run`](super::run) allocates at once, each counted as many times as it coexists with
/// itself (the stage-by-stage and the backend's own workspace, the check's copies); scratch of
/// the routing included. The backend's own device memory is not counted.
pub fn footprint(cfg: &RunConfig) -> Vec<Buffer> {
    let (e, t, k, i, m, topk) = (cfg.experts, cfg.capacity, cfg.hidden, cfg.intermediate, cfg.tokens, cfg.topk);
    let (kb, ib) = (k.div_ceil(GROUP), i.div_ceil(GROUP));
    let prod = |f: &[usize]| f.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    const ETK: &[&str] = &["--experts", "--capacity", "--hidden"];
    const ETI: &[&str] = &["--experts", "--capacity", "--intermediate"];
    const EIK: &[&str] = &["--experts", "--intermediate", "--hidden"];
    const MK: &[&str] = &["--tokens", "--hidden"];
    const MTOPK: &[&str] = &["--tokens", "--topk"];
    let buf = |name, shape, flags, bytes| Buffer { name, shape, flags, bytes };
    vec![
        buf("x", "(M, K) bf16, and y", MK, prod(&[m, k, 2, 2])),
        buf(
            "topk_ids",
            "(M, topk) i32, with topk_weights and the routing",
            MTOPK,
            prod(&[m, topk, 16]),
        ),
        buf(
            "routing",
            "per expert and per token",
            &["--experts", "--tokens"],
            prod(&[e, 16]).zip(prod(&[m, 32])).and_then(|(a, b)| a.checked_add(b)),
        ),
        buf(
            "w1 (one expert, bf16)",
            "(2I, K) bf16",
            &["--intermediate", "--hidden"],
            prod(&[2, i, k, 2]),
        ),
        buf("w1q", "(E, 2I, K) E4M3", EIK, prod(&[e, 2, i, k])),
        buf("w2q", "(E, K, I) E4M3", EIK, prod(&[e, k, i])),
        buf("w1s", "(E, 2I/128, K/128) f32, and w2s", EIK, prod(&[e, 3, ib, kb, 4])),
        buf("a1q", "(E, T, K) E4M3, twice", ETK, prod(&[e, t, k, 2])),
        buf("a1s", "(E, K/128, T) f32, twice", ETK, prod(&[e, t, kb, 4, 2])),
        buf("h1", "(E, T, 2I) bf16, three times", ETI, prod(&[e, t, 2, i, 2, 3])),
        buf("q2", "(E, T, I) E4M3 and its scales, four times", ETI, prod(&[e, t, i + 4 * ib, 4])),
        buf("out", "(E, T, K) bf16, three times", ETK, prod(&[e, t, k, 2, 3])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cfg: &RunConfig) -> String {
        match validate(cfg) {
            Err(InputError::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn the_default_run_fits_and_counts_its_big_buffers() {
        let cfg = RunConfig::default();
        validate(&cfg).unwrap();
        let total: usize = footprint(&cfg).iter().map(|b| b.bytes.unwrap()).sum();
        // w1q and w2q alone are 8 · 3 · 2048 · 7168 bytes.
        assert!(total > 8 * 3 * 2048 * 7168 && total < 1 << 30, "{total}");
    }

    #[test]
    fn sizes_that_overflow_name_their_flag() {
        let big = usize::MAX / 2;
        let with = |set: fn(&mut RunConfig, usize), v: usize| {
            let mut c = RunConfig::default();
            set(&mut c, v);
            c
        };
        for (cfg, flag) in [
            (with(|c, v| c.capacity = v, big), "--capacity"),
            (with(|c, v| c.tokens = v, big), "--tokens"),
            (with(|c, v| c.topk = v, big), "--topk"),
            (with(|c, v| c.experts = v, big), "--experts"),
            (with(|c, v| c.hidden = v, big / 128 * 128), "--hidden"),
            (with(|c, v| c.intermediate = v, big / 128 * 128), "--intermediate"),
        ] {
            let m = usage(&cfg);
            assert!(m.contains(flag) && m.contains("too large to address"), "{flag}: {m}");
        }
    }

    #[test]
    fn sizes_that_cannot_be_allocated_name_their_flags() {
        // 10^8 experts of K = 2^20: about 10^18 bytes, within usize but beyond any machine.
        let cfg = RunConfig {
            experts: 100_000_000,
            hidden: 1 << 20,
            ..RunConfig::default()
        };
        let m = usage(&cfg);
        assert!(
            m.contains("--experts 100000000") && m.contains("--hidden 1048576") && m.contains("cannot allocate"),
            "{m}"
        );
        assert!(!m.contains('\n'));
    }
}
