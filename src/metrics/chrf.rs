//! chrF (Popović, 2015) and chrF++ (Popović, 2017) computed exactly as sacreBLEU
//! 2.6.0 computes them: character n-grams up to order 6 with whitespace removed,
//! optionally word n-grams (chrF++ uses order 2) after sacreBLEU's punctuation
//! splitting, β = 2, and sacreBLEU's default effective-order averaging
//! (`eps_smoothing=False`, signature `eff:yes`). With several references each
//! segment keeps the statistics of the reference with the best segment F-score.
//!
//! ```
//! use cotext::metrics::chrf::{Chrf, ChrfConfig};
//! let chrf = Chrf::new(ChrfConfig { word_order: 2, ..ChrfConfig::default() })?;
//! let score = chrf.corpus_score(&["a small cat"], &[vec!["a small cat"]])?;
//! assert!((score.score - 100.0).abs() < 1e-9);
//! assert_eq!(score.name, "chrF2++");
//! assert_eq!(chrf.signature(1).to_string(),
//!            "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0");
//! # Ok::<(), cotext::Error>(())
//! ```
//!
//! Limits (sacreBLEU has none): the character order is 1..=6 and the word order
//! 0..=4, so that every n-gram packs into one 128-bit key.

use std::fmt;

use rayon::prelude::*;

use super::bleu::SACREBLEU_VERSION;
use super::text::{is_py_space, py_split, WordIds};
use crate::{Error, Result};

/// chrF's options; the default is sacreBLEU's chrF2: character order 6, word
/// order 0, β 2, case-sensitive, whitespace removed, no epsilon smoothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChrfConfig {
    /// Highest character n-gram order, 1..=6 (default 6).
    pub char_order: usize,
    /// Highest word n-gram order, 0..=4 (default 0; 2 gives chrF++).
    pub word_order: usize,
    /// Weight of recall relative to precision (default 2).
    pub beta: u32,
    /// Lowercase hypotheses and references first (default false).
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams (default false).
    pub whitespace: bool,
    /// chrF++.py / Moses / NLTK epsilon smoothing instead of effective-order
    /// averaging (default false).
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

/// sacreBLEU's chrF signature, e.g. `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrfSignature {
    /// Number of references per segment.
    pub nrefs: usize,
    /// The configuration scored with.
    pub config: ChrfConfig,
}

impl ChrfSignature {
    /// The `(key, value)` pairs in signature order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            ("nrefs", self.nrefs.to_string()),
            ("case", if c.lowercase { "lc" } else { "mixed" }.to_string()),
            // sacreBLEU writes eff:yes when epsilon smoothing is *off*.
            (
                "eff",
                if c.eps_smoothing { "no" } else { "yes" }.to_string(),
            ),
            ("nc", c.char_order.to_string()),
            ("nw", c.word_order.to_string()),
            ("space", if c.whitespace { "yes" } else { "no" }.to_string()),
            ("version", SACREBLEU_VERSION.to_string()),
        ]
    }
}

impl fmt::Display for ChrfSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_signature(f, &self.fields())
    }
}

/// A chrF score with its corpus statistics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChrfScore {
    /// sacreBLEU's name: `chrF{β}` plus one `+` per word order (`chrF2++`).
    pub name: String,
    /// chrF in [0, 100].
    pub score: f64,
    /// Per order (characters 1..=char_order, then words 1..=word_order):
    /// `[hypothesis n-grams, reference n-grams, matches]`, summed over segments.
    pub stats: Vec<[u64; 3]>,
}

/// A segment's n-grams of one order as they occur (unsorted), and how many
/// there are (word n-grams holding a word no reference has count but are not kept).
struct Occurrences {
    keys: Vec<u128>,
    total: u64,
}

/// A reference's n-grams of one order: distinct sorted keys, their counts, and
/// the total.
struct Ngrams {
    keys: Vec<u128>,
    counts: Vec<u32>,
    total: u64,
}

impl Ngrams {
    fn new(mut occ: Occurrences) -> Self {
        occ.keys.sort_unstable();
        let (mut keys, mut counts): (Vec<u128>, Vec<u32>) = (Vec::new(), Vec::new());
        for &k in &occ.keys {
            if keys.last() == Some(&k) {
                *counts.last_mut().expect("same length as keys") += 1;
            } else {
                keys.push(k);
                counts.push(1);
            }
        }
        Ngrams {
            keys,
            counts,
            total: occ.total,
        }
    }
}

/// sacreBLEU's `_remove_punctuation`: split on whitespace, then split one ASCII
/// punctuation character off the end of a word, or else off its start.
fn remove_punctuation(sent: &str) -> Vec<&str> {
    const PUNCTS: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    let mut out = Vec::new();
    for w in py_split(sent) {
        let mut chars = w.chars();
        let first = chars.next().expect("split words are non-empty");
        let last = w.chars().next_back().expect("split words are non-empty");
        if chars.next().is_none() {
            out.push(w);
        } else if PUNCTS.contains(last) {
            let cut = w.len() - last.len_utf8();
            out.extend([&w[..cut], &w[cut..]]);
        } else if PUNCTS.contains(first) {
            out.extend([&w[..1], &w[1..]]);
        } else {
            out.push(w);
        }
    }
    out
}

/// The chrF metric with a validated configuration.
#[derive(Debug, Clone)]
pub struct Chrf {
    config: ChrfConfig,
}

impl Chrf {
    /// Validates `config`.
    pub fn new(config: ChrfConfig) -> Result<Self> {
        if !(1..=6).contains(&config.char_order) {
            return Err(Error::Config(format!(
                "chrF character order must be 1..=6, got {}",
                config.char_order
            )));
        }
        if config.word_order > 4 {
            return Err(Error::Config(format!(
                "chrF word order must be 0..=4, got {}",
                config.word_order
            )));
        }
        Ok(Chrf { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ChrfConfig {
        &self.config
    }

    /// The signature for `nrefs` references per segment.
    pub fn signature(&self, nrefs: usize) -> ChrfSignature {
        ChrfSignature {
            nrefs,
            config: self.config,
        }
    }

    /// The score's name, `chrF2` or `chrF2++`.
    pub fn name(&self) -> String {
        format!(
            "chrF{}{}",
            self.config.beta,
            "+".repeat(self.config.word_order)
        )
    }

    /// sacreBLEU's `_compute_f_score` of flattened per-order statistics.
    pub fn f_score(&self, stats: &[[u64; 3]]) -> f64 {
        const EPS: f64 = 1e-16;
        let factor = (self.config.beta * self.config.beta) as f64;
        let mut score = 0.0;
        let mut effective_order = 0usize;
        let (mut avg_prec, mut avg_rec) = (0.0f64, 0.0f64);
        for &[n_hyp, n_ref, n_match] in stats {
            let prec = if n_hyp > 0 {
                n_match as f64 / n_hyp as f64
            } else {
                EPS
            };
            let rec = if n_ref > 0 {
                n_match as f64 / n_ref as f64
            } else {
                EPS
            };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                EPS
            };
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += prec;
                avg_rec += rec;
                effective_order += 1;
            }
        }
        if self.config.eps_smoothing {
            return 100.0 * score / stats.len() as f64;
        }
        if effective_order == 0 {
            avg_prec = 0.0;
            avg_rec = 0.0;
        } else {
            avg_prec /= effective_order as f64;
            avg_rec /= effective_order as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let score = (1.0 + factor) * avg_prec * avg_rec;
            100.0 * (score / (factor * avg_prec + avg_rec))
        } else {
            0.0
        }
    }

    fn preprocess<'a>(&self, line: &'a str) -> std::borrow::Cow<'a, str> {
        if self.config.lowercase {
            line.to_lowercase().into()
        } else {
            line.into()
        }
    }

    /// Character n-grams of every order (keys pack 21-bit code points, plus one,
    /// so that n-grams of different orders never collide).
    fn char_ngrams(&self, line: &str) -> Vec<Occurrences> {
        let chars: Vec<char> = if self.config.whitespace {
            line.chars().collect()
        } else {
            line.chars().filter(|&c| !is_py_space(c)).collect()
        };
        (1..=self.config.char_order)
            .map(|n| {
                let keys: Vec<u128> = chars
                    .windows(n)
                    .map(|w| w.iter().fold(0u128, |k, &c| (k << 21) | (c as u128 + 1)))
                    .collect();
                Occurrences {
                    total: keys.len() as u64,
                    keys,
                }
            })
            .collect()
    }

    /// Word n-grams of every order from ids (0 = a word no reference has; an
    /// n-gram holding one can still be counted but never matched).
    fn word_ngrams(&self, ids: &[u32]) -> Vec<Occurrences> {
        (1..=self.config.word_order)
            .map(|n| {
                let mut keys = Vec::with_capacity(ids.len());
                let mut unknown = 0u64;
                for w in ids.windows(n) {
                    if w.contains(&0) {
                        unknown += 1;
                    } else {
                        keys.push(w.iter().fold(0u128, |k, &id| (k << 32) | id as u128));
                    }
                }
                Occurrences {
                    total: keys.len() as u64 + unknown,
                    keys,
                }
            })
            .collect()
    }

    /// Preprocesses and indexes reference streams once (sacreBLEU's reference
    /// cache). `refs[k][i]` is the k-th reference of segment i.
    pub fn references<S: AsRef<str> + Sync>(&self, refs: &[Vec<S>]) -> Result<ChrfReferences> {
        if refs.is_empty() {
            return Err(Error::Config(
                "chrF needs at least one reference stream".into(),
            ));
        }
        let n_seg = refs[0].len();
        for (k, r) in refs.iter().enumerate() {
            if r.len() != n_seg {
                return Err(Error::LineCount {
                    left: "reference stream 1".into(),
                    left_lines: n_seg,
                    right: format!("reference stream {}", k + 1),
                    right_lines: r.len(),
                });
            }
        }
        let lines: Vec<Vec<String>> = (0..n_seg)
            .into_par_iter()
            .map(|i| {
                refs.iter()
                    .map(|s| self.preprocess(s[i].as_ref()).into_owned())
                    .collect()
            })
            .collect();
        let mut vocab: WordIds = WordIds::default();
        let word_ids: Vec<Vec<Vec<u32>>> = if self.config.word_order > 0 {
            lines
                .iter()
                .map(|seg| {
                    seg.iter()
                        .map(|line| {
                            remove_punctuation(line)
                                .into_iter()
                                .map(|w| {
                                    let next = vocab.len() as u32 + 1;
                                    *vocab.entry(w.into()).or_insert(next)
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let segments = (0..n_seg)
            .into_par_iter()
            .map(|i| {
                lines[i]
                    .iter()
                    .enumerate()
                    .map(|(k, line)| {
                        let mut ngrams = self.char_ngrams(line);
                        if self.config.word_order > 0 {
                            ngrams.extend(self.word_ngrams(&word_ids[i][k]));
                        }
                        ngrams.into_iter().map(Ngrams::new).collect()
                    })
                    .collect()
            })
            .collect();
        Ok(ChrfReferences {
            chrf: self.clone(),
            nrefs: refs.len(),
            vocab,
            segments,
        })
    }

    /// Corpus chrF of `hyps` against reference streams `refs`.
    pub fn corpus_score<H, S>(&self, hyps: &[H], refs: &[Vec<S>]) -> Result<ChrfScore>
    where
        H: AsRef<str> + Sync,
        S: AsRef<str> + Sync,
    {
        self.references(refs)?.corpus_score(hyps)
    }
}

/// Reference streams preprocessed for chrF.
pub struct ChrfReferences {
    chrf: Chrf,
    nrefs: usize,
    vocab: WordIds,
    /// segment → reference → order → n-grams.
    segments: Vec<Vec<Vec<Ngrams>>>,
}

impl ChrfReferences {
    /// Number of segments (lines).
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The signature of scores computed against these references.
    pub fn signature(&self) -> ChrfSignature {
        self.chrf.signature(self.nrefs)
    }

    /// sacreBLEU's `_compute_segment_statistics` for hypothesis `i`: the
    /// statistics against the reference with the best F-score (the first on a tie).
    pub fn segment_stats(&self, i: usize, hyp: &str) -> Vec<[u64; 3]> {
        let chrf = &self.chrf;
        let hyp = chrf.preprocess(hyp);
        let mut hyp_ngrams = chrf.char_ngrams(&hyp);
        if chrf.config.word_order > 0 {
            let ids: Vec<u32> = remove_punctuation(&hyp)
                .into_iter()
                .map(|w| self.vocab.get(w).copied().unwrap_or(0))
                .collect();
            hyp_ngrams.extend(chrf.word_ngrams(&ids));
        }
        let mut best: Vec<[u64; 3]> = Vec::new();
        let mut best_f = -1.0;
        let mut used = Vec::new();
        for reference in &self.segments[i] {
            let stats: Vec<[u64; 3]> = hyp_ngrams
                .iter()
                .zip(reference)
                .map(|(h, r)| match_stats(h, r, &mut used))
                .collect();
            let f = chrf.f_score(&stats);
            if f > best_f {
                best_f = f;
                best = stats;
            }
        }
        best
    }

    /// Corpus chrF of several hypothesis sets (systems), each with one line per
    /// segment: segments are the unit of parallel work, and every system is
    /// scored against a segment's references while they are in cache.
    pub fn corpus_scores<H: AsRef<str> + Sync>(&self, systems: &[&[H]]) -> Result<Vec<ChrfScore>> {
        for hyps in systems {
            if hyps.len() != self.segments.len() {
                return Err(Error::LineCount {
                    left: "hypotheses".into(),
                    left_lines: hyps.len(),
                    right: "references".into(),
                    right_lines: self.segments.len(),
                });
            }
        }
        let orders = self.chrf.config.char_order + self.chrf.config.word_order;
        let zeros = vec![vec![[0u64; 3]; orders]; systems.len()];
        let add = |acc: &mut Vec<Vec<[u64; 3]>>, other: &[Vec<[u64; 3]>]| {
            for (a, b) in acc.iter_mut().zip(other) {
                for (x, y) in a.iter_mut().zip(b) {
                    for j in 0..3 {
                        x[j] += y[j];
                    }
                }
            }
        };
        // Integer sums: the result does not depend on how rayon splits the work.
        let stats = (0..self.segments.len())
            .into_par_iter()
            .fold(
                || zeros.clone(),
                |mut acc, i| {
                    let seg: Vec<Vec<[u64; 3]>> = systems
                        .iter()
                        .map(|h| self.segment_stats(i, h[i].as_ref()))
                        .collect();
                    add(&mut acc, &seg);
                    acc
                },
            )
            .reduce(
                || zeros.clone(),
                |mut a, b| {
                    add(&mut a, &b);
                    a
                },
            );
        Ok(stats
            .into_iter()
            .map(|stats| ChrfScore {
                name: self.chrf.name(),
                score: self.chrf.f_score(&stats),
                stats,
            })
            .collect())
    }

    /// Corpus chrF of a hypothesis set (one line per segment).
    pub fn corpus_score<H: AsRef<str> + Sync>(&self, hyps: &[H]) -> Result<ChrfScore> {
        Ok(self.corpus_scores(&[hyps])?.remove(0))
    }
}

/// sacreBLEU's `_get_match_statistics`: `[hyp count (0 if the reference has no
/// n-gram of this order), reference count, clipped matches]`.
/// Clipping needs no hypothesis counts: each occurrence matches while its
/// reference n-gram has unused count left (`used` is scratch space).
fn match_stats(hyp: &Occurrences, reference: &Ngrams, used: &mut Vec<u32>) -> [u64; 3] {
    used.clear();
    used.resize(reference.keys.len(), 0);
    let mut matches = 0u64;
    for key in &hyp.keys {
        if let Ok(j) = reference.keys.binary_search(key) {
            if used[j] < reference.counts[j] {
                used[j] += 1;
                matches += 1;
            }
        }
    }
    [
        if reference.total > 0 { hyp.total } else { 0 },
        reference.total,
        matches,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_splits_one_character_off_the_end_or_else_the_start() {
        // sacreBLEU issue #124: '(hi)' becomes '(hi' and ')'.
        assert_eq!(
            remove_punctuation("(hi) \"ok x. , é!"),
            ["(hi", ")", "\"", "ok", "x", ".", ",", "é", "!"]
        );
    }

    #[test]
    fn identical_text_scores_100_and_disjoint_text_0() {
        let chrf = Chrf::new(ChrfConfig::default()).unwrap();
        let s = chrf.corpus_score(&["abc def"], &[vec!["abc def"]]).unwrap();
        assert!((s.score - 100.0).abs() < 1e-12);
        let s = chrf.corpus_score(&["xyz"], &[vec!["abc"]]).unwrap();
        assert_eq!(s.score, 0.0);
    }
}
