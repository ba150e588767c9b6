//! Text classification setup: the run's data (a dataset card or data files),
//! label names, seeded subsets, encoding (`[BOS] text [EOS]`, head or head+tail
//! truncation), the tokenizer of a fresh run, `[B, T]` batches and the model.
//! Training ([`crate::train::classify`]) and inference
//! ([`crate::infer::classify`]) both build on it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::data::file::{self, FileColumns};
use crate::data::{DataDir, Dataset, LoadOptions, SplitData};
use crate::error::{Error, Result};
use crate::models::{Model, ModelConfig};
use crate::tokenize::{self, EncodeOptions, TextTokenizer, Truncation};
use crate::train::{RunConfig, TokenizerSource};

/// One encoded example.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Class index.
    pub label: u32,
}

pub(crate) fn load_options(config: &RunConfig) -> LoadOptions {
    LoadOptions {
        scheme: config.data.scheme,
        trees: config.data.trees || config.data.phrases,
        phrases: config.data.phrases,
    }
}

/// Opens the run's data: a dataset card, or data files (`data.dataset` a
/// `.tsv`/`.csv`/`.jsonl` file for the train split, `dev_data`, `test_data`).
/// `labels` (a trained run's) fix the label names of data files; by default
/// they come from `data.label_names` or the training file.
pub fn open_dataset(config: &RunConfig, labels: Option<&[String]>) -> Result<Dataset> {
    let d = &config.data;
    if !file::is_data_file(&d.dataset) {
        if d.dev_data.is_some() || d.test_data.is_some() {
            return Err(Error::Config(format!(
                "data.dev_data and data.test_data need data.dataset to be a data file (.tsv, .csv, .jsonl), not {:?}",
                d.dataset
            )));
        }
        return Dataset::open(&d.dataset, &DataDir::from_flag(d.data_dir.clone()));
    }
    let mut files = vec![(d.train_split.clone(), PathBuf::from(&d.dataset))];
    for (split, path) in [(&d.dev_split, &d.dev_data), (&d.test_split, &d.test_data)] {
        if let Some(path) = path {
            if split.is_empty() {
                return Err(Error::Config(format!(
                    "a data file for an unnamed split: {} (set data.dev_split/test_split)",
                    path.display()
                )));
            }
            files.push((split.clone(), path.clone()));
        }
    }
    let columns = FileColumns {
        text: d.text_column.clone(),
        label: d.label_column.clone(),
        header: d.header,
    };
    let opened = file::open(&files, &columns, labels.or(d.label_names.as_deref()))?;
    eprintln!("{}", opened.layout.describe());
    Ok(opened.dataset)
}

/// Checks that a dataset's labels are the ones a run was trained with (its
/// `labels.json`), so a model is never scored against another label set.
///
/// # Errors
/// [`Error::Config`] naming both label lists.
pub fn check_run_labels(
    dataset: &Dataset,
    config: &RunConfig,
    run: &Path,
    run_labels: &[String],
) -> Result<()> {
    let names = dataset.label_names(&load_options(config));
    if names == run_labels {
        return Ok(());
    }
    Err(Error::Config(format!(
        "dataset {} has labels {names:?} but the run {} was trained with {run_labels:?} ({}); \
         evaluate on data with the run's labels (a data file, --data FILE, may give them as names or indices 0-{})",
        dataset.card.name,
        run.display(),
        run.join("labels.json").display(),
        run_labels.len().saturating_sub(1)
    )))
}

/// The class names a run was trained with (`labels.json`).
///
/// # Errors
/// [`Error::Io`] / [`Error::Parse`] naming the file.
pub fn read_run_labels(run: &Path) -> Result<Vec<String>> {
    let labels_path = run.join("labels.json");
    serde_json::from_slice(&std::fs::read(&labels_path).map_err(|source| Error::Io {
        path: labels_path.clone(),
        source,
    })?)
    .map_err(|e| Error::Parse {
        path: labels_path.clone(),
        line: e.line(),
        msg: e.to_string(),
    })
}

/// The examples of `split`, optionally a seeded subset of `limit` of them.
pub fn load_split(
    dataset: &Dataset,
    config: &RunConfig,
    split: &str,
    limit: Option<usize>,
) -> Result<Vec<crate::data::Example>> {
    let examples = match dataset.load(split, &load_options(config))? {
        SplitData::Classification(v) => v,
        SplitData::Translation(_) => {
            return Err(Error::Config(format!(
                "data.dataset {:?} is a translation data set; classification needs labelled texts",
                config.data.dataset
            )))
        }
    };
    Ok(super::subset(examples, limit, config.train.seed))
}

fn encode_options(config: &RunConfig) -> EncodeOptions {
    let max_len = config.data.max_len;
    EncodeOptions {
        add_bos: true,
        add_eos: true,
        truncation: match config.data.head_tokens {
            Some(head) => Truncation::HeadTail { max_len, head },
            None => Truncation::Head { max_len },
        },
    }
}

/// Encodes labelled texts.
pub fn encode(
    tokenizer: &TextTokenizer,
    config: &RunConfig,
    examples: &[crate::data::Example],
) -> Result<Vec<Encoded>> {
    let options = encode_options(config);
    examples
        .iter()
        .map(|e| {
            Ok(Encoded {
                ids: tokenizer.encode_with(&e.text, &options)?,
                label: e.label,
            })
        })
        .collect()
}

/// Builds the tokenizer a fresh run uses, as the config says (`train` are its
/// training examples, read when the tokenizer is trained).
pub fn build_tokenizer(
    config: &RunConfig,
    train: &[crate::data::Example],
) -> Result<TextTokenizer> {
    match &config.tokenizer {
        TokenizerSource::File { path } => super::tokenizer_file(path),
        TokenizerSource::Model => match resolved_model(config)? {
            ModelConfig::Bert(b) => {
                let path = b.path.join("tokenizer.json");
                let tokenizer = TextTokenizer::from_file(&path)?;
                if tokenizer.pad_added() {
                    // A pad id past the checkpoint's embedding table would fail at
                    // the first batch; say why now.
                    return Err(Error::InvalidFile {
                        path,
                        msg: format!(
                            "has no padding token ({:?}), and the pretrained model's embeddings have no row for one: \
                             use a tokenizer.json with one (tokenizer.source = \"file\")",
                            tokenizer.special().pad
                        ),
                    });
                }
                Ok(tokenizer)
            }
            _ => Err(Error::Config(
                "tokenizer.source = \"model\" needs model.kind = \"bert\"".into(),
            )),
        },
        TokenizerSource::Train {
            kind,
            vocab_size,
            min_frequency,
        } => {
            let cfg = tokenize::TrainConfig {
                kind: *kind,
                vocab_size: *vocab_size,
                min_frequency: *min_frequency,
                ..Default::default()
            };
            tokenize::train(train.iter().map(|e| e.text.as_str()), &cfg)
        }
    }
}

/// `[B, T]` ids and mask tensors and `[B]` labels for the examples at `indices`.
pub fn batch_tensors(
    data: &[Encoded],
    indices: &[usize],
    pad: u32,
    device: &Device,
) -> Result<((Tensor, Tensor), Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = indices.iter().map(|&i| data[i].ids.clone()).collect();
    let padded = crate::tokenize::PaddedBatch::pad(&seqs, pad);
    let shape = (padded.rows, padded.cols);
    let tokens = padded.lengths.iter().sum();
    let ids = Tensor::from_vec(padded.ids, shape, device)?;
    let mask = Tensor::from_vec(padded.mask, shape, device)?;
    let labels = Tensor::from_vec(
        indices.iter().map(|&i| data[i].label).collect::<Vec<u32>>(),
        indices.len(),
        device,
    )?;
    Ok(((ids, mask), labels, tokens))
}

/// The classifier `config` describes, for `vocab` tokens and `classes` classes,
/// its memory checked first.
pub fn build_model(
    config: &RunConfig,
    vocab: usize,
    classes: usize,
    device: &Device,
) -> Result<Model> {
    let compute = config.train.precision.compute_dtype();
    crate::models::memory::check_fits(&config.model, vocab, device.is_cpu())?;
    resolved_model(config)?.build_mixed(
        vocab,
        classes,
        DType::F32,
        compute,
        device,
        config.train.seed,
    )
}

/// The model config with a BERT `path` resolved to a local folder (a hub id is
/// looked up in the HF cache, then downloaded).
pub(crate) fn resolved_model(config: &RunConfig) -> Result<ModelConfig> {
    Ok(match &config.model {
        ModelConfig::Bert(b) => {
            let mut b = b.clone();
            b.path = crate::data::pretrained::resolve_model_dir(&b.path)?;
            ModelConfig::Bert(b)
        }
        other => other.clone(),
    })
}
