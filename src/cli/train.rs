//! `cotext train`, `cotext eval`, `cotext predict`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use cotext::data::file;
use cotext::data::Dataset;

use super::data::ColumnArgs;
use cotext::infer;
use cotext::metrics::ClassificationReport;
use cotext::task::{self, TaskKind};
use cotext::train::runner::{self, TrainOptions};
use cotext::train::{ObjectiveKind, Precision, RunConfig};

/// Arguments of `cotext train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's TOML config (not needed with --resume: the run's saved one is used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.optimizer.lr=3e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Objective: ce, cot, gce, hcot or cot-joint (overrides train.objective).
    #[arg(long)]
    objective: Option<ObjectiveKind>,
    /// Device: cpu, cuda, cuda:N or metal (overrides train.device).
    #[arg(long)]
    device: Option<String>,
    /// Seed of init, dropout and data order (overrides train.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Compute precision: f32, bf16 or f16 (overrides train.precision; weights,
    /// optimizer state and losses stay f32).
    #[arg(long)]
    precision: Option<Precision>,
    /// Folder with local copies of the data sets (overrides data.data_dir; as COTEXT_DATA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    files: super::data::TrainFileArgs,
    /// Run directory. Default: runs/<config name>-<objective>-seed<N>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Arguments of `cotext eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory written by `cotext train`.
    #[arg(long)]
    run: PathBuf,
    /// Split to evaluate. Default: the run's test split.
    #[arg(long)]
    split: Option<String>,
    /// Evaluate on another data set instead of the run's: a card name, a card
    /// (.toml), or a data file (.tsv, .csv, .jsonl; the file is the split).
    #[arg(long)]
    data: Option<String>,
    /// Folder with local copies of data sets (as COTEXT_DATA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON.
    Json,
}

fn resolve_config(args: &TrainArgs) -> anyhow::Result<(RunConfig, PathBuf)> {
    let mut overrides = super::overrides(
        args.set.clone(),
        args.device.as_deref(),
        args.precision,
        args.data_dir.as_deref(),
    );
    if let Some(o) = args.objective {
        overrides.push(format!("train.objective=\"{o}\""));
    }
    if let Some(s) = args.seed {
        overrides.push(format!("train.seed={s}"));
    }
    overrides.extend(args.files.overrides());
    if args.resume {
        let out = args.out.clone().ok_or_else(|| {
            cotext::Error::Config("--resume needs --out DIR (the run to continue)".into())
        })?;
        if let Some(c) = &args.config {
            return Err(cotext::Error::Config(format!(
                "--config {} cannot be combined with --resume: a resumed run keeps its saved config.toml (change allowed keys with --set)",
                c.display()
            ))
            .into());
        }
        runner::prepare_run_dir(&out, true)?;
        let saved = RunConfig::load(&out.join("config.toml"), &[])?;
        let config = RunConfig::load(&out.join("config.toml"), &overrides)?;
        // Before anything is written: a refused resume leaves the run as it was.
        runner::check_resume_config(&saved, &config)?;
        if let Some(state) = cotext::train::checkpoint::Checkpoint::read(&out)?.map(|c| c.state) {
            if let Some(why) = runner::budget_below_trained(&saved, &config, &state) {
                return Err(cotext::Error::Run {
                    path: out.clone(),
                    msg: format!("--resume: {why}"),
                }
                .into());
            }
        }
        return Ok((config, out));
    }
    let path = args.config.clone().ok_or_else(|| {
        cotext::Error::Config("--config FILE is required (or --resume --out DIR)".into())
    })?;
    let config = RunConfig::load(&path, &overrides)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| task::default_run_dir(&path, config.train.objective, config.train.seed));
    Ok((config, out))
}

/// `cotext train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let (config, out) = resolve_config(&args)?;
    let stop = super::install_ctrlc();
    let started = Instant::now();
    eprintln!(
        "training {} on {} with objective {} (seed {}) into {}",
        model_name(&config),
        config.data.dataset,
        config.train.objective.name(),
        config.train.seed,
        out.display()
    );
    let options = TrainOptions {
        resume: args.resume,
        progress: !args.quiet,
    };
    let existed = out.exists();
    // A fresh run that fails before its first checkpoint leaves no folder behind.
    let discard = |e: cotext::Error| {
        if !args.resume {
            runner::discard_unstarted(&out, existed);
        }
        e
    };
    let outcome = cotext::train::train(&config, &out, &options, &stop).map_err(discard)?;
    if let Some(steps) = outcome.interrupted() {
        eprintln!("stopped at step {steps}; checkpoint saved in {}. Continue with: cotext train --resume --out {}", out.display(), out.display());
        std::process::exit(130);
    }
    outcome.print(&config, &out, started.elapsed().as_secs_f64());
    Ok(())
}

fn model_name(config: &RunConfig) -> &'static str {
    match config.model {
        cotext::models::ModelConfig::Bilstm(_) => "a BiLSTM",
        cotext::models::ModelConfig::Transformer(_) => "a Transformer",
        cotext::models::ModelConfig::Bert(_) => "a BERT model",
        cotext::models::ModelConfig::LstmAttention(_) => "an attentional LSTM translator",
        cotext::models::ModelConfig::TransformerSeq2seq(_) => "a Transformer translator",
    }
}

/// `cotext eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if TaskKind::of_run(&args.run)? == TaskKind::Translation {
        return eval_translation(args);
    }
    let (setup, model) =
        infer::classify::load_run(&args.run, &cotext::train::run_device(&args.run)?)?;
    let mut config = setup.config.clone();
    if args.data_dir.is_some() {
        config.data.data_dir = args.data_dir.clone();
    }
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
    let examples = task::classify::load_split(&dataset, &config, &split, None)?;
    let data = task::classify::encode(&setup.tokenizer, &config, &examples)?;
    let classes = setup.labels.len();
    let (report, loss) = infer::classify::evaluate(
        &model,
        &data,
        setup.tokenizer.pad_id(),
        config.train.eval_batch_size,
        classes,
        &setup.device,
    )?;
    match args.format {
        Format::Json => {
            let per_class: Vec<_> = report.per_class.iter().zip(&setup.labels).map(|(s, name)| {
                serde_json::json!({"label": name, "precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support})
            }).collect();
            let v = serde_json::json!({
                "run": args.run, "dataset": config.data.dataset, "split": split, "count": report.count,
                "accuracy": report.accuracy, "macro_f1": report.macro_f1, "loss": loss,
                "per_class": per_class, "confusion": report.confusion, "labels": setup.labels,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => print_report(&config.data.dataset, &split, &report, loss, &setup.labels),
    }
    Ok(())
}

/// The labelled examples a trained classification run is scored on (`eval`,
/// `attack`): with `data` a data file (.tsv, .csv, .jsonl), the file is `split`,
/// read against the run's labels; a card name or `.toml` replaces the run's data
/// set; `None` keeps it. `config.data` is updated to what was opened, and labels
/// the run was not trained with are refused (exit 2).
pub(super) fn labelled_data(
    data: Option<&str>,
    columns: &ColumnArgs,
    split: &str,
    run: &std::path::Path,
    labels: &[String],
    config: &mut RunConfig,
) -> anyhow::Result<Dataset> {
    let dataset = match data {
        Some(d) if file::is_data_file(d) => {
            let opened = file::open(
                &[(split.to_string(), PathBuf::from(d))],
                &columns.columns(),
                Some(labels),
            )?;
            eprintln!("{}", opened.layout.describe());
            config.data.dataset = d.to_string();
            (config.data.trees, config.data.phrases) = (false, false);
            opened.dataset
        }
        other => {
            if let Some(d) = other {
                config.data.dataset = d.to_string();
                (config.data.dev_data, config.data.test_data) = (None, None);
            }
            task::classify::open_dataset(config, Some(labels))?
        }
    };
    task::classify::check_run_labels(&dataset, config, run, labels)?;
    Ok(dataset)
}

/// `cotext eval` on a translation run: BLEU of the split decoded with the run's
/// `decode.beam`.
fn eval_translation(args: EvalArgs) -> anyhow::Result<()> {
    if args.data.as_deref().is_some_and(file::is_data_file) {
        return Err(cotext::Error::Config(format!(
            "{} is a translation run; --data FILE (.tsv, .csv, .jsonl) is for classification runs: give a card (.toml) instead",
            args.run.display()
        ))
        .into());
    }
    let (mut config, tokenizer, model) =
        infer::translate::load_run(&args.run, &cotext::train::run_device(&args.run)?)?;
    if let Some(d) = &args.data {
        config.data.dataset = d.clone();
    }
    if args.data_dir.is_some() {
        config.data.data_dir = args.data_dir.clone();
    }
    let split = args
        .split
        .clone()
        .unwrap_or_else(|| config.data.test_split.clone());
    let dataset = task::translate::open_dataset(&config)?;
    let pairs = task::translate::load_pairs(&dataset, &config, &split, None)?;
    let sources: Vec<String> = pairs.iter().map(|p| p.source.clone()).collect();
    let refs: Vec<String> = pairs.iter().map(|p| p.target.clone()).collect();
    let options = infer::translate::decode_options(&config.decode, &tokenizer, config.decode.beam)?;
    let started = Instant::now();
    let hyps = infer::translate::translate_lines(&model, &tokenizer, &config, &sources, &options)?;
    let secs = started.elapsed().as_secs_f64();
    let (score, signature) = infer::translate::corpus_bleu(&hyps, &refs)?;
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "run": args.run, "dataset": config.data.dataset, "split": split, "count": pairs.len(),
                "bleu": score.score, "precisions": score.precisions, "bp": score.bp, "ratio": score.ratio,
                "sys_len": score.sys_len, "ref_len": score.ref_len, "signature": signature,
                "beam": config.decode.beam, "decode_seconds": secs,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            println!(
                "{} {split}: {} sentences, beam {}, decoded in {secs:.1} s",
                config.data.dataset,
                pairs.len(),
                config.decode.beam
            );
            // sacreBLEU's order: the score first, then precisions, BP and lengths.
            println!("BLEU = {:.2} {}", score.score, score.verbose());
            println!("signature: {signature}");
        }
    }
    Ok(())
}

fn print_report(
    dataset: &str,
    split: &str,
    r: &ClassificationReport,
    loss: f64,
    labels: &[String],
) {
    println!("{dataset} {split}: {} examples", r.count);
    println!(
        "accuracy  {:.4}\nmacro-F1  {:.4}\nloss      {:.4}\n",
        r.accuracy, r.macro_f1, loss
    );
    let width = labels.iter().map(String::len).max().unwrap_or(5).max(5);
    println!("{:<width$}  precision  recall     f1  support", "class");
    for (s, name) in r.per_class.iter().zip(labels) {
        println!(
            "{name:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}",
            s.precision, s.recall, s.f1, s.support
        );
    }
    println!("\nconfusion (rows: gold, columns: predicted)");
    for (row, name) in r.confusion.iter().zip(labels) {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:>6}")).collect();
        println!("{name:<width$}  {}", cells.join(""));
    }
}

/// Arguments of `cotext translate`.
#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// A translation run directory written by `cotext train`.
    #[arg(long)]
    run: PathBuf,
    /// Beam size (1 = greedy). Default: the run's decode.beam.
    #[arg(long)]
    beam: Option<usize>,
    /// GNMT length penalty α. Default: the run's decode.length_penalty.
    #[arg(long)]
    length_penalty: Option<f64>,
    /// Sentences decoded together. Default: the run's decode.batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
}

/// `cotext translate`: source lines on stdin, translations (detokenized) on stdout,
/// in order, one per line.
pub fn translate(args: TranslateArgs) -> anyhow::Result<()> {
    let (mut config, tokenizer, model) =
        infer::translate::load_run(&args.run, &cotext::train::run_device(&args.run)?)?;
    if let Some(b) = args.beam {
        config.decode.beam = b;
    }
    if let Some(lp) = args.length_penalty {
        config.decode.length_penalty = lp;
    }
    if let Some(n) = args.batch_size {
        config.decode.batch_size = n;
    }
    config
        .validate()
        .map_err(|e| cotext::Error::Config(format!("translate: {e}")))?;
    let options = infer::translate::decode_options(&config.decode, &tokenizer, config.decode.beam)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Strict UTF-8 with line numbers: bad input is the user's error (exit 2).
    let mut lines =
        cotext::data::lines::Lines::new(std::io::stdin().lock(), std::path::Path::new("<stdin>"));
    let chunk = 1024;
    loop {
        let mut batch = Vec::with_capacity(chunk);
        for line in lines.by_ref().take(chunk) {
            batch.push(line?.1);
        }
        if batch.is_empty() {
            break;
        }
        for hyp in infer::translate::translate_lines(&model, &tokenizer, &config, &batch, &options)?
        {
            writeln!(out, "{hyp}")?;
        }
        out.flush()?;
    }
    Ok(())
}
