//! Text ↔ token ids, on the `tokenizers` crate.
//!
//! This room owns tokenizers: loading any Hugging Face `tokenizer.json`
//! ([`TextTokenizer::from_file`]), training word-level, BPE, WordPiece and
//! Unigram models ([`train`]), the special tokens ([`SpecialTokens`]),
//! encoding batches with padding and (head+tail) truncation
//! ([`TextTokenizer::encode_batch`]) and decoding back to text. It knows
//! nothing about datasets or tensors.
//!
//! BPE is trained byte-level (GPT-2 style pre-tokenizer and decoder) and
//! Unigram with a Metaspace pre-tokenizer and decoder (SentencePiece style),
//! so both decode back to the exact input: `decode(encode(x)) == x` for any
//! text (BPE) or any text made of characters seen in training (Unigram).
//! Word-level and WordPiece split off punctuation and drop whitespace, so
//! decoding them is not lossless.
//!
//! ```
//! use cotext::tokenize::{train, TokenizerKind, TrainConfig};
//! let texts = ["A dog runs.", "Two dogs run fast.", "A cat sleeps."];
//! let config = TrainConfig { kind: TokenizerKind::Bpe, vocab_size: 300, ..TrainConfig::default() };
//! let tokenizer = train(texts.iter().copied(), &config)?;
//! let ids = tokenizer.encode("A dog sleeps.")?;
//! assert_eq!(tokenizer.decode(&ids, true)?, "A dog sleeps.");
//! # Ok::<(), cotext::Error>(())
//! ```

mod encode;
mod trainer;

pub use encode::{EncodeOptions, PaddedBatch, TextTokenizer, Truncation};
pub use trainer::{train, SpecialTokens, TokenizerKind, TrainConfig};
