//! Values and gradients of every loss against PyTorch float64.
//!
//! The expected numbers come from `tests/golden/make_golden.py` (the authors' COT and
//! GCE code, `F.cross_entropy`, mpmath for the margin-30 case), committed as
//! `tests/golden/losses.json`. Each case runs in f64 (tight tolerances) and in f32.

use candle_core::{DType, Device, Tensor, Var};
use cotext::loss::{
    self, ComplementOptions, CrossEntropyOptions, Form, LabelHierarchy, Normalization,
};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/losses.json"
    ))
    .expect("tests/golden/losses.json");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// The closed form `big_logits` of make_golden.py.
fn big_logits(n: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n * k);
    for i in 0..n as i64 {
        for j in 0..k as i64 {
            out.push(((i * 131 + j * 7919) % 2003) as f64 / 2003.0 * 8.0 - 4.0);
        }
    }
    out
}

fn form(c: &Value) -> Form {
    match c["form"].as_str().unwrap() {
        "exact" => Form::Exact,
        "reference" => Form::Reference,
        f => panic!("form {f}"),
    }
}

fn normalization(c: &Value) -> Normalization {
    match c["normalization"].as_str().unwrap() {
        "none" => Normalization::None,
        "classes" => Normalization::Classes,
        "classes-minus-one" => Normalization::ClassesMinusOne,
        "log-classes" => Normalization::LogClasses,
        "log-classes-minus-one" => Normalization::LogClassesMinusOne,
        n => panic!("normalization {n}"),
    }
}

/// Which implementation of the loss to run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Plain,
    Chunked,
}

/// Runs one golden case in `dtype` and returns (value, gradient as f64 [rows·K]).
fn run_case(c: &Value, dtype: DType, path: Path) -> Option<(f64, Vec<f64>)> {
    let shape: Vec<usize> = c["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let k = *shape.last().unwrap();
    let rows: usize = shape.iter().product::<usize>() / k;
    let data = match &c["logits"] {
        Value::String(s) if s == "big" => big_logits(rows, k),
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        other => panic!("logits {other:?}"),
    };
    let dev = Device::Cpu;
    let logits = Var::from_tensor(
        &Tensor::from_vec(data, shape.as_slice(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let t: Vec<i64> = c["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let target_shape = &shape[..shape.len() - 1];
    // Rank-3 cases use i64 targets, the others u32: both dtypes are exercised.
    let targets = if shape.len() == 3 {
        Tensor::from_vec(t, target_shape, &dev).unwrap()
    } else {
        Tensor::from_vec(
            t.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            target_shape,
            &dev,
        )
        .unwrap()
    };
    let ignore_index = c
        .get("ignore_index")
        .and_then(Value::as_u64)
        .map(|x| x as u32);
    let value = match c["loss"].as_str().unwrap() {
        "cross_entropy" => {
            let opts = CrossEntropyOptions {
                ignore_index,
                label_smoothing: c
                    .get("label_smoothing")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
            };
            match path {
                Path::Plain => loss::cross_entropy(&logits, &targets, &opts),
                Path::Chunked => loss::chunked_cross_entropy(&logits, &targets, &opts),
            }
        }
        "complement" => {
            let opts = ComplementOptions {
                form: form(c),
                normalization: normalization(c),
                ignore_index,
            };
            match path {
                Path::Plain => loss::complement_entropy(&logits, &targets, &opts),
                Path::Chunked if opts.form == Form::Exact => {
                    loss::chunked_complement_entropy(&logits, &targets, &opts)
                }
                Path::Chunked => return None,
            }
        }
        "gce" if path == Path::Plain => {
            let opts = ComplementOptions {
                form: form(c),
                normalization: normalization(c),
                ignore_index,
            };
            loss::guided_complement_entropy(&logits, &targets, c["alpha"].as_f64().unwrap(), &opts)
        }
        "hcot" if path == Path::Plain => {
            let coarse = c["coarse"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let h = LabelHierarchy::new(coarse).unwrap();
            let opts = ComplementOptions {
                form: form(c),
                normalization: normalization(c),
                ignore_index,
            };
            loss::hierarchical_complement_entropy(&logits, &targets, &h, &opts)
        }
        _ => return None,
    }
    .unwrap();
    let grads = value.backward().unwrap();
    let grad = grads.get(&logits).expect("logits receive a gradient");
    let grad: Vec<f64> = grad
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    Some((
        value
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        grad,
    ))
}

fn check(c: &Value, dtype: DType, path: Path, rtol: f64, atol: f64) -> bool {
    let name = c["name"].as_str().unwrap();
    let Some((value, grad)) = run_case(c, dtype, path) else {
        return false;
    };
    let expected = c["value"].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= atol + rtol * b.abs();
    assert!(
        close(value, expected),
        "{name} ({dtype:?}, {path:?}): value {value:e}, PyTorch {expected:e}"
    );
    let k = *c["shape"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .as_ref()
        .unwrap() as usize;
    if let Some(samples) = c.get("grad_samples") {
        for s in samples.as_array().unwrap() {
            let (r, col, g) = (
                s[0].as_u64().unwrap() as usize,
                s[1].as_u64().unwrap() as usize,
                s[2].as_f64().unwrap(),
            );
            let got = grad[r * k + col];
            assert!(
                close(got, g),
                "{name} ({dtype:?}, {path:?}): grad[{r},{col}] {got:e}, PyTorch {g:e}"
            );
        }
        let norm = grad.iter().map(|x| x * x).sum::<f64>().sqrt();
        let expected = c["grad_norm"].as_f64().unwrap();
        assert!(
            (norm - expected).abs() <= rtol.max(1e-12) * expected + atol,
            "{name}: grad norm {norm:e}, PyTorch {expected:e}"
        );
    } else {
        let expected: Vec<f64> = c["grad"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(grad.len(), expected.len(), "{name}");
        for (i, (g, e)) in grad.iter().zip(&expected).enumerate() {
            assert!(
                close(*g, *e),
                "{name} ({dtype:?}, {path:?}): grad[{i}] {g:e}, PyTorch {e:e}"
            );
        }
    }
    true
}

#[test]
fn every_loss_matches_pytorch_float64_in_f64() {
    let cases = cases();
    let mut ran = 0;
    for c in &cases {
        // K = 2: the authors' formula without epsilon gives rounding noise (~1e-16)
        // where the exact form gives 0; an absolute tolerance covers it.
        ran += check(c, DType::F64, Path::Plain, 1e-10, 1e-14) as usize;
    }
    assert_eq!(ran, cases.len(), "every golden case runs on the plain path");
}

#[test]
fn every_loss_matches_pytorch_in_f32() {
    for c in &cases() {
        // The reference form adds 1e-7 to 1 − p_g, which f32 resolves only to about
        // its own size: its f32 values carry ~1e-6 absolute noise (at K = 2 the
        // whole value is that noise). The exact form is held to f32 rounding.
        let atol = if c["form"] == "reference" { 1e-5 } else { 1e-6 };
        check(c, DType::F32, Path::Plain, 1e-4, atol);
    }
}

#[test]
fn chunked_kernels_match_pytorch_float64() {
    let mut ran = 0;
    for c in &cases() {
        ran += check(c, DType::F64, Path::Chunked, 1e-10, 1e-14) as usize;
        check(c, DType::F32, Path::Chunked, 1e-4, 1e-6);
    }
    assert!(ran >= 20, "chunked path ran on {ran} cases");
}

#[test]
fn reference_form_collapses_at_margin_30_and_exact_does_not() {
    let cases = cases();
    let find = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap().clone();
    let exact = find("complement_exact_margin30");
    let reference = find("complement_reference_margin30");
    // The true complement entropy is far from zero (the wrong classes are spread)...
    let truth = exact["mpmath_value"].as_f64().unwrap();
    assert!(truth < -0.1, "{truth}");
    // ...the authors' form reports almost nothing...
    let (r, _) = run_case(&reference, DType::F64, Path::Plain).unwrap();
    assert!(
        r.abs() < 1e-4 * truth.abs(),
        "reference {r} vs truth {truth}"
    );
    // ...and the exact form gets it to the last digits, in f64 and in f32.
    let (e64, _) = run_case(&exact, DType::F64, Path::Plain).unwrap();
    assert!((e64 - truth).abs() < 1e-13, "{e64} vs {truth}");
    let (e32, _) = run_case(&exact, DType::F32, Path::Plain).unwrap();
    assert!((e32 - truth).abs() < 1e-6, "{e32} vs {truth}");
}
