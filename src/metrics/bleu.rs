//! Corpus BLEU computed exactly as sacreBLEU 2.6.0 computes it (Post, 2018), on
//! detokenized text: the same tokenizers (`13a`, `intl`, `none`, `char`), the same
//! smoothing methods, the same closest-reference-length rule for several
//! references, and the same signature string.
//!
//! ```
//! use cotext::metrics::bleu::{Bleu, BleuConfig};
//! let bleu = Bleu::new(BleuConfig::default())?;
//! let hyps = ["The cat sat on the mat."];
//! let refs = vec![vec!["The cat sat on the mat."]];
//! let score = bleu.corpus_score(&hyps, &refs)?;
//! assert!((score.score - 100.0).abs() < 1e-9);
//! assert_eq!(bleu.signature(1).to_string(),
//!            "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
//! # Ok::<(), cotext::Error>(())
//! ```
//!
//! Differences from sacreBLEU's API, none of which changes a score: the maximum
//! n-gram order is limited to 1..=4 (sacreBLEU's CLI cannot change it either);
//! every segment has the same number of references (sacreBLEU's `nrefs:var` with
//! `None` references is not supported; an empty reference line is a reference of
//! length 0, as in sacreBLEU); [`BleuScore::counts`] and [`BleuScore::totals`] are
//! the raw corpus statistics, whereas sacreBLEU's `add-k` adds k to the orders
//! ≥ 2 of the lists it returns; an empty corpus scores 0 with BP 1 instead of
//! raising `IndexError`.
//!
//! Unicode: the `intl` character classes and Python's whitespace are tables taken
//! from the `regex` module and Python 3.11 that sacreBLEU 2.6.0 ran on (see
//! `tests/golden/make_unicode_tables.py`); `lowercase` uses Rust's
//! `to_lowercase`, whose Unicode version is newer than Python 3.11's 14.0, so
//! the two differ only on letters assigned after Unicode 14.0 (as sacreBLEU's own
//! results differ between Python versions).

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use super::text::{
    is_number, is_punctuation, is_py_space, is_symbol, py_rstrip, py_split, WordIds,
};
use crate::{Error, Result};

/// The sacreBLEU release whose results and signatures this module reproduces.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// sacreBLEU's `MAX_NGRAM_ORDER`.
pub const MAX_NGRAM_ORDER: usize = 4;

/// How BLEU splits a detokenized line into words (sacreBLEU's `--tokenize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokenize {
    /// `13a`, the default: mteval-v13a.pl's tokenization as used by WMT: unescapes
    /// `&quot; &amp; &lt; &gt;`, splits ASCII punctuation and symbols, splits `.`
    /// and `,` unless between digits, and `-` after a digit.
    #[default]
    V13a,
    /// `intl`: mteval-v14.pl's international tokenization: splits Unicode
    /// punctuation unless between digits, and every Unicode symbol.
    Intl,
    /// `none`: whitespace splitting only.
    None,
    /// `char`: every non-whitespace character is a word.
    Char,
}

impl Tokenize {
    /// The name in sacreBLEU's `--tokenize` and in the signature (`13a`, `intl`,
    /// `none`, `char`).
    pub fn name(self) -> &'static str {
        match self {
            Tokenize::V13a => "13a",
            Tokenize::Intl => "intl",
            Tokenize::None => "none",
            Tokenize::Char => "char",
        }
    }

    /// The tokens of one line as BLEU counts them, joined by single spaces. For
    /// `13a` and `intl` this is sacreBLEU's tokenizer output; its `none` and
    /// `char` tokenizers leave whitespace unnormalized, which its n-gram
    /// extraction then splits away. (sacreBLEU tokenizes after lowercasing and
    /// `rstrip()`; this function does neither.)
    pub fn tokenize(self, line: &str) -> String {
        let mut buf = String::new();
        self.tokens(line, &mut buf).join(" ")
    }

    /// The tokens of `line`, using `buf` as scratch space.
    fn tokens<'b>(self, line: &'b str, buf: &'b mut String) -> Vec<&'b str> {
        match self {
            Tokenize::None => py_split(line).collect(),
            Tokenize::Char => line
                .char_indices()
                .filter(|&(_, c)| !is_py_space(c))
                .map(|(i, c)| &line[i..i + c.len_utf8()])
                .collect(),
            Tokenize::V13a | Tokenize::Intl => {
                if self == Tokenize::V13a {
                    tokenize_13a(line, buf);
                } else {
                    *buf = tokenize_intl(line);
                }
                let text: &'b String = buf;
                py_split(text).collect()
            }
        }
    }
}

impl FromStr for Tokenize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "13a" => Ok(Tokenize::V13a),
            "intl" => Ok(Tokenize::Intl),
            "none" => Ok(Tokenize::None),
            "char" => Ok(Tokenize::Char),
            _ => Err(Error::Config(format!(
                "unknown BLEU tokenizer {s:?} (expected 13a, intl, none or char)"
            ))),
        }
    }
}

impl fmt::Display for Tokenize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Applies a two-character regex substitution `(A)(B) -> repl` the way Python's
/// `re.sub` does: leftmost, non-overlapping matches scanned left to right. `emit`
/// writes the replacement for a match.
fn sub_pairs<T: Copy>(
    input: &[T],
    out: &mut Vec<T>,
    first: impl Fn(T) -> bool,
    second: impl Fn(T) -> bool,
    emit: impl Fn(&mut Vec<T>, T, T),
) {
    out.clear();
    let mut i = 0;
    while i < input.len() {
        if i + 1 < input.len() && first(input[i]) && second(input[i + 1]) {
            emit(out, input[i], input[i + 1]);
            i += 2;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
}

/// sacreBLEU's `Tokenizer13a` followed by its `TokenizerRegexp`, before the final
/// whitespace normalization. The regexes only name ASCII characters, so they run
/// on bytes: a multi-byte UTF-8 character behaves exactly like one `[^0-9]`
/// character (no continuation byte is an ASCII digit, `.`, `,` or `-`).
fn tokenize_13a(line: &str, out: &mut String) {
    thread_local! {
        // Scratch buffers reused across lines: allocation was a visible cost.
        static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with(|scratch| {
        let (a, b) = &mut *scratch.borrow_mut();
        tokenize_13a_with(line, a, b);
        out.clear();
        // Spaces are inserted only next to ASCII bytes, never inside a character.
        out.push_str(std::str::from_utf8(b).expect("13a keeps UTF-8 valid"));
    })
}

fn tokenize_13a_with(line: &str, a: &mut Vec<u8>, b: &mut Vec<u8>) {
    let mut s = std::borrow::Cow::Borrowed(line);
    if s.contains("<skipped>") {
        s = s.replace("<skipped>", "").into();
    }
    if s.contains('\n') {
        s = s.replace("-\n", "").replace('\n', " ").into();
    }
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .into();
    }
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 ', on f' {line} '.
    let is_p1 = |b: u8| matches!(b, b'{'..=b'~' | b'['..=b'`' | b' '..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/');
    a.clear();
    for &x in b" ".iter().chain(s.as_bytes()).chain(b" ") {
        if is_p1(x) {
            a.extend_from_slice(&[b' ', x, b' ']);
        } else {
            a.push(x);
        }
    }
    let digit = |b: u8| b.is_ascii_digit();
    let dot_comma = |b: u8| b == b'.' || b == b',';
    // ([^0-9])([\.,]) -> '\1 \2 '
    sub_pairs(
        a,
        b,
        |x| !digit(x),
        dot_comma,
        |o, x, y| o.extend_from_slice(&[x, b' ', y, b' ']),
    );
    // ([\.,])([^0-9]) -> ' \1 \2'
    sub_pairs(
        b,
        a,
        dot_comma,
        |x| !digit(x),
        |o, x, y| o.extend_from_slice(&[b' ', x, b' ', y]),
    );
    // ([0-9])(-) -> '\1 \2 '
    sub_pairs(
        a,
        b,
        digit,
        |x| x == b'-',
        |o, x, y| o.extend_from_slice(&[x, b' ', y, b' ']),
    );
}

/// sacreBLEU's `TokenizerV14International`, before the final whitespace
/// normalization, with the character classes of the `regex` module.
fn tokenize_intl(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut a = Vec::with_capacity(chars.len() * 2);
    // (\P{N})(\p{P}) -> '\1 \2 '
    sub_pairs(
        &chars,
        &mut a,
        |c| !is_number(c),
        is_punctuation,
        |o, x, y| o.extend_from_slice(&[x, ' ', y, ' ']),
    );
    let mut b = Vec::with_capacity(a.len() * 2);
    // (\p{P})(\P{N}) -> ' \1 \2'
    sub_pairs(
        &a,
        &mut b,
        is_punctuation,
        |c| !is_number(c),
        |o, x, y| o.extend_from_slice(&[' ', x, ' ', y]),
    );
    // (\p{S}) -> ' \1 '
    let mut out = String::with_capacity(b.len() * 2);
    for c in b {
        if is_symbol(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// How BLEU treats an n-gram order without matches (Chen & Cherry, 2014), as
/// sacreBLEU's `--smooth-method` / `--smooth-value`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smoothing {
    /// `exp`, the default (mteval-v13a's NIST smoothing, Chen & Cherry method 3):
    /// the k-th order without matches gets precision 1 / (2^k · total).
    #[default]
    Exp,
    /// `floor` (method 1): an order without matches gets precision value / total.
    /// sacreBLEU's default value is 0.1.
    Floor(f64),
    /// `add-k` (method 2): k is added to the matches and totals of orders ≥ 2.
    /// sacreBLEU's default k is 1.
    AddK(f64),
    /// `none`: an order without matches makes the score 0.
    None,
}

impl Smoothing {
    /// The method's name as sacreBLEU spells it.
    pub fn name(self) -> &'static str {
        match self {
            Smoothing::Exp => "exp",
            Smoothing::Floor(_) => "floor",
            Smoothing::AddK(_) => "add-k",
            Smoothing::None => "none",
        }
    }

    /// Builds a method from sacreBLEU's name and optional value; a missing value
    /// takes sacreBLEU's default (floor 0.1, add-k 1). A value for `exp` or
    /// `none`, which take none, is an error.
    pub fn from_name(name: &str, value: Option<f64>) -> Result<Self> {
        let method = match name {
            "exp" => Smoothing::Exp,
            "floor" => Smoothing::Floor(value.unwrap_or(0.1)),
            "add-k" => Smoothing::AddK(value.unwrap_or(1.0)),
            "none" => Smoothing::None,
            _ => {
                return Err(Error::Config(format!(
                    "unknown smoothing {name:?} (expected exp, floor, add-k or none)"
                )))
            }
        };
        if value.is_some() && matches!(method, Smoothing::Exp | Smoothing::None) {
            return Err(Error::Config(format!("smoothing {name} takes no value")));
        }
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Config(format!(
                    "smoothing value must be finite and non-negative, got {v}"
                )));
            }
        }
        Ok(method)
    }
}

impl fmt::Display for Smoothing {
    /// The signature form: `exp`, `none`, `floor[0.10]`, `add-k[1.00]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Smoothing::Floor(v) | Smoothing::AddK(v) => write!(f, "{}[{v:.2}]", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// BLEU's options. The default is sacreBLEU's: `13a`, case-sensitive, `exp`
/// smoothing, order 4, no effective order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BleuConfig {
    /// The tokenizer (default `13a`).
    pub tokenize: Tokenize,
    /// Lowercase hypotheses and references first (default false; Python's
    /// `str.lower()`, which like Rust's `to_lowercase` maps final sigma).
    pub lowercase: bool,
    /// The smoothing method (default `exp`).
    pub smoothing: Smoothing,
    /// The highest n-gram order, 1..=4 (default 4).
    pub max_ngram_order: usize,
    /// Average only over orders up to the last one with any hypothesis n-grams
    /// (default false, sacreBLEU's `eff:no`; sentence-level BLEU turns it on).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            tokenize: Tokenize::V13a,
            lowercase: false,
            smoothing: Smoothing::Exp,
            max_ngram_order: MAX_NGRAM_ORDER,
            effective_order: false,
        }
    }
}

/// sacreBLEU's reproducibility signature for BLEU, e.g.
/// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuSignature {
    /// Number of references per segment.
    pub nrefs: usize,
    /// `case:lc` when lowercased, else `case:mixed`.
    pub lowercase: bool,
    /// `eff:yes` / `eff:no`.
    pub effective_order: bool,
    /// `tok:…`.
    pub tokenize: Tokenize,
    /// `smooth:…`.
    pub smoothing: Smoothing,
}

impl BleuSignature {
    /// The `(key, value)` pairs in signature order, as sacreBLEU's JSON output
    /// lists them.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("nrefs", self.nrefs.to_string()),
            (
                "case",
                if self.lowercase { "lc" } else { "mixed" }.to_string(),
            ),
            (
                "eff",
                if self.effective_order { "yes" } else { "no" }.to_string(),
            ),
            ("tok", self.tokenize.name().to_string()),
            ("smooth", self.smoothing.to_string()),
            ("version", SACREBLEU_VERSION.to_string()),
        ]
    }
}

impl fmt::Display for BleuSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_signature(f, &self.fields())
    }
}

/// A BLEU score with the statistics it was computed from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BleuScore {
    /// BLEU in [0, 100].
    pub score: f64,
    /// Matched n-grams per order (clipped by the reference counts), order 1 first.
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order.
    pub totals: Vec<u64>,
    /// Smoothed n-gram precisions in percent, order 1 first.
    pub precisions: Vec<f64>,
    /// The brevity penalty.
    pub bp: f64,
    /// `sys_len / ref_len` (0 when `ref_len` is 0).
    pub ratio: f64,
    /// Total hypothesis length in tokens.
    pub sys_len: u64,
    /// Total length of the closest reference of each segment.
    pub ref_len: u64,
}

impl BleuScore {
    /// sacreBLEU's verbose part: `60.0/40.0/25.0/12.5 (BP = 1.000 ratio = 1.000
    /// hyp_len = 10 ref_len = 10)`.
    pub fn verbose(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            prec.join("/"),
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }
}

/// Corpus statistics of BLEU: lengths and per-order matches and totals. They add
/// up over segments, so a corpus score is the score of the summed statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub sys_len: u64,
    /// Closest reference length.
    pub ref_len: u64,
    /// Clipped matches per order.
    pub correct: Vec<u64>,
    /// Hypothesis n-grams per order.
    pub total: Vec<u64>,
}

impl BleuStats {
    fn zeros(order: usize) -> Self {
        BleuStats {
            sys_len: 0,
            ref_len: 0,
            correct: vec![0; order],
            total: vec![0; order],
        }
    }

    fn add(&mut self, other: &BleuStats) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        for (a, b) in self.correct.iter_mut().zip(&other.correct) {
            *a += b;
        }
        for (a, b) in self.total.iter_mut().zip(&other.total) {
            *a += b;
        }
    }
}

/// Python's `math.log` as sacreBLEU's `my_log` floors it: log 0 = -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// sacreBLEU's `BLEU.compute_bleu`: the score of corpus statistics, step for step
/// (including its early exit when no n-gram of any order matches).
pub fn compute_bleu(stats: &BleuStats, smoothing: Smoothing, effective_order: bool) -> BleuScore {
    let order = stats.correct.len();
    let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let ratio = if ref_len > 0 {
        sys_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut precisions = vec![0.0; order];
    let done = |score: f64, precisions: Vec<f64>| BleuScore {
        score,
        counts: stats.correct.clone(),
        totals: stats.total.clone(),
        precisions,
        bp,
        ratio,
        sys_len,
        ref_len,
    };
    if stats.correct.iter().all(|&c| c == 0) {
        return done(0.0, precisions);
    }
    let mut smooth_mteval = 1.0f64;
    let mut eff_order = order;
    for n in 1..=order {
        let (mut correct, mut total) = (stats.correct[n - 1] as f64, stats.total[n - 1] as f64);
        if let Smoothing::AddK(k) = smoothing {
            if n > 1 {
                correct += k;
                total += k;
            }
        }
        if total == 0.0 {
            break;
        }
        if effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match smoothing {
                Smoothing::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                Smoothing::Floor(v) => precisions[n - 1] = 100.0 * v / total,
                _ => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct / total;
        }
    }
    // Python's sum() adds left to right, as this fold does.
    let log_sum = precisions[..eff_order]
        .iter()
        .fold(0.0, |acc, &p| acc + my_log(p));
    let score = bp * (log_sum / eff_order as f64).exp();
    done(score, precisions)
}

/// The reference n-grams of one segment: packed n-gram keys (see [`pack`]),
/// sorted, with their highest count over the references.
struct RefSegment {
    lens: Vec<u64>,
    keys: Vec<u128>,
    counts: Vec<u32>,
}

/// Packs the word ids of an n-gram (n ≤ 4, ids ≥ 1) into one key; unused lanes
/// are 0, so n-grams of different orders never collide.
#[inline]
fn pack(ids: &[u32]) -> u128 {
    let mut key = 0u128;
    for j in 0..4 {
        key <<= 32;
        if let Some(&id) = ids.get(j) {
            key |= id as u128;
        }
    }
    key
}

/// Counts the n-grams of orders 1..=order in `ids` (skipping any that contain the
/// unknown id 0) as sorted `(key, count)` runs.
fn count_ngrams(ids: &[u32], order: usize, keys: &mut Vec<u128>) -> Vec<(u128, u32)> {
    keys.clear();
    for n in 1..=order.min(ids.len()) {
        for w in ids.windows(n) {
            if !w.contains(&0) {
                keys.push(pack(w));
            }
        }
    }
    keys.sort_unstable();
    let mut runs: Vec<(u128, u32)> = Vec::new();
    for &k in keys.iter() {
        match runs.last_mut() {
            Some((last, c)) if *last == k => *c += 1,
            _ => runs.push((k, 1)),
        }
    }
    runs
}

/// sacreBLEU's `_get_closest_ref_len`: the reference length closest to the
/// hypothesis length, the shorter one on a tie.
fn closest_ref_len(hyp_len: u64, ref_lens: &[u64]) -> u64 {
    let mut best: Option<(u64, u64)> = None;
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, l)) if diff < d || (diff == d && r < l) => Some((diff, r)),
            keep => keep,
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Applies sacreBLEU's `_preprocess_segment`: optional lowercasing, `rstrip()`.
fn preprocess(line: &str, lowercase: bool) -> std::borrow::Cow<'_, str> {
    if lowercase {
        let lower = line.to_lowercase();
        std::borrow::Cow::Owned(py_rstrip(&lower).to_string())
    } else {
        std::borrow::Cow::Borrowed(py_rstrip(line))
    }
}

/// The BLEU metric with a validated configuration.
#[derive(Debug, Clone)]
pub struct Bleu {
    config: BleuConfig,
}

impl Bleu {
    /// Validates `config` (the n-gram order must be 1..=4).
    pub fn new(config: BleuConfig) -> Result<Self> {
        if !(1..=MAX_NGRAM_ORDER).contains(&config.max_ngram_order) {
            return Err(Error::Config(format!(
                "BLEU n-gram order must be 1..=4, got {}",
                config.max_ngram_order
            )));
        }
        Ok(Bleu { config })
    }

    /// The configuration.
    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// The signature for `nrefs` references per segment.
    pub fn signature(&self, nrefs: usize) -> BleuSignature {
        BleuSignature {
            nrefs,
            lowercase: self.config.lowercase,
            effective_order: self.config.effective_order,
            tokenize: self.config.tokenize,
            smoothing: self.config.smoothing,
        }
    }

    /// Preprocesses and indexes reference streams once, for scoring any number
    /// of hypothesis sets against them. `refs[k][i]` is the k-th reference of
    /// segment i; all streams must have the same length.
    pub fn references<S: AsRef<str> + Sync>(&self, refs: &[Vec<S>]) -> Result<BleuReferences> {
        let n_seg = refs.first().map_or(0, Vec::len);
        if refs.is_empty() {
            return Err(Error::Config(
                "BLEU needs at least one reference stream".into(),
            ));
        }
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
        let cfg = self.config;
        // Tokenize in parallel, then give every reference word an id (≥ 1).
        let tokenized: Vec<Vec<Vec<String>>> = (0..n_seg)
            .into_par_iter()
            .map(|i| {
                refs.iter()
                    .map(|stream| {
                        let line = preprocess(stream[i].as_ref(), cfg.lowercase);
                        let mut buf = String::new();
                        cfg.tokenize
                            .tokens(&line, &mut buf)
                            .into_iter()
                            .map(str::to_string)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let mut vocab: WordIds = WordIds::default();
        let ids: Vec<Vec<Vec<u32>>> = tokenized
            .iter()
            .map(|seg| {
                seg.iter()
                    .map(|toks| {
                        toks.iter()
                            .map(|t| {
                                let next = vocab.len() as u32 + 1;
                                *vocab.entry(t.as_str().into()).or_insert(next)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        drop(tokenized);
        let order = cfg.max_ngram_order;
        let segments = ids
            .par_iter()
            .map(|seg| {
                let mut keys = Vec::new();
                let mut merged: Vec<(u128, u32)> = Vec::new();
                for r in seg {
                    // sacreBLEU keeps, per n-gram, its highest count over the references.
                    let runs = count_ngrams(r, order, &mut keys);
                    merged = merge_max(&merged, &runs);
                }
                RefSegment {
                    lens: seg.iter().map(|r| r.len() as u64).collect(),
                    keys: merged.iter().map(|&(k, _)| k).collect(),
                    counts: merged.iter().map(|&(_, c)| c).collect(),
                }
            })
            .collect();
        Ok(BleuReferences {
            config: cfg,
            nrefs: refs.len(),
            vocab,
            segments,
        })
    }

    /// Corpus BLEU of `hyps` against reference streams `refs` (`refs[k][i]` is
    /// the k-th reference of hypothesis i).
    pub fn corpus_score<H, S>(&self, hyps: &[H], refs: &[Vec<S>]) -> Result<BleuScore>
    where
        H: AsRef<str> + Sync,
        S: AsRef<str> + Sync,
    {
        self.references(refs)?.corpus_score(hyps)
    }
}

/// The union of two sorted `(key, count)` lists, keeping the higher count.
fn merge_max(a: &[(u128, u32)], b: &[(u128, u32)]) -> Vec<(u128, u32)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.max(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Reference streams preprocessed for BLEU (sacreBLEU's reference cache): score
/// many hypothesis sets against them without redoing the reference work.
pub struct BleuReferences {
    config: BleuConfig,
    nrefs: usize,
    vocab: WordIds,
    segments: Vec<RefSegment>,
}

impl BleuReferences {
    /// Number of segments (lines).
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Number of references per segment.
    pub fn nrefs(&self) -> usize {
        self.nrefs
    }

    /// The signature of scores computed against these references.
    pub fn signature(&self) -> BleuSignature {
        Bleu {
            config: self.config,
        }
        .signature(self.nrefs)
    }

    /// sacreBLEU's `_compute_segment_statistics` for hypothesis `i`.
    pub fn segment_stats(&self, i: usize, hyp: &str) -> BleuStats {
        let cfg = &self.config;
        let order = cfg.max_ngram_order;
        let line = preprocess(hyp, cfg.lowercase);
        let mut buf = String::new();
        let toks = cfg.tokenize.tokens(&line, &mut buf);
        let ids: Vec<u32> = toks
            .iter()
            .map(|t| self.vocab.get(*t).copied().unwrap_or(0))
            .collect();
        let seg = &self.segments[i];
        let hyp_len = ids.len() as u64;
        let mut stats = BleuStats::zeros(order);
        stats.sys_len = hyp_len;
        stats.ref_len = closest_ref_len(hyp_len, &seg.lens);
        for n in 1..=order {
            stats.total[n - 1] = (ids.len() + 1).saturating_sub(n) as u64;
        }
        // Clipping without counting the hypothesis n-grams first: each occurrence
        // matches while its reference n-gram still has unused count.
        // Most segments have few reference n-grams: count on the stack.
        let mut stack = [0u32; 256];
        let mut heap = Vec::new();
        let used: &mut [u32] = if seg.keys.len() <= stack.len() {
            &mut stack[..seg.keys.len()]
        } else {
            heap.resize(seg.keys.len(), 0);
            &mut heap
        };
        for n in 1..=order.min(ids.len()) {
            for w in ids.windows(n) {
                if w.contains(&0) {
                    continue;
                }
                if let Ok(j) = seg.keys.binary_search(&pack(w)) {
                    if used[j] < seg.counts[j] {
                        used[j] += 1;
                        stats.correct[n - 1] += 1;
                    }
                }
            }
        }
        stats
    }

    /// The summed statistics of several hypothesis sets (systems), each with one
    /// line per segment. Segments are the unit of parallel work and every system
    /// is scored against a segment's references while they are in cache.
    pub fn corpus_stats<H: AsRef<str> + Sync>(&self, systems: &[&[H]]) -> Result<Vec<BleuStats>> {
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
        let zeros = vec![BleuStats::zeros(self.config.max_ngram_order); systems.len()];
        let add = |mut acc: Vec<BleuStats>, other: &[BleuStats]| {
            for (a, b) in acc.iter_mut().zip(other) {
                a.add(b);
            }
            acc
        };
        // Integer sums: the result does not depend on how rayon splits the work.
        Ok((0..self.segments.len())
            .into_par_iter()
            .fold(
                || zeros.clone(),
                |mut acc, i| {
                    for (a, hyps) in acc.iter_mut().zip(systems) {
                        a.add(&self.segment_stats(i, hyps[i].as_ref()));
                    }
                    acc
                },
            )
            .reduce(|| zeros.clone(), |a, b| add(a, &b)))
    }

    /// Corpus BLEU of several hypothesis sets, one score per set.
    pub fn corpus_scores<H: AsRef<str> + Sync>(&self, systems: &[&[H]]) -> Result<Vec<BleuScore>> {
        let (smoothing, eff) = (self.config.smoothing, self.config.effective_order);
        Ok(self
            .corpus_stats(systems)?
            .iter()
            .map(|s| compute_bleu(s, smoothing, eff))
            .collect())
    }

    /// Corpus BLEU of a hypothesis set (one line per segment).
    pub fn corpus_score<H: AsRef<str> + Sync>(&self, hyps: &[H]) -> Result<BleuScore> {
        Ok(self.corpus_scores(&[hyps])?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_follows_mteval() {
        // Expected strings from sacrebleu 2.6.0's Tokenizer13a.
        assert_eq!(
            Tokenize::V13a.tokenize("Hello, world. 3.14 and 1,000 - 5-6!"),
            "Hello , world . 3.14 and 1,000 - 5 - 6 !"
        );
        assert_eq!(
            Tokenize::V13a.tokenize("a &amp;lt; b &quot;c&quot;<skipped>"),
            "a < b \" c \""
        );
        assert_eq!(Tokenize::V13a.tokenize("é.,x"), "é . , x");
    }

    #[test]
    fn tokenizer_intl_splits_unicode_punctuation_and_symbols() {
        // Expected strings from sacrebleu 2.6.0's TokenizerV14International.
        assert_eq!(
            Tokenize::Intl.tokenize("«Bonjour», dit-il… 3,5 € ou 1.000,00$."),
            "« Bonjour » , dit - il … 3,5 € ou 1.000,00 $ ."
        );
    }

    #[test]
    fn closest_reference_prefers_the_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[7, 3, 6]), 6);
        assert_eq!(closest_ref_len(5, &[6, 4]), 4);
        assert_eq!(closest_ref_len(5, &[4, 6]), 4);
    }

    #[test]
    fn packed_keys_of_different_orders_differ() {
        assert_ne!(pack(&[1, 2]), pack(&[1, 2, 1]));
        assert_ne!(pack(&[1]), pack(&[1, 1]));
        assert_ne!(pack(&[2, 1]), pack(&[1, 2]));
    }

    #[test]
    fn signature_formats_smoothing_values_like_sacrebleu() {
        let mut sig = Bleu::new(BleuConfig::default()).unwrap().signature(2);
        assert_eq!(
            sig.to_string(),
            "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
        );
        sig.smoothing = Smoothing::from_name("floor", None).unwrap();
        sig.lowercase = true;
        assert_eq!(
            sig.to_string(),
            "nrefs:2|case:lc|eff:no|tok:13a|smooth:floor[0.10]|version:2.6.0"
        );
        sig.smoothing = Smoothing::from_name("add-k", None).unwrap();
        assert!(sig.to_string().contains("smooth:add-k[1.00]"));
        assert!(Smoothing::from_name("exp", Some(0.5)).is_err());
    }
}
