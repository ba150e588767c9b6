//! `cotext compare` (every objective × seed as a normal run, then `report.md`,
//! `summary.json` and plots) and `cotext plot` (one run's curves).
//!
//! `compare` runs in four steps, one module each: [`plan`] (the arguments
//! checked into runs, every objective checked against the data),
//! [`execute`] (train what is missing or unfinished, resume what may be
//! extended, refuse what was trained otherwise), [`aggregate`] (read every run
//! back) and [`render`] (plots, `summary.json`, `report.md`); [`attack`] adds
//! the robustness columns of `--attack`.

mod aggregate;
mod attack;
mod execute;
mod plan;
mod render;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use cotext::report::{self, RunMetrics};
use cotext::train::{Metric, ObjectiveKind, Precision, RunConfig};

/// Arguments of `cotext compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The TOML config every run starts from (its objective and seed are overridden).
    #[arg(long, short)]
    config: PathBuf,
    /// Objectives to compare, comma-separated: ce, cot, gce, hcot, cot-joint.
    #[arg(long, default_value = "ce,cot", value_name = "LIST")]
    objectives: String,
    /// Seeds per objective.
    #[arg(long, default_value_t = 3, value_name = "N")]
    seeds: u64,
    /// The first seed: the runs use seeds S, S+1, …, S+N−1.
    #[arg(long, default_value_t = 1, value_name = "S")]
    first_seed: u64,
    /// Output folder: one run directory per objective and seed, and the report.
    /// Default: runs/compare-<config name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a config key for every run, e.g. `--set train.max_steps=500` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Folder with local copies of the data sets (overrides data.data_dir; as COTEXT_DATA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Runs trained at the same time, each as its own `cotext train` process with
    /// its output in `<out>/<objective>-seed<N>.log`. Each gets RAYON_NUM_THREADS =
    /// cores / jobs (at least 1) unless RAYON_NUM_THREADS is set already.
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Device for every run: cpu, cuda, cuda:N or metal (overrides train.device).
    #[arg(long)]
    device: Option<String>,
    /// Compute precision for every run: f32, bf16 or f16 (overrides train.precision).
    #[arg(long)]
    precision: Option<Precision>,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
    /// Robustness columns and robustness.png: METHOD:LIST, e.g. fgsm:0.01,0.05,0.1,
    /// pgd:0.1 or hotflip:1,2 (repeatable; classification only).
    #[arg(long = "attack", value_name = "SPEC")]
    attack: Vec<String>,
}

/// Arguments of `cotext plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run directory written by `cotext train` (or one of `compare`'s).
    #[arg(long)]
    run: PathBuf,
    /// The PNG to write. Default: <run>/curves.png.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn name(objective: ObjectiveKind) -> String {
    objective.name().to_string()
}

fn user_error(msg: String) -> anyhow::Error {
    cotext::Error::Config(msg).into()
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(cotext::fsio::atomic_write(path, bytes)?)
}

/// `cotext compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let plan = plan::Plan::from_args(args)?;
    let task = plan.check()?;
    let stop = super::install_ctrlc();
    let started = Instant::now();
    execute::execute(&plan, &stop)?;
    let first = plan.config(plan.objectives[0], plan.seeds[0])?;
    // One device for the whole process: the in-process runs above got this same
    // object (DeviceSpec::open hands out one per spec), and the report loads every
    // run on it (Metal and CUDA tensors cannot meet across device objects).
    let device = cotext::train::parse_device(&first.train.device)
        .map_err(user_error)?
        .open()?;
    let all = aggregate::aggregate(&plan, task, &device)?;
    render::render(&plan, task, &first, all, started, &device)
}

/// `cotext plot`.
pub fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let metrics = RunMetrics::read(&args.run.join("metrics.jsonl"))?;
    let metric = RunConfig::load(&args.run.join("config.toml"), &[])
        .map(|c| c.train.metric)
        .unwrap_or(Metric::Accuracy);
    let out = args.out.unwrap_or_else(|| args.run.join("curves.png"));
    let title = args
        .run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.run.display().to_string());
    report::draw_curves(&out, &title, &report::run_panels(&metrics, metric))?;
    println!("{}", out.display());
    Ok(())
}
