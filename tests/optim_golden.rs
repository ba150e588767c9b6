//! Optimizer updates and gradient clipping against torch.optim (float64), from
//! `tests/golden/make_optim_golden.py` → `tests/golden/optim.json`.

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use cotext::train::{clip_grad_norm, Optimizer, OptimizerConfig};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/optim.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn vec(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A GradStore holding `g` for `var`, built through a real backward pass:
/// d/dvar Σ(var ⊙ g) = g.
fn grads_for(var: &Var, g: &Tensor) -> GradStore {
    (var.as_tensor() * g)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

#[test]
fn updates_match_torch_optim() {
    let gold = golden();
    let configs = [
        (
            "adamw",
            OptimizerConfig::Adamw {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        ),
        (
            "sgd_momentum",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
        ),
        (
            "sgd_nesterov_wd",
            OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.8,
                nesterov: true,
                weight_decay: 0.01,
            },
        ),
        (
            "sgd_plain",
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
        ),
    ];
    for (name, config) in configs {
        let var =
            Var::from_tensor(&Tensor::from_vec(vec(&gold["p0"]), (3, 4), &Device::Cpu).unwrap())
                .unwrap();
        let mut opt = Optimizer::new(vec![("w".into(), var.clone())], config).unwrap();
        for (step, g) in gold["grads"].as_array().unwrap().iter().enumerate() {
            let g = Tensor::from_vec(vec(g), (3, 4), &Device::Cpu).unwrap();
            opt.step(&grads_for(&var, &g)).unwrap();
            let got: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            // Updates run in f32 (as training does), so compare to f32 rounding.
            for (a, b) in got.iter().zip(vec(&gold["runs"][name][step])) {
                assert!(
                    (a - b).abs() < 1e-6 * b.abs().max(1.0),
                    "{name} step {step}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn state_round_trip_continues_identically() {
    let gold = golden();
    let config = OptimizerConfig::Adamw {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let grads: Vec<Tensor> = gold["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| Tensor::from_vec(vec(g), (3, 4), &Device::Cpu).unwrap())
        .collect();
    let p0 = Tensor::from_vec(vec(&gold["p0"]), (3, 4), &Device::Cpu).unwrap();
    // Straight: 4 steps.
    let a = Var::from_tensor(&p0).unwrap();
    let mut oa = Optimizer::new(vec![("w".into(), a.clone())], config.clone()).unwrap();
    for g in &grads {
        oa.step(&grads_for(&a, g)).unwrap();
    }
    // 2 steps, save, a fresh optimizer loads the state, 2 more.
    let b = Var::from_tensor(&p0).unwrap();
    let mut ob = Optimizer::new(vec![("w".into(), b.clone())], config.clone()).unwrap();
    for g in &grads[..2] {
        ob.step(&grads_for(&b, g)).unwrap();
    }
    let state = ob.state_tensors("ce").unwrap();
    let mut oc = Optimizer::new(vec![("w".into(), b.clone())], config).unwrap();
    oc.load_state(&state, "ce").unwrap();
    assert_eq!(oc.steps(), 2);
    for g in &grads[2..] {
        oc.step(&grads_for(&b, g)).unwrap();
    }
    let (x, y): (Vec<f64>, Vec<f64>) = (
        a.flatten_all().unwrap().to_vec1().unwrap(),
        b.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(x, y, "resumed optimizer diverged");
}

#[test]
fn clipping_matches_torch() {
    let gold = golden();
    let c = &gold["clip"];
    let a = Var::zeros((3, 4), candle_core::DType::F64, &Device::Cpu).unwrap();
    let b = Var::zeros(5, candle_core::DType::F64, &Device::Cpu).unwrap();
    let ga =
        (Tensor::from_vec(vec(&gold["grads"][0]), (3, 4), &Device::Cpu).unwrap() * 3.0).unwrap();
    let gb = Tensor::arange(0f64, 5.0, &Device::Cpu).unwrap();
    let loss = ((a.as_tensor() * &ga).unwrap().sum_all().unwrap()
        + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
    .unwrap();
    let mut grads = loss.backward().unwrap();
    let vars = [a.clone(), b.clone()];
    let norm = clip_grad_norm(&mut grads, vars.iter(), 2.0).unwrap();
    assert!((norm - c["norm"].as_f64().unwrap()).abs() < 1e-12, "{norm}");
    let got_a: Vec<f64> = grads
        .get(&a)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got_b: Vec<f64> = grads.get(&b).unwrap().to_vec1().unwrap();
    for (x, y) in got_a
        .iter()
        .chain(&got_b)
        .zip(vec(&c["a"]).iter().chain(&vec(&c["b"])))
    {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    // A store already within the bound keeps its norm.
    let again = clip_grad_norm(&mut grads, vars.iter(), 10.0).unwrap();
    assert!((again - 2.0).abs() < 1e-5, "{again}");
    let after: Vec<f64> = grads.get(&b).unwrap().to_vec1().unwrap();
    assert_eq!(after, got_b);
}

/// The saved moments must be plain values, not graph nodes: a moment built from
/// the variable itself (weight decay reads it) used to be a tracked op whose graph
/// kept every earlier step's tensors alive, so SGD with weight decay grew by the
/// model's size per step until the process was killed for memory.
#[test]
fn moments_hold_no_graph_after_steps() {
    let configs = [
        OptimizerConfig::Adamw {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        },
        OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.8,
            nesterov: true,
            weight_decay: 0.01,
        },
    ];
    for config in configs {
        let var = Var::from_tensor(
            &Tensor::arange(0f32, 12., &Device::Cpu)
                .unwrap()
                .reshape((3, 4))
                .unwrap(),
        )
        .unwrap();
        let mut opt = Optimizer::new(vec![("w".into(), var.clone())], config.clone()).unwrap();
        let g = Tensor::ones((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        for _ in 0..3 {
            opt.step(&grads_for(&var, &g)).unwrap();
        }
        let state = opt.state_tensors("ce").unwrap();
        assert!(state.len() > 2, "{config:?}: no moments saved");
        for (name, t) in &state {
            assert!(
                !t.track_op(),
                "{config:?}: {name} is a graph node (it keeps earlier steps alive)"
            );
        }
    }
}
