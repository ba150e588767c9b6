//! Cross-entropy with an ignore index and label smoothing.

use candle_core::{bail, Result, Tensor};

use super::complement::empty_sum;
use super::rows::prepare;
use super::LossSum;

/// Options for [`cross_entropy`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CrossEntropyOptions {
    /// Target value marking rows to skip (padding). Default `None`.
    pub ignore_index: Option<u32>,
    /// Label smoothing ε in `[0, 1]`, as PyTorch's `label_smoothing`: the target
    /// distribution is `(1 − ε)·onehot(g) + ε/K`. Default 0.
    pub label_smoothing: f64,
}

impl CrossEntropyOptions {
    /// These options with `ignore_index` set.
    pub fn with_ignore_index(mut self, ignore_index: u32) -> Self {
        self.ignore_index = Some(ignore_index);
        self
    }

    /// These options with label smoothing ε.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Self {
        self.label_smoothing = epsilon;
        self
    }

    pub(crate) fn check(&self, what: &str) -> Result<()> {
        let e = self.label_smoothing;
        if !(0.0..=1.0).contains(&e) {
            bail!("{what}: label_smoothing must be in [0, 1] (got {e})");
        }
        Ok(())
    }
}

/// Cross-entropy averaged over counted rows, matching PyTorch's
/// `F.cross_entropy(logits, targets, ignore_index=…, label_smoothing=ε)`:
///
/// ```text
/// log p_i = log_softmax(z_i)
/// loss_i  = −(1 − ε) log p_ig − (ε/K) Σ_j log p_ij
/// loss    = (1/n) Σ_{i counted} loss_i
/// ```
///
/// * `logits`: `[N, K]` or `[B, T, V]`, float (half precision is upcast to f32).
/// * `targets`: `[N]` or `[B, T]`, `u32` or `i64`.
///
/// Rows whose target is `ignore_index` count in neither the sum nor the
/// denominator (PyTorch's `reduction='mean'`). Returns 0 when no row counts
/// (PyTorch returns NaN there; a batch of padding should not poison training).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<Tensor> {
    cross_entropy_sum(logits, targets, opts)?.mean()
}

/// [`cross_entropy`] as a sum over counted rows and their count (see [`LossSum`]).
pub fn cross_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    opts: &CrossEntropyOptions,
) -> Result<LossSum> {
    opts.check("cross_entropy")?;
    let rows = prepare(logits, targets, opts.ignore_index, "cross_entropy")?;
    if rows.count == 0 {
        return empty_sum(&rows);
    }
    let z = &rows.logits;
    let max = z.max_keepdim(1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_p = shifted.broadcast_sub(&lse)?;
    let nll = log_p
        .gather(&rows.targets.unsqueeze(1)?, 1)?
        .neg()?
        .sum_all()?;
    let eps = opts.label_smoothing;
    let sum = if eps > 0.0 {
        let smooth = log_p.sum_all()?.neg()?;
        (nll.affine(1.0 - eps, 0.0)? + smooth.affine(eps / rows.classes as f64, 0.0)?)?
    } else {
        nll
    };
    Ok(LossSum {
        sum,
        count: rows.count,
    })
}
