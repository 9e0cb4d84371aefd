//! The suites of `moe bench`, their shapes, the live-count distributions, and the work each case
//! must do (FLOPs and the bytes that must move; `docs/benchmarks.md` documents every formula).

use moe_core::GROUP;

use crate::error::InputError;
use crate::rng::Rng;

/// DeepSeek-V3's hidden size `K`.
pub const DSV3_K: usize = 7168;
/// DeepSeek-V3's expert intermediate size `I`.
pub const DSV3_I: usize = 2048;
/// DeepSeek-V3's routed experts (the router draws among them).
pub const DSV3_EXPERTS: usize = 256;
/// DeepSeek-V3's experts per token.
pub const DSV3_TOPK: usize = 8;

/// A named group of cases (`--suite NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// DeepGEMM's masked-GEMM shapes: 1×1024, 2×512, 4×256 for both DeepSeek-V3 GEMMs, every
    /// row live and again with counts drawn around the mean.
    Deepgemm,
    /// Decode: E ∈ {8, 32, 256} × live rows per expert ∈ {1, 16, 64}, both GEMMs.
    Decode,
    /// SiLU-mul-quant at vLLM's published shapes, random counts.
    Silu,
    /// Prepare's quantization, finalize, block quantization.
    Quant,
    /// The whole experts stage at DeepSeek-V3 sizes, router-drawn counts.
    Stage,
    /// The whole MoE layer: not yet.
    Layer,
}

impl Suite {
    /// Every suite, in running order.
    pub const ALL: [Suite; 6] = [
        Suite::Deepgemm,
        Suite::Decode,
        Suite::Silu,
        Suite::Quant,
        Suite::Stage,
        Suite::Layer,
    ];

    /// The `--suite` name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Deepgemm => "deepgemm",
            Suite::Decode => "decode",
            Suite::Silu => "silu",
            Suite::Quant => "quant",
            Suite::Stage => "stage",
            Suite::Layer => "layer",
        }
    }

    /// The suite named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// How the live rows of the experts are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counts {
    /// Every row live: `counts[e] = T`.
    AllLive,
    /// Uniform in `[0, T]`.
    Uniform,
    /// Uniform in `[0.7 m, 1.3 m]` around the mean `m = 0.75 T`, capped at `T` (DeepGEMM's newer
    /// masked tests draw `masked_m` around the expected m this way).
    AroundMean,
    /// Zipf-skewed: `E · 0.5 T` rows split in proportion to `1 / rank^1.2` over a random
    /// ranking of the experts, each capped at `T`.
    Zipf,
    /// Router-drawn: `0.8 T · 256 / 8` tokens each pick 8 distinct experts of DeepSeek-V3's 256
    /// at random; the counts of experts `0..E` (capped at `T`).
    Router,
}

impl Counts {
    /// Every distribution.
    pub const ALL: [Counts; 5] = [Counts::AllLive, Counts::Uniform, Counts::AroundMean, Counts::Zipf, Counts::Router];

    /// The `--counts` name.
    pub fn name(self) -> &'static str {
        match self {
            Counts::AllLive => "all-live",
            Counts::Uniform => "uniform",
            Counts::AroundMean => "around-mean",
            Counts::Zipf => "zipf",
            Counts::Router => "router",
        }
    }

    /// The distribution named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// `E` counts in `[0, T]`.
    pub fn draw(self, rng: &mut Rng, e: usize, t: usize) -> Vec<i32> {
        let t_i = t as i32;
        match self {
            Counts::AllLive => vec![t_i; e],
            Counts::Uniform => (0..e).map(|_| rng.up_to(t) as i32).collect(),
            Counts::AroundMean => {
                let m = 0.75 * t as f64;
                let (lo, hi) = ((0.7 * m).floor() as usize, ((1.3 * m).ceil() as usize).min(t));
                (0..e).map(|_| (lo + rng.up_to(hi.saturating_sub(lo))).min(t) as i32).collect()
            }
            Counts::Zipf => {
                let mut rank: Vec<usize> = (0..e).collect();
                rng.shuffle(&mut rank);
                let w: Vec<f64> = rank.iter().map(|&r| 1.0 / ((r + 1) as f64).powf(1.2)).collect();
                let sum: f64 = w.iter().sum();
                let total = e as f64 * 0.5 * t as f64;
                w.iter().map(|x| ((total * x / sum).round() as i32).min(t_i)).collect()
            }
            Counts::Router => {
                let global = DSV3_EXPERTS.max(e);
                let tokens = ((0.8 * t as f64) * global as f64 / DSV3_TOPK as f64).ceil() as usize;
                let mut c = vec![0i32; e];
                let mut ids: Vec<usize> = (0..global).collect();
                for _ in 0..tokens.max(1) {
                    // A partial Fisher–Yates shuffle: the first 8 are 8 distinct random experts.
                    for j in 0..DSV3_TOPK.min(global) {
                        let r = j + rng.below(global - j);
                        ids.swap(j, r);
                        if ids[j] < e {
                            c[ids[j]] += 1;
                        }
                    }
                }
                c.into_iter().map(|x| x.min(t_i)).collect()
            }
        }
    }
}

/// One operation to measure and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Masked grouped GEMM `(E, T, N, K)`.
    Gemm {
        /// Experts.
        e: usize,
        /// Capacity.
        t: usize,
        /// Output columns.
        n: usize,
        /// Reduction length.
        k: usize,
    },
    /// SiLU-mul-quant `(E, T, H)`.
    Silu {
        /// Experts.
        e: usize,
        /// Capacity.
        t: usize,
        /// Output width.
        h: usize,
    },
    /// Prepare's gathered token-group quantization: `M` tokens, top-`topk`, into `(E, T, K)`.
    Prepare {
        /// Tokens.
        m: usize,
        /// Hidden size.
        k: usize,
        /// Slots per token.
        topk: usize,
        /// Experts.
        e: usize,
        /// Capacity.
        t: usize,
    },
    /// Finalize: `(E, T, K)` expert outputs into `(M, K)`.
    Finalize {
        /// Tokens.
        m: usize,
        /// Hidden size.
        k: usize,
        /// Slots per token.
        topk: usize,
        /// Experts.
        e: usize,
        /// Capacity.
        t: usize,
    },
    /// Block quantization of bf16 weights `(E, R, C)`.
    BlockQuant {
        /// Experts.
        e: usize,
        /// Rows.
        r: usize,
        /// Columns.
        c: usize,
    },
    /// The experts stage `(E, T, K, I)`.
    Stage {
        /// Experts.
        e: usize,
        /// Capacity.
        t: usize,
        /// Hidden size.
        k: usize,
        /// Intermediate size.
        i: usize,
    },
}

impl Op {
    /// The operation's name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Gemm { .. } => "gemm",
            Op::Silu { .. } => "silu-mul-quant",
            Op::Prepare { .. } => "prepare-quant",
            Op::Finalize { .. } => "finalize",
            Op::BlockQuant { .. } => "block-quant",
            Op::Stage { .. } => "experts-stage",
        }
    }

    /// The shape as `NAME=value` pairs, in a fixed order.
    pub fn dims(&self) -> Vec<(&'static str, usize)> {
        match *self {
            Op::Gemm { e, t, n, k } => vec![("E", e), ("T", t), ("N", n), ("K", k)],
            Op::Silu { e, t, h } => vec![("E", e), ("T", t), ("H", h)],
            Op::Prepare { m, k, topk, e, t } | Op::Finalize { m, k, topk, e, t } => {
                vec![("M", m), ("K", k), ("topk", topk), ("E", e), ("T", t)]
            }
            Op::BlockQuant { e, r, c } => vec![("E", e), ("R", r), ("C", c)],
            Op::Stage { e, t, k, i } => vec![("E", e), ("T", t), ("K", k), ("I", i)],
        }
    }

    /// `E=8 T=64 N=4096 K=7168`.
    pub fn shape_string(&self) -> String {
        self.dims().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }

    /// The same operation with every dimension divided by `f` (sizes stay multiples of 128,
    /// counts of experts and rows at least 1): the CPU's smaller shapes.
    pub fn shrink(&self, f: usize) -> Op {
        let d = |x: usize| (x / f).max(1);
        let d128 = |x: usize| ((x / f) / GROUP).max(1) * GROUP;
        match *self {
            Op::Gemm { e, t, n, k } => Op::Gemm {
                e: d(e),
                t: d(t),
                n: d128(n),
                k: d128(k),
            },
            Op::Silu { e, t, h } => Op::Silu {
                e: d(e),
                t: d(t),
                h: d128(h),
            },
            Op::Prepare { m, k, topk, e, t } => Op::Prepare {
                m: d(m),
                k: d128(k),
                topk: topk.min(d(e)),
                e: d(e),
                t: d(t).max(d(m)),
            },
            Op::Finalize { m, k, topk, e, t } => Op::Finalize {
                m: d(m),
                k: d128(k),
                topk: topk.min(d(e)),
                e: d(e),
                t: d(t).max(d(m)),
            },
            Op::BlockQuant { e, r, c } => Op::BlockQuant {
                e: d(e),
                r: d128(r),
                c: d128(c),
            },
            Op::Stage { e, t, k, i } => Op::Stage {
                e: d(e),
                t: d(t),
                k: d128(k),
                i: d128(i),
            },
        }
    }
}

/// One row of the report to be: a suite, an operation, and how its counts are drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The suite (or `custom` for `--shape`).
    pub suite: &'static str,
    /// The operation and shape.
    pub op: Op,
    /// The live-count distribution (ignored by operations without counts).
    pub counts: Counts,
}

impl Case {
    /// `gemm E=4 T=256 N=4096 K=7168 all-live`.
    pub fn label(&self) -> String {
        format!("{} {} {}", self.op.name(), self.op.shape_string(), self.counts.name())
    }
}

/// The cases of `suite` at full (GPU) size. `layer` has none yet.
pub fn suite_cases(suite: Suite) -> Vec<Case> {
    let c = |op, counts| Case {
        suite: suite.name(),
        op,
        counts,
    };
    let gemms = [(2 * DSV3_I, DSV3_K), (DSV3_K, DSV3_I)];
    match suite {
        Suite::Deepgemm => {
            let mut v = Vec::new();
            for counts in [Counts::AllLive, Counts::AroundMean] {
                for (n, k) in gemms {
                    for (e, t) in [(1, 1024), (2, 512), (4, 256)] {
                        v.push(c(Op::Gemm { e, t, n, k }, counts));
                    }
                }
            }
            v
        }
        Suite::Decode => {
            let mut v = Vec::new();
            for (n, k) in gemms {
                for e in [8, 32, 256] {
                    for t in [1, 16, 64] {
                        v.push(c(Op::Gemm { e, t, n, k }, Counts::AllLive));
                    }
                }
            }
            v
        }
        Suite::Silu => [(16, 512, DSV3_K), (256, 128, DSV3_K), (8, 64, DSV3_I)]
            .into_iter()
            .map(|(e, t, h)| c(Op::Silu { e, t, h }, Counts::Uniform))
            .collect(),
        Suite::Quant => vec![
            c(
                Op::Prepare {
                    m: 256,
                    k: DSV3_K,
                    topk: DSV3_TOPK,
                    e: 32,
                    t: 256,
                },
                Counts::Router,
            ),
            c(
                Op::Finalize {
                    m: 256,
                    k: DSV3_K,
                    topk: DSV3_TOPK,
                    e: 32,
                    t: 256,
                },
                Counts::Router,
            ),
            c(
                Op::BlockQuant {
                    e: 4,
                    r: 2 * DSV3_I,
                    c: DSV3_K,
                },
                Counts::AllLive,
            ),
        ],
        Suite::Stage => [(8, 64), (32, 16)]
            .into_iter()
            .map(|(e, t)| {
                c(
                    Op::Stage {
                        e,
                        t,
                        k: DSV3_K,
                        i: DSV3_I,
                    },
                    Counts::Router,
                )
            })
            .collect(),
        Suite::Layer => Vec::new(),
    }
}

/// Parses `--shape`: `gemm:E,T,N,K`, `silu:E,T,H`, `stage:E,T,K,I`, `prepare:M,K,TOPK,E,T`,
/// `finalize:M,K,TOPK,E,T` or `block-quant:E,R,C`.
pub fn parse_shape(s: &str) -> Result<Op, InputError> {
    let bad = |why: &str| {
        InputError::Usage(format!(
            "--shape `{s}`: {why} (e.g. gemm:8,64,4096,7168, silu:8,64,2048, stage:8,64,7168,2048)"
        ))
    };
    let (kind, rest) = s.split_once(':').ok_or_else(|| bad("expected KIND:dims"))?;
    let v: Vec<usize> = rest
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| bad("every dimension must be a positive integer"))
        })
        .collect::<Result<_, _>>()?;
    if v.contains(&0) {
        return Err(bad("every dimension must be positive"));
    }
    let want = |n: usize| {
        if v.len() == n {
            Ok(())
        } else {
            Err(bad(&format!("`{kind}` takes {n} dimensions")))
        }
    };
    let m128 = |x: usize, what: &str| {
        if x % GROUP == 0 {
            Ok(())
        } else {
            Err(bad(&format!("{what} must be a multiple of 128")))
        }
    };
    Ok(match kind {
        "gemm" => {
            want(4)?;
            m128(v[2], "N")?;
            m128(v[3], "K")?;
            Op::Gemm {
                e: v[0],
                t: v[1],
                n: v[2],
                k: v[3],
            }
        }
        "silu" => {
            want(3)?;
            m128(v[2], "H")?;
            Op::Silu { e: v[0], t: v[1], h: v[2] }
        }
        "stage" => {
            want(4)?;
            m128(v[2], "K")?;
            m128(v[3], "I")?;
            Op::Stage {
                e: v[0],
                t: v[1],
                k: v[2],
                i: v[3],
            }
        }
        "prepare" | "finalize" => {
            want(5)?;
            m128(v[1], "K")?;
            let (m, k, topk, e, t) = (v[0], v[1], v[2], v[3], v[4]);
            if kind == "prepare" {
                Op::Prepare { m, k, topk, e, t }
            } else {
                Op::Finalize { m, k, topk, e, t }
            }
        }
        "block-quant" => {
            want(3)?;
            Op::BlockQuant { e: v[0], r: v[1], c: v[2] }
        }
        _ => return Err(bad("unknown kind")),
    })
}

/// The work of one case: FLOPs and the bytes that must move, given its live counts (the
/// formulas of `docs/benchmarks.md`). `routed` is the number of live (token, expert) slots of
/// prepare and finalize.
pub fn work(op: &Op, counts: &[i32]) -> (f64, f64) {
    let live: f64 = counts.iter().map(|&c| c.max(0) as f64).sum();
    let active = counts.iter().filter(|&&c| c > 0).count() as f64;
    let f = |x: usize| x as f64;
    match *op {
        Op::Gemm { n, k, .. } => {
            let flops = 2.0 * live * f(n) * f(k);
            let a = live * f(k) + live * f(k / GROUP) * 4.0;
            let b = active * (f(n) * f(k) + f(n / GROUP) * f(k / GROUP) * 4.0);
            (flops, a + b + live * f(n) * 2.0)
        }
        Op::Silu { h, .. } => (0.0, live * (f(2 * h) * 2.0 + f(h) + f(h / GROUP) * 4.0)),
        Op::Prepare { k, .. } => (0.0, live * (f(k) * 2.0 + f(k) + f(k / GROUP) * 4.0)),
        Op::Finalize { m, k, topk, .. } => (2.0 * live * f(k), live * f(k) * 2.0 + f(m) * f(k) * 2.0 + f(m * topk) * 12.0),
        Op::BlockQuant { e, r, c } => (
            0.0,
            f(e) * f(r) * f(c) * 3.0 + f(e) * f(r.div_ceil(GROUP)) * f(c.div_ceil(GROUP)) * 4.0,
        ),
        Op::Stage { k, i, .. } => {
            let w = f(2 * i) * f(k) + f(k) * f(i) + (f(2 * i / GROUP) * f(k / GROUP) + f(k / GROUP) * f(i / GROUP)) * 4.0;
            let flops = 2.0 * live * (f(2 * i) * f(k) + f(k) * f(i));
            (flops, active * w + live * (f(k) + f(k / GROUP) * 4.0 + f(k) * 2.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_distribution_stays_in_range() {
        let mut rng = Rng::new(3);
        for d in Counts::ALL {
            for (e, t) in [(1, 1), (8, 64), (256, 16), (3, 1024)] {
                let c = d.draw(&mut rng, e, t);
                assert_eq!(c.len(), e, "{d:?}");
                assert!(c.iter().all(|&x| (0..=t as i32).contains(&x)), "{d:?} {c:?}");
            }
            assert_eq!(Counts::from_name(d.name()), Some(d));
        }
        assert_eq!(Counts::AllLive.draw(&mut rng, 3, 5), vec![5, 5, 5]);
        let around = Counts::AroundMean.draw(&mut rng, 64, 256);
        assert!(around.iter().all(|&x| (134..=250).contains(&x)), "{around:?}");
    }

    #[test]
    fn router_counts_average_near_eight_tenths_of_capacity() {
        let c = Counts::Router.draw(&mut Rng::new(9), 32, 16);
        let mean = c.iter().sum::<i32>() as f64 / 32.0;
        assert!((10.0..=16.0).contains(&mean), "{mean}");
    }

    #[test]
    fn suites_have_the_issue_shapes() {
        assert_eq!(suite_cases(Suite::Deepgemm).len(), 12);
        assert_eq!(suite_cases(Suite::Decode).len(), 18);
        assert_eq!(suite_cases(Suite::Silu).len(), 3);
        assert_eq!(suite_cases(Suite::Stage).len(), 2);
        assert!(suite_cases(Suite::Layer).is_empty());
        for s in Suite::ALL {
            assert_eq!(Suite::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn shapes_parse_and_reject_bad_dims() {
        assert_eq!(
            parse_shape("gemm:8,64,4096,7168").unwrap(),
            Op::Gemm {
                e: 8,
                t: 64,
                n: 4096,
                k: 7168
            }
        );
        assert_eq!(parse_shape("silu:8,64,2048").unwrap(), Op::Silu { e: 8, t: 64, h: 2048 });
        for bad in [
            "gemm:8,64,4096",
            "gemm:8,64,4000,7168",
            "silu:0,1,128",
            "x:1",
            "gemm",
            "stage:1,2,128,x",
        ] {
            assert!(parse_shape(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gemm_work_counts_live_rows_and_active_experts_only() {
        let op = Op::Gemm {
            e: 3,
            t: 4,
            n: 128,
            k: 256,
        };
        let (flops, bytes) = work(&op, &[4, 0, 1]);
        assert_eq!(flops, 2.0 * 5.0 * 128.0 * 256.0);
        let a = 5.0 * 256.0 + 5.0 * 2.0 * 4.0;
        let b = 2.0 * (128.0 * 256.0 + 2.0 * 4.0);
        assert_eq!(bytes, a + b + 5.0 * 128.0 * 2.0);
        assert_eq!(
            op.shrink(2),
            Op::Gemm {
                e: 1,
                t: 2,
                n: 128,
                k: 128
            }
        );
    }
}
