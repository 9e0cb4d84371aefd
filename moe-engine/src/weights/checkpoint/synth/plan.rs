//! A synthetic checkpoint's contents: its `config.json` and the list of its tensors (names,
//! dtypes, shapes and value sources), in the order they are written.

use safetensors::Dtype;
use serde_json::{json, Map, Value};

use super::source::{name_stream, Source};
use super::{Family, SynthSpec, Values, WeightDtype};
use crate::weights::synth::key;

/// One tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub source: Source,
}

impl Planned {
    /// Its data's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.bitsize() as u64 / 8
    }
}

struct Planner<'a> {
    spec: &'a SynthSpec,
    dtype: WeightDtype,
    seed: u64,
    out: Vec<Planned>,
}

impl Planner<'_> {
    fn key(&self, name: &str) -> u64 {
        key(self.seed, name_stream(name))
    }

    fn push(&mut self, name: String, dtype: Dtype, shape: &[usize], source: Source) {
        self.out.push(Planned {
            name,
            dtype,
            shape: shape.to_vec(),
            source,
        });
    }

    /// A BF16 tensor of seeded values times `scale` (embeddings, the gate).
    fn bf16(&mut self, name: String, shape: &[usize], scale: f32) {
        let key = self.key(&name);
        self.push(name, Dtype::BF16, shape, Source::Bf16 { key, scale });
    }

    /// A linear layer's `(rows, cols)` weight: BF16, or E4M3 with its `weight_scale_inv`.
    fn linear(&mut self, prefix: &str, rows: usize, cols: usize) {
        let name = format!("{prefix}.weight");
        let key = self.key(&name);
        let scale = 1.0 / (cols as f32).sqrt();
        let sshape = [rows.div_ceil(128), cols.div_ceil(128)];
        let sname = format!("{prefix}.weight_scale_inv");
        match (self.dtype, self.spec.values) {
            (WeightDtype::Bf16, _) => self.push(name, Dtype::BF16, &[rows, cols], Source::Bf16 { key, scale }),
            (WeightDtype::Fp8, Values::Seeded) => {
                self.push(name, Dtype::F8_E4M3, &[rows, cols], Source::QuantQ { key, scale, rows, cols });
                self.push(sname, Dtype::F32, &sshape, Source::QuantS { key, scale, rows, cols });
            }
            (WeightDtype::Fp8, Values::Hashed) => {
                self.push(name, Dtype::F8_E4M3, &[rows, cols], Source::HashE4m3 { key });
                self.push(sname, Dtype::F32, &sshape, Source::HashScale { key: !key });
            }
        }
    }

    /// A gated MLP of intermediate size `n`: `gate_proj`, `up_proj` `(n, K)`, `down_proj` `(K, n)`.
    fn mlp(&mut self, prefix: &str, n: usize) {
        let k = self.spec.hidden_size;
        self.linear(&format!("{prefix}.gate_proj"), n, k);
        self.linear(&format!("{prefix}.up_proj"), n, k);
        self.linear(&format!("{prefix}.down_proj"), k, n);
    }

    fn moe_layer(&mut self, l: usize) {
        let s = self.spec;
        let p = format!("model.layers.{l}.mlp");
        self.bf16(
            format!("{p}.gate.weight"),
            &[s.experts, s.hidden_size],
            1.0 / (s.hidden_size as f32).sqrt(),
        );
        if s.noaux_tc {
            let name = format!("{p}.gate.e_score_correction_bias");
            let key = self.key(&name);
            self.push(name, Dtype::F32, &[s.experts], Source::F32 { key, scale: 0.01 });
        }
        for e in 0..s.experts {
            self.mlp(&format!("{p}.experts.{e}"), s.moe_intermediate_size);
        }
        if s.shared_experts > 0 {
            self.mlp(&format!("{p}.shared_experts"), s.shared_experts * s.moe_intermediate_size);
        }
    }
}

/// The tensors of `spec` in the order they are written: with `other_tensors`, the embeddings,
/// each layer's norms and the dense layers' MLPs, the final norm and `lm_head` around the MoE
/// layers; without, the MoE layers only.
pub(super) fn tensors(spec: &SynthSpec, dtype: WeightDtype, seed: u64) -> Vec<Planned> {
    let mut p = Planner {
        spec,
        dtype,
        seed,
        out: Vec::new(),
    };
    let k = spec.hidden_size;
    if spec.other_tensors {
        p.bf16("model.embed_tokens.weight".into(), &[spec.vocab_size, k], 1.0);
    }
    for l in 0..spec.num_hidden_layers {
        let moe = l >= spec.first_k_dense_replace;
        if spec.other_tensors {
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                p.push(format!("model.layers.{l}.{norm}.weight"), Dtype::BF16, &[k], Source::Ones);
            }
            if !moe {
                p.mlp(&format!("model.layers.{l}.mlp"), spec.dense_intermediate_size);
            }
        }
        if moe {
            p.moe_layer(l);
        }
    }
    if spec.other_tensors {
        p.push("model.norm.weight".into(), Dtype::BF16, &[k], Source::Ones);
        p.bf16("lm_head.weight".into(), &[spec.vocab_size, k], 1.0 / (k as f32).sqrt());
    }
    p.out
}

/// The `config.json` of `spec`, with the keys and names its family's real checkpoints use.
pub(super) fn config(spec: &SynthSpec, dtype: WeightDtype) -> Value {
    let mut c = Map::new();
    let mut set = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    let (arch, model_type) = match spec.family {
        Family::DeepseekV3 => ("DeepseekV3ForCausalLM", "deepseek_v3"),
        Family::Qwen3Moe => ("Qwen3MoeForCausalLM", "qwen3_moe"),
    };
    set("architectures", json!([arch]));
    set("model_type", json!(model_type));
    set("torch_dtype", json!("bfloat16"));
    set("hidden_act", json!("silu"));
    set("hidden_size", json!(spec.hidden_size));
    set("intermediate_size", json!(spec.dense_intermediate_size));
    set("moe_intermediate_size", json!(spec.moe_intermediate_size));
    set("num_experts_per_tok", json!(spec.topk));
    set("norm_topk_prob", json!(spec.norm_topk_prob));
    set("num_hidden_layers", json!(spec.num_hidden_layers));
    set("vocab_size", json!(spec.vocab_size));
    set("rms_norm_eps", json!(1e-6));
    set("tie_word_embeddings", json!(false));
    let deepseek = spec.family == Family::DeepseekV3;
    match spec.family {
        Family::DeepseekV3 => {
            set("n_routed_experts", json!(spec.experts));
            set("first_k_dense_replace", json!(spec.first_k_dense_replace));
            set("moe_layer_freq", json!(1));
        }
        Family::Qwen3Moe => {
            set("num_experts", json!(spec.experts));
            set("decoder_sparse_step", json!(1));
            set("mlp_only_layers", json!((0..spec.first_k_dense_replace).collect::<Vec<_>>()));
        }
    }
    // Qwen3-MoE configs carry none of DeepSeek's router keys; they are written only where a
    // spec departs from their defaults.
    if deepseek || spec.shared_experts > 0 {
        set("n_shared_experts", json!(spec.shared_experts));
    }
    if deepseek || spec.n_group > 1 || spec.topk_group > 1 {
        set("n_group", json!(spec.n_group));
        set("topk_group", json!(spec.topk_group));
    }
    if deepseek || spec.routed_scaling_factor != 1.0 {
        set("routed_scaling_factor", json!(spec.routed_scaling_factor));
    }
    if deepseek || spec.scoring != moe_core::Scoring::Softmax {
        set("scoring_func", json!(spec.scoring.name()));
    }
    let method = match (spec.noaux_tc, spec.n_group > 1) {
        (true, _) => Some("noaux_tc"),
        (false, true) => Some("group_limited_greedy"),
        (false, false) => deepseek.then_some("greedy"),
    };
    if let Some(m) = method {
        set("topk_method", json!(m));
    }
    if dtype == WeightDtype::Fp8 {
        let mut q = json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]});
        if !deepseek {
            q["modules_to_not_convert"] = json!(["lm_head"]);
        }
        set("quantization_config", q);
    }
    Value::Object(c)
}
