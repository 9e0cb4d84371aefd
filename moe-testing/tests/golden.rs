//! Golden vectors from an independent oracle (`golden/gen.py`: ml_dtypes, numpy, exact
//! rationals; regenerate with `cargo xtask golden`), checked bit for bit against the naive and
//! the fast CPU backends. No Python is needed to run these tests.

use std::collections::HashMap;

use moe_core::*;
use moe_ref_cpu::{CpuBackend, NaiveCpu};
use safetensors::SafeTensors;

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn open(name: &str) -> Self {
        let path = format!("{}/golden/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        Golden {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run `cargo xtask golden`)")),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a valid safetensors file")
    }
    fn raw(&self, name: &str) -> Vec<u8> {
        self.st().tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data().to_vec()
    }
    fn u8s(&self, name: &str) -> Vec<u8> {
        self.raw(name)
    }
    fn u32s(&self, name: &str) -> Vec<u32> {
        self.raw(name)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.u32s(name).into_iter().map(f32::from_bits).collect()
    }
    fn i32s(&self, name: &str) -> Vec<i32> {
        self.u32s(name).into_iter().map(|v| v as i32).collect()
    }
    fn u16s(&self, name: &str) -> Vec<u16> {
        self.raw(name)
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn cases(&self) -> Vec<HashMap<String, serde_json::Value>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("header");
        let cases = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("cases"))
            .expect("cases metadata")
            .clone();
        serde_json::from_str(&cases).expect("cases json")
    }
}

fn num(c: &HashMap<String, serde_json::Value>, k: &str) -> usize {
    c[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize
}

fn same_f32_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(
            ok,
            "{what}[{i}]: {g:e} ({:#010x}) vs oracle {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn e4m3_and_ue8m0_tables_match_the_oracle() {
    let g = Golden::open("tables");
    let dec = g.f32s("e4m3_decode");
    same_f32_bits("e4m3 decode", &(0..=255u8).map(e4m3_to_f32).collect::<Vec<_>>(), &dec);
    let (x, want) = (g.f32s("e4m3_encode_in"), g.u8s("e4m3_encode_out"));
    assert!(x.len() > 3000);
    for (x, w) in x.iter().zip(&want) {
        assert_eq!(e4m3_from_f32(*x), *w, "e4m3 encode of {x:e} ({:#010x})", x.to_bits());
    }
    same_f32_bits(
        "ue8m0 decode",
        &(0..=255u8).map(ue8m0_to_f32).collect::<Vec<_>>(),
        &g.f32s("ue8m0_decode"),
    );
    let (x, want, code) = (g.f32s("ceil_in"), g.f32s("ceil_out"), g.u8s("ceil_code"));
    for i in 0..x.len() {
        assert_eq!(ceil_pow2(x[i]).to_bits(), want[i].to_bits(), "ceil_pow2({:e})", x[i]);
        assert_eq!(ue8m0_from_pow2(want[i]), code[i], "ue8m0 code of {:e}", want[i]);
    }
}

fn backends() -> Vec<Box<dyn Backend>> {
    vec![Box::new(NaiveCpu), Box::new(CpuBackend::with_threads(2).unwrap())]
}

#[test]
fn token_group_quant_matches_the_oracle_in_every_format_layout_and_dtype() {
    let g = Golden::open("token_group_quant");
    let cases = g.cases();
    assert_eq!(cases.len(), 12);
    for c in &cases {
        let (name, rows, k) = (c["name"].as_str().unwrap(), num(c, "rows"), num(c, "k"));
        let fmt = ScaleFormat::from_name(c["fmt"].as_str().unwrap()).unwrap();
        let xf = g.f32s(&format!("{name}.x"));
        let xb: Vec<bf16> = g.u16s(&format!("{name}.x")).into_iter().map(bf16::from_bits).collect();
        let x = if c["dtype"] == "bf16" {
            Activation::Bf16(&xb)
        } else {
            Activation::F32(&xf)
        };
        let q_want = g.u8s(&format!("{name}.q"));
        let cols = fmt.columns(k / 128);
        for layout in [ScaleLayout::RowMajor, ScaleLayout::MnMajor] {
            let p = TokenGroupQuant::new(rows, k, fmt, layout).unwrap();
            for be in backends() {
                let mut q = vec![0xA5u8; rows * k];
                let what = format!("{name} {fmt} {layout:?} on {}", be.name());
                if fmt.is_packed() {
                    let want = moe_core::scale::convert_layout(&g.i32s(&format!("{name}.s")), rows, cols, ScaleLayout::RowMajor, layout)
                        .expect("golden shapes");
                    let mut s = vec![0x5A5A_5A5A; rows * cols];
                    be.token_group_quant(&p, x, &mut q, ScalesMut::Packed(&mut s)).unwrap();
                    assert_eq!(s, want, "{what}: packed scales");
                } else {
                    let want = moe_core::scale::convert_layout(&g.f32s(&format!("{name}.s")), rows, cols, ScaleLayout::RowMajor, layout)
                        .expect("golden shapes");
                    let mut s = vec![f32::NAN; rows * cols];
                    be.token_group_quant(&p, x, &mut q, ScalesMut::F32(&mut s)).unwrap();
                    same_f32_bits(&format!("{what}: scales"), &s, &want);
                }
                assert!(
                    q == q_want,
                    "{what}: q differs at {:?}",
                    q.iter().zip(&q_want).position(|(a, b)| a != b)
                );
            }
        }
    }
}

#[test]
fn block_quant_matches_the_oracle_with_ragged_edges() {
    let g = Golden::open("block_quant");
    let cases = g.cases();
    // A golden file that silently lost cases must fail, not pass on fewer.
    assert_eq!(cases.len(), 4);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let p = BlockQuant::new(shape[0], shape[1], shape[2], c["pow2"].as_bool().unwrap()).unwrap();
        let xf = g.f32s(&format!("{name}.w"));
        let xb: Vec<bf16> = g.u16s(&format!("{name}.w")).into_iter().map(bf16::from_bits).collect();
        let w = if c["dtype"] == "bf16" {
            Activation::Bf16(&xb)
        } else {
            Activation::F32(&xf)
        };
        for be in backends() {
            let mut q = vec![0u8; shape.iter().product()];
            let mut s = vec![f32::NAN; p.scale_shape().iter().product()];
            be.block_quant(&p, w, &mut q, &mut s).unwrap();
            same_f32_bits(&format!("{name} scales on {}", be.name()), &s, &g.f32s(&format!("{name}.s")));
            assert!(q == g.u8s(&format!("{name}.q")), "{name} q on {}", be.name());
        }
    }
}

#[test]
fn grouped_gemm_matches_the_oracle_in_every_scale_format() {
    let g = Golden::open("grouped_gemm");
    let cases = g.cases();
    assert_eq!(cases.len(), 4);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (e, t, n, k) = (num(c, "e"), num(c, "t"), num(c, "n"), num(c, "k"));
        let fmt = ScaleFormat::from_name(c["fmt"].as_str().unwrap()).unwrap();
        let p = GroupedGemm::new(e, t, n, k, fmt).unwrap();
        let (sa_f, sa_p) = (g.f32s(&format!("{name}.sa")), g.i32s(&format!("{name}.sa")));
        let sa = if fmt.is_packed() {
            Scales::Packed(&sa_p)
        } else {
            Scales::F32(&sa_f)
        };
        let (a, b, sb, counts) = (
            g.u8s(&format!("{name}.a")),
            g.u8s(&format!("{name}.b")),
            g.f32s(&format!("{name}.sb")),
            g.i32s(&format!("{name}.counts")),
        );
        let want = g.u16s(&format!("{name}.d"));
        for be in backends() {
            let mut d = vec![bf16::ZERO; e * t * n];
            be.grouped_gemm(
                &p,
                GemmInputs {
                    a: &a,
                    sa,
                    b: WeightsRef { q: &b, s: &sb },
                    counts: &counts,
                },
                &mut d,
            )
            .unwrap();
            let got: Vec<u16> = d.iter().map(|v| v.to_bits()).collect();
            let diff = got.iter().zip(&want).position(|(x, y)| x != y);
            assert!(
                diff.is_none(),
                "{name} ({fmt}) on {}: first difference at {diff:?}: {:#06x} vs oracle {:#06x}",
                be.name(),
                got[diff.unwrap()],
                want[diff.unwrap()]
            );
        }
    }
}
