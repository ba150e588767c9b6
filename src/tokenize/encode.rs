//! A loaded tokenizer with our special tokens: encode, pad, truncate, decode.

use std::path::Path;

use rayon::prelude::*;
use tokenizers::{AddedToken, Tokenizer};

use super::SpecialTokens;
use crate::{Error, Result};

/// How to shorten sequences that exceed a maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep everything.
    #[default]
    None,
    /// Keep the first `max_len` tokens (special tokens included).
    Head {
        /// Maximum length including BOS/EOS.
        max_len: usize,
    },
    /// Keep the first `head` and the last `max_len - head - specials` tokens:
    /// for long documents (IMDB reviews) the end carries as much sentiment as
    /// the start (Sun et al. 2019, *How to Fine-Tune BERT for Text
    /// Classification*, found head 128 + tail 382 best at 512).
    HeadTail {
        /// Maximum length including BOS/EOS.
        max_len: usize,
        /// Tokens kept from the start.
        head: usize,
    },
}

/// Options for [`TextTokenizer::encode_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeOptions {
    /// Prepend the BOS token.
    pub add_bos: bool,
    /// Append the EOS token.
    pub add_eos: bool,
    /// Truncation applied before padding.
    pub truncation: Truncation,
}

/// A padded batch of token ids, row-major `rows × cols`, padded on the right
/// to the longest row (`cols` = max length in the batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Token ids, `rows * cols`, pad id after each row's end.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding, same shape as `ids`.
    pub mask: Vec<u8>,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
    /// Number of rows (sequences).
    pub rows: usize,
    /// Row length after padding.
    pub cols: usize,
}

impl PaddedBatch {
    /// Pads `sequences` with `pad_id` to the longest one. An empty input gives
    /// a `0 × 0` batch.
    pub fn pad(sequences: &[Vec<u32>], pad_id: u32) -> PaddedBatch {
        let rows = sequences.len();
        let cols = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![pad_id; rows * cols];
        let mut mask = vec![0u8; rows * cols];
        for (r, seq) in sequences.iter().enumerate() {
            ids[r * cols..r * cols + seq.len()].copy_from_slice(seq);
            mask[r * cols..r * cols + seq.len()].fill(1);
        }
        PaddedBatch {
            ids,
            mask,
            lengths: sequences.iter().map(Vec::len).collect(),
            rows,
            cols,
        }
    }

    /// Row `r` without its padding.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[r * self.cols..r * self.cols + self.lengths[r]]
    }
}

/// A tokenizer plus the ids of its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    pad_id: u32,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    pad_added: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl TextTokenizer {
    /// Wraps a `tokenizers` tokenizer; the special tokens are looked up in its
    /// vocabulary. A vocabulary without the pad token gets it added as a special
    /// token at the end (id = the old vocabulary size, as Hugging Face's
    /// `add_special_tokens` does; see [`TextTokenizer::pad_added`]): padding must
    /// never share an id with a real token, or the loss would ignore that token
    /// wherever it occurs and classifiers would read padding as text.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the pad token cannot be added.
    pub fn new(mut inner: Tokenizer, special: SpecialTokens) -> Result<TextTokenizer> {
        let pad_added = inner.token_to_id(&special.pad).is_none();
        if pad_added {
            inner
                .add_special_tokens([AddedToken::from(special.pad.clone(), true)])
                .map_err(|e| {
                    Error::Tokenizer(format!(
                        "could not add the pad token {:?}: {e}",
                        special.pad
                    ))
                })?;
        }
        let id = |t: &str| inner.token_to_id(t);
        Ok(TextTokenizer {
            pad_id: id(&special.pad).ok_or_else(|| {
                Error::Tokenizer(format!("could not add the pad token {:?}", special.pad))
            })?,
            bos_id: id(&special.bos),
            eos_id: id(&special.eos),
            unk_id: id(&special.unk),
            pad_added,
            inner,
            special,
        })
    }

    /// Whether the pad token was missing from the vocabulary and was added by
    /// [`TextTokenizer::new`] (the vocabulary is then one id larger than the
    /// file's). Saving the tokenizer keeps the added token.
    pub fn pad_added(&self) -> bool {
        self.pad_added
    }

    /// Loads any Hugging Face `tokenizer.json`. Special tokens are found under
    /// cotext's names (`<pad> <s> </s> <unk>`) or BERT's (`[PAD] [CLS] [SEP]
    /// [UNK]`), whichever the vocabulary has more of (cotext's on a tie). A
    /// vocabulary without that pad token gets one added (see [`TextTokenizer::new`]).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::InvalidFile`] if it
    /// is not a valid tokenizer.
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // tokenizers 0.23 panics on some malformed files (a WordPiece decoder whose
        // `prefix` is not a string, found by tests/fuzz_parsers.rs) instead of
        // returning an error: caught, and reported like any bad file.
        let parsed = {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let parsed = std::panic::catch_unwind(|| text.parse::<Tokenizer>());
            std::panic::set_hook(hook);
            parsed
        };
        let mut inner: Tokenizer = parsed
            .map_err(|_| Error::InvalidFile {
                path: path.to_path_buf(),
                msg: "not a tokenizer.json: the tokenizers library could not read it".into(),
            })?
            .map_err(|e| Error::InvalidFile {
                path: path.to_path_buf(),
                msg: format!("not a tokenizer.json: {e}"),
            })?;
        // Checkpoints such as all-MiniLM-L6-v2 ship with truncation and padding to a
        // fixed length turned on; cotext truncates itself (head or head + tail) and
        // pads per batch, so both are switched off.
        inner
            .with_truncation(None)
            .map_err(|e| Error::InvalidFile {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        inner.with_padding(None);
        let ours = SpecialTokens::default();
        let bert = SpecialTokens {
            pad: "[PAD]".into(),
            bos: "[CLS]".into(),
            eos: "[SEP]".into(),
            unk: "[UNK]".into(),
        };
        let found = |s: &SpecialTokens| {
            s.all()
                .iter()
                .filter(|t| inner.token_to_id(t).is_some())
                .count()
        };
        let special = if found(&bert) > found(&ours) {
            bert
        } else {
            ours
        };
        TextTokenizer::new(inner, special)
    }

    /// Saves as `tokenizer.json` (pretty-printed), atomically: a temporary file
    /// in the same folder is renamed over `path`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        crate::fsio::atomic_write(path, json.as_bytes())
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The special tokens.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Vocabulary size, special and added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of the beginning-of-sequence token, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Id of the end-of-sequence token, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Id of the unknown token, if the vocabulary has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of `text`, without special tokens.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the model fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes one text with BOS/EOS and truncation (no padding).
    ///
    /// # Errors
    /// [`Error::Config`] if a truncation length leaves no room for text;
    /// [`Error::Tokenizer`] if the model fails.
    pub fn encode_with(&self, text: &str, options: &EncodeOptions) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        let specials = usize::from(options.add_bos) + usize::from(options.add_eos);
        let limit = |max_len: usize| {
            max_len
                .checked_sub(specials)
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    Error::Config(format!(
                    "max length {max_len} leaves no room for text next to {specials} special tokens"
                ))
                })
        };
        match options.truncation {
            Truncation::None => {}
            Truncation::Head { max_len } => ids.truncate(limit(max_len)?),
            Truncation::HeadTail { max_len, head } => {
                let budget = limit(max_len)?;
                if head > budget {
                    return Err(Error::Config(format!(
                        "head {head} is longer than the {budget} tokens that max length {max_len} leaves"
                    )));
                }
                if ids.len() > budget {
                    let tail = budget - head;
                    ids.drain(head..ids.len() - tail);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len() + specials);
        if options.add_bos {
            out.push(self.bos_id.ok_or_else(|| self.missing(&self.special.bos))?);
        }
        out.extend(ids);
        if options.add_eos {
            out.push(self.eos_id.ok_or_else(|| self.missing(&self.special.eos))?);
        }
        Ok(out)
    }

    fn missing(&self, token: &str) -> Error {
        Error::Config(format!("the tokenizer has no special token {token:?}"))
    }

    /// Encodes texts in parallel and pads them to the longest (see [`PaddedBatch`]).
    ///
    /// # Errors
    /// As [`TextTokenizer::encode_with`].
    pub fn encode_batch(&self, texts: &[&str], options: &EncodeOptions) -> Result<PaddedBatch> {
        let sequences: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| self.encode_with(t, options))
            .collect::<Result<_>>()?;
        Ok(PaddedBatch::pad(&sequences, self.pad_id))
    }

    /// Text of `ids`; with `skip_special` the pad/bos/eos/unk tokens are dropped.
    ///
    /// # Errors
    /// [`Error::Config`] for an id outside the vocabulary (the `tokenizers`
    /// decoder would silently drop it); [`Error::Tokenizer`] if the decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| self.inner.id_to_token(id).is_none())
        {
            return Err(Error::Config(format!(
                "token id {id} (position {}) is not in the vocabulary of {} tokens",
                i + 1,
                self.vocab_size()
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{train, TokenizerKind, TrainConfig};
    use super::*;

    fn bpe() -> TextTokenizer {
        let texts = [
            "the cat sat on the mat",
            "the dog sat on the log",
            "a cat and a dog",
        ];
        train(
            texts.iter().copied(),
            &TrainConfig {
                kind: TokenizerKind::Bpe,
                vocab_size: 300,
                min_frequency: 1,
                ..TrainConfig::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn special_tokens_have_fixed_ids() {
        let tok = bpe();
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_id(), Some(2));
        assert_eq!(tok.unk_id(), Some(3));
        assert_eq!(tok.encode("<s>").unwrap(), vec![1]);
    }

    #[test]
    fn padding_and_head_tail_truncation() {
        let tok = bpe();
        let digits: Vec<u32> = (0..10)
            .map(|d| tok.encode(&d.to_string()).unwrap()[0])
            .collect();
        let text = "0123456789";
        assert_eq!(
            tok.encode(text).unwrap(),
            digits,
            "digits are single bytes, never merged"
        );
        let options = EncodeOptions {
            add_bos: true,
            add_eos: true,
            truncation: Truncation::HeadTail {
                max_len: 7,
                head: 2,
            },
        };
        let ids = tok.encode_with(text, &options).unwrap();
        assert_eq!(
            ids,
            [vec![1], digits[..2].to_vec(), digits[7..].to_vec(), vec![2]].concat()
        );
        let head = tok
            .encode_with(
                text,
                &EncodeOptions {
                    truncation: Truncation::Head { max_len: 4 },
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(head, digits[..4]);
        let short = tok.encode_with("01", &options).unwrap();
        assert_eq!(short, vec![1, digits[0], digits[1], 2]);
        let batch = tok.encode_batch(&["01", text], &options).unwrap();
        assert_eq!((batch.rows, batch.cols), (2, 7));
        assert_eq!(batch.lengths, [4, 7]);
        assert_eq!(&batch.ids[..7], &[1, digits[0], digits[1], 2, 0, 0, 0]);
        assert_eq!(&batch.mask[..7], &[1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(batch.row(1), &ids[..]);
        let bad = EncodeOptions {
            add_bos: true,
            add_eos: true,
            truncation: Truncation::HeadTail {
                max_len: 5,
                head: 4,
            },
        };
        assert!(tok
            .encode_with(text, &bad)
            .unwrap_err()
            .to_string()
            .contains("head 4 is longer"));
    }

    #[test]
    fn save_and_load_round_trip() {
        let tok = bpe();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = TextTokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        let text = "the cat, the dog!";
        assert_eq!(loaded.encode(text).unwrap(), tok.encode(text).unwrap());
        let err = loaded.decode(&[1, 70000], true).unwrap_err().to_string();
        assert!(
            err.contains("token id 70000 (position 2) is not in the vocabulary"),
            "{err}"
        );
        std::fs::write(&path, "{\"version\": 1}").unwrap();
        let err = TextTokenizer::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::InvalidFile { .. }), "{err}");
    }

    /// A `tokenizer.json` without a pad token once got pad id 0, the id of a real
    /// word here ("the"): translation then dropped every "the" from its loss and
    /// classifiers padded with "the". The pad token is now added with a new id.
    #[test]
    fn a_tokenizer_without_a_pad_token_gets_one_with_its_own_id() {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let vocab = [
            ("the", 0),
            ("cat", 1),
            ("<s>", 2),
            ("</s>", 3),
            ("<unk>", 4),
        ];
        let model = WordLevel::builder()
            .vocab(vocab.iter().map(|(t, i)| (t.to_string(), *i)).collect())
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut inner = Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(Whitespace));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, inner.to_string(false).unwrap()).unwrap();

        let tok = TextTokenizer::from_file(&path).unwrap();
        assert!(tok.pad_added());
        assert_eq!(tok.encode("the cat").unwrap(), [0, 1]);
        assert_eq!(tok.pad_id(), 5, "the pad token comes after the 5 real ids");
        assert_eq!(tok.vocab_size(), 6);
        assert_eq!(tok.id_to_token(5).as_deref(), Some("<pad>"));
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.unk_id()),
            (Some(2), Some(3), Some(4))
        );
        let batch = tok
            .encode_batch(&["the", "the cat"], &EncodeOptions::default())
            .unwrap();
        assert_eq!(batch.ids, [0, 5, 0, 1]);
        assert_eq!(tok.decode(&[0, 1, 5], true).unwrap(), "the cat");

        // Saved (as a run saves it) and loaded again: the same ids, nothing added.
        let saved = dir.path().join("run-tokenizer.json");
        tok.save(&saved).unwrap();
        let again = TextTokenizer::from_file(&saved).unwrap();
        assert!(!again.pad_added());
        assert_eq!((again.pad_id(), again.vocab_size()), (5, 6));
    }
}
