//! Invariants of the losses that need no outside oracle: the target logit gets no
//! complement gradient, K = 2 is exactly zero, padding changes nothing, micro-batch
//! accumulation equals one batch, chunked equals plain, and HCOT's special cases.

use candle_core::{DType, Device, Tensor, Var};
use cotext::loss::{
    self, ComplementOptions, CrossEntropyOptions, Form, LabelHierarchy, Normalization,
    ProjectedLoss,
};

/// Deterministic pseudo-random logits (SplitMix64 → uniform in [-scale, scale]).
fn logits(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let data: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn targets(values: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

fn grad_of(value: &Tensor, var: &Var) -> Tensor {
    value.backward().unwrap().get(var).unwrap().clone()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn exact() -> ComplementOptions {
    ComplementOptions::default()
}

#[test]
fn exact_form_gives_the_target_logit_no_gradient() {
    let z = Var::from_tensor(&logits(&[7, 12], 1, 4.0)).unwrap();
    let t: Vec<u32> = vec![0, 3, 11, 5, 5, 2, 9];
    let tt = targets(&t, &[7]);
    for chunked in [false, true] {
        let value = if chunked {
            loss::chunked_complement_entropy(&z, &tt, &exact())
        } else {
            loss::complement_entropy(&z, &tt, &exact())
        }
        .unwrap();
        let g: Vec<Vec<f64>> = grad_of(&value, &z).to_vec2().unwrap();
        for (row, &target) in t.iter().enumerate() {
            assert_eq!(g[row][target as usize], 0.0, "row {row}, chunked {chunked}");
            assert!(g[row].iter().any(|&x| x != 0.0), "row {row} has a gradient");
        }
    }
    // The reference form's epsilon leaks a (tiny) gradient into the target logit.
    let value = loss::complement_entropy(&z, &tt, &ComplementOptions::authors_cot()).unwrap();
    let g: Vec<Vec<f64>> = grad_of(&value, &z).to_vec2().unwrap();
    assert!(t.iter().enumerate().any(|(r, &c)| g[r][c as usize] != 0.0));
}

#[test]
fn two_classes_give_exactly_zero() {
    let z = Var::from_tensor(&logits(&[9, 2], 2, 10.0)).unwrap();
    let tt = targets(&[0, 1, 1, 0, 1, 0, 0, 1, 1], &[9]);
    for norm in [
        Normalization::None,
        Normalization::Classes,
        Normalization::LogClasses,
        Normalization::LogClassesMinusOne,
        Normalization::ClassesMinusOne,
    ] {
        let opts = ComplementOptions {
            normalization: norm,
            ..exact()
        };
        let values = [
            loss::complement_entropy(&z, &tt, &opts).unwrap(),
            loss::chunked_complement_entropy(&z, &tt, &opts).unwrap(),
            loss::guided_complement_entropy(&z, &tt, 1.0 / 3.0, &opts).unwrap(),
        ];
        for v in &values {
            assert_eq!(scalar(v), 0.0, "{norm:?}");
            let g = grad_of(v, &z);
            assert_eq!(max_abs_diff(&g, &g.zeros_like().unwrap()), 0.0, "{norm:?}");
        }
    }
}

#[test]
fn padded_positions_change_nothing() {
    let (b, t, v, pad) = (3, 6, 9, 0u32);
    let tv: Vec<u32> = vec![1, 2, 3, 0, 0, 0, 4, 5, 6, 7, 8, 1, 2, 0, 0, 0, 0, 0];
    let tt = targets(&tv, &[b, t]);
    let base = logits(&[b, t, v], 3, 3.0);
    // Same logits at real positions; garbage (including inf and NaN) at the pads.
    let mask: Vec<f64> = tv
        .iter()
        .flat_map(|&x| std::iter::repeat_n(if x == pad { 1.0 } else { 0.0 }, v))
        .collect();
    let mask = Tensor::from_vec(mask, (b, t, v), &Device::Cpu).unwrap();
    let noisy = (&base + (&mask * 1e6).unwrap()).unwrap();
    let mut poisoned = noisy.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    poisoned[3 * v] = f64::NAN;
    poisoned[3 * v + 1] = f64::INFINITY;
    let poisoned = Tensor::from_vec(poisoned, (b, t, v), &Device::Cpu).unwrap();

    type LossFn<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let ce = CrossEntropyOptions::default()
        .with_ignore_index(pad)
        .with_label_smoothing(0.1);
    let co = exact().with_ignore_index(pad);
    let reference = ComplementOptions::authors_cot().with_ignore_index(pad);
    let h = LabelHierarchy::new(vec![0, 0, 0, 1, 1, 1, 2, 2, 2]).unwrap();
    let tt = &tt;
    let losses: Vec<(&str, LossFn)> = vec![
        ("ce", Box::new(|z| loss::cross_entropy(z, tt, &ce).unwrap())),
        (
            "complement",
            Box::new(|z| loss::complement_entropy(z, tt, &co).unwrap()),
        ),
        (
            "reference",
            Box::new(|z| loss::complement_entropy(z, tt, &reference).unwrap()),
        ),
        (
            "gce",
            Box::new(|z| loss::guided_complement_entropy(z, tt, 0.3, &co).unwrap()),
        ),
        (
            "hcot",
            Box::new(|z| loss::hierarchical_complement_entropy(z, tt, &h, &co).unwrap()),
        ),
        (
            "chunked ce",
            Box::new(|z| loss::chunked_cross_entropy(z, tt, &ce).unwrap()),
        ),
        (
            "chunked complement",
            Box::new(|z| loss::chunked_complement_entropy(z, tt, &co).unwrap()),
        ),
    ];
    for (name, f) in &losses {
        let z0 = Var::from_tensor(&base).unwrap();
        let v0 = f(&z0);
        let g0 = grad_of(&v0, &z0);
        for other in [&noisy, &poisoned] {
            let z1 = Var::from_tensor(other).unwrap();
            let v1 = f(&z1);
            let g1 = grad_of(&v1, &z1);
            assert_eq!(scalar(&v0), scalar(&v1), "{name}: value");
            assert_eq!(max_abs_diff(&g0, &g1), 0.0, "{name}: gradient");
        }
        // Pads get exactly zero gradient.
        let pad_grad = (&g0 * &mask).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(scalar(&pad_grad), 0.0, "{name}: gradient at pads");
    }
}

#[test]
fn accumulating_micro_batches_equals_one_batch() {
    let (v, pad) = (13, 0u32);
    // Two micro-batches with different numbers of real tokens (7 and 2).
    let t1: Vec<u32> = vec![1, 2, 3, 4, 0, 5, 6, 7, 0, 0];
    let t2: Vec<u32> = vec![8, 9, 0, 0, 0, 0, 0, 0, 0, 0];
    let z1 = logits(&[2, 5, v], 4, 3.0);
    let z2 = logits(&[2, 5, v], 5, 3.0);
    let whole_t: Vec<u32> = t1.iter().chain(&t2).copied().collect();
    let whole_z = Tensor::cat(&[&z1, &z2], 0).unwrap();
    let co = exact().with_ignore_index(pad);
    let ce = CrossEntropyOptions::default().with_ignore_index(pad);
    for which in ["ce", "complement", "chunked"] {
        let sum = |z: &Tensor, t: &[u32]| {
            let tt = targets(t, &[t.len() / 5, 5]);
            match which {
                "ce" => loss::cross_entropy_sum(z, &tt, &ce),
                "complement" => loss::complement_entropy_sum(z, &tt, &co),
                _ => loss::chunked_complement_entropy_sum(z, &tt, &co),
            }
            .unwrap()
        };
        let w = Var::from_tensor(&whole_z).unwrap();
        let whole = sum(&w, &whole_t).mean().unwrap();
        let g_whole = grad_of(&whole, &w);

        let total = loss::count_targets(&targets(&t1, &[2, 5]), Some(pad)).unwrap()
            + loss::count_targets(&targets(&t2, &[2, 5]), Some(pad)).unwrap();
        assert_eq!(total, 9);
        let a = Var::from_tensor(&z1).unwrap();
        let b = Var::from_tensor(&z2).unwrap();
        let la = sum(&a, &t1).scaled(total).unwrap();
        let lb = sum(&b, &t2).scaled(total).unwrap();
        let g = Tensor::cat(&[&grad_of(&la, &a), &grad_of(&lb, &b)], 0).unwrap();
        assert!(
            (scalar(&la) + scalar(&lb) - scalar(&whole)).abs() < 1e-14,
            "{which}: value"
        );
        assert!(max_abs_diff(&g, &g_whole) < 1e-15, "{which}: gradient");
        // The mean of means is not the same thing: that is why LossSum exists.
        let mean_of_means =
            (scalar(&sum(&z1, &t1).mean().unwrap()) + scalar(&sum(&z2, &t2).mean().unwrap())) / 2.0;
        assert!((mean_of_means - scalar(&whole)).abs() > 1e-6, "{which}");
    }
}

#[test]
fn chunked_equals_plain_at_a_large_vocabulary() {
    let (n, v) = (24, 5000);
    let mut tv: Vec<u32> = (0..n as u32).map(|i| (i * 977 + 13) % v as u32).collect();
    tv[5] = 0; // a pad
    tv[17] = 0;
    let tt = targets(&tv, &[n]);
    for dtype in [DType::F64, DType::F32] {
        let base = logits(&[n, v], 6, 6.0).to_dtype(dtype).unwrap();
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
        let co = ComplementOptions {
            normalization: Normalization::LogClassesMinusOne,
            ..exact()
        }
        .with_ignore_index(0);
        let ce = CrossEntropyOptions::default()
            .with_ignore_index(0)
            .with_label_smoothing(0.1);
        type LossFn<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
        let pairs: [(&str, LossFn, LossFn); 2] = [
            (
                "complement",
                Box::new(|z| loss::complement_entropy(z, &tt, &co).unwrap()),
                Box::new(|z| loss::chunked_complement_entropy(z, &tt, &co).unwrap()),
            ),
            (
                "ce",
                Box::new(|z| loss::cross_entropy(z, &tt, &ce).unwrap()),
                Box::new(|z| loss::chunked_cross_entropy(z, &tt, &ce).unwrap()),
            ),
        ];
        for (name, plain, chunked) in &pairs {
            let a = Var::from_tensor(&base).unwrap();
            let b = Var::from_tensor(&base).unwrap();
            let (va, vb) = (plain(&a), chunked(&b));
            assert!(
                (scalar(&va) - scalar(&vb)).abs() <= tol * scalar(&va).abs().max(1.0),
                "{name} {dtype:?}: {} vs {}",
                scalar(&va),
                scalar(&vb)
            );
            let d = max_abs_diff(&grad_of(&va, &a), &grad_of(&vb, &b));
            assert!(
                d <= tol / n as f64,
                "{name} {dtype:?}: gradient differs by {d:e}"
            );
        }
    }
}

#[test]
fn projected_loss_equals_plain_loss_on_the_projection() {
    let (b, t, hdim, v) = (2, 7, 16, 301);
    let h0 = logits(&[b, t, hdim], 7, 1.0);
    let w0 = logits(&[v, hdim], 8, 0.5);
    let b0 = logits(&[v], 9, 0.5);
    let tv: Vec<u32> = (0..(b * t) as u32)
        .map(|i| {
            if i % 5 == 4 {
                0
            } else {
                (i * 37 + 1) % v as u32
            }
        })
        .collect();
    let tt = targets(&tv, &[b, t]);
    let co = exact().with_ignore_index(0);
    let ce = CrossEntropyOptions::default()
        .with_ignore_index(0)
        .with_label_smoothing(0.05);
    for (name, which) in [
        ("complement", ProjectedLoss::Complement(co)),
        ("ce", ProjectedLoss::CrossEntropy(ce)),
    ] {
        let (h, w, bias) = (
            Var::from_tensor(&h0).unwrap(),
            Var::from_tensor(&w0).unwrap(),
            Var::from_tensor(&b0).unwrap(),
        );
        let logits = h
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let plain = match which {
            ProjectedLoss::Complement(o) => loss::complement_entropy_sum(&logits, &tt, &o),
            ProjectedLoss::CrossEntropy(o) => loss::cross_entropy_sum(&logits, &tt, &o),
        }
        .unwrap();
        // A non-trivial upstream: 3·mean, so the surrogate's linearity is exercised.
        let plain_v = (plain.mean().unwrap() * 3.0).unwrap();
        let gp = plain_v.backward().unwrap();
        for chunk in [1, 4, 0] {
            let (h2, w2, b2) = (
                Var::from_tensor(&h0).unwrap(),
                Var::from_tensor(&w0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let fused =
                loss::projected_token_loss(&h2, &w2, Some(&b2), &tt, &which, chunk).unwrap();
            assert_eq!(fused.count, plain.count);
            let fused_v = (fused.mean().unwrap() * 3.0).unwrap();
            assert!(
                (scalar(&fused_v) - scalar(&plain_v)).abs() < 1e-12,
                "{name}/{chunk}: value"
            );
            let gf = fused_v.backward().unwrap();
            for (a, bb, what) in [
                (&h, &h2, "hidden"),
                (&w, &w2, "weight"),
                (&bias, &b2, "bias"),
            ] {
                let d = max_abs_diff(gp.get(a).unwrap(), gf.get(bb).unwrap());
                assert!(
                    d < 1e-13,
                    "{name}/{chunk}: {what} gradient differs by {d:e}"
                );
            }
        }
    }
}

#[test]
fn hcot_special_cases_reduce_to_complement_entropy() {
    let z0 = logits(&[10, 6], 10, 3.0);
    let tt = targets(&[0, 1, 2, 3, 4, 5, 5, 4, 3, 2], &[10]);
    let opts = exact();
    let a = Var::from_tensor(&z0).unwrap();
    let plain = loss::complement_entropy(&a, &tt, &opts).unwrap();
    let g_plain = grad_of(&plain, &a);
    for (what, h) in [
        (
            "one group per class",
            LabelHierarchy::new((0..6).collect()).unwrap(),
        ),
        (
            "one group for all",
            LabelHierarchy::new(vec![0; 6]).unwrap(),
        ),
    ] {
        let b = Var::from_tensor(&z0).unwrap();
        let v = loss::hierarchical_complement_entropy(&b, &tt, &h, &opts).unwrap();
        assert!(
            (scalar(&v) - scalar(&plain)).abs() < 1e-15,
            "{what}: {} vs {}",
            scalar(&v),
            scalar(&plain)
        );
        assert!(
            max_abs_diff(&grad_of(&v, &b), &g_plain) < 1e-15,
            "{what}: gradient"
        );
    }
    // A real hierarchy differs from the flat loss.
    let v = loss::hierarchical_complement_entropy(
        &z0,
        &tt,
        &LabelHierarchy::new(vec![0, 0, 1, 1, 1, 2]).unwrap(),
        &opts,
    )
    .unwrap();
    assert!((scalar(&v) - scalar(&plain)).abs() > 1e-3);
}

#[test]
fn label_hierarchy_is_validated() {
    assert!(LabelHierarchy::new(vec![0, 0, 2])
        .unwrap_err()
        .contains("group 1"));
    assert!(LabelHierarchy::new(vec![0]).is_err());
    assert!(LabelHierarchy::from_groups(&[vec![0, 1], vec![1, 2]])
        .unwrap_err()
        .contains("class 1 appears in groups 0 and 1"));
    assert!(LabelHierarchy::from_groups(&[vec![0, 1], vec![5]])
        .unwrap_err()
        .contains("out of range"));
    assert_eq!(
        LabelHierarchy::from_groups(&[vec![0, 1], vec![2], vec![3, 4]]).unwrap(),
        LabelHierarchy::sst5()
    );
    let z = logits(&[2, 4], 11, 1.0);
    let err = loss::hierarchical_complement_entropy(
        &z,
        &targets(&[0, 1], &[2]),
        &LabelHierarchy::sst5(),
        &exact(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("5 classes but the logits have 4"),
        "{err}"
    );
    let err = loss::hierarchical_complement_entropy(
        &logits(&[2, 5], 1, 1.0),
        &targets(&[0, 1], &[2]),
        &LabelHierarchy::sst5(),
        &ComplementOptions {
            form: Form::Reference,
            ..exact()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("Form::Exact"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let z = logits(&[3, 5], 12, 1.0);
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(loss::complement_entropy(
        &z,
        &targets(&[0, 5, 1], &[3]),
        &exact()
    ))
    .contains("target 5 at row 1"));
    assert!(msg(loss::cross_entropy(
        &z,
        &targets(&[0, 1], &[2]),
        &Default::default()
    ))
    .contains("[N, K]"));
    assert!(msg(loss::complement_entropy(
        &logits(&[3, 1], 1, 1.0),
        &targets(&[0, 0, 0], &[3]),
        &exact()
    ))
    .contains("at least 2 classes"));
    let neg = Tensor::new(&[0i64, -1, 2], &Device::Cpu).unwrap();
    assert!(msg(loss::cross_entropy(&z, &neg, &Default::default())).contains("target -1"));
    assert!(msg(loss::cross_entropy(
        &z,
        &targets(&[0, 1, 2], &[3]),
        &CrossEntropyOptions {
            label_smoothing: 1.5,
            ..Default::default()
        }
    ))
    .contains("label_smoothing"));
    assert!(msg(loss::guided_complement_entropy(
        &z,
        &targets(&[0, 1, 2], &[3]),
        -1.0,
        &exact()
    ))
    .contains("alpha"));
    assert!(msg(loss::chunked_complement_entropy(
        &z,
        &targets(&[0, 1, 2], &[3]),
        &ComplementOptions::authors_cot()
    ))
    .contains("Form::Exact"));
}

#[test]
fn a_batch_of_padding_is_zero_not_nan() {
    let z = Var::from_tensor(&logits(&[2, 3, 7], 13, 1.0)).unwrap();
    let tt = targets(&[0; 6], &[2, 3]);
    for v in [
        loss::cross_entropy(
            &z,
            &tt,
            &CrossEntropyOptions::default().with_ignore_index(0),
        )
        .unwrap(),
        loss::complement_entropy(&z, &tt, &exact().with_ignore_index(0)).unwrap(),
        loss::chunked_complement_entropy(&z, &tt, &exact().with_ignore_index(0)).unwrap(),
    ] {
        assert_eq!(scalar(&v), 0.0);
    }
    assert_eq!(
        loss::complement_entropy_sum(&z, &tt, &exact().with_ignore_index(0))
            .unwrap()
            .count,
        0
    );
}

#[test]
fn half_precision_logits_are_upcast() {
    let z = logits(&[4, 6], 14, 2.0);
    let tt = targets(&[0, 1, 2, 3], &[4]);
    let full =
        scalar(&loss::complement_entropy(&z.to_dtype(DType::F32).unwrap(), &tt, &exact()).unwrap());
    for dt in [DType::BF16, DType::F16] {
        let v = loss::complement_entropy(&z.to_dtype(dt).unwrap(), &tt, &exact()).unwrap();
        assert_eq!(v.dtype(), DType::F32);
        assert!((scalar(&v) - full).abs() < 2e-2 * full.abs(), "{dt:?}");
    }
}

/// The reference form spells out `candle_nn::ops::softmax` so that the loss builds on
/// candle-core alone; its value and gradient must stay bit-identical to the authors'
/// operations written with candle-nn's softmax, in f32 and f64.
#[test]
fn reference_form_is_bit_identical_to_the_candle_nn_softmax() {
    let (n, k) = (8, 7);
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3) % k as u32).collect();
    let g = targets(&labels, &[n]);
    let zerohot: Vec<f64> = (0..n * k)
        .map(|i| {
            if (i % k) as u32 == labels[i / k] {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let opts = ComplementOptions {
        form: Form::Reference,
        normalization: Normalization::None,
        ..ComplementOptions::default()
    };
    for dtype in [DType::F32, DType::F64] {
        let z = Var::from_tensor(&logits(&[n, k], 71, 6.0).to_dtype(dtype).unwrap()).unwrap();
        let ours = loss::complement_entropy(z.as_tensor(), &g, &opts).unwrap();
        let ours_grad = ours.backward().unwrap().get(&z).unwrap().clone();

        // The authors' `ComplementEntropy.forward`, op for op, then our sum and mean.
        let y_hat = candle_nn::ops::softmax(z.as_tensor(), 1).unwrap();
        let yg = y_hat.gather(&g.unsqueeze(1).unwrap(), 1).unwrap();
        let yg_ = (yg.affine(-1.0, 1.0).unwrap() + 1e-7).unwrap();
        let px = y_hat.broadcast_div(&yg_).unwrap();
        let px_log = (&px + 1e-10).unwrap().log().unwrap();
        let mask = Tensor::from_vec(zerohot.clone(), (n, k), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let rows = ((px * px_log).unwrap() * mask).unwrap().sum(1).unwrap();
        let theirs = rows
            .sum_all()
            .unwrap()
            .affine(1.0, 0.0)
            .unwrap()
            .affine(1.0 / n as f64, 0.0)
            .unwrap();
        let theirs_grad = theirs.backward().unwrap().get(&z).unwrap().clone();

        let bits = |t: &Tensor| -> Vec<u64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .into_iter()
                .map(f64::to_bits)
                .collect()
        };
        assert_eq!(bits(&ours), bits(&theirs), "{dtype:?} value");
        assert_eq!(bits(&ours_grad), bits(&theirs_grad), "{dtype:?} gradient");
    }
}
