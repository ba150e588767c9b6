//! Training: optimizers with saveable state, learning-rate schedules, gradient
//! clipping, and atomic checkpoint files. This room owns the update rules and what
//! a run writes to disk; how batches are read and models built is
//! [`crate::task`]'s, which [`classify`] and [`translate`] wire into the shared
//! loop ([`runner`]); [`train`] picks the one the config's task needs.

mod blame;
pub mod checkpoint;
pub mod classify;
mod config;
mod optim;
pub mod runner;
mod schedule;
mod session;
mod step;
pub mod translate;

/// The memory estimate moved to [`crate::models::memory`]; kept here for callers.
pub use crate::models::memory;
pub use config::{
    parse_device, run_device, DataConfig, DecodeSettings, DeviceSpec, Metric, Precision, RunConfig,
    TokenizerSource, TrainSettings,
};
pub use optim::{clip_grad_norm, Optimizer, OptimizerConfig};
pub use schedule::Schedule;
pub use step::{
    count_correct, ComplementLrScale, Head, LossConfig, NonFinite, Objective, ObjectiveKind,
    StepReport, Stepper,
};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::task::{Outcome, TaskKind};

/// Trains the run `config` describes into `run`, or resumes it there: a
/// classifier or a translator, as its data set's task says
/// ([`TaskKind::of_config`]). `stop` is polled after every update (Ctrl-C sets
/// it): the checkpoint is then saved and [`Outcome::Interrupted`] returned.
///
/// # Errors
/// The config's, the data's and the run directory's errors; see the task's
/// `train`.
pub fn train(
    config: &RunConfig,
    run: &Path,
    options: &runner::TrainOptions,
    stop: &AtomicBool,
) -> crate::Result<Outcome> {
    match TaskKind::of_config(config)? {
        TaskKind::Classification => classify::train(config, run, options, stop),
        TaskKind::Translation => translate::train(config, run, options, stop),
    }
}
