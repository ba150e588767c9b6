//! Text classification runs: train (with resume, evaluation, best checkpoint,
//! early stopping and `metrics.jsonl`), evaluate, predict.
//!
//! A run directory holds `config.toml` (the resolved config), `tokenizer.json`,
//! `labels.json`, `metrics.jsonl`, and the checkpoint: `ckpt-<step>/` with the last
//! weights, optimizer state and best weights, and `state.json` pointing at it (see
//! [`super::checkpoint`]). Every file is written atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, atomic_write};
use super::config::{parse_device, Metric, RunConfig, TokenizerSource};
use super::runner::{self, io, Evaluation, LoopEnd, Task};
use super::step::{LossConfig, Objective, ObjectiveKind, Stepper};
use crate::data::file::{self, FileColumns};
use crate::data::{DataDir, Dataset, LoadOptions, SplitData};
use crate::error::{Error, Result};
use crate::loss::{ComplementOptions, CrossEntropyOptions, LabelHierarchy, Normalization};
use crate::metrics::ClassificationReport;
use crate::models::{Model, ModelConfig, Trainable};
use crate::tokenize::{self, EncodeOptions, TextTokenizer, Truncation};

/// One encoded example.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Class index.
    pub label: u32,
}

pub use super::runner::{RunState, TrainOptions};

/// How a training call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps done, or stopped early by patience.
    Finished {
        /// Updates made.
        steps: u64,
        /// Best dev metric and its step, if there was a dev split.
        best: Option<(f64, u64)>,
        /// Test-split report with the best weights, if there was a test split.
        test: Option<ClassificationReport>,
    },
    /// Ctrl-C: the checkpoint was saved at this step.
    Interrupted {
        /// Updates made.
        steps: u64,
    },
}

/// A loaded classification setup: config, tokenizer, labels and data.
pub struct Setup {
    /// The config.
    pub config: RunConfig,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Class names, by index.
    pub labels: Vec<String>,
    /// The compute device.
    pub device: Device,
}

fn load_options(config: &RunConfig) -> LoadOptions {
    LoadOptions { scheme: config.data.scheme, trees: config.data.trees || config.data.phrases, phrases: config.data.phrases }
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
                return Err(Error::Config(format!("a data file for an unnamed split: {} (set data.dev_split/test_split)", path.display())));
            }
            files.push((split.clone(), path.clone()));
        }
    }
    let columns = FileColumns { text: d.text_column.clone(), label: d.label_column.clone(), header: d.header };
    let opened = file::open(&files, &columns, labels.or(d.label_names.as_deref()))?;
    eprintln!("{}", opened.layout.describe());
    Ok(opened.dataset)
}

/// Checks that a dataset's labels are the ones a run was trained with (its
/// `labels.json`), so a model is never scored against another label set.
///
/// # Errors
/// [`Error::Config`] naming both label lists.
pub fn check_run_labels(dataset: &Dataset, config: &RunConfig, run: &Path, run_labels: &[String]) -> Result<()> {
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
    serde_json::from_slice(&std::fs::read(&labels_path).map_err(io(&labels_path))?)
        .map_err(|e| Error::Parse { path: labels_path.clone(), line: e.line(), msg: e.to_string() })
}

/// The examples of `split`, optionally a seeded subset of `limit` of them.
pub fn load_split(dataset: &Dataset, config: &RunConfig, split: &str, limit: Option<usize>) -> Result<Vec<crate::data::Example>> {
    let examples = match dataset.load(split, &load_options(config))? {
        SplitData::Classification(v) => v,
        SplitData::Translation(_) => {
            return Err(Error::Config(format!(
                "data.dataset {:?} is a translation data set; classification needs labelled texts",
                config.data.dataset
            )))
        }
    };
    Ok(subset(examples, limit, config.train.seed))
}

fn subset<T>(mut items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    match limit {
        Some(n) if n < items.len() => {
            let mut rng = crate::data::SplitMix64::stream(seed, 0x5EB5E7);
            rng.shuffle(&mut items);
            items.truncate(n);
            items
        }
        _ => items,
    }
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
pub fn encode(tokenizer: &TextTokenizer, config: &RunConfig, examples: &[crate::data::Example]) -> Result<Vec<Encoded>> {
    let options = encode_options(config);
    examples
        .iter()
        .map(|e| Ok(Encoded { ids: tokenizer.encode_with(&e.text, &options)?, label: e.label }))
        .collect()
}

/// Builds the tokenizer a fresh run uses, as the config says.
fn build_tokenizer(config: &RunConfig, train: &[crate::data::Example]) -> Result<TextTokenizer> {
    match &config.tokenizer {
        TokenizerSource::File { path } => runner::tokenizer_file(path),
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
            _ => Err(Error::Config("tokenizer.source = \"model\" needs model.kind = \"bert\"".into())),
        },
        TokenizerSource::Train { kind, vocab_size, min_frequency } => {
            let cfg = tokenize::TrainConfig { kind: *kind, vocab_size: *vocab_size, min_frequency: *min_frequency, ..Default::default() };
            tokenize::train(train.iter().map(|e| e.text.as_str()), &cfg)
        }
    }
}

/// The objective with its hierarchy resolved for `classes` classes.
pub fn objective(config: &RunConfig, classes: usize) -> Result<Objective> {
    let t = &config.train;
    Ok(match t.objective {
        ObjectiveKind::Ce => Objective::CrossEntropy,
        ObjectiveKind::Cot => Objective::Cot,
        ObjectiveKind::Gce => Objective::Gce { alpha: t.gce_alpha },
        ObjectiveKind::CotJoint => Objective::CotJoint { weight: t.complement_weight },
        ObjectiveKind::Hcot => {
            let h = match (&t.hierarchy, classes) {
                (Some(groups), _) => LabelHierarchy::from_groups(groups).map_err(|e| Error::Config(format!("train.hierarchy: {e}")))?,
                (None, 5) => LabelHierarchy::sst5(),
                (None, k) => {
                    return Err(Error::Config(format!(
                        "train.hierarchy is required for hcot with {k} classes (e.g. [[0, 1], [2], [3, 4]])"
                    )))
                }
            };
            if h.classes() != classes {
                return Err(Error::Config(format!("train.hierarchy covers {} classes but the data has {classes}", h.classes())));
            }
            Objective::Hcot(h)
        }
    })
}

fn loss_config(config: &RunConfig) -> LossConfig {
    let t = &config.train;
    let normalization = t.complement_normalization.unwrap_or(match t.objective {
        ObjectiveKind::Gce => Normalization::LogClasses,
        _ => Normalization::Classes,
    });
    LossConfig {
        cross_entropy: CrossEntropyOptions { ignore_index: None, label_smoothing: t.label_smoothing },
        complement: ComplementOptions { form: t.complement_form, normalization, ignore_index: None },
        clip_norm: t.clip_norm,
        chunked: t.chunked_loss,
    }
}

/// `[B, T]` ids and mask tensors and `[B]` labels for the examples at `indices`.
fn batch_tensors(data: &[Encoded], indices: &[usize], pad: u32, device: &Device) -> Result<((Tensor, Tensor), Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = indices.iter().map(|&i| data[i].ids.clone()).collect();
    let padded = crate::tokenize::PaddedBatch::pad(&seqs, pad);
    let shape = (padded.rows, padded.cols);
    let tokens = padded.lengths.iter().sum();
    let ids = Tensor::from_vec(padded.ids, shape, device)?;
    let mask = Tensor::from_vec(padded.mask, shape, device)?;
    let labels = Tensor::from_vec(indices.iter().map(|&i| data[i].label).collect::<Vec<u32>>(), indices.len(), device)?;
    Ok(((ids, mask), labels, tokens))
}

/// Predicted class probabilities `[N, K]` for `data`, in batches, dropout off.
pub fn predict_probs(model: &Model, data: &[Encoded], pad: u32, batch_size: usize, device: &Device) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(data.len());
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(batch_size) {
        let ((ids, mask), _, _) = batch_tensors(data, chunk, pad, device)?;
        let logits = model.forward(&ids, &mask, false)?.detach();
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, 1)?;
        out.extend(probs.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Evaluates on `data`: the report and the mean cross-entropy.
pub fn evaluate(model: &Model, data: &[Encoded], pad: u32, batch_size: usize, classes: usize, device: &Device) -> Result<(ClassificationReport, f64)> {
    let probs = predict_probs(model, data, pad, batch_size, device)?;
    let mut nll = 0.0;
    let mut predicted = Vec::with_capacity(data.len());
    for (p, e) in probs.iter().zip(data) {
        nll -= f64::from(p[e.label as usize].max(f32::MIN_POSITIVE)).ln();
        predicted.push(argmax(p));
    }
    let gold: Vec<u32> = data.iter().map(|e| e.label).collect();
    let report = ClassificationReport::new(&gold, &predicted, classes).map_err(Error::Config)?;
    Ok((report, if data.is_empty() { 0.0 } else { nll / data.len() as f64 }))
}

fn argmax(p: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = i;
        }
    }
    best as u32
}

fn metric_value(report: &ClassificationReport, metric: Metric) -> f64 {
    match metric {
        Metric::Accuracy => report.accuracy,
        Metric::MacroF1 => report.macro_f1,
        Metric::Bleu => unreachable!("rejected before training"),
    }
}

fn build_model(config: &RunConfig, vocab: usize, classes: usize, device: &Device) -> Result<Model> {
    let compute = config.train.precision.compute_dtype();
    super::memory::check_fits(&config.model, vocab, device.is_cpu())?;
    resolved_model(config)?.build_mixed(vocab, classes, DType::F32, compute, device, config.train.seed)
}

/// The model config with a BERT `path` resolved to a local folder (a hub id is
/// looked up in the HF cache, then downloaded).
fn resolved_model(config: &RunConfig) -> Result<ModelConfig> {
    Ok(match &config.model {
        ModelConfig::Bert(b) => {
            let mut b = b.clone();
            b.path = crate::data::pretrained::resolve_model_dir(&b.path)?;
            ModelConfig::Bert(b)
        }
        other => other.clone(),
    })
}

/// Loads what a run directory holds for evaluation or prediction, on `device`:
/// the setup and the model with the best weights (or the last ones when there was
/// no dev split). The caller opens the device once for the process
/// ([`crate::train::run_device`] opens the one the run was trained on), so that a
/// caller loading several runs (`compare`'s report) keeps all tensors on one
/// device object, as Metal and CUDA require.
pub fn load_run(run: &Path, device: &Device) -> Result<(Setup, Model)> {
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    let tokenizer = TextTokenizer::from_file(&run.join("tokenizer.json"))?;
    let labels = read_run_labels(run)?;
    let model = build_model(&config, tokenizer.vocab_size(), labels.len(), device)?;
    checkpoint::load_inference_weights(run, &model)?;
    Ok((Setup { config, tokenizer, labels, device: device.clone() }, model))
}

/// The checks that need the data set's classes but no training: the metric and
/// the objective (HCOT's hierarchy against the classes). `compare` runs it for
/// every objective before it trains anything, so a bad combination fails at once
/// instead of after the runs before it.
///
/// # Errors
/// [`Error::Config`] naming the key; the data set's errors.
pub fn preflight(config: &RunConfig) -> Result<()> {
    if config.train.metric == Metric::Bleu {
        return Err(Error::Config("train.metric = \"bleu\" is for translation; classification uses \"accuracy\" or \"macro_f1\"".into()));
    }
    let dataset = open_dataset(config, None)?;
    let classes = dataset.label_names(&load_options(config)).len();
    objective(config, classes).map(|_| ())
}

/// Trains a classifier into `run` as `config` says (or resumes the run there).
/// `stop` is polled after every update (Ctrl-C sets it): the checkpoint is then
/// saved and [`Outcome::Interrupted`] returned.
pub fn train(config: &RunConfig, run: &Path, options: &TrainOptions, stop: &AtomicBool) -> Result<Outcome> {
    let config_path = run.join("config.toml");
    if config.train.metric == Metric::Bleu {
        return Err(Error::Config("train.metric = \"bleu\" is for translation; classification uses \"accuracy\" or \"macro_f1\"".into()));
    }
    runner::prepare_run_dir(run, options.resume)?;
    let device = parse_device(&config.train.device).map_err(Error::Config)?.open()?;
    let dataset = open_dataset(config, None)?;
    let labels = dataset.label_names(&load_options(config));
    let classes = labels.len();
    let mut train_examples = load_split(&dataset, config, &config.data.train_split, None)?;
    // The dev hold-out is taken before the training limit so it does not depend on it.
    let dev_name = &config.data.dev_split;
    let holdout = match config.data.dev_holdout {
        Some(n) if dev_name.is_empty() || !dataset.has_split(dev_name) => {
            if n >= train_examples.len() {
                return Err(Error::Config(format!("data.dev_holdout ({n}) must be below the {} training examples", train_examples.len())));
            }
            let mut rng = crate::data::SplitMix64::stream(config.train.seed, 0xDE7);
            rng.shuffle(&mut train_examples);
            let dev = train_examples.split_off(train_examples.len() - n);
            Some(subset(dev, config.data.eval_limit, config.train.seed))
        }
        _ => None,
    };
    let train_examples = subset(train_examples, config.data.train_limit, config.train.seed);
    if train_examples.is_empty() {
        return Err(Error::Config(format!("the {} split of {} is empty", config.data.train_split, config.data.dataset)));
    }
    let tokenizer = if options.resume {
        TextTokenizer::from_file(&run.join("tokenizer.json"))?
    } else {
        let t = build_tokenizer(config, &train_examples)?;
        t.save(&run.join("tokenizer.json"))?;
        atomic_write(&run.join("labels.json"), &serde_json::to_vec(&labels).expect("labels serialize"))?;
        t
    };
    atomic_write(&config_path, config.to_toml().as_bytes())?;
    let pad = tokenizer.pad_id();
    let train_data = encode(&tokenizer, config, &train_examples)?;
    let eval_split = |name: &str| -> Result<Option<Vec<Encoded>>> {
        if name.is_empty() || !dataset.has_split(name) {
            return Ok(None);
        }
        Ok(Some(encode(&tokenizer, config, &load_split(&dataset, config, name, config.data.eval_limit)?)?))
    };
    let dev = match holdout {
        Some(examples) => Some(encode(&tokenizer, config, &examples)?),
        None => eval_split(&config.data.dev_split)?,
    };
    let test = eval_split(&config.data.test_split)?;

    let objective = objective(config, classes)?;
    if classes == 2 && objective.uses_complement() {
        eprintln!(
            "warning: {} has 2 classes: the complement entropy is identically 0 there (one wrong class has no spread), \
             so objective {} trains like {}",
            config.data.dataset,
            objective.name(),
            if matches!(objective, Objective::Gce { .. }) { "nothing at all (GCE's gradient is 0)" } else { "plain cross-entropy" }
        );
    }
    let model = build_model(config, tokenizer.vocab_size(), classes, &device)?;
    let task = ClassifyTask { model: &model, train: &train_data, dev: dev.as_deref(), pad, classes, config, device: &device };
    let mut stepper = Stepper::new(objective, loss_config(config), task.vars(), config.train.optimizer.clone())?
        .with_complement_lr_scale(config.train.complement_lr_scale);
    let t = &config.train;
    let (steps, best) = match runner::run(&task, &mut stepper, t, run, options, stop)? {
        LoopEnd::Interrupted { steps } => return Ok(Outcome::Interrupted { steps }),
        LoopEnd::Finished { steps, best } => (steps, best),
    };
    let test_report = match &test {
        Some(test) => {
            checkpoint::load_inference_weights(run, &model)?;
            let (r, loss) = evaluate(&model, test, pad, t.eval_batch_size, classes, &device)?;
            runner::log_line(run, serde_json::json!({
                "step": steps, "split": config.data.test_split, "loss": loss,
                "accuracy": r.accuracy, "macro_f1": r.macro_f1,
            }))?;
            Some(r)
        }
        None => None,
    };
    Ok(Outcome::Finished { steps, best, test: test_report })
}

/// Classification as a [`Task`] for the shared loop.
struct ClassifyTask<'a> {
    model: &'a Model,
    train: &'a [Encoded],
    dev: Option<&'a [Encoded]>,
    pad: u32,
    classes: usize,
    config: &'a RunConfig,
    device: &'a Device,
}

impl Task for ClassifyTask<'_> {
    type Input = (Tensor, Tensor);

    fn metric_name(&self) -> &'static str {
        self.config.train.metric.name()
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.ids.len()).collect()
    }

    fn batch(&self, indices: &[usize]) -> Result<(Self::Input, Tensor, usize)> {
        batch_tensors(self.train, indices, self.pad, self.device)
    }

    fn forward(&self, (ids, mask): &Self::Input, train: bool) -> candle_core::Result<Tensor> {
        self.model.forward(ids, mask, train)
    }

    fn ignore_index(&self) -> Option<u32> {
        None
    }

    fn evaluate(&self) -> Result<Option<Evaluation>> {
        let Some(dev) = self.dev else { return Ok(None) };
        let (r, loss) = evaluate(self.model, dev, self.pad, self.config.train.eval_batch_size, self.classes, self.device)?;
        let mut fields = serde_json::Map::new();
        fields.insert("loss".into(), loss.into());
        fields.insert("accuracy".into(), r.accuracy.into());
        fields.insert("macro_f1".into(), r.macro_f1.into());
        Ok(Some(Evaluation { value: metric_value(&r, self.config.train.metric), fields, summary: format!("loss {loss:.4}") }))
    }

    fn model(&self) -> &dyn Trainable {
        self.model
    }
}

/// Path helper for callers: the default run directory for a config file.
pub fn default_run_dir(config_path: &Path, objective: ObjectiveKind, seed: u64) -> PathBuf {
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(format!("{stem}-{objective}-seed{seed}"))
}
