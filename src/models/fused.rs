//! Fused CPU kernels with hand-written backward passes: layer norm, softmax, GELU and
//! a whole bidirectional LSTM layer.
//!
//! Written as candle custom ops whose `bwd` is itself a fused kernel, they replace
//! a dozen elementwise ops (and their traced backward graph) with one pass each way;
//! the LSTM layer replaces T steps of autograd bookkeeping with one loop of
//! backpropagation through time.
//! They run on the CPU for f32 and f64 only; [`supported`] says when, and the callers
//! fall back to plain candle ops otherwise. Sums are accumulated in f64. Both are
//! checked against the plain-op versions and against finite differences in f64.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::gemm::{candle_gemm, gemm_into, gemm_with, times_wt_grads, times_wt_into, Dst, View};

/// Whether the fused kernels can run on `xs` (CPU, f32 or f64).
pub fn supported(xs: &Tensor) -> bool {
    xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64)
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused kernel: {what} must be contiguous"),
    }
}

/// The gradients a backward op wrote one after the other into the flat `packed`,
/// cut back into tensors of `shapes` (in order), each wrapped for autograd.
fn unpack<const N: usize>(packed: &Tensor, shapes: [&Shape; N]) -> Result<[Option<Tensor>; N]> {
    let mut at = 0;
    let mut out = [const { None }; N];
    for (slot, shape) in out.iter_mut().zip(shapes) {
        let n = shape.elem_count();
        *slot = Some(packed.narrow(0, at, n)?.reshape(shape)?);
        at += n;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Layer norm

/// Fused layer norm over the last dimension of `xs` with weight `w` and bias `b`.
pub fn layer_norm(xs: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let d = xs.dim(candle_core::D::Minus1)?;
    if w.dims1()? != d || b.dims1()? != d {
        candle_core::bail!(
            "layer norm: input has {d} features, weight {:?}, bias {:?}",
            w.dims(),
            b.dims()
        );
    }
    let w = w.to_dtype(xs.dtype())?;
    let b = b.to_dtype(xs.dtype())?;
    xs.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp { eps })
}

struct LayerNormOp {
    eps: f64,
}

fn ln_fwd<T: WithDType>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::from_f64(0.0); x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, x)| {
            let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..d {
                let xhat = (x[i].to_f64() - mean) * rstd;
                o[i] = T::from_f64(xhat * w[i].to_f64() + b[i].to_f64());
            }
        });
    out
}

/// Returns `[N + 2, D]`: rows `0..N` are dx, row N is dw, row N + 1 is db.
fn ln_bwd<T: WithDType>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let n = x.len() / d;
    let mut dx = vec![T::from_f64(0.0); x.len()];
    // Rows in blocks so each block keeps its own dw/db partial sums.
    let block = n.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(block * d)
        .zip(x.par_chunks(block * d).zip(dy.par_chunks(block * d)))
        .map(|(dxb, (xb, dyb))| {
            let mut dw = vec![0.0f64; d];
            let mut db = vec![0.0f64; d];
            let mut xhat = vec![0.0f64; d];
            let mut g = vec![0.0f64; d];
            for ((dxr, xr), dyr) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(dyb.chunks(d)) {
                let mean = xr.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
                let var = xr.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mut mg, mut mgx) = (0.0, 0.0);
                for i in 0..d {
                    xhat[i] = (xr[i].to_f64() - mean) * rstd;
                    let dyi = dyr[i].to_f64();
                    g[i] = dyi * w[i].to_f64();
                    mg += g[i];
                    mgx += g[i] * xhat[i];
                    dw[i] += dyi * xhat[i];
                    db[i] += dyi;
                }
                mg /= d as f64;
                mgx /= d as f64;
                for i in 0..d {
                    dxr[i] = T::from_f64(rstd * (g[i] - mg - xhat[i] * mgx));
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0.0f64; d];
    let mut db = vec![0.0f64; d];
    for (pw, pb) in partials {
        for i in 0..d {
            dw[i] += pw[i];
            db[i] += pb[i];
        }
    }
    dx.extend(dw.into_iter().map(T::from_f64));
    dx.extend(db.into_iter().map(T::from_f64));
    dx
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "cotext-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ln_fwd::<f32>(
                slice(s1, l1, "x")?,
                slice(s2, l2, "weight")?,
                slice(s3, l3, "bias")?,
                self.eps,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ln_fwd::<f64>(
                slice(s1, l1, "x")?,
                slice(s2, l2, "weight")?,
                slice(s3, l3, "bias")?,
                self.eps,
            )),
            _ => candle_core::bail!("fused layer norm: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count() / d;
        let packed =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBwdOp { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.get(n)?;
        let db = packed.get(n + 1)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormBwdOp {
    eps: f64,
}

impl CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "cotext-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l2.shape().elem_count();
        let n = l1.shape().elem_count() / d;
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ln_bwd::<f32>(
                slice(s1, l1, "x")?,
                slice(s2, l2, "weight")?,
                slice(s3, l3, "grad")?,
                self.eps,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(ln_bwd::<f64>(
                slice(s1, l1, "x")?,
                slice(s2, l2, "weight")?,
                slice(s3, l3, "grad")?,
                self.eps,
            )),
            _ => candle_core::bail!("fused layer norm: f32 or f64 only"),
        };
        Ok((out, Shape::from((n + 2, d))))
    }
}

// ---------------------------------------------------------------------------------
// Softmax and GELU

/// Applies `f` to matching rows of `a` (and `b`, same length) in parallel, writing
/// rows of `out`.
fn map_rows<T: WithDType>(
    a: &[T],
    b: Option<&[T]>,
    d: usize,
    f: impl Fn(&[T], Option<&[T]>, &mut [T]) + Sync,
) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); a.len()];
    // Blocks of rows keep rayon's overhead small for short rows.
    let rows_per = (16384 / d.max(1)).max(1);
    out.par_chunks_mut(rows_per * d)
        .enumerate()
        .for_each(|(i, ob)| {
            let start = i * rows_per * d;
            for (j, o) in ob.chunks_mut(d).enumerate() {
                let (off, n) = (start + j * d, o.len());
                f(&a[off..off + n], b.map(|b| &b[off..off + n]), o);
            }
        });
    out
}

macro_rules! dispatch1 {
    ($s:expr, $l:expr, $what:expr, |$x:ident : $t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                let $x: &[f32] = slice($s, $l, $what)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                let $x: &[f64] = slice($s, $l, $what)?;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("fused {}: f32 or f64 only", $what),
        }
    };
}

/// Softmax over the last dimension, fused, with backward `y ⊙ (dy − Σ dy ⊙ y)`.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(SoftmaxOp)
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "cotext-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1);
        if let CpuStorage::F32(_) = s {
            let x: &[f32] = slice(s, l, "softmax")?;
            let out = map_rows::<f32>(x, None, d, |x, _, o| softmax_row_f32(x, o));
            return Ok((CpuStorage::F32(out), l.shape().clone()));
        }
        let out = dispatch1!(s, l, "softmax", |x: T| map_rows::<T>(
            x,
            None,
            d,
            |x, _, o| {
                let max = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
                let mut sum = 0.0;
                for (o, v) in o.iter_mut().zip(x) {
                    let e = (v.to_f64() - max).exp();
                    sum += e;
                    *o = T::from_f64(e);
                }
                let inv = 1.0 / sum;
                for o in o.iter_mut() {
                    *o = T::from_f64(o.to_f64() * inv);
                }
            }
        ));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?,
        ))
    }
}

/// Softmax of one `f32` row into `o`: the max, `x − max` and its exponential in
/// `f32` through [`crate::fastmath::exp_slice`] (vectorized, within 8.1e-8 relative
/// of libm), the sum in `f64`. Within a few ulps of the `f64` path.
fn softmax_row_f32(x: &[f32], o: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for (o, &v) in o.iter_mut().zip(x) {
        *o = v - max;
    }
    crate::fastmath::exp_slice(o);
    let sum: f64 = o.iter().map(|&v| v as f64).sum();
    let inv = (1.0 / sum) as f32;
    for o in o.iter_mut() {
        *o *= inv;
    }
}

struct SoftmaxBwdOp;

impl CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "cotext-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = dispatch1!(s1, l1, "softmax", |y: T| {
            let dy: &[T] = slice(s2, l2, "softmax grad")?;
            map_rows::<T>(y, Some(dy), d, |y, dy, o| {
                let dy = dy.expect("grad rows");
                let dot: f64 = y.iter().zip(dy).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
                for i in 0..y.len() {
                    o[i] = T::from_f64(y[i].to_f64() * (dy[i].to_f64() - dot));
                }
            })
        });
        Ok((out, l1.shape().clone()))
    }
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// GELU, erf form, fused, with the exact backward `Φ(x) + x·φ(x)`: `f32` through
/// [`crate::fastmath::gelu`] and [`crate::fastmath::gelu_derivative`] (vectorized;
/// accuracy in that module's docs), `f64` through libm's `erf`.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(GeluOp)
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "cotext-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let CpuStorage::F32(_) = s {
            let x: &[f32] = slice(s, l, "gelu")?;
            let mut out = x.to_vec();
            out.par_chunks_mut(4096)
                .for_each(crate::fastmath::gelu_slice);
            return Ok((CpuStorage::F32(out), l.shape().clone()));
        }
        let out = dispatch1!(s, l, "gelu", |x: T| map_rows::<T>(
            x,
            None,
            1024.min(x.len().max(1)),
            |x, _, o| {
                for (o, v) in o.iter_mut().zip(x) {
                    let v = v.to_f64();
                    let cdf = 0.5
                        * (1.0
                            + candle_core::cpu::erf::erf_f64(v * std::f64::consts::FRAC_1_SQRT_2));
                    *o = T::from_f64(v * cdf);
                }
            }
        ));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op3_no_bwd(
            res,
            &grad.contiguous()?,
            &GeluBwdOp,
        )?))
    }
}

struct GeluBwdOp;

impl CustomOp3 for GeluBwdOp {
    fn name(&self) -> &'static str {
        "cotext-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if let CpuStorage::F32(_) = s1 {
            let x: &[f32] = slice(s1, l1, "gelu")?;
            let dy: &[f32] = slice(s3, l3, "gelu grad")?;
            let mut out = x.to_vec();
            out.par_chunks_mut(4096)
                .zip(dy.par_chunks(4096))
                .for_each(|(dx, dy)| crate::fastmath::gelu_backward_slice(dx, dy));
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let out = dispatch1!(s1, l1, "gelu", |x: T| {
            let y: &[T] = slice(s2, l2, "gelu output")?;
            let dy: &[T] = slice(s3, l3, "gelu grad")?;
            let mut out = vec![T::from_f64(0.0); x.len()];
            let block = 4096;
            out.par_chunks_mut(block).enumerate().for_each(|(bi, o)| {
                let off = bi * block;
                for (i, o) in o.iter_mut().enumerate() {
                    let v = x[off + i].to_f64();
                    // Φ(x) = gelu(x) / x reuses the forward's erf; near 0 (where the
                    // quotient loses digits) and far out, compute it.
                    let cdf = if v.abs() > 1e-2 && v.abs() < 5.0 {
                        y[off + i].to_f64() / v
                    } else {
                        0.5 * (1.0
                            + candle_core::cpu::erf::erf_f64(v * std::f64::consts::FRAC_1_SQRT_2))
                    };
                    let pdf = FRAC_1_SQRT_2PI * (-0.5 * v * v).exp();
                    *o = T::from_f64(dy[off + i].to_f64() * (cdf + v * pdf));
                }
            });
            out
        });
        Ok((out, l1.shape().clone()))
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------------------------
// Broadcast addition of a parameter over leading dimensions (biases, position tables)

/// `xs + b`, where `b`'s shape is a suffix of `xs`'s (a bias `[D]` over `[.., D]`, a
/// position table `[T, D]` over `[B, T, D]`), with a backward pass that sums the
/// gradient over the leading dimensions in one vectorized pass.
///
/// Autograd's `broadcast_add` reaches the same sum through `sum_keepdim` over the
/// leading dimensions, which candle runs one element at a time with two integer
/// divisions each, on one thread: 10% of a Transformer update here. The gradient of
/// `xs` is the incoming gradient itself, not a copy.
pub fn add_bias(xs: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (xs.dims(), b.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd {
        candle_core::bail!("add_bias: {:?} is not a suffix of {:?}", bd, xd);
    }
    xs.contiguous()?
        .apply_op2(&b.to_dtype(xs.dtype())?.contiguous()?, AddBiasOp)
}

/// `y[r] += b` for every row `r` of `y` (rows of `b.len()` values), in parallel
/// blocks of whole rows of at least 16 Ki values (small tensors stay on one thread).
fn add_rows<T: WithDType>(y: &mut [T], b: &[T]) {
    let n = b.len().max(1);
    let block = n * 16384usize.div_ceil(n);
    y.par_chunks_mut(block).for_each(|y| {
        for row in y.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += *b;
            }
        }
    });
}

struct AddBiasOp;

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "cotext-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch1!(s1, l1, "add_bias", |x: T| {
            let b: &[T] = slice(s2, l2, "bias")?;
            let mut out = x.to_vec();
            add_rows(&mut out, b);
            out
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&SumLeadingOp {
            shape: b.shape().clone(),
        })?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// Sums a contiguous tensor over its leading dimensions down to `shape` (a suffix of
/// its own): rows of `shape`'s size added up, split over threads in blocks of rows,
/// accumulated in f64.
struct SumLeadingOp {
    shape: Shape,
}

impl CustomOp1 for SumLeadingOp {
    fn name(&self) -> &'static str {
        "cotext-sum-leading"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = self.shape.elem_count();
        let out = dispatch1!(s, l, "sum_leading", |g: T| sum_rows::<T>(g, n));
        Ok((out, self.shape.clone()))
    }
}

/// The sum of the rows (each `n` values) of `g`: each thread sums a block of rows in
/// f64, and the partial sums are then added in order.
fn sum_rows<T: WithDType>(g: &[T], n: usize) -> Vec<T> {
    let rows = g.len() / n.max(1);
    let threads = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(threads).max(64);
    let partial: Vec<Vec<f64>> = g
        .par_chunks(per * n.max(1))
        .map(|block| {
            let mut acc = vec![0f64; n];
            for row in block.chunks_exact(n.max(1)) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v.to_f64();
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; n];
    for p in &partial {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total.into_iter().map(T::from_f64).collect()
}

// ---------------------------------------------------------------------------------
// Linear layers

/// `x·Wᵀ + b` for `x [.., in]`, `w [out, in]` and `b [out]`, as one autograd node.
///
/// The same arithmetic as candle's path (reshape to `[M, in]`, `matmul` with `Wᵀ`,
/// reshape back, [`add_bias`]): each product is the `gemm` call candle's matmul
/// makes, with the same operands, strides and threads, so values and gradients are
/// bit for bit those of that path. What goes is the bookkeeping: candle's backward
/// allocates a zero tensor and adds into it for every input of each of those five
/// nodes, and transposes the weight's gradient through a strided add; here the
/// backward writes `dx`, `dW` and `db` once each.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (out, din) = w.dims2()?;
    if x.dims().last() != Some(&din) || b.dims() != [out] {
        candle_core::bail!(
            "linear: x {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let dtype = x.dtype();
    x.contiguous()?.apply_op3(
        &w.to_dtype(dtype)?.contiguous()?,
        &b.to_dtype(dtype)?.contiguous()?,
        LinearOp,
    )
}

/// `x · Wᵀ` `[M, out]` for a row-major `x [M, in]` and weight `W [out, in]`: the
/// forward product of [`linear`] and [`matmul_t`].
fn times_wt<T: AttnFloat>(x: &[T], w: &[T], dims: (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); dims.0 * dims.1];
    times_wt_into(x, w, dims, &mut y);
    y
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "cotext-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, din) = l2.shape().dims2()?;
        let rows = l1.shape().elem_count() / din.max(1);
        let out_storage = dispatch1!(s1, l1, "linear x", |x: T| {
            let w: &[T] = slice(s2, l2, "linear weight")?;
            let b: &[T] = slice(s3, l3, "linear bias")?;
            let mut y = times_wt(x, w, (rows, out, din));
            add_rows(&mut y, b);
            y
        });
        let mut dims = l1.shape().dims().to_vec();
        *dims.last_mut().expect("x has a last dimension") = out;
        Ok((out_storage, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearBwdOp)?;
        let [dx, dw, db] = unpack(&all, [x.shape(), w.shape(), b.shape()])?;
        Ok((dx, dw, db))
    }
}

/// The backward of [`LinearOp`]: `(x, w, dy)` → `dx | dW | db`, flattened one after
/// the other. `dx = dy·W` is the product candle's matmul backward computes; `dW =
/// dyᵀ·x` is written in its own layout, where candle computes `dWᵀ = xᵀ·dy` and
/// transposes it (the same sums, so the same bits: tested); `db` the row sum of
/// [`add_bias`]'s backward.
struct LinearBwdOp;

impl CustomOp3 for LinearBwdOp {
    fn name(&self) -> &'static str {
        "cotext-linear-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, din) = l2.shape().dims2()?;
        let rows = l1.shape().elem_count() / din.max(1);
        let n = rows * din + out * din + out;
        let all = dispatch1!(s1, l1, "linear x", |x: T| {
            let w: &[T] = slice(s2, l2, "linear weight")?;
            let dy: &[T] = slice(s3, l3, "linear grad")?;
            let mut all = vec![T::from_f64(0.0); n];
            let (dx, rest) = all.split_at_mut(rows * din);
            let (dw, db) = rest.split_at_mut(out * din);
            times_wt_grads(x, w, dy, (rows, out, din), dx, dw, false);
            db.copy_from_slice(&sum_rows(dy, out));
            all
        });
        Ok((all, Shape::from(n)))
    }
}

/// `a · wᵀ` for `a [M, K]` and a weight `w [N, K]`, as one autograd node: the
/// product of `a.matmul(&w.t())` without the transposed view.
///
/// The forward is candle's product (same operands and strides), cut by thread as in
/// [`candle_gemm`]; the backward writes `da = g · w` and `dw = gᵀ · a` straight into
/// their own shapes. candle's path computes `dwᵀ = aᵀ · g` and hands it through the
/// transpose's backward, so the weight's gradient arrives as a transposed view and
/// is added into the running sum element by element in strides: in the LSTM
/// decoder, once per weight per time step. Each element of `dw` is the same sum of
/// the same products in the same order either way (tested bit for bit).
pub fn matmul_t(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    matmul_t_dims(a, w)?;
    a.contiguous()?.apply_op2(&w.contiguous()?, MatmulTOp)
}

/// The output's `(M, N)` of `a [M, K] · w [N, K]ᵀ`, or an error naming both operands
/// when their inner sizes or dtypes differ.
fn matmul_t_dims(a: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    let (m, k) = a.dims2()?;
    let (n, kw) = w.dims2()?;
    if k != kw || a.dtype() != w.dtype() {
        candle_core::bail!(
            "matmul_t: a {:?} {:?}, w {:?} {:?}",
            a.dims(),
            a.dtype(),
            w.dims(),
            w.dtype()
        );
    }
    Ok((m, n))
}

struct MatmulTOp;

impl CustomOp2 for MatmulTOp {
    fn name(&self) -> &'static str {
        "cotext-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let out = dispatch1!(s1, l1, "matmul_t a", |a: T| {
            let w: &[T] = slice(s2, l2, "matmul_t w")?;
            times_wt(a, w, (m, n, k))
        });
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let all = a.apply_op3_no_bwd(w, &grad.contiguous()?, &MatmulTBwdOp)?;
        let [da, dw] = unpack(&all, [a.shape(), w.shape()])?;
        Ok((da, dw))
    }
}

/// The backward of [`MatmulTOp`]: `(a, w, g)` → `da | dw`, flattened one after the
/// other.
struct MatmulTBwdOp;

impl CustomOp3 for MatmulTBwdOp {
    fn name(&self) -> &'static str {
        "cotext-matmul-t-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let all = dispatch1!(s1, l1, "matmul_t a", |a: T| {
            let w: &[T] = slice(s2, l2, "matmul_t w")?;
            let g: &[T] = slice(s3, l3, "matmul_t grad")?;
            let mut all = vec![T::from_f64(0.0); m * k + n * k];
            let (da, dw) = all.split_at_mut(m * k);
            times_wt_grads(a, w, g, (m, n, k), da, dw, false);
            all
        });
        Ok((all, Shape::from(m * k + n * k)))
    }
}

// ---------------------------------------------------------------------------------
// Per-step slices of a sequence (the LSTM decoder's time loop)

/// The `T` slices `xs[0], …, xs[T−1]` of `xs [T, ..]` along its first dimension,
/// with a backward that assembles their gradients into one tensor once.
///
/// Autograd's `get`/`narrow` pads every slice's gradient back to the full shape
/// with zeros and adds it into the full gradient: `T` full-size passes (about four
/// memory passes each) for a loop that takes every step, 16% of the LSTM
/// translator's update here. These slices instead keep their gradients aside; the
/// first one to receive a gradient also hands autograd a zero gradient for the
/// whole (so that the assembling node runs), and an identity node in front of the
/// slices, which autograd reaches only after every slice, stacks them (zeros for a
/// slice that took no gradient). Same values and gradients as `xs.get(s)`.
///
/// Off the CPU, or for a tensor that tracks no gradient, plain `get`.
pub fn unstack(xs: &Tensor) -> Result<Vec<Tensor>> {
    let t = xs.dim(0)?;
    if !supported(xs) || !xs.track_op() {
        return (0..t).map(|s| xs.get(s)).collect();
    }
    let stash = Arc::new(std::sync::Mutex::new(Stash {
        slots: vec![None; t],
        entered: false,
    }));
    let anchored = xs.contiguous()?.apply_op1(AssembleOp(stash.clone()))?;
    (0..t)
        .map(|s| {
            anchored.apply_op1(TakeStepOp {
                s,
                stash: stash.clone(),
            })
        })
        .collect()
}

/// The slices' gradients between the backward of the slices and of [`AssembleOp`].
struct Stash {
    slots: Vec<Option<Tensor>>,
    /// Whether a slice has given autograd the whole tensor's (zero) gradient.
    entered: bool,
}

/// Locks the state a loop's backward ops share; `what` names it if a backward pass
/// panicked while holding it.
fn lock<'a, S>(state: &'a std::sync::Mutex<S>, what: &str) -> Result<std::sync::MutexGuard<'a, S>> {
    state
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{what}: a backward pass panicked")))
}

/// The forward of an identity node: a copy of its contiguous input.
fn identity_fwd(s: &CpuStorage, l: &Layout, what: &str) -> Result<(CpuStorage, Shape)> {
    let out = dispatch1!(s, l, what, |x: T| Vec::<T>::from(x));
    Ok((out, l.shape().clone()))
}

/// Identity forward; its backward stacks the slices' kept gradients.
struct AssembleOp(Arc<std::sync::Mutex<Stash>>);

impl CustomOp1 for AssembleOp {
    fn name(&self) -> &'static str {
        "cotext-unstack-assemble"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        identity_fwd(s, l, "unstack")
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
        // `_grad` is the zero gradient the first slice entered; the slices' own
        // gradients are in the stash (autograd runs this after all of them).
        let slots = {
            let mut st = lock(&self.0, "unstack")?;
            st.entered = false;
            std::mem::replace(&mut st.slots, vec![None; arg.dim(0)?])
        };
        let step = Shape::from(&arg.dims()[1..]);
        let parts = slots
            .into_iter()
            .map(|g| match g {
                Some(g) => Ok(g),
                None => Tensor::zeros(step.clone(), arg.dtype(), arg.device()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Tensor::stack(&parts, 0)?))
    }
}

/// Slice `s` of an [`AssembleOp`] output; its backward keeps the gradient aside.
struct TakeStepOp {
    s: usize,
    stash: Arc<std::sync::Mutex<Stash>>,
}

impl CustomOp1 for TakeStepOp {
    fn name(&self) -> &'static str {
        "cotext-unstack-step"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let n = dims[1..].iter().product::<usize>();
        let i = self.s;
        let out = dispatch1!(s, l, "unstack", |x: T| Vec::<T>::from(
            &x[i * n..(i + 1) * n]
        ));
        Ok((out, Shape::from(&dims[1..])))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut st = lock(&self.stash, "unstack")?;
        let kept = match st.slots[self.s].take() {
            Some(prev) => (prev + grad)?,
            None => grad.clone(),
        };
        st.slots[self.s] = Some(kept);
        if st.entered {
            return Ok(None);
        }
        st.entered = true;
        let zero = Tensor::zeros((), arg.dtype(), arg.device())?;
        Ok(Some(zero.broadcast_as(arg.shape())?))
    }
}

// ---------------------------------------------------------------------------------
// Operands every step of a loop reads (the LSTM decoder's weights and memory)

/// A tensor that every step of a loop reads, whose gradients the steps add in place
/// into one buffer; [`matmul_t_shared`] and [`cross_attention_shared`] take it.
///
/// Autograd gives each step's gradient of a weight a tensor of its own and adds it
/// into the weight's running sum, a new full-size tensor each time: in the LSTM
/// decoder, four weight matrices (1 MiB each at the shipped size), the attentional
/// combination and the attention memory, at every step. Here each step's backward
/// product is added straight into one buffer (`gemm` reading its destination: the
/// sum rounded once, the addition autograd makes, in the order autograd makes
/// them); the first step to run hands autograd a zero gradient so that the identity
/// node in front of the steps runs, and that node, which autograd reaches only after
/// every step, hands the sum on. The same values and gradients as the plain tensor
/// (bit for bit for [`matmul_t_shared`]: tested).
///
/// Off the CPU, or for a tensor that tracks no gradient (evaluation), it is the
/// tensor itself and the ops take their plain paths.
#[derive(Clone)]
pub struct Shared {
    tensor: Tensor,
    sum: Option<Arc<std::sync::Mutex<SharedSum>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dims", &self.tensor.dims())
            .field("summed", &self.sum.is_some())
            .finish()
    }
}

/// The steps' summed gradient, between their backward and the anchor's.
struct SharedSum {
    buf: Option<CpuStorage>,
    /// Whether a step has given autograd the (zero) gradient of the anchor.
    entered: bool,
}

/// `xs` as a [`Shared`] operand for the steps of one forward pass.
pub fn share(xs: &Tensor) -> Result<Shared> {
    if !supported(xs) || !xs.track_op() {
        return Ok(Shared {
            tensor: xs.clone(),
            sum: None,
        });
    }
    let sum = Arc::new(std::sync::Mutex::new(SharedSum {
        buf: None,
        entered: false,
    }));
    let tensor = xs.contiguous()?.apply_op1(SharedAnchorOp(sum.clone()))?;
    Ok(Shared {
        tensor,
        sum: Some(sum),
    })
}

impl Shared {
    /// The tensor the steps read (behind the anchor when gradients are summed).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Runs `add` on the buffer of the summed gradient (zeros before the first step).
    fn add_grad<T: WithDType>(&self, add: impl FnOnce(&mut [T])) -> Result<()> {
        let Some(sum) = &self.sum else {
            candle_core::bail!("shared operand: no gradient is summed");
        };
        let mut st = lock(sum, "shared operand")?;
        let mut buf = match st.buf.take() {
            Some(b) => T::cpu_storage_data(b)?,
            None => vec![T::zero(); self.tensor.elem_count()],
        };
        add(&mut buf);
        st.buf = Some(T::to_cpu_storage_owned(buf));
        Ok(())
    }

    /// The gradient a step returns for the anchor: zero (broadcast) from the first
    /// step autograd runs, so that the anchor's backward runs; none from the others.
    fn step_grad(&self) -> Result<Option<Tensor>> {
        let Some(sum) = &self.sum else {
            return Ok(None);
        };
        let mut st = lock(sum, "shared operand")?;
        if st.entered {
            return Ok(None);
        }
        st.entered = true;
        let t = &self.tensor;
        Ok(Some(
            Tensor::zeros((), t.dtype(), t.device())?.broadcast_as(t.shape())?,
        ))
    }
}

/// Identity forward; its backward hands on the steps' summed gradient.
struct SharedAnchorOp(Arc<std::sync::Mutex<SharedSum>>);

impl CustomOp1 for SharedAnchorOp {
    fn name(&self) -> &'static str {
        "cotext-shared-anchor"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        identity_fwd(s, l, "shared operand")
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
        // `_grad` is the zero gradient the first step entered.
        let buf = {
            let mut st = lock(&self.0, "shared operand")?;
            st.entered = false;
            st.buf.take()
        };
        match buf {
            Some(CpuStorage::F32(v)) => Ok(Some(Tensor::from_vec(v, arg.shape(), arg.device())?)),
            Some(CpuStorage::F64(v)) => Ok(Some(Tensor::from_vec(v, arg.shape(), arg.device())?)),
            Some(_) => candle_core::bail!("shared operand: f32 or f64 only"),
            None => Ok(None),
        }
    }
}

/// `a · wᵀ` as [`matmul_t`], plus `add` (`[M, N]`) when given, for a weight `w [N,
/// K]` that every step of a loop reads: its gradient is added into `w`'s shared sum
/// (the same bits as autograd's sum). The addition is `gemm`'s, into a copy of
/// `add`: `add + a · wᵀ` rounded once, as `add + matmul_t(a, w)` rounds it (for `K`
/// within one of `gemm`'s depth blocks, 512 or more), with one node instead of two.
pub fn matmul_t_shared(a: &Tensor, w: &Shared, add: Option<&Tensor>) -> Result<Tensor> {
    if w.sum.is_none() {
        let y = if supported(a) {
            matmul_t(a, w.tensor())?
        } else {
            a.matmul(&w.tensor().t()?)?
        };
        return match add {
            Some(add) => add + y,
            None => Ok(y),
        };
    }
    let (m, n) = matmul_t_dims(a, &w.tensor)?;
    let a = a.contiguous()?;
    match add {
        None => a.apply_op2(&w.tensor, MatmulTSharedOp(w.clone())),
        Some(add) => {
            if add.dims() != [m, n] || add.dtype() != a.dtype() {
                candle_core::bail!(
                    "matmul_t: adding {:?} {:?} to [{m}, {n}]",
                    add.dims(),
                    add.dtype()
                );
            }
            a.apply_op3(&w.tensor, &add.contiguous()?, MatmulTAddSharedOp(w.clone()))
        }
    }
}

/// `add + a · wᵀ` (see [`matmul_t_shared`]).
struct MatmulTAddSharedOp(Shared);

impl CustomOp3 for MatmulTAddSharedOp {
    fn name(&self) -> &'static str {
        "cotext-matmul-t-add-shared"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let out = dispatch1!(s1, l1, "matmul_t a", |a: T| {
            let w: &[T] = slice(s2, l2, "matmul_t w")?;
            let mut y = Vec::<T>::from(slice::<T>(s3, l3, "matmul_t add")?);
            candle_gemm((m, n, k), &mut y, a, (1, k), w, (k, 1), true);
            y
        });
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        w: &Tensor,
        _add: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let da = a.apply_op3_no_bwd(w, &grad, &MatmulTSharedBwdOp(self.0.clone()))?;
        Ok((Some(da), self.0.step_grad()?, Some(grad)))
    }
}

struct MatmulTSharedOp(Shared);

impl CustomOp2 for MatmulTSharedOp {
    fn name(&self) -> &'static str {
        "cotext-matmul-t-shared"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        MatmulTOp.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        a: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = a.apply_op3_no_bwd(w, &grad.contiguous()?, &MatmulTSharedBwdOp(self.0.clone()))?;
        Ok((Some(da), self.0.step_grad()?))
    }
}

/// The backward of [`MatmulTSharedOp`]: `(a, w, g)` → `da`, with `gᵀ · a` added into
/// the weight's shared sum.
struct MatmulTSharedBwdOp(Shared);

impl CustomOp3 for MatmulTSharedBwdOp {
    fn name(&self) -> &'static str {
        "cotext-matmul-t-shared-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let da = dispatch1!(s1, l1, "matmul_t a", |a: T| {
            let w: &[T] = slice(s2, l2, "matmul_t w")?;
            let g: &[T] = slice(s3, l3, "matmul_t grad")?;
            let mut da = vec![T::from_f64(0.0); m * k];
            self.0.add_grad::<T>(|dw| {
                times_wt_grads(a, w, g, (m, n, k), &mut da, dw, true);
            })?;
            da
        });
        Ok((da, Shape::from((m, k))))
    }
}

/// Cross-attention as [`cross_attention`], for keys and values `kv` that every step
/// of a loop reads: their gradient is added into `kv`'s shared sum.
pub fn cross_attention_shared(
    q: &Tensor,
    kv: &Shared,
    key_bias: Option<&Tensor>,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    if kv.sum.is_none() {
        return cross_attention(q, kv.tensor(), key_bias, heads, scale, None);
    }
    let (n, t, d) = q.dims3()?;
    let (nk, s, d2) = kv.tensor.dims3()?;
    if heads == 0 || !d.is_multiple_of(heads) || nk != n || d2 != 2 * d {
        candle_core::bail!(
            "cross attention: q {:?} and kv {:?} with {heads} heads",
            q.dims(),
            kv.tensor.dims()
        );
    }
    let p = AttnParams::new((n, t, s), heads, scale, key_bias, false, None, q.dtype())?;
    q.contiguous()?
        .apply_op2(&kv.tensor, CrossAttentionSharedOp(p, kv.clone()))
}

struct CrossAttentionSharedOp(AttnParams, Shared);

impl CustomOp2 for CrossAttentionSharedOp {
    fn name(&self) -> &'static str {
        "cotext-cross-attention-shared"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        CrossAttentionOp(self.0.clone()).cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = CrossAttentionSharedBwdOp(self.0.clone(), self.1.clone());
        let dq = q.apply_op3_no_bwd(kv, &grad.contiguous()?, &op)?;
        Ok((Some(dq), self.1.step_grad()?))
    }
}

/// The backward of [`CrossAttentionSharedOp`]: `(q, kv, grad)` → the gradient of
/// `q`, with that of `kv` added into its shared sum.
struct CrossAttentionSharedBwdOp(AttnParams, Shared);

impl CustomOp3 for CrossAttentionSharedBwdOp {
    fn name(&self) -> &'static str {
        "cotext-cross-attention-shared-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, t, d) = l1.shape().dims3()?;
        let s = self.0.dims.2;
        let lay = RowLayout::cross_attention(t, s, d, self.0.heads);
        let qn = t * d;
        let dq = dispatch1!(s1, l1, "attention q", |q: T| {
            let kv: &[T] = slice(s2, l2, "attention kv")?;
            let grad: &[T] = slice(s3, l3, "attention grad")?;
            let mut dq = vec![T::from_f64(0.0); n * qn];
            self.1.add_grad::<T>(|dkv| {
                cross_attn_bwd(q, kv, grad, &lay, &self.0, (&mut dq, dkv), true)
            })?;
            dq
        });
        Ok((dq, Shape::from((n, t, d))))
    }
}

// ---------------------------------------------------------------------------------
// Multiplication by a constant (dropout masks)

/// `xs ⊙ c` where `c` (a dropout mask) takes no gradient: autograd's `mul` would also
/// compute and accumulate a full-size gradient for `c`.
pub fn mul_by_constant(xs: &Tensor, c: &Tensor) -> Result<Tensor> {
    if xs.shape() != c.shape() {
        candle_core::bail!("mul_by_constant: shapes {:?} and {:?}", xs.dims(), c.dims());
    }
    xs.contiguous()?
        .apply_op2(&c.to_dtype(xs.dtype())?.contiguous()?, MulConstOp)
}

struct MulConstOp;

impl CustomOp2 for MulConstOp {
    fn name(&self) -> &'static str {
        "cotext-mul-const"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch1!(s1, l1, "mul_by_constant", |x: T| {
            let c: &[T] = slice(s2, l2, "constant")?;
            let mut out = vec![T::from_f64(0.0); x.len()];
            let block = 16384;
            out.par_chunks_mut(block).enumerate().for_each(|(bi, o)| {
                let off = bi * block;
                for (i, o) in o.iter_mut().enumerate() {
                    *o = x[off + i] * c[off + i];
                }
            });
            out
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.mul(c)?), None))
    }
}

// ---------------------------------------------------------------------------------
// A whole LSTM layer (both directions), backpropagation through time in one op

/// Runs one bidirectional LSTM layer over all time steps, in the layout the
/// model has on either side, so no reordering copy (and none of their backward
/// passes) is needed around it.
///
/// `xp [B, T, 8H]` holds, per batch row and time, the input projections with
/// biases: the forward direction's `4H` gates, then the backward direction's;
/// `w_hh_t [2, H, 4H]` the transposed recurrent weights (forward, backward);
/// `keep[s][r]` whether the recurrence has a real token at step `s` for row `r`:
/// rows `0..B` are the forward direction at time `s`, rows `B..2B` the backward
/// direction at time `T-1-s`. Returns `[B, T, 2H]`: at each time the forward
/// direction's h, then the backward direction's, starting from zero state. At a
/// padded position the state passes through unchanged (the caller masks the
/// output), and the recurrent matmul of each step runs over the rows with a token
/// only (packed per direction, the way packed sequences skip padding).
///
/// In f32 the gate activations run vectorized ([`crate::fastmath`], within 1.5e-7 of
/// libm) and the cell arithmetic in f32; in f64 everything is f64 with libm.
///
/// The backward pass is one loop of backpropagation through time: the gradient of
/// the input projections comes out as one `[B, T, 8H]` tensor and the recurrent
/// weights' as one matmul, instead of a full-size gradient buffer per time step (what
/// slicing the projections step by step costs under autograd).
pub fn bilstm_layer(xp: &Tensor, w_hh_t: &Tensor, keep: Arc<Vec<Vec<bool>>>) -> Result<Tensor> {
    let (b, t, h8) = xp.dims3()?;
    let (two, h, h4w) = w_hh_t.dims3()?;
    if two != 2
        || h8 != 8 * h
        || h4w != 4 * h
        || keep.len() != t
        || keep.iter().any(|k| k.len() != 2 * b)
    {
        candle_core::bail!(
            "bilstm layer: xp {:?}, w_hh_t {:?}, mask {}x?",
            xp.dims(),
            w_hh_t.dims(),
            keep.len()
        );
    }
    let w = w_hh_t.to_dtype(xp.dtype())?.contiguous()?;
    xp.contiguous()?.apply_op2(
        &w,
        LstmLayerOp {
            keep,
            saved: std::sync::Mutex::new(None),
        },
    )
}

/// What the forward pass keeps for the backward one: per step and row
/// (`[T, 2B, 6H]`) the gate pre-activations, h and c.
enum Saved {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

struct LstmLayerOp {
    keep: Arc<Vec<Vec<bool>>>,
    saved: std::sync::Mutex<Option<Saved>>,
}

/// Where row `r` of step `s` lives in the `[B, T, ·]` layout: (batch row, time,
/// direction).
fn position(s: usize, r: usize, b: usize, t: usize) -> (usize, usize, usize) {
    if r < b {
        (r, s, 0)
    } else {
        (r - b, t - 1 - s, 1)
    }
}

/// The gate activations of the LSTM kernel, per element type: `f32` runs the
/// vectorized [`crate::fastmath`] functions, `f64` libm's (the finite-difference
/// tests' reference).
trait CellFloat: WithDType {
    fn sigmoid_slice(xs: &mut [Self]);
    fn tanh_slice(xs: &mut [Self]);
}

impl CellFloat for f32 {
    fn sigmoid_slice(xs: &mut [f32]) {
        crate::fastmath::sigmoid_slice(xs)
    }
    fn tanh_slice(xs: &mut [f32]) {
        crate::fastmath::tanh_slice(xs)
    }
}

impl CellFloat for f64 {
    fn sigmoid_slice(xs: &mut [f64]) {
        for x in xs {
            *x = sigmoid(*x);
        }
    }
    fn tanh_slice(xs: &mut [f64]) {
        for x in xs {
            *x = x.tanh();
        }
    }
}

/// `act ← [σ(i), σ(f), tanh(g), σ(o)]` from the `4H` gate pre-activations.
fn activate_gates<T: CellFloat>(pre: &[T], act: &mut [T], h: usize) {
    act.copy_from_slice(pre);
    T::sigmoid_slice(&mut act[..2 * h]);
    T::tanh_slice(&mut act[2 * h..3 * h]);
    T::sigmoid_slice(&mut act[3 * h..]);
}

/// `xs · w` per direction (`xs [2B, n_in]`, `w [2, n_in, n_out]`) for the rows
/// with a token at this step only. The active rows of each direction are packed
/// first, as packed sequences are, so padding costs no matmul work. Returns the
/// products and, per row, where its `n_out` values start (`None`: a padded row).
fn recurrent<T: WithDType>(
    xs: &[T],
    w: &Tensor,
    keep: &[bool],
    n_in: usize,
    n_out: usize,
) -> Result<(Vec<T>, Vec<Option<usize>>)> {
    let b2 = keep.len();
    let b = b2 / 2;
    let mut slots = vec![None; b2];
    if keep.iter().all(|&k| k) {
        let out = Tensor::from_slice(xs, (2, b, n_in), w.device())?.matmul(w)?;
        for (r, slot) in slots.iter_mut().enumerate() {
            *slot = Some(r * n_out);
        }
        return Ok((out.flatten_all()?.to_vec1::<T>()?, slots));
    }
    let active = |d: usize| (d * b..(d + 1) * b).filter(|&r| keep[r]);
    let n = active(0).count().max(active(1).count());
    if n == 0 {
        return Ok((Vec::new(), slots));
    }
    let mut packed = vec![T::from_f64(0.0); 2 * n * n_in];
    for d in 0..2 {
        for (k, r) in active(d).enumerate() {
            let at = (d * n + k) * n_in;
            packed[at..at + n_in].copy_from_slice(&xs[r * n_in..(r + 1) * n_in]);
            slots[r] = Some((d * n + k) * n_out);
        }
    }
    let out = Tensor::from_vec(packed, (2, n, n_in), w.device())?.matmul(w)?;
    Ok((out.flatten_all()?.to_vec1::<T>()?, slots))
}

/// Forward pass: returns the saved states `[T, 2B, 6H]` and the output
/// `[B, T, 2H]`.
fn layer_fwd<T: CellFloat>(
    xp: &[T],
    w: &Tensor,
    keep: &[Vec<bool>],
    h: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let t = keep.len();
    let b2 = keep.first().map_or(0, |k| k.len());
    let b = b2 / 2;
    let (g4, row) = (4 * h, 6 * h);
    let zero = T::from_f64(0.0);
    let mut saved = vec![zero; t * b2 * row];
    let mut out = vec![zero; b * t * 2 * h];
    let mut hprev = vec![zero; b2 * h];
    let mut cprev = vec![zero; b2 * h];
    let mut act = vec![zero; g4];
    let mut tc = vec![zero; h];
    for s in 0..t {
        let (hw, slots) = recurrent(&hprev, w, &keep[s], h, g4)?;
        let o_s = &mut saved[s * b2 * row..(s + 1) * b2 * row];
        for r in 0..b2 {
            let o = &mut o_s[r * row..(r + 1) * row];
            let (bi, tau, dir) = position(s, r, b, t);
            let at_x = (bi * t + tau) * 8 * h + dir * g4;
            let x = &xp[at_x..at_x + g4];
            let Some(at) = slots[r] else {
                // Padding: the state passes through unchanged; the gates hold
                // the input projection alone (they do not reach h or c).
                o[..g4].copy_from_slice(x);
                o[g4..5 * h].copy_from_slice(&hprev[r * h..(r + 1) * h]);
                o[5 * h..].copy_from_slice(&cprev[r * h..(r + 1) * h]);
                continue;
            };
            for ((o, &x), &y) in o[..g4].iter_mut().zip(x).zip(&hw[at..at + g4]) {
                *o = x + y;
            }
            activate_gates(&o[..g4], &mut act, h);
            let c_prev = &cprev[r * h..(r + 1) * h];
            for j in 0..h {
                let c = act[h + j] * c_prev[j] + act[j] * act[2 * h + j];
                o[5 * h + j] = c;
                tc[j] = c;
            }
            T::tanh_slice(&mut tc);
            for j in 0..h {
                o[g4 + j] = act[3 * h + j] * tc[j];
            }
        }
        for r in 0..b2 {
            let o = &o_s[r * row..(r + 1) * row];
            hprev[r * h..(r + 1) * h].copy_from_slice(&o[g4..5 * h]);
            cprev[r * h..(r + 1) * h].copy_from_slice(&o[5 * h..6 * h]);
            let (bi, tau, dir) = position(s, r, b, t);
            let at = (bi * t + tau) * 2 * h + dir * h;
            out[at..at + h].copy_from_slice(&o[g4..5 * h]);
        }
    }
    Ok((saved, out))
}

/// Backward pass from the saved states and the output's gradient `[B, T, 2H]`.
/// Returns (d xp `[B, T, 8H]`, d w_hh_t `[2, H, 4H]`).
fn layer_bwd<T: CellFloat>(
    saved: &[T],
    grad: &[T],
    w: &Tensor,
    keep: &[Vec<bool>],
    h: usize,
) -> Result<(Tensor, Tensor)> {
    let dev = w.device();
    let t = keep.len();
    let b2 = keep.first().map_or(0, |k| k.len());
    let b = b2 / 2;
    let (g4, row) = (4 * h, 6 * h);
    let zero = T::from_f64(0.0);
    let one = T::from_f64(1.0);
    let w_t = w.transpose(1, 2)?.contiguous()?; // [2, 4H, H]
    let mut dxp = vec![zero; b * t * 8 * h];
    // Per direction, step and batch row (`[2, T, B, ·]`, the order of the dW
    // matmul): the gates' gradient, and h_prev (zero for padded rows, whose gates
    // do not depend on the recurrent weights).
    let mut dgates_all = vec![zero; 2 * t * b * g4];
    let mut hprev_all = vec![zero; 2 * t * b * h];
    let mut dh_next = vec![zero; b2 * h];
    let mut dc_next = vec![zero; b2 * h];
    let mut dg_s = vec![zero; b2 * g4];
    let mut act = vec![zero; g4];
    let mut tc = vec![zero; h];
    for s in (0..t).rev() {
        let o_s = &saved[s * b2 * row..(s + 1) * b2 * row];
        let prev = if s > 0 {
            Some(&saved[(s - 1) * b2 * row..s * b2 * row])
        } else {
            None
        };
        for r in 0..b2 {
            let o = &o_s[r * row..(r + 1) * row];
            let (bi, tau, dir) = position(s, r, b, t);
            let at_g = (bi * t + tau) * 2 * h + dir * h;
            let gr = &grad[at_g..at_g + h];
            let dg = &mut dg_s[r * g4..(r + 1) * g4];
            let dh_next = &mut dh_next[r * h..(r + 1) * h];
            let dc_next = &mut dc_next[r * h..(r + 1) * h];
            if !keep[s][r] {
                // The state passed through: so does its gradient.
                for j in 0..h {
                    dh_next[j] += gr[j];
                }
                dg.fill(zero);
                continue;
            }
            let slot = ((dir * t + s) * b + bi) * h;
            if let Some(p) = prev {
                hprev_all[slot..slot + h].copy_from_slice(&p[r * row + g4..r * row + 5 * h]);
            }
            activate_gates(&o[..g4], &mut act, h);
            tc.copy_from_slice(&o[5 * h..]);
            T::tanh_slice(&mut tc);
            let c_prev = |j: usize| prev.map_or(zero, |p| p[r * row + 5 * h + j]);
            for j in 0..h {
                let (i, f, g, og) = (act[j], act[h + j], act[2 * h + j], act[3 * h + j]);
                let dh = gr[j] + dh_next[j];
                let dct = dc_next[j] + dh * og * (one - tc[j] * tc[j]);
                dg[j] = dct * g * i * (one - i);
                dg[h + j] = dct * c_prev(j) * f * (one - f);
                dg[2 * h + j] = dct * i * (one - g * g);
                dg[3 * h + j] = dh * tc[j] * og * (one - og);
                dc_next[j] = dct * f;
                // Reaches h_prev through W below.
                dh_next[j] = zero;
            }
        }
        // The gates of active rows are xp + h_prev · W: their gradient reaches
        // h_prev through W.
        let (dgw, slots) = recurrent(&dg_s, &w_t, &keep[s], g4, h)?;
        for (r, slot) in slots.iter().enumerate() {
            let Some(at) = slot else { continue };
            for (d, &v) in dh_next[r * h..(r + 1) * h]
                .iter_mut()
                .zip(&dgw[*at..at + h])
            {
                *d += v;
            }
            let (bi, tau, dir) = position(s, r, b, t);
            let dg = &dg_s[r * g4..(r + 1) * g4];
            let at_x = (bi * t + tau) * 8 * h + dir * g4;
            dxp[at_x..at_x + g4].copy_from_slice(dg);
            let slot = ((dir * t + s) * b + bi) * g4;
            dgates_all[slot..slot + g4].copy_from_slice(dg);
        }
    }
    // dW = Σ_s h_prevᵀ · dgates, per direction, as one matmul over all steps.
    let hp = Tensor::from_vec(hprev_all, (2, t * b, h), dev)?
        .transpose(1, 2)?
        .contiguous()?;
    let dg = Tensor::from_vec(dgates_all, (2, t * b, g4), dev)?;
    let dw = hp.matmul(&dg)?;
    Ok((Tensor::from_vec(dxp, (b, t, 8 * h), dev)?, dw))
}

impl CustomOp2 for LstmLayerOp {
    fn name(&self) -> &'static str {
        "cotext-bilstm-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, h8) = l1.shape().dims3()?;
        let h = h8 / 8;
        let w_shape = l2.shape().clone();
        let mut saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("bilstm layer: poisoned state".into()))?;
        let out = match s1 {
            CpuStorage::F32(_) => {
                let xp: &[f32] = slice(s1, l1, "bilstm layer")?;
                let w: &[f32] = slice(s2, l2, "w_hh")?;
                let w = Tensor::from_slice(w, w_shape, &candle_core::Device::Cpu)?;
                let (states, out) = layer_fwd(xp, &w, &self.keep, h)?;
                *saved = Some(Saved::F32(states));
                CpuStorage::F32(out)
            }
            CpuStorage::F64(_) => {
                let xp: &[f64] = slice(s1, l1, "bilstm layer")?;
                let w: &[f64] = slice(s2, l2, "w_hh")?;
                let w = Tensor::from_slice(w, w_shape, &candle_core::Device::Cpu)?;
                let (states, out) = layer_fwd(xp, &w, &self.keep, h)?;
                *saved = Some(Saved::F64(states));
                CpuStorage::F64(out)
            }
            _ => candle_core::bail!("fused bilstm layer: f32 or f64 only"),
        };
        Ok((out, Shape::from((b, t, 2 * h))))
    }

    fn bwd(
        &self,
        _xp: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let h = w.dim(1)?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("bilstm layer: poisoned state".into()))?;
        let (dxp, dw) = match saved.as_ref() {
            Some(Saved::F32(states)) => layer_bwd::<f32>(
                states,
                &grad.flatten_all()?.to_vec1::<f32>()?,
                w,
                &self.keep,
                h,
            )?,
            Some(Saved::F64(states)) => layer_bwd::<f64>(
                states,
                &grad.flatten_all()?.to_vec1::<f64>()?,
                w,
                &self.keep,
                h,
            )?,
            None => candle_core::bail!("fused bilstm layer: backward before forward"),
        };
        Ok((Some(dxp), Some(dw)))
    }
}

// ---------------------------------------------------------------------------------
// One LSTM cell step (the attentional decoder, whose input feeding keeps the
// recurrence outside any one op)

/// One LSTM cell step: `gates [N, 4H]` (pre-activations in the order i, f, g, o,
/// input and recurrent projections already summed) and `c_prev [N, H]` give
/// `[2, N, H]`: the new h, then the new c (`c = σ(f)·c_prev + σ(i)·tanh(g)`,
/// `h = σ(o)·tanh(c)`). One pass forward and one backward instead of the dozen
/// elementwise ops (and their backward passes) of [`lstm_cell_ops`]; the same
/// arithmetic as [`bilstm_layer`]'s cell (f32: vectorized activations and f32
/// arithmetic; f64: libm).
pub fn lstm_step(gates: &Tensor, c_prev: &Tensor) -> Result<Tensor> {
    let (n, h4) = gates.dims2()?;
    let (n_c, h) = c_prev.dims2()?;
    if n != n_c || h4 != 4 * h {
        candle_core::bail!(
            "lstm step: gates {:?} and c_prev {:?}",
            gates.dims(),
            c_prev.dims()
        );
    }
    gates
        .contiguous()?
        .apply_op2(&c_prev.to_dtype(gates.dtype())?.contiguous()?, LstmStepOp)
}

struct LstmStepOp;

fn step_fwd<T: CellFloat>(gates: &[T], c_prev: &[T], h: usize) -> Vec<T> {
    let n = c_prev.len() / h.max(1);
    let mut out = vec![T::from_f64(0.0); 2 * n * h];
    let (hs, cs) = out.split_at_mut(n * h);
    hs.par_chunks_mut(h)
        .zip(cs.par_chunks_mut(h))
        .enumerate()
        // One activation buffer per rayon job, not per row.
        .for_each_init(Vec::new, |act, (r, (hr, cr))| {
            act.clear();
            act.extend_from_slice(&gates[r * 4 * h..(r + 1) * 4 * h]);
            activate_gates_in_place(act, h);
            let cp = &c_prev[r * h..(r + 1) * h];
            for j in 0..h {
                cr[j] = act[h + j] * cp[j] + act[j] * act[2 * h + j];
            }
            hr.copy_from_slice(cr);
            T::tanh_slice(hr);
            for j in 0..h {
                hr[j] = act[3 * h + j] * hr[j];
            }
        });
    out
}

/// `[N, 5H]` flattened: the gates' gradient `[N, 4H]`, then `c_prev`'s `[N, H]`.
fn step_bwd<T: CellFloat>(gates: &[T], c_prev: &[T], grad: &[T], h: usize) -> Vec<T> {
    let n = c_prev.len() / h.max(1);
    let one = T::from_f64(1.0);
    let mut out = vec![T::from_f64(0.0); 5 * n * h];
    let (dgates, dcp) = out.split_at_mut(4 * n * h);
    let (dh_all, dc_all) = grad.split_at(n * h);
    dgates
        .par_chunks_mut(4 * h)
        .zip(dcp.par_chunks_mut(h))
        .enumerate()
        // One pair of buffers per rayon job, not per row.
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(act, tc), (r, (dg, dcp))| {
                act.clear();
                act.extend_from_slice(&gates[r * 4 * h..(r + 1) * 4 * h]);
                activate_gates_in_place(act, h);
                let cp = &c_prev[r * h..(r + 1) * h];
                tc.clear();
                tc.extend((0..h).map(|j| act[h + j] * cp[j] + act[j] * act[2 * h + j]));
                T::tanh_slice(tc);
                let (dh, dc) = (&dh_all[r * h..(r + 1) * h], &dc_all[r * h..(r + 1) * h]);
                for j in 0..h {
                    let (i, f, g, og) = (act[j], act[h + j], act[2 * h + j], act[3 * h + j]);
                    let dct = dc[j] + dh[j] * og * (one - tc[j] * tc[j]);
                    dg[j] = dct * g * i * (one - i);
                    dg[h + j] = dct * cp[j] * f * (one - f);
                    dg[2 * h + j] = dct * i * (one - g * g);
                    dg[3 * h + j] = dh[j] * tc[j] * og * (one - og);
                    dcp[j] = dct * f;
                }
            },
        );
    out
}

/// `act ← [σ(i), σ(f), tanh(g), σ(o)]` in place.
fn activate_gates_in_place<T: CellFloat>(act: &mut [T], h: usize) {
    T::sigmoid_slice(&mut act[..2 * h]);
    T::tanh_slice(&mut act[2 * h..3 * h]);
    T::sigmoid_slice(&mut act[3 * h..]);
}

impl CustomOp2 for LstmStepOp {
    fn name(&self) -> &'static str {
        "cotext-lstm-step"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = l2.shape().dims2()?;
        let out = dispatch1!(s1, l1, "lstm gates", |g: T| step_fwd::<T>(
            g,
            slice(s2, l2, "lstm c_prev")?,
            h
        ));
        Ok((out, Shape::from((2, n, h))))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c_prev: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gates.apply_op3_no_bwd(c_prev, &grad.contiguous()?, &LstmStepBwdOp)?;
        let [dgates, dc_prev] = unpack(&both, [gates.shape(), c_prev.shape()])?;
        Ok((dgates, dc_prev))
    }
}

struct LstmStepBwdOp;

impl CustomOp3 for LstmStepBwdOp {
    fn name(&self) -> &'static str {
        "cotext-lstm-step-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = l2.shape().dims2()?;
        let out = dispatch1!(s1, l1, "lstm gates", |g: T| step_bwd::<T>(
            g,
            slice(s2, l2, "lstm c_prev")?,
            slice(s3, l3, "lstm grad")?,
            h
        ));
        Ok((out, Shape::from(5 * n * h)))
    }
}

/// The same masked LSTM step in plain candle ops (every device; the oracle for the
/// fused kernel). `keep` is `[N, 1]`, 1 at real steps and 0 at padding.
pub fn lstm_cell_ops(gates: &Tensor, state: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let h = state.dim(2)?;
    let h_prev = state.get(0)?;
    let c_prev = state.get(1)?;
    let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, h)?)?;
    let f = candle_nn::ops::sigmoid(&gates.narrow(1, h, h)?)?;
    let g = gates.narrow(1, 2 * h, h)?.tanh()?;
    let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * h, h)?)?;
    let c = ((f * &c_prev)? + (i * g)?)?;
    let hn = (o * c.tanh()?)?;
    // prev + keep·(new − prev): padding keeps the old state exactly.
    let c = (&c_prev + keep.broadcast_mul(&(c - &c_prev)?)?)?;
    let hn = (&h_prev + keep.broadcast_mul(&(hn - &h_prev)?)?)?;
    Tensor::stack(&[hn, c], 0)
}

// ---------------------------------------------------------------------------------
// Attention

/// Multi-head self-attention's core, fused: from the packed projections
/// `qkv [B, T, 3·D]` (per row `q | k | v`, each `[heads, dh]`), an optional additive
/// key bias `key_bias` (`B·T` values, e.g. `[B, 1, 1, T]` from
/// [`key_padding_bias`](super::layers::key_padding_bias), added to every query's
/// scores), a causal mask when `causal` (query `i` sees keys `0..=i`; the others get
/// the dtype's lowest finite score, so exactly zero weight, as
/// [`causal_bias`](super::layers::causal_bias) gives) and an optional dropout mask
/// `keep` over the probabilities (`[B, heads, T, T]`, each value 0 or `1/(1−p)`),
/// returns `(softmax(q·kᵀ·scale + bias) ⊙ keep)·v` with the heads merged, `[B, T, D]`.
///
/// Per batch row and head the two products are `gemm` calls on strided views of
/// `qkv` (no split, transpose or copy), and the softmax is the fused one. The
/// backward recomputes the probabilities instead of keeping them (as flash
/// attention does) and writes the whole gradient of `qkv` as one tensor: autograd
/// accumulates one gradient here instead of one per reshape, split, scale,
/// transpose, mask, softmax and dropout of the unfused path. The bias takes no
/// gradient.
pub fn self_attention(
    qkv: &Tensor,
    key_bias: Option<&Tensor>,
    causal: bool,
    heads: usize,
    scale: f64,
    keep: Option<Arc<Vec<f32>>>,
) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    if heads == 0 || !d3.is_multiple_of(3 * heads) {
        candle_core::bail!("self attention: qkv {:?} with {heads} heads", qkv.dims());
    }
    let p = AttnParams::new((b, t, t), heads, scale, key_bias, causal, keep, qkv.dtype())?;
    qkv.contiguous()?.apply_op1(SelfAttentionOp(p))
}

/// Multi-head cross-attention's core, fused: queries `q [N, T, D]` attend to the
/// packed keys and values `kv [N, S, 2·D]` (per row `k | v`, each `[heads, dh]`, as
/// `MultiHeadAttention::cross_key_values` gives) with an optional additive key bias
/// (`N·S` values, e.g. the source padding `[N, 1, 1, S]`) and dropout mask `keep`
/// (`[N, heads, T, S]`); returns `(softmax(q·kᵀ·scale + bias) ⊙ keep)·v`, `[N, T, D]`.
/// The same kernel as [`self_attention`]; its backward returns the gradients of `q`
/// and `kv` as one tensor each.
pub fn cross_attention(
    q: &Tensor,
    kv: &Tensor,
    key_bias: Option<&Tensor>,
    heads: usize,
    scale: f64,
    keep: Option<Arc<Vec<f32>>>,
) -> Result<Tensor> {
    let (n, t, d) = q.dims3()?;
    let (nk, s, d2) = kv.dims3()?;
    if heads == 0 || !d.is_multiple_of(heads) || nk != n || d2 != 2 * d {
        candle_core::bail!(
            "cross attention: q {:?} and kv {:?} with {heads} heads",
            q.dims(),
            kv.dims()
        );
    }
    let p = AttnParams::new((n, t, s), heads, scale, key_bias, false, keep, q.dtype())?;
    q.contiguous()?
        .apply_op2(&kv.contiguous()?, CrossAttentionOp(p))
}

/// What one attention call needs besides its operands; shared by the forward and
/// backward ops of both kernels.
#[derive(Clone)]
struct AttnParams {
    /// Batch rows, queries per row, keys per row.
    dims: (usize, usize, usize),
    heads: usize,
    scale: f64,
    /// The additive key bias, `[B, S]` row-major.
    bias: Option<Arc<Vec<f64>>>,
    causal: bool,
    /// The masked scores' value: the dtype's lowest finite one.
    lowest: f64,
    keep: Option<Arc<Vec<f32>>>,
}

impl AttnParams {
    fn new(
        (b, t, s): (usize, usize, usize),
        heads: usize,
        scale: f64,
        key_bias: Option<&Tensor>,
        causal: bool,
        keep: Option<Arc<Vec<f32>>>,
        dtype: DType,
    ) -> Result<Self> {
        let bias = match key_bias {
            Some(k) if k.elem_count() != b * s => candle_core::bail!(
                "attention: key bias {:?} for {b} rows of {s} keys",
                k.dims()
            ),
            Some(k) => Some(Arc::new(k.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)),
            None => None,
        };
        if causal && t != s {
            candle_core::bail!("attention: a causal mask needs as many queries as keys");
        }
        if let Some(k) = &keep {
            if k.len() != b * heads * t * s {
                candle_core::bail!(
                    "attention: dropout mask of {} values for [{b}, {heads}, {t}, {s}]",
                    k.len()
                );
            }
        }
        Ok(Self {
            dims: (b, t, s),
            heads,
            scale,
            bias,
            causal,
            lowest: crate::models::layers::lowest_finite(dtype),
            keep,
        })
    }
}

/// The element types of the attention kernel: `gemm`'s, with the softmax row of
/// [`softmax_last_dim`] (`f32` vectorized, `f64` libm).
trait AttnFloat: WithDType + CellFloat {
    fn softmax_in_place(row: &mut [Self]);
}

impl AttnFloat for f32 {
    fn softmax_in_place(row: &mut [f32]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in row.iter_mut() {
            *v -= max;
        }
        crate::fastmath::exp_slice(row);
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        let inv = (1.0 / sum) as f32;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

impl AttnFloat for f64 {
    fn softmax_in_place(row: &mut [f64]) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Where one batch row's operands lie: `q` is a row-major `[T, ·]` block, `k` and
/// `v` one `[S, ·]` block (the same block as `q` for self-attention); each part as
/// (row stride, column offset), the head's columns following at `hi · dh`.
#[derive(Clone, Copy)]
struct RowLayout {
    t: usize,
    s: usize,
    dh: usize,
    q: (usize, usize),
    k: (usize, usize),
    v: (usize, usize),
}

impl RowLayout {
    fn self_attention(t: usize, d: usize, heads: usize) -> Self {
        Self {
            t,
            s: t,
            dh: d / heads,
            q: (3 * d, 0),
            k: (3 * d, d),
            v: (3 * d, 2 * d),
        }
    }

    fn cross_attention(t: usize, s: usize, d: usize, heads: usize) -> Self {
        Self {
            t,
            s,
            dh: d / heads,
            q: (d, 0),
            k: (2 * d, 0),
            v: (2 * d, d),
        }
    }

    /// Head `hi`'s part (`q`, `k` or `v`), `[rows, dh]`.
    fn part(&self, (rs, off): (usize, usize), hi: usize) -> View {
        View {
            off: off + hi * self.dh,
            rs,
            cs: 1,
        }
    }

    /// The transpose of head `hi`'s part, `[dh, rows]`.
    fn part_t(&self, (rs, off): (usize, usize), hi: usize) -> View {
        View {
            off: off + hi * self.dh,
            rs: 1,
            cs: rs,
        }
    }
}

/// The attention probabilities `softmax(q·kᵀ·scale + bias)` of one batch row's head
/// `hi` into `p [T, S]` (before dropout); `qs` holds the row's queries and `kvs` its
/// keys and values (see [`RowLayout`]), `bias` its `S` key biases.
fn attn_probs<T: AttnFloat>(
    qs: &[T],
    kvs: &[T],
    lay: &RowLayout,
    hi: usize,
    bias: Option<&[T]>,
    par: &AttnParams,
    p: &mut [T],
) {
    let (t, s) = (lay.t, lay.s);
    gemm_into(
        (t, s, lay.dh),
        Dst::new(p),
        View::dense(s),
        qs,
        lay.part(lay.q, hi),
        kvs,
        lay.part_t(lay.k, hi),
        T::from_f64(par.scale),
    );
    let lowest = T::from_f64(par.lowest);
    for (i, row) in p.chunks_mut(s).enumerate() {
        if let Some(bias) = bias {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += *b;
            }
        }
        if par.causal {
            // `lowest + score` rounds to `lowest` for any score a model makes.
            for v in &mut row[i + 1..] {
                *v = lowest;
            }
        }
        T::softmax_in_place(row);
    }
}

fn keep_of<T: WithDType>(keep: &Option<Arc<Vec<f32>>>, from: usize, p: &mut [T]) {
    if let Some(k) = keep {
        let n = p.len();
        for (v, m) in p.iter_mut().zip(&k[from..from + n]) {
            *v *= T::from_f64(*m as f64);
        }
    }
}

/// Batch row `bi`'s key biases in `T`.
fn bias_row<T: WithDType>(par: &AttnParams, bi: usize) -> Option<Vec<T>> {
    let s = par.dims.2;
    par.bias.as_ref().map(|b| {
        b[bi * s..(bi + 1) * s]
            .iter()
            .map(|&v| T::from_f64(v))
            .collect()
    })
}

/// The forward: `out [B, T, D]` from the rows of `qs` (`[B, T, ·]`) and `kvs`
/// (`[B, S, ·]`, the same buffer for self-attention).
fn attn_fwd<T: AttnFloat>(qs: &[T], kvs: &[T], lay: RowLayout, par: &AttnParams) -> Vec<T> {
    let (b, t, s) = par.dims;
    let h = par.heads;
    let (d, dh) = (h * lay.dh, lay.dh);
    let (qn, kn) = (qs.len() / b.max(1), kvs.len() / b.max(1));
    let mut out = vec![T::from_f64(0.0); b * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each(|(bi, o)| {
        let (qs, kvs) = (&qs[bi * qn..(bi + 1) * qn], &kvs[bi * kn..(bi + 1) * kn]);
        let bias = bias_row::<T>(par, bi);
        let mut p = vec![T::from_f64(0.0); t * s];
        let o = Dst::new(o);
        for hi in 0..h {
            attn_probs(qs, kvs, &lay, hi, bias.as_deref(), par, &mut p);
            keep_of(&par.keep, (bi * h + hi) * t * s, &mut p);
            let dst = View {
                off: hi * dh,
                rs: d,
                cs: 1,
            };
            gemm_into(
                (t, dh, s),
                o,
                dst,
                &p,
                View::dense(s),
                kvs,
                lay.part(lay.v, hi),
                T::from_f64(1.0),
            );
        }
    });
    out
}

/// One batch row's backward: from the output's gradient `dout [T, D]`, writes the
/// gradients of its queries into `dq` and of its keys and values into `dkv` (adds
/// them into `dkv` with `add_dkv`), laid out as `qs` and `kvs` (for self-attention
/// `dq` and `dkv` are the same buffer).
#[allow(clippy::too_many_arguments)]
fn attn_bwd_row<T: AttnFloat>(
    qs: &[T],
    kvs: &[T],
    dout: &[T],
    lay: &RowLayout,
    par: &AttnParams,
    bi: usize,
    dq: Dst<T>,
    dkv: Dst<T>,
    add_dkv: bool,
) {
    let (t, s, dh) = (lay.t, lay.s, lay.dh);
    let h = par.heads;
    let d = h * dh;
    let sc = T::from_f64(par.scale);
    let bias = bias_row::<T>(par, bi);
    let (mut p, mut g) = (vec![T::from_f64(0.0); t * s], vec![T::from_f64(0.0); t * s]);
    for hi in 0..h {
        let from = (bi * h + hi) * t * s;
        let dov = View {
            off: hi * dh,
            rs: d,
            cs: 1,
        };
        attn_probs(qs, kvs, lay, hi, bias.as_deref(), par, &mut p);
        // dV = (P ⊙ keep)ᵀ · dO.
        g.copy_from_slice(&p);
        keep_of(&par.keep, from, &mut g);
        gemm_with(
            (s, dh, t),
            dkv,
            lay.part(lay.v, hi),
            &g,
            View::dense_t(s),
            dout,
            dov,
            T::from_f64(1.0),
            add_dkv,
            gemm::Parallelism::None,
        );
        // dP = (dO · Vᵀ) ⊙ keep; dS = P ⊙ (dP − Σ dP ⊙ P), row by row.
        gemm_into(
            (t, s, dh),
            Dst::new(&mut g),
            View::dense(s),
            dout,
            dov,
            kvs,
            lay.part_t(lay.v, hi),
            T::from_f64(1.0),
        );
        keep_of(&par.keep, from, &mut g);
        for (gr, pr) in g.chunks_mut(s).zip(p.chunks(s)) {
            let dot: f64 = gr
                .iter()
                .zip(pr)
                .map(|(a, b)| a.to_f64() * b.to_f64())
                .sum();
            let dot = T::from_f64(dot);
            for (gv, pv) in gr.iter_mut().zip(pr) {
                *gv = *pv * (*gv - dot);
            }
        }
        // dQ = scale · dS · K; dK = scale · dSᵀ · Q.
        let (qv, kv) = (lay.part(lay.q, hi), lay.part(lay.k, hi));
        gemm_into((t, dh, s), dq, qv, &g, View::dense(s), kvs, kv, sc);
        gemm_with(
            (s, dh, t),
            dkv,
            kv,
            &g,
            View::dense_t(s),
            qs,
            qv,
            sc,
            add_dkv,
            gemm::Parallelism::None,
        );
    }
}

/// Cross-attention's backward over every batch row, in parallel: writes the
/// gradient of the queries `q [N, T, D]` into `dq` and writes (or with `add_dkv`
/// adds) that of the keys and values `kv [N, S, 2·D]` into `dkv`.
fn cross_attn_bwd<T: AttnFloat>(
    q: &[T],
    kv: &[T],
    grad: &[T],
    lay: &RowLayout,
    par: &AttnParams,
    (dq, dkv): (&mut [T], &mut [T]),
    add_dkv: bool,
) {
    let d = lay.dh * par.heads;
    let (qn, kn) = (lay.t * d, lay.s * 2 * d);
    dq.par_chunks_mut(qn)
        .zip(dkv.par_chunks_mut(kn))
        .enumerate()
        .for_each(|(bi, (dqr, dkvr))| {
            let (qr, kvr) = (&q[bi * qn..(bi + 1) * qn], &kv[bi * kn..(bi + 1) * kn]);
            let gr = &grad[bi * qn..(bi + 1) * qn];
            attn_bwd_row(
                qr,
                kvr,
                gr,
                lay,
                par,
                bi,
                Dst::new(dqr),
                Dst::new(dkvr),
                add_dkv,
            );
        });
}

struct SelfAttentionOp(AttnParams);

impl CustomOp1 for SelfAttentionOp {
    fn name(&self) -> &'static str {
        "cotext-self-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, d3) = l1.shape().dims3()?;
        let lay = RowLayout::self_attention(t, d3 / 3, self.0.heads);
        let out = dispatch1!(s1, l1, "attention qkv", |x: T| attn_fwd::<T>(
            x, x, lay, &self.0
        ));
        Ok((out, Shape::from((b, t, d3 / 3))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = SelfAttentionBwdOp(self.0.clone());
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// The backward of [`SelfAttentionOp`]: `(qkv, grad)` → the gradient of `qkv`.
struct SelfAttentionBwdOp(AttnParams);

impl CustomOp2 for SelfAttentionBwdOp {
    fn name(&self) -> &'static str {
        "cotext-self-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, t, d3) = l1.shape().dims3()?;
        let lay = RowLayout::self_attention(t, d3 / 3, self.0.heads);
        let out = dispatch1!(s1, l1, "attention qkv", |x: T| {
            let grad: &[T] = slice(s2, l2, "attention grad")?;
            let mut dx = vec![T::from_f64(0.0); x.len()];
            let (xn, gn) = (t * d3, t * d3 / 3);
            dx.par_chunks_mut(xn).enumerate().for_each(|(bi, dxr)| {
                let dst = Dst::new(dxr);
                let (xr, gr) = (&x[bi * xn..(bi + 1) * xn], &grad[bi * gn..(bi + 1) * gn]);
                attn_bwd_row(xr, xr, gr, &lay, &self.0, bi, dst, dst, false);
            });
            dx
        });
        Ok((out, l1.shape().clone()))
    }
}

struct CrossAttentionOp(AttnParams);

impl CustomOp2 for CrossAttentionOp {
    fn name(&self) -> &'static str {
        "cotext-cross-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, t, d) = l1.shape().dims3()?;
        let lay = RowLayout::cross_attention(t, self.0.dims.2, d, self.0.heads);
        let out = dispatch1!(s1, l1, "attention q", |q: T| attn_fwd::<T>(
            q,
            slice(s2, l2, "attention kv")?,
            lay,
            &self.0
        ));
        Ok((out, Shape::from((n, t, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = CrossAttentionBwdOp(self.0.clone());
        let both = q.apply_op3_no_bwd(kv, &grad.contiguous()?, &op)?;
        let [dq, dkv] = unpack(&both, [q.shape(), kv.shape()])?;
        Ok((dq, dkv))
    }
}

/// The backward of [`CrossAttentionOp`]: `(q, kv, grad)` → the gradients of `q`
/// and `kv`, flattened one after the other.
struct CrossAttentionBwdOp(AttnParams);

impl CustomOp3 for CrossAttentionBwdOp {
    fn name(&self) -> &'static str {
        "cotext-cross-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, t, d) = l1.shape().dims3()?;
        let s = self.0.dims.2;
        let lay = RowLayout::cross_attention(t, s, d, self.0.heads);
        let (qn, kn) = (t * d, s * 2 * d);
        let out = dispatch1!(s1, l1, "attention q", |q: T| {
            let kv: &[T] = slice(s2, l2, "attention kv")?;
            let grad: &[T] = slice(s3, l3, "attention grad")?;
            let mut out = vec![T::from_f64(0.0); n * (qn + kn)];
            let (dq, dkv) = out.split_at_mut(n * qn);
            cross_attn_bwd(q, kv, grad, &lay, &self.0, (dq, dkv), false);
            out
        });
        Ok((out, Shape::from(n * (qn + kn))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::{assert_close, max_abs_diff, numeric_grad, randn};
    use candle_core::{Device, Var};

    #[test]
    fn add_bias_matches_broadcast_add_forward_and_backward() -> Result<()> {
        // A bias over rows, and a [T, D] table over a batch; sizes past one block.
        for (xs, bs) in [
            (&[3usize, 700, 37][..], &[37usize][..]),
            (&[5, 11, 9], &[11, 9]),
        ] {
            let x = Var::from_tensor(&randn(xs, 1)?.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&randn(bs, 2)?.to_dtype(DType::F32)?)?;
            let up = randn(xs, 3)?.to_dtype(DType::F32)?;
            let fused = add_bias(&x, &b)?;
            let plain = x.broadcast_add(&b)?;
            assert_eq!(max_abs_diff(&fused, &plain)?, 0.0);
            let gf = (fused * &up)?.sum_all()?.backward()?;
            let gp = (plain * &up)?.sum_all()?.backward()?;
            assert_eq!(max_abs_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap())?, 0.0);
            let (db_f, db_p) = (gf.get(&b).unwrap(), gp.get(&b).unwrap());
            assert_eq!(db_f.dims(), bs);
            // f64 accumulation against candle's f32 one: equal to f32 rounding.
            let scale = db_p.abs()?.max_all()?.to_scalar::<f32>()? as f64;
            assert!(max_abs_diff(db_f, db_p)? < 1e-5 * scale.max(1.0));
        }
        Ok(())
    }

    #[test]
    fn add_bias_gradient_matches_finite_differences_and_refuses_other_shapes() -> Result<()> {
        let x0 = randn(&[4, 3, 5], 4)?;
        let b0 = randn(&[3, 5], 5)?;
        let up = randn(&[4, 3, 5], 6)?;
        let (x, b) = (Var::from_tensor(&x0)?, Var::from_tensor(&b0)?);
        let g = (add_bias(&x, &b)? * &up)?.sum_all()?.backward()?;
        let f = |x: &Tensor, b: &Tensor| -> Result<f64> {
            (add_bias(x, b)? * &up)?.sum_all()?.to_scalar::<f64>()
        };
        let nx = numeric_grad(&x0, &|x| f(x, &b0))?;
        let nb = numeric_grad(&b0, &|b| f(&x0, b))?;
        assert_close(g.get(&x).unwrap(), &nx, 1e-6, "x")?;
        assert_close(g.get(&b).unwrap(), &nb, 1e-6, "b")?;
        assert!(add_bias(&x0, &randn(&[4], 7)?).is_err());
        assert!(add_bias(&x0, &randn(&[2, 3, 4, 5], 7)?).is_err());
        Ok(())
    }

    #[test]
    fn fused_layer_norm_matches_plain_ops_forward_and_backward() -> Result<()> {
        let x = Var::from_tensor(&randn(&[3, 5, 7], 1)?.to_dtype(DType::F32)?)?;
        let w = Var::from_tensor(&randn(&[7], 2)?.to_dtype(DType::F32)?)?;
        let b = Var::from_tensor(&randn(&[7], 3)?.to_dtype(DType::F32)?)?;
        let up = randn(&[3, 5, 7], 4)?.to_dtype(DType::F32)?;
        let fused = layer_norm(&x, &w, &b, 1e-5)?;
        let plain = super::super::layers::layer_norm_ops(&x, &w, &b, 1e-5)?;
        assert!(max_abs_diff(&fused, &plain)? < 1e-5);
        let gf = (fused * &up)?.sum_all()?.backward()?;
        let gp = (plain * &up)?.sum_all()?.backward()?;
        for (v, name) in [(&x, "x"), (&w, "w"), (&b, "b")] {
            let diff = max_abs_diff(gf.get(v).unwrap(), gp.get(v).unwrap())?;
            assert!(diff < 1e-4, "{name}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn fused_layer_norm_gradient_matches_finite_differences() -> Result<()> {
        let x0 = randn(&[2, 3, 6], 5)?;
        let w0 = randn(&[6], 6)?;
        let b0 = randn(&[6], 7)?;
        let up = randn(&[2, 3, 6], 8)?;
        let (x, w, b) = (
            Var::from_tensor(&x0)?,
            Var::from_tensor(&w0)?,
            Var::from_tensor(&b0)?,
        );
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Tensor> {
            (layer_norm(x, w, b, 1e-5)? * &up)?.sum_all()
        };
        let grads = loss(&x, &w, &b)?.backward()?;
        let fx = numeric_grad(&x0, &|t| loss(t, &w0, &b0)?.to_scalar::<f64>())?;
        let fw = numeric_grad(&w0, &|t| loss(&x0, t, &b0)?.to_scalar::<f64>())?;
        let fb = numeric_grad(&b0, &|t| loss(&x0, &w0, t)?.to_scalar::<f64>())?;
        assert_close(grads.get(&x).unwrap(), &fx, 1e-6, "dx")?;
        assert_close(grads.get(&w).unwrap(), &fw, 1e-6, "dw")?;
        assert_close(grads.get(&b).unwrap(), &fb, 1e-6, "db")?;
        Ok(())
    }

    #[test]
    fn fused_softmax_and_gelu_match_plain_ops_forward_and_backward() -> Result<()> {
        use crate::models::layers::{gelu_ops, softmax_last_dim_ops};
        // 3·5·1500 elements: several blocks, the last one partial.
        let x = Var::from_tensor(&(randn(&[3, 5, 1500], 31)? * 3.0)?.to_dtype(DType::F32)?)?;
        let up = randn(&[3, 5, 1500], 32)?.to_dtype(DType::F32)?;
        type Pair = (
            fn(&Tensor) -> Result<Tensor>,
            fn(&Tensor) -> Result<Tensor>,
            &'static str,
        );
        let pairs: [Pair; 2] = [
            (softmax_last_dim, softmax_last_dim_ops, "softmax"),
            (gelu, gelu_ops, "gelu"),
        ];
        for (fused, plain, name) in pairs {
            let (a, b) = (fused(&x)?, plain(&x)?);
            assert!(max_abs_diff(&a, &b)? < 1e-5, "{name} forward");
            let ga = (a * &up)?.sum_all()?.backward()?;
            let gb = (b * &up)?.sum_all()?.backward()?;
            let diff = max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap())?;
            assert!(diff < 1e-4, "{name} backward: {diff}");
        }
        Ok(())
    }

    #[test]
    fn f32_softmax_is_within_a_few_ulps_of_the_f64_one() -> Result<()> {
        // Rows of attention-like sizes and a wide one, large spreads, and the
        // masking value (lowest f32) in some entries.
        for (rows, d, scale) in [(64usize, 40usize, 8.0), (7, 1500, 30.0), (5, 3, 1.0)] {
            let mut x64 = (randn(&[rows, d], 41)? * scale)?.to_vec2::<f64>()?;
            for (r, row) in x64.iter_mut().enumerate() {
                if d > 3 && r % 2 == 0 {
                    row[d - 1] = f32::MIN as f64;
                }
            }
            let x32 = Tensor::new(x64.clone(), &Device::Cpu)?.to_dtype(DType::F32)?;
            let y32 = softmax_last_dim(&x32)?.to_vec2::<f32>()?;
            // The reference: f64 softmax of the same f32 inputs.
            let exact = softmax_last_dim(&x32.to_dtype(DType::F64)?)?.to_vec2::<f64>()?;
            // `x − max` rounds to f32 (as in any f32 softmax): a relative error of
            // |x − max| · 2⁻²⁴ in the result, plus a few ulps from exp, sum and scale.
            let xs = x32.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let mut worst = 0f64;
            for ((a, e), x) in y32.iter().zip(&exact).zip(&xs) {
                let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                for ((a, e), x) in a.iter().zip(e).zip(x) {
                    if *e > 1e-30 {
                        let bound = (4.0 + (x - max).abs()) * f32::EPSILON as f64 / 2.0;
                        worst = worst.max((*a as f64 - e).abs() / e / bound);
                    }
                }
            }
            assert!(worst <= 1.0, "rows {rows} × {d}: error {worst} × the bound");
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_and_gelu_gradients_match_finite_differences() -> Result<()> {
        let x0 = (randn(&[4, 7], 33)? * 2.0)?;
        let up = randn(&[4, 7], 34)?;
        let x = Var::from_tensor(&x0)?;
        for (f, name) in [
            (softmax_last_dim as fn(&Tensor) -> Result<Tensor>, "softmax"),
            (gelu, "gelu"),
        ] {
            let loss = |t: &Tensor| (f(t)? * &up)?.sum_all();
            let g = loss(&x)?.backward()?;
            let num = numeric_grad(&x0, &|t| loss(t)?.to_scalar::<f64>())?;
            assert_close(g.get(&x).unwrap(), &num, 1e-7, name)?;
        }
        Ok(())
    }

    #[test]
    fn mul_by_constant_passes_gradient_to_the_input_only() -> Result<()> {
        let x = Var::from_tensor(&randn(&[3, 5], 50)?)?;
        let c = randn(&[3, 5], 51)?;
        let up = randn(&[3, 5], 52)?;
        let y = mul_by_constant(&x, &c)?;
        assert_eq!(max_abs_diff(&y, &(x.as_tensor() * &c)?)?, 0.0);
        let g = (y * &up)?.sum_all()?.backward()?;
        assert_eq!(max_abs_diff(g.get(&x).unwrap(), &(&up * &c)?)?, 0.0);
        assert!(g.get(&c).is_none());
        Ok(())
    }

    /// The fused layer against a step-by-step loop of plain ops: outputs and the
    /// gradients of the projections and recurrent weights (f64, tight).
    fn plain_layer(xp: &Tensor, w: &Tensor, keep: &[Vec<bool>]) -> Result<Tensor> {
        let (b, t, h8) = xp.dims3()?;
        assert_eq!(keep.len(), t);
        let h = h8 / 8;
        let b2 = 2 * b;
        let mut state = Tensor::zeros((2, b2, h), DType::F64, &Device::Cpu)?;
        let mut fw = Vec::new();
        let mut bw = Vec::new();
        for (s, keep) in keep.iter().enumerate() {
            let k: Vec<f64> = keep.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
            let k = Tensor::from_vec(k, (b2, 1), &Device::Cpu)?;
            let hw = state
                .get(0)?
                .reshape((2, b, h))?
                .matmul(w)?
                .reshape((b2, 4 * h))?;
            let x = Tensor::cat(
                &[
                    xp.narrow(1, s, 1)?.narrow(2, 0, 4 * h)?.squeeze(1)?,
                    xp.narrow(1, t - 1 - s, 1)?
                        .narrow(2, 4 * h, 4 * h)?
                        .squeeze(1)?,
                ],
                0,
            )?;
            let gates = (x + hw)?;
            state = lstm_cell_ops(&gates, &state, &k)?;
            let hs = state.get(0)?;
            fw.push(hs.narrow(0, 0, b)?);
            bw.push(hs.narrow(0, b, b)?);
        }
        bw.reverse();
        let fw = Tensor::stack(&fw, 1)?; // [B, T, H]
        let bw = Tensor::stack(&bw, 1)?;
        Tensor::cat(&[fw, bw], 2)
    }

    #[test]
    fn fused_lstm_step_matches_plain_ops_and_finite_differences() -> Result<()> {
        // The decoder's cell against the plain-op oracle (every row kept), then
        // finite differences in f64, then f32 against f64; h and c both used
        // downstream, as the decoder uses them.
        let (n, h) = (3, 5);
        let g0 = (randn(&[n, 4 * h], 50)? * 2.0)?;
        let c0 = randn(&[n, h], 51)?;
        let up = randn(&[2, n, h], 52)?;
        let gates = Var::from_tensor(&g0)?;
        let c_prev = Var::from_tensor(&c0)?;
        let fused = lstm_step(&gates, &c_prev)?;
        let state = Tensor::stack(&[c0.zeros_like()?, c_prev.as_tensor().clone()], 0)?;
        let keep = Tensor::ones((n, 1), DType::F64, &Device::Cpu)?;
        let plain = lstm_cell_ops(&gates, &state, &keep)?;
        assert!(max_abs_diff(&fused, &plain)? < 1e-12);
        let gf = (&fused * &up)?.sum_all()?.backward()?;
        let gp = (&plain * &up)?.sum_all()?.backward()?;
        for (v, name) in [(&gates, "gates"), (&c_prev, "c_prev")] {
            let diff = max_abs_diff(gf.get(v).unwrap(), gp.get(v).unwrap())?;
            assert!(diff < 1e-12, "{name}: fused vs plain {diff}");
        }
        let loss = |g: &Tensor, c: &Tensor| (lstm_step(g, c)? * &up)?.sum_all()?.to_scalar::<f64>();
        let fg = numeric_grad(&g0, &|g| loss(g, &c0))?;
        let fc = numeric_grad(&c0, &|c| loss(&g0, c))?;
        assert_close(gf.get(&gates).unwrap(), &fg, 1e-6, "d gates")?;
        assert_close(gf.get(&c_prev).unwrap(), &fc, 1e-6, "d c_prev")?;
        let g32 = Var::from_tensor(&g0.to_dtype(DType::F32)?)?;
        let c32 = Var::from_tensor(&c0.to_dtype(DType::F32)?)?;
        let fused32 = lstm_step(&g32, &c32)?;
        let diff = max_abs_diff(&fused32.to_dtype(DType::F64)?, &plain)?;
        assert!(diff < 2e-6, "f32 forward: {diff}");
        let grads32 = (&fused32 * &up.to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        for (v32, v, name) in [(&g32, &gates, "gates"), (&c32, &c_prev, "c_prev")] {
            let got = grads32.get(v32).unwrap().to_dtype(DType::F64)?;
            let diff = max_abs_diff(&got, gp.get(v).unwrap())?;
            assert!(diff < 1e-5, "f32 d {name}: {diff}");
        }
        assert!(lstm_step(&g0, &c0.narrow(1, 0, h - 1)?).is_err());
        Ok(())
    }

    #[test]
    fn fused_lstm_layer_matches_plain_ops_and_finite_differences() -> Result<()> {
        // Steps with every row active (no packing), with the directions' active
        // counts differing, with one direction empty, and with no row active.
        let (t, b, h) = (6, 2, 3);
        let keep = vec![
            vec![true, true, true, true],
            vec![true, true, true, false],
            vec![true, false, true, false],
            vec![true, false, false, true],
            vec![false, false, false, true],
            vec![false, false, false, false],
        ];
        let keep = Arc::new(keep);
        let xp0 = randn(&[b, t, 8 * h], 40)?;
        let w0 = (randn(&[2, h, 4 * h], 41)? * 0.5)?;
        let up = randn(&[b, t, 2 * h], 42)?;
        let xp = Var::from_tensor(&xp0)?;
        let w = Var::from_tensor(&w0)?;
        let fused = bilstm_layer(&xp, &w, keep.clone())?;
        let plain = plain_layer(&xp, &w, &keep)?;
        assert!(max_abs_diff(&fused, &plain)? < 1e-12);
        let gf = (&fused * &up)?.sum_all()?.backward()?;
        let gp = (&plain * &up)?.sum_all()?.backward()?;
        for (v, name) in [(&xp, "xp"), (&w, "w_hh")] {
            let diff = max_abs_diff(gf.get(v).unwrap(), gp.get(v).unwrap())?;
            assert!(diff < 1e-12, "{name}: fused vs plain {diff}");
        }
        let loss = |x: &Tensor, w: &Tensor| {
            (bilstm_layer(x, w, keep.clone())? * &up)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let fx = numeric_grad(&xp0, &|x| loss(x, &w0))?;
        let fw = numeric_grad(&w0, &|w| loss(&xp0, w))?;
        assert_close(gf.get(&xp).unwrap(), &fx, 1e-6, "d xp")?;
        assert_close(gf.get(&w).unwrap(), &fw, 1e-6, "d w_hh")?;
        // f32 (vectorized activations, f32 arithmetic) against the f64 oracle.
        let xp32 = Var::from_tensor(&xp0.to_dtype(DType::F32)?)?;
        let w32 = Var::from_tensor(&w0.to_dtype(DType::F32)?)?;
        let fused32 = bilstm_layer(&xp32, &w32, keep.clone())?;
        let diff = max_abs_diff(&fused32.to_dtype(DType::F64)?, &plain)?;
        assert!(diff < 2e-6, "f32 forward: {diff}");
        let g32 = (&fused32 * &up.to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        for (v32, v, name) in [(&xp32, &xp, "xp"), (&w32, &w, "w_hh")] {
            let got = g32.get(v32).unwrap().to_dtype(DType::F64)?;
            let diff = max_abs_diff(&got, gp.get(v).unwrap())?;
            assert!(diff < 1e-5, "f32 d {name}: {diff}");
        }
        Ok(())
    }

    /// The unfused self-attention core in plain candle ops (the path
    /// `MultiHeadAttention::forward` takes off the CPU).
    fn self_attention_ops(
        qkv: &Tensor,
        bias: &Tensor,
        h: usize,
        scale: f64,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let d = qkv.dim(2)? / 3;
        let (q, k, v) = (
            qkv.narrow(2, 0, d)?,
            qkv.narrow(2, d, d)?,
            qkv.narrow(2, 2 * d, d)?,
        );
        attention_ops(&q, &k, &v, Some(bias), false, h, scale, keep)
    }

    #[test]
    fn unstack_gives_get_s_values_and_gradients() -> Result<()> {
        // A recurrence over every slice (as the LSTM decoder runs), one over some
        // slices only, and a second backward pass over the same graph.
        let x0 = randn(&[5, 3, 4], 110)?;
        let w = randn(&[4, 4], 111)?;
        let run = |x: &Tensor, take: &[usize], split: bool| -> Result<Tensor> {
            let steps = if split {
                unstack(x)?
            } else {
                (0..5).map(|s| x.get(s)).collect::<Result<Vec<_>>>()?
            };
            let mut h = Tensor::zeros((3, 4), DType::F64, &Device::Cpu)?;
            let mut outs = vec![];
            for &s in take {
                h = (&steps[s] + h.matmul(&w)?)?.tanh()?;
                outs.push(h.clone());
            }
            Tensor::stack(&outs, 0)?.sqr()?.sum_all()
        };
        for take in [&[0usize, 1, 2, 3, 4][..], &[1, 3], &[4]] {
            let x = Var::from_tensor(&x0)?;
            let (a, b) = (run(&x, take, true)?, run(&x, take, false)?);
            assert_eq!(a.to_scalar::<f64>()?, b.to_scalar::<f64>()?);
            let (ga, gb) = (a.backward()?, b.backward()?);
            let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
            assert_eq!(max_abs_diff(ga, gb)?, 0.0, "{take:?}");
            // The same graph again: the stash starts empty each pass.
            let again = a.backward()?;
            assert_eq!(max_abs_diff(again.get(&x).unwrap(), gb)?, 0.0);
        }
        // Without gradient tracking it is plain `get`.
        let plain = unstack(&x0)?;
        assert_eq!(plain.len(), 5);
        assert_eq!(max_abs_diff(&plain[2], &x0.get(2)?)?, 0.0);
        Ok(())
    }

    #[test]
    fn matmul_t_is_bit_for_bit_the_candle_path() -> Result<()> {
        // The LSTM decoder's shapes (few rows, k past gemm's blocking), odd sizes.
        for (m, k, n) in [
            (64usize, 256usize, 1024usize),
            (64, 512, 256),
            (7, 5, 3),
            (130, 33, 70),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let a = Var::from_tensor(&randn(&[m, k], 110)?.to_dtype(dtype)?)?;
                let w = Var::from_tensor(&randn(&[n, k], 111)?.to_dtype(dtype)?)?;
                let up = randn(&[m, n], 112)?.to_dtype(dtype)?;
                let fused = matmul_t(&a, &w)?;
                let plain = a.matmul(&w.t()?)?;
                assert_eq!(fused.dims(), plain.dims());
                assert_eq!(
                    max_abs_diff(&fused, &plain)?,
                    0.0,
                    "{m}x{k}x{n} {dtype:?}: y"
                );
                let gf = (&fused * &up)?.sum_all()?.backward()?;
                let gp = (&plain * &up)?.sum_all()?.backward()?;
                for (v, what) in [(&a, "a"), (&w, "w")] {
                    let (x, y) = (gf.get(v).unwrap(), gp.get(v).unwrap());
                    assert_eq!(x.dims(), y.dims());
                    assert_eq!(max_abs_diff(x, y)?, 0.0, "{m}x{k}x{n} {dtype:?}: d{what}");
                }
            }
        }
        // A mismatched inner size is refused.
        assert!(matmul_t(&randn(&[2, 3], 1)?, &randn(&[4, 5], 2)?).is_err());
        Ok(())
    }

    #[test]
    fn shared_weight_gradients_are_autograds_sums_bit_for_bit() -> Result<()> {
        // A recurrence `h ← tanh(x_t + h · Wᵀ)[:, ..in]` and one without the
        // addition, over steps that all read `W [out, in]`: the LSTM decoder's shapes
        // (64 rows, 256 → 1024 gates; 256 → 256) and odd sizes; then the same
        // graph's backward a second time (the sum starts empty each pass).
        for (m, din, dout, steps) in [
            (64usize, 256usize, 1024usize, 4usize),
            (64, 256, 256, 3),
            (3, 5, 5, 6),
            (17, 13, 40, 3),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let w = randn(&[dout, din], 120)?.affine(0.1, 0.0)?;
                let w = Var::from_tensor(&w.to_dtype(dtype)?)?;
                let h0 = Var::from_tensor(&randn(&[m, din], 121)?.to_dtype(dtype)?)?;
                let xs = randn(&[steps, m, dout], 122)?;
                let xs = Var::from_tensor(&xs.to_dtype(dtype)?)?;
                for add in [true, false] {
                    let run = |shared: bool| -> Result<Tensor> {
                        let sw = share(&w)?;
                        let mut h = h0.as_tensor().clone();
                        let mut total = Tensor::zeros((), dtype, &Device::Cpu)?;
                        for t in 0..steps {
                            let x = xs.get(t)?;
                            let pre = match (shared, add) {
                                (true, true) => matmul_t_shared(&h, &sw, Some(&x))?,
                                (true, false) => matmul_t_shared(&h, &sw, None)?,
                                (false, true) => (&x + matmul_t(&h, &w)?)?,
                                (false, false) => matmul_t(&h, &w)?,
                            };
                            let y = pre.tanh()?;
                            total = (total + y.sqr()?.sum_all()?)?;
                            h = y.narrow(1, 0, din)?;
                        }
                        Ok(total)
                    };
                    let (a, b) = (run(true)?, run(false)?);
                    let what = format!("{m}x{din}x{dout}x{steps} {dtype:?} add={add}");
                    assert_eq!(max_abs_diff(&a, &b)?, 0.0, "{what}: value");
                    for pass in 0..2 {
                        let (ga, gb) = (a.backward()?, b.backward()?);
                        for (v, name) in [(&w, "w"), (&h0, "h0"), (&xs, "xs")] {
                            if !add && name == "xs" {
                                continue;
                            }
                            let (x, y) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                            assert_eq!(max_abs_diff(x, y)?, 0.0, "{what} pass {pass}: d{name}");
                        }
                    }
                }
            }
        }
        // Without gradients (evaluation) it is the plain product.
        let w = randn(&[4, 3], 1)?;
        let sw = share(&w)?;
        assert!(sw.sum.is_none());
        let a = randn(&[2, 3], 2)?;
        let add = randn(&[2, 4], 3)?;
        let y = matmul_t_shared(&a, &sw, Some(&add))?;
        assert_eq!(max_abs_diff(&y, &(&add + a.matmul(&w.t()?)?)?)?, 0.0);
        let tracked = Var::from_tensor(&w)?;
        assert!(matmul_t_shared(&randn(&[2, 5], 4)?, &share(tracked.as_tensor())?, None).is_err());
        Ok(())
    }

    #[test]
    fn shared_cross_attention_sums_the_steps_gradients() -> Result<()> {
        // Steps whose queries attend to the same keys and values (the LSTM
        // decoder's Luong attention: one query a row) against the unshared op,
        // whose per-step gradients autograd sums; with a padding bias, 1 and 2 heads.
        let (n, s, d, steps) = (3usize, 5usize, 8usize, 4usize);
        let mut bias = vec![0f64; n * s];
        bias[s - 1] = -1e9;
        bias[2 * s - 2..2 * s].fill(-1e9);
        let bias = Tensor::from_vec(bias, (n, 1, s), &Device::Cpu)?;
        for heads in [1usize, 2] {
            let kv = Var::from_tensor(&randn(&[n, s, 2 * d], 130)?)?;
            let q0 = Var::from_tensor(&randn(&[n, 1, d], 131)?)?;
            let wq = randn(&[d, d], 132)?.affine(0.3, 0.0)?;
            let run = |shared: bool| -> Result<Tensor> {
                let skv = share(&kv)?;
                let mut q = q0.as_tensor().clone();
                let mut total = q.zeros_like()?;
                for _ in 0..steps {
                    let ctx = if shared {
                        cross_attention_shared(&q, &skv, Some(&bias), heads, 0.5)?
                    } else {
                        cross_attention(&q, &kv, Some(&bias), heads, 0.5, None)?
                    };
                    total = (total + &ctx)?;
                    q = ctx.broadcast_matmul(&wq)?.tanh()?;
                }
                total.sqr()?.sum_all()? + q.sum_all()?
            };
            let (a, b) = (run(true)?, run(false)?);
            assert!(max_abs_diff(&a, &b)? < 1e-12, "{heads} heads: value");
            let (ga, gb) = (a.backward()?, b.backward()?);
            for (v, name) in [(&kv, "kv"), (&q0, "q0")] {
                let diff = max_abs_diff(ga.get(v).unwrap(), gb.get(v).unwrap())?;
                assert!(diff < 1e-12, "{heads} heads: d{name} {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn fused_linear_is_bit_for_bit_the_candle_path() -> Result<()> {
        // Shapes past gemm's blocking (k > 256 splits the sum), 3-D and 2-D inputs.
        for (dims, din, out) in [
            (vec![3usize, 5], 7usize, 4usize),
            (vec![4, 33], 256, 1024),
            (vec![2, 9], 1024, 256),
            (vec![70], 64, 3),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let mut xd = dims.clone();
                xd.push(din);
                let m: usize = dims.iter().product();
                let x = Var::from_tensor(&randn(&xd, 100)?.to_dtype(dtype)?)?;
                let w = Var::from_tensor(&randn(&[out, din], 101)?.to_dtype(dtype)?)?;
                let b = Var::from_tensor(&randn(&[out], 102)?.to_dtype(dtype)?)?;
                let mut yd = dims.clone();
                yd.push(out);
                let up = randn(&yd, 103)?.to_dtype(dtype)?;
                let fused = linear(&x, &w, &b)?;
                let plain = add_bias(
                    &x.reshape((m, din))?
                        .matmul(&w.t()?)?
                        .reshape(yd.as_slice())?,
                    &b,
                )?;
                assert_eq!(fused.dims(), plain.dims());
                assert_eq!(max_abs_diff(&fused, &plain)?, 0.0, "{xd:?} {dtype:?}: y");
                let gf = (&fused * &up)?.sum_all()?.backward()?;
                let gp = (&plain * &up)?.sum_all()?.backward()?;
                for (v, what) in [(&x, "x"), (&w, "w"), (&b, "b")] {
                    let (a, c) = (gf.get(v).unwrap(), gp.get(v).unwrap());
                    assert_eq!(a.dims(), c.dims());
                    assert_eq!(max_abs_diff(a, c)?, 0.0, "{xd:?} {dtype:?}: d{what}");
                }
            }
        }
        // Finite differences in f64.
        let x0 = randn(&[2, 3, 5], 104)?;
        let w0 = randn(&[4, 5], 105)?;
        let b0 = randn(&[4], 106)?;
        let up = randn(&[2, 3, 4], 107)?;
        let (x, w, b) = (
            Var::from_tensor(&x0)?,
            Var::from_tensor(&w0)?,
            Var::from_tensor(&b0)?,
        );
        let g = (linear(&x, &w, &b)? * &up)?.sum_all()?.backward()?;
        let f = |x: &Tensor| -> Result<f64> {
            (linear(x, &w0, &b0)? * &up)?.sum_all()?.to_scalar::<f64>()
        };
        assert_close(g.get(&x).unwrap(), &numeric_grad(&x0, &f)?, 1e-7, "dx")?;
        let f = |w: &Tensor| -> Result<f64> {
            (linear(&x0, w, &b0)? * &up)?.sum_all()?.to_scalar::<f64>()
        };
        assert_close(g.get(&w).unwrap(), &numeric_grad(&w0, &f)?, 1e-7, "dw")?;
        let f = |b: &Tensor| -> Result<f64> {
            (linear(&x0, &w0, b)? * &up)?.sum_all()?.to_scalar::<f64>()
        };
        assert_close(g.get(&b).unwrap(), &numeric_grad(&b0, &f)?, 1e-7, "db")?;
        // Shapes that do not fit are refused.
        assert!(linear(&x0, &w0.t()?, &b0).is_err());
        assert!(linear(&x0, &w0, &randn(&[5], 108)?).is_err());
        Ok(())
    }

    /// Attention in plain candle ops from separate `q [N, T, D]`, `k`, `v`
    /// `[N, S, D]`: the oracle for both kernels, causal mask included.
    #[allow(clippy::too_many_arguments)]
    fn attention_ops(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        causal: bool,
        h: usize,
        scale: f64,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, t, d) = q.dims3()?;
        let s = k.dim(1)?;
        let split = |x: &Tensor, r: usize| -> Result<Tensor> {
            x.reshape((n, r, h, d / h))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = ((split(q, t)? * scale)?, split(k, s)?, split(v, s)?);
        let mut sc = q.matmul(&k.t()?)?;
        if let Some(b) = bias {
            sc = sc.broadcast_add(&b.reshape((n, 1, 1, s))?)?;
        }
        if causal {
            let cb = crate::models::layers::causal_bias(t, q.dtype(), q.device())?;
            sc = sc.broadcast_add(&cb)?;
        }
        let p = crate::models::layers::softmax_last_dim_ops(&sc)?;
        let p = match keep {
            Some(m) => (p * m)?,
            None => p,
        };
        p.matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, t, d))
    }

    fn dropout_keep(
        len: usize,
        seed: u64,
        dims: (usize, usize, usize, usize),
    ) -> Result<(Arc<Vec<f32>>, Tensor)> {
        let keep: Vec<f32> = randn(&[len], seed)?
            .to_vec1::<f64>()?
            .iter()
            .map(|&u| if u > -1.0 { 1.0 / 0.8 } else { 0.0 })
            .collect();
        let t = Tensor::from_vec(keep.clone(), dims, &Device::Cpu)?.to_dtype(DType::F64)?;
        Ok((Arc::new(keep), t))
    }

    #[test]
    fn fused_cross_attention_matches_plain_ops_and_finite_differences() -> Result<()> {
        // 3 rows, 4 queries attending to 7 keys (padded in two rows), 2 heads of 3;
        // with and without a dropout mask; then model shapes in f32.
        let (n, t, s, h, dh) = (3usize, 4usize, 7usize, 2usize, 3usize);
        let d = h * dh;
        let scale = 1.0 / (dh as f64).sqrt();
        let q0 = randn(&[n, t, d], 90)?;
        let kv0 = (randn(&[n, s, 2 * d], 91)? * 1.5)?;
        let up = randn(&[n, t, d], 92)?;
        let bias = padding_bias(n, s, &[0, 4, 1], DType::F64)?;
        let (keep, keep_t) = dropout_keep(n * h * t * s, 93, (n, h, t, s))?;
        for mask in [None, Some(keep)] {
            let keep_ref = mask.as_ref().map(|_| &keep_t);
            let (q, kv) = (Var::from_tensor(&q0)?, Var::from_tensor(&kv0)?);
            let fused = cross_attention(&q, &kv, Some(&bias), h, scale, mask.clone())?;
            let (k, v) = (kv.narrow(2, 0, d)?, kv.narrow(2, d, d)?);
            let plain = attention_ops(&q, &k, &v, Some(&bias), false, h, scale, keep_ref)?;
            assert!(max_abs_diff(&fused, &plain)? < 1e-13);
            let gf = (&fused * &up)?.sum_all()?.backward()?;
            let gp = (&plain * &up)?.sum_all()?.backward()?;
            for (var, what) in [(&q, "q"), (&kv, "kv")] {
                let (a, b) = (gf.get(var).unwrap(), gp.get(var).unwrap());
                assert!(
                    max_abs_diff(a, b)? < 1e-13,
                    "d {what}: {}",
                    max_abs_diff(a, b)?
                );
            }
            // Row 1's last four keys are padding: no gradient reaches them.
            let dkv = gf.get(&kv).unwrap().get(1)?;
            assert!(
                dkv.narrow(0, s - 4, 4)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?
                    == 0.0
            );
            let fq = |x: &Tensor| -> Result<f64> {
                (cross_attention(x, &kv0, Some(&bias), h, scale, mask.clone())? * &up)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            assert_close(gf.get(&q).unwrap(), &numeric_grad(&q0, &fq)?, 1e-6, "d q")?;
            let fkv = |x: &Tensor| -> Result<f64> {
                (cross_attention(&q0, x, Some(&bias), h, scale, mask.clone())? * &up)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            assert_close(
                gf.get(&kv).unwrap(),
                &numeric_grad(&kv0, &fkv)?,
                1e-6,
                "d kv",
            )?;
        }
        for (n, t, s, h, dh) in [
            (4usize, 17usize, 23usize, 4usize, 16usize),
            (2, 40, 9, 8, 32),
        ] {
            let d = h * dh;
            let scale = 1.0 / (dh as f64).sqrt();
            let q = Var::from_tensor(&randn(&[n, t, d], 94)?.to_dtype(DType::F32)?)?;
            let kv = Var::from_tensor(&randn(&[n, s, 2 * d], 95)?.to_dtype(DType::F32)?)?;
            let up = randn(&[n, t, d], 96)?.to_dtype(DType::F32)?;
            let pad: Vec<usize> = (0..n).map(|i| (i * 3) % s).collect();
            let bias = padding_bias(n, s, &pad, DType::F32)?;
            let fused = cross_attention(&q, &kv, Some(&bias), h, scale, None)?;
            let (k, v) = (kv.narrow(2, 0, d)?, kv.narrow(2, d, d)?);
            let plain = attention_ops(&q, &k, &v, Some(&bias), false, h, scale, None)?;
            assert!(max_abs_diff(&fused, &plain)? < 1e-5);
            let gf = (&fused * &up)?.sum_all()?.backward()?;
            let gp = (&plain * &up)?.sum_all()?.backward()?;
            for var in [&q, &kv] {
                let e = max_abs_diff(gf.get(var).unwrap(), gp.get(var).unwrap())?;
                assert!(e < 1e-4, "{n} {t} {s} {h} {dh}: {e}");
            }
        }
        // Shapes that do not fit are refused.
        assert!(cross_attention(&q0, &kv0, Some(&bias), 4, scale, None).is_err());
        assert!(cross_attention(&q0, &q0, Some(&bias), h, scale, None).is_err());
        let wrong = padding_bias(n, t, &[0, 0, 0], DType::F64)?;
        assert!(cross_attention(&q0, &kv0, Some(&wrong), h, scale, None).is_err());
        Ok(())
    }

    /// `[B, T]` key padding (the last `pad[i]` keys of row i) as the additive bias.
    fn padding_bias(b: usize, t: usize, pad: &[usize], dtype: DType) -> Result<Tensor> {
        let m: Vec<f32> = (0..b * t)
            .map(|i| if i % t < t - pad[i / t] { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(m, (b, t), &Device::Cpu)?;
        crate::models::layers::key_padding_bias(&mask, dtype)
    }

    #[test]
    fn fused_self_attention_matches_plain_ops_at_model_shapes() -> Result<()> {
        // Shapes past the gemm kernels' tile sizes, in f32 as models train.
        for (b, t, h, dh) in [
            (5usize, 16usize, 2usize, 16usize),
            (2, 33, 4, 8),
            (3, 50, 4, 64),
        ] {
            let d = h * dh;
            let scale = 1.0 / (dh as f64).sqrt();
            let x0 = randn(&[b, t, 3 * d], 70)?.to_dtype(DType::F32)?;
            let up = randn(&[b, t, d], 71)?.to_dtype(DType::F32)?;
            let pad: Vec<usize> = (0..b).map(|i| (i * 5) % t).collect();
            let bias = padding_bias(b, t, &pad, DType::F32)?;
            let x = Var::from_tensor(&x0)?;
            let fused = self_attention(&x, Some(&bias), false, h, scale, None)?;
            let plain = self_attention_ops(&x, &bias, h, scale, None)?;
            let e = max_abs_diff(&fused, &plain)?;
            assert!(e < 1e-5, "{b} {t} {h} {dh}: y {e}");
            let gf = (&fused * &up)?.sum_all()?.backward()?;
            let gp = (&plain * &up)?.sum_all()?.backward()?;
            let e = max_abs_diff(gf.get(&x).unwrap(), gp.get(&x).unwrap())?;
            assert!(e < 1e-4, "{b} {t} {h} {dh}: dx {e}");
        }
        Ok(())
    }

    #[test]
    fn fused_self_attention_matches_plain_ops_and_finite_differences() -> Result<()> {
        // 3 batch rows (one with padded keys), 7 positions, 2 heads of 4; with and
        // without a dropout mask; key padding alone, causal with key padding, and
        // causal alone (the decoder's case).
        let (b, t, h, dh) = (3usize, 7usize, 2usize, 4usize);
        let d = h * dh;
        let scale = 1.0 / (dh as f64).sqrt();
        let x0 = (randn(&[b, t, 3 * d], 60)? * 1.5)?;
        let up = randn(&[b, t, d], 61)?;
        let bias = padding_bias(b, t, &[0, 3, 1], DType::F64)?;
        let b32 = padding_bias(b, t, &[0, 3, 1], DType::F32)?;
        let (keep, keep_t) = dropout_keep(b * h * t * t, 62, (b, h, t, t))?;
        for (padded, causal) in [(true, false), (true, true), (false, true)] {
            let (bias, b32) = if padded {
                (Some(&bias), Some(&b32))
            } else {
                (None, None)
            };
            for mask in [None, Some(keep.clone())] {
                let keep_ref = mask.as_ref().map(|_| &keep_t);
                let x = Var::from_tensor(&x0)?;
                let fused = self_attention(&x, bias, causal, h, scale, mask.clone())?;
                let (q, k, v) = (
                    x.narrow(2, 0, d)?,
                    x.narrow(2, d, d)?,
                    x.narrow(2, 2 * d, d)?,
                );
                let plain = attention_ops(&q, &k, &v, bias, causal, h, scale, keep_ref)?;
                assert!(max_abs_diff(&fused, &plain)? < 1e-13);
                let gf = (&fused * &up)?.sum_all()?.backward()?;
                let gp = (&plain * &up)?.sum_all()?.backward()?;
                let (gf, gp) = (gf.get(&x).unwrap(), gp.get(&x).unwrap());
                assert!(max_abs_diff(gf, gp)? < 1e-13, "{}", max_abs_diff(gf, gp)?);
                if padded {
                    // A padded key takes no weight: its k and v get exactly zero gradient.
                    let row1 = gf.get(1)?.get(t - 1)?.to_vec1::<f64>()?;
                    assert!(row1[d..].iter().all(|&g| g == 0.0));
                }
                if causal {
                    // The first query sees only the first key (a softmax of one
                    // score), so its q gets exactly zero gradient.
                    let first = gf.get(0)?.get(0)?.to_vec1::<f64>()?;
                    assert!(first[..d].iter().all(|&g| g == 0.0));
                }
                // Finite differences of the fused op itself.
                let f = |x: &Tensor| -> Result<f64> {
                    (self_attention(x, bias, causal, h, scale, mask.clone())? * &up)?
                        .sum_all()?
                        .to_scalar::<f64>()
                };
                assert_close(gf, &numeric_grad(&x0, &f)?, 1e-6, "d qkv")?;
                // f32 against f64.
                let x32 = Var::from_tensor(&x0.to_dtype(DType::F32)?)?;
                let y32 = self_attention(&x32, b32, causal, h, scale, mask.clone())?;
                let g32 = (&y32 * &up.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
                let y32 = y32.to_dtype(DType::F64)?;
                assert!(max_abs_diff(&y32, &fused)? < 1e-5);
                let g32 = g32.get(&x32).unwrap().to_dtype(DType::F64)?;
                assert!(
                    max_abs_diff(&g32, gf)? < 1e-5,
                    "{}",
                    max_abs_diff(&g32, gf)?
                );
            }
        }
        // Shapes that do not fit are refused.
        assert!(self_attention(&x0, Some(&bias), false, 5, scale, None).is_err());
        let short = Arc::new(vec![1.0f32; 10]);
        assert!(self_attention(&x0, Some(&bias), false, h, scale, Some(short)).is_err());
        Ok(())
    }
}
