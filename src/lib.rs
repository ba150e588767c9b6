//! # cotext
//!
//! Complement Objective Training (COT, Chen et al., ICLR 2019) for text models on
//! [candle](https://github.com/huggingface/candle).
//!
//! The crate is split into rooms, one concern each:
//!
//! | module | owns |
//! | --- | --- |
//! | [`loss`] | cross-entropy, complement entropy, GCE, HCOT, the chunked token-level path |
//! | [`data`] | dataset readers (SST, IMDB, parallel text, TSV/CSV/JSONL), dataset cards, hub download and cache, batching with a seeded RNG |
//! | [`tokenize`] | load any `tokenizer.json`, train BPE/WordPiece/word-level/Unigram, pad, truncate, decode losslessly |
//! | [`models`] | BiLSTM, Transformer and BERT classifiers and LSTM/Transformer translation models, with layers that backpropagate, seeded init and dropout, HF-named weights |
//! | [`decode`] | greedy and batched beam search over a [`models::Seq2Seq`] |
//! | [`task`] | what differs between classification and translation: the task of a config or run, reading and encoding its data, batches, building its tokenizer, model and objective, one `Outcome` |
//! | [`infer`] | loading a trained run and predicting: class probabilities and reports, beam-search translation, BLEU |
//! | [`train`] | the training loop: objectives (CE, COT, GCE, HCOT), optimizers with saveable state, LR schedules, clipping, checkpoints, run configs |
//! | [`runlog`] | `metrics.jsonl`: the typed lines a run appends (training progress, evaluations), written by [`train`], read by [`report`] |
//! | [`malloc`] | glibc heap settings that keep a training step's buffers out of `mmap` |
//! | [`threads`] | the rayon pool a command runs inside, so that parallel kernels do not wait on a sleeping pool |
//! | [`fsio`] | atomic file writes (temp file, fsync, rename) for everything cotext saves |
//! | [`rng`] | the seeded SplitMix64 generator shared by init, dropout and shuffling |
//! | [`metrics`] | accuracy, macro-F1, confusion matrices; BLEU and chrF identical to sacreBLEU |
//! | [`attack`] | FGSM and PGD on input embeddings, HotFlip on tokens, accuracy under attack |
//! | [`report`] | reading `metrics.jsonl`, mean ± std over seeds, the complement-distribution profile, PNG plots and the Markdown report of `cotext compare` |
//!
//! Everything in [`loss`] is a pure function of candle tensors: it can be reused in
//! any candle model without the rest of cotext.
//!
//! # Features
//! `loss` is always built and needs only candle-core. Every other room needs the
//! `full` feature, and the `cotext` binary the `cli` feature (the default, which
//! implies `full`). A model that only reuses the losses depends on
//! `cotext = { version = "0.1", default-features = false }`.
#![warn(missing_docs)]

#[cfg(feature = "full")]
pub mod attack;
#[cfg(feature = "full")]
pub mod data;
#[cfg(feature = "full")]
pub mod decode;
#[cfg(feature = "full")]
pub mod error;
pub mod fastmath;
#[cfg(feature = "full")]
pub mod fsio;

pub(crate) mod gemm;
#[cfg(feature = "full")]
pub mod infer;
pub mod loss;
#[cfg(feature = "full")]
pub mod malloc;
#[cfg(feature = "full")]
pub mod metrics;
#[cfg(feature = "full")]
pub mod models;
#[cfg(feature = "full")]
pub mod report;
#[cfg(feature = "full")]
pub mod rng;
#[cfg(feature = "full")]
pub mod runlog;
#[cfg(feature = "full")]
pub mod task;
#[cfg(feature = "full")]
pub mod threads;
#[cfg(feature = "full")]
pub mod tokenize;
#[cfg(feature = "full")]
pub mod train;

#[cfg(feature = "full")]
pub use error::{Blame, Error, Result};
