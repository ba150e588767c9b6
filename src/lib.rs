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
//! | [`train`] | optimizers with saveable state, LR schedules, clipping, atomic checkpoints |
//! | [`metrics`] | accuracy, macro-F1, confusion matrices |
//! | [`data`] | dataset readers (SST, IMDB, parallel text, TSV/CSV/JSONL), dataset cards, hub download and cache, batching with a seeded RNG |
//! | [`tokenize`] | load any `tokenizer.json`, train BPE/WordPiece/word-level/Unigram, pad, truncate, decode losslessly |
//! | [`models`] | BiLSTM, Transformer and BERT classifiers with layers that backpropagate, seeded init and dropout, HF-named weights |
//!
//! Everything in [`loss`] is a pure function of candle tensors: it can be reused in
//! any candle model without the rest of cotext.
#![warn(missing_docs)]

pub mod data;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod models;
pub mod train;
pub mod tokenize;

pub use error::{Error, Result};
