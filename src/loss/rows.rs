//! Shape checks and the flattening of `[N, K]` / `[B, T, V]` inputs into rows.

use candle_core::{bail, DType, Device, Tensor};

use candle_core::Result;

/// Logits and targets checked, flattened to rows and stripped of ignored rows.
pub(crate) struct Rows {
    /// `[n, K]` float logits of the counted rows only (f32 or f64).
    pub logits: Tensor,
    /// `[n]` u32 targets of the counted rows.
    pub targets: Tensor,
    /// Number of classes K.
    pub classes: usize,
    /// Number of counted rows n.
    pub count: usize,
}

/// Checks shapes and dtypes, flattens to `[rows, K]` and returns the flat logits
/// (upcast to f32 when half precision), the targets on the host and K.
pub(crate) fn flatten(
    logits: &Tensor,
    targets: &Tensor,
    what: &str,
) -> Result<(Tensor, Vec<i64>, usize)> {
    flatten_as(logits, targets, what, false)
}

/// [`flatten`], leaving bf16 and f16 logits as they are when `keep_half` (for a
/// kernel that reads them in place and accumulates in f32).
pub(crate) fn flatten_as(
    logits: &Tensor,
    targets: &Tensor,
    what: &str,
    keep_half: bool,
) -> Result<(Tensor, Vec<i64>, usize)> {
    let (rows, classes) = match (logits.dims(), targets.dims()) {
        (&[n, k], &[tn]) if n == tn => (n, k),
        (&[b, t, v], &[tb, tt]) if b == tb && t == tt => (b * t, v),
        (l, t) => bail!(
            "{what}: logits must be [N, K] with targets [N], or [B, T, V] with targets [B, T] \
             (got logits {l:?}, targets {t:?})"
        ),
    };
    if classes == 0 {
        bail!("{what}: logits have zero classes");
    }
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits.clone(),
        DType::BF16 | DType::F16 if keep_half => logits.clone(),
        DType::BF16 | DType::F16 => logits.to_dtype(DType::F32)?,
        dt => bail!("{what}: logits must be a float tensor (got {dt:?})"),
    };
    let logits = logits.reshape((rows, classes))?;
    let host = targets_to_host(targets, what)?;
    Ok((logits, host, classes))
}

pub(crate) fn targets_to_host(targets: &Tensor, what: &str) -> Result<Vec<i64>> {
    let flat = targets.flatten_all()?;
    Ok(match flat.dtype() {
        DType::U32 => flat.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => flat.to_vec1::<i64>()?,
        DType::U8 => flat.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
        dt => bail!("{what}: targets must be u32 or i64 (got {dt:?})"),
    })
}

/// Indices of the counted rows, after checking every counted target is a class.
pub(crate) fn counted_rows(
    host: &[i64],
    classes: usize,
    ignore_index: Option<u32>,
    what: &str,
) -> Result<Vec<u32>> {
    let mut keep = Vec::with_capacity(host.len());
    for (row, &t) in host.iter().enumerate() {
        if ignore_index.is_some_and(|i| i64::from(i) == t) {
            continue;
        }
        if t < 0 || t as u64 >= classes as u64 {
            bail!(
                "{what}: target {t} at row {row} is not a class index in 0..{classes}{}",
                match ignore_index {
                    Some(i) => format!(" nor the ignore index {i}"),
                    None => String::new(),
                }
            );
        }
        keep.push(row as u32);
    }
    Ok(keep)
}

/// Flattens, validates and selects the counted rows.
pub(crate) fn prepare(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    what: &str,
) -> Result<Rows> {
    let (flat, host, classes) = flatten(logits, targets, what)?;
    let keep = counted_rows(&host, classes, ignore_index, what)?;
    let device = flat.device().clone();
    let count = keep.len();
    let kept_targets: Vec<u32> = keep.iter().map(|&r| host[r as usize] as u32).collect();
    let logits = if count == host.len() {
        flat
    } else {
        // Selecting the counted rows (rather than zeroing the others afterwards) keeps
        // pads out of the graph: a NaN or inf in a padded row cannot leak into the
        // value or the gradient.
        flat.index_select(&Tensor::from_vec(keep, count, &device)?, 0)?
    };
    let targets = Tensor::from_vec(kept_targets, count, &device)?;
    Ok(Rows {
        logits,
        targets,
        classes,
        count,
    })
}

/// Number of rows of `targets` that a loss with this `ignore_index` counts: the
/// denominator to use for exact gradient accumulation.
pub fn count_targets(targets: &Tensor, ignore_index: Option<u32>) -> Result<usize> {
    let host = targets_to_host(targets, "count_targets")?;
    Ok(match ignore_index {
        None => host.len(),
        Some(i) => host.iter().filter(|&&t| t != i64::from(i)).count(),
    })
}

/// `[n, K]` u8 mask, 1 where the column is the row's target.
pub(crate) fn one_hot_mask(targets: &Tensor, classes: usize, device: &Device) -> Result<Tensor> {
    let n = targets.dim(0)?;
    let cols = Tensor::arange(0u32, classes as u32, device)?
        .unsqueeze(0)?
        .broadcast_as((n, classes))?;
    cols.eq(&targets.unsqueeze(1)?.broadcast_as((n, classes))?)
}

/// A `[n, K]` tensor filled with `value`, as a broadcast view of one element.
pub(crate) fn filled(value: f64, like: &Tensor) -> Result<Tensor> {
    Tensor::new(value, like.device())?
        .to_dtype(like.dtype())?
        .broadcast_as(like.shape())
}

/// Entropy of the softmax restricted to the columns where `keep` is 1, per row:
/// `H = −Σ_{j∈keep} q_j log q_j` with `q = softmax(z masked to −∞ outside keep)`.
///
/// Computed as `log S − (Σ e_j s_j) / S` with `s = z − max_keep z`, `e = exp(s)`,
/// `S = Σ e`: no epsilon, exact at any logit margin. Rows with an empty `keep` give 0
/// when `allow_empty` (HCOT's groups of one class); otherwise they cannot occur.
pub(crate) fn masked_entropy(z: &Tensor, keep: &Tensor, allow_empty: bool) -> Result<Tensor> {
    let neg_inf = filled(f64::NEG_INFINITY, z)?;
    let zeros = filled(0.0, z)?;
    let zm = keep.where_cond(z, &neg_inf)?;
    // The entropy does not depend on the shift, so the max carries no gradient.
    let mut max = zm.max_keepdim(1)?.detach();
    let empty = if allow_empty {
        let any = keep.max_keepdim(1)?; // [n, 1] u8
        let empty = any.eq(0u8)?;
        max = empty.where_cond(&filled(0.0, &max)?, &max)?;
        Some(empty.squeeze(1)?)
    } else {
        None
    };
    let s = zm.broadcast_sub(&max)?;
    let e = s.exp()?;
    let s0 = keep.where_cond(&s, &zeros)?;
    let es = (&e * &s0)?.sum(1)?;
    let mut total = e.sum(1)?;
    if let Some(empty) = &empty {
        // S = 0 on empty rows; making it 1 turns log S − es/S into 0 − 0.
        total = (total + empty.to_dtype(z.dtype())?)?;
    }
    total.log()? - (es / total)?
}
