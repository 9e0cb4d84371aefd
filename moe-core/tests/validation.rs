//! Every constructor and `check*` method rejects malformed input with a typed error that names
//! the tensor and the dimension (SPEC §7).

use moe_core::*;

fn dim_of(e: &ProblemError) -> &'static str {
    match e {
        ProblemError::Dim { dim, .. } | ProblemError::NotMultiple { dim, .. } | ProblemError::TooSmall { dim, .. } => dim,
        _ => "",
    }
}

#[test]
fn reduction_dims_must_be_multiples_of_128() {
    let cases: Vec<(ProblemError, &str, &str)> = vec![
        (
            TokenGroupQuant::new(1, 100, ScaleFormat::F32, ScaleLayout::RowMajor).unwrap_err(),
            "x",
            "K",
        ),
        (BatchedTokenGroupQuant::new(1, 1, 129, ScaleFormat::F32).unwrap_err(), "x", "K"),
        (SiluMulQuant::new(1, 1, 64, ScaleFormat::F32, Numerics::F32).unwrap_err(), "q", "H"),
        (GroupedGemm::new(1, 1, 128, 200, ScaleFormat::F32).unwrap_err(), "a", "K"),
        (GroupedGemm::new(1, 1, 100, 128, ScaleFormat::F32).unwrap_err(), "b", "N"),
        (
            ExpertsStage::new(1, 1, 7000, 2048, ScaleFormat::F32, Numerics::F32).unwrap_err(),
            "a1q",
            "K",
        ),
        (
            ExpertsStage::new(1, 1, 7168, 2000, ScaleFormat::F32, Numerics::F32).unwrap_err(),
            "w1",
            "I",
        ),
        (Prepare::new(4, 300, 2, 2, 4, ScaleFormat::F32).unwrap_err(), "x", "K"),
    ];
    for (e, tensor, dim) in cases {
        assert_eq!(e.tensor(), tensor, "{e}");
        assert_eq!(dim_of(&e), dim, "{e}");
        assert!(
            e.to_string().contains(tensor) && e.to_string().contains(dim),
            "message names both: {e}"
        );
    }
}

#[test]
fn zero_sized_dims_are_rejected_where_meaningless() {
    assert!(matches!(
        GroupedGemm::new(0, 1, 128, 128, ScaleFormat::F32),
        Err(ProblemError::TooSmall { dim: "E", .. })
    ));
    assert!(matches!(
        GroupedGemm::new(1, 0, 128, 128, ScaleFormat::F32),
        Err(ProblemError::TooSmall { dim: "T", .. })
    ));
    assert!(matches!(
        BlockQuant::new(1, 0, 5, false),
        Err(ProblemError::TooSmall { dim: "R", .. })
    ));
    assert!(matches!(
        Prepare::new(1, 128, 0, 2, 2, ScaleFormat::F32),
        Err(ProblemError::TooSmall { dim: "topk", .. })
    ));
    // Zero tokens is a valid (empty) batch.
    assert!(Prepare::new(0, 128, 2, 2, 2, ScaleFormat::F32).is_ok());
    assert!(TokenGroupQuant::new(0, 128, ScaleFormat::F32, ScaleLayout::RowMajor).is_ok());
}

#[test]
fn buffer_lengths_and_scale_kinds_are_checked_per_tensor() {
    let p = GroupedGemm::new(2, 3, 256, 256, ScaleFormat::F32).unwrap();
    let a = vec![0u8; 2 * 3 * 256];
    let b = vec![0u8; 2 * 256 * 256];
    let sa = vec![0f32; 2 * 2 * 3];
    let sb = vec![0f32; 2 * 2 * 2];
    let d = vec![bf16::ZERO; 2 * 3 * 256];
    let counts = [3, 0];
    let gi = |a: &[u8], sa: Scales<'_>, b: &[u8], sb: &[f32], counts: &[i32], d: &[bf16]| {
        let inputs = GemmInputs {
            a,
            sa,
            b: WeightsRef { q: b, s: sb },
            counts,
        };
        // The inputs are checked alike with and without an output buffer.
        if let Err(e) = p.check_inputs(&inputs) {
            assert_eq!(p.check(&inputs, d), Err(e.clone()));
            return Err(e);
        }
        p.check(&inputs, d)
    };
    assert!(gi(&a, Scales::F32(&sa), &b, &sb, &counts, &d).is_ok());
    let tensor = |r: Result<(), ProblemError>| r.unwrap_err().tensor().to_string();
    assert_eq!(tensor(gi(&a[1..], Scales::F32(&sa), &b, &sb, &counts, &d)), "a");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa[1..]), &b, &sb, &counts, &d)), "sa");
    assert_eq!(tensor(gi(&a, Scales::Packed(&[0; 6]), &b, &sb, &counts, &d)), "sa");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b[1..], &sb, &counts, &d)), "b");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b, &sb[1..], &counts, &d)), "sb");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b, &sb, &[3], &d)), "counts");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b, &sb, &[4, 0], &d)), "counts");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b, &sb, &[0, -1], &d)), "counts");
    assert_eq!(tensor(gi(&a, Scales::F32(&sa), &b, &sb, &counts, &d[1..])), "d");
    // Packed activation scales: (E, ceil(G/4), T) words.
    let pp = GroupedGemm::new(2, 3, 256, 256, ScaleFormat::Ue8m0Packed).unwrap();
    assert_eq!(pp.sa_shape(), [2, 1, 3]);
    let packed = GemmInputs {
        a: &a,
        sa: Scales::Packed(&[0; 6]),
        b: WeightsRef { q: &b, s: &sb },
        counts: &counts,
    };
    assert!(pp.check(&packed, &d).is_ok());
}

#[test]
fn experts_check_names_each_weight_tensor() {
    let p = ExpertsStage::new(2, 4, 256, 128, ScaleFormat::F32CeilUe8m0, Numerics::VllmBf16).unwrap();
    let a1q = vec![0u8; 2 * 4 * 256];
    let a1s = vec![1f32; 2 * 2 * 4];
    let w1 = vec![0u8; 2 * 256 * 256];
    let w1s = vec![1f32; 2 * 2 * 2];
    let w2 = vec![0u8; 2 * 256 * 128];
    let w2s = vec![1f32; 2 * 2];
    let out = vec![bf16::ZERO; 2 * 4 * 256];
    let ok = |w1: &[u8], w1s: &[f32], w2: &[u8], w2s: &[f32]| {
        let inputs = ExpertsInputs {
            a1q: &a1q,
            a1s: Scales::F32(&a1s),
            w1: WeightsRef { q: w1, s: w1s },
            w2: WeightsRef { q: w2, s: w2s },
            counts: &[4, 1],
        };
        // The inputs are checked alike with and without an output buffer.
        let without_out = p.check_inputs(&inputs);
        assert_eq!(p.check(&inputs, &out), without_out);
        without_out
    };
    assert!(ok(&w1, &w1s, &w2, &w2s).is_ok());
    assert_eq!(ok(&w1[1..], &w1s, &w2, &w2s).unwrap_err().tensor(), "w1");
    assert_eq!(ok(&w1, &w1s[1..], &w2, &w2s).unwrap_err().tensor(), "w1s");
    assert_eq!(ok(&w1, &w1s, &w2[1..], &w2s).unwrap_err().tensor(), "w2");
    assert_eq!(ok(&w1, &w1s, &w2, &w2s[1..]).unwrap_err().tensor(), "w2s");
    let good = ExpertsInputs {
        a1q: &a1q,
        a1s: Scales::F32(&a1s),
        w1: WeightsRef { q: &w1, s: &w1s },
        w2: WeightsRef { q: &w2, s: &w2s },
        counts: &[4, 1],
    };
    assert_eq!(p.check(&good, &out[1..]).unwrap_err().tensor(), "out");
    assert_eq!(
        p.check_inputs(&ExpertsInputs { counts: &[5, 0], ..good }),
        Err(ProblemError::Count {
            expert: 0,
            count: 5,
            capacity: 4
        })
    );
}

#[test]
fn prepare_and_finalize_validate_routing() {
    let p = Prepare::new(2, 128, 2, 3, 1, ScaleFormat::F32).unwrap();
    let x = vec![bf16::ONE; 256];
    let q = vec![0u8; 3 * 128];
    let s = vec![0f32; 3];
    let c = vec![0i32; 3];
    let chk = |ids: &[i32]| p.check(&x, ids, &q, &ScalesMut::F32(&mut s.clone()), &c);
    assert!(chk(&[0, 1, 2, -1]).is_ok());
    assert_eq!(
        chk(&[0, 3, 1, 2]).unwrap_err(),
        ProblemError::TopkId {
            token: 0,
            slot: 1,
            id: 3,
            experts: 3
        }
    );
    assert_eq!(
        chk(&[0, 1, -5, 2]).unwrap_err(),
        ProblemError::TopkId {
            token: 1,
            slot: 0,
            id: -5,
            experts: 3
        }
    );
    assert_eq!(
        chk(&[0, 1, 0, 2]).unwrap_err(),
        ProblemError::Overflow {
            expert: 0,
            count: 2,
            capacity: 1
        }
    );
    // A token listing the same expert twice counts once.
    assert!(chk(&[0, 0, 1, 1]).is_ok());
    assert_eq!(chk(&[0, 1, 2]).unwrap_err().tensor(), "topk_ids");

    let f = Finalize::new(2, 128, 2, 3, 1).unwrap();
    let eo = vec![bf16::ZERO; 3 * 128];
    let w = vec![1f32; 4];
    let out = vec![bf16::ZERO; 256];
    assert!(f.check(&eo, &[0, 1, 2, -1], &w, &out).is_ok());
    assert_eq!(f.check(&eo, &[0, 1, 2, -1], &w[1..], &out).unwrap_err().tensor(), "topk_weights");
    assert_eq!(f.check(&eo[1..], &[0, 1, 2, -1], &w, &out).unwrap_err().tensor(), "expert_out");
    assert_eq!(
        f.check(&eo, &[0, 1, 0, -1], &w, &out).unwrap_err(),
        ProblemError::Overflow {
            expert: 0,
            count: 2,
            capacity: 1
        }
    );
}

#[test]
fn sizes_that_overflow_are_errors_not_panics() {
    let big = usize::MAX / 4;
    assert!(matches!(BlockQuant::new(big, big, big, false), Err(ProblemError::TooLarge { .. })));
    assert!(matches!(
        ExpertsStage::new(big, 1, 128, 128, ScaleFormat::F32, Numerics::F32),
        Err(ProblemError::TooLarge { .. })
    ));
    assert!(matches!(
        Prepare::new(big, 128, big, 2, 2, ScaleFormat::F32),
        Err(ProblemError::TooLarge { .. })
    ));
}
