//! Order statistics of timing samples.

/// Summary of one measured unit, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Median of the samples taken after an L2 flush (or, on the CPU, after a cache sweep).
    pub median_us: f64,
    /// 10th percentile of the same samples.
    pub p10_us: f64,
    /// 90th percentile of the same samples.
    pub p90_us: f64,
    /// Median of the warm samples (no flush), if any were taken.
    pub warm_median_us: Option<f64>,
    /// Number of flushed samples.
    pub samples: usize,
}

/// The `q`-quantile (`0 <= q <= 1`) of `v` by linear interpolation between the closest ranks;
/// `NaN` for an empty slice. NaN samples sort last.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let f = pos - lo as f64;
    s[lo] + (s[hi] - s[lo]) * f
}

impl Stats {
    /// The summary of `flushed` samples and optional `warm` ones; `None` without flushed
    /// samples.
    pub fn from_samples(flushed: &[f64], warm: &[f64]) -> Option<Stats> {
        if flushed.is_empty() {
            return None;
        }
        Some(Stats {
            median_us: quantile(flushed, 0.5),
            p10_us: quantile(flushed, 0.1),
            p90_us: quantile(flushed, 0.9),
            warm_median_us: (!warm.is_empty()).then(|| quantile(warm, 0.5)),
            samples: flushed.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!((quantile(&v, 0.1) - 1.4).abs() < 1e-12);
        assert!((quantile(&[1.0, 2.0], 0.5) - 1.5).abs() < 1e-12);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn stats_need_flushed_samples_and_keep_warm_apart() {
        assert_eq!(Stats::from_samples(&[], &[1.0]), None);
        let s = Stats::from_samples(&[10.0, 30.0, 20.0], &[1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median_us, s.warm_median_us, s.samples), (20.0, Some(2.0), 3));
        assert!(s.p10_us <= s.median_us && s.median_us <= s.p90_us);
        assert_eq!(Stats::from_samples(&[1.0], &[]).unwrap().warm_median_us, None);
    }
}
