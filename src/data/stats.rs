//! Split statistics for `cotext data info`: counts, label distribution and
//! length percentiles.

use super::dataset::SplitData;

/// Length percentiles of a set of texts, in whitespace-separated words.
/// Percentiles use the nearest-rank method: the smallest length such that at
/// least p % of the texts are no longer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LengthStats {
    /// Shortest.
    pub min: usize,
    /// Median.
    pub p50: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 95th percentile.
    pub p95: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest.
    pub max: usize,
    /// Mean.
    pub mean: f64,
}

impl LengthStats {
    /// Statistics of `lengths` (all zero for an empty input).
    pub fn from_lengths(mut lengths: Vec<usize>) -> LengthStats {
        if lengths.is_empty() {
            return LengthStats::default();
        }
        lengths.sort_unstable();
        let n = lengths.len();
        let rank = |p: usize| lengths[(p * n).div_ceil(100).max(1) - 1];
        LengthStats {
            min: lengths[0],
            p50: rank(50),
            p90: rank(90),
            p95: rank(95),
            p99: rank(99),
            max: lengths[n - 1],
            mean: lengths.iter().sum::<usize>() as f64 / n as f64,
        }
    }

    /// Statistics of the word counts of `texts`.
    pub fn of_texts<'a>(texts: impl Iterator<Item = &'a str>) -> LengthStats {
        LengthStats::from_lengths(texts.map(|t| t.split_whitespace().count()).collect())
    }
}

/// Statistics of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitStats {
    /// Number of examples.
    pub count: usize,
    /// Examples per label (classification; empty for translation).
    pub label_counts: Vec<usize>,
    /// Lengths of the texts (classification) or source sentences (translation).
    pub lengths: LengthStats,
    /// Lengths of the target sentences (translation only).
    pub target_lengths: Option<LengthStats>,
}

/// Computes the statistics of a split; `num_labels` sizes the label counts
/// (labels at or above it are counted in extra slots, never dropped).
pub fn split_stats(data: &SplitData, num_labels: usize) -> SplitStats {
    match data {
        SplitData::Classification(examples) => {
            let mut label_counts = vec![0usize; num_labels];
            for e in examples {
                let i = e.label as usize;
                if i >= label_counts.len() {
                    label_counts.resize(i + 1, 0);
                }
                label_counts[i] += 1;
            }
            SplitStats {
                count: examples.len(),
                label_counts,
                lengths: LengthStats::of_texts(examples.iter().map(|e| e.text.as_str())),
                target_lengths: None,
            }
        }
        SplitData::Translation(pairs) => SplitStats {
            count: pairs.len(),
            label_counts: Vec::new(),
            lengths: LengthStats::of_texts(pairs.iter().map(|p| p.source.as_str())),
            target_lengths: Some(LengthStats::of_texts(
                pairs.iter().map(|p| p.target.as_str()),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Example;

    #[test]
    fn nearest_rank_percentiles() {
        let s = LengthStats::from_lengths((1..=100).rev().collect());
        assert_eq!(
            (s.min, s.p50, s.p90, s.p95, s.p99, s.max),
            (1, 50, 90, 95, 99, 100)
        );
        assert_eq!(s.mean, 50.5);
        let s = LengthStats::from_lengths(vec![7]);
        assert_eq!((s.p50, s.p99), (7, 7));
        let s = LengthStats::from_lengths(vec![1, 2, 3]);
        assert_eq!((s.p50, s.p90), (2, 3));
    }

    #[test]
    fn label_counts_keep_out_of_range_labels() {
        let data = SplitData::Classification(vec![
            Example {
                text: "a b".into(),
                label: 1,
            },
            Example {
                text: "c".into(),
                label: 3,
            },
        ]);
        let s = split_stats(&data, 2);
        assert_eq!(s.label_counts, [0, 1, 0, 1]);
        assert_eq!(s.lengths.max, 2);
    }
}
