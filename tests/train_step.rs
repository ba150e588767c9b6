//! The step logic of every objective on a small linear model: micro-batch
//! accumulation equals one batch, COT is exactly Algorithm 1 (CE step, then a
//! second forward with the updated weights and a complement step with a separate
//! optimizer), and a non-finite loss leaves the weights alone.

use candle_core::{Device, Tensor, Var};
use cotext::loss::{self, ComplementOptions, LabelHierarchy};
use cotext::train::{LossConfig, Objective, Optimizer, OptimizerConfig, Stepper};

const K: usize = 5;
const D: usize = 4;

fn data() -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..8 * D).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
    let y: Vec<u32> = (0..8).map(|i| (i * 3 % K) as u32).collect();
    (Tensor::from_vec(x, (8, D), &Device::Cpu).unwrap(), Tensor::from_vec(y, 8, &Device::Cpu).unwrap())
}

fn weights() -> Var {
    let w: Vec<f32> = (0..K * D).map(|i| ((i * 11 % 7) as f32 - 3.0) / 10.0).collect();
    Var::from_tensor(&Tensor::from_vec(w, (K, D), &Device::Cpu).unwrap()).unwrap()
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd { lr: 0.5, momentum: 0.9, nesterov: false, weight_decay: 0.0 }
}

fn objectives() -> Vec<Objective> {
    vec![
        Objective::CrossEntropy,
        Objective::Cot,
        Objective::Gce { alpha: 1.0 / 3.0 },
        Objective::Hcot(LabelHierarchy::sst5()),
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
        let mut one = Stepper::new(objective.clone(), LossConfig::default(), vec![("w".into(), w1.clone())], sgd()).unwrap();
        let w2 = weights();
        let mut two = Stepper::new(objective.clone(), LossConfig::default(), vec![("w".into(), w2.clone())], sgd()).unwrap();
        for _ in 0..3 {
            let r1 = one.step(&[(x.clone(), y.clone())], |x| x.matmul(&w1.as_tensor().t()?)).unwrap().unwrap();
            // Uneven split: 3 + 5 examples.
            let micro = [(x.narrow(0, 0, 3).unwrap(), y.narrow(0, 0, 3).unwrap()), (x.narrow(0, 3, 5).unwrap(), y.narrow(0, 3, 5).unwrap())];
            let r2 = two.step(&micro, |x| x.matmul(&w2.as_tensor().t()?)).unwrap().unwrap();
            assert!((r1.loss - r2.loss).abs() < 1e-6, "{objective:?}");
            assert_eq!(r1.count, 8);
            assert_eq!(r1.complement.is_some(), objective.alternates());
        }
        for (a, b) in flat(&w1).iter().zip(flat(&w2)) {
            assert!((a - b).abs() < 1e-5, "{objective:?}: {a} vs {b}");
        }
    }
}

/// One COT update written out: optimizer `a` on CE, then a second forward with
/// the updated weights and optimizer `b` on the complement entropy.
fn cot_by_hand(a: &mut Optimizer, b: &mut Optimizer, v: &Var, x: &Tensor, y: &Tensor) {
    let ce = loss::cross_entropy(&x.matmul(&v.as_tensor().t().unwrap()).unwrap(), y, &Default::default()).unwrap();
    a.step(&ce.backward().unwrap()).unwrap();
    let c = loss::complement_entropy(&x.matmul(&v.as_tensor().t().unwrap()).unwrap(), y, &ComplementOptions::default()).unwrap();
    b.step(&c.backward().unwrap()).unwrap();
}

#[test]
fn cot_is_algorithm_one() {
    let (x, y) = data();
    let w = weights();
    let mut stepper = Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), w.clone())], sgd()).unwrap();
    // By hand: optimizer A on CE, then a second forward and optimizer B on the
    // complement entropy, B with its own momentum buffer.
    let v = weights();
    let mut a = Optimizer::new(vec![("w".into(), v.clone())], sgd()).unwrap();
    let mut b = Optimizer::new(vec![("w".into(), v.clone())], sgd()).unwrap();
    for _ in 0..3 {
        stepper.step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?)).unwrap().unwrap();
        cot_by_hand(&mut a, &mut b, &v, &x, &y);
    }
    assert_eq!(flat(&w), flat(&v));
    // And it is not the same as running both losses through one optimizer.
    let u = weights();
    let mut single = Optimizer::new(vec![("w".into(), u.clone())], sgd()).unwrap();
    for _ in 0..3 {
        let ce = loss::cross_entropy(&x.matmul(&u.as_tensor().t().unwrap()).unwrap(), &y, &Default::default()).unwrap();
        single.step(&ce.backward().unwrap()).unwrap();
        let c = loss::complement_entropy(&x.matmul(&u.as_tensor().t().unwrap()).unwrap(), &y, &ComplementOptions::default()).unwrap();
        single.step(&c.backward().unwrap()).unwrap();
    }
    assert_ne!(flat(&w), flat(&u));
}

#[test]
fn state_round_trip_resumes_both_optimizers() {
    let (x, y) = data();
    let w = weights();
    let mut straight = Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), w.clone())], OptimizerConfig::default()).unwrap();
    for _ in 0..4 {
        straight.step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?)).unwrap().unwrap();
    }
    let v = weights();
    let mut first = Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), v.clone())], OptimizerConfig::default()).unwrap();
    for _ in 0..2 {
        first.step(&[(x.clone(), y.clone())], |x| x.matmul(&v.as_tensor().t()?)).unwrap().unwrap();
    }
    let state = first.state_tensors().unwrap();
    assert!(state.keys().any(|k| k.starts_with("complement.m.")), "{:?}", state.keys());
    let mut resumed = Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), v.clone())], OptimizerConfig::default()).unwrap();
    resumed.load_state(&state).unwrap();
    for _ in 0..2 {
        resumed.step(&[(x.clone(), y.clone())], |x| x.matmul(&v.as_tensor().t()?)).unwrap().unwrap();
    }
    assert_eq!(flat(&w), flat(&v));
}

#[test]
fn non_finite_loss_leaves_the_weights_alone() {
    let (_, y) = data();
    let w = weights();
    let before = flat(&w);
    let mut stepper = Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), w.clone())], sgd()).unwrap();
    let nan = Tensor::full(f32::NAN, (8, D), &Device::Cpu).unwrap();
    let r = stepper.step(&[(nan, y)], |x| x.matmul(&w.as_tensor().t()?)).unwrap();
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
    let mut stepper =
        Stepper::new(Objective::Cot, LossConfig::default(), vec![("w".into(), w.clone())], adam.clone()).unwrap().with_complement_lr_scale(0.1);
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
        stepper.step(&[(x.clone(), y.clone())], |x| x.matmul(&w.as_tensor().t()?)).unwrap().unwrap();
        cot_by_hand(&mut a, &mut b, &v, &x, &y);
    }
    assert_eq!(flat(&w), flat(&v));
    // Objectives with one step have no complement optimizer.
    let ce = Stepper::new(Objective::CrossEntropy, LossConfig::default(), vec![("w".into(), weights())], adam).unwrap().with_complement_lr_scale(0.1);
    assert_eq!(ce.complement_learning_rate(), None);
}
