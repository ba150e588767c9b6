//! Accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix.

use serde::Serialize;

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// Of the examples predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the examples of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Number of gold examples of this class.
    pub support: usize,
}

/// Scores of a classifier on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    /// Fraction of examples predicted correctly.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 over the classes that occur in the gold
    /// labels or the predictions (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    /// Per-class scores, indexed by class id.
    pub per_class: Vec<ClassScores>,
    /// `confusion[gold][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Number of examples.
    pub count: usize,
}

impl ClassificationReport {
    /// Scores `predicted` against `gold` for `classes` classes. Both slices must
    /// have the same length and hold ids below `classes`.
    pub fn new(gold: &[u32], predicted: &[u32], classes: usize) -> Result<Self, String> {
        if gold.len() != predicted.len() {
            return Err(format!(
                "{} gold labels but {} predictions",
                gold.len(),
                predicted.len()
            ));
        }
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&g, &p) in gold.iter().zip(predicted) {
            if g as usize >= classes || p as usize >= classes {
                return Err(format!(
                    "label {} is not below the {classes} classes",
                    g.max(p)
                ));
            }
            confusion[g as usize][p as usize] += 1;
        }
        let count = gold.len();
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let per_class: Vec<ClassScores> = (0..classes)
            .map(|c| {
                let tp = confusion[c][c] as f64;
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let ratio = |num: f64, den: usize| if den == 0 { 0.0 } else { num / den as f64 };
                let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassScores {
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let present: Vec<usize> = (0..classes)
            .filter(|&c| per_class[c].support > 0 || confusion.iter().any(|row| row[c] > 0))
            .collect();
        let macro_f1 = if present.is_empty() {
            0.0
        } else {
            present.iter().map(|&c| per_class[c].f1).sum::<f64>() / present.len() as f64
        };
        Ok(Self {
            accuracy: if count == 0 {
                0.0
            } else {
                correct as f64 / count as f64
            },
            macro_f1,
            per_class,
            confusion,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn() {
        // from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
        // g = [0,1,2,2,1,0,3,3,3,1]; p = [0,2,2,2,1,1,3,0,3,1]
        // accuracy_score(g, p) = 0.7; f1_score(g, p, average="macro") = 0.6916666666666667
        // precision_recall_fscore_support(g, p) → p=[0.5,0.6667,0.6667,1.0], r=[0.5,0.6667,1.0,0.6667]
        let g = [0, 1, 2, 2, 1, 0, 3, 3, 3, 1];
        let p = [0, 2, 2, 2, 1, 1, 3, 0, 3, 1];
        let r = ClassificationReport::new(&g, &p, 5).unwrap();
        assert!((r.accuracy - 0.7).abs() < 1e-12);
        assert!(
            (r.macro_f1 - 0.691_666_666_666_666_7).abs() < 1e-12,
            "{}",
            r.macro_f1
        );
        assert!((r.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[3].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion[3], vec![1, 0, 0, 2, 0]);
        assert_eq!(r.per_class[4].support, 0);
        assert!(ClassificationReport::new(&[0], &[0, 1], 2).is_err());
        assert!(ClassificationReport::new(&[0], &[2], 2).is_err());
    }
}
