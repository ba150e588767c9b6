//! Helpers for the inline tests: seeded random tensors and finite differences.

use candle_core::{DType, Device, Result, Tensor};

use crate::rng::SplitMix64;

/// A standard-normal f64 tensor on the CPU.
pub fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut g = SplitMix64::new(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| g.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// max |a − b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// Central finite differences (step 1e-6) of the scalar `f` at every element of `x`.
pub fn numeric_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> Result<f64>) -> Result<Vec<f64>> {
    let v = x.flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-6;
    let mut out = Vec::with_capacity(v.len());
    for i in 0..v.len() {
        let mut p = v.clone();
        p[i] += eps;
        let fp = f(&Tensor::from_vec(p.clone(), x.shape(), x.device())?)?;
        p[i] -= 2.0 * eps;
        let fm = f(&Tensor::from_vec(p, x.shape(), x.device())?)?;
        out.push((fp - fm) / (2.0 * eps));
    }
    Ok(out)
}

/// Asserts `|analytic − numeric| ≤ tol · (1 + |numeric|)` element by element.
pub fn assert_close(analytic: &Tensor, numeric: &[f64], tol: f64, what: &str) -> Result<()> {
    let a = analytic.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(a.len(), numeric.len(), "{what}: sizes");
    for (i, (x, y)) in a.iter().zip(numeric).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: analytic {x}, numeric {y}"
        );
    }
    Ok(())
}
