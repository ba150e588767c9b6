//! Complement entropy (COT) and guided complement entropy (GCE).

use candle_core::{bail, Result, Tensor};

use super::rows::{masked_entropy, one_hot_mask, prepare, Rows};
use super::LossSum;

/// How the complement distribution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Form {
    /// `q = softmax(z with z_g = −∞)`, a masked log-softmax. Equal to
    /// `p_j / (1 − p_g)` mathematically, but with no epsilon: exact at any logit
    /// margin, and `∂loss/∂z_g = 0` exactly. The default because it is the
    /// quantity the paper defines, computed without the failure below.
    #[default]
    Exact,
    /// The authors' code (Chen et al., `ComplementEntropy`), operation for operation:
    /// `q_j = p_j / ((1 − p_g) + 1e-7)`, `log(q_j + 1e-10)`, target column zeroed.
    /// Kept for comparison runs. It collapses at large margins: once `1 − p_g`
    /// falls below ~1e-7 (a margin of ~16 at K = 10), `q` no longer sums to one and
    /// the entropy it reports goes to 0 whatever the wrong classes look like.
    Reference,
}

/// The constant the complement entropy is divided by (besides the number of
/// counted rows, which every form divides by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// Divide by 1: the loss is −H_c in nats, in `[−ln(K−1), 0]`.
    None,
    /// Divide by K, as the authors' COT code does (hard-coded there). The default,
    /// so that learning rates and schedules from the paper transfer unchanged.
    #[default]
    Classes,
    /// Divide by K − 1, as the paper's text writes it.
    ClassesMinusOne,
    /// Divide by ln K, as the authors' GCE code does.
    LogClasses,
    /// Divide by ln(K − 1), the maximum of H_c: the loss lies in `[−1, 0]` for any K.
    /// For K = 2, where ln(K − 1) = 0, the divisor is taken as 1 (H_c is exactly 0
    /// there, so the loss is 0 rather than NaN).
    LogClassesMinusOne,
}

impl Normalization {
    /// The divisor for `classes` classes (never 0: see [`Normalization::LogClassesMinusOne`]).
    pub fn divisor(self, classes: usize) -> f64 {
        let k = classes as f64;
        let d = match self {
            Normalization::None => 1.0,
            Normalization::Classes => k,
            Normalization::ClassesMinusOne => k - 1.0,
            Normalization::LogClasses => k.ln(),
            Normalization::LogClassesMinusOne => (k - 1.0).ln(),
        };
        if d > 0.0 {
            d
        } else {
            1.0
        }
    }
}

/// Options shared by the complement losses.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ComplementOptions {
    /// How the complement distribution is computed (default [`Form::Exact`]).
    pub form: Form,
    /// What the per-row entropy is divided by (default [`Normalization::Classes`],
    /// the authors' COT code).
    pub normalization: Normalization,
    /// Target value marking rows to skip (padding), e.g. the pad token id. Default
    /// `None`: every row counts.
    pub ignore_index: Option<u32>,
}

impl ComplementOptions {
    /// The authors' COT code bit for bit: [`Form::Reference`], divided by K.
    pub fn authors_cot() -> Self {
        Self {
            form: Form::Reference,
            normalization: Normalization::Classes,
            ignore_index: None,
        }
    }

    /// The authors' GCE code: [`Form::Reference`], divided by ln K.
    pub fn authors_gce() -> Self {
        Self {
            form: Form::Reference,
            normalization: Normalization::LogClasses,
            ignore_index: None,
        }
    }

    /// These options with `ignore_index` set.
    pub fn with_ignore_index(mut self, ignore_index: u32) -> Self {
        self.ignore_index = Some(ignore_index);
        self
    }
}

/// Per-row `Σ_{j≠g} q_j log q_j = −H_c` (`[n]`) and, when `guided`, what GCE's
/// guiding factor needs: `log p_g` for the exact form, `p_g` for the reference form.
pub(crate) fn neg_complement_rows(
    rows: &Rows,
    form: Form,
    guided: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let z = &rows.logits;
    let device = z.device();
    let target_mask = one_hot_mask(&rows.targets, rows.classes, device)?;
    match form {
        Form::Exact => {
            let keep = target_mask.eq(0u8)?;
            let h = masked_entropy(z, &keep, false)?;
            if !guided {
                return Ok((h.neg()?, None));
            }
            // log p_g = z_g − logsumexp(z), for GCE's guiding factor.
            let max = z.max_keepdim(1)?.detach();
            let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
            let zg = z.gather(&rows.targets.unsqueeze(1)?, 1)?;
            let log_pg = (zg - lse)?.squeeze(1)?;
            Ok((h.neg()?, Some(log_pg)))
        }
        Form::Reference => {
            // Line for line after the authors' `ComplementEntropy.forward`.
            // `candle_nn::ops::softmax`'s operations, spelled out so that the loss
            // needs candle-core only (and stays bit-identical to what it was).
            let max = z.max_keepdim(1)?;
            let num = z.broadcast_sub(&max)?.exp()?;
            let y_hat = num.broadcast_div(&num.sum_keepdim(1)?)?;
            let yg = y_hat.gather(&rows.targets.unsqueeze(1)?, 1)?;
            let yg_ = (yg.affine(-1.0, 1.0)? + 1e-7)?;
            let px = y_hat.broadcast_div(&yg_)?;
            let px_log = (&px + 1e-10)?.log()?;
            let zerohot = target_mask.eq(0u8)?.to_dtype(z.dtype())?;
            let output = ((px * px_log)? * zerohot)?;
            Ok((output.sum(1)?, Some(yg.squeeze(1)?)))
        }
    }
}

/// Complement entropy, the COT objective, as the scalar to **minimize**:
///
/// ```text
/// q_ij  = softmax(z_i with z_ig = −∞)_j            (j ≠ g_i)
/// H_c,i = −Σ_{j≠g_i} q_ij log q_ij                  ∈ [0, ln(K−1)]
/// loss  = −(1/n) Σ_i H_c,i / d                       ≤ 0
/// ```
///
/// over the n counted rows (targets other than `opts.ignore_index`), with `d` from
/// `opts.normalization`. Minimizing it flattens the predicted distribution over the
/// wrong classes, the paper's "complement objective".
///
/// * `logits`: `[N, K]` or `[B, T, V]`, float (half precision is upcast to f32).
/// * `targets`: `[N]` or `[B, T]`, `u32` or `i64`; each counted target in `0..K`.
///
/// For K = 2 there is one wrong class and H_c is identically 0: the loss and its
/// gradient are exactly zero. With the default [`Form::Exact`] the gradient with
/// respect to the target logit is exactly zero too. Returns 0 when no row counts.
pub fn complement_entropy(
    logits: &Tensor,
    targets: &Tensor,
    opts: &ComplementOptions,
) -> Result<Tensor> {
    complement_entropy_sum(logits, targets, opts)?.mean()
}

/// [`complement_entropy`] as a sum over counted rows and their count, for exact
/// accumulation over micro-batches (see [`LossSum`]).
pub fn complement_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    opts: &ComplementOptions,
) -> Result<LossSum> {
    let rows = prepare(logits, targets, opts.ignore_index, "complement_entropy")?;
    if rows.classes < 2 {
        bail!(
            "complement_entropy: needs at least 2 classes (got {})",
            rows.classes
        );
    }
    let divisor = opts.normalization.divisor(rows.classes);
    if rows.count == 0 {
        return empty_sum(&rows);
    }
    let (neg_h, _) = neg_complement_rows(&rows, opts.form, false)?;
    Ok(LossSum {
        sum: neg_h.sum_all()?.affine(1.0 / divisor, 0.0)?,
        count: rows.count,
    })
}

/// Guided complement entropy (GCE, Chen et al. 2019), a single objective used in
/// place of cross-entropy:
///
/// ```text
/// loss = (1/n) Σ_i p_ig^α · (Σ_{j≠g_i} q_ij log q_ij) / d  =  −(1/n) Σ_i p_ig^α H_c,i / d
/// ```
///
/// The guiding factor `p_g^α` (α ≈ 1/3 in the paper) weights each row's complement
/// entropy by the model's confidence in the right class; gradient flows through it,
/// as in the authors' code. With [`Form::Exact`] it is `exp(α · log_softmax(z)_g)`;
/// with [`Form::Reference`] it is the authors' `(p_g + 1e-7)^α`. The authors divide
/// by ln K: use [`ComplementOptions::authors_gce`] to reproduce them.
///
/// Shapes, dtypes and `ignore_index` as in [`complement_entropy`]. `alpha` must be
/// finite and non-negative.
pub fn guided_complement_entropy(
    logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    opts: &ComplementOptions,
) -> Result<Tensor> {
    guided_complement_entropy_sum(logits, targets, alpha, opts)?.mean()
}

/// [`guided_complement_entropy`] as a sum and a count (see [`LossSum`]).
pub fn guided_complement_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    alpha: f64,
    opts: &ComplementOptions,
) -> Result<LossSum> {
    if !(alpha.is_finite() && alpha >= 0.0) {
        bail!("guided_complement_entropy: alpha must be finite and >= 0 (got {alpha})");
    }
    let rows = prepare(
        logits,
        targets,
        opts.ignore_index,
        "guided_complement_entropy",
    )?;
    if rows.classes < 2 {
        bail!(
            "guided_complement_entropy: needs at least 2 classes (got {})",
            rows.classes
        );
    }
    let divisor = opts.normalization.divisor(rows.classes);
    if rows.count == 0 {
        return empty_sum(&rows);
    }
    let (neg_h, pg) = neg_complement_rows(&rows, opts.form, true)?;
    let pg = pg.expect("guided rows carry p_g");
    let factor = match opts.form {
        Form::Exact => pg.affine(alpha, 0.0)?.exp()?,
        Form::Reference => (pg + 1e-7)?.powf(alpha)?,
    };
    Ok(LossSum {
        sum: (factor * neg_h)?.sum_all()?.affine(1.0 / divisor, 0.0)?,
        count: rows.count,
    })
}

pub(crate) fn empty_sum(rows: &Rows) -> Result<LossSum> {
    Ok(LossSum {
        sum: Tensor::zeros((), rows.logits.dtype(), rows.logits.device())?,
        count: 0,
    })
}
