//! Hierarchical complement entropy (HCOT): complement entropy inside the target's
//! coarse group and over the classes outside it.

use candle_core::{bail, Result, Tensor};

use super::complement::{empty_sum, ComplementOptions, Form};
use super::rows::{masked_entropy, one_hot_mask, prepare};
use super::LossSum;

/// A two-level label hierarchy: every fine class belongs to exactly one coarse
/// group. Built from the fine→coarse map and validated once.
///
/// ```
/// use cotext::loss::LabelHierarchy;
/// // SST-5: {very negative, negative} → negative, {neutral}, {positive, very positive}.
/// let h = LabelHierarchy::new(vec![0, 0, 1, 2, 2]).unwrap();
/// assert_eq!(h.groups(), 3);
/// assert!(LabelHierarchy::new(vec![0, 2]).is_err()); // group 1 is empty
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelHierarchy {
    coarse: Vec<u32>,
    groups: usize,
}

impl LabelHierarchy {
    /// Builds a hierarchy from `coarse[fine] = group`. Groups are numbered
    /// `0..G` and every group must hold at least one class; there must be at least
    /// two classes.
    pub fn new(coarse: Vec<u32>) -> std::result::Result<Self, String> {
        if coarse.len() < 2 {
            return Err(format!(
                "a label hierarchy needs at least 2 classes (got {})",
                coarse.len()
            ));
        }
        let groups = coarse.iter().max().map_or(0, |&g| g as usize + 1);
        let mut sizes = vec![0usize; groups];
        for &g in &coarse {
            sizes[g as usize] += 1;
        }
        if let Some(empty) = sizes.iter().position(|&n| n == 0) {
            return Err(format!(
                "group {empty} of the label hierarchy has no class (groups must be numbered 0..{groups} with none empty; map: {coarse:?})"
            ));
        }
        Ok(Self { coarse, groups })
    }

    /// Builds a hierarchy from groups listed as sets of fine classes, e.g.
    /// `[[0, 1], [2], [3, 4]]`: every class in `0..K` must appear in exactly one group.
    pub fn from_groups(groups: &[Vec<u32>]) -> std::result::Result<Self, String> {
        let classes = groups.iter().map(Vec::len).sum::<usize>();
        let mut coarse = vec![u32::MAX; classes];
        for (g, members) in groups.iter().enumerate() {
            for &c in members {
                let slot = coarse.get_mut(c as usize).ok_or_else(|| {
                    format!("class {c} is out of range: the groups hold {classes} classes, so classes must be 0..{classes}")
                })?;
                if *slot != u32::MAX {
                    return Err(format!("class {c} appears in groups {} and {g}", *slot));
                }
                *slot = g as u32;
            }
        }
        Self::new(coarse)
    }

    /// The SST-5 hierarchy: {0, 1} negative, {2} neutral, {3, 4} positive.
    pub fn sst5() -> Self {
        Self::new(vec![0, 0, 1, 2, 2]).expect("valid hierarchy")
    }

    /// Number of fine classes K.
    pub fn classes(&self) -> usize {
        self.coarse.len()
    }

    /// Number of coarse groups G.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The group of each fine class.
    pub fn coarse(&self) -> &[u32] {
        &self.coarse
    }
}

/// Hierarchical complement entropy, the scalar to **minimize**:
///
/// ```text
/// G          = the coarse group of the target g
/// H_in,i     = entropy of softmax(z_j : j ∈ G, j ≠ g)     (wrong classes in g's group)
/// H_out,i    = entropy of softmax(z_j : j ∉ G)            (classes outside the group)
/// loss       = −(1/n) Σ_i (H_in,i + H_out,i) / d
/// ```
///
/// `H_out` is the complement entropy of the coarse problem with the group's mass
/// `P_G = Σ_{j∈G} p_j` as the "target": its distribution `p_j / (1 − P_G)` over
/// `j ∉ G` is the softmax restricted to those classes. An empty set (a group of one
/// class, or one group holding every class) has entropy 0. Special cases, both
/// tested: with one group per class `H_in = 0` and the loss equals
/// [`super::complement_entropy`]; with a single group holding every class
/// `H_out = 0` and it equals it too. `d` is `opts.normalization` of K.
///
/// Only [`Form::Exact`] exists: the authors published no HCOT code to reproduce,
/// so [`Form::Reference`] is rejected. Shapes as in [`super::complement_entropy`];
/// the hierarchy's class count must equal K.
pub fn hierarchical_complement_entropy(
    logits: &Tensor,
    targets: &Tensor,
    hierarchy: &LabelHierarchy,
    opts: &ComplementOptions,
) -> Result<Tensor> {
    hierarchical_complement_entropy_sum(logits, targets, hierarchy, opts)?.mean()
}

/// [`hierarchical_complement_entropy`] as a sum and a count (see [`LossSum`]).
pub fn hierarchical_complement_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    hierarchy: &LabelHierarchy,
    opts: &ComplementOptions,
) -> Result<LossSum> {
    const WHAT: &str = "hierarchical_complement_entropy";
    if opts.form != Form::Exact {
        bail!("{WHAT}: only Form::Exact is defined (no reference code exists for HCOT)");
    }
    let rows = prepare(logits, targets, opts.ignore_index, WHAT)?;
    if rows.classes != hierarchy.classes() {
        bail!(
            "{WHAT}: the hierarchy has {} classes but the logits have {}",
            hierarchy.classes(),
            rows.classes
        );
    }
    if rows.count == 0 {
        return empty_sum(&rows);
    }
    let device = rows.logits.device();
    let (n, k) = (rows.count, rows.classes);
    let coarse = Tensor::new(hierarchy.coarse(), device)?;
    let row_group = coarse.index_select(&rows.targets, 0)?; // [n]
    let in_group = coarse
        .unsqueeze(0)?
        .broadcast_as((n, k))?
        .eq(&row_group.unsqueeze(1)?.broadcast_as((n, k))?)?;
    let is_target = one_hot_mask(&rows.targets, k, device)?;
    let keep_in = (&in_group * is_target.eq(0u8)?)?;
    let keep_out = in_group.eq(0u8)?;
    let h_in = masked_entropy(&rows.logits, &keep_in, true)?;
    let h_out = masked_entropy(&rows.logits, &keep_out, true)?;
    let divisor = opts.normalization.divisor(k);
    Ok(LossSum {
        sum: (h_in + h_out)?.sum_all()?.affine(-1.0 / divisor, 0.0)?,
        count: rows.count,
    })
}
