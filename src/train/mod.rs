//! Training: optimizers with saveable state, learning-rate schedules, gradient
//! clipping, and atomic checkpoint files. This room owns the update rules and what
//! a run writes to disk; it must not know how batches are read or models built.

mod blame;
pub mod checkpoint;
pub mod classify;
mod config;
pub mod memory;
mod optim;
pub mod runner;
mod schedule;
mod step;
pub mod translate;

pub use config::{parse_device, run_device, DataConfig, DecodeSettings, DeviceSpec, Metric, Precision, RunConfig, TokenizerSource, TrainSettings};
pub use optim::{clip_grad_norm, Optimizer, OptimizerConfig};
pub use schedule::Schedule;
pub use step::{ComplementLrScale, LossConfig, NonFinite, Objective, ObjectiveKind, StepReport, Stepper};
