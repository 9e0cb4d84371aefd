//! `config.json`: the model settings the MoE layers need (SPEC §4.1), read and validated.

use moe_core::{ProblemError, Route, RouterConfig, Scoring};
use serde_json::{Map, Value};

use super::error::CheckpointError;

/// The settings of a Hugging Face MoE model that the expert layers need (SPEC §4.1), read from
/// its `config.json` by [`ModelConfig::from_json`], which validates them: a `ModelConfig` built
/// that way has `K` and `I` positive multiples of 128, router settings that [`Route::new`]
/// accepts, and layer rules that divide by no zero.
///
/// Both families' layer rules are kept, so that [`ModelConfig::is_moe_layer`] answers like the
/// model's own code: DeepSeek's `first_k_dense_replace` and `moe_layer_freq`, Qwen's
/// `decoder_sparse_step` and `mlp_only_layers` (each family's keys are absent from the other's
/// config and default to values that select every layer).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Hidden size `K` (`hidden_size`).
    pub hidden_size: usize,
    /// Intermediate size `I` of one routed expert (`moe_intermediate_size`).
    pub moe_intermediate_size: usize,
    /// Routed experts `Eg` (`n_routed_experts`, or `num_experts` in Qwen configs).
    pub n_routed_experts: usize,
    /// Experts per token `k` (`num_experts_per_tok`).
    pub num_experts_per_tok: usize,
    /// Shared experts, fused into one MLP of intermediate size `n_shared_experts · I`
    /// (`n_shared_experts`; 0 if absent).
    pub n_shared_experts: usize,
    /// Expert groups `G` (`n_group`; 1 if absent, and 1 under `topk_method = "greedy"`).
    pub n_group: usize,
    /// Groups kept per token (`topk_group`; 1 if absent, and 1 under `topk_method = "greedy"`).
    pub topk_group: usize,
    /// The factor the router's weights are multiplied by (`routed_scaling_factor`; 1.0 if absent).
    pub routed_scaling_factor: f32,
    /// Whether the router's weights are divided by their sum (`norm_topk_prob`; false if absent).
    pub norm_topk_prob: bool,
    /// How logits become scores (`scoring_func`: `sigmoid` or `softmax`; softmax if absent).
    pub scoring: Scoring,
    /// Whether the gate has a choice bias `e_score_correction_bias` (`topk_method = "noaux_tc"`).
    pub has_bias: bool,
    /// The first layers, dense (`first_k_dense_replace`; 0 if absent).
    pub first_k_dense_replace: usize,
    /// Every `moe_layer_freq`-th layer is MoE, counted from layer 0 (`moe_layer_freq`; 1 if absent).
    pub moe_layer_freq: usize,
    /// Qwen's rule: layer `l` is MoE when `(l + 1) % decoder_sparse_step == 0`
    /// (`decoder_sparse_step`; 1 if absent).
    pub decoder_sparse_step: usize,
    /// Qwen's dense layers (`mlp_only_layers`; none if absent).
    pub mlp_only_layers: Vec<usize>,
    /// Layers of the model (`num_hidden_layers`).
    pub num_hidden_layers: usize,
}

impl ModelConfig {
    /// Whether layer `layer` has a mixture-of-experts MLP: it exists, and none of the rules of
    /// the model's own code makes it dense.
    ///
    /// DeepSeek-V2/V3 (Hugging Face's `DeepseekV3DecoderLayer` and vLLM's `deepseek_v2.py`
    /// alike) use `layer >= first_k_dense_replace && layer % moe_layer_freq == 0`; Qwen2/3-MoE
    /// use `layer ∉ mlp_only_layers && (layer + 1) % decoder_sparse_step == 0`. A config holds
    /// the keys of one family, the others keeping defaults that hold for every layer, so the
    /// conjunction of both answers for either.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer < self.num_hidden_layers && self.dense_reason(layer).is_none()
    }

    /// The rule that makes an existing layer dense, for messages.
    pub(super) fn dense_reason(&self, layer: usize) -> Option<String> {
        if layer < self.first_k_dense_replace {
            Some(format!(
                "layers below first_k_dense_replace = {} are dense",
                self.first_k_dense_replace
            ))
        } else if layer.checked_rem(self.moe_layer_freq) != Some(0) {
            Some(format!("only multiples of moe_layer_freq = {} are MoE", self.moe_layer_freq))
        } else if layer.checked_rem(self.decoder_sparse_step) != Some(self.decoder_sparse_step.wrapping_sub(1)) {
            // `(layer + 1) % step == 0`, without overflowing at `usize::MAX`.
            Some(format!(
                "only layers l with (l + 1) a multiple of decoder_sparse_step = {} are MoE",
                self.decoder_sparse_step
            ))
        } else if self.mlp_only_layers.contains(&layer) {
            Some("it is listed in mlp_only_layers".into())
        } else {
            None
        }
    }

    /// The router's settings (SPEC §5.6).
    pub fn router(&self) -> RouterConfig {
        RouterConfig {
            topk: self.num_experts_per_tok,
            scoring: self.scoring,
            n_group: self.n_group,
            topk_group: self.topk_group,
            renormalize: self.norm_topk_prob,
            routed_scaling_factor: self.routed_scaling_factor,
            bias: self.has_bias,
        }
    }

    /// Intermediate size of the fused shared expert, `n_shared_experts · I` (0: none).
    pub fn shared_intermediate_size(&self) -> usize {
        self.n_shared_experts.saturating_mul(self.moe_intermediate_size)
    }

    /// Reads and validates the text of a `config.json`; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, CheckpointError> {
        let v: Value = serde_json::from_str(text).map_err(|e| CheckpointError::Json {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
        let Value::Object(obj) = v else {
            return Err(CheckpointError::Json {
                file: file.to_string(),
                reason: "the top level is not an object".into(),
            });
        };
        let keys = Keys { obj: &obj, file };
        let eg = match (keys.opt_usize("n_routed_experts")?, keys.opt_usize("num_experts")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(keys.bad("num_experts", b, format!("disagrees with n_routed_experts = {a}")));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(keys.missing("n_routed_experts")),
        };
        let scoring = match keys.opt_str("scoring_func")? {
            None => Scoring::Softmax,
            Some(s) => Scoring::from_name(s).ok_or_else(|| keys.bad("scoring_func", s, "must be \"sigmoid\" or \"softmax\"".into()))?,
        };
        let topk_method = keys.opt_str("topk_method")?;
        let greedy = match topk_method {
            None | Some("group_limited_greedy") | Some("noaux_tc") => false,
            Some("greedy") => true,
            Some(m) => {
                return Err(keys.bad(
                    "topk_method",
                    m,
                    "must be \"greedy\", \"group_limited_greedy\" or \"noaux_tc\"".into(),
                ))
            }
        };
        let (n_group, topk_group) = if greedy {
            (1, 1)
        } else {
            (keys.opt_usize("n_group")?.unwrap_or(1), keys.opt_usize("topk_group")?.unwrap_or(1))
        };
        let cfg = ModelConfig {
            hidden_size: keys.usize("hidden_size")?,
            moe_intermediate_size: keys.usize("moe_intermediate_size")?,
            n_routed_experts: eg,
            num_experts_per_tok: keys.usize("num_experts_per_tok")?,
            n_shared_experts: keys.opt_usize("n_shared_experts")?.unwrap_or(0),
            n_group,
            topk_group,
            routed_scaling_factor: keys.opt_f32("routed_scaling_factor")?.unwrap_or(1.0),
            norm_topk_prob: keys.opt_bool("norm_topk_prob")?.unwrap_or(false),
            scoring,
            has_bias: topk_method == Some("noaux_tc"),
            first_k_dense_replace: keys.opt_usize("first_k_dense_replace")?.unwrap_or(0),
            moe_layer_freq: keys.opt_usize("moe_layer_freq")?.unwrap_or(1),
            decoder_sparse_step: keys.opt_usize("decoder_sparse_step")?.unwrap_or(1),
            mlp_only_layers: keys.opt_usize_list("mlp_only_layers")?,
            num_hidden_layers: keys.usize("num_hidden_layers")?,
        };
        cfg.validate(&keys)?;
        check_quantization(&keys)?;
        Ok(cfg)
    }

    fn validate(&self, keys: &Keys<'_>) -> Result<(), CheckpointError> {
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("moe_intermediate_size", self.moe_intermediate_size),
        ] {
            if v == 0 || v % 128 != 0 {
                return Err(keys.bad(key, v, "must be a positive multiple of 128 (SPEC §1)".into()));
            }
        }
        for (key, v) in [
            ("n_routed_experts", self.n_routed_experts),
            ("num_hidden_layers", self.num_hidden_layers),
            ("moe_layer_freq", self.moe_layer_freq),
            ("decoder_sparse_step", self.decoder_sparse_step),
        ] {
            if v == 0 {
                return Err(keys.bad(key, v, "must be at least 1".into()));
            }
        }
        // The largest buffers of a layer must have a size: w1 (Eg, 2I, K) and the shared w1.
        let (k, i) = (self.hidden_size, self.moe_intermediate_size);
        let fits = |n: usize| {
            n.checked_mul(2)
                .and_then(|x| x.checked_mul(i))
                .and_then(|x| x.checked_mul(k))
                .is_some()
        };
        if !fits(self.n_routed_experts) {
            return Err(keys.bad(
                "n_routed_experts",
                self.n_routed_experts,
                "makes a layer's weights too large to address".into(),
            ));
        }
        if !fits(self.n_shared_experts) {
            return Err(keys.bad(
                "n_shared_experts",
                self.n_shared_experts,
                "makes the shared expert too large to address".into(),
            ));
        }
        // The router's rules have one owner, moe-core's `Route`; its settings are named by key.
        match Route::new(0, self.n_routed_experts, self.router()) {
            Ok(_) => Ok(()),
            Err(ProblemError::RouterSetting { setting, got, rule }) => {
                let key = match setting {
                    "topk" => "num_experts_per_tok",
                    other => other,
                };
                Err(keys.bad(key, got, rule))
            }
            Err(e) => Err(keys.bad("n_routed_experts", self.n_routed_experts, e.to_string())),
        }
    }
}

/// `quantization_config`, when present, must describe the FP8 128×128 blocks of SPEC §4.
fn check_quantization(keys: &Keys<'_>) -> Result<(), CheckpointError> {
    let Some(q) = keys.obj.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(());
    };
    let Some(q) = q.as_object() else {
        return Err(keys.bad("quantization_config", q, "must be an object".into()));
    };
    if let Some(m) = q.get("quant_method").filter(|m| !m.is_null()) {
        if m.as_str() != Some("fp8") {
            return Err(keys.bad(
                "quantization_config.quant_method",
                m,
                "only \"fp8\" (128x128 block scales) or unquantized BF16 checkpoints are supported".into(),
            ));
        }
    }
    if let Some(b) = q.get("weight_block_size").filter(|b| !b.is_null()) {
        let ok = b
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.as_u64() == Some(128)));
        if !ok {
            return Err(keys.bad("quantization_config.weight_block_size", b, "must be [128, 128] (SPEC §4)".into()));
        }
    }
    Ok(())
}

/// Typed access to the keys of a config object; `null` counts as absent.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    file: &'a str,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> CheckpointError {
        CheckpointError::MissingKey {
            file: self.file.to_string(),
            key: key.to_string(),
        }
    }

    fn bad(&self, key: &str, got: impl std::fmt::Display, rule: String) -> CheckpointError {
        CheckpointError::BadKey {
            file: self.file.to_string(),
            key: key.to_string(),
            got: got.to_string(),
            rule,
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, CheckpointError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.bad(key, v, "must be a non-negative integer".into()))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize, CheckpointError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, CheckpointError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.bad(key, v, "must be a number".into()))
            })
            .transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, CheckpointError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(key, v, "must be true or false".into())))
            .transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, CheckpointError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, v, "must be a string".into())))
            .transpose()
    }

    fn opt_usize_list(&self, key: &str) -> Result<Vec<usize>, CheckpointError> {
        let Some(v) = self.get(key) else { return Ok(Vec::new()) };
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.bad(key, v, "must be a list of non-negative integers".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEEPSEEK_V3: &str = r#"{
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "hidden_size": 7168, "moe_intermediate_size": 2048, "n_routed_experts": 256,
        "num_experts_per_tok": 8, "n_shared_experts": 1, "n_group": 8, "topk_group": 4,
        "routed_scaling_factor": 2.5, "norm_topk_prob": true, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc", "first_k_dense_replace": 3, "moe_layer_freq": 1,
        "num_hidden_layers": 61,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    }"#;

    #[test]
    fn deepseek_v3_config_gives_its_router_and_layers() {
        let c = ModelConfig::from_json(DEEPSEEK_V3, "config.json").unwrap();
        assert_eq!(c.router(), {
            let mut r = RouterConfig::new(8, Scoring::Sigmoid);
            r.n_group = 8;
            r.topk_group = 4;
            r.renormalize = true;
            r.routed_scaling_factor = 2.5;
            r.bias = true;
            r
        });
        assert_eq!(c.shared_intermediate_size(), 2048);
        assert!(!c.is_moe_layer(2) && c.is_moe_layer(3) && c.is_moe_layer(60) && !c.is_moe_layer(61));
    }

    #[test]
    fn qwen_layer_rule_counts_from_one() {
        let text = r#"{"hidden_size": 128, "moe_intermediate_size": 128, "num_experts": 8, "num_experts_per_tok": 2,
                       "num_hidden_layers": 6, "decoder_sparse_step": 2, "mlp_only_layers": [3]}"#;
        let c = ModelConfig::from_json(text, "config.json").unwrap();
        let moe: Vec<usize> = (0..7).filter(|&l| c.is_moe_layer(l)).collect();
        assert_eq!(moe, vec![1, 5]);
        assert_eq!(
            (c.scoring, c.n_group, c.n_shared_experts, c.has_bias),
            (Scoring::Softmax, 1, 0, false)
        );
    }

    #[test]
    fn greedy_topk_method_ignores_groups() {
        let text = r#"{"hidden_size": 128, "moe_intermediate_size": 128, "n_routed_experts": 6, "num_experts_per_tok": 4,
                       "num_hidden_layers": 1, "n_group": 3, "topk_group": 1, "topk_method": "greedy"}"#;
        let c = ModelConfig::from_json(text, "config.json").unwrap();
        assert_eq!((c.n_group, c.topk_group), (1, 1));
    }

    #[test]
    fn hand_built_configs_never_divide_by_zero_or_overflow() {
        let mut c = ModelConfig::from_json(DEEPSEEK_V3, "config.json").unwrap();
        assert!(!c.is_moe_layer(usize::MAX));
        c.num_hidden_layers = usize::MAX;
        assert!(c.is_moe_layer(usize::MAX - 1));
        c.moe_layer_freq = 0;
        c.decoder_sparse_step = 0;
        assert!(!c.is_moe_layer(5));
    }
}
