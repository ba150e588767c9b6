//! The chunked token-level path: cross-entropy and complement entropy over large
//! vocabularies without the `[rows, V]` intermediates of the plain path.
//!
//! Two entry points:
//! * [`chunked_cross_entropy`] / [`chunked_complement_entropy`] take the logits.
//!   A candle custom op streams each row twice (max, then sums) and writes nothing of
//!   size `[rows, V]` in the forward pass; its backward writes exactly one `[rows, V]`
//!   buffer, the gradient. (candle's autograd then adds it into a fresh
//!   accumulation buffer of the same size: see the memory table in `docs/performance.md`.)
//! * [`super::projected_token_loss`] (`projected.rs`) takes the hidden states and
//!   the output projection instead, and computes the logits `chunk_rows` rows at a
//!   time: the full `[rows, V]` logits never exist, and the extra memory is one chunk.
//!
//! Both are equal to the plain path to rounding (sums are accumulated in f64), and
//! both support only [`Form::Exact`], the form worth running at scale. The row
//! kernels run on the host. With the `cuda` feature, the logits entry points run a
//! fused CUDA kernel on CUDA devices (`cuda.rs`: one pass over each row, f32
//! accumulation, bf16/f16/f32 logits read in place, the backward one elementwise
//! kernel); on Metal they fall back to the plain path.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::complement::{ComplementOptions, Form};
use super::cross_entropy::CrossEntropyOptions;
use super::rows::{counted_rows, flatten_as};
use super::{complement_entropy_sum, cross_entropy_sum, LossSum};
use crate::fastmath::exp_f64_slice;

/// Which token-level loss a row kernel computes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `(1 − ε)(lse − z_g) + ε(lse − mean z)`.
    CrossEntropy { smoothing: f64 },
    /// `Σ_{j≠g} q_j log q_j = −H_c`.
    Complement,
}

/// Per-row statistics of the streaming passes, in f64.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowStats {
    /// The row's loss (before normalization).
    pub value: f64,
    /// Max over the softmax's support.
    pub max: f64,
    /// ln Σ exp(z − max) over the support.
    pub log_sum: f64,
    /// Σ exp(z − max) over the support (set by the `f32` kernels, which use it).
    pub sum: f64,
    /// For complement entropy: H_c.
    pub entropy: f64,
}

/// A logits element type with row kernels: `f64` through the generic ones below
/// (`f64` exponentials), `f32` through [`super::row_kernels`] (vectorized).
pub(crate) trait RowFloat: Float + Send + Sync {
    fn row_stats(z: &[Self], g: usize, kind: Kind) -> RowStats;
    fn row_grad(z: &[Self], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [Self]);
}

impl RowFloat for f64 {
    fn row_stats(z: &[f64], g: usize, kind: Kind) -> RowStats {
        row_stats(z, g, kind)
    }
    fn row_grad(z: &[f64], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [f64]) {
        row_grad(z, g, kind, st, scale, out)
    }
}

impl RowFloat for f32 {
    fn row_stats(z: &[f32], g: usize, kind: Kind) -> RowStats {
        super::row_kernels::row_stats(z, g, kind)
    }
    fn row_grad(z: &[f32], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [f32]) {
        super::row_kernels::row_grad(z, g, kind, st, scale, out)
    }
}

thread_local! {
    /// Per-thread scratch rows for the vectorized `exp` passes.
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a zeroed-or-stale scratch slice of `n` f64s (every caller writes
/// it before reading).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < n {
            s.resize(n, 0.0);
        }
        f(&mut s[..n])
    })
}

fn to_f64<T: Float>(x: T) -> f64 {
    x.to_f64().unwrap_or(f64::NAN)
}

/// The row's statistics, for `f64` logits ([`RowFloat`]; `f32` logits take the
/// vectorized kernels of `row_kernels.rs`, which the tests there hold to these).
/// Exponentials are taken in f64 ([`exp_f64_slice`], vectorized) of the
/// differences `z − max` (computed in the logits' dtype), and summed in f64 in
/// index order.
pub(super) fn row_stats<T: Float>(z: &[T], g: usize, kind: Kind) -> RowStats {
    match kind {
        Kind::CrossEntropy { smoothing } => {
            let mut max = T::neg_infinity();
            for &x in z {
                max = max.max(x);
            }
            let (sum, total) = with_scratch(z.len(), |e| {
                for (e, &x) in e.iter_mut().zip(z) {
                    *e = to_f64(x - max);
                }
                exp_f64_slice(e);
                let (mut sum, mut total) = (0f64, 0f64);
                for (&e, &x) in e.iter().zip(z) {
                    sum += e;
                    total += to_f64(x);
                }
                (sum, total)
            });
            let max = to_f64(max);
            let lse = max + sum.ln();
            let nll = lse - to_f64(z[g]);
            let smooth = lse - total / z.len() as f64;
            RowStats {
                value: (1.0 - smoothing) * nll + smoothing * smooth,
                max,
                log_sum: sum.ln(),
                sum,
                entropy: 0.0,
            }
        }
        Kind::Complement => {
            let mut max = T::neg_infinity();
            for (j, &x) in z.iter().enumerate() {
                if j != g {
                    max = max.max(x);
                }
            }
            let (sum, weighted) = with_scratch(2 * z.len(), |buf| {
                let (s, e) = buf.split_at_mut(z.len());
                for ((s, e), &x) in s.iter_mut().zip(e.iter_mut()).zip(z) {
                    *s = to_f64(x - max);
                    *e = *s;
                }
                exp_f64_slice(e);
                let (mut sum, mut weighted) = (0f64, 0f64);
                for (j, (&s, &e)) in s.iter().zip(e.iter()).enumerate() {
                    if j != g {
                        sum += e;
                        weighted += e * s;
                    }
                }
                (sum, weighted)
            });
            let entropy = sum.ln() - weighted / sum;
            RowStats {
                value: -entropy,
                max: to_f64(max),
                log_sum: sum.ln(),
                sum,
                entropy,
            }
        }
    }
}

/// Writes `scale · ∂value/∂z` for one row into `out`, given the row's statistics
/// (the probabilities through [`exp_f64_slice`], in f64).
pub(super) fn row_grad<T: Float>(
    z: &[T],
    g: usize,
    kind: Kind,
    st: &RowStats,
    scale: f64,
    out: &mut [T],
) {
    match kind {
        Kind::CrossEntropy { smoothing } => {
            let uniform = smoothing / z.len() as f64;
            with_scratch(z.len(), |p| {
                for (p, &x) in p.iter_mut().zip(z) {
                    *p = to_f64(x) - st.max - st.log_sum;
                }
                exp_f64_slice(p);
                for (j, (&p, o)) in p.iter().zip(out.iter_mut()).enumerate() {
                    let mut d = p - uniform;
                    if j == g {
                        d -= 1.0 - smoothing;
                    }
                    *o = T::from(scale * d).unwrap_or(T::nan());
                }
            });
        }
        Kind::Complement => {
            // ∂(−H)/∂z_j = q_j (log q_j + H) for j ≠ g, and 0 for the target.
            with_scratch(2 * z.len(), |buf| {
                let (log_q, q) = buf.split_at_mut(z.len());
                for ((l, q), &x) in log_q.iter_mut().zip(q.iter_mut()).zip(z) {
                    *l = to_f64(x) - st.max - st.log_sum;
                    *q = *l;
                }
                exp_f64_slice(q);
                for (j, ((&l, &q), o)) in log_q.iter().zip(q.iter()).zip(out.iter_mut()).enumerate()
                {
                    *o = if j == g {
                        T::zero()
                    } else {
                        T::from(scale * q * (l + st.entropy)).unwrap_or(T::nan())
                    };
                }
            });
        }
    }
}

fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// Forward op: `(logits [n, V], targets [n] u32) → per-row values [n]`, 0 for ignored rows.
/// The row statistics of the forward pass are kept for the backward pass, which
/// then needs one sweep over the logits instead of three.
struct RowLossOp {
    kind: Kind,
    ignore_index: Option<u32>,
    stats: std::sync::Mutex<Vec<RowStats>>,
}

impl RowLossOp {
    fn values<T: RowFloat>(&self, z: &[T], targets: &[u32], v: usize) -> Vec<T> {
        let stats: Vec<RowStats> = z
            .par_chunks(v)
            .zip(targets.par_iter())
            .map(|(row, &g)| {
                if self.ignore_index == Some(g) {
                    RowStats::default()
                } else {
                    T::row_stats(row, g as usize, self.kind)
                }
            })
            .collect();
        let values = stats
            .iter()
            .map(|s| T::from(s.value).unwrap_or(T::nan()))
            .collect();
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        values
    }
}

impl CustomOp2 for RowLossOp {
    fn name(&self) -> &'static str {
        "cotext-row-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = match s2 {
            CpuStorage::U32(t) => contiguous_slice(t, l2, self.name())?,
            _ => bail!("{}: targets must be u32", self.name()),
        };
        let out = match s1 {
            CpuStorage::F32(z) => {
                CpuStorage::F32(self.values(contiguous_slice(z, l1, self.name())?, targets, v))
            }
            CpuStorage::F64(z) => {
                CpuStorage::F64(self.values(contiguous_slice(z, l1, self.name())?, targets, v))
            }
            _ => bail!("{}: logits must be f32 or f64", self.name()),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.to_dtype(DType::F64)?.contiguous()?;
        let stats = std::mem::take(&mut *self.stats.lock().unwrap_or_else(|e| e.into_inner()));
        let grad = logits.apply_op3_no_bwd(
            targets,
            &grad_res,
            &RowGradOp {
                kind: self.kind,
                ignore_index: self.ignore_index,
                stats,
            },
        )?;
        Ok((Some(grad), None))
    }
}

/// Backward op: `(logits [n, V], targets [n], upstream [n] f64) → ∂/∂logits [n, V]`.
struct RowGradOp {
    kind: Kind,
    ignore_index: Option<u32>,
    /// The forward pass's statistics, or empty to recompute them (a second
    /// backward through the same graph).
    stats: Vec<RowStats>,
}

impl RowGradOp {
    fn grads<T: RowFloat>(&self, z: &[T], targets: &[u32], upstream: &[f64], v: usize) -> Vec<T> {
        let mut out = vec![T::zero(); z.len()];
        let cached = self.stats.len() == targets.len();
        out.par_chunks_mut(v)
            .zip(z.par_chunks(v))
            .zip(targets.par_iter().zip(upstream.par_iter()))
            .enumerate()
            .for_each(|(i, ((o, row), (&g, &up)))| {
                if self.ignore_index != Some(g) {
                    let st = if cached {
                        self.stats[i]
                    } else {
                        T::row_stats(row, g as usize, self.kind)
                    };
                    T::row_grad(row, g as usize, self.kind, &st, up, o);
                }
            });
        out
    }
}

impl CustomOp3 for RowGradOp {
    fn name(&self) -> &'static str {
        "cotext-row-loss-grad"
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
        let (_, v) = l1.shape().dims2()?;
        let targets = match s2 {
            CpuStorage::U32(t) => contiguous_slice(t, l2, self.name())?,
            _ => bail!("{}: targets must be u32", self.name()),
        };
        let upstream = match s3 {
            CpuStorage::F64(u) => contiguous_slice(u, l3, self.name())?,
            _ => bail!("{}: upstream gradient must be f64", self.name()),
        };
        let out = match s1 {
            CpuStorage::F32(z) => CpuStorage::F32(self.grads(
                contiguous_slice(z, l1, self.name())?,
                targets,
                upstream,
                v,
            )),
            CpuStorage::F64(z) => CpuStorage::F64(self.grads(
                contiguous_slice(z, l1, self.name())?,
                targets,
                upstream,
                v,
            )),
            _ => bail!("{}: logits must be f32 or f64", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Runs the row op over validated inputs and returns the sum of the per-row values
/// (unnormalized) and the count.
fn row_loss_sum(
    logits: &Tensor,
    targets: &Tensor,
    kind: Kind,
    ignore_index: Option<u32>,
    what: &str,
) -> Result<(Tensor, usize, usize)> {
    let on_device = device_kernel(logits);
    let (flat, host, classes) = flatten_as(logits, targets, what, on_device)?;
    let count = counted_rows(&host, classes, ignore_index, what)?.len();
    // Valid after the check above: every target is a class or the (u32) ignore index.
    let targets = Tensor::from_vec(
        host.iter().map(|&t| t as u32).collect::<Vec<_>>(),
        host.len(),
        flat.device(),
    )?;
    #[cfg(feature = "cuda")]
    if on_device {
        let stats = flat
            .contiguous()?
            .apply_op2(&targets, super::cuda::RowLossCuda::new(kind, ignore_index))?;
        return Ok((stats.narrow(1, 0, 1)?.sum_all()?, count, classes));
    }
    let values = flat.contiguous()?.apply_op2(
        &targets,
        RowLossOp {
            kind,
            ignore_index,
            stats: Default::default(),
        },
    )?;
    Ok((values.sum_all()?, count, classes))
}

/// Whether the chunked entry points run a device kernel for these logits (CUDA,
/// with the `cuda` feature, for f32/bf16/f16).
fn device_kernel(logits: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && logits.device().is_cuda()
        && matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// Whether the chunked entry points have a kernel for these logits; the others take
/// the plain path.
fn has_kernel(logits: &Tensor) -> bool {
    logits.device().is_cpu() || device_kernel(logits)
}

/// [`super::cross_entropy`] through the chunked row kernel: the same value and
/// gradient, with no `[rows, V]` intermediate in the forward pass and one (the
/// gradient) in the backward pass. On CUDA (with the `cuda` feature) a fused kernel;
/// on other devices the plain path.
pub fn chunked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<Tensor> {
    chunked_cross_entropy_sum(logits, targets, opts)?.mean()
}

/// [`chunked_cross_entropy`] as a sum and a count (see [`LossSum`]).
pub fn chunked_cross_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<LossSum> {
    if !has_kernel(logits) {
        return cross_entropy_sum(logits, targets, opts);
    }
    opts.check("chunked_cross_entropy")?;
    let kind = Kind::CrossEntropy {
        smoothing: opts.label_smoothing,
    };
    let (sum, count, _) = row_loss_sum(
        logits,
        targets,
        kind,
        opts.ignore_index,
        "chunked_cross_entropy",
    )?;
    Ok(LossSum { sum, count })
}

/// [`super::complement_entropy`] through the chunked row kernel: the same value and
/// gradient, with no `[rows, V]` intermediate in the forward pass and one (the
/// gradient) in the backward pass. Only [`Form::Exact`]. On CUDA (with the `cuda`
/// feature) a fused kernel; on other devices the plain path.
pub fn chunked_complement_entropy(
    logits: &Tensor,
    targets: &Tensor,
    opts: &ComplementOptions,
) -> Result<Tensor> {
    chunked_complement_entropy_sum(logits, targets, opts)?.mean()
}

/// [`chunked_complement_entropy`] as a sum and a count (see [`LossSum`]).
pub fn chunked_complement_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    opts: &ComplementOptions,
) -> Result<LossSum> {
    const WHAT: &str = "chunked_complement_entropy";
    if opts.form != Form::Exact {
        bail!("{WHAT}: only Form::Exact has a chunked kernel; use complement_entropy for the reference form");
    }
    if !has_kernel(logits) {
        return complement_entropy_sum(logits, targets, opts);
    }
    let (sum, count, classes) =
        row_loss_sum(logits, targets, Kind::Complement, opts.ignore_index, WHAT)?;
    if classes < 2 {
        bail!("{WHAT}: needs at least 2 classes (got {classes})");
    }
    let divisor = opts.normalization.divisor(classes);
    Ok(LossSum {
        sum: sum.affine(1.0 / divisor, 0.0)?,
        count,
    })
}

/// Replaces each row of `z` by `scale · ∂value/∂z` (zero for ignored rows) and
/// returns the unscaled sum of the row values.
pub(super) fn value_and_grad_in_place<T: RowFloat>(
    z: &mut [T],
    targets: &[i64],
    vocab: usize,
    kind: Kind,
    ignore_index: Option<u32>,
    scale: f64,
) -> f64 {
    z.par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &g)| {
            if ignore_index.is_some_and(|i| i64::from(i) == g) {
                row.iter_mut().for_each(|x| *x = T::zero());
                return 0.0;
            }
            let g = g as usize;
            let st = T::row_stats(row, g, kind);
            // row_grad reads the row while writing the output: go through a copy of
            // one row (V values), not of the chunk.
            let input = row.to_vec();
            T::row_grad(&input, g, kind, &st, scale, row);
            st.value
        })
        // Summed in row order: the same bits however rayon split the rows.
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}
