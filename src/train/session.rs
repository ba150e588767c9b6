//! What every training call does around the loop, whatever its task: set up the
//! run directory, the device and the tokenizer in order, and after the loop
//! score the test split into one [`Outcome`].

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::Device;

use super::checkpoint::atomic_write;
use super::config::{parse_device, RunConfig};
use super::runner::{self, LoopEnd, Task, TrainOptions};
use super::step::{LossConfig, Objective, Stepper};
use crate::error::{Error, Result};
use crate::task::{Outcome, TaskKind, TestScore};
use crate::tokenize::TextTokenizer;

/// Checks the config across its sections ([`TaskKind::check_config`]), sets up `run` (fresh: a new or empty
/// folder, its task recorded; resumed: one holding a checkpoint) and opens the
/// device.
pub(crate) fn begin(
    config: &RunConfig,
    task: TaskKind,
    run: &Path,
    options: &TrainOptions,
) -> Result<Device> {
    task.check_config(config)?;
    runner::prepare_run_dir(run, options.resume)?;
    if !options.resume {
        task.record(run)?;
    }
    parse_device(&config.train.device)
        .map_err(Error::Config)?
        .open()
}

/// The run's tokenizer: a resumed run's saved one, or for a fresh run the one
/// `build` makes, saved with whatever `save_more` writes beside it (the
/// classes). The config is then written as it is run (a resume may have
/// changed its resumable keys).
pub(crate) fn tokenizer(
    config: &RunConfig,
    run: &Path,
    options: &TrainOptions,
    build: impl FnOnce() -> Result<TextTokenizer>,
    save_more: impl FnOnce() -> Result<()>,
) -> Result<TextTokenizer> {
    let tokenizer = if options.resume {
        TextTokenizer::from_file(&run.join("tokenizer.json"))?
    } else {
        let t = build()?;
        t.save(&run.join("tokenizer.json"))?;
        save_more()?;
        t
    };
    atomic_write(&run.join("config.toml"), config.to_toml().as_bytes())?;
    Ok(tokenizer)
}

/// Trains `task` through the shared loop with `objective` and `loss`, then,
/// unless interrupted, scores the test split with `test(steps)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train<T: Task>(
    task: &T,
    objective: Objective,
    loss: LossConfig,
    config: &RunConfig,
    run: &Path,
    options: &TrainOptions,
    stop: &AtomicBool,
    test: impl FnOnce(u64) -> Result<Option<TestScore>>,
) -> Result<Outcome> {
    let mut stepper = Stepper::new(objective, loss, task.vars(), config.train.optimizer.clone())?
        .with_complement_lr_scale(config.train.complement_lr_scale);
    match runner::run(task, &mut stepper, &config.train, run, options, stop)? {
        LoopEnd::Interrupted { steps } => Ok(Outcome::Interrupted { steps }),
        LoopEnd::Finished { steps, best } => Ok(Outcome::Finished {
            steps,
            best,
            test: test(steps)?,
        }),
    }
}
