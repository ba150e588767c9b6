//! The complement-distribution profile of the COT paper (Chen et al., 2019,
//! Figure 1): for each prediction, the probabilities of the *wrong* classes sorted
//! in decreasing order, averaged rank by rank over predictions. COT's claim is that
//! it flattens this profile (the top wrong class gets less mass, the tail more).
//!
//! The functions take probability rows and gold indices, nothing else, so the same
//! profile serves classification (one row of K classes per example) and
//! token-level models (one row of V vocabulary entries per non-pad target
//! position, with `top` keeping only the first ranks so a 32k vocabulary costs one
//! partial selection per position, not a full sort).

use crate::error::{Error, Result};

/// The wrong-class probabilities of one row, largest first, at most `top` of them.
/// `gold` must index into `probs`. NaNs sort last.
pub fn sorted_complement(probs: &[f32], gold: usize, top: usize) -> Vec<f32> {
    let mut wrong: Vec<f32> = probs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != gold)
        .map(|(_, &p)| p)
        .collect();
    let desc = |a: &f32, b: &f32| match (a.is_nan(), b.is_nan()) {
        (false, false) => b.total_cmp(a),
        (a_nan, b_nan) => a_nan.cmp(&b_nan),
    };
    if top < wrong.len() {
        if top == 0 {
            return Vec::new();
        }
        wrong.select_nth_unstable_by(top - 1, desc);
        wrong.truncate(top);
    }
    wrong.sort_unstable_by(desc);
    wrong
}

/// The running rank-by-rank mean of [`sorted_complement`] over many rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplementProfile {
    top: usize,
    sums: Vec<f64>,
    counts: Vec<u64>,
}

impl ComplementProfile {
    /// An empty profile keeping ranks `1..=top` (`usize::MAX` for all of them).
    pub fn new(top: usize) -> Self {
        ComplementProfile {
            top,
            sums: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Adds one row with its gold index.
    pub fn add(&mut self, probs: &[f32], gold: usize) -> Result<()> {
        if gold >= probs.len() {
            return Err(Error::Internal(format!(
                "gold index {gold} is outside a row of {} probabilities",
                probs.len()
            )));
        }
        let sorted = sorted_complement(probs, gold, self.top);
        if sorted.len() > self.sums.len() {
            self.sums.resize(sorted.len(), 0.0);
            self.counts.resize(sorted.len(), 0);
        }
        for (rank, p) in sorted.into_iter().enumerate() {
            self.sums[rank] += f64::from(p);
            self.counts[rank] += 1;
        }
        Ok(())
    }

    /// Adds rows with their gold indices (`rows[i]` with `gold[i]`).
    pub fn add_rows(&mut self, rows: &[Vec<f32>], gold: &[u32]) -> Result<()> {
        if rows.len() != gold.len() {
            return Err(Error::Internal(format!(
                "{} probability rows but {} gold labels",
                rows.len(),
                gold.len()
            )));
        }
        rows.iter()
            .zip(gold)
            .try_for_each(|(row, &g)| self.add(row, g as usize))
    }

    /// The mean probability at each rank (rank 1 first), over the rows that had
    /// that rank.
    pub fn mean(&self) -> Vec<f64> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(s, &c)| s / c as f64)
            .collect()
    }

    /// Adds everything `other` holds (e.g. one seed's profile into the
    /// objective's), rank by rank.
    pub fn merge(&mut self, other: &ComplementProfile) {
        if other.sums.len() > self.sums.len() {
            self.sums.resize(other.sums.len(), 0.0);
            self.counts.resize(other.sums.len(), 0);
        }
        for (i, (s, c)) in other.sums.iter().zip(&other.counts).enumerate() {
            self.sums[i] += s;
            self.counts[i] += c;
        }
    }

    /// How many rows were added.
    pub fn rows(&self) -> u64 {
        self.counts.first().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_classes_are_sorted_largest_first_without_the_gold_one() {
        assert_eq!(
            sorted_complement(&[0.1, 0.6, 0.05, 0.25], 1, usize::MAX),
            [0.25, 0.1, 0.05]
        );
        assert_eq!(
            sorted_complement(&[0.1, 0.6, 0.05, 0.25], 3, usize::MAX),
            [0.6, 0.1, 0.05]
        );
        assert_eq!(sorted_complement(&[0.1, 0.6, 0.05, 0.25], 3, 2), [0.6, 0.1]);
        assert_eq!(
            sorted_complement(&[0.1, 0.6, 0.05, 0.25], 3, 0),
            [] as [f32; 0]
        );
        assert_eq!(sorted_complement(&[1.0], 0, 4), [] as [f32; 0]);
        assert_eq!(
            sorted_complement(&[0.5, f32::NAN, 0.2, 0.3], 0, usize::MAX)[..2],
            [0.3, 0.2]
        );
    }

    #[test]
    fn top_selection_equals_a_full_sort_prefix() {
        let row: Vec<f32> = (0..1000u32)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let full = sorted_complement(&row, 17, usize::MAX);
        assert_eq!(sorted_complement(&row, 17, 10), full[..10]);
    }

    #[test]
    fn profile_averages_rank_by_rank() {
        let mut p = ComplementProfile::new(usize::MAX);
        p.add_rows(&[vec![0.7, 0.2, 0.1], vec![0.1, 0.3, 0.6]], &[0, 2])
            .unwrap();
        // ranks: [0.2, 0.1] and [0.3, 0.1]
        let m = p.mean();
        assert!(
            (m[0] - 0.25).abs() < 1e-7 && (m[1] - 0.1).abs() < 1e-7,
            "{m:?}"
        );
        assert_eq!(p.rows(), 2);
        assert!(p.add(&[0.5, 0.5], 2).is_err());
        assert!(p.add_rows(&[vec![1.0]], &[]).is_err());
        let mut q = ComplementProfile::new(usize::MAX);
        q.add(&[0.7, 0.2, 0.1], 0).unwrap();
        let mut r = ComplementProfile::new(usize::MAX);
        r.add(&[0.1, 0.3, 0.6], 2).unwrap();
        q.merge(&r);
        assert_eq!(q, p);
    }
}
