//! Text classification runs: train (with resume, evaluation, best checkpoint,
//! early stopping and `metrics.jsonl`), evaluate, predict.
//!
//! A run directory holds `config.toml` (the resolved config), `tokenizer.json`,
//! `labels.json`, `model.safetensors` + `optim.safetensors` + `state.json` (the last
//! checkpoint, for `--resume`), `best.safetensors` (the weights of the best
//! evaluation) and `metrics.jsonl`. Every file is written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{atomic_write, load_tensors, save_tensors};
use super::config::{parse_device, Metric, RunConfig, TokenizerSource};
use super::step::{LossConfig, Objective, ObjectiveKind, Stepper};
use crate::data::{BatchCursor, Batcher, BatcherConfig, DataDir, Dataset, LoadOptions, SplitData};
use crate::error::{Error, Result};
use crate::loss::{ComplementOptions, CrossEntropyOptions, LabelHierarchy, Normalization};
use crate::metrics::ClassificationReport;
use crate::models::{Model, ModelConfig};
use crate::tokenize::{self, EncodeOptions, TextTokenizer, Truncation};

/// One encoded example.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Class index.
    pub label: u32,
}

/// What `state.json` holds: everything besides weights and optimizer moments that
/// an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Updates made.
    pub step: u64,
    /// Position of the next batch.
    pub cursor: BatchCursor,
    /// The dropout RNG's state.
    pub rng_state: u64,
    /// Best dev metric so far, and the step it was reached at.
    pub best: Option<(f64, u64)>,
    /// Evaluations since the best one.
    pub bad_evals: u64,
    /// Whether training ended (all steps done or early stop).
    pub finished: bool,
    /// Whether it ended by early stopping (a resume then has nothing to do, even
    /// with a larger step budget).
    #[serde(default)]
    pub stopped_early: bool,
}

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

/// Run-time options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// Draw progress bars on stderr (when it is a terminal).
    pub progress: bool,
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn load_options(config: &RunConfig) -> LoadOptions {
    LoadOptions { scheme: config.data.scheme, trees: config.data.trees || config.data.phrases, phrases: config.data.phrases }
}

fn open_dataset(config: &RunConfig) -> Result<Dataset> {
    Dataset::open(&config.data.dataset, &DataDir::from_flag(config.data.data_dir.clone()))
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
        TokenizerSource::File { path } => TextTokenizer::from_file(path),
        TokenizerSource::Model => match resolved_model(config)? {
            ModelConfig::Bert(b) => TextTokenizer::from_file(&b.path.join("tokenizer.json")),
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
    }
}

/// Appends one JSON line to `metrics.jsonl`.
fn log_line(run: &Path, value: serde_json::Value) -> Result<()> {
    let path = run.join("metrics.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
    writeln!(f, "{value}").map_err(io(&path))
}

fn save_checkpoint(run: &Path, model: &Model, stepper: &Stepper, state: &RunState) -> Result<()> {
    save_tensors(&run.join("model.safetensors"), &model.tensors())?;
    save_tensors(&run.join("optim.safetensors"), &stepper.state_tensors()?)?;
    // state.json last: it is what marks the checkpoint complete.
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    atomic_write(&run.join("state.json"), &json)
}

fn build_model(config: &RunConfig, vocab: usize, classes: usize, device: &Device) -> Result<Model> {
    resolved_model(config)?.build(vocab, classes, DType::F32, device, config.train.seed)
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

/// Loads what a run directory holds for evaluation or prediction: the setup and
/// the model with the best weights (or the last ones when there was no dev split).
pub fn load_run(run: &Path) -> Result<(Setup, Model)> {
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    let tokenizer = TextTokenizer::from_file(&run.join("tokenizer.json"))?;
    let labels_path = run.join("labels.json");
    let labels: Vec<String> = serde_json::from_slice(&std::fs::read(&labels_path).map_err(io(&labels_path))?)
        .map_err(|e| Error::Parse { path: labels_path.clone(), line: e.line(), msg: e.to_string() })?;
    let device = parse_device(&config.train.device).map_err(Error::Config)?.open()?;
    let model = build_model(&config, tokenizer.vocab_size(), labels.len(), &device)?;
    let best = run.join("best.safetensors");
    let weights = if best.exists() { best } else { run.join("model.safetensors") };
    model.load_weights(&weights)?;
    Ok((Setup { config, tokenizer, labels, device }, model))
}

/// Trains a classifier into `run` as `config` says (or resumes the run there).
/// `stop` is polled after every update (Ctrl-C sets it): the checkpoint is then
/// saved and [`Outcome::Interrupted`] returned.
pub fn train(config: &RunConfig, run: &Path, options: &TrainOptions, stop: &AtomicBool) -> Result<Outcome> {
    let config_path = run.join("config.toml");
    if options.resume {
        if !run.join("state.json").exists() {
            return Err(Error::Config(format!("--resume: {} holds no checkpoint (state.json)", run.display())));
        }
    } else if run.join("state.json").exists() {
        return Err(Error::Config(format!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            run.display()
        )));
    }
    std::fs::create_dir_all(run).map_err(io(run))?;
    let device = parse_device(&config.train.device).map_err(Error::Config)?.open()?;
    let dataset = open_dataset(config)?;
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
    if classes == 2 && matches!(objective, Objective::Cot | Objective::Gce { .. } | Objective::Hcot(_)) {
        eprintln!(
            "warning: {} has 2 classes: the complement entropy is identically 0 there (one wrong class has no spread), \
             so objective {} trains like {}",
            config.data.dataset,
            objective.name(),
            if matches!(objective, Objective::Gce { .. }) { "nothing at all (GCE's gradient is 0)" } else { "plain cross-entropy" }
        );
    }
    let model = build_model(config, tokenizer.vocab_size(), classes, &device)?;
    let vars: Vec<(String, candle_core::Var)> = {
        let data = model.varmap().data().lock().expect("VarMap lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut stepper = Stepper::new(objective, loss_config(config), vars, config.train.optimizer.clone())?;

    let t = &config.train;
    let batcher = Batcher::new(
        train_data.iter().map(|e| e.ids.len()).collect(),
        BatcherConfig { batch_size: t.batch_size, seed: t.seed, ..Default::default() },
    )?;
    let batches_per_epoch = batcher.epoch(0).len() as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(t.accumulate as u64).max(1);
    let total = t.max_steps.unwrap_or(t.epochs * steps_per_epoch);

    let mut state = if options.resume {
        let path = run.join("state.json");
        let state: RunState = serde_json::from_slice(&std::fs::read(&path).map_err(io(&path))?)
            .map_err(|e| Error::Parse { path: path.clone(), line: e.line(), msg: e.to_string() })?;
        model.load_weights(&run.join("model.safetensors"))?;
        stepper.load_state(&load_tensors(&run.join("optim.safetensors"))?)?;
        model.set_rng_state(state.rng_state);
        let mut state: RunState = state;
        // A finished run resumed with a larger budget (more epochs or max_steps)
        // continues; one that stopped early does not.
        if !state.stopped_early && state.step < total {
            state.finished = false;
        }
        state
    } else {
        let _ = std::fs::remove_file(run.join("metrics.jsonl"));
        RunState { step: 0, cursor: BatchCursor::default(), rng_state: model.rng_state(), best: None, bad_evals: 0, finished: false, stopped_early: false }
    };
    if state.finished {
        eprintln!(
            "{}: training already finished at step {}{}",
            run.display(),
            state.step,
            if state.stopped_early { " (early stop)" } else { "" }
        );
    }

    let bar = progress_bar(options.progress, total, state.step);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut batches = batcher.iter_from(state.cursor);
    let mut window = (0.0f64, 0usize, 0usize); // loss sum, correct, examples since last log
    let mut complement_sum = 0.0f64;
    let mut early_stop = false;
    while state.step < total && !early_stop && !state.finished {
        let mut micro = Vec::with_capacity(t.accumulate);
        let epoch = batches.cursor().epoch;
        for _ in 0..t.accumulate {
            // Keep a step inside one epoch so "every epoch" evaluations line up.
            if !micro.is_empty() && batches.cursor().epoch != epoch {
                break;
            }
            let Some(batch) = batches.next() else { break };
            let ((ids, mask), labels, tokens) = batch_tensors(&train_data, &batch.indices, pad, &device)?;
            tokens_seen += tokens;
            micro.push(((ids, mask, labels.clone()), labels));
        }
        if micro.is_empty() {
            return Err(Error::Config("the training split yields no batch".into()));
        }
        let lr = t.schedule.lr(t.optimizer.lr(), state.step, total);
        stepper.set_learning_rate(lr);
        let mut correct = 0usize;
        let mut seen = 0usize;
        let mut first_pass = true;
        let mut passes = 0usize;
        let report = stepper.step(&micro, |(ids, mask, labels)| {
            let logits = model.forward(ids, mask, true)?;
            passes += 1;
            if first_pass {
                let pred = logits.argmax(1)?.to_vec1::<u32>()?;
                let gold = labels.to_vec1::<u32>()?;
                correct += pred.iter().zip(&gold).filter(|(a, b)| a == b).count();
                seen += gold.len();
                if passes == micro.len() {
                    first_pass = false;
                }
            }
            Ok(logits)
        })?;
        let report = match report {
            Ok(r) => r,
            Err(bad) => {
                bar.finish_and_clear();
                return Err(Error::NonFinite {
                    step: state.step + 1,
                    what: format!("{} loss", bad.pass),
                    value: bad.value,
                    kept: run.to_path_buf(),
                });
            }
        };
        state.step += 1;
        state.cursor = batches.cursor();
        state.rng_state = model.rng_state();
        window.0 += report.loss;
        window.1 += correct;
        window.2 += seen;
        complement_sum += report.complement.unwrap_or(0.0);
        let tok_per_s = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(state.step);
        bar.set_message(format!(
            "loss {:.4} acc {:.3} {:.0} tok/s",
            report.loss,
            window.1 as f64 / window.2.max(1) as f64,
            tok_per_s
        ));
        if state.step % t.log_every == 0 || state.step == total {
            let n = (state.step - 1) % t.log_every + 1;
            let mut line = serde_json::json!({
                "step": state.step, "epoch": state.cursor.epoch, "lr": lr,
                "loss": window.0 / n as f64, "train_accuracy": window.1 as f64 / window.2.max(1) as f64,
                "tokens_per_s": tok_per_s, "elapsed_s": started.elapsed().as_secs_f64(),
            });
            if stepper.objective().alternates() {
                line["complement"] = serde_json::json!(complement_sum / n as f64);
            }
            log_line(run, line)?;
            window = (0.0, 0, 0);
            complement_sum = 0.0;
        }
        let epoch_end = state.cursor.epoch != epoch || batches.cursor().batch == 0;
        let eval_now = match t.eval_every {
            Some(every) => state.step % every == 0,
            None => epoch_end,
        } || state.step == total;
        if eval_now {
            if let Some(dev) = &dev {
                let (r, loss) = evaluate(&model, dev, pad, t.eval_batch_size, classes, &device)?;
                let value = metric_value(&r, t.metric);
                let better = state.best.is_none_or(|(b, _)| value > b);
                log_line(run, serde_json::json!({
                    "step": state.step, "epoch": state.cursor.epoch, "split": "dev", "loss": loss,
                    "accuracy": r.accuracy, "macro_f1": r.macro_f1, "best": better,
                }))?;
                bar.println(format!(
                    "step {:>6}  dev {} {:.4}  loss {:.4}{}",
                    state.step, t.metric.name(), value, loss, if better { "  (best)" } else { "" }
                ));
                if better {
                    state.best = Some((value, state.step));
                    state.bad_evals = 0;
                    save_tensors(&run.join("best.safetensors"), &model.tensors())?;
                } else {
                    state.bad_evals += 1;
                    if t.patience.is_some_and(|p| state.bad_evals >= p) {
                        bar.println(format!("early stop: no improvement in {} evaluations", state.bad_evals));
                        early_stop = true;
                    }
                }
            }
            state.stopped_early = early_stop;
            state.finished = early_stop || state.step >= total;
            save_checkpoint(run, &model, &stepper, &state)?;
        }
        if stop.load(Ordering::SeqCst) && !state.finished {
            save_checkpoint(run, &model, &stepper, &state)?;
            bar.finish_and_clear();
            return Ok(Outcome::Interrupted { steps: state.step });
        }
    }
    bar.finish_and_clear();
    if !state.finished {
        state.finished = true;
        save_checkpoint(run, &model, &stepper, &state)?;
    }
    let test_report = match &test {
        Some(test) => {
            if run.join("best.safetensors").exists() {
                model.load_weights(&run.join("best.safetensors"))?;
            }
            let (r, loss) = evaluate(&model, test, pad, t.eval_batch_size, classes, &device)?;
            log_line(run, serde_json::json!({
                "step": state.step, "split": config.data.test_split, "loss": loss,
                "accuracy": r.accuracy, "macro_f1": r.macro_f1,
            }))?;
            Some(r)
        }
        None => None,
    };
    Ok(Outcome::Finished { steps: state.step, best: state.best, test: test_report })
}

fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(at);
    bar
}

/// Path helper for callers: the default run directory for a config file.
pub fn default_run_dir(config_path: &Path, objective: ObjectiveKind, seed: u64) -> PathBuf {
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(format!("{stem}-{}-seed{seed}", serde_json::to_value(objective).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()))
}
