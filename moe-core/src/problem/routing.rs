//! Dispatch (prepare) and combine (finalize), and the routing of `topk_ids` they share.

use half::bf16;

use super::checks::{at_least, check_len, multiple_of_128, product, Result};
use super::quant::BatchedTokenGroupQuant;
use crate::error::ProblemError;
use crate::scale::{ScaleFormat, ScalesMut};

/// The sizes that prepare and finalize share: `M` tokens of hidden size `K`, `topk` slots each
/// in `topk_ids (M, topk)`, routed to `E` experts of capacity `T` (the `(E, T, K)` batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingDims {
    m: usize,
    k: usize,
    topk: usize,
    e: usize,
    t: usize,
}

impl RoutingDims {
    /// Checks everything but `K`'s own rule; `tokens` names the `(M, K)` tensor and `batch` the
    /// `(E, T, K)` one in errors.
    fn new(m: usize, k: usize, topk: usize, e: usize, t: usize, tokens: &'static str, batch: &'static str) -> Result<Self> {
        at_least("topk_ids", "topk", topk, 1)?;
        at_least(batch, "E", e, 1)?;
        at_least(batch, "T", t, 1)?;
        product(tokens, &[m, k])?;
        product("topk_ids", &[m, topk])?;
        product(batch, &[e, t, k])?;
        Ok(Self { m, k, topk, e, t })
    }
    /// Number of tokens `M`.
    pub fn tokens(&self) -> usize {
        self.m
    }
    /// Hidden size `K`.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Slots per token (`topk`).
    pub fn topk(&self) -> usize {
        self.topk
    }
    /// Number of local experts `E`.
    pub fn experts(&self) -> usize {
        self.e
    }
    /// Rows per expert `T`.
    pub fn capacity(&self) -> usize {
        self.t
    }
    /// Routes `topk_ids (M, topk)` (SPEC §5.5): the errors of [`Routing::new`].
    pub fn route(&self, topk_ids: &[i32]) -> Result<Routing> {
        Routing::new(topk_ids, self.m, self.topk, self.e, self.t)
    }
}

/// Dispatch: route `x (M, K)` by `topk_ids (M, k)` into `(E, T, K)` and quantize (SPEC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepare {
    dims: RoutingDims,
    fmt: ScaleFormat,
}

impl Prepare {
    /// `K` a positive multiple of 128, `topk`, `E` and `T` at least 1, any `M` (0 is an empty
    /// batch); the scales of `a1q` are stored in `fmt`.
    pub fn new(m: usize, k: usize, topk: usize, experts: usize, capacity: usize, fmt: ScaleFormat) -> Result<Self> {
        multiple_of_128("x", "K", k)?;
        let dims = RoutingDims::new(m, k, topk, experts, capacity, "x", "a1q")?;
        Ok(Self { dims, fmt })
    }
    /// The sizes `(M, K, topk, E, T)`.
    pub fn dims(&self) -> &RoutingDims {
        &self.dims
    }
    /// The storage of `a1s`.
    pub fn scale_format(&self) -> ScaleFormat {
        self.fmt
    }
    /// The batched quantization this dispatch performs.
    pub fn quant(&self) -> BatchedTokenGroupQuant {
        let d = &self.dims;
        BatchedTokenGroupQuant {
            e: d.e,
            t: d.t,
            k: d.k,
            fmt: self.fmt,
        }
    }
    /// Validates the buffers and routes the tokens.
    pub fn check(&self, x: &[bf16], topk_ids: &[i32], a1q: &[u8], a1s: &ScalesMut<'_>, counts: &[i32]) -> Result<Routing> {
        let d = &self.dims;
        // Every buffer first: routing allocates O(E), and a caller cannot pass buffers for an
        // absurd E.
        check_len("x", x.len(), &[d.m, d.k])?;
        check_len("topk_ids", topk_ids.len(), &[d.m, d.topk])?;
        check_len("a1q", a1q.len(), &[d.e, d.t, d.k])?;
        let sh = self.quant().scale_shape();
        a1s.check("a1s", self.fmt, sh.iter().product(), &sh)?;
        check_len("counts", counts.len(), &[d.e])?;
        d.route(topk_ids)
    }
}

/// Combine: weight each expert output by the router and sum per token (SPEC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finalize {
    dims: RoutingDims,
}

// Prepare and Finalize are their routing dimensions plus what is their own: they read as their
// dimensions (`p.tokens()`, `p.experts()`...), which the shared struct owns once.
impl std::ops::Deref for Prepare {
    type Target = RoutingDims;
    fn deref(&self) -> &RoutingDims {
        &self.dims
    }
}

impl std::ops::Deref for Finalize {
    type Target = RoutingDims;
    fn deref(&self) -> &RoutingDims {
        &self.dims
    }
}

impl Finalize {
    /// `K`, `topk`, `E` and `T` at least 1, any `M` (0 is an empty batch).
    pub fn new(m: usize, k: usize, topk: usize, experts: usize, capacity: usize) -> Result<Self> {
        at_least("expert_out", "K", k, 1)?;
        let dims = RoutingDims::new(m, k, topk, experts, capacity, "out", "expert_out")?;
        Ok(Self { dims })
    }
    /// The sizes `(M, K, topk, E, T)`.
    pub fn dims(&self) -> &RoutingDims {
        &self.dims
    }
    /// Validates the buffers and routes the tokens.
    pub fn check(&self, expert_out: &[bf16], topk_ids: &[i32], topk_weights: &[f32], out: &[bf16]) -> Result<Routing> {
        let d = &self.dims;
        check_len("expert_out", expert_out.len(), &[d.e, d.t, d.k])?;
        check_len("topk_ids", topk_ids.len(), &[d.m, d.topk])?;
        check_len("topk_weights", topk_weights.len(), &[d.m, d.topk])?;
        check_len("out", out.len(), &[d.m, d.k])?;
        d.route(topk_ids)
    }
}

/// Where each token goes: the validated result of `topk_ids` (SPEC §5.5).
///
/// Expert `e` receives, in ascending token order, every token `m` with `e` in `topk_ids[m]`,
/// once per expert however often it is listed; `-1` means "not routed".
/// Memory is `O(E + M·topk)`; the `O(E)` tables are reserved fallibly, so an absurd `E` is a
/// [`ProblemError::TooLarge`], never an allocation abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    topk: usize,
    /// Live rows per expert.
    counts: Vec<i32>,
    /// For each `(m, j)`: the row of token `m` in expert `topk_ids[m, j]`, or -1 if not routed.
    rows: Vec<i32>,
    /// The tokens of every expert, ascending, expert after expert.
    order: Vec<u32>,
    /// `order[offsets[e]..offsets[e + 1]]` are the tokens of expert `e`.
    offsets: Vec<usize>,
}

fn table<T: Clone>(len: usize, fill: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| ProblemError::TooLarge {
        tensor: "topk_ids",
        elements: len as u128,
    })?;
    v.resize(len, fill);
    Ok(v)
}

/// How many tokens list `id` in at least one of their slots (for the overflow error).
fn tokens_listing(topk_ids: &[i32], topk: usize, id: i32) -> usize {
    topk_ids.chunks_exact(topk).filter(|ids| ids.contains(&id)).count()
}

impl Routing {
    /// Routes `topk_ids (m, topk)`; ids outside `[-1, E)` and experts receiving more than `T`
    /// tokens are errors.
    ///
    /// Linear in `M·topk + E`: a token listed twice for one expert is recognised in O(1) by
    /// remembering, per expert, the last token counted for it (tokens are visited in ascending
    /// order, so that token's row is the expert's newest one).
    pub fn new(topk_ids: &[i32], m: usize, topk: usize, experts: usize, capacity: usize) -> Result<Self> {
        check_len("topk_ids", topk_ids.len(), &[m, topk])?;
        // With no slots there is nothing to route, but `m` could be anything: refuse it rather
        // than loop over `m` empty rows (found by fuzzing).
        at_least("topk_ids", "topk", topk, 1)?;
        // Counts, rows and token numbers are stored as i32/u32.
        if m > i32::MAX as usize {
            return Err(ProblemError::TooLarge {
                tensor: "topk_ids",
                elements: topk_ids.len() as u128,
            });
        }
        let mut counts: Vec<i32> = table(experts, 0)?;
        // `last[e]`: the last token counted for expert `e` (`usize::MAX`: none yet).
        let mut last: Vec<usize> = table(experts, usize::MAX)?;
        let mut rows = vec![-1i32; topk_ids.len()];
        for (tok, (ids, slot_rows)) in topk_ids.chunks_exact(topk).zip(rows.chunks_exact_mut(topk)).enumerate() {
            for (j, (&id, row)) in ids.iter().zip(slot_rows.iter_mut()).enumerate() {
                if id < -1 || id as i64 >= experts as i64 {
                    return Err(ProblemError::TopkId {
                        token: tok,
                        slot: j,
                        id: id as i64,
                        experts,
                    });
                }
                if id == -1 {
                    continue;
                }
                let e = id as usize;
                let c = &mut counts[e];
                if last[e] != tok {
                    // The first slot of this token for expert `e`: a new row.
                    if *c as usize == capacity {
                        return Err(ProblemError::Overflow {
                            expert: e,
                            count: tokens_listing(topk_ids, topk, id),
                            capacity,
                        });
                    }
                    last[e] = tok;
                    *c += 1;
                }
                // A token listed twice for one expert takes one row: the expert's newest.
                *row = *c - 1;
            }
        }
        let mut offsets: Vec<usize> = table(experts + 1, 0)?;
        for e in 0..experts {
            offsets[e + 1] = offsets[e] + counts[e] as usize;
        }
        let mut order = vec![0u32; offsets[experts]];
        for (i, (&id, &row)) in topk_ids.iter().zip(&rows).enumerate() {
            // Repeated slots of one token write the same token to the same place.
            if id >= 0 {
                order[offsets[id as usize] + row as usize] = (i / topk) as u32;
            }
        }
        Ok(Self {
            topk,
            counts,
            rows,
            order,
            offsets,
        })
    }
    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.counts.len()
    }
    /// Live rows per expert.
    pub fn counts(&self) -> &[i32] {
        &self.counts
    }
    /// Number of tokens `M`.
    pub fn tokens_len(&self) -> usize {
        self.rows.len() / self.topk
    }
    /// Slots per token (`topk`).
    pub fn topk(&self) -> usize {
        self.topk
    }
    /// The tokens of expert `e`, ascending.
    ///
    /// # Panics
    /// If `e >= self.experts()`, like indexing a slice out of bounds.
    pub fn tokens(&self, e: usize) -> &[u32] {
        assert!(e < self.experts(), "Routing::tokens: expert {e} is outside [0, {})", self.experts());
        &self.order[self.offsets[e]..self.offsets[e + 1]]
    }
    /// The row of token `m` in the expert of its slot `j`, or `None` if the slot is `-1`.
    ///
    /// # Panics
    /// If `m >= self.tokens_len()` or `j >= self.topk()`, like indexing a slice out of bounds
    /// (an unchecked `j` past `topk` would silently read the next token's slot).
    pub fn row(&self, m: usize, j: usize) -> Option<usize> {
        assert!(
            m < self.tokens_len() && j < self.topk,
            "Routing::row: slot ({m}, {j}) is outside ({}, {})",
            self.tokens_len(),
            self.topk
        );
        let r = self.rows[m * self.topk + j];
        (r >= 0).then_some(r as usize)
    }
    /// The per-slot rows, `(M, topk)` i32, -1 where not routed.
    pub fn rows(&self) -> &[i32] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_dedups_keeps_token_order_and_rejects_overflow_and_bad_ids() {
        // 3 tokens, top-2, 2 experts.
        let ids = [1, 0, 1, 1, -1, 0];
        let r = Routing::new(&ids, 3, 2, 2, 3).unwrap();
        assert_eq!(r.counts(), &[2, 2]);
        assert_eq!(r.tokens(0), &[0, 2]);
        assert_eq!(r.tokens(1), &[0, 1]);
        assert_eq!(r.rows(), &[0, 0, 1, 1, -1, 1]);
        // The first expert to overflow, scanning tokens in order, with its full count.
        assert_eq!(
            Routing::new(&ids, 3, 2, 2, 1),
            Err(ProblemError::Overflow {
                expert: 1,
                count: 2,
                capacity: 1
            })
        );
        assert_eq!(
            Routing::new(&[0, 0, 0, -1, 0, 1], 3, 2, 2, 2),
            Err(ProblemError::Overflow {
                expert: 0,
                count: 3,
                capacity: 2
            })
        );
        // An absurd number of experts is an error, not an allocation abort.
        assert!(matches!(
            Routing::new(&[], 0, 1, usize::MAX / 2, 1),
            Err(ProblemError::TooLarge { .. })
        ));
        assert_eq!(
            Routing::new(&[0, 2], 1, 2, 2, 4),
            Err(ProblemError::TopkId {
                token: 0,
                slot: 1,
                id: 2,
                experts: 2
            })
        );
        assert_eq!(
            Routing::new(&[-2, 0], 1, 2, 2, 4),
            Err(ProblemError::TopkId {
                token: 0,
                slot: 0,
                id: -2,
                experts: 2
            })
        );
    }

    /// Routing is linear in `M·topk`: 4,194,304 slots route in well under a second.
    ///
    /// The 5 s limit is a complexity guard only, generous for the test profile (opt-level 2)
    /// and for a loaded machine; the old quadratic duplicate scan needed hours for the single
    /// token with 4,194,304 distinct ids.

    #[test]
    fn routing_four_million_slots_is_linear() {
        let n = 1usize << 22;
        let start = std::time::Instant::now();
        // One token listing every expert once.
        let ids: Vec<i32> = (0..n as i32).collect();
        let r = Routing::new(&ids, 1, n, n, 1).unwrap();
        assert!(r.counts().iter().all(|&c| c == 1));
        assert_eq!(r.tokens(n - 1), &[0]);
        assert_eq!(r.row(0, n - 1), Some(0));
        // Many tokens, top-8 of 256 experts, with a repeated id in every token.
        let (m, k, e) = (n / 8, 8, 256);
        let ids: Vec<i32> = (0..m * k)
            .map(|i| {
                let (tok, j) = (i / k, i % k);
                if j == k - 1 {
                    ((tok * 7) % e) as i32
                } else {
                    ((tok * 7 + j * 31) % e) as i32
                }
            })
            .collect();
        let r = Routing::new(&ids, m, k, e, m).unwrap();
        assert_eq!(r.counts().iter().map(|&c| c as usize).sum::<usize>(), m * (k - 1));
        assert_eq!(r.row(5, k - 1), r.row(5, 0));
        // One expert overflowing at the very end reports its full count.
        let err = Routing::new(&ids, m, k, e, 1).unwrap_err();
        assert!(matches!(err, ProblemError::Overflow { capacity: 1, .. }), "{err}");
        let elapsed = start.elapsed();
        assert!(elapsed.as_secs_f64() < 5.0, "routing 4M slots took {elapsed:?}");
    }

    #[test]
    fn routing_rows_follow_first_slot_for_repeated_ids() {
        // Token 0 lists expert 1 three times around expert 0; token 1 lists expert 1 twice.
        let ids = [1, 0, 1, 1, 2, 1, -1, 1];
        let r = Routing::new(&ids, 2, 4, 3, 2).unwrap();
        assert_eq!(r.counts(), &[1, 2, 1]);
        assert_eq!(r.rows(), &[0, 0, 0, 0, 0, 1, -1, 1]);
        assert_eq!(r.tokens(1), &[0, 1]);
        assert_eq!(
            Routing::new(&ids, 2, 4, 3, 1),
            Err(ProblemError::Overflow {
                expert: 1,
                count: 2,
                capacity: 1
            })
        );
    }

    #[test]
    #[should_panic(expected = "Routing::row: slot (0, 2) is outside (2, 2)")]
    fn routing_row_past_topk_panics_instead_of_reading_the_next_token() {
        let r = Routing::new(&[0, 1, 1, -1], 2, 2, 2, 2).unwrap();
        let _ = r.row(0, 2);
    }

    #[test]
    #[should_panic(expected = "Routing::tokens: expert 2 is outside [0, 2)")]
    fn routing_tokens_of_an_unknown_expert_panics_with_a_message() {
        let r = Routing::new(&[0, 1, 1, -1], 2, 2, 2, 2).unwrap();
        let _ = r.tokens(2);
    }

    #[test]
    fn prepare_and_finalize_share_dims_and_name_their_own_tensors() {
        let p = Prepare::new(5, 256, 2, 3, 4, ScaleFormat::F32).unwrap();
        let f = Finalize::new(5, 256, 2, 3, 4).unwrap();
        assert_eq!(p.dims(), f.dims());
        let d = p.dims();
        assert_eq!((d.tokens(), d.k(), d.topk(), d.experts(), d.capacity()), (5, 256, 2, 3, 4));
        assert_eq!(p.quant().scale_shape(), [3, 2, 4]);
        assert_eq!(d.route(&[0, 1, 2, -1, 0, 0, 1, 1, 2, 2]).unwrap().counts(), &[2, 2, 2]);
        // The batch is `a1q` for prepare and `expert_out` for finalize.
        assert!(matches!(
            Prepare::new(5, 256, 2, 0, 4, ScaleFormat::F32),
            Err(ProblemError::TooSmall {
                tensor: "a1q",
                dim: "E",
                ..
            })
        ));
        assert!(matches!(
            Finalize::new(5, 256, 2, 3, 0),
            Err(ProblemError::TooSmall {
                tensor: "expert_out",
                dim: "T",
                ..
            })
        ));
    }
}
