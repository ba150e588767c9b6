//! Translation setup: the run's sentence pairs in its direction, seeded
//! subsets, encoding (a source is `x EOS`; the decoder reads `BOS y` and predicts
//! `y EOS`), the joint tokenizer of a fresh run (trained on both sides of the
//! training pairs, BPE by default), batches and the model. Training
//! ([`crate::train::translate`]) and inference ([`crate::infer::translate`]) both
//! build on it.

use candle_core::{DType, Device, Tensor};

use crate::data::{DataDir, Dataset, LoadOptions, Pair, SplitData};
use crate::error::{Error, Result};
use crate::models::seq2seq::{Seq2Seq, Seq2SeqConfig};
use crate::tokenize::{self, EncodeOptions, TextTokenizer, TokenizerKind, Truncation};
use crate::train::{RunConfig, TokenizerSource};

/// One encoded sentence pair.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    /// Source ids, `x EOS`.
    pub source: Vec<u32>,
    /// Target ids without BOS/EOS.
    pub target: Vec<u32>,
}

/// Opens the run's data set (a card).
pub fn open_dataset(config: &RunConfig) -> Result<Dataset> {
    Dataset::open(
        &config.data.dataset,
        &DataDir::from_flag(config.data.data_dir.clone()),
    )
}

/// The source and target languages of a run, checked against the card.
pub fn languages(config: &RunConfig, dataset: &Dataset) -> Result<(String, String)> {
    let langs = &dataset.card.languages;
    let [a, b] = langs.as_slice() else {
        return Err(Error::Config(format!(
            "dataset {} is not a language pair",
            dataset.card.name
        )));
    };
    let other = |l: &str| if l == a { b.clone() } else { a.clone() };
    let (src, tgt) = match (&config.data.source_lang, &config.data.target_lang) {
        (None, None) => (a.clone(), b.clone()),
        (Some(s), None) => (s.clone(), other(s)),
        (None, Some(t)) => (other(t), t.clone()),
        (Some(s), Some(t)) => (s.clone(), t.clone()),
    };
    for (key, l) in [("data.source_lang", &src), ("data.target_lang", &tgt)] {
        if l != a && l != b {
            return Err(Error::Config(format!(
                "{key} = {l:?}: dataset {} has languages {a} and {b}",
                dataset.card.name
            )));
        }
    }
    if src == tgt {
        return Err(Error::Config(format!(
            "data.source_lang and data.target_lang are both {src:?}"
        )));
    }
    Ok((src, tgt))
}

/// The pairs of `split` in the run's direction, optionally a seeded subset.
pub fn load_pairs(
    dataset: &Dataset,
    config: &RunConfig,
    split: &str,
    limit: Option<usize>,
) -> Result<Vec<Pair>> {
    let pairs = match dataset.load(split, &LoadOptions::default())? {
        SplitData::Translation(p) => p,
        SplitData::Classification(_) => {
            return Err(Error::Config(format!(
                "data.dataset {:?} is a classification data set",
                config.data.dataset
            )))
        }
    };
    let (src, _) = languages(config, dataset)?;
    let swap = dataset
        .card
        .languages
        .first()
        .is_some_and(|first| *first != src);
    let pairs: Vec<Pair> = if swap {
        pairs
            .into_iter()
            .map(|p| Pair {
                source: p.target,
                target: p.source,
            })
            .collect()
    } else {
        pairs
    };
    Ok(super::subset(pairs, limit, config.train.seed))
}

/// The BOS and EOS ids translation needs.
///
/// # Errors
/// [`Error::Config`] when the tokenizer lacks either.
pub fn special_ids(tokenizer: &TextTokenizer) -> Result<(u32, u32)> {
    match (tokenizer.bos_id(), tokenizer.eos_id()) {
        (Some(b), Some(e)) => Ok((b, e)),
        _ => Err(Error::Config(
            "translation needs a tokenizer with BOS and EOS tokens (<s>, </s>)".into(),
        )),
    }
}

/// Encodes a source sentence: `x EOS`, at most `data.max_len` tokens.
pub fn encode_source(
    tokenizer: &TextTokenizer,
    config: &RunConfig,
    text: &str,
) -> Result<Vec<u32>> {
    tokenizer.encode_with(
        text,
        &EncodeOptions {
            add_bos: false,
            add_eos: true,
            truncation: Truncation::Head {
                max_len: config.data.max_len,
            },
        },
    )
}

/// Encodes pairs for training.
pub fn encode_pairs(
    tokenizer: &TextTokenizer,
    config: &RunConfig,
    pairs: &[Pair],
) -> Result<Vec<EncodedPair>> {
    let target_options = EncodeOptions {
        add_bos: false,
        add_eos: false,
        truncation: Truncation::Head {
            max_len: config.data.max_len - 1,
        },
    };
    pairs
        .iter()
        .map(|p| {
            Ok(EncodedPair {
                source: encode_source(tokenizer, config, &p.source)?,
                target: tokenizer.encode_with(&p.target, &target_options)?,
            })
        })
        .collect()
}

/// Builds the joint tokenizer a fresh run uses, as the config says (trained on
/// both sides of `pairs`).
pub fn build_tokenizer(config: &RunConfig, pairs: &[Pair]) -> Result<TextTokenizer> {
    match &config.tokenizer {
        TokenizerSource::File { path } => super::tokenizer_file(path),
        TokenizerSource::Model => Err(Error::Config("tokenizer.source = \"model\" is for pretrained classifiers; translation trains one (source = \"train\") or loads a file".into())),
        TokenizerSource::Train { kind, vocab_size, min_frequency } => {
            if *kind == TokenizerKind::WordLevel {
                eprintln!("warning: a word-level tokenizer cannot restore the original spacing; BLEU is computed on its space-joined output (use kind = \"bpe\")");
            }
            let cfg = tokenize::TrainConfig { kind: *kind, vocab_size: *vocab_size, min_frequency: *min_frequency, ..Default::default() };
            tokenize::train(pairs.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()]), &cfg)
        }
    }
}

/// The model config of a translation run (`kind = "lstm_attention" |
/// "transformer_seq2seq"`).
pub fn seq2seq_config(config: &RunConfig) -> Result<Seq2SeqConfig> {
    config.model.seq2seq().ok_or_else(|| {
        Error::Config(format!(
            "model.kind must be \"lstm_attention\" or \"transformer_seq2seq\" for the translation data set {}",
            config.data.dataset
        ))
    })
}

/// The translation model `config` describes for `tokenizer`'s vocabulary, its
/// memory checked first.
pub fn build_model(
    config: &RunConfig,
    tokenizer: &TextTokenizer,
    device: &Device,
) -> Result<Seq2Seq> {
    let compute = config.train.precision.compute_dtype();
    crate::models::memory::check_fits(&config.model, tokenizer.vocab_size(), device.is_cpu())?;
    seq2seq_config(config)?.build_mixed(
        tokenizer.vocab_size(),
        tokenizer.pad_id(),
        DType::F32,
        compute,
        device,
        config.train.seed,
    )
}

/// `[B, S]` source ids and mask, `[B, T]` decoder input and targets for the pairs
/// at `indices`; the count is source + target tokens.
pub fn batch_tensors(
    data: &[EncodedPair],
    indices: &[usize],
    pad: u32,
    bos: u32,
    eos: u32,
    device: &Device,
) -> Result<((Tensor, Tensor, Tensor), Tensor, usize)> {
    let srcs: Vec<Vec<u32>> = indices.iter().map(|&i| data[i].source.clone()).collect();
    let src = crate::tokenize::PaddedBatch::pad(&srcs, pad);
    let ins: Vec<Vec<u32>> = indices
        .iter()
        .map(|&i| {
            std::iter::once(bos)
                .chain(data[i].target.iter().copied())
                .collect()
        })
        .collect();
    let outs: Vec<Vec<u32>> = indices
        .iter()
        .map(|&i| {
            data[i]
                .target
                .iter()
                .copied()
                .chain(std::iter::once(eos))
                .collect()
        })
        .collect();
    let tgt_in = crate::tokenize::PaddedBatch::pad(&ins, pad);
    let tgt_out = crate::tokenize::PaddedBatch::pad(&outs, pad);
    let tokens = src.lengths.iter().sum::<usize>() + tgt_out.lengths.iter().sum::<usize>();
    let src_ids = Tensor::from_vec(src.ids, (src.rows, src.cols), device)?;
    let src_mask = Tensor::from_vec(src.mask, (src.rows, src.cols), device)?;
    let tgt_in = Tensor::from_vec(tgt_in.ids, (tgt_in.rows, tgt_in.cols), device)?;
    let targets = Tensor::from_vec(tgt_out.ids, (tgt_out.rows, tgt_out.cols), device)?;
    Ok(((src_ids, src_mask, tgt_in), targets, tokens))
}
