//! Batching: shuffle with our own seeded RNG, bucket by length, pad to the
//! batch maximum, and resume from a saved cursor.
//!
//! Epoch `e`'s order depends only on `(seed, e)`: its RNG is
//! [`SplitMix64::stream`]`(seed, e)`. A [`BatchCursor`] (epoch, batch index) is
//! therefore all the state a checkpoint needs to continue exactly where it
//! stopped, and it serializes to JSON as `{"epoch": 3, "batch": 17}`.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatcherConfig {
    /// Examples per batch (the last batch of an epoch may be smaller). Default 32.
    pub batch_size: usize,
    /// Shuffle examples (and, with bucketing, batches) every epoch. Default true.
    pub shuffle: bool,
    /// Bucket by length: examples are taken in pools of `bucket × batch_size`
    /// (after shuffling), each pool is sorted by length and cut into batches,
    /// so a batch holds similar lengths and little padding; `None` disables
    /// it. Default `Some(50)`.
    pub bucket: Option<usize>,
    /// Drop the last, smaller batch of each epoch. Default false.
    pub drop_last: bool,
    /// RNG seed. Default 0.
    pub seed: u64,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            shuffle: true,
            bucket: Some(50),
            drop_last: false,
            seed: 0,
        }
    }
}

/// The position of a batch: epoch and index within the epoch, both from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct BatchCursor {
    /// Epoch number.
    pub epoch: u64,
    /// Batch index within the epoch.
    pub batch: usize,
}

/// One batch: where it is, and the example indices it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// This batch's position.
    pub cursor: BatchCursor,
    /// The position of the batch after it (save this to resume after this batch).
    pub next: BatchCursor,
    /// Indices into the dataset.
    pub indices: Vec<usize>,
}

/// Forms batches of a dataset from the example lengths.
#[derive(Debug, Clone)]
pub struct Batcher {
    lengths: Vec<usize>,
    config: BatcherConfig,
}

impl Batcher {
    /// A batcher for examples with the given lengths (any unit, e.g. tokens).
    ///
    /// # Errors
    /// [`Error::Config`] for a zero batch size or bucket.
    pub fn new(lengths: Vec<usize>, config: BatcherConfig) -> Result<Batcher> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if config.bucket == Some(0) {
            return Err(Error::Config("bucket must be at least 1 batch".into()));
        }
        Ok(Batcher { lengths, config })
    }

    /// The configuration.
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// The batches of epoch `epoch`, as example indices.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let size = self.config.batch_size;
        let mut rng = SplitMix64::stream(self.config.seed, epoch);
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        if self.config.shuffle {
            rng.shuffle(&mut order);
        }
        let mut batches: Vec<Vec<usize>> = match self.config.bucket {
            None => order.chunks(size).map(<[usize]>::to_vec).collect(),
            Some(bucket) => {
                let mut out = Vec::new();
                for pool in order.chunks(bucket * size) {
                    let mut pool = pool.to_vec();
                    // Stable: equal lengths keep their shuffled order.
                    pool.sort_by_key(|&i| self.lengths[i]);
                    out.extend(pool.chunks(size).map(<[usize]>::to_vec));
                }
                if self.config.shuffle {
                    rng.shuffle(&mut out);
                }
                out
            }
        };
        if self.config.drop_last {
            batches.retain(|b| b.len() == size);
        }
        batches
    }

    /// An endless stream of batches over epochs, starting at `cursor`. It ends
    /// only when the dataset has no batch at all. A cursor past the end of its
    /// epoch continues with the next epoch.
    pub fn iter_from(&self, cursor: BatchCursor) -> Batches<'_> {
        Batches {
            batcher: self,
            epoch: cursor.epoch,
            batches: self.epoch(cursor.epoch),
            next: cursor.batch,
        }
    }
}

/// Iterator returned by [`Batcher::iter_from`].
#[derive(Debug)]
pub struct Batches<'a> {
    batcher: &'a Batcher,
    epoch: u64,
    batches: Vec<Vec<usize>>,
    next: usize,
}

impl Batches<'_> {
    /// The position of the batch `next()` returns.
    pub fn cursor(&self) -> BatchCursor {
        if self.next >= self.batches.len() {
            BatchCursor {
                epoch: self.epoch + 1,
                batch: 0,
            }
        } else {
            BatchCursor {
                epoch: self.epoch,
                batch: self.next,
            }
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.batches.len() {
            let batches = self.batcher.epoch(self.epoch + 1);
            if batches.is_empty() {
                return None;
            }
            self.epoch += 1;
            self.batches = batches;
            self.next = 0;
        }
        let cursor = BatchCursor {
            epoch: self.epoch,
            batch: self.next,
        };
        let indices = std::mem::take(&mut self.batches[self.next]);
        self.next += 1;
        Some(Batch {
            cursor,
            next: self.cursor(),
            indices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(n: usize) -> Vec<usize> {
        let mut rng = SplitMix64::new(9);
        (0..n).map(|_| 1 + rng.below(60) as usize).collect()
    }

    #[test]
    fn every_example_once_per_epoch() {
        for bucket in [None, Some(3)] {
            let config = BatcherConfig {
                batch_size: 8,
                bucket,
                ..Default::default()
            };
            let batcher = Batcher::new(lengths(101), config).unwrap();
            for epoch in 0..3 {
                let mut seen: Vec<usize> = batcher.epoch(epoch).concat();
                seen.sort();
                assert_eq!(seen, (0..101).collect::<Vec<_>>());
            }
            assert_ne!(
                batcher.epoch(0),
                batcher.epoch(1),
                "epochs are shuffled differently"
            );
            let dropped = Batcher::new(
                lengths(101),
                BatcherConfig {
                    drop_last: true,
                    ..config
                },
            )
            .unwrap();
            assert!(dropped.epoch(0).iter().all(|b| b.len() == 8));
            assert_eq!(dropped.epoch(0).len(), 12);
        }
    }

    #[test]
    fn bucketing_reduces_padding() {
        let lens = lengths(2000);
        let padding = |bucket| {
            let config = BatcherConfig {
                batch_size: 16,
                bucket,
                ..Default::default()
            };
            let batcher = Batcher::new(lens.clone(), config).unwrap();
            batcher
                .epoch(0)
                .iter()
                .map(|b| {
                    let max = b.iter().map(|&i| lens[i]).max().unwrap();
                    b.iter().map(|&i| max - lens[i]).sum::<usize>()
                })
                .sum::<usize>()
        };
        let (plain, bucketed) = (padding(None), padding(Some(50)));
        assert!(bucketed * 5 < plain, "bucketed {bucketed} vs plain {plain}");
    }

    #[test]
    fn deterministic_for_a_seed_and_resumable() {
        let config = BatcherConfig {
            batch_size: 7,
            seed: 1234,
            ..Default::default()
        };
        let a = Batcher::new(lengths(50), config).unwrap();
        let b = Batcher::new(lengths(50), config).unwrap();
        let run: Vec<Batch> = a.iter_from(BatchCursor::default()).take(25).collect();
        let again: Vec<Batch> = b.iter_from(BatchCursor::default()).take(25).collect();
        assert_eq!(run, again);
        let other = Batcher::new(
            lengths(50),
            BatcherConfig {
                seed: 1235,
                ..config
            },
        )
        .unwrap();
        assert_ne!(other.epoch(0), a.epoch(0));
        // 50 examples in batches of 7: 8 batches per epoch, so 25 batches
        // cross three epoch boundaries. Stop after batch 10, save, resume.
        assert_eq!(run[8].cursor, BatchCursor { epoch: 1, batch: 0 });
        let saved = serde_json::to_string(&run[10].next).unwrap();
        assert_eq!(saved, r#"{"epoch":1,"batch":3}"#);
        let cursor: BatchCursor = serde_json::from_str(&saved).unwrap();
        let resumed: Vec<Batch> = b.iter_from(cursor).take(14).collect();
        assert_eq!(resumed, run[11..]);
        assert_eq!(run[7].next, BatchCursor { epoch: 1, batch: 0 });
    }

    #[test]
    fn an_empty_batcher_yields_nothing_and_bad_sizes_are_refused() {
        let empty = Batcher::new(vec![], BatcherConfig::default()).unwrap();
        assert_eq!(empty.iter_from(BatchCursor::default()).next(), None);
        assert!(Batcher::new(
            vec![1],
            BatcherConfig {
                batch_size: 0,
                ..Default::default()
            }
        )
        .is_err());
    }
}
