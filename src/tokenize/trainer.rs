//! Training tokenizers with the `tokenizers` trainers.

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

use super::TextTokenizer;
use crate::{Error, Result};

/// The tokenizer model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// Whole words and punctuation runs (`\w+|[^\w\s]+`); unknown words → unk. Lossy.
    WordLevel,
    /// Byte-level BPE (GPT-2 pre-tokenizer and decoder): never unk, lossless.
    Bpe,
    /// WordPiece (BERT pre-tokenizer, `##` continuations); unknown → unk. Lossy.
    WordPiece,
    /// Unigram LM with a Metaspace (`▁`) pre-tokenizer and decoder: lossless
    /// for characters seen in training. Training is slow (about 2 minutes on
    /// 13 MB of text on 2 cores).
    Unigram,
}

/// The special tokens every trained tokenizer gets, with ids 0, 1, 2, 3 in
/// this order (pad first, so a zero-filled id tensor is padding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Padding (id 0).
    pub pad: String,
    /// Beginning of sequence (id 1).
    pub bos: String,
    /// End of sequence (id 2).
    pub eos: String,
    /// Unknown token (id 3); never produced by byte-level BPE.
    pub unk: String,
}

impl TokenizerKind {
    /// The name used on the command line: `word-level`, `bpe`, `wordpiece`, `unigram`.
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::WordLevel => "word-level",
            TokenizerKind::Bpe => "bpe",
            TokenizerKind::WordPiece => "wordpiece",
            TokenizerKind::Unigram => "unigram",
        }
    }
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self {
            pad: "<pad>".into(),
            bos: "<s>".into(),
            eos: "</s>".into(),
            unk: "<unk>".into(),
        }
    }
}

impl SpecialTokens {
    /// The four tokens in id order.
    pub fn all(&self) -> [&str; 4] {
        [&self.pad, &self.bos, &self.eos, &self.unk]
    }
}

/// What to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainConfig {
    /// Model kind. Default: BPE.
    pub kind: TokenizerKind,
    /// Target vocabulary size, special tokens included. Default 8000.
    pub vocab_size: usize,
    /// Minimum frequency of a merge / word (BPE, WordPiece, word-level). Default 2.
    pub min_frequency: u64,
    /// Special tokens. Default `<pad> <s> </s> <unk>`.
    pub special: SpecialTokens,
    /// Show the trainers' progress bars. Default false.
    pub show_progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            kind: TokenizerKind::Bpe,
            vocab_size: 8000,
            min_frequency: 2,
            special: SpecialTokens::default(),
            show_progress: false,
        }
    }
}

fn tk_error(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// Trains a tokenizer of `config.kind` on `texts` (one string per sentence or
/// document; no normalization, case is kept).
///
/// # Errors
/// [`Error::Config`] for a vocabulary smaller than the special tokens (plus
/// the 256 bytes for BPE); [`Error::Tokenizer`] if training fails (e.g. no text).
pub fn train<'a, I>(texts: I, config: &TrainConfig) -> Result<TextTokenizer>
where
    I: Iterator<Item = &'a str> + Send,
{
    let special: Vec<AddedToken> = config
        .special
        .all()
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let minimum = special.len()
        + if config.kind == TokenizerKind::Bpe {
            256
        } else {
            1
        };
    if config.vocab_size < minimum {
        return Err(Error::Config(format!(
            "vocab size {} is too small for a {:?} tokenizer: at least {minimum}",
            config.vocab_size, config.kind
        )));
    }
    let unk = config.special.unk.clone();
    let (mut tokenizer, mut trainer): (Tokenizer, TrainerWrapper) = match config.kind {
        TokenizerKind::Bpe => {
            let mut tokenizer = Tokenizer::new(BPE::default());
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
            let trainer = BpeTrainerBuilder::new()
                .vocab_size(config.vocab_size)
                .min_frequency(config.min_frequency)
                .show_progress(config.show_progress)
                .special_tokens(special)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build();
            (tokenizer, trainer.into())
        }
        TokenizerKind::WordPiece => {
            let model = WordPiece::builder()
                .unk_token(unk)
                .build()
                .map_err(tk_error)?;
            let mut tokenizer = Tokenizer::new(model);
            tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
            tokenizer.with_decoder(Some(WordPieceDecoder::default()));
            let trainer = WordPieceTrainer::builder()
                .vocab_size(config.vocab_size)
                .min_frequency(config.min_frequency)
                .show_progress(config.show_progress)
                .special_tokens(special)
                .build();
            (tokenizer, trainer.into())
        }
        TokenizerKind::WordLevel => {
            let model = WordLevel::builder()
                .unk_token(unk)
                .build()
                .map_err(tk_error)?;
            let mut tokenizer = Tokenizer::new(model);
            tokenizer.with_pre_tokenizer(Some(Whitespace));
            let trainer = WordLevelTrainer::builder()
                .vocab_size(config.vocab_size)
                .min_frequency(config.min_frequency)
                .show_progress(config.show_progress)
                .special_tokens(special)
                .build()
                .map_err(tk_error)?;
            (tokenizer, trainer.into())
        }
        TokenizerKind::Unigram => {
            let mut tokenizer = Tokenizer::new(Unigram::default());
            tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
            tokenizer.with_decoder(Some(MetaspaceDecoder::new(
                '▁',
                PrependScheme::Always,
                true,
            )));
            let trainer = UnigramTrainer::builder()
                .vocab_size(config.vocab_size as u32)
                .show_progress(config.show_progress)
                .special_tokens(special)
                .unk_token(Some(unk))
                .build()
                .map_err(tk_error)?;
            (tokenizer, trainer.into())
        }
    };
    tokenizer.train(&mut trainer, texts).map_err(tk_error)?;
    TextTokenizer::new(tokenizer, config.special.clone())
}
