//! The router (SPEC §5.6) on both CPU paths.
//!
//! The scores and the weights are the spec's f32 arithmetic, shared ([`scores`], [`weights`]).
//! The selection is written twice: [`naive`] compares the floats as the spec words it (repeated
//! scans for the largest, NaN below every number, ties to the lower index), [`fast`] sorts
//! [`rank_key`]s, the one-integer form of the same order, one rayon task per token. The CPU
//! mount of the moe-testing suites checks that both agree bit for bit.

use moe_core::math::{exp_f32, CANONICAL_NAN};
use moe_core::{rank_index, rank_key, MoeResult, Route, Scoring};
use rayon::prelude::*;

use crate::CpuBackend;

/// The scores `s (Eg)` of one token's logits `l` (SPEC §5.6 step 1): sigmoid with IEEE
/// division, or softmax with the maximum taken by maxNum and the sum in increasing `e`.
fn scores(scoring: Scoring, l: &[f32], s: &mut [f32]) {
    match scoring {
        Scoring::Sigmoid => {
            for (s, &l) in s.iter_mut().zip(l) {
                *s = 1.0 / (1.0 + exp_f32(-l));
            }
        }
        Scoring::Softmax => {
            let mut mx = f32::NEG_INFINITY;
            for &l in l {
                mx = mx.max(l);
            }
            let mut z = 0f32;
            for (s, &l) in s.iter_mut().zip(l) {
                *s = exp_f32(l - mx);
                z += *s;
            }
            for s in s.iter_mut() {
                *s /= z;
            }
        }
    }
}

/// The choice score of expert `e`: its score plus its bias (zero when absent).
#[inline]
fn choice(s: &[f32], bias: Option<&[f32]>, e: usize) -> f32 {
    s[e] + bias.map_or(0.0, |b| b[e])
}

/// Step 5 on one token's weights, which hold the selected scores `s_{id_j}`: divided by their
/// sum in `j` order when `renormalize`, then multiplied by the scaling factor; every NaN is
/// written as the canonical `0x7FC00000` (a NaN's bits differ between CPUs and GPUs).
fn weights(p: &Route, w: &mut [f32]) {
    if p.renormalize() {
        let mut sum = 0f32;
        for &v in w.iter() {
            sum += v;
        }
        for v in w.iter_mut() {
            *v /= sum;
        }
    }
    let f = p.routed_scaling_factor();
    for v in w.iter_mut() {
        let x = *v * f;
        *v = if x.is_nan() { CANONICAL_NAN } else { x };
    }
}

/// Whether choice score `a` of index `ia` goes before `b` of index `ib`: larger first, NaN after
/// every number, equal values (two NaN included) to the lower index.
fn ranks_above(a: f32, ia: usize, b: f32, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a > b || (a == b && ia < ib),
        (false, true) => true,
        (true, false) => false,
        (true, true) => ia < ib,
    }
}

/// The index of the first-ranked value of `v` among the indices `allowed` admits, by
/// [`ranks_above`]; `None` if it admits none.
fn best(v: &[f32], allowed: impl Fn(usize) -> bool) -> Option<usize> {
    let mut found: Option<usize> = None;
    for (i, &x) in v.iter().enumerate() {
        if allowed(i) && found.is_none_or(|b| ranks_above(x, i, v[b], b)) {
            found = Some(i);
        }
    }
    found
}

/// `NaiveCpu`'s router: the steps of SPEC §5.6 one token at a time, every "largest" a scan.
pub(crate) fn naive(p: &Route, logits: &[f32], bias: Option<&[f32]>, topk_ids: &mut [i32], topk_weights: &mut [f32]) -> MoeResult<()> {
    p.check(logits, bias, topk_ids, topk_weights)?;
    p.check_logits(logits)?;
    let (eg, k, g, gsize) = (p.experts(), p.topk(), p.n_group(), p.group_size());
    let mut s = vec![0f32; eg];
    let mut c = vec![0f32; eg];
    let mut group_score = vec![0f32; g];
    let mut kept = vec![true; g];
    let mut taken = vec![false; eg];
    for m in 0..p.tokens() {
        scores(p.scoring(), &logits[m * eg..][..eg], &mut s);
        for e in 0..eg {
            c[e] = choice(&s, bias, e);
        }
        if g > 1 {
            for grp in 0..g {
                let cg = &c[grp * gsize..][..gsize];
                let a = best(cg, |_| true).expect("a group has an expert");
                group_score[grp] = if p.has_bias() {
                    let b = best(cg, |i| i != a).expect("groups of two or more with a bias");
                    cg[a] + cg[b]
                } else {
                    cg[a]
                };
            }
            kept.fill(false);
            for _ in 0..p.topk_group() {
                let grp = best(&group_score, |i| !kept[i]).expect("topk_group <= n_group");
                kept[grp] = true;
            }
        }
        taken.fill(false);
        let (ids, w) = (&mut topk_ids[m * k..][..k], &mut topk_weights[m * k..][..k]);
        for j in 0..k {
            let e = best(&c, |e| kept[e / gsize] && !taken[e]).expect("k <= the experts left");
            taken[e] = true;
            ids[j] = e as i32;
            w[j] = s[e];
        }
        weights(p, w);
    }
    Ok(())
}

/// One token's working memory on the fast path.
struct Scratch {
    s: Vec<f32>,
    c: Vec<f32>,
    group_keys: Vec<u64>,
    ranked_groups: Vec<u64>,
    candidates: Vec<u64>,
}

/// `CpuBackend`'s router: one rayon task per token, selecting by sorting [`rank_key`]s.
pub(crate) fn fast(
    cpu: &CpuBackend,
    p: &Route,
    logits: &[f32],
    bias: Option<&[f32]>,
    topk_ids: &mut [i32],
    topk_weights: &mut [f32],
) -> MoeResult<()> {
    p.check(logits, bias, topk_ids, topk_weights)?;
    p.check_logits(logits)?;
    let (eg, k) = (p.experts(), p.topk());
    let scratch = || Scratch {
        s: vec![0f32; eg],
        c: vec![0f32; eg],
        group_keys: Vec::with_capacity(p.n_group()),
        ranked_groups: Vec::with_capacity(p.n_group()),
        candidates: Vec::with_capacity(eg),
    };
    cpu.install(|| {
        topk_ids
            .par_chunks_mut(k)
            .zip(topk_weights.par_chunks_mut(k))
            .enumerate()
            .with_min_len(16)
            .for_each_init(scratch, |sc, (m, (ids, w))| {
                fast_token(p, &logits[m * eg..][..eg], bias, sc, ids, w)
            });
    });
    Ok(())
}

fn fast_token(p: &Route, l: &[f32], bias: Option<&[f32]>, sc: &mut Scratch, ids: &mut [i32], w: &mut [f32]) {
    let (g, gsize, k) = (p.n_group(), p.group_size(), p.topk());
    scores(p.scoring(), l, &mut sc.s);
    for (e, c) in sc.c.iter_mut().enumerate() {
        *c = choice(&sc.s, bias, e);
    }
    let c = &sc.c;
    let key = |e: usize| rank_key(c[e], e as u32);
    // The group keys of every group, then the threshold: the key of the last kept group.
    let mut threshold = 0u64;
    if g > 1 {
        sc.group_keys.clear();
        for grp in 0..g {
            // The two first-ranked experts of the group in one pass (0 is below every key).
            let (mut k1, mut k2) = (0u64, 0u64);
            for e in grp * gsize..(grp + 1) * gsize {
                let ke = key(e);
                if ke > k1 {
                    (k1, k2) = (ke, k1);
                } else if ke > k2 {
                    k2 = ke;
                }
            }
            let a = c[rank_index(k1)];
            let score = if p.has_bias() { a + c[rank_index(k2)] } else { a };
            sc.group_keys.push(rank_key(score, grp as u32));
        }
        let tg = p.topk_group();
        sc.ranked_groups.clone_from(&sc.group_keys);
        sc.ranked_groups.select_nth_unstable_by(tg - 1, |a, b| b.cmp(a));
        threshold = sc.ranked_groups[tg - 1];
    }
    let group_keys = &sc.group_keys;
    sc.candidates.clear();
    sc.candidates
        .extend((0..c.len()).filter(|&e| g == 1 || group_keys[e / gsize] >= threshold).map(key));
    let cand = &mut sc.candidates;
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        cand.truncate(k);
    }
    cand.sort_unstable_by(|a, b| b.cmp(a));
    for (j, &ke) in cand.iter().enumerate() {
        let e = rank_index(ke);
        ids[j] = e as i32;
        w[j] = sc.s[e];
    }
    weights(p, w);
}
