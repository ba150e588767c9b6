//! The step logic of every objective on a small linear model: micro-batch
//! accumulation equals one batch, COT is exactly Algorithm 1 (CE step, then a
//! second forward with the updated weights and a complement step with a separate
//! optimizer), and a non-finite loss leaves the weights alone.

use candle_core::{Device, Tensor, Var};
use cotext::loss::{self, ComplementOptions, LabelHierarchy};
use cotext::train::{
    ComplementLrScale, Head, LossConfig, Objective, Optimizer, OptimizerConfig, Stepper,
};

const K: usize = 5;
const D: usize = 4;

fn data() -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..8 * D)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0)
        .collect();
    let y: Vec<u32> = (0..8).map(|i| (i * 3 % K) as u32).collect();
    (
        Tensor::from_vec(x, (8, D), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, 8, &Device::Cpu).unwrap(),
    )
}

fn weights() -> Var {
    let w: Vec<f32> = (0..K * D)
        .map(|i| ((i * 11 % 7) as f32 - 3.0) / 10.0)
        .collect();
    Var::from_tensor(&Tensor::from_vec(w, (K, D), &Device::Cpu).unwrap()).unwrap()
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.5,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    }
}

fn objectives() -> Vec<Objective> {
    vec![
        Objective::CrossEntropy,
        Objective::Cot,
        Objective::Gce { alpha: 1.0 / 3.0 },
        Objective::Hcot(LabelHierarchy::sst5()),
        Objective::CotJoint { weight: 0.7 },
    ]
}

fn flat(v: &Var) -> Vec<f32> {
    v.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn micro_batches_step_like_one_batch() {
    let (x, y) = data();
    for objective in objectives() {
        let w1 = weights();
        let mut one = Stepper::new(
            objective.clone(),
            LossConfig::default(),
            vec![("w".into(), w1.clone())],
            sgd(),
        )
        .unwrap();
        let w2 = weights();
        let mut two = Stepper::new(
            objective.clone(),
            LossConfig::default(),
            vec![("w".into(), w2.clone())],
            sgd(),
        )
        .unwrap();
        for _ in 0..3 {
            let r1 = one
                .step(&[(x.clone(), y.clone())], |x| {
                    x.matmul(&w1.as_tensor().t()?)
                })
                .unwrap()
                .unwrap();
            // Uneven split: 3 + 5 examples.
            let micro = [
                (x.narrow(0, 0, 3).unwrap(), y.narrow(0, 0, 3).unwrap()),
                (x.narrow(0, 3, 5).unwrap(), y.narrow(0, 3, 5).unwrap()),
            ];
            let r2 = two
                .step(&micro, |x| x.matmul(&w2.as_tensor().t()?))
                .unwrap()
                .unwrap();
            assert!((r1.loss - r2.loss).abs() < 1e-6, "{objective:?}");
            assert_eq!(r1.count, 8);
            assert_eq!(r1.complement.is_some(), objective.reports_complement());
            if let (Some(c1), Some(c2)) = (r1.complement, r2.complement) {
                assert!((c1 - c2).abs() < 1e-6, "{objective:?}");
            }
        }
        for (a, b) in flat(&w1).iter().zip(flat(&w2)) {
            assert!((a - b).abs() < 1e-5, "{objective:?}: {a} vs {b}");
        }
    }
}

/// One COT update written out: optimizer `a` on CE, then a second forward with
/// the updated weights and optimizer `b` on the complement entropy.
fn cot_by_hand(a: &mut Optimizer, b: &mut Optimizer, v: &Var, x: &Tensor, y: &Tensor) {
    let ce = loss::cross_entropy(
        &x.matmul(&v.as_tensor().t().unwrap()).unwrap(),
        y,
        &Default::default(),
    )
    .unwrap();
    a.step(&ce.backward().unwrap()).unwrap();
    let c = loss::complement_entropy(
        &x.matmul(&v.as_tensor().t().unwrap()).unwrap(),
        y,
        &ComplementOptions::default(),
    )
    .unwrap();
    b.step(&c.backward().unwrap()).unwrap();
}

#[test]
fn cot_is_algorithm_one() {
    let (x, y) = data();
    let w = weights();
    let mut stepper = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        sgd(),
    )
    .unwrap();
    // By hand: optimizer A on CE, then a second forward and optimizer B on the
    // complement entropy, B with its own momentum buffer.
    let v = weights();
    let mut a = Optimizer::new(vec![("w".into(), v.clone())], sgd()).unwrap();
    let mut b = Optimizer::new(vec![("w".into(), v.clone())], sgd()).unwrap();
    for _ in 0..3 {
        stepper
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
            .unwrap()
            .unwrap();
        cot_by_hand(&mut a, &mut b, &v, &x, &y);
    }
    assert_eq!(flat(&w), flat(&v));
    // And it is not the same as running both losses through one optimizer.
    let u = weights();
    let mut single = Optimizer::new(vec![("w".into(), u.clone())], sgd()).unwrap();
    for _ in 0..3 {
        let ce = loss::cross_entropy(
            &x.matmul(&u.as_tensor().t().unwrap()).unwrap(),
            &y,
            &Default::default(),
        )
        .unwrap();
        single.step(&ce.backward().unwrap()).unwrap();
        let c = loss::complement_entropy(
            &x.matmul(&u.as_tensor().t().unwrap()).unwrap(),
            &y,
            &ComplementOptions::default(),
        )
        .unwrap();
        single.step(&c.backward().unwrap()).unwrap();
    }
    assert_ne!(flat(&w), flat(&u));
}

#[test]
fn state_round_trip_resumes_both_optimizers() {
    let (x, y) = data();
    let w = weights();
    let mut straight = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        OptimizerConfig::default(),
    )
    .unwrap();
    for _ in 0..4 {
        straight
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
            .unwrap()
            .unwrap();
    }
    let v = weights();
    let mut first = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), v.clone())],
        OptimizerConfig::default(),
    )
    .unwrap();
    for _ in 0..2 {
        first
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&v.as_tensor().t()?))
            .unwrap()
            .unwrap();
    }
    let state = first.state_tensors().unwrap();
    assert!(
        state.keys().any(|k| k.starts_with("complement.m.")),
        "{:?}",
        state.keys()
    );
    let mut resumed = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), v.clone())],
        OptimizerConfig::default(),
    )
    .unwrap();
    resumed.load_state(&state).unwrap();
    for _ in 0..2 {
        resumed
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&v.as_tensor().t()?))
            .unwrap()
            .unwrap();
    }
    assert_eq!(flat(&w), flat(&v));
}

#[test]
fn non_finite_loss_leaves_the_weights_alone() {
    let (_, y) = data();
    let w = weights();
    let before = flat(&w);
    let mut stepper = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        sgd(),
    )
    .unwrap();
    let nan = Tensor::full(f32::NAN, (8, D), &Device::Cpu).unwrap();
    let r = stepper
        .step(&[(nan, y)], |x| x.matmul(&w.as_tensor().t()?))
        .unwrap();
    let err = r.unwrap_err();
    assert_eq!(err.pass, "primary");
    assert!(err.value.is_nan());
    assert_eq!(flat(&w), before);
}

#[test]
fn complement_lr_scale_runs_the_complement_optimizer_at_a_fraction_of_the_rate() {
    let (x, y) = data();
    let w = weights();
    let adam = OptimizerConfig::default();
    let mut stepper = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        adam.clone(),
    )
    .unwrap()
    .with_complement_lr_scale(0.1);
    assert!((stepper.complement_learning_rate().unwrap() - 0.1 * adam.lr()).abs() < 1e-15);
    // The schedule's rate reaches the complement optimizer scaled.
    stepper.set_learning_rate(0.02);
    assert!((stepper.complement_learning_rate().unwrap() - 0.002).abs() < 1e-15);
    // By hand: optimizer A at 0.02 on CE, optimizer B at 0.002 on the complement.
    let v = weights();
    let mut a = Optimizer::new(vec![("w".into(), v.clone())], adam.clone()).unwrap();
    let mut b = Optimizer::new(vec![("w".into(), v.clone())], adam.clone()).unwrap();
    a.set_learning_rate(0.02);
    b.set_learning_rate(0.002);
    for _ in 0..3 {
        stepper
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
            .unwrap()
            .unwrap();
        cot_by_hand(&mut a, &mut b, &v, &x, &y);
    }
    assert_eq!(flat(&w), flat(&v));
    // Objectives with one step have no complement optimizer.
    let ce = Stepper::new(
        Objective::CrossEntropy,
        LossConfig::default(),
        vec![("w".into(), weights())],
        adam,
    )
    .unwrap()
    .with_complement_lr_scale(0.1);
    assert_eq!(ce.complement_learning_rate(), None);
}

/// The gradient of `w ↦ loss(x wᵀ, y)` at `v`.
fn grad_of(v: &Var, x: &Tensor, y: &Tensor, complement: bool) -> Tensor {
    let logits = x.matmul(&v.as_tensor().t().unwrap()).unwrap();
    let l = if complement {
        loss::complement_entropy(&logits, y, &ComplementOptions::default()).unwrap()
    } else {
        loss::cross_entropy(&logits, y, &Default::default()).unwrap()
    };
    l.backward().unwrap().get(v.as_tensor()).unwrap().clone()
}

#[test]
fn cot_joint_gradient_is_the_weighted_sum_of_the_two_gradients() {
    let (x, y) = data();
    let gamma = 0.7;
    // Plain SGD (no momentum) at lr 1: the update is the gradient itself.
    let plain = OptimizerConfig::Sgd {
        lr: 1.0,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let w = weights();
    let mut stepper = Stepper::new(
        Objective::CotJoint { weight: gamma },
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        plain,
    )
    .unwrap();
    let v = weights();
    let g_ce = grad_of(&v, &x, &y, false);
    let g_c = grad_of(&v, &x, &y, true);
    let report = stepper
        .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
        .unwrap()
        .unwrap();
    let expected = (v.as_tensor() - (&g_ce + (&g_c * gamma).unwrap()).unwrap()).unwrap();
    let got = flat(&w);
    for (a, b) in got
        .iter()
        .zip(expected.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // The complement part is really there (γ·g_c is not negligible) ...
    let only_ce = (v.as_tensor() - &g_ce)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(got.iter().zip(&only_ce).any(|(a, b)| (a - b).abs() > 1e-3));
    // ... and the report gives the two parts separately, unweighted.
    let logits = x.matmul(&v.as_tensor().t().unwrap()).unwrap();
    let ce: f32 = loss::cross_entropy(&logits, &y, &Default::default())
        .unwrap()
        .to_scalar()
        .unwrap();
    let c: f32 = loss::complement_entropy(&logits, &y, &ComplementOptions::default())
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        (report.loss - ce as f64).abs() < 1e-6,
        "{} vs {ce}",
        report.loss
    );
    assert!((report.complement.unwrap() - c as f64).abs() < 1e-6);
    // One optimizer: no complement learning rate.
    assert_eq!(stepper.complement_learning_rate(), None);
    // Weight 0 is cross-entropy exactly.
    let w0 = weights();
    let w1 = weights();
    let mut joint0 = Stepper::new(
        Objective::CotJoint { weight: 0.0 },
        LossConfig::default(),
        vec![("w".into(), w0.clone())],
        sgd(),
    )
    .unwrap();
    let mut ce_only = Stepper::new(
        Objective::CrossEntropy,
        LossConfig::default(),
        vec![("w".into(), w1.clone())],
        sgd(),
    )
    .unwrap();
    for _ in 0..3 {
        joint0
            .step(&[(x.clone(), y.clone())], |x| {
                x.matmul(&w0.as_tensor().t()?)
            })
            .unwrap()
            .unwrap();
        ce_only
            .step(&[(x.clone(), y.clone())], |x| {
                x.matmul(&w1.as_tensor().t()?)
            })
            .unwrap()
            .unwrap();
    }
    assert_eq!(flat(&w0), flat(&w1));
}

fn norm(t: &Tensor) -> f64 {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

#[test]
fn auto_complement_lr_scale_is_the_gradient_norm_ratio_under_adam_and_one_under_sgd() {
    let (x, y) = data();
    let adam = OptimizerConfig::default();
    let w = weights();
    let mut stepper = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w.clone())],
        adam.clone(),
    )
    .unwrap()
    .with_complement_lr_scale(ComplementLrScale::Auto);
    // By hand: optimizer A on CE; then the complement gradient at the updated
    // weights, and optimizer B at lr · ‖g_c‖ / ‖g_ce‖.
    let v = weights();
    let mut a = Optimizer::new(vec![("w".into(), v.clone())], adam.clone()).unwrap();
    let mut b = Optimizer::new(vec![("w".into(), v.clone())], adam.clone()).unwrap();
    let mut ratios = Vec::new();
    for _ in 0..3 {
        stepper
            .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
            .unwrap()
            .unwrap();
        let ce = loss::cross_entropy(
            &x.matmul(&v.as_tensor().t().unwrap()).unwrap(),
            &y,
            &Default::default(),
        )
        .unwrap();
        let g = ce.backward().unwrap();
        let g_ce = norm(g.get(v.as_tensor()).unwrap());
        a.step(&g).unwrap();
        let c = loss::complement_entropy(
            &x.matmul(&v.as_tensor().t().unwrap()).unwrap(),
            &y,
            &ComplementOptions::default(),
        )
        .unwrap();
        let g = c.backward().unwrap();
        let ratio = (norm(g.get(v.as_tensor()).unwrap()) / g_ce).min(1.0);
        ratios.push(ratio);
        b.set_learning_rate(adam.lr() * ratio);
        b.step(&g).unwrap();
        assert!((stepper.complement_learning_rate().unwrap() - adam.lr() * ratio).abs() < 1e-12);
    }
    for (p, q) in flat(&w).iter().zip(flat(&v)) {
        assert!((p - q).abs() < 1e-6, "{p} vs {q}");
    }
    // The ratio is a real fraction here (÷K shrinks the complement gradient).
    assert!(ratios.iter().all(|&r| r > 0.0 && r < 0.5), "{ratios:?}");
    // Under SGD the updates already carry the ratio: auto is Algorithm 1.
    let w1 = weights();
    let w2 = weights();
    let mut auto = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w1.clone())],
        sgd(),
    )
    .unwrap()
    .with_complement_lr_scale(ComplementLrScale::Auto);
    let mut one = Stepper::new(
        Objective::Cot,
        LossConfig::default(),
        vec![("w".into(), w2.clone())],
        sgd(),
    )
    .unwrap();
    for _ in 0..3 {
        auto.step(&[(x.clone(), y.clone())], |x| {
            x.matmul(&w1.as_tensor().t()?)
        })
        .unwrap()
        .unwrap();
        one.step(&[(x.clone(), y.clone())], |x| {
            x.matmul(&w2.as_tensor().t()?)
        })
        .unwrap()
        .unwrap();
    }
    assert_eq!(flat(&w1), flat(&w2));
}

#[test]
fn gce_sums_over_the_targets_it_counts() {
    // The ignore index set on the cross-entropy side only: the step counts targets
    // without it, so the GCE sum must skip the same ones (regression: it summed
    // over every target and divided by the smaller count).
    let (x, y) = data();
    let ignore = 0u32;
    assert!(y.to_vec1::<u32>().unwrap().contains(&ignore));
    let losses = LossConfig {
        cross_entropy: loss::CrossEntropyOptions {
            ignore_index: Some(ignore),
            label_smoothing: 0.0,
        },
        ..Default::default()
    };
    let w = weights();
    let mut stepper = Stepper::new(
        Objective::Gce { alpha: 1.0 / 3.0 },
        losses,
        vec![("w".into(), w.clone())],
        sgd(),
    )
    .unwrap();
    let logits = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let opts = ComplementOptions {
        ignore_index: Some(ignore),
        ..Default::default()
    };
    let want = loss::guided_complement_entropy_sum(&logits, &y, 1.0 / 3.0, &opts).unwrap();
    let report = stepper
        .step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?))
        .unwrap()
        .unwrap();
    assert_eq!(report.count, want.count);
    let want = want.mean().unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!(
        (report.loss - want).abs() < 1e-6,
        "{} vs {want}",
        report.loss
    );
}

/// A [`Head::Projected`] (hidden states and output layer) steps like the logits
/// `x·Wᵀ + b` it stands for, for every objective, with padding and micro-batches:
/// the same losses, training accuracy and weights after three updates. CE and COT
/// run the fused projected kernel, the others the logits computed from the head.
#[test]
fn a_projected_head_steps_like_its_logits() {
    // Targets 0 are padding here (two of the eight).
    let (x, y) = data();
    let bias = || {
        Var::from_tensor(&Tensor::new(&[0.1f32, -0.2, 0.05, 0.0, 0.3], &Device::Cpu).unwrap())
            .unwrap()
    };
    for objective in objectives() {
        if matches!(objective, Objective::Hcot(_)) {
            // The SST-5 hierarchy counts every class; padding is not one of them.
            continue;
        }
        let losses = LossConfig {
            cross_entropy: loss::CrossEntropyOptions::default().with_ignore_index(0),
            complement: ComplementOptions::default().with_ignore_index(0),
            chunked: true,
            ..LossConfig::default()
        };
        let (w1, b1, w2, b2) = (weights(), bias(), weights(), bias());
        let stepper = |w: &Var, b: &Var| {
            Stepper::new(
                objective.clone(),
                losses.clone(),
                vec![("w".into(), w.clone()), ("b".into(), b.clone())],
                sgd(),
            )
            .unwrap()
        };
        let (mut logits, mut projected) = (stepper(&w1, &b1), stepper(&w2, &b2));
        let micro = [
            (x.narrow(0, 0, 3).unwrap(), y.narrow(0, 0, 3).unwrap()),
            (x.narrow(0, 3, 5).unwrap(), y.narrow(0, 3, 5).unwrap()),
        ];
        for _ in 0..3 {
            let r1 = logits
                .step(&micro, |x| {
                    x.matmul(&w1.as_tensor().t()?)?
                        .broadcast_add(b1.as_tensor())
                })
                .unwrap()
                .unwrap();
            let r2 = projected
                .step(&micro, |x| -> candle_core::Result<Head> {
                    Ok(Head::Projected {
                        hidden: x.clone(),
                        weight: w2.as_tensor().clone(),
                        bias: Some(b2.as_tensor().clone()),
                    })
                })
                .unwrap()
                .unwrap();
            assert!((r1.loss - r2.loss).abs() < 1e-6, "{objective:?}");
            assert_eq!(
                (r1.count, r1.correct),
                (r2.count, r2.correct),
                "{objective:?}"
            );
            assert_eq!(r1.count, 6, "two of the eight targets are padding");
            if let (Some(c1), Some(c2)) = (r1.complement, r2.complement) {
                assert!((c1 - c2).abs() < 1e-6, "{objective:?}");
            }
        }
        for (a, b) in [(&w1, &w2), (&b1, &b2)] {
            for (p, q) in flat(a).iter().zip(flat(b)) {
                assert!((p - q).abs() < 1e-5, "{objective:?}: {p} vs {q}");
            }
        }
    }
}
