//! Seeded synthetic data for the pipeline (`moe run`): a counter-based generator (any element can be
//! regenerated on its own, so the check can rebuild a weight block without keeping the
//! full-precision weights) and a router that hits prescribed per-expert counts.

use half::bf16;
use rayon::prelude::*;

use crate::error::InputError;
use crate::rng::{mix64, Rng};

/// Scale of the synthetic weights (activations are on `(-1, 1)`).
pub const WEIGHT_SCALE: f32 = 0.05;

/// The stream key of tensor `stream` under `seed`.
pub fn key(seed: u64, stream: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// Element `i` of stream `key`: uniform on `(-1, 1)` with 16 random bits (one 64-bit hash feeds
/// four consecutive elements), rounded to bf16.
#[inline]
pub fn value(key: u64, i: u64) -> bf16 {
    let h = mix64(key ^ (i / 4).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    lane(h, (i % 4) as u32)
}

#[inline]
fn lane(h: u64, j: u32) -> bf16 {
    let u = ((h >> (16 * j)) & 0xFFFF) as f32;
    bf16::from_f32((u - 32767.5) * (1.0 / 32768.0))
}

/// Fills `out` with elements `start..start + out.len()` of stream `key`, times `scale`, in parallel.
pub fn fill(key: u64, start: u64, scale: f32, out: &mut [bf16]) {
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let base = start + (c * CHUNK) as u64;
        let mut j = 0;
        while j < o.len() {
            let i = base + j as u64;
            let h = mix64(key ^ (i / 4).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut lane_i = (i % 4) as u32;
            while lane_i < 4 && j < o.len() {
                o[j] = bf16::from_f32(lane(h, lane_i).to_f32() * scale);
                lane_i += 1;
                j += 1;
            }
        }
    });
}

/// A synthetic router output.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthRouting {
    /// Live rows per expert: what `prepare` must report.
    pub counts: Vec<i32>,
    /// `(M, topk)`: each token's local experts in random slots, `-1` (routed elsewhere) in the rest.
    pub topk_ids: Vec<i32>,
    /// `(M, topk)` positive weights summing to 1 per token.
    pub topk_weights: Vec<f32>,
}

/// Draws live counts in `[0, min(T, M)]` (lowered until they fit `M·topk` slots), then gives
/// expert `e` exactly `counts[e]` distinct tokens, at most `topk` experts per token.
///
/// Experts are served largest count first, each taking the tokens with the most free slots
/// (ties broken at random), which realizes any feasible set of counts.
pub fn routing(rng: &mut Rng, tokens: usize, topk: usize, experts: usize, capacity: usize) -> Result<SynthRouting, InputError> {
    if topk == 0 {
        return Err(InputError::Usage("--topk must be at least 1".into()));
    }
    let cap = capacity.min(tokens);
    let mut counts: Vec<usize> = (0..experts).map(|_| rng.up_to(cap)).collect();
    while counts.iter().sum::<usize>() > tokens * topk {
        let (i, _) = counts.iter().enumerate().max_by_key(|&(_, c)| *c).expect("experts >= 1");
        counts[i] -= 1;
    }
    let mut order: Vec<usize> = (0..experts).collect();
    order.sort_by_key(|&e| std::cmp::Reverse(counts[e]));
    let mut free = vec![topk; tokens];
    let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); tokens];
    for e in order {
        let mut cand: Vec<(usize, u64, usize)> = (0..tokens).filter(|&m| free[m] > 0).map(|m| (free[m], rng.next_u64(), m)).collect();
        if cand.len() < counts[e] {
            return Err(InputError::Usage(format!(
                "cannot route {} tokens to expert {e} with --tokens {tokens} --topk {topk}",
                counts[e]
            )));
        }
        cand.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, _, m) in &cand[..counts[e]] {
            free[m] -= 1;
            chosen[m].push(e);
        }
    }
    let mut topk_ids = vec![-1i32; tokens * topk];
    let mut topk_weights = vec![0f32; tokens * topk];
    for m in 0..tokens {
        let mut slots: Vec<i32> = chosen[m].iter().map(|&e| e as i32).collect();
        slots.resize(topk, -1);
        rng.shuffle(&mut slots);
        topk_ids[m * topk..(m + 1) * topk].copy_from_slice(&slots);
        let w: Vec<f32> = (0..topk).map(|_| rng.unit_positive()).collect();
        let sum: f32 = w.iter().sum();
        for (o, v) in topk_weights[m * topk..(m + 1) * topk].iter_mut().zip(&w) {
            *o = v / sum;
        }
    }
    Ok(SynthRouting {
        counts: counts.iter().map(|&c| c as i32).collect(),
        topk_ids,
        topk_weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::Routing;

    #[test]
    fn routing_realizes_the_drawn_counts_within_capacity() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let (m, k, e, t) = (17, 3, 8, 9);
            let r = routing(&mut rng, m, k, e, t).unwrap();
            let routed = Routing::new(&r.topk_ids, m, k, e, t).unwrap();
            assert_eq!(routed.counts(), &r.counts[..]);
            assert!(r.counts.iter().all(|&c| c as usize <= t));
        }
    }

    #[test]
    fn values_are_reproducible_and_in_range() {
        let k = key(7, 1);
        let mut a = vec![bf16::ZERO; 70_001];
        fill(k, 501, 2.0, &mut a);
        for (j, v) in a.iter().enumerate() {
            assert_eq!(*v, bf16::from_f32(value(k, 501 + j as u64).to_f32() * 2.0), "element {j}");
        }
        assert!(a.iter().all(|v| v.to_f32().abs() <= 2.0));
    }
}
