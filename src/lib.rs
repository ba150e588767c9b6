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
//! | [`train`] | the training loop: objectives (CE, COT, GCE, HCOT), optimizers with saveable state, LR schedules, clipping, checkpoints, run configs |
//! | [`malloc`] | glibc heap settings that keep a training step's buffers out of `mmap` |
//! | [`fsio`] | atomic file writes (temp file, fsync, rename) for everything cotext saves |
//! | [`rng`] | the seeded SplitMix64 generator shared by init, dropout and shuffling |
//! | [`metrics`] | accuracy, macro-F1, confusion matrices; BLEU and chrF identical to sacreBLEU |
//! | [`attack`] | FGSM and PGD on input embeddings, HotFlip on tokens, accuracy under attack |
//! | [`report`] | reading `metrics.jsonl`, mean ± std over seeds, the complement-distribution profile, PNG plots and the Markdown report of `cotext compare` |
//!
//! Everything in [`loss`] is a pure function of candle tensors: it can be reused in
//! any candle model without the rest of cotext.
#![warn(missing_docs)]

pub mod attack;
pub mod data;
pub mod decode;
pub mod error;
pub mod fsio;
pub mod loss;
pub mod malloc;
pub mod metrics;
pub mod models;
pub mod report;
pub mod rng;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
