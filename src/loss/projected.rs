//! The token-level loss fused with the output projection: [`projected_token_loss`]
//! takes the hidden states `h [N, H]` and the output layer `(W [V, H], b [V])`
//! instead of the logits `h·Wᵀ + b`, so that training over a large vocabulary never
//! holds the `[N, V]` logits, nor their gradient, nor autograd's running sum of that
//! gradient.
//!
//! On the CPU (f32, f64) it is one autograd node: the forward pass takes the counted
//! rows (targets other than the ignore index) `chunk_rows` at a time, computes
//! their logits with `gemm`, turns them into their gradient in place with the row
//! kernels of `chunked.rs`, and contracts that block with `W` and `h` at once
//! (`dh = g·W`, `dW += gᵀ·h`, `db += Σ g`); the backward pass hands those
//! gradients to autograd (times the upstream scalar). Ignored rows (padding) cost
//! nothing: no logits, no products; their `dh` is zero. The extra memory is one
//! `[chunk_rows, V]` block plus gradients the size of the inputs.
//!
//! On other devices the same chunking runs through candle's ops, with each chunk's
//! logits read back to the host (a linear surrogate carries the gradients).

use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;

use super::chunked::{value_and_grad_in_place, Kind, RowFloat};
use super::complement::{ComplementOptions, Form};
use super::cross_entropy::CrossEntropyOptions;
use super::rows::{counted_rows, targets_to_host};
use super::LossSum;
use crate::gemm::{times_wt_grads, times_wt_into};

/// The loss [`projected_token_loss`] computes.
#[derive(Debug, Clone, Copy)]
pub enum ProjectedLoss {
    /// Cross-entropy, as [`super::cross_entropy`].
    CrossEntropy(CrossEntropyOptions),
    /// Complement entropy, as [`super::complement_entropy`] ([`Form::Exact`] only).
    Complement(ComplementOptions),
}

/// Logits per chunk when `chunk_rows` is 0: 1 Mi (4 MiB of f32), a block that
/// stays in a server core's cache between the products and the row pass.
const DEFAULT_CHUNK_LOGITS: usize = 1 << 20;

/// A token-level loss fused with the output projection `logits = h Wᵀ + b`,
/// computed `chunk_rows` rows at a time so the `[rows, V]` logits never exist whole.
///
/// * `hidden`: `[N, H]` or `[B, T, H]` (f32 or f64; bf16/f16 are projected in f32);
/// * `weight`: `[V, H]` (a tied embedding matrix works as it is);
/// * `bias`: `[V]` or `None`;
/// * `targets`: `[N]` or `[B, T]`, `u32` or `i64`.
///
/// Returns the same [`LossSum`] as the plain loss on `hidden·weightᵀ + bias`, and a
/// graph that gives `hidden`, `weight` and `bias` the same gradients (first order),
/// equal to rounding (the row sums are taken in f64; the weight's gradient is
/// summed chunk by chunk). A `chunk_rows` of 0 picks about 1 Mi logits per chunk.
pub fn projected_token_loss(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
    loss: &ProjectedLoss,
    chunk_rows: usize,
) -> Result<LossSum> {
    Ok(projected(hidden, weight, bias, targets, loss, chunk_rows, false)?.0)
}

/// [`projected_token_loss`], and how many counted rows the model predicts right:
/// rows whose largest logit is the target's (the first index among ties, as
/// `argmax` picks). Training accuracy without the logits.
pub fn projected_token_loss_and_correct(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
    loss: &ProjectedLoss,
    chunk_rows: usize,
) -> Result<(LossSum, usize)> {
    projected(hidden, weight, bias, targets, loss, chunk_rows, true)
}

/// What a chunk loop needs to know of the loss.
#[derive(Debug, Clone, Copy)]
struct Setup {
    kind: Kind,
    /// `1 / divisor` for the complement entropy, 1 for cross-entropy.
    scale: f64,
    /// Rows per chunk.
    chunk: usize,
    /// Count the rows predicted right.
    accuracy: bool,
}

fn projected(
    hidden: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    targets: &Tensor,
    loss: &ProjectedLoss,
    chunk_rows: usize,
    accuracy: bool,
) -> Result<(LossSum, usize)> {
    const WHAT: &str = "projected_token_loss";
    let (kind, ignore_index, normalization) = match loss {
        ProjectedLoss::CrossEntropy(o) => {
            o.check(WHAT)?;
            (
                Kind::CrossEntropy {
                    smoothing: o.label_smoothing,
                },
                o.ignore_index,
                None,
            )
        }
        ProjectedLoss::Complement(o) => {
            if o.form != Form::Exact {
                bail!("{WHAT}: only Form::Exact has a chunked kernel");
            }
            (Kind::Complement, o.ignore_index, Some(o.normalization))
        }
    };
    // Half-precision hidden states (mixed precision) are projected in f32.
    let hidden = &match hidden.dtype() {
        DType::BF16 | DType::F16 => hidden.to_dtype(DType::F32)?,
        _ => hidden.clone(),
    };
    let dtype = hidden.dtype();
    if !matches!(dtype, DType::F32 | DType::F64) {
        bail!("{WHAT}: hidden states must be f32 or f64 (got {dtype:?})");
    }
    let width = hidden.dim(D::Minus1)?;
    let (vocab, w_width) = weight.dims2()?;
    if w_width != width {
        bail!("{WHAT}: weight is [{vocab}, {w_width}] but hidden states have width {width}");
    }
    if let Some(b) = bias {
        if b.dims() != [vocab] {
            bail!("{WHAT}: bias must be [{vocab}] (got {:?})", b.dims());
        }
    }
    // A no-op (the same tensor, so the same variable) when the dtypes agree.
    let weight = &weight.to_dtype(dtype)?;
    let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
    let rows = hidden.elem_count() / width.max(1);
    let h = hidden.reshape((rows, width))?;
    let host = targets_to_host(targets, WHAT)?;
    if host.len() != rows {
        bail!(
            "{WHAT}: {} targets for {rows} rows of hidden states (shapes {:?} and {:?})",
            host.len(),
            hidden.dims(),
            targets.dims()
        );
    }
    let keep = counted_rows(&host, vocab, ignore_index, WHAT)?;
    if vocab < 2 && normalization.is_some() {
        bail!("{WHAT}: complement entropy needs at least 2 classes (got {vocab})");
    }
    let count = keep.len();
    if count == 0 {
        let zero = Tensor::zeros((), dtype, hidden.device())?;
        return Ok((LossSum { sum: zero, count }, 0));
    }
    let setup = Setup {
        kind,
        scale: normalization.map_or(1.0, |n| 1.0 / n.divisor(vocab)),
        chunk: if chunk_rows == 0 {
            (DEFAULT_CHUNK_LOGITS / vocab.max(1)).max(16)
        } else {
            chunk_rows
        },
        accuracy,
    };
    if h.device().is_cpu() {
        let grads = Arc::new(Mutex::new(None));
        let op = ProjectedOp {
            setup,
            targets: keep.iter().map(|&r| host[r as usize] as u32).collect(),
            rows: keep,
            grads: grads.clone(),
        };
        let (h, w) = (h.contiguous()?, weight.contiguous()?);
        let sum = match &bias {
            Some(b) => h.apply_op3(&w, &b.contiguous()?, op)?,
            None => h.apply_op2(&w, op)?,
        };
        let correct = lock(&grads)?.as_ref().map_or(0, |g| g.correct);
        return Ok((LossSum { sum, count }, correct));
    }
    let (sum, correct) = surrogate(&h, weight, bias.as_ref(), &host, ignore_index, setup)?;
    Ok((LossSum { sum, count }, correct))
}

/// Whether `row`'s largest value is at `g`, the first index among ties (as
/// `argmax` picks); false when the row holds a NaN.
fn predicts<T: PartialOrd + Copy>(row: &[T], g: usize) -> bool {
    let zg = row[g];
    row[..g].iter().all(|&x| x < zg) && row[g + 1..].iter().all(|&x| x <= zg)
}

/// Each row of `z` (one per target) replaced by `scale · ∂value/∂z`; returns the
/// rows' unscaled value sum (in row order) and, with `accuracy`, how many rows
/// predict their target (read before the row is overwritten).
fn rows_to_grads<T: RowFloat + PartialOrd>(
    z: &mut [T],
    targets: &[u32],
    vocab: usize,
    setup: Setup,
) -> (f64, usize) {
    z.par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &g)| {
            let g = g as usize;
            let right = usize::from(setup.accuracy && predicts(row, g));
            let st = T::row_stats(row, g, setup.kind);
            // row_grad reads the row while writing the output: go through a copy of
            // one row (V values), not of the chunk.
            let input = row.to_vec();
            T::row_grad(&input, g, setup.kind, &st, setup.scale, row);
            (st.value, right)
        })
        // Summed in row order, so the value does not depend on how rayon split the
        // rows (a resumed run logs the same bits).
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The gradients the forward pass computed, for the backward pass.
struct Grads {
    dh: Tensor,
    dw: Tensor,
    db: Option<Tensor>,
    correct: usize,
}

/// The CPU op: `(h [N, H], W [V, H][, b [V]])` → the loss sum, a scalar.
struct ProjectedOp {
    setup: Setup,
    /// The counted rows of `h`, in order.
    rows: Vec<u32>,
    /// Their targets.
    targets: Vec<u32>,
    /// Written by the forward pass, read by the backward pass and the caller.
    grads: Arc<Mutex<Option<Grads>>>,
}

fn lock(grads: &Mutex<Option<Grads>>) -> Result<std::sync::MutexGuard<'_, Option<Grads>>> {
    grads
        .lock()
        .map_err(|_| candle_core::Error::Msg("projected_token_loss: poisoned lock".into()))
}

impl ProjectedOp {
    /// Runs the chunks over `h` and `w` (`b`), stores the gradients, returns the
    /// loss sum.
    fn run<T: WithDType + RowFloat + PartialOrd>(
        &self,
        h: &[T],
        w: &[T],
        b: Option<&[T]>,
        width: usize,
    ) -> Result<T> {
        let vocab = w.len() / width;
        let Setup { chunk, .. } = self.setup;
        let zero = T::from_f64(0.0);
        let mut dh = vec![zero; h.len()];
        let mut dw = vec![zero; w.len()];
        let mut db = b.map(|_| vec![zero; vocab]);
        let block = chunk.min(self.rows.len());
        let mut z = vec![zero; block * vocab];
        let mut hc = vec![zero; block * width];
        let mut dhc = vec![zero; block * width];
        let (mut value, mut correct) = (0f64, 0usize);
        for (i, (rows, targets)) in self
            .rows
            .chunks(chunk)
            .zip(self.targets.chunks(chunk))
            .enumerate()
        {
            let len = rows.len();
            let (z, hc, dhc) = (
                &mut z[..len * vocab],
                &mut hc[..len * width],
                &mut dhc[..len * width],
            );
            for (dst, &r) in hc.chunks_mut(width).zip(rows) {
                let r = r as usize;
                dst.copy_from_slice(&h[r * width..(r + 1) * width]);
            }
            // z [len, V] = h_c · Wᵀ (+ b).
            times_wt_into(hc, w, (len, vocab, width), z);
            if let Some(b) = b {
                z.par_chunks_mut(vocab).for_each(|row| {
                    for (x, &bb) in row.iter_mut().zip(b) {
                        *x += bb;
                    }
                });
            }
            let (v, c) = rows_to_grads(z, targets, vocab, self.setup);
            value += v;
            correct += c;
            // dh_c [len, H] = g · W; dW [V, H] += gᵀ · h_c; db += Σ_rows g.
            times_wt_grads(hc, w, z, (len, vocab, width), dhc, &mut dw, i > 0);
            if let Some(db) = &mut db {
                let z: &[T] = z;
                db.par_chunks_mut(256).enumerate().for_each(|(j, part)| {
                    let at = j * 256;
                    for row in z.chunks(vocab) {
                        for (d, &g) in part.iter_mut().zip(&row[at..]) {
                            *d += g;
                        }
                    }
                });
            }
            for (src, &r) in dhc.chunks(width).zip(rows) {
                let r = r as usize;
                dh[r * width..(r + 1) * width].copy_from_slice(src);
            }
        }
        let rows = h.len() / width;
        let cpu = &candle_core::Device::Cpu;
        *lock(&self.grads)? = Some(Grads {
            dh: Tensor::from_vec(dh, (rows, width), cpu)?,
            dw: Tensor::from_vec(dw, (vocab, width), cpu)?,
            db: db.map(|d| Tensor::from_vec(d, vocab, cpu)).transpose()?,
            correct,
        });
        Ok(T::from_f64(value * self.setup.scale))
    }

    fn fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, width) = l2.shape().dims2()?;
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let b = bias.map(|(s, l)| slice::<f32>(s, l, "bias")).transpose()?;
                let v = self.run(slice(s1, l1, "hidden")?, slice(s2, l2, "weight")?, b, width)?;
                CpuStorage::F32(vec![v])
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let b = bias.map(|(s, l)| slice::<f64>(s, l, "bias")).transpose()?;
                let v = self.run(slice(s1, l1, "hidden")?, slice(s2, l2, "weight")?, b, width)?;
                CpuStorage::F64(vec![v])
            }
            _ => bail!("projected_token_loss: hidden states and weight must both be f32 or f64"),
        };
        Ok((out, Shape::from(())))
    }

    /// The stored gradients times the upstream scalar `grad`.
    fn bwd(&self, grad: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let guard = lock(&self.grads)?;
        let Some(g) = guard.as_ref() else {
            bail!("projected_token_loss: backward before forward");
        };
        let up = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let times = |t: &Tensor| -> Result<Tensor> {
            if up == 1.0 {
                Ok(t.clone())
            } else {
                t.affine(up, 0.0)
            }
        };
        Ok((
            times(&g.dh)?,
            times(&g.dw)?,
            g.db.as_ref().map(times).transpose()?,
        ))
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => bail!("projected_token_loss: {what} must be contiguous"),
    }
}

impl CustomOp2 for ProjectedOp {
    fn name(&self) -> &'static str {
        "cotext-projected-token-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw, _) = ProjectedOp::bwd(self, grad)?;
        Ok((Some(dh), Some(dw)))
    }
}

impl CustomOp3 for ProjectedOp {
    fn name(&self) -> &'static str {
        "cotext-projected-token-loss"
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
        self.fwd(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dh, dw, db) = ProjectedOp::bwd(self, grad)?;
        Ok((Some(dh), Some(dw), db))
    }
}

/// One chunk of the surrogate path on the host: the logits `[len, V]` read back,
/// the rows predicted right counted (with `setup.accuracy`), then turned into
/// their gradient; returns the chunk's unscaled value sum, the count and the
/// gradient on the logits' device.
fn host_chunk<T: RowFloat + PartialOrd + WithDType>(
    logits: &Tensor,
    targets: &[i64],
    ignore_index: Option<u32>,
    setup: Setup,
) -> Result<(f64, usize, Tensor)> {
    let (len, vocab) = logits.dims2()?;
    let mut z = logits.flatten_all()?.to_vec1::<T>()?;
    let mut correct = 0;
    if setup.accuracy {
        for (row, &g) in z.chunks(vocab).zip(targets) {
            if ignore_index.is_none_or(|i| i64::from(i) != g) {
                correct += usize::from(predicts(row, g as usize));
            }
        }
    }
    let value = value_and_grad_in_place(
        &mut z,
        targets,
        vocab,
        setup.kind,
        ignore_index,
        setup.scale,
    );
    Ok((
        value,
        correct,
        Tensor::from_vec(z, (len, vocab), logits.device())?,
    ))
}

/// The chunk loop on other devices, through candle's ops: each chunk's logits are
/// read back to the host, turned into their gradient there and contracted on the
/// device. Returns a scalar whose value is the loss sum and whose gradients are the
/// ones computed (the linear surrogate `Σ x·dx` minus its own detached value), and
/// the rows predicted right.
fn surrogate(
    h: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    host: &[i64],
    ignore_index: Option<u32>,
    setup: Setup,
) -> Result<(Tensor, usize)> {
    let (rows, _) = h.dims2()?;
    let dtype = h.dtype();
    let (h_d, w_d) = (h.detach(), weight.detach());
    let w_t = w_d.t()?;
    let b_d = bias.map(Tensor::detach);
    let (mut value, mut correct) = (0f64, 0usize);
    let mut d_hidden = Vec::new();
    let mut d_weight = w_d.zeros_like()?;
    let mut d_bias = b_d.as_ref().map(Tensor::zeros_like).transpose()?;
    let mut start = 0;
    while start < rows {
        let len = setup.chunk.min(rows - start);
        let h_c = h_d.narrow(0, start, len)?;
        let mut logits = h_c.matmul(&w_t)?;
        if let Some(b) = &b_d {
            logits = logits.broadcast_add(b)?;
        }
        let t_c = &host[start..start + len];
        let (chunk_value, chunk_correct, grad) = match dtype {
            DType::F32 => host_chunk::<f32>(&logits, t_c, ignore_index, setup)?,
            _ => host_chunk::<f64>(&logits, t_c, ignore_index, setup)?,
        };
        drop(logits);
        correct += chunk_correct;
        value += chunk_value;
        d_hidden.push(grad.matmul(&w_d)?);
        d_weight = (d_weight + grad.t()?.matmul(&h_c)?)?;
        if let Some(db) = &mut d_bias {
            *db = (&*db + grad.sum(0)?)?;
        }
        start += len;
    }
    let d_hidden = Tensor::cat(&d_hidden, 0)?;
    let mut surrogate = ((h * &d_hidden)?.sum_all()? + (weight * &d_weight)?.sum_all()?)?;
    if let (Some(b), Some(db)) = (bias, &d_bias) {
        surrogate = (surrogate + (b * db)?.sum_all()?)?;
    }
    let sum = ((&surrogate - surrogate.detach())? + value * setup.scale)?;
    Ok((sum, correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn tensor(dims: &[usize], seed: u64, scale: f64) -> Tensor {
        // SplitMix64 (`crate::rng` is not in a loss-only build).
        let mut state = seed;
        let mut uniform = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| ((uniform() * 2.0 - 1.0) * scale) as f32)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The f32 op against the plain loss on the materialized logits, with
    /// padding, a bias, label smoothing and an upstream scale; and the training
    /// accuracy against `argmax`.
    #[test]
    fn the_f32_op_matches_the_plain_loss_and_argmax() {
        let (n, hd, v) = (37, 24, 300);
        let h0 = tensor(&[n, hd], 1, 1.0);
        let w0 = tensor(&[v, hd], 2, 0.5);
        let b0 = tensor(&[v], 3, 0.01);
        // Every third row's target is its prediction, so accuracy is neither 0 nor 1.
        let best = h0.matmul(&w0.t().unwrap()).unwrap().argmax(1).unwrap();
        let best = best.to_vec1::<u32>().unwrap();
        let tv: Vec<u32> = (0..n as u32)
            .map(|i| match i % 7 {
                3 => 0,
                _ if i % 3 == 0 => best[i as usize],
                _ => (i * 53 + 5) % v as u32,
            })
            .collect();
        let t = Tensor::new(tv.as_slice(), &Device::Cpu).unwrap();
        let ce = CrossEntropyOptions::default()
            .with_ignore_index(0)
            .with_label_smoothing(0.1);
        let co = ComplementOptions {
            form: Form::Exact,
            ..ComplementOptions::default()
        }
        .with_ignore_index(0);
        for which in [
            ProjectedLoss::CrossEntropy(ce),
            ProjectedLoss::Complement(co),
        ] {
            for bias in [true, false] {
                let vars = [&h0, &w0, &b0].map(|x| Var::from_tensor(x).unwrap());
                let b = bias.then(|| vars[2].as_tensor());
                let mut logits = vars[0].matmul(&vars[1].t().unwrap()).unwrap();
                if let Some(b) = b {
                    logits = logits.broadcast_add(b).unwrap();
                }
                let plain = match which {
                    ProjectedLoss::CrossEntropy(o) => {
                        super::super::cross_entropy_sum(&logits, &t, &o)
                    }
                    ProjectedLoss::Complement(o) => {
                        super::super::complement_entropy_sum(&logits, &t, &o)
                    }
                }
                .unwrap();
                let gp = (plain.sum.clone() * 0.25).unwrap().backward().unwrap();
                let (mut right, mut seen) = (0, 0);
                let pred = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
                for (p, g) in pred.iter().zip(&tv) {
                    if *g != 0 {
                        seen += 1;
                        right += usize::from(p == g);
                    }
                }
                assert!(right > 0 && right < seen);
                for chunk in [1, 5, 0] {
                    let twins = [&h0, &w0, &b0].map(|x| Var::from_tensor(x).unwrap());
                    let (s, correct) = projected_token_loss_and_correct(
                        &twins[0],
                        &twins[1],
                        bias.then(|| twins[2].as_tensor()),
                        &t,
                        &which,
                        chunk,
                    )
                    .unwrap();
                    assert_eq!(
                        (s.count, correct),
                        (plain.count, right),
                        "{which:?} {chunk}"
                    );
                    let (a, e) = (
                        s.sum.to_scalar::<f32>().unwrap(),
                        plain.sum.to_scalar::<f32>().unwrap(),
                    );
                    assert!(
                        (a - e).abs() <= 2e-6 * e.abs(),
                        "{which:?} {chunk}: {a} vs {e}"
                    );
                    let gf = (s.sum * 0.25).unwrap().backward().unwrap();
                    for k in 0..3 {
                        if k == 2 && !bias {
                            assert!(gf.get(&twins[2]).is_none());
                            continue;
                        }
                        let (x, y) = (gp.get(&vars[k]).unwrap(), gf.get(&twins[k]).unwrap());
                        let scale = x
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        let d = (x - y)
                            .unwrap()
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        assert!(
                            d <= 1e-5 * scale,
                            "{which:?} {chunk} input {k}: {d} of {scale}"
                        );
                    }
                }
            }
        }
    }

    /// The other devices' path (run here on the CPU) against the CPU op: the same
    /// value, gradients and count.
    #[test]
    fn the_surrogate_path_matches_the_op() {
        let (n, hd, v) = (23, 8, 50);
        let (h0, w0, b0) = (
            tensor(&[n, hd], 4, 1.0),
            tensor(&[v, hd], 5, 1.0),
            tensor(&[v], 6, 0.3),
        );
        let tv: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
        let host: Vec<i64> = tv.iter().map(|&t| i64::from(t)).collect();
        let t = Tensor::new(tv.as_slice(), &Device::Cpu).unwrap();
        let co = ComplementOptions::default().with_ignore_index(0);
        let setup = Setup {
            kind: Kind::Complement,
            scale: 1.0 / co.normalization.divisor(v),
            chunk: 6,
            accuracy: true,
        };
        let a = [&h0, &w0, &b0].map(|x| Var::from_tensor(x).unwrap());
        let (sum_a, right_a) = surrogate(&a[0], &a[1], Some(&a[2]), &host, Some(0), setup).unwrap();
        let b = [&h0, &w0, &b0].map(|x| Var::from_tensor(x).unwrap());
        let (sum_b, right_b) = projected_token_loss_and_correct(
            &b[0],
            &b[1],
            Some(&b[2]),
            &t,
            &ProjectedLoss::Complement(co),
            6,
        )
        .unwrap();
        assert_eq!(right_a, right_b);
        let (x, y) = (
            sum_a.to_scalar::<f32>().unwrap(),
            sum_b.sum.to_scalar::<f32>().unwrap(),
        );
        assert!((x - y).abs() <= 1e-6 * y.abs(), "{x} vs {y}");
        let (ga, gb) = (sum_a.backward().unwrap(), sum_b.sum.backward().unwrap());
        for k in 0..3 {
            let d = (ga.get(&a[k]).unwrap() - gb.get(&b[k]).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "input {k}: {d}");
        }
    }

    #[test]
    fn prediction_follows_argmax_on_ties_and_nan() {
        assert!(predicts(&[1.0, 3.0, 3.0], 1));
        assert!(!predicts(&[1.0, 3.0, 3.0], 2));
        assert!(!predicts(&[f32::NAN, 3.0], 1));
        assert!(predicts(&[0.5f32], 0));
    }

    #[test]
    fn only_padding_is_a_zero_sum() {
        let h = Var::from_tensor(&tensor(&[3, 4], 1, 1.0)).unwrap();
        let w = tensor(&[6, 4], 2, 1.0);
        let t = Tensor::new(&[0u32, 0, 0], &Device::Cpu).unwrap();
        let ce = ProjectedLoss::CrossEntropy(CrossEntropyOptions::default().with_ignore_index(0));
        let (s, c) = projected_token_loss_and_correct(&h, &w, None, &t, &ce, 0).unwrap();
        assert_eq!((s.count, c), (0, 0));
        assert_eq!(s.sum.to_scalar::<f32>().unwrap(), 0.0);
    }
}
