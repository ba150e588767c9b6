//! Sequence-to-sequence models for translation: an attentional LSTM
//! encoder-decoder ([`LstmSeq2SeqConfig`]) and a pre-norm Transformer
//! ([`TransformerSeq2SeqConfig`]).
//!
//! One joint tokenizer serves source and target, so a model takes a single `vocab`.
//! The trainer sees one type, [`Seq2Seq`]: [`Seq2Seq::forward`] gives teacher-forced
//! logits `[B, T, V]`; decoding ([`crate::decode`]) uses [`Seq2Seq::encode`],
//! [`Seq2Seq::start`] and [`Seq2Seq::step`], one token per hypothesis per call, and
//! reorders hypotheses with [`Encoded::select`] / [`DecoderState::select`].
//!
//! This room owns the networks, their variables, seeded init and dropout. It does
//! not tokenize, batch, compute losses or search.

pub mod lstm;
pub mod transformer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;

use super::layers::SharedRng;
use super::params::Params;

/// `t.index_select(idx, 0)` (which needs a contiguous tensor).
pub(crate) fn select_rows(t: &Tensor, idx: &Tensor) -> Result<Tensor> {
    t.contiguous()?.index_select(idx, 0)
}
use crate::rng::SplitMix64;

pub use lstm::{AttentionScore, LstmSeq2SeqConfig};
pub use transformer::TransformerSeq2SeqConfig;

/// Which translation model a config builds (TOML: the `[model]` table with
/// `kind = "lstm" | "transformer"`; the other keys are the chosen variant's fields,
/// unknown keys rejected).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Seq2SeqConfig {
    /// The attentional LSTM, fields in [`LstmSeq2SeqConfig`].
    Lstm(LstmSeq2SeqConfig),
    /// The Transformer, fields in [`TransformerSeq2SeqConfig`].
    Transformer(TransformerSeq2SeqConfig),
}

impl Seq2SeqConfig {
    /// Checks every field; an [`crate::Error::Config`] names the offending key.
    pub fn validate(&self) -> crate::Result<()> {
        match self {
            Seq2SeqConfig::Lstm(c) => c.validate(),
            Seq2SeqConfig::Transformer(c) => c.validate(),
        }
    }

    /// Builds the model for a joint vocabulary of `vocab` ids (`pad` is the padding
    /// id, which must be one of them), with weights and dropout masks drawn from
    /// `seed`.
    pub fn build(
        &self,
        vocab: usize,
        pad: u32,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> crate::Result<Seq2Seq> {
        self.build_mixed(vocab, pad, dtype, dtype, device, seed)
    }

    /// As [`Seq2SeqConfig::build`], with variables in `dtype` (the master weights)
    /// and the passes computed in `compute` (bf16 or f16 for mixed precision; layer
    /// norms and softmaxes normalize in f32, the LSTM recurrences run in `dtype`).
    /// Half-precision logits come out as f32.
    pub fn build_mixed(
        &self,
        vocab: usize,
        pad: u32,
        dtype: DType,
        compute: DType,
        device: &Device,
        seed: u64,
    ) -> crate::Result<Seq2Seq> {
        self.validate()?;
        if vocab < 2 || pad as usize >= vocab {
            return Err(crate::Error::Config(format!(
                "a translation model needs a vocabulary of at least 2 ids that includes the pad id {pad}, got {vocab}"
            )));
        }
        let varmap = VarMap::new();
        let params = Params::new(varmap.clone(), dtype, device, seed).with_compute_dtype(compute);
        // A stream independent of the init's (the same derivation as the classifiers).
        let rng = SharedRng::new(SplitMix64::new(seed ^ 0xD20F_0A7C_5EED_0001).next_u64());
        let net = match self {
            Seq2SeqConfig::Lstm(c) => {
                Net::Lstm(lstm::LstmSeq2Seq::build(c, vocab, &params, rng.clone())?)
            }
            Seq2SeqConfig::Transformer(c) => Net::Transformer(
                transformer::TransformerSeq2Seq::build(c, vocab, &params, rng.clone())?,
            ),
        };
        Ok(Seq2Seq {
            net,
            varmap,
            rng,
            vocab,
            pad,
            dtype,
            host_float: device.is_cpu()
                && dtype == compute
                && matches!(dtype, DType::F32 | DType::F64),
        })
    }
}

#[derive(Debug, Clone)]
enum Net {
    Lstm(lstm::LstmSeq2Seq),
    Transformer(transformer::TransformerSeq2Seq),
}

impl Net {
    fn detached(&self) -> Net {
        match self {
            Net::Lstm(m) => Net::Lstm(m.detached()),
            Net::Transformer(m) => Net::Transformer(m.detached()),
        }
    }
}

/// A source batch encoded for decoding, one row per hypothesis (initially one per
/// sentence). Holds no backward graph.
#[derive(Debug, Clone)]
pub struct Encoded(EncodedKind);

#[derive(Debug, Clone)]
enum EncodedKind {
    Lstm(lstm::LstmEncoded),
    Transformer(transformer::TransformerEncoded),
}

impl Encoded {
    /// The rows `idx [M]` (u32) of every tensor, in that order (repeats allowed):
    /// how beam search expands sentences into hypotheses and drops finished ones.
    pub fn select(&self, idx: &Tensor) -> Result<Encoded> {
        Ok(Encoded(match &self.0 {
            EncodedKind::Lstm(e) => EncodedKind::Lstm(e.select(idx)?),
            EncodedKind::Transformer(e) => EncodedKind::Transformer(e.select(idx)?),
        }))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match &self.0 {
            EncodedKind::Lstm(e) => e.rows(),
            EncodedKind::Transformer(e) => e.rows(),
        }
    }
}

/// The decoder's state after a prefix, one row per hypothesis: the LSTM's `h`, `c`
/// and fed-back attentional vector, or the Transformer's self-attention key/value
/// cache and position.
#[derive(Debug, Clone)]
pub struct DecoderState(StateKind);

#[derive(Debug, Clone)]
enum StateKind {
    Lstm(lstm::LstmState),
    Transformer(transformer::TransformerState),
}

impl DecoderState {
    /// The rows `idx [M]` (u32), in that order (repeats allowed).
    pub fn select(&self, idx: &Tensor) -> Result<DecoderState> {
        Ok(DecoderState(match &self.0 {
            StateKind::Lstm(s) => StateKind::Lstm(s.select(idx)?),
            StateKind::Transformer(s) => StateKind::Transformer(s.select(idx)?),
        }))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        match &self.0 {
            StateKind::Lstm(s) => s.rows(),
            StateKind::Transformer(s) => s.rows(),
        }
    }
}

/// A translation model with its variables and dropout RNG: what the trainer holds.
#[derive(Clone)]
pub struct Seq2Seq {
    net: Net,
    varmap: VarMap,
    rng: SharedRng,
    vocab: usize,
    pad: u32,
    dtype: DType,
    /// Weights and computation in one host float type (f32 or f64, on the CPU).
    host_float: bool,
}

impl std::fmt::Debug for Seq2Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.net {
            Net::Lstm(_) => "lstm",
            Net::Transformer(_) => "transformer",
        };
        f.debug_struct("Seq2Seq")
            .field("kind", &kind)
            .field("vocab", &self.vocab)
            .field("variables", &self.varmap.all_vars().len())
            .finish()
    }
}

fn check_pair(src: &Tensor, src_mask: &Tensor) -> Result<usize> {
    let (b, s) = src.dims2()?;
    if src_mask.dims() != [b, s] {
        candle_core::bail!(
            "seq2seq: src {:?} and src_mask {:?} differ in shape",
            src.dims(),
            src_mask.dims()
        );
    }
    Ok(b)
}

impl Seq2Seq {
    /// Teacher-forced logits `[B, T, V]` for source ids `src [B, S]` (u32), the
    /// source mask `[B, S]` (1 real, 0 padding; any dtype) and target-input ids
    /// `tgt_in [B, T]` (BOS followed by `y[..T-1]`). Dropout only when `train`.
    ///
    /// With `train` false the network runs on detached copies of its weights (no
    /// backward graph; the logits carry no gradient).
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let b = check_pair(src, src_mask)?;
        if tgt_in.dim(0)? != b {
            candle_core::bail!("seq2seq: src has {b} rows but tgt_in {:?}", tgt_in.dims());
        }
        let net = if train {
            self.net.clone()
        } else {
            self.net.detached()
        };
        let logits = match &net {
            Net::Lstm(m) => m.forward(src, src_mask, tgt_in, train),
            Net::Transformer(m) => m.forward(src, src_mask, tgt_in, train),
        }?;
        super::layers::upcast_half(&logits)
    }

    /// What [`Seq2Seq::forward`] computes before the output projection: `[B, T, H]`
    /// (the LSTM's attentional vectors `h̃_t` after dropout, the Transformer's
    /// normalised decoder outputs), so that `logits = hidden · Wᵀ + b` with
    /// `(W, b)` from [`Seq2Seq::output_layer`]. Pass both to
    /// [`crate::loss::projected_token_loss`] to train on a large vocabulary without
    /// materialising the `[B, T, V]` logits.
    pub fn forward_hidden(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let b = check_pair(src, src_mask)?;
        if tgt_in.dim(0)? != b {
            candle_core::bail!("seq2seq: src has {b} rows but tgt_in {:?}", tgt_in.dims());
        }
        let net = if train {
            self.net.clone()
        } else {
            self.net.detached()
        };
        match &net {
            Net::Lstm(m) => m.forward_hidden(src, src_mask, tgt_in, train),
            Net::Transformer(m) => m.forward_hidden(src, src_mask, tgt_in, train),
        }
    }

    /// Whether training should hand the loss [`Seq2Seq::forward_hidden`] and
    /// [`Seq2Seq::output_layer`] rather than [`Seq2Seq::forward`]'s logits: on the
    /// CPU, with weights and computation in f32 (or f64), where
    /// [`crate::loss::projected_token_loss`] runs as one fused node with the same
    /// values. Elsewhere (GPU, mixed precision) the logits path is the one to take.
    pub fn projects_on_host(&self) -> bool {
        self.host_float
    }

    /// The output projection: weight `[V, H]` (the target embedding table when
    /// tied) and bias `[V]` (the LSTM has one, the Transformer none). These are the
    /// trainable variables themselves (gradients reach them).
    pub fn output_layer(&self) -> (Tensor, Option<Tensor>) {
        match &self.net {
            Net::Lstm(m) => m.output_layer(),
            Net::Transformer(m) => m.output_layer(),
        }
    }

    /// Encodes `src [B, S]` with mask `[B, S]` for decoding (evaluation mode: no
    /// dropout, no graph); one row per sentence.
    pub fn encode(&self, src: &Tensor, src_mask: &Tensor) -> Result<Encoded> {
        check_pair(src, src_mask)?;
        Ok(Encoded(match &self.net {
            Net::Lstm(m) => EncodedKind::Lstm(m.detached().encode(src, src_mask, false)?),
            Net::Transformer(m) => {
                EncodedKind::Transformer(m.detached().encode(src, src_mask, false)?)
            }
        }))
    }

    /// The decoder's state before the first token, one row per row of `enc`.
    pub fn start(&self, enc: &Encoded) -> Result<DecoderState> {
        Ok(DecoderState(match (&self.net, &enc.0) {
            (Net::Lstm(m), EncodedKind::Lstm(e)) => StateKind::Lstm(m.detached().start(e)?),
            (Net::Transformer(m), EncodedKind::Transformer(e)) => {
                StateKind::Transformer(m.start(e))
            }
            _ => candle_core::bail!("seq2seq: the encoder output comes from another kind of model"),
        }))
    }

    /// One incremental decoder step (evaluation mode): logits `[N, V]` for the
    /// previous tokens `prev [N]` (u32; BOS at the first step) and the state after
    /// them. `N` is the number of rows of `state`, which must equal `enc`'s.
    ///
    /// Step `t` gives the same logits as position `t` of [`Seq2Seq::forward`] with
    /// `train` false.
    pub fn step(
        &self,
        enc: &Encoded,
        state: &DecoderState,
        prev: &Tensor,
    ) -> Result<(Tensor, DecoderState)> {
        let n = prev.dims1()?;
        if n != state.rows() || n != enc.rows() {
            candle_core::bail!(
                "seq2seq step: {n} previous tokens, {} state rows, {} encoder rows",
                state.rows(),
                enc.rows()
            );
        }
        match (&self.net, &enc.0, &state.0) {
            (Net::Lstm(m), EncodedKind::Lstm(e), StateKind::Lstm(s)) => {
                let (logits, s) = m.detached().step(e, s, prev)?;
                Ok((
                    super::layers::upcast_half(&logits)?,
                    DecoderState(StateKind::Lstm(s)),
                ))
            }
            (Net::Transformer(m), EncodedKind::Transformer(e), StateKind::Transformer(s)) => {
                let (logits, s) = m.detached().step(e, s, prev)?;
                Ok((
                    super::layers::upcast_half(&logits)?,
                    DecoderState(StateKind::Transformer(s)),
                ))
            }
            _ => candle_core::bail!(
                "seq2seq step: encoder output or state from another kind of model"
            ),
        }
    }

    /// Size of the joint vocabulary V.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The padding id given at build time.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// The longest target input the model accepts (the Transformer's `max_len`);
    /// `None` when unbounded (the LSTM).
    pub fn max_target_len(&self) -> Option<usize> {
        match &self.net {
            Net::Lstm(_) => None,
            Net::Transformer(m) => Some(m.max_len()),
        }
    }

    /// The dtype of the weights and logits.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every trainable variable, by name.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The dropout RNG's state (save it in checkpoints).
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    /// Restores the dropout RNG's state.
    pub fn set_rng_state(&self, state: u64) {
        self.rng.set_state(state)
    }

    /// Every tensor a checkpoint holds (the variables, detached), by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        super::varmap_tensors(&self.varmap)
    }

    /// Writes [`Seq2Seq::tensors`] to a safetensors file at `path`, atomically.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        crate::fsio::save_tensors(path, &self.tensors())
    }

    /// Sets every variable from the safetensors file at `path`, which must hold each
    /// of them with the same shape (extra tensors are ignored).
    pub fn load_weights(&self, path: &Path) -> crate::Result<()> {
        super::load_varmap(&self.varmap, path)
    }
}
