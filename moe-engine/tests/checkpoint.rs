//! Hugging Face checkpoints: synthetic checkpoints written and loaded back (FP8 bytes as written,
//! BF16 equal to the block quantization of the written values), expert subsets, the tensors the
//! loader ignores, and every bad input as its own typed error naming the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::bf16;
use moe_core::{Activation, Backend, BlockQuant, Scoring};
use moe_engine::weights::checkpoint::synth::{self, Preset, Sharding, SynthSpec, Values, WeightDtype};
use moe_engine::weights::checkpoint::{Checkpoint, CheckpointError, LayerWeights, LoadOptions, QuantWeights};
use moe_engine::weights::safetensors::{decode_bf16, decode_f32, TensorError};
use moe_engine::{EngineError, InputError};
use moe_ref_cpu::NaiveCpu;
use safetensors::{Dtype, SafeTensors};

/// A fresh path for one test's checkpoint (not created: the writer wants it absent or empty).
fn tmp(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-engine-ckpt-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn synth(test: &str, preset: Preset, dtype: WeightDtype, seed: u64) -> PathBuf {
    let dir = tmp(test);
    synth::write_checkpoint(&preset.spec(), dtype, seed, &dir, &|_| {}).unwrap();
    dir
}

/// One tensor as written: dtype, shape, bytes, and the file it is in.
#[derive(Debug, Clone)]
struct W {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    file: String,
}

/// Every tensor of every weight file of `dir`, read independently of the loader.
fn written(dir: &Path) -> HashMap<String, W> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if !file.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            let w = W {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                bytes: v.data().to_vec(),
                file: file.clone(),
            };
            out.insert(name, w);
        }
    }
    out
}

/// Rewrites the weight file `path`: `edit` returns a tensor's replacement (`Some(None)`: drop it).
fn rewrite(path: &Path, edit: impl Fn(&str, &W) -> Option<Option<W>>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, W)> = Vec::new();
    for (name, v) in st.tensors() {
        let w = W {
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            bytes: v.data().to_vec(),
            file: String::new(),
        };
        match edit(&name, &w) {
            None => kept.push((name, w)),
            Some(Some(new)) => kept.push((name, new)),
            Some(None) => {}
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
        .iter()
        .map(|(n, w)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(w.dtype, w.shape.clone(), &w.bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The file (its name) the tensor `name` was written to.
fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(&written(dir)[name].file)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The checkpoint error of a failed call, after checking it is an input error.
fn ckpt_err<T: std::fmt::Debug>(r: Result<T, EngineError>) -> (CheckpointError, String) {
    let e = r.unwrap_err();
    assert!(e.is_input(), "{e}");
    let msg = e.one_line();
    match e {
        EngineError::Input(InputError::Checkpoint(c)) => (c, msg),
        other => panic!("not a checkpoint error: {other}"),
    }
}

fn f32s(w: &W) -> Vec<f32> {
    match w.dtype {
        Dtype::BF16 => decode_bf16(&w.bytes).into_iter().map(f32::from).collect(),
        _ => decode_f32(&w.bytes),
    }
}

/// The expected `(q, s)` of one expert MLP's `w1` (gate ‖ up) and `w2` (down) from the written
/// tensors: copied for FP8, block-quantized by the naive reference for BF16.
fn expected_mlp(w: &HashMap<String, W>, prefix: &str, pow2: bool) -> [(Vec<u8>, Vec<f32>); 2] {
    let get = |p: &str| &w[&format!("{prefix}.{p}.weight")];
    let scales = |p: &str| decode_f32(&w[&format!("{prefix}.{p}.weight_scale_inv")].bytes);
    let quant = |parts: &[&W]| {
        let vals: Vec<bf16> = parts.iter().flat_map(|t| decode_bf16(&t.bytes)).collect();
        let (r, c) = (parts.iter().map(|t| t.shape[0]).sum::<usize>(), parts[0].shape[1]);
        let p = BlockQuant::new(1, r, c, pow2).unwrap();
        let [_, rb, cb] = p.scale_shape();
        let (mut q, mut s) = (vec![0u8; r * c], vec![0f32; rb * cb]);
        NaiveCpu.block_quant(&p, Activation::Bf16(&vals), &mut q, &mut s).unwrap();
        (q, s)
    };
    let (gate, up, down) = (get("gate_proj"), get("up_proj"), get("down_proj"));
    if gate.dtype == Dtype::F8_E4M3 {
        [
            (
                [gate.bytes.clone(), up.bytes.clone()].concat(),
                [scales("gate_proj"), scales("up_proj")].concat(),
            ),
            (down.bytes.clone(), scales("down_proj")),
        ]
    } else {
        [quant(&[gate, up]), quant(&[down])]
    }
}

/// Expert `e` (0-based within `w`) of loaded weights.
fn expert(w: &QuantWeights, e: usize) -> (&[u8], &[f32]) {
    let [_, rb, cb] = w.scale_shape();
    let (n, b) = (w.rows * w.cols, rb * cb);
    (&w.q[e * n..(e + 1) * n], &w.s[e * b..(e + 1) * b])
}

/// Checks a loaded layer against the written tensors.
fn check_layer(w: &HashMap<String, W>, l: &LayerWeights, first_expert: usize, pow2: bool) {
    let p = format!("model.layers.{}.mlp", l.layer);
    assert_eq!(l.gate, f32s(&w[&format!("{p}.gate.weight")]));
    assert_eq!(l.bias, w.get(&format!("{p}.gate.e_score_correction_bias")).map(f32s));
    for e in 0..l.w1.experts {
        let [(q1, s1), (q2, s2)] = expected_mlp(w, &format!("{p}.experts.{}", first_expert + e), pow2);
        assert_eq!(
            expert(&l.w1, e),
            (&q1[..], &s1[..]),
            "layer {} expert {}: w1",
            l.layer,
            first_expert + e
        );
        assert_eq!(
            expert(&l.w2, e),
            (&q2[..], &s2[..]),
            "layer {} expert {}: w2",
            l.layer,
            first_expert + e
        );
    }
    match &l.shared {
        None => assert!(!w.contains_key(&format!("{p}.shared_experts.gate_proj.weight"))),
        Some(s) => {
            let [(q1, s1), (q2, s2)] = expected_mlp(w, &format!("{p}.shared_experts"), pow2);
            assert_eq!((&s.w1.q[..], &s.w1.s[..]), (&q1[..], &s1[..]));
            assert_eq!((&s.w2.q[..], &s.w2.s[..]), (&q2[..], &s2[..]));
        }
    }
}

fn all() -> LoadOptions {
    LoadOptions::default()
}

#[test]
fn deepseek_mini_fp8_loads_exactly_what_was_written() {
    let dir = synth("ds-fp8", Preset::DeepseekV3Mini, WeightDtype::Fp8, 1);
    let ck = Checkpoint::open(&dir).unwrap();
    let c = ck.config();
    assert_eq!(
        (c.hidden_size, c.moe_intermediate_size, c.n_routed_experts, c.num_experts_per_tok),
        (512, 256, 16, 4)
    );
    assert_eq!(
        (c.n_group, c.topk_group, c.n_shared_experts, c.routed_scaling_factor),
        (4, 2, 1, 2.5)
    );
    assert_eq!((c.scoring, c.has_bias, c.norm_topk_prob), (Scoring::Sigmoid, true, true));
    assert_eq!((c.first_k_dense_replace, c.num_hidden_layers), (1, 3));
    assert_eq!(ck.moe_layers().collect::<Vec<_>>(), vec![1, 2]);
    let names: Vec<String> = ck
        .files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    let w = written(&dir);
    for layer in [1, 2] {
        let l = ck.load_layer(layer, &all()).unwrap();
        assert_eq!((l.w1.experts, l.w1.rows, l.w1.cols), (16, 512, 512));
        assert_eq!((l.w2.experts, l.w2.rows, l.w2.cols), (16, 512, 256));
        assert_eq!(l.w1.s.len(), 16 * 4 * 4);
        let s = l.shared.as_ref().expect("DeepSeek has a shared expert");
        assert_eq!((s.w1.experts, s.w1.rows, s.w1.cols, s.w2.rows, s.w2.cols), (1, 512, 512, 512, 256));
        assert_eq!(l.bias.as_ref().map(Vec::len), Some(16));
        check_layer(&w, &l, 0, false);
        // pow2 applies to quantization at load only: FP8 scales are the file's.
        assert_eq!(
            ck.load_layer(
                layer,
                &LoadOptions {
                    pow2_scales: true,
                    experts: None
                }
            )
            .unwrap(),
            l
        );
    }
    // The layers span both shards.
    let files: std::collections::HashSet<&str> = w
        .iter()
        .filter(|(n, _)| n.starts_with("model.layers."))
        .map(|(_, t)| t.file.as_str())
        .collect();
    assert_eq!(files.len(), 2);
    let router = c.router();
    assert_eq!(
        (router.topk, router.n_group, router.topk_group, router.bias, router.renormalize),
        (4, 4, 2, true, true)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deepseek_mini_bf16_is_block_quantized_at_load_with_and_without_pow2() {
    let dir = synth("ds-bf16", Preset::DeepseekV3Mini, WeightDtype::Bf16, 2);
    let w = written(&dir);
    assert_eq!(w["model.layers.1.mlp.experts.0.gate_proj.weight"].dtype, Dtype::BF16);
    assert!(!w.contains_key("model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv"));
    let ck = Checkpoint::open(&dir).unwrap();
    for pow2 in [false, true] {
        let l = ck
            .load_layer(
                2,
                &LoadOptions {
                    pow2_scales: pow2,
                    experts: None,
                },
            )
            .unwrap();
        check_layer(&w, &l, 0, pow2);
        assert_eq!(l.w1.s.iter().all(|s| s.to_bits() & 0x7F_FFFF == 0), pow2);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qwen_mini_bf16_and_fp8_round_trip_without_shared_experts() {
    for (dtype, test) in [(WeightDtype::Bf16, "qwen-bf16"), (WeightDtype::Fp8, "qwen-fp8")] {
        let dir = synth(test, Preset::Qwen3MoeMini, dtype, 3);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        assert!(names.contains(&"model.safetensors".to_string()) && !names.iter().any(|n| n.ends_with("index.json")));
        let ck = Checkpoint::open(&dir).unwrap();
        let c = ck.config();
        assert_eq!(
            (c.n_routed_experts, c.num_experts_per_tok, c.scoring, c.n_group),
            (16, 4, Scoring::Softmax, 1)
        );
        assert_eq!((c.n_shared_experts, c.has_bias, c.norm_topk_prob), (0, false, true));
        assert_eq!(ck.moe_layers().collect::<Vec<_>>(), vec![0, 1]);
        let w = written(&dir);
        for pow2 in [false, true] {
            for layer in [0, 1] {
                let l = ck
                    .load_layer(
                        layer,
                        &LoadOptions {
                            pow2_scales: pow2,
                            experts: None,
                        },
                    )
                    .unwrap();
                assert!(l.shared.is_none() && l.bias.is_none());
                check_layer(&w, &l, 0, pow2);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn expert_subset_is_the_matching_slice_of_the_full_layer() {
    let dir = synth("subset", Preset::DeepseekV3Mini, WeightDtype::Fp8, 4);
    let ck = Checkpoint::open(&dir).unwrap();
    let full = ck.load_layer(1, &all()).unwrap();
    let part = ck
        .load_layer(
            1,
            &LoadOptions {
                pow2_scales: false,
                experts: Some(5..9),
            },
        )
        .unwrap();
    assert_eq!((part.w1.experts, part.w2.experts), (4, 4));
    for e in 0..4 {
        assert_eq!(expert(&part.w1, e), expert(&full.w1, 5 + e));
        assert_eq!(expert(&part.w2, e), expert(&full.w2, 5 + e));
    }
    assert_eq!((&part.gate, &part.bias, &part.shared), (&full.gate, &full.bias, &full.shared));
    check_layer(&written(&dir), &part, 5, false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensors_outside_the_moe_layers_are_never_read() {
    let dir = synth("ignored", Preset::DeepseekV3Mini, WeightDtype::Fp8, 5);
    let w = written(&dir);
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.2.input_layernorm.weight",
        "lm_head.weight",
    ] {
        assert!(w.contains_key(name), "{name} written");
    }
    assert_eq!(w["model.layers.0.mlp.down_proj.weight"].shape, vec![512, 1024]);
    let before = Checkpoint::open(&dir).unwrap().load_layer(2, &all()).unwrap();
    // Every other tensor replaced by 3 bytes of I8: nothing changes.
    let moe = |n: &str| n.starts_with("model.layers.1.mlp.") || n.starts_with("model.layers.2.mlp.");
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        rewrite(&dir.join(shard), |name, _| {
            (!moe(name)).then(|| {
                Some(W {
                    dtype: Dtype::I8,
                    shape: vec![3],
                    bytes: vec![1, 2, 3],
                    file: String::new(),
                })
            })
        });
    }
    assert_eq!(Checkpoint::open(&dir).unwrap().load_layer(2, &all()).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synthetic_checkpoints_are_deterministic_in_the_seed() {
    let a = synth("seed-a", Preset::Qwen3MoeMini, WeightDtype::Fp8, 11);
    let b = synth("seed-b", Preset::Qwen3MoeMini, WeightDtype::Fp8, 11);
    let c = synth("seed-c", Preset::Qwen3MoeMini, WeightDtype::Fp8, 12);
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// The deepseek-v3-layer preset's writer (hashed FP8 values, only the MoE layer, shards by size)
/// at a reduced size.
#[test]
fn layer_preset_writer_at_reduced_size() {
    let spec = SynthSpec {
        hidden_size: 256,
        moe_intermediate_size: 128,
        experts: 16,
        sharding: Sharding::MaxBytes(400_000),
        ..Preset::DeepseekV3Layer.spec()
    };
    assert_eq!(
        (spec.values, spec.other_tensors, spec.first_k_dense_replace),
        (Values::Hashed, false, 3)
    );
    let dir = tmp("layer-small");
    let seen = std::sync::Mutex::new(Vec::new());
    let report = synth::write_checkpoint(&spec, WeightDtype::Fp8, 0, &dir, &|p| seen.lock().unwrap().push(p.clone())).unwrap();
    let seen = seen.into_inner().unwrap();
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (report.tensor_bytes, report.tensor_bytes));
    assert!(seen.windows(2).all(|p| p[0].bytes_done <= p[1].bytes_done));
    let shards = report.files.iter().filter(|(f, _)| f.ends_with(".safetensors")).count();
    assert!(shards >= 3, "{:?}", report.files);
    assert!(dir.join(format!("model-00001-of-{shards:05}.safetensors")).is_file());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], report.tensor_bytes);
    let w = written(&dir);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), w.len());
    assert!(
        w.keys().all(|n| n.starts_with("model.layers.3.mlp.")),
        "only the MoE layer is written"
    );
    for (n, t) in &w {
        assert_eq!(index["weight_map"][n], t.file.as_str());
    }
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.moe_layers().collect::<Vec<_>>(), vec![3]);
    let l = ck.load_layer(3, &all()).unwrap();
    check_layer(&w, &l, 0, false);
    assert!(l.w1.s.iter().chain(&l.w2.s).all(|s| (1e-3..1e-2).contains(s)));
    assert!(l.w1.q.iter().all(|&b| b & 0x7F != 0x7F));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synth_refuses_a_non_empty_output_and_accepts_an_empty_one() {
    let dir = tmp("occupied");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let preset = Preset::Qwen3MoeMini;
    let (e, msg) = ckpt_err(synth::write_checkpoint(&preset.spec(), WeightDtype::Bf16, 0, &dir, &|_| {}));
    assert!(
        matches!(e, CheckpointError::OutputExists { .. }) && msg.contains("occupied"),
        "{msg}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_file(dir.join("keep.txt")).unwrap();
    synth::write_checkpoint(&preset.spec(), WeightDtype::Bf16, 0, &dir, &|_| {}).unwrap();
    assert!(dir.join("model.safetensors").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synth_of_an_invalid_spec_writes_nothing() {
    let dir = tmp("bad-spec");
    let spec = SynthSpec {
        hidden_size: 500,
        ..Preset::Qwen3MoeMini.spec()
    };
    let (e, msg) = ckpt_err(synth::write_checkpoint(&spec, WeightDtype::Bf16, 0, &dir, &|_| {}));
    assert!(
        matches!(e, CheckpointError::BadKey { ref key, .. } if key == "hidden_size"),
        "{msg}"
    );
    assert!(!dir.exists());
    let parent = dir.parent().unwrap();
    let stray = std::fs::read_dir(parent).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("moe-engine-ckpt-{}-bad-spec", std::process::id()))
    });
    assert!(!stray, "a temporary directory was left");
}

#[test]
fn a_checkpoint_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Checkpoint>();
    let dir = synth("threads", Preset::DeepseekV3Mini, WeightDtype::Fp8, 6);
    let ck = &Checkpoint::open(&dir).unwrap();
    let loads: Vec<LayerWeights> = std::thread::scope(|s| {
        let hs: Vec<_> = [1, 2, 1, 2]
            .iter()
            .map(|&l| s.spawn(move || ck.load_layer(l, &all()).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(loads[0], loads[2]);
    assert_eq!(loads[1], loads[3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- Bad input: each case its own typed error, naming the file and the tensor or key. ----

fn ds(test: &str) -> PathBuf {
    synth(test, Preset::DeepseekV3Mini, WeightDtype::Fp8, 9)
}

fn bad_key(dir: &Path, key: &str) {
    let (e, msg) = ckpt_err(Checkpoint::open(dir));
    match e {
        CheckpointError::BadKey { key: k, file, .. } => assert!(k == key && file.ends_with("config.json"), "{msg}"),
        other => panic!("expected a bad `{key}`, got {other}"),
    }
    assert!(msg.contains(key) && msg.contains("config.json"), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_config_json_is_named() {
    let dir = ds("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(
        matches!(e, CheckpointError::NoConfig { .. }) && msg.contains("no config.json") && msg.contains("no-config"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unparsable_config_json_is_named() {
    let dir = ds("bad-json");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 512,").unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(matches!(e, CheckpointError::Json { .. }) && msg.contains("config.json"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_config_key_is_named() {
    let dir = ds("no-key");
    edit_config(&dir, |c| {
        c.remove("num_experts_per_tok");
    });
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(
        matches!(e, CheckpointError::MissingKey { ref key, .. } if key == "num_experts_per_tok"),
        "{msg}"
    );
    assert!(msg.contains("config.json"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_key_of_the_wrong_type_is_named() {
    let dir = ds("key-type");
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), "512".into());
    });
    bad_key(&dir, "hidden_size");
}

#[test]
fn experts_not_divisible_by_groups_are_rejected() {
    let dir = ds("groups-divide");
    edit_config(&dir, |c| {
        c.insert("n_group".into(), 3.into());
    });
    bad_key(&dir, "n_group");
}

#[test]
fn topk_group_above_n_group_is_rejected() {
    let dir = ds("topk-group");
    edit_config(&dir, |c| {
        c.insert("topk_group".into(), 5.into());
    });
    bad_key(&dir, "topk_group");
}

#[test]
fn topk_above_the_experts_left_by_group_selection_is_rejected() {
    // 2 of 4 groups of 4 experts leave 8.
    let dir = ds("topk-left");
    edit_config(&dir, |c| {
        c.insert("num_experts_per_tok".into(), 9.into());
    });
    bad_key(&dir, "num_experts_per_tok");
}

#[test]
fn hidden_size_not_a_multiple_of_128_is_rejected() {
    let dir = ds("k-128");
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), 576.into());
    });
    bad_key(&dir, "hidden_size");
}

#[test]
fn intermediate_size_not_a_multiple_of_128_is_rejected() {
    let dir = ds("i-128");
    edit_config(&dir, |c| {
        c.insert("moe_intermediate_size".into(), 200.into());
    });
    bad_key(&dir, "moe_intermediate_size");
}

#[test]
fn weight_block_size_other_than_128_is_rejected() {
    let dir = ds("block-size");
    edit_config(&dir, |c| {
        c["quantization_config"]["weight_block_size"] = serde_json::json!([64, 64]);
    });
    bad_key(&dir, "quantization_config.weight_block_size");
}

#[test]
fn unknown_scoring_func_is_rejected() {
    let dir = ds("scoring");
    edit_config(&dir, |c| {
        c.insert("scoring_func".into(), "sqrtsoftplus".into());
    });
    bad_key(&dir, "scoring_func");
}

#[test]
fn dense_and_out_of_range_layers_are_rejected() {
    let dir = ds("layers");
    let ck = Checkpoint::open(&dir).unwrap();
    let (e, msg) = ckpt_err(ck.load_layer(0, &all()));
    assert!(
        matches!(e, CheckpointError::NotMoeLayer { layer: 0, .. }) && msg.contains("first_k_dense_replace"),
        "{msg}"
    );
    let (e, msg) = ckpt_err(ck.load_layer(3, &all()));
    assert!(matches!(e, CheckpointError::LayerOutOfRange { layer: 3, layers: 3 }), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expert_range_past_eg_or_empty_is_rejected() {
    let dir = ds("experts");
    let ck = Checkpoint::open(&dir).unwrap();
    for r in [10..17, 3..3] {
        let (e, msg) = ckpt_err(ck.load_layer(
            1,
            &LoadOptions {
                pow2_scales: false,
                experts: Some(r.clone()),
            },
        ));
        assert!(matches!(e, CheckpointError::ExpertRange { experts: 16, .. }), "{msg}");
        assert!(msg.contains(&format!("{}..{}", r.start, r.end)), "{msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn index_naming_a_missing_shard_names_both() {
    let dir = ds("no-shard");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(matches!(e, CheckpointError::MissingShard { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors.index.json") && msg.contains("model-00002-of-00002.safetensors"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn index_with_a_path_outside_the_directory_is_rejected() {
    let dir = ds("escape");
    let p = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"model-00001-of-00002.safetensors\"", "\"../x.safetensors\"", 1);
    std::fs::write(&p, text).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(
        matches!(e, CheckpointError::BadIndex { .. }) && msg.contains("../x.safetensors"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_without_weights_is_rejected() {
    let dir = ds("no-weights");
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir));
    assert!(matches!(e, CheckpointError::NoWeights { .. }), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

#[test]
fn truncated_shard_data_is_named_when_the_layer_is_loaded() {
    let dir = ds("trunc-data");
    let shard = dir.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    truncate(&shard, len - 100);
    let ck = Checkpoint::open(&dir).unwrap();
    let (e, msg) = ckpt_err(ck.load_layer(2, &all()));
    assert!(matches!(e, CheckpointError::TruncatedShard { .. }), "{msg}");
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_shard_header_is_named() {
    let dir = ds("trunc-header");
    let shard = file_of(&dir, "model.layers.1.mlp.gate.weight");
    truncate(&shard, 40);
    let (e, msg) = ckpt_err(Checkpoint::open(&dir).unwrap().load_layer(1, &all()));
    assert!(matches!(e, CheckpointError::TruncatedShard { .. }), "{msg}");
    assert!(
        msg.contains(shard.file_name().unwrap().to_str().unwrap()) && msg.contains("header"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn garbled_shard_header_is_named() {
    let dir = ds("garbled");
    let shard = file_of(&dir, "model.layers.1.mlp.gate.weight");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[8] = b'[';
    std::fs::write(&shard, bytes).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir).unwrap().load_layer(1, &all()));
    assert!(matches!(e, CheckpointError::MalformedShard { .. }), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replaces tensor `name` in its file by `new` (`None`: removes it) and returns the error of
/// loading layer `layer`, after checking that it is a tensor error naming the tensor and the file.
fn tensor_err(test: &str, preset: Preset, layer: usize, name: &str, new: Option<(Dtype, Vec<usize>)>) -> (TensorError, String) {
    let dir = synth(test, preset, preset.default_dtype(), 10);
    let shard = file_of(&dir, name);
    rewrite(&shard, |n, _| {
        (n == name).then(|| {
            new.as_ref().map(|(dtype, shape)| W {
                dtype: *dtype,
                shape: shape.clone(),
                bytes: vec![0; shape.iter().product::<usize>() * dtype.bitsize() / 8],
                file: String::new(),
            })
        })
    });
    let (e, msg) = ckpt_err(Checkpoint::open(&dir).unwrap().load_layer(layer, &all()));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        msg.contains(name) && msg.contains(shard.file_name().unwrap().to_str().unwrap()),
        "{msg}"
    );
    match e {
        CheckpointError::Tensor { error, .. } => {
            assert_eq!(error.tensor(), name);
            (error, msg)
        }
        other => panic!("not a tensor error: {other}"),
    }
}

#[test]
fn expert_weight_of_the_wrong_dtype_is_named() {
    let name = "model.layers.1.mlp.experts.3.up_proj.weight";
    let (e, msg) = tensor_err("dtype", Preset::DeepseekV3Mini, 1, name, Some((Dtype::F16, vec![256, 512])));
    assert!(
        matches!(e, TensorError::Dtype { .. }) && msg.contains("F16") && msg.contains("F8_E4M3 or BF16"),
        "{msg}"
    );
}

#[test]
fn scale_of_the_wrong_dtype_is_named() {
    let name = "model.layers.2.mlp.shared_experts.down_proj.weight_scale_inv";
    let (e, msg) = tensor_err("scale-dtype", Preset::DeepseekV3Mini, 2, name, Some((Dtype::BF16, vec![4, 2])));
    assert!(matches!(e, TensorError::Dtype { .. }) && msg.contains("expected F32"), "{msg}");
}

#[test]
fn expert_weight_of_the_wrong_shape_is_named() {
    let name = "model.layers.2.mlp.experts.15.down_proj.weight";
    let (e, msg) = tensor_err("shape", Preset::DeepseekV3Mini, 2, name, Some((Dtype::F8_E4M3, vec![256, 512])));
    assert!(matches!(e, TensorError::Shape { .. }), "{msg}");
    assert!(msg.contains("(256, 512)") && msg.contains("(K, I) = (512, 256)"), "{msg}");
}

#[test]
fn scale_of_the_wrong_shape_is_named() {
    let name = "model.layers.1.mlp.experts.0.gate_proj.weight_scale_inv";
    let (e, msg) = tensor_err("scale-shape", Preset::DeepseekV3Mini, 1, name, Some((Dtype::F32, vec![4, 2])));
    assert!(
        matches!(e, TensorError::Shape { .. }) && msg.contains("(ceil(I/128), ceil(K/128)) = (2, 4)"),
        "{msg}"
    );
}

#[test]
fn gate_of_the_wrong_shape_is_named() {
    let name = "model.layers.0.mlp.gate.weight";
    let (e, msg) = tensor_err("gate-shape", Preset::Qwen3MoeMini, 0, name, Some((Dtype::BF16, vec![15, 512])));
    assert!(
        matches!(e, TensorError::Shape { .. }) && msg.contains("(Eg, K) = (16, 512)"),
        "{msg}"
    );
}

#[test]
fn tensor_missing_from_its_shard_is_named_with_the_shard() {
    let name = "model.layers.2.mlp.experts.7.down_proj.weight_scale_inv";
    let (e, msg) = tensor_err("missing", Preset::DeepseekV3Mini, 2, name, None);
    assert!(matches!(e, TensorError::Missing { .. }) && msg.contains("missing"), "{msg}");
}

#[test]
fn bias_missing_under_noaux_tc_is_named() {
    let name = "model.layers.1.mlp.gate.e_score_correction_bias";
    let (e, msg) = tensor_err("no-bias", Preset::DeepseekV3Mini, 1, name, None);
    assert!(matches!(e, TensorError::Missing { .. }), "{msg}");
}

#[test]
fn tensor_missing_from_the_single_file_names_it() {
    let name = "model.layers.1.mlp.experts.9.gate_proj.weight";
    let (e, msg) = tensor_err("missing-single", Preset::Qwen3MoeMini, 1, name, None);
    assert!(
        matches!(e, TensorError::Missing { .. }) && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn tensor_missing_from_the_index_names_the_index() {
    let dir = ds("not-in-index");
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let name = "model.layers.1.mlp.shared_experts.up_proj.weight";
    v["weight_map"].as_object_mut().unwrap().remove(name).unwrap();
    std::fs::write(&p, v.to_string()).unwrap();
    let (e, msg) = ckpt_err(Checkpoint::open(&dir).unwrap().load_layer(1, &all()));
    assert!(matches!(e, CheckpointError::NotInIndex { .. }), "{msg}");
    assert!(msg.contains(name) && msg.contains("model.safetensors.index.json"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- No input makes the loader panic. ----

/// A small single-file checkpoint (4 experts of K = I = 128, FP8), cheap to corrupt many times.
fn tiny(test: &str) -> PathBuf {
    let spec = SynthSpec {
        hidden_size: 128,
        moe_intermediate_size: 128,
        experts: 4,
        topk: 2,
        num_hidden_layers: 1,
        other_tensors: false,
        ..Preset::Qwen3MoeMini.spec()
    };
    let dir = tmp(test);
    synth::write_checkpoint(&spec, WeightDtype::Fp8, 0, &dir, &|_| {}).unwrap();
    dir
}

#[test]
fn any_config_value_is_an_error_or_a_config_never_a_panic() {
    let dir = tiny("config-values");
    let original = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&original)
        .unwrap()
        .keys()
        .cloned()
        .chain(
            [
                "n_group",
                "topk_group",
                "n_shared_experts",
                "first_k_dense_replace",
                "moe_layer_freq",
                "topk_method",
                "scoring_func",
            ]
            .map(String::from),
        )
        .collect();
    let values = serde_json::json!([
        null,
        -1,
        0,
        1,
        3,
        127,
        1e300,
        18446744073709551615u64,
        "x",
        [],
        [128],
        {},
        true,
        2.5
    ]);
    for key in &keys {
        for v in values.as_array().unwrap() {
            std::fs::write(dir.join("config.json"), &original).unwrap();
            edit_config(&dir, |c| {
                c.insert(key.clone(), v.clone());
            });
            if let Ok(ck) = Checkpoint::open(&dir) {
                let _ = ck.moe_layers().take(4).count();
                let _ = ck.load_layer(0, &all());
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupted_or_truncated_weights_are_errors_never_panics() {
    let dir = tiny("corrupt");
    let path = dir.join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut rng = moe_engine::rng::Rng::new(42);
    let (mut ok, mut err) = (0, 0);
    for case in 0..300 {
        let mut bytes = original.clone();
        match case % 3 {
            0 => bytes.truncate(rng.below(original.len())),
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(header_end);
                    bytes[i] = rng.next_u64() as u8;
                }
            }
            _ => {
                // Digits of the header changed: offsets and shapes that disagree with the data.
                let digits: Vec<usize> = (8..header_end).filter(|&i| bytes[i].is_ascii_digit()).collect();
                let i = digits[rng.below(digits.len())];
                bytes[i] = b'0' + rng.below(10) as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        match Checkpoint::open(&dir).unwrap().load_layer(0, &all()) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is_input(), "case {case}: {e}");
                err += 1;
            }
        }
    }
    assert!(err > 200, "{ok} loads, {err} errors");
    std::fs::remove_dir_all(&dir).unwrap();
}
