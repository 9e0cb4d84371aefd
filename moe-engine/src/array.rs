//! Every operation on `ndarray` arrays: views in, owned arrays out, FP8 elements as
//! [`float8::F8E4M3`], bf16 as [`half::bf16`].
//!
//! Shapes are taken from the arrays and checked by moe-core's problem types, so a mismatch is an
//! [`EngineError`] naming the tensor and the dimension. Views need not be contiguous (a
//! non-standard layout is copied once). Scales keep the physical shapes of SPEC §3 and §8:
//! MN-major `(E, G, T)` f32, or `(E, ceil(G/4), T)` i32 words of four UE8M0 bytes
//! ([`ScaleArray`]). The flat-slice [`moe_core::Backend`] trait stays the low-level interface.
//!
//! F8E4M3 from the `float8` crate has the same bytes as moe-core's encoder for every non-NaN f32
//! (checked over all 2^32 inputs by `cargo xtask exp-check`); see `docs/numerics.md`.

use std::borrow::Cow;

use float8::F8E4M3;
use half::bf16;
use moe_core::{
    Activation, BlockQuant, ExpertsInputs, ExpertsStage, ExpertsWorkspace, Finalize, GemmInputs, GroupedGemm, Numerics, Prepare, Route,
    RouterConfig, ScaleBuf, ScaleFormat, ScaleLayout, Scales, SiluMulQuant, TokenGroupQuant, WeightsRef,
};
use ndarray::{Array, Array1, Array2, Array3, ArrayView, ArrayView1, ArrayView2, ArrayView3, Dimension, Ix2, Ix3};

use crate::device::Device;
use crate::error::{try_filled, EngineError};

/// Activation scales in their physical layout.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleArray<D: Dimension> {
    /// f32 scales (`F32` and `F32CeilUe8m0`).
    F32(Array<f32, D>),
    /// i32 words of four UE8M0 bytes (`Ue8m0Packed`).
    Packed(Array<i32, D>),
}

impl<D: Dimension> ScaleArray<D> {
    fn from_buf(buf: ScaleBuf, shape: D) -> Self {
        // The buffer was allocated with the shape's element count.
        match buf {
            ScaleBuf::F32(v) => ScaleArray::F32(Array::from_shape_vec(shape, v).expect("scale buffer sized from its shape")),
            ScaleBuf::Packed(v) => ScaleArray::Packed(Array::from_shape_vec(shape, v).expect("scale buffer sized from its shape")),
        }
    }

    fn scales(&self) -> (Cow<'_, [f32]>, Cow<'_, [i32]>, bool) {
        match self {
            ScaleArray::F32(a) => (contiguous(a.view()), Cow::Borrowed(&[][..]), false),
            ScaleArray::Packed(a) => (Cow::Borrowed(&[][..]), contiguous(a.view()), true),
        }
    }
}

/// Block-quantized weights `(E, R, C)` with their `(E, ceil(R/128), ceil(C/128))` f32 scales.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantWeights {
    /// The E4M3 weights.
    pub q: Array3<F8E4M3>,
    /// The dequantization scales (`weight_scale_inv`).
    pub s: Array3<f32>,
}

/// The weights of the experts stage: `w1 (E, 2I, K)` (gate rows then up rows) and `w2 (E, K, I)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertsWeights {
    /// GEMM1's weights.
    pub w1: QuantWeights,
    /// GEMM2's weights.
    pub w2: QuantWeights,
}

impl ExpertsWeights {
    /// Block-quantizes full-precision `w1` and `w2` on `device` (SPEC §4); `pow2` ceils every
    /// scale to a power of two (UE8M0 weights).
    pub fn quantize(device: &Device, w1: ArrayView3<'_, bf16>, w2: ArrayView3<'_, bf16>, pow2: bool) -> Result<Self, EngineError> {
        Ok(Self {
            w1: block_quant(device, w1, pow2)?,
            w2: block_quant(device, w2, pow2)?,
        })
    }
}

/// The experts stage's quantized activations, as prepare produces them.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantActivations {
    /// `(E, T, K)` E4M3; rows past `counts[e]` are zero.
    pub a1q: Array3<F8E4M3>,
    /// MN-major scales.
    pub a1s: ScaleArray<Ix3>,
    /// Live rows per expert.
    pub counts: Array1<i32>,
    /// The scale format of `a1s`.
    pub fmt: ScaleFormat,
}

fn contiguous<T: Clone, D: Dimension>(v: ArrayView<'_, T, D>) -> Cow<'_, [T]> {
    match v.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(v.iter().cloned().collect()),
    }
}

fn f8_bytes<D: Dimension>(v: ArrayView<'_, F8E4M3, D>) -> Cow<'_, [u8]> {
    match contiguous(v) {
        Cow::Borrowed(s) => Cow::Borrowed(bytemuck::cast_slice(s)),
        Cow::Owned(v) => Cow::Owned(v.into_iter().map(|x| x.to_bits()).collect()),
    }
}

fn f8_array<D: Dimension>(shape: D, bytes: Vec<u8>) -> Array<F8E4M3, D> {
    Array::from_shape_vec(shape, bytes.into_iter().map(F8E4M3::from_bits).collect()).expect("output sized from its shape")
}

fn shaped<T, D: Dimension>(shape: D, v: Vec<T>) -> Array<T, D> {
    Array::from_shape_vec(shape, v).expect("output sized from its shape")
}

fn scale_buf(tensor: &'static str, fmt: ScaleFormat, n: usize) -> Result<ScaleBuf, EngineError> {
    Ok(if fmt.is_packed() {
        ScaleBuf::Packed(try_filled(tensor, n, 0)?)
    } else {
        ScaleBuf::F32(try_filled(tensor, n, 0.0)?)
    })
}

fn d3(s: [usize; 3]) -> Ix3 {
    ndarray::Dim(s)
}

/// Token-group quantization of `x (rows, K)` (SPEC §5.1): `q (rows, K)` and row-major scales
/// `(rows, K/128)` (or packed `(rows, ceil(K/512))`).
pub fn token_group_quant(
    device: &Device,
    x: ArrayView2<'_, bf16>,
    fmt: ScaleFormat,
) -> Result<(Array2<F8E4M3>, ScaleArray<Ix2>), EngineError> {
    let (rows, k) = x.dim();
    let p = TokenGroupQuant::new(rows, k, fmt, ScaleLayout::RowMajor)?;
    let [sr, sc] = p.scale_shape();
    let mut q = try_filled("q", rows * k, 0u8)?;
    let mut s = scale_buf("s", fmt, sr * sc)?;
    device
        .backend()
        .token_group_quant(&p, Activation::Bf16(&contiguous(x)), &mut q, s.view_mut())?;
    Ok((f8_array(Ix2(rows, k), q), ScaleArray::from_buf(s, Ix2(sr, sc))))
}

/// 128×128 block quantization of weights `w (E, R, C)` (SPEC §4).
pub fn block_quant(device: &Device, w: ArrayView3<'_, bf16>, pow2: bool) -> Result<QuantWeights, EngineError> {
    let (e, r, c) = w.dim();
    let p = BlockQuant::new(e, r, c, pow2)?;
    let ssh = p.scale_shape();
    let mut q = try_filled("q", e * r * c, 0u8)?;
    let mut s = try_filled("s", ssh.iter().product(), 0f32)?;
    device.backend().block_quant(&p, Activation::Bf16(&contiguous(w)), &mut q, &mut s)?;
    Ok(QuantWeights {
        q: f8_array(d3([e, r, c]), q),
        s: shaped(d3(ssh), s),
    })
}

/// SiLU-and-multiply with FP8 group quantization of `y (E, T, 2H)` (SPEC §5.2): `q (E, T, H)` and
/// MN-major scales; rows past `counts[e]` are zero.
pub fn silu_mul_quant(
    device: &Device,
    y: ArrayView3<'_, bf16>,
    counts: ArrayView1<'_, i32>,
    fmt: ScaleFormat,
    numerics: Numerics,
) -> Result<(Array3<F8E4M3>, ScaleArray<Ix3>), EngineError> {
    let (e, t, h2) = y.dim();
    // The same rule as `moe op silu-mul-quant`, checked before the halves are taken.
    crate::ops::twice_groups("y", "2H", h2)?;
    let p = SiluMulQuant::new(e, t, h2 / 2, fmt, numerics)?;
    let ssh = p.scale_shape();
    let mut q = try_filled("q", e * t * p.h(), 0u8)?;
    let mut s = scale_buf("s", fmt, ssh.iter().product())?;
    device
        .backend()
        .silu_mul_quant(&p, &contiguous(y), &contiguous(counts), &mut q, s.view_mut())?;
    Ok((f8_array(d3([e, t, p.h()]), q), ScaleArray::from_buf(s, d3(ssh))))
}

/// The masked grouped GEMM `d (E, T, N) = a (E, T, K) · b (E, N, K)ᵀ` with activation scales `sa`
/// (MN-major) and weight scales `sb` (SPEC §5.3); rows past `counts[e]` are zero.
pub fn grouped_gemm(
    device: &Device,
    a: ArrayView3<'_, F8E4M3>,
    sa: &ScaleArray<Ix3>,
    fmt: ScaleFormat,
    b: &QuantWeights,
    counts: ArrayView1<'_, i32>,
) -> Result<Array3<bf16>, EngineError> {
    let (e, t, k) = a.dim();
    let n = b.q.dim().1;
    let p = GroupedGemm::new(e, t, n, k, fmt)?;
    let (sf, sp, packed) = sa.scales();
    let sa = if packed { Scales::Packed(&sp) } else { Scales::F32(&sf) };
    let mut d = try_filled("d", e * t * n, bf16::ZERO)?;
    device.backend().grouped_gemm(
        &p,
        GemmInputs {
            a: &f8_bytes(a),
            sa,
            b: WeightsRef {
                q: &f8_bytes(b.q.view()),
                s: &contiguous(b.s.view()),
            },
            counts: &contiguous(counts),
        },
        &mut d,
    )?;
    Ok(shaped(d3([e, t, n]), d))
}

/// The batched experts stage `out (E, T, K) = GEMM2(silu_mul_quant(GEMM1(a1q, w1)), w2)`
/// (SPEC §5.4), in the activations' scale format; rows past `counts[e]` are zero.
pub fn experts(
    device: &Device,
    acts: &QuantActivations,
    weights: &ExpertsWeights,
    numerics: Numerics,
) -> Result<Array3<bf16>, EngineError> {
    let (e, t, k) = acts.a1q.dim();
    let i = weights.w2.q.dim().2;
    let p = ExpertsStage::new(e, t, k, i, acts.fmt, numerics)?;
    let (sf, sp, packed) = acts.a1s.scales();
    let (a1q, counts) = (f8_bytes(acts.a1q.view()), contiguous(acts.counts.view()));
    let (w1q, w1s) = (f8_bytes(weights.w1.q.view()), contiguous(weights.w1.s.view()));
    let (w2q, w2s) = (f8_bytes(weights.w2.q.view()), contiguous(weights.w2.s.view()));
    let inputs = ExpertsInputs {
        a1q: &a1q,
        a1s: if packed { Scales::Packed(&sp) } else { Scales::F32(&sf) },
        w1: WeightsRef { q: &w1q, s: &w1s },
        w2: WeightsRef { q: &w2q, s: &w2s },
        counts: &counts,
    };
    let p = p.with_expected_m(moe_core::estimate_expected_m(0, 1, e, t, Some(&counts)));
    let mut out = try_filled("out", e * t * k, bf16::ZERO)?;
    let mut ws = ExpertsWorkspace::new(&p);
    device.backend().apply(&p, inputs, &mut ws, &mut out)?;
    Ok(shaped(d3([e, t, k]), out))
}

/// Dispatch and quantize (SPEC §5.5): routes the tokens of `x (M, K)` to `experts` experts of
/// capacity `capacity` by `topk_ids (M, k)` (`-1`: not routed) and quantizes each received row.
pub fn prepare(
    device: &Device,
    x: ArrayView2<'_, bf16>,
    topk_ids: ArrayView2<'_, i32>,
    experts: usize,
    capacity: usize,
    fmt: ScaleFormat,
) -> Result<QuantActivations, EngineError> {
    let (m, k) = x.dim();
    let p = Prepare::new(m, k, topk_ids.dim().1, experts, capacity, fmt)?;
    let ssh = p.quant().scale_shape();
    let mut a1q = try_filled("a1q", experts * capacity * k, 0u8)?;
    let mut a1s = scale_buf("a1s", fmt, ssh.iter().product())?;
    let mut counts = try_filled("counts", experts, 0i32)?;
    device
        .backend()
        .prepare(&p, &contiguous(x), &contiguous(topk_ids), &mut a1q, a1s.view_mut(), &mut counts)?;
    Ok(QuantActivations {
        a1q: f8_array(d3([experts, capacity, k]), a1q),
        a1s: ScaleArray::from_buf(a1s, d3(ssh)),
        counts: Array1::from(counts),
        fmt,
    })
}

/// Weight and combine (SPEC §5.5): `out (M, K)` from `expert_out (E, T, K)`, `topk_ids (M, k)`
/// and `topk_weights (M, k)`.
pub fn finalize(
    device: &Device,
    expert_out: ArrayView3<'_, bf16>,
    topk_ids: ArrayView2<'_, i32>,
    topk_weights: ArrayView2<'_, f32>,
) -> Result<Array2<bf16>, EngineError> {
    let (e, t, k) = expert_out.dim();
    let (m, topk) = topk_ids.dim();
    let p = Finalize::new(m, k, topk, e, t)?;
    let mut out = try_filled("out", m * k, bf16::ZERO)?;
    device.backend().finalize(
        &p,
        &contiguous(expert_out),
        &contiguous(topk_ids),
        &contiguous(topk_weights),
        &mut out,
    )?;
    Ok(shaped(Ix2(m, k), out))
}

/// The router (SPEC §5.6): `topk_ids (M, k)` and `topk_weights (M, k)` from `logits (M, Eg)`
/// and the choice `bias (Eg)` of a `noaux_tc` checkpoint, if given (`cfg.bias` is set from
/// whether it is). A NaN logit is an error naming the token.
pub fn route(
    device: &Device,
    logits: ArrayView2<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    cfg: RouterConfig,
) -> Result<(Array2<i32>, Array2<f32>), EngineError> {
    let (m, eg) = logits.dim();
    let p = Route::new(
        m,
        eg,
        RouterConfig {
            bias: bias.is_some(),
            ..cfg
        },
    )?;
    let k = p.topk();
    let bias = bias.map(contiguous);
    let mut ids = try_filled("topk_ids", m * k, 0i32)?;
    let mut w = try_filled("topk_weights", m * k, 0f32)?;
    device.backend().route(&p, &contiguous(logits), bias.as_deref(), &mut ids, &mut w)?;
    Ok((shaped(Ix2(m, k), ids), shaped(Ix2(m, k), w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceKind;

    #[test]
    fn a_transposed_view_gives_the_same_bytes_as_its_contiguous_copy() {
        let dev = Device::open(DeviceKind::Cpu).unwrap();
        let xt = Array2::from_shape_fn((256, 3), |(c, m)| bf16::from_f32((c as f32 - 100.0) * 0.37 + m as f32));
        let x = xt.t();
        let (q1, s1) = token_group_quant(&dev, x, ScaleFormat::F32).unwrap();
        let (q2, s2) = token_group_quant(&dev, x.to_owned().view(), ScaleFormat::F32).unwrap();
        assert_eq!(q1, q2);
        assert_eq!(s1, s2);
        assert!(q1.iter().any(|v| v.to_bits() != 0));
    }

    #[test]
    fn a_gate_up_width_that_is_not_a_multiple_of_256_names_y_and_2h() {
        let dev = Device::open(DeviceKind::Cpu).unwrap();
        let counts = Array1::from(vec![1]);
        for h2 in [1, 128, 257, 384] {
            let y = Array3::from_elem((1, 2, h2), bf16::ONE);
            let err = silu_mul_quant(&dev, y.view(), counts.view(), ScaleFormat::F32, Numerics::F32).unwrap_err();
            assert!(
                err.is_input() && err.to_string().contains("`y`") && err.to_string().contains("2H"),
                "{h2}: {err}"
            );
        }
    }

    #[test]
    fn route_takes_a_transposed_view_and_names_a_short_bias_and_a_nan_logit() {
        let dev = Device::open(DeviceKind::Cpu).unwrap();
        let lt = Array2::from_shape_fn((8, 3), |(e, m)| (e * 3 + m) as f32 * 0.1);
        let cfg = RouterConfig::new(2, moe_core::Scoring::Sigmoid);
        let (ids, w) = route(&dev, lt.t(), None, cfg).unwrap();
        assert_eq!(ids, Array2::from_shape_vec((3, 2), vec![7, 6, 7, 6, 7, 6]).unwrap());
        assert_eq!((w.dim(), w[[0, 0]]), ((3, 2), 1.0 / (1.0 + moe_core::exp_f32(-2.1))));
        let bias = Array1::from(vec![0f32; 7]);
        let err = route(&dev, lt.t(), Some(bias.view()), cfg).unwrap_err();
        assert!(err.is_input() && err.to_string().contains("`bias`"), "{err}");
        let mut l = lt.t().to_owned();
        l[[2, 5]] = f32::NAN;
        let err = route(&dev, l.view(), None, cfg).unwrap_err();
        assert!(err.is_input() && err.to_string().contains("token 2"), "{err}");
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_the_tensor() {
        let dev = Device::open(DeviceKind::Cpu).unwrap();
        let a = Array3::from_elem((2, 4, 256), F8E4M3::from_bits(0x38));
        let sa = ScaleArray::F32(Array3::from_elem((2, 2, 4), 1.0f32));
        let b = QuantWeights {
            q: Array3::from_elem((3, 128, 256), F8E4M3::from_bits(0x38)),
            s: Array3::from_elem((3, 1, 2), 1.0f32),
        };
        let err = grouped_gemm(&dev, a.view(), &sa, ScaleFormat::F32, &b, Array1::from(vec![1, 1]).view()).unwrap_err();
        assert!(err.is_input() && err.to_string().contains("`b`"), "{err}");
    }
}
