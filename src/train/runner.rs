//! The training loop every task shares (classification and translation): batching
//! with a resumable cursor, the [`Stepper`] (CE, COT, GCE, HCOT), the learning-rate
//! schedule, progress bars, `metrics.jsonl`, evaluation every epoch or N updates,
//! the best checkpoint, early stopping, NaN/Inf guard, Ctrl-C and exact resume.
//!
//! A task supplies what differs through [`Task`]: how a batch becomes tensors, the
//! model's forward pass, its weights, and a dev evaluation. Everything a run writes
//! here is atomic: the checkpoint (weights, optimizer state, best weights and
//! `state.json`) is switched as one unit by [`checkpoint::save`], and each
//! `metrics.jsonl` line is appended with a single write (a torn last line left by a
//! kill is dropped on resume).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, BestWeights, Checkpoint};
use super::config::{RunConfig, TrainSettings};
pub use super::step::count_correct;
use super::step::{Head, Stepper};
use crate::data::{BatchCursor, Batcher, BatcherConfig};
use crate::error::{Error, Result};
use crate::fsio::atomic_write;
use crate::models::Trainable;
use crate::runlog::{EvalLine, LogLine, TrainLine};

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

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoopEnd {
    /// All steps done, or stopped early by patience.
    Finished {
        /// Updates made.
        steps: u64,
        /// Best dev metric and its step, if there was a dev evaluation.
        best: Option<(f64, u64)>,
    },
    /// Ctrl-C: the checkpoint was saved at this step.
    Interrupted {
        /// Updates made.
        steps: u64,
    },
}

/// One dev evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The value of the selection metric (higher is better).
    pub value: f64,
    /// The line written to `metrics.jsonl`: the task fills in the scores; the
    /// loop sets step, epoch, split and best.
    pub line: EvalLine,
    /// A short human-readable summary for the progress output (may be empty).
    pub summary: String,
}

/// What differs between tasks. The loop owns the order of everything else.
pub trait Task {
    /// The model input of one micro-batch (e.g. ids and mask, or source and target).
    type Input;
    /// The name of the selection metric, as logged (e.g. `accuracy`, `bleu`).
    fn metric_name(&self) -> &'static str;
    /// Lengths (in tokens) of the training examples, for length-bucketed batches.
    fn train_lengths(&self) -> Vec<usize>;
    /// The input, targets (`[N]` classes or `[B, T]` token ids) and token count of
    /// the training examples at `indices`.
    fn batch(&self, indices: &[usize]) -> Result<(Self::Input, Tensor, usize)>;
    /// The model's forward pass: logits `[N, K]` or `[B, T, V]`.
    fn forward(&self, input: &Self::Input, train: bool) -> candle_core::Result<Tensor>;

    /// The training forward pass as the loss takes it: by default the logits of
    /// [`Task::forward`]; a task can hand over its hidden states and output layer
    /// instead ([`Head::Projected`]) to train on a large vocabulary without them.
    fn train_head(&self, input: &Self::Input) -> candle_core::Result<Head> {
        self.forward(input, true).map(Head::Logits)
    }
    /// Evaluates on the dev split (`None` when there is none).
    fn evaluate(&self) -> Result<Option<Evaluation>>;
    /// The model being trained.
    fn model(&self) -> &dyn Trainable;
    /// Every trainable variable, by name.
    fn vars(&self) -> Vec<(String, Var)> {
        self.model().vars()
    }
    /// The weights to save, by name.
    fn weights(&self) -> HashMap<String, Tensor> {
        self.model().tensors()
    }
    /// Loads saved weights.
    fn load_weights(&self, path: &Path) -> Result<()> {
        self.model().load_weights(path)
    }
    /// The dropout RNG's state.
    fn rng_state(&self) -> u64 {
        self.model().rng_state()
    }
    /// Restores the dropout RNG's state.
    fn set_rng_state(&self, state: u64) {
        self.model().set_rng_state(state)
    }
}

/// Run-time options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// Draw progress bars on stderr (when it is a terminal).
    pub progress: bool,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file that marks a folder as a cotext run from the moment it is set up,
/// before its first checkpoint: such a folder may be started over, as it holds
/// nothing but what cotext wrote.
pub const RUN_MARKER: &str = ".cotext-run";

/// Checks that `run` can hold a fresh run or, with `resume`, that it holds one,
/// and sets it up. A fresh run needs a new or empty folder, or one a cotext run
/// was started in and never checkpointed; a folder with anything else in it
/// (the user's files) is refused, so nothing that is not ours is overwritten.
pub fn prepare_run_dir(run: &Path, resume: bool) -> Result<()> {
    let state = run.join(checkpoint::STATE);
    if resume {
        if !state.exists() {
            return Err(Error::Run {
                path: run.to_path_buf(),
                msg: "--resume: no checkpoint here (state.json)".into(),
            });
        }
        return Ok(());
    }
    if state.exists() {
        return Err(Error::Run {
            path: run.to_path_buf(),
            msg: "already holds a run; pass --resume to continue it or choose another --out".into(),
        });
    }
    if run.exists() && !run.join(RUN_MARKER).exists() {
        let entries = std::fs::read_dir(run).map_err(io(run))?;
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() {
            names.sort();
            names.truncate(3);
            return Err(Error::Run {
                path: run.to_path_buf(),
                msg: format!(
                    "not empty (it holds {}) and not a cotext run (no state.json): choose a new or empty folder for --out",
                    names.join(", ")
                ),
            });
        }
    }
    std::fs::create_dir_all(run).map_err(io(run))?;
    atomic_write(&run.join(RUN_MARKER), b"a cotext run directory\n")
}

/// After a fresh run failed: removes what it wrote, provided it never reached a
/// checkpoint and the folder is one [`prepare_run_dir`] set up (it holds only
/// cotext's files then). `existed` says whether the folder was there before; if
/// it was, it is emptied but kept. Errors are ignored: this is cleanup.
pub fn discard_unstarted(run: &Path, existed: bool) {
    if run.join(checkpoint::STATE).exists() || !run.join(RUN_MARKER).exists() {
        return;
    }
    if !existed {
        let _ = std::fs::remove_dir_all(run);
        return;
    }
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Config keys that a resumed run may change: how long to train, where and how
/// fast, and how to report. Everything else shapes the model, the data or the
/// updates, and must match the checkpoint.
const RESUMABLE_KEYS: &[&str] = &[
    "train.epochs",
    "train.max_steps",
    "train.patience",
    "train.device",
    "train.precision",
    "train.eval_batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "data.data_dir",
    "decode",
];

/// Whether a resume may change config key `key` (a flattened key such as
/// `train.epochs` or `decode.beam`).
pub fn is_resumable_key(key: &str) -> bool {
    RESUMABLE_KEYS.iter().any(|k| {
        key == *k
            || key
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// One key whose value differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// The flattened key, e.g. `train.optimizer.lr`.
    pub key: String,
    /// Its value (TOML) in the first config, `None` when unset there.
    pub before: Option<String>,
    /// Its value (TOML) in the second config, `None` when unset there.
    pub after: Option<String>,
}

impl std::fmt::Display for ConfigDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
        write!(
            f,
            "{} {} → {}",
            self.key,
            show(&self.before),
            show(&self.after)
        )
    }
}

/// Every key (flattened, sorted) whose value differs between `before` and `after`.
pub fn config_differences(before: &RunConfig, after: &RunConfig) -> Vec<ConfigDifference> {
    let flat = |c: &RunConfig| {
        let mut out = std::collections::BTreeMap::new();
        let value = toml::Value::try_from(c).expect("a config always serializes");
        flatten_toml("", &value, &mut out);
        out
    };
    let (a, b) = (flat(before), flat(after));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| ConfigDifference {
            key: k.clone(),
            before: a.get(k).cloned(),
            after: b.get(k).cloned(),
        })
        .collect()
}

/// Checks, before anything is written, that `resumed` (the run's saved config
/// with the new overrides) changes only keys a resume may change; the error names
/// the first key that differs, with both values.
pub fn check_resume_config(saved: &RunConfig, resumed: &RunConfig) -> Result<()> {
    if let Some(d) = config_differences(saved, resumed)
        .into_iter()
        .find(|d| !is_resumable_key(&d.key))
    {
        let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
        return Err(Error::Config(format!(
            "--resume: {} is {} in the checkpoint's config.toml and cannot change to {} (a resume may change only {})",
            d.key,
            show(d.before),
            show(d.after),
            RESUMABLE_KEYS.join(", ")
        )));
    }
    Ok(())
}

/// Refuses a resume whose training budget (`train.epochs`, `train.max_steps`)
/// is below what the run has already trained (`state`): those updates cannot be
/// undone, and the saved config would then understate them. A run that stopped
/// early may take any budget (it does not train again). `None` when the budget
/// is fine, else what is wrong.
pub fn budget_below_trained(
    saved: &RunConfig,
    wanted: &RunConfig,
    state: &RunState,
) -> Option<String> {
    if state.stopped_early {
        return None;
    }
    let below = match (wanted.train.max_steps, saved.train.max_steps) {
        (Some(n), _) => n < state.step,
        (None, None) => {
            wanted.train.epochs < saved.train.epochs && state.cursor.epoch >= wanted.train.epochs
        }
        (None, Some(_)) => false,
    };
    below.then(|| {
        format!(
            "the run has trained {} steps (epoch {}), more than the training budget asked for (train.epochs {}, train.max_steps {}), and a resume cannot undo updates",
            state.step,
            state.cursor.epoch,
            wanted.train.epochs,
            wanted.train.max_steps.map_or("unset".into(), |n| n.to_string())
        )
    })
}

fn flatten_toml(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_toml(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn save_checkpoint<T: Task>(
    run: &Path,
    task: &T,
    stepper: &Stepper,
    state: &RunState,
    live: &mut Option<Checkpoint>,
) -> Result<()> {
    // best.safetensors is the model of the step that set the best dev metric.
    let best = match state.best {
        None => BestWeights::None,
        Some((_, step)) if step == state.step => BestWeights::Current,
        Some(_) => BestWeights::Previous,
    };
    let saved = checkpoint::save(
        run,
        state,
        &task.weights(),
        &stepper.state_tensors()?,
        best,
        live.as_ref(),
    )?;
    *live = Some(saved);
    Ok(())
}

/// Trains `task` with `stepper` into `run` as `settings` say, or resumes the run
/// there (`options.resume`). `stop` is polled after every update (Ctrl-C sets it):
/// the checkpoint is then saved and [`LoopEnd::Interrupted`] returned. On a fresh
/// run `metrics.jsonl` is started anew.
pub fn run<T: Task>(
    task: &T,
    stepper: &mut Stepper,
    settings: &TrainSettings,
    run: &Path,
    options: &TrainOptions,
    stop: &AtomicBool,
) -> Result<LoopEnd> {
    let t = settings;
    let batcher = Batcher::new(
        task.train_lengths(),
        BatcherConfig {
            batch_size: t.batch_size,
            seed: t.seed,
            ..Default::default()
        },
    )?;
    let batches_per_epoch = batcher.epoch(0).len() as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(t.accumulate as u64).max(1);
    let total = t.max_steps.unwrap_or(t.epochs * steps_per_epoch);

    let mut live = None;
    let mut state = if options.resume {
        let ckpt = Checkpoint::read(run)?.ok_or_else(|| Error::Run {
            path: run.to_path_buf(),
            msg: "--resume: no checkpoint here (state.json)".into(),
        })?;
        if ckpt.reference.is_none() {
            eprintln!("note: {} was saved by an older cotext without checksums: its checkpoint cannot be verified", run.display());
        }
        // Every file is checked against state.json before any is used.
        let model = ckpt.verify(checkpoint::MODEL)?;
        let optim = ckpt.verify(checkpoint::OPTIM)?;
        if ckpt.has(checkpoint::BEST) {
            ckpt.verify(checkpoint::BEST)?;
        }
        checkpoint::load_weights_checked(&model, task.model())?;
        // Optimizer state of another kind or model is refused here too, for a
        // checkpoint whose config.toml was edited by hand.
        stepper
            .load_state(&checkpoint::load_tensors(&optim)?)
            .map_err(|e| Error::Checkpoint {
                path: optim.clone(),
                msg: format!("cannot resume from this optimizer state: {e}"),
            })?;
        let mut state = ckpt.state.clone();
        if state.cursor.batch > batches_per_epoch as usize {
            return Err(Error::InvalidFile {
                path: run.join(checkpoint::STATE),
                msg: format!(
                    "the data cursor is at batch {} of epoch {}, but an epoch here has only {batches_per_epoch} batches \
                     (the training data or batching changed since the checkpoint)",
                    state.cursor.batch, state.cursor.epoch
                ),
            });
        }
        task.set_rng_state(state.rng_state);
        checkpoint::remove_stale(run, false);
        crate::runlog::drop_torn_last_line(run)?;
        live = Some(ckpt);
        // A finished run resumed with a larger budget (more epochs or max_steps)
        // continues; one that stopped early does not.
        if !state.stopped_early && state.step < total {
            state.finished = false;
        }
        state
    } else {
        let _ = std::fs::remove_file(run.join("metrics.jsonl"));
        RunState {
            step: 0,
            cursor: BatchCursor::default(),
            rng_state: task.rng_state(),
            best: None,
            bad_evals: 0,
            finished: false,
            stopped_early: false,
        }
    };
    if state.finished {
        eprintln!(
            "{}: training already finished at step {}{}",
            run.display(),
            state.step,
            if state.stopped_early {
                " (early stop)"
            } else {
                ""
            }
        );
    }

    let bar = progress_bar(options.progress, total, state.step);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut batches = batcher.iter_from(state.cursor);
    // Loss sum, correct, counted and updates since the last log line (a resumed run
    // starts an empty window, whatever its step).
    let mut window = (0.0f64, 0usize, 0usize, 0usize);
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
            let (input, targets, tokens) = task.batch(&batch.indices)?;
            tokens_seen += tokens;
            micro.push((input, targets));
        }
        if micro.is_empty() {
            return Err(Error::Config("the training split yields no batch".into()));
        }
        let lr = t.schedule.lr(t.optimizer.lr(), state.step, total);
        stepper.set_learning_rate(lr);
        let report = stepper.step(&micro, |input| task.train_head(input))?;
        let report = match report {
            Ok(r) => r,
            Err(bad) => {
                bar.finish_and_clear();
                let kept = live.as_ref().map(|_| run.to_path_buf());
                return Err(Error::NonFinite {
                    step: state.step + 1,
                    what: format!("{} loss", bad.pass),
                    value: bad.value,
                    kept,
                });
            }
        };
        state.step += 1;
        state.cursor = batches.cursor();
        state.rng_state = task.rng_state();
        window.0 += report.loss;
        window.1 += report.correct;
        window.2 += report.count;
        window.3 += 1;
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
            let n = window.3.max(1);
            crate::runlog::append(
                run,
                &LogLine::Train(TrainLine {
                    step: state.step,
                    epoch: state.cursor.epoch,
                    lr,
                    loss: Some(window.0 / n as f64),
                    train_accuracy: window.1 as f64 / window.2.max(1) as f64,
                    complement: stepper
                        .objective()
                        .reports_complement()
                        .then(|| complement_sum / n as f64),
                    tokens_per_s: tok_per_s,
                    elapsed_s: started.elapsed().as_secs_f64(),
                }),
            )?;
            if options.progress && bar.is_hidden() {
                eprintln!(
                    "step {:>6}/{total}  loss {:.4}  acc {:.3}  {:.0} tok/s  {:.0} s",
                    state.step,
                    window.0 / n as f64,
                    window.1 as f64 / window.2.max(1) as f64,
                    tok_per_s,
                    started.elapsed().as_secs_f64()
                );
            }
            window = (0.0, 0, 0, 0);
            complement_sum = 0.0;
        }
        let epoch_end = state.cursor.epoch != epoch || batches.cursor().batch == 0;
        let eval_now = match t.eval_every {
            Some(every) => state.step % every == 0,
            None => epoch_end,
        } || state.step == total;
        if eval_now {
            if let Some(eval) = task.evaluate()? {
                let better = state.best.is_none_or(|(b, _)| eval.value > b);
                let mut line = eval.line.clone();
                (line.step, line.epoch, line.split, line.best) = (
                    state.step,
                    Some(state.cursor.epoch),
                    "dev".into(),
                    Some(better),
                );
                crate::runlog::append(run, &LogLine::Eval(line))?;
                bar.println(format!(
                    "step {:>6}  dev {} {:.4}{}{}",
                    state.step,
                    task.metric_name(),
                    eval.value,
                    if eval.summary.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", eval.summary)
                    },
                    if better { "  (best)" } else { "" }
                ));
                if bar.is_hidden() && options.progress {
                    eprintln!(
                        "step {:>6}  dev {} {:.4}{}",
                        state.step,
                        task.metric_name(),
                        eval.value,
                        if better { "  (best)" } else { "" }
                    );
                }
                if better {
                    state.best = Some((eval.value, state.step));
                    state.bad_evals = 0;
                } else {
                    state.bad_evals += 1;
                    if t.patience.is_some_and(|p| state.bad_evals >= p) {
                        bar.println(format!(
                            "early stop: no improvement in {} evaluations",
                            state.bad_evals
                        ));
                        early_stop = true;
                    }
                }
            }
            state.stopped_early = early_stop;
            state.finished = early_stop || state.step >= total;
            save_checkpoint(run, task, stepper, &state, &mut live)?;
        } else if t
            .checkpoint_every
            .is_some_and(|every| state.step % every == 0)
        {
            save_checkpoint(run, task, stepper, &state, &mut live)?;
        }
        if stop.load(Ordering::SeqCst) && !state.finished {
            save_checkpoint(run, task, stepper, &state, &mut live)?;
            bar.finish_and_clear();
            return Ok(LoopEnd::Interrupted { steps: state.step });
        }
    }
    bar.finish_and_clear();
    if !state.finished {
        state.finished = true;
        save_checkpoint(run, task, stepper, &state, &mut live)?;
    }
    Ok(LoopEnd::Finished {
        steps: state.step,
        best: state.best,
    })
}

/// A progress bar on stderr when `show` and stderr is a terminal (hidden
/// otherwise; the loop then prints a line per log interval instead).
fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(at);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn count_correct_skips_ignored_targets() {
        let logits = Tensor::new(
            &[
                [[0f32, 1.0, 0.0], [2.0, 0.0, 0.0]],
                [[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let targets = Tensor::new(&[[1u32, 1], [2, 0]], &Device::Cpu).unwrap();
        assert_eq!(count_correct(&logits, &targets, None).unwrap(), (3, 4));
        assert_eq!(count_correct(&logits, &targets, Some(0)).unwrap(), (2, 3));
        let flat = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(
            count_correct(&flat, &Tensor::new(&[1u32, 1], &Device::Cpu).unwrap(), None).unwrap(),
            (1, 2)
        );
    }
}
