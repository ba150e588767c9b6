//! Training a text classifier: the classification [`Task`] for the shared loop
//! and the call that trains one run (with resume, evaluation, best checkpoint,
//! early stopping and `metrics.jsonl`).
//!
//! A run directory holds `config.toml` (the resolved config), `task.json`,
//! `tokenizer.json`, `labels.json`, `metrics.jsonl`, and the checkpoint:
//! `ckpt-<step>/` with the last weights, optimizer state and best weights, and
//! `state.json` pointing at it (see [`super::checkpoint`]). Every file is written
//! atomically.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};

use super::checkpoint::{self, atomic_write};
use super::config::{Metric, RunConfig};
use super::runner::{Evaluation, Task, TrainOptions};
use super::session;
use crate::error::{Error, Result};
use crate::infer::classify::evaluate;
use crate::metrics::ClassificationReport;
use crate::models::{Model, Trainable};
use crate::runlog::{self, EvalLine, LogLine};
use crate::task::classify::{
    batch_tensors, build_model, build_tokenizer, encode, load_options, load_split, open_dataset,
    Encoded,
};
use crate::task::{self, Outcome, TaskKind, TestScore};

fn metric_value(report: &ClassificationReport, metric: Metric) -> f64 {
    match metric {
        Metric::Accuracy => report.accuracy,
        Metric::MacroF1 => report.macro_f1,
        Metric::Bleu => unreachable!("rejected before training"),
    }
}

/// Trains a classifier into `run` as `config` says (or resumes the run there).
/// `stop` is polled after every update (Ctrl-C sets it): the checkpoint is then
/// saved and [`Outcome::Interrupted`] returned.
pub fn train(
    config: &RunConfig,
    run: &Path,
    options: &TrainOptions,
    stop: &AtomicBool,
) -> Result<Outcome> {
    let device = session::begin(config, TaskKind::Classification, run, options)?;
    let dataset = open_dataset(config, None)?;
    let labels = dataset.label_names(&load_options(config));
    let classes = labels.len();
    // HCOT's groups against the classes, before a tokenizer is trained.
    let objective = task::objective(config, Some(classes))?;
    let mut train_examples = load_split(&dataset, config, &config.data.train_split, None)?;
    // The dev hold-out is taken before the training limit so it does not depend on it.
    let dev_name = &config.data.dev_split;
    let holdout = match config.data.dev_holdout {
        Some(n) if dev_name.is_empty() || !dataset.has_split(dev_name) => {
            if n >= train_examples.len() {
                return Err(Error::Config(format!(
                    "data.dev_holdout ({n}) must be below the {} training examples",
                    train_examples.len()
                )));
            }
            let mut rng = crate::rng::SplitMix64::stream(config.train.seed, 0xDE7);
            rng.shuffle(&mut train_examples);
            let dev = train_examples.split_off(train_examples.len() - n);
            Some(task::subset(dev, config.data.eval_limit, config.train.seed))
        }
        _ => None,
    };
    let train_examples = task::subset(train_examples, config.data.train_limit, config.train.seed);
    if train_examples.is_empty() {
        return Err(Error::Config(format!(
            "the {} split of {} is empty",
            config.data.train_split, config.data.dataset
        )));
    }
    let tokenizer = session::tokenizer(
        config,
        run,
        options,
        || build_tokenizer(config, &train_examples),
        || {
            atomic_write(
                &run.join("labels.json"),
                &serde_json::to_vec(&labels).expect("labels serialize"),
            )
        },
    )?;
    let pad = tokenizer.pad_id();
    let train_data = encode(&tokenizer, config, &train_examples)?;
    let eval_split = |name: &str| -> Result<Option<Vec<Encoded>>> {
        if name.is_empty() || !dataset.has_split(name) {
            return Ok(None);
        }
        Ok(Some(encode(
            &tokenizer,
            config,
            &load_split(&dataset, config, name, config.data.eval_limit)?,
        )?))
    };
    let dev = match holdout {
        Some(examples) => Some(encode(&tokenizer, config, &examples)?),
        None => eval_split(&config.data.dev_split)?,
    };
    let test = eval_split(&config.data.test_split)?;

    if classes == 2 && objective.uses_complement() {
        eprintln!(
            "warning: {} has 2 classes: the complement entropy is identically 0 there (one wrong class has no spread), \
             so objective {} trains like {}",
            config.data.dataset,
            objective.name(),
            if matches!(objective, super::Objective::Gce { .. }) { "nothing at all (GCE's gradient is 0)" } else { "plain cross-entropy" }
        );
    }
    let model = build_model(config, tokenizer.vocab_size(), classes, &device)?;
    let loop_task = ClassifyTask {
        model: &model,
        train: &train_data,
        dev: dev.as_deref(),
        pad,
        classes,
        config,
        device: &device,
    };
    session::train(
        &loop_task,
        objective,
        task::loss_config(config, None),
        config,
        run,
        options,
        stop,
        |steps| {
            let Some(test) = &test else { return Ok(None) };
            checkpoint::load_inference_weights(run, &model)?;
            let (r, loss) = evaluate(
                &model,
                test,
                pad,
                config.train.eval_batch_size,
                classes,
                &device,
            )?;
            runlog::append(
                run,
                &LogLine::Eval(EvalLine {
                    step: steps,
                    split: config.data.test_split.clone(),
                    loss: Some(loss),
                    accuracy: r.accuracy,
                    macro_f1: Some(r.macro_f1),
                    ..EvalLine::default()
                }),
            )?;
            Ok(Some(TestScore::Classification(r)))
        },
    )
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

    fn evaluate(&self) -> Result<Option<Evaluation>> {
        let Some(dev) = self.dev else { return Ok(None) };
        let (r, loss) = evaluate(
            self.model,
            dev,
            self.pad,
            self.config.train.eval_batch_size,
            self.classes,
            self.device,
        )?;
        Ok(Some(Evaluation {
            value: metric_value(&r, self.config.train.metric),
            line: EvalLine {
                loss: Some(loss),
                accuracy: r.accuracy,
                macro_f1: Some(r.macro_f1),
                ..EvalLine::default()
            },
            summary: format!("loss {loss:.4}"),
        }))
    }

    fn model(&self) -> &dyn Trainable {
        self.model
    }
}
