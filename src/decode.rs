//! Greedy and beam-search decoding over a [`Seq2Seq`], all sentences of a batch
//! together.
//!
//! This room owns the search: hypotheses, their scores and when to stop. It calls
//! the model only through [`Seq2Seq::encode`], [`Seq2Seq::start`],
//! [`Seq2Seq::step`] and the `select` methods, and does not tokenize.
//!
//! **Scores.** A hypothesis `Y` (its tokens after BOS, the final EOS included) has
//! log-probability `log P(Y | X) = Σ_t log p(y_t | y_<t, X)` (log-softmax in f32)
//! and is ranked by GNMT's length-normalized score (Wu et al. 2016)
//!
//! ```text
//! lp(Y)    = ((5 + |Y|) / 6)^α
//! score(Y) = log P(Y | X) / lp(Y)
//! ```
//!
//! (no coverage penalty). α = 0 ranks by log-probability alone.
//!
//! **Length limit.** A sentence of `|x|` source tokens gets at most
//! `⌊a·|x| + b⌋` output tokens (fairseq's `--max-len-a/-b`), also capped by the
//! model's position table; a hypothesis reaching the limit without EOS is kept as it
//! is.

use candle_core::{DType, Device, Tensor, D};

use crate::models::layers::log_softmax_last_dim;
use crate::models::{DecoderState, Encoded, Seq2Seq};
use crate::{Error, Result};

/// Default beam width, for [`DecodeOptions::new`] and the config's `decode.beam`.
pub const DEFAULT_BEAM: usize = 5;
/// Default `a` of the length limit `a·|src| + b`, for [`DecodeOptions::new`] and
/// the config's `decode.max_len_a` (one source, so the library and the CLI agree).
pub const DEFAULT_MAX_LEN_A: f64 = 1.5;
/// Default `b` of the length limit `a·|src| + b`, for [`DecodeOptions::new`] and
/// the config's `decode.max_len_b`.
pub const DEFAULT_MAX_LEN_B: usize = 10;
/// Default α of GNMT's length penalty, for [`DecodeOptions::new`] and the config's
/// `decode.length_penalty`.
pub const DEFAULT_LENGTH_PENALTY: f64 = 0.6;

/// How to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Beam width; 1 = greedy. Default [`DEFAULT_BEAM`] (5).
    pub beam: usize,
    /// `a` in the length limit `a·|src| + b`. Default [`DEFAULT_MAX_LEN_A`] (1.5).
    pub max_len_a: f64,
    /// `b` in the length limit `a·|src| + b`. Default [`DEFAULT_MAX_LEN_B`] (10).
    pub max_len_b: usize,
    /// α of GNMT's length penalty `((5 + |Y|)/6)^α` (must be ≥ 0). Default
    /// [`DEFAULT_LENGTH_PENALTY`] (0.6).
    pub length_penalty: f64,
    /// Beginning-of-sentence id, fed at the first step and not returned.
    pub bos: u32,
    /// End-of-sentence id: ends a hypothesis and is not returned.
    pub eos: u32,
    /// Padding id for the source batch (masked out).
    pub pad: u32,
}

impl DecodeOptions {
    /// The defaults (beam 5, a = 1.5, b = 10, α = 0.6, the same as a config's
    /// `[decode]` section) with these special ids.
    pub fn new(bos: u32, eos: u32, pad: u32) -> Self {
        Self {
            beam: DEFAULT_BEAM,
            max_len_a: DEFAULT_MAX_LEN_A,
            max_len_b: DEFAULT_MAX_LEN_B,
            length_penalty: DEFAULT_LENGTH_PENALTY,
            bos,
            eos,
            pad,
        }
    }

    /// Checks the options against a model of `vocab` ids; the message names the
    /// field.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        if self.beam == 0 {
            return err("decode.beam must be at least 1".into());
        }
        if !(self.max_len_a.is_finite() && self.max_len_a >= 0.0) {
            return err(format!(
                "decode.max_len_a must be >= 0, got {}",
                self.max_len_a
            ));
        }
        if !(self.length_penalty.is_finite() && self.length_penalty >= 0.0) {
            return err(format!(
                "decode.length_penalty must be >= 0, got {}",
                self.length_penalty
            ));
        }
        for (k, v) in [("bos", self.bos), ("eos", self.eos), ("pad", self.pad)] {
            if v as usize >= vocab {
                return err(format!(
                    "decode.{k} = {v} is not an id of the vocabulary of {vocab}"
                ));
            }
        }
        Ok(())
    }

    /// GNMT's length penalty `((5 + len)/6)^α`.
    pub fn penalty(&self, len: usize) -> f64 {
        ((5.0 + len as f64) / 6.0).powf(self.length_penalty)
    }
}

/// Translates every source sentence (ids without BOS/EOS, any lengths, padded here
/// with `opts.pad`): greedy when `opts.beam == 1`, beam search otherwise. Returns
/// the output ids without BOS and EOS, in input order.
///
/// All sentences run as one batch (rows = sentences × beam): callers chunk large
/// test sets, ideally by length.
pub fn translate(model: &Seq2Seq, src: &[Vec<u32>], opts: &DecodeOptions) -> Result<Vec<Vec<u32>>> {
    if opts.beam == 1 {
        greedy(model, src, opts)
    } else {
        beam_search(model, src, opts)
    }
}

/// [`translate`] over any number of sentences, `chunk` at a time (at least 1),
/// longest first so each chunk pads little; returns the outputs in input order.
/// Each sentence's output does not depend on the chunking.
pub fn translate_all(
    model: &Seq2Seq,
    src: &[Vec<u32>],
    opts: &DecodeOptions,
    chunk: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut order: Vec<usize> = (0..src.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(src[i].len()));
    let mut out = vec![Vec::new(); src.len()];
    for part in order.chunks(chunk.max(1)) {
        let batch: Vec<Vec<u32>> = part.iter().map(|&i| src[i].clone()).collect();
        for (&i, y) in part.iter().zip(translate(model, &batch, opts)?) {
            out[i] = y;
        }
    }
    Ok(out)
}

/// Pads `src` into ids and mask `[B, S]` (S ≥ 1) on `dev`.
fn pad_batch(src: &[Vec<u32>], pad: u32, dev: &Device) -> Result<(Tensor, Tensor)> {
    let s = src.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(src.len() * s);
    let mut mask = Vec::with_capacity(src.len() * s);
    for x in src {
        ids.extend_from_slice(x);
        ids.extend(std::iter::repeat_n(pad, s - x.len()));
        mask.extend(std::iter::repeat_n(1u8, x.len()));
        mask.extend(std::iter::repeat_n(0u8, s - x.len()));
    }
    Ok((
        Tensor::from_vec(ids, (src.len(), s), dev)?,
        Tensor::from_vec(mask, (src.len(), s), dev)?,
    ))
}

/// Per sentence, the most output tokens allowed.
fn max_lens(model: &Seq2Seq, src: &[Vec<u32>], opts: &DecodeOptions) -> Vec<usize> {
    // Step t reads position t, so t ≤ max_len − 1 tokens can be generated before EOS.
    let cap = model
        .max_target_len()
        .map_or(usize::MAX, |m| m.saturating_sub(1));
    src.iter()
        .map(|x| {
            let l = (opts.max_len_a * x.len() as f64).floor() as usize + opts.max_len_b;
            l.min(cap)
        })
        .collect()
}

fn index(rows: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(Tensor::from_vec(v, rows.len(), dev)?)
}

fn device_of(model: &Seq2Seq) -> Device {
    model
        .varmap()
        .all_vars()
        .first()
        .map_or(Device::Cpu, |v| v.device().clone())
}

/// Encodes `src` and keeps only the sentences with a positive length limit.
fn prepare(
    model: &Seq2Seq,
    src: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<(Device, Vec<usize>, Vec<usize>, Encoded)> {
    opts.validate(model.vocab())?;
    let dev = device_of(model);
    let limits = max_lens(model, src, opts);
    let (ids, mask) = pad_batch(src, opts.pad, &dev)?;
    let mut enc = model.encode(&ids, &mask)?;
    let active: Vec<usize> = (0..src.len()).filter(|&i| limits[i] > 0).collect();
    if active.len() < src.len() && !active.is_empty() {
        enc = enc.select(&index(&active, &dev)?)?;
    }
    Ok((dev, limits, active, enc))
}

/// Greedy decoding: the most probable token at each step, until EOS or the length
/// limit. Output ids without BOS/EOS, in input order. Finished sentences leave the
/// batch.
pub fn greedy(model: &Seq2Seq, src: &[Vec<u32>], opts: &DecodeOptions) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![Vec::new(); src.len()];
    if src.is_empty() {
        return Ok(out);
    }
    let (dev, limits, mut active, mut enc) = prepare(model, src, opts)?;
    if active.is_empty() {
        return Ok(out);
    }
    let mut state = model.start(&enc)?;
    let mut prev = Tensor::from_vec(vec![opts.bos; active.len()], active.len(), &dev)?;
    loop {
        let (logits, next_state) = model.step(&enc, &state, &prev)?;
        let next = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let mut keep = Vec::with_capacity(active.len());
        for (r, &i) in active.iter().enumerate() {
            let w = next[r];
            if w == opts.eos {
                continue;
            }
            out[i].push(w);
            if out[i].len() < limits[i] {
                keep.push(r);
            }
        }
        if keep.is_empty() {
            return Ok(out);
        }
        if keep.len() < active.len() {
            let idx = index(&keep, &dev)?;
            enc = enc.select(&idx)?;
            state = next_state.select(&idx)?;
            let toks: Vec<u32> = keep.iter().map(|&r| next[r]).collect();
            prev = Tensor::from_vec(toks, keep.len(), &dev)?;
            active = keep.iter().map(|&r| active[r]).collect();
        } else {
            state = next_state;
            prev = Tensor::from_vec(next, active.len(), &dev)?;
        }
    }
}

/// A live hypothesis: its tokens after BOS and their log-probability.
#[derive(Debug, Clone)]
struct Hyp {
    tokens: Vec<u32>,
    logp: f64,
}

/// The search state of one sentence.
#[derive(Debug)]
struct Sentence {
    live: Vec<Hyp>,
    /// (score, tokens without EOS).
    finished: Vec<(f64, Vec<u32>)>,
    limit: usize,
}

/// The `m` largest values of `row` with their indices, best first (ties: lower
/// index first).
fn top_k(row: &[f32], m: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(m + 1);
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() || (best.len() == m && v <= best[m - 1].1) {
            continue;
        }
        let pos = best.partition_point(|&(_, b)| b >= v);
        best.insert(pos, (i as u32, v));
        best.truncate(m);
    }
    best
}

/// Beam search with `opts.beam` hypotheses per sentence, every sentence of `src`
/// together (rows = live hypotheses of all unfinished sentences).
///
/// At each step every live hypothesis proposes its `2·beam` best next tokens; per
/// sentence the `2·beam` best candidates by log-probability are scanned in order:
/// an EOS candidate among the first `beam` finishes its hypothesis (scored
/// `log P / lp`, see the module doc), the others fill the `beam` live slots. A
/// sentence stops when it has `beam` finished hypotheses and the `beam`-th best
/// scores at least what any live one could still reach (its log-probability can only
/// fall, and its penalty is at most that of the length limit), or when its live
/// hypotheses reach the length limit (they are then finished as they are). Returns
/// the best finished hypothesis per sentence (without BOS/EOS), in input order.
///
/// With `beam` 1 and α = 0 this returns what [`greedy`] does.
pub fn beam_search(
    model: &Seq2Seq,
    src: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<Vec<u32>>> {
    let mut out = vec![Vec::new(); src.len()];
    if src.is_empty() {
        return Ok(out);
    }
    let k = opts.beam;
    let (dev, limits, mut active, mut enc) = prepare(model, src, opts)?;
    if active.is_empty() {
        return Ok(out);
    }
    let mut sents: Vec<Sentence> = (0..src.len())
        .map(|i| Sentence {
            live: vec![Hyp {
                tokens: Vec::new(),
                logp: 0.0,
            }],
            finished: Vec::new(),
            limit: limits[i],
        })
        .collect();
    // The sentence of each row of `enc` and of the decoder state.
    let mut row_sent: Vec<usize> = active.clone();
    let mut state: DecoderState = model.start(&enc)?;
    let mut prev = Tensor::from_vec(vec![opts.bos; row_sent.len()], row_sent.len(), &dev)?;
    let m = (2 * k).min(model.vocab());
    loop {
        let (logits, next_state) = model.step(&enc, &state, &prev)?;
        let lp = log_softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        let mut parents: Vec<usize> = Vec::new();
        let mut tokens: Vec<u32> = Vec::new();
        let mut new_row_sent: Vec<usize> = Vec::new();
        let mut still: Vec<usize> = Vec::new();
        let mut r0 = 0;
        for &i in &active {
            let s = &mut sents[i];
            let n_live = s.live.len();
            // (logp, hypothesis j, token)
            let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(n_live * m);
            for (j, h) in s.live.iter().enumerate() {
                for (w, v) in top_k(&lp[r0 + j], m) {
                    cands.push((h.logp + v as f64, j, w));
                }
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut live = Vec::with_capacity(k);
            let mut live_parents = Vec::with_capacity(k);
            for (rank, &(logp, j, w)) in cands.iter().take(m).enumerate() {
                let h = &s.live[j];
                if w == opts.eos {
                    if rank < k {
                        let score = logp / opts.penalty(h.tokens.len() + 1);
                        s.finished.push((score, h.tokens.clone()));
                    }
                } else if live.len() < k {
                    let mut t = h.tokens.clone();
                    t.push(w);
                    live.push(Hyp { tokens: t, logp });
                    live_parents.push(r0 + j);
                }
                if live.len() == k {
                    break;
                }
            }
            r0 += n_live;
            let len = live.first().map_or(0, |h| h.tokens.len());
            let done = if live.is_empty() {
                true
            } else if len >= s.limit {
                for h in &live {
                    s.finished
                        .push((h.logp / opts.penalty(h.tokens.len()), h.tokens.clone()));
                }
                live.clear();
                true
            } else if s.finished.len() >= k {
                s.finished.sort_by(|a, b| b.0.total_cmp(&a.0));
                let kth = s.finished[k - 1].0;
                let best_live = live
                    .iter()
                    .map(|h| h.logp)
                    .fold(f64::NEG_INFINITY, f64::max);
                kth >= best_live / opts.penalty(s.limit)
            } else {
                false
            };
            if done {
                s.live.clear();
                continue;
            }
            for (h, &p) in live.iter().zip(&live_parents) {
                parents.push(p);
                tokens.push(*h.tokens.last().expect("a live hypothesis has a token"));
                new_row_sent.push(i);
            }
            s.live = live;
            still.push(i);
        }
        if still.is_empty() {
            break;
        }
        let idx = index(&parents, &dev)?;
        state = next_state.select(&idx)?;
        // Rows of one sentence share its encoder output: reselect only when the
        // sentence of some row changed.
        if new_row_sent != row_sent {
            enc = enc.select(&idx)?;
        }
        row_sent = new_row_sent;
        prev = Tensor::from_vec(tokens, row_sent.len(), &dev)?;
        active = still;
    }
    for (i, s) in sents.iter_mut().enumerate() {
        // A stable sort keeps the earlier-finished one first among equal scores.
        s.finished.sort_by(|a, b| b.0.total_cmp(&a.0));
        if let Some((_, t)) = s.finished.first() {
            out[i] = t.clone();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_order() {
        let row = [0.1f32, 0.9, -1.0, 0.9, 0.5, f32::NAN];
        assert_eq!(top_k(&row, 3), vec![(1, 0.9), (3, 0.9), (4, 0.5)]);
        assert_eq!(top_k(&row, 10).len(), 5);
    }

    #[test]
    fn gnmt_penalty() {
        let mut o = DecodeOptions::new(1, 2, 0);
        assert_eq!(o.penalty(1), 1.0);
        o.length_penalty = 1.0;
        assert!((o.penalty(7) - 2.0).abs() < 1e-12);
        o.length_penalty = 0.0;
        assert_eq!(o.penalty(100), 1.0);
    }
}
