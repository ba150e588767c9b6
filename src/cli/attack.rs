//! `cotext attack`: accuracy of a trained classification run under FGSM, PGD or
//! HotFlip.

use std::path::PathBuf;

use clap::Args;
use cotext::attack::{self, AttackOptions, AttackResult, Method, Norm};
use cotext::infer;
use cotext::task::{self, TaskKind};

use super::data::ColumnArgs;
use super::train::{labelled_data, Format};

/// Arguments of `cotext attack`.
#[derive(Debug, Args)]
pub struct AttackArgs {
    /// A classification run directory written by `cotext train`.
    #[arg(long)]
    run: PathBuf,
    /// Split to attack. Default: the run's test split.
    #[arg(long)]
    split: Option<String>,
    /// Attack another data set instead of the run's: a card name, a card
    /// (.toml), or a data file (.tsv, .csv, .jsonl; the file is the split), as
    /// `cotext eval --data`.
    #[arg(long)]
    data: Option<String>,
    /// Folder with local copies of data sets (as COTEXT_DATA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// The attack: fgsm or pgd on the input embeddings, hotflip on the tokens.
    #[arg(long, value_enum)]
    method: MethodArg,
    /// FGSM/PGD budgets, comma-separated: ε relative to the batch's mean
    /// token-embedding L2 norm (0.1 = a tenth of a typical embedding's length).
    /// Default 0.01,0.05,0.1.
    #[arg(long, value_name = "LIST")]
    eps: Option<String>,
    /// HotFlip budgets, comma-separated: the most tokens replaced per example.
    /// Default 1,2.
    #[arg(long, value_name = "LIST")]
    flips: Option<String>,
    /// PGD steps. Default 10.
    #[arg(long)]
    steps: Option<usize>,
    /// PGD step size as a fraction of ε. Default 2.5/steps.
    #[arg(long)]
    step_size: Option<f64>,
    /// The ball for FGSM/PGD: linf (each coordinate by ε·r/√D) or l2 (each token by ε·r).
    #[arg(long, value_enum, default_value = "linf")]
    norm: NormArg,
    /// Attack a seeded random subset of this many examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of PGD's random starts and of --limit's subset. Default: the run's train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Examples per batch. Default: the run's train.eval_batch_size (as `cotext eval`).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    Fgsm,
    Pgd,
    Hotflip,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NormArg {
    Linf,
    L2,
}

fn bad(msg: String) -> anyhow::Error {
    cotext::Error::Config(msg).into()
}

/// Parses `--eps`/`--flips`: comma-separated, finite, `>= 0`, whole numbers for
/// `--flips`.
fn parse_budgets(flag: &str, list: &str, whole: bool) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let value: f64 = item.parse().map_err(|_| {
            bad(format!(
                "{flag}: {item:?} is not a number (expected e.g. {flag} {})",
                if whole { "1,2" } else { "0.01,0.05,0.1" }
            ))
        })?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad(format!("{flag}: {item:?} must be finite and >= 0")));
        }
        if whole && value.fract() != 0.0 {
            return Err(bad(format!(
                "{flag}: {item:?} is not a whole number of flips"
            )));
        }
        out.push(value);
    }
    Ok(out)
}

/// The validated options, before anything is loaded.
fn options(args: &AttackArgs, seed: u64, batch_size: usize) -> anyhow::Result<AttackOptions> {
    let method = match args.method {
        MethodArg::Fgsm => Method::Fgsm,
        MethodArg::Pgd => Method::Pgd,
        MethodArg::Hotflip => Method::Hotflip,
    };
    let budgets = match method {
        Method::Hotflip => {
            if args.eps.is_some() {
                return Err(bad(
                    "--eps is for fgsm and pgd; hotflip's budget is --flips K".into(),
                ));
            }
            parse_budgets("--flips", args.flips.as_deref().unwrap_or("1,2"), true)?
        }
        _ => {
            if args.flips.is_some() {
                return Err(bad(format!(
                    "--flips is for hotflip; {}'s budget is --eps",
                    method.name()
                )));
            }
            parse_budgets(
                "--eps",
                args.eps.as_deref().unwrap_or("0.01,0.05,0.1"),
                false,
            )?
        }
    };
    if method != Method::Pgd && (args.steps.is_some() || args.step_size.is_some()) {
        return Err(bad("--steps and --step-size are for pgd".into()));
    }
    let steps = args.steps.unwrap_or(10);
    if steps == 0 {
        return Err(bad("--steps must be >= 1".into()));
    }
    let step_size = args.step_size.unwrap_or(2.5 / steps as f64);
    if !(step_size.is_finite() && step_size > 0.0) {
        return Err(bad(format!(
            "--step-size must be a finite number > 0 (got {step_size})"
        )));
    }
    if batch_size == 0 {
        return Err(bad("--batch-size must be >= 1".into()));
    }
    if args.limit == Some(0) {
        return Err(bad("--limit must be >= 1".into()));
    }
    let norm = match args.norm {
        NormArg::Linf => Norm::Linf,
        NormArg::L2 => Norm::L2,
    };
    Ok(AttackOptions {
        method,
        budgets,
        norm,
        steps,
        step_size,
        seed,
        batch_size,
        allowed: Vec::new(),
    })
}

/// `cotext attack`.
pub fn run(args: AttackArgs) -> anyhow::Result<()> {
    // Flags that need no run are checked first, so a typo fails fast.
    options(&args, 0, 1)?;
    if TaskKind::of_run(&args.run)? == TaskKind::Translation {
        return Err(bad(format!(
            "{} is a translation run; cotext attack needs a classification run",
            args.run.display()
        )));
    }
    let (setup, model) =
        infer::classify::load_run(&args.run, &cotext::train::run_device(&args.run)?)?;
    let mut config = setup.config.clone();
    if args.data_dir.is_some() {
        config.data.data_dir = args.data_dir.clone();
    }
    let seed = args.seed.unwrap_or(config.train.seed);
    config.train.seed = seed;
    let mut options = options(
        &args,
        seed,
        args.batch_size.unwrap_or(config.train.eval_batch_size),
    )?;
    options.allowed = attack::hotflip_candidates(&setup.tokenizer);
    let split = args
        .split
        .clone()
        .unwrap_or_else(|| config.data.test_split.clone());
    let dataset = labelled_data(
        args.data.as_deref(),
        &args.columns,
        &split,
        &args.run,
        &setup.labels,
        &mut config,
    )?;
    let examples = task::classify::load_split(&dataset, &config, &split, args.limit)?;
    let data = task::classify::encode(&setup.tokenizer, &config, &examples)?;
    let classes = setup.labels.len();
    if let Some(bad_label) = data.iter().find(|e| e.label as usize >= classes) {
        return Err(bad(format!(
            "{} has label {} but the model was trained with {classes} classes",
            config.data.dataset, bad_label.label
        )));
    }
    let pad = setup.tokenizer.pad_id();
    let (clean, clean_loss) = infer::classify::evaluate(
        &model,
        &data,
        pad,
        options.batch_size,
        classes,
        &setup.device,
    )?;
    let batches = data.len().div_ceil(options.batch_size) as u64;
    let bar = progress_bar(!args.quiet, batches, options.method.name());
    let started = std::time::Instant::now();
    let results = attack::attack_dataset(&model, &data, pad, &options, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "run": args.run, "dataset": config.data.dataset, "split": split,
                "method": options.method.name(), "norm": options.norm.name(),
                "steps": (options.method == Method::Pgd).then_some(options.steps),
                "step_size": (options.method == Method::Pgd).then_some(options.step_size),
                "seed": seed, "batch_size": options.batch_size, "seconds": secs,
                "clean": {"accuracy": clean.accuracy, "macro_f1": clean.macro_f1, "loss": clean_loss, "n": clean.count},
                "attacks": results,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => print_text(
            &config.data.dataset,
            &split,
            &options,
            &clean,
            clean_loss,
            &results,
            secs,
        ),
    }
    Ok(())
}

fn progress_bar(show: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} batches {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

fn print_text(
    dataset: &str,
    split: &str,
    options: &AttackOptions,
    clean: &cotext::metrics::ClassificationReport,
    clean_loss: f64,
    results: &[AttackResult],
    secs: f64,
) {
    let what = match options.method {
        Method::Fgsm => format!("fgsm, {} ball, ε relative to the batch's mean token-embedding norm", options.norm.name()),
        Method::Pgd => format!(
            "pgd, {} ball, {} steps of {:.3}·ε, random start (seed {}), ε relative to the batch's mean token-embedding norm",
            options.norm.name(),
            options.steps,
            options.step_size,
            options.seed
        ),
        Method::Hotflip => "hotflip, K = most tokens replaced per example".to_string(),
    };
    println!(
        "{dataset} {split}: {} examples; {what}; {secs:.1} s",
        clean.count
    );
    let head = if options.method == Method::Hotflip {
        "K"
    } else {
        "eps"
    };
    let flips = if options.method == Method::Hotflip {
        "  mean flips"
    } else {
        ""
    };
    println!("{head:<8}  accuracy  macro-F1    loss{flips}");
    println!(
        "{:<8}  {:>8.4}  {:>8.4}  {:>6.4}",
        "clean", clean.accuracy, clean.macro_f1, clean_loss
    );
    for r in results {
        let f = r
            .flips_mean
            .map(|f| format!("  {f:>10.3}"))
            .unwrap_or_default();
        println!(
            "{:<8}  {:>8.4}  {:>8.4}  {:>6.4}{f}",
            r.eps, r.accuracy, r.macro_f1, r.loss
        );
    }
}
