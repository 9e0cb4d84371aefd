//! The router (SPEC §5.6): gate logits `(M, Eg)` to `topk_ids` and `topk_weights (M, k)`.
//!
//! [`Route`] is the validated problem; [`RouterConfig`] the settings it is built from (the
//! checkpoint's config of SPEC §4.1); [`rank_key`] the total order every backend selects by.

use super::checks::{at_least, check_len, product, Result};
use crate::error::ProblemError;

/// How gate logits become scores (`scoring_func` of SPEC §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scoring {
    /// `s_e = 1 / (1 + exp_f32(-l_e))` (DeepSeek-V3).
    Sigmoid,
    /// `s_e = exp_f32(l_e - max l) / Σ_e exp_f32(l_e - max l)`, summed in increasing `e`
    /// (Qwen3-MoE, Mixtral).
    Softmax,
}

impl Scoring {
    /// Both scorings.
    pub const ALL: [Scoring; 2] = [Scoring::Sigmoid, Scoring::Softmax];

    /// The command-line and config name (`sigmoid`, `softmax`).
    pub fn name(self) -> &'static str {
        match self {
            Scoring::Sigmoid => "sigmoid",
            Scoring::Softmax => "softmax",
        }
    }

    /// Parses a command-line or config name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

impl std::fmt::Display for Scoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The router's settings (SPEC §4.1, §5.6): a plain input struct, validated by [`Route::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    /// Experts per token `k` (`num_experts_per_tok`).
    pub topk: usize,
    /// How logits become scores (`scoring_func`).
    pub scoring: Scoring,
    /// Groups of contiguous experts `G` (`n_group`; 1: no group selection).
    pub n_group: usize,
    /// Groups kept per token `TG` (`topk_group`).
    pub topk_group: usize,
    /// Divide the weights by their sum (`norm_topk_prob`).
    pub renormalize: bool,
    /// The factor every weight is multiplied by last (`routed_scaling_factor`).
    pub routed_scaling_factor: f32,
    /// Whether a choice bias `(Eg)` is given (`topk_method = noaux_tc`); it also makes a group's
    /// score the sum of its two largest choice scores instead of the largest.
    pub bias: bool,
}

impl RouterConfig {
    /// `topk` experts by `scoring`: no groups, no renormalization, scaling factor 1, no bias.
    pub fn new(topk: usize, scoring: Scoring) -> Self {
        Self {
            topk,
            scoring,
            n_group: 1,
            topk_group: 1,
            renormalize: false,
            routed_scaling_factor: 1.0,
            bias: false,
        }
    }

    /// DeepSeek-V3/R1's router: sigmoid with the `noaux_tc` bias, 8 groups, top-4 groups,
    /// top-8, renormalized, scaled by 2.5.
    pub fn deepseek_v3() -> Self {
        Self {
            n_group: 8,
            topk_group: 4,
            renormalize: true,
            routed_scaling_factor: 2.5,
            bias: true,
            ..Self::new(8, Scoring::Sigmoid)
        }
    }

    /// Qwen3-MoE's router: softmax, no groups, no bias, top-8, renormalized.
    pub fn qwen3_moe() -> Self {
        Self {
            renormalize: true,
            ..Self::new(8, Scoring::Softmax)
        }
    }
}

/// The router of `M` tokens over `Eg` experts (SPEC §5.6), validated.
///
/// Every setting is in range: `k >= 1`, `G >= 1` divides `Eg`, `1 <= TG <= G`, `k` at most the
/// `TG·Eg/G` experts the group selection leaves, groups of at least two experts when a bias
/// makes the group score a top-2 sum, and a finite, non-negative scaling factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    m: usize,
    experts: usize,
    cfg: RouterConfig,
}

fn setting(setting: &'static str, got: impl std::fmt::Display, rule: String) -> ProblemError {
    ProblemError::RouterSetting {
        setting,
        got: got.to_string(),
        rule,
    }
}

impl Route {
    /// `tokens` rows of `experts` logits routed with `cfg`; any `M` (0 is an empty batch),
    /// `Eg >= 1`; the errors name the setting and the rule it breaks.
    pub fn new(tokens: usize, experts: usize, cfg: RouterConfig) -> Result<Self> {
        at_least("logits", "Eg", experts, 1)?;
        // Ids are i32.
        if experts > i32::MAX as usize {
            return Err(ProblemError::TooLarge {
                tensor: "logits",
                elements: experts as u128,
            });
        }
        let RouterConfig {
            topk,
            n_group: g,
            topk_group: tg,
            routed_scaling_factor: f,
            ..
        } = cfg;
        if topk == 0 {
            return Err(setting("topk", topk, "must be at least 1".into()));
        }
        if g == 0 || experts % g != 0 {
            return Err(setting("n_group", g, format!("must divide the {experts} experts")));
        }
        if tg == 0 || tg > g {
            return Err(setting("topk_group", tg, format!("must be in [1, n_group = {g}]")));
        }
        if cfg.bias && g > 1 && experts / g < 2 {
            return Err(setting(
                "n_group",
                g,
                format!("leaves groups of one of the {experts} experts, which have no top-2 sum (a bias makes the group score the sum of the two largest)"),
            ));
        }
        let left = tg * (experts / g);
        if topk > left {
            return Err(setting(
                "topk",
                topk,
                format!(
                    "more than the {left} experts left after group selection (topk_group {tg} of n_group {g} groups of {})",
                    experts / g
                ),
            ));
        }
        if !f.is_finite() || f < 0.0 {
            return Err(setting("routed_scaling_factor", f, "must be finite and at least 0".into()));
        }
        product("logits", &[tokens, experts])?;
        product("topk_ids", &[tokens, topk])?;
        Ok(Self { m: tokens, experts, cfg })
    }
    /// Number of tokens `M`.
    pub fn tokens(&self) -> usize {
        self.m
    }
    /// Number of experts `Eg` (global ids `0..Eg`).
    pub fn experts(&self) -> usize {
        self.experts
    }
    /// The settings.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }
    /// Experts per token `k`.
    pub fn topk(&self) -> usize {
        self.cfg.topk
    }
    /// How logits become scores.
    pub fn scoring(&self) -> Scoring {
        self.cfg.scoring
    }
    /// Groups `G` (1: no group selection).
    pub fn n_group(&self) -> usize {
        self.cfg.n_group
    }
    /// Groups kept per token `TG`.
    pub fn topk_group(&self) -> usize {
        self.cfg.topk_group
    }
    /// Experts per group, `Eg / G`.
    pub fn group_size(&self) -> usize {
        self.experts / self.cfg.n_group
    }
    /// Whether the weights are divided by their sum.
    pub fn renormalize(&self) -> bool {
        self.cfg.renormalize
    }
    /// The factor every weight is multiplied by last.
    pub fn routed_scaling_factor(&self) -> f32 {
        self.cfg.routed_scaling_factor
    }
    /// Whether a bias `(Eg)` is given.
    pub fn has_bias(&self) -> bool {
        self.cfg.bias
    }
    /// Validates the buffers: `logits (M, Eg)`, `bias (Eg)` exactly when [`Route::has_bias`]
    /// (a bias the problem does not expect is a buffer of the wrong length, 0), `topk_ids` and
    /// `topk_weights (M, k)`.
    pub fn check(&self, logits: &[f32], bias: Option<&[f32]>, topk_ids: &[i32], topk_weights: &[f32]) -> Result<()> {
        let (m, eg, k) = (self.m, self.experts, self.cfg.topk);
        check_len("logits", logits.len(), &[m, eg])?;
        check_len("bias", bias.map_or(0, <[f32]>::len), &[if self.cfg.bias { eg } else { 0 }])?;
        check_len("topk_ids", topk_ids.len(), &[m, k])?;
        check_len("topk_weights", topk_weights.len(), &[m, k])
    }
    /// The data check of SPEC §5.6: the first NaN of `logits (M, Eg)` in (token, expert) order
    /// is [`ProblemError::NanLogit`], the error every backend returns for it.
    pub fn check_logits(&self, logits: &[f32]) -> Result<()> {
        match logits.iter().position(|l| l.is_nan()) {
            None => Ok(()),
            Some(i) => Err(ProblemError::NanLogit {
                token: i / self.experts,
                expert: i % self.experts,
            }),
        }
    }
}

/// The router's total order as one integer (SPEC §5.6): a larger key ranks first.
///
/// The high half orders the score `c` (`-0` equals `+0`, NaN below every number, `-inf`
/// included), the low half is `!index`, so that equal scores go to the lower index. Keys of
/// distinct indices are distinct. `CpuBackend` and the CUDA kernel select by it; `NaiveCpu`
/// compares the floats as the spec words it, and a test ties both together.
#[inline]
pub fn rank_key(c: f32, index: u32) -> u64 {
    let order = if c.is_nan() {
        0
    } else {
        let bits = if c == 0.0 { 0 } else { c.to_bits() };
        if bits >> 31 == 1 {
            !bits
        } else {
            bits | 0x8000_0000
        }
    };
    (u64::from(order) << 32) | u64::from(!index)
}

/// The index a [`rank_key`] was made with.
#[inline]
pub fn rank_index(key: u64) -> usize {
    !(key as u32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds_v3() -> RouterConfig {
        RouterConfig::deepseek_v3()
    }

    fn setting_of(r: Result<Route>) -> &'static str {
        match r {
            Err(ProblemError::RouterSetting { setting, .. }) => setting,
            other => panic!("expected a router setting error, got {other:?}"),
        }
    }

    #[test]
    fn deepseek_and_qwen_configs_are_valid() {
        let p = Route::new(3, 256, ds_v3()).unwrap();
        assert_eq!((p.tokens(), p.experts(), p.group_size(), p.topk_group()), (3, 256, 32, 4));
        let q = Route::new(0, 128, RouterConfig::qwen3_moe()).unwrap();
        assert_eq!((q.n_group(), q.group_size(), q.has_bias()), (1, 128, false));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cfg = ds_v3();
        assert_eq!(setting_of(Route::new(1, 256, RouterConfig { topk: 0, ..cfg })), "topk");
        assert_eq!(setting_of(Route::new(1, 250, cfg)), "n_group");
        assert_eq!(setting_of(Route::new(1, 256, RouterConfig { n_group: 0, ..cfg })), "n_group");
        assert_eq!(setting_of(Route::new(1, 256, RouterConfig { topk_group: 0, ..cfg })), "topk_group");
        assert_eq!(setting_of(Route::new(1, 256, RouterConfig { topk_group: 9, ..cfg })), "topk_group");
        // 4 groups of 4 experts leave 16: top-17 is too many, top-16 is fine.
        let small = RouterConfig { topk: 17, ..cfg };
        let err = Route::new(1, 32, small).unwrap_err();
        assert!(err.to_string().contains("16 experts left"), "{err}");
        assert!(Route::new(1, 32, RouterConfig { topk: 16, ..cfg }).is_ok());
        // Groups of one expert have no top-2 sum with a bias; without one they are fine.
        assert_eq!(setting_of(Route::new(1, 8, cfg)), "n_group");
        assert!(Route::new(
            1,
            8,
            RouterConfig {
                bias: false,
                topk: 4,
                ..cfg
            }
        )
        .is_ok());
        for f in [f32::NAN, f32::INFINITY, -1.0, -f32::MIN_POSITIVE] {
            let e = setting_of(Route::new(
                1,
                256,
                RouterConfig {
                    routed_scaling_factor: f,
                    ..cfg
                },
            ));
            assert_eq!(e, "routed_scaling_factor", "{f}");
        }
        assert!(Route::new(
            1,
            256,
            RouterConfig {
                routed_scaling_factor: 0.0,
                ..cfg
            }
        )
        .is_ok());
        assert!(matches!(
            Route::new(1, 0, cfg),
            Err(ProblemError::TooSmall {
                tensor: "logits",
                dim: "Eg",
                ..
            })
        ));
    }

    #[test]
    fn buffers_and_nan_logits_are_named() {
        let p = Route::new(
            2,
            16,
            RouterConfig {
                bias: true,
                ..RouterConfig::new(2, Scoring::Softmax)
            },
        )
        .unwrap();
        let (l, b, ids, w) = (vec![0f32; 32], vec![0f32; 16], vec![0i32; 4], vec![0f32; 4]);
        assert!(p.check(&l, Some(&b), &ids, &w).is_ok());
        let tensor = |r: Result<()>| r.unwrap_err().tensor().to_string();
        assert_eq!(tensor(p.check(&l[1..], Some(&b), &ids, &w)), "logits");
        assert_eq!(tensor(p.check(&l, None, &ids, &w)), "bias");
        assert_eq!(tensor(p.check(&l, Some(&b), &ids[1..], &w)), "topk_ids");
        assert_eq!(tensor(p.check(&l, Some(&b), &ids, &w[1..])), "topk_weights");
        let q = Route::new(2, 16, RouterConfig::new(2, Scoring::Softmax)).unwrap();
        assert_eq!(tensor(q.check(&l, Some(&b), &ids, &w)), "bias");
        assert!(q.check(&l, None, &ids, &w).is_ok());
        let mut l = l;
        l[16 + 5] = f32::NAN;
        l[16 + 9] = f32::NAN;
        assert_eq!(p.check_logits(&l), Err(ProblemError::NanLogit { token: 1, expert: 5 }));
        l[3] = -f32::NAN;
        let err = p.check_logits(&l).unwrap_err();
        assert_eq!(err, ProblemError::NanLogit { token: 0, expert: 3 });
        assert_eq!(err.tensor(), "logits");
        assert!(err.to_string().contains("token 0"), "{err}");
    }

    /// The spec's comparison, as `NaiveCpu` writes it.
    fn ranks_above(a: f32, ia: u32, b: f32, ib: u32) -> bool {
        match (a.is_nan(), b.is_nan()) {
            (false, false) => a > b || (a == b && ia < ib),
            (false, true) => true,
            (true, false) => false,
            (true, true) => ia < ib,
        }
    }

    #[test]
    fn rank_key_orders_like_the_spec_comparison() {
        let vals = [
            f32::NAN,
            -f32::NAN,
            f32::NEG_INFINITY,
            -f32::MAX,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            1.0000001,
            f32::MAX,
            f32::INFINITY,
        ];
        for (i, &a) in vals.iter().enumerate() {
            for (j, &b) in vals.iter().enumerate() {
                for (ia, ib) in [(3u32, 7u32), (7, 3), (0, 4095)] {
                    let (ka, kb) = (rank_key(a, ia), rank_key(b, ib));
                    assert_eq!(ka > kb, ranks_above(a, ia, b, ib), "{a} #{ia} vs {b} #{ib} ({i}, {j})");
                }
            }
            assert_eq!(rank_index(rank_key(a, 4095)), 4095);
        }
        assert!(rank_key(f32::NAN, 0) > 0 && rank_key(f32::NAN, u32::MAX - 1) > 0);
    }
}
