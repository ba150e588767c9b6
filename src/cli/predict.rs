//! `cotext predict`: classify texts from stdin or a file with a trained run.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use cotext::data::file;
use cotext::infer;
use cotext::task;

/// Arguments of `cotext predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A run directory written by `cotext train`.
    #[arg(long)]
    run: PathBuf,
    /// Read texts from this file instead of stdin: a data file (.tsv, .csv,
    /// .jsonl: its text column) or any other file (one text per line).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// With --input: the text column (as for `eval --data FILE`). Default: the first text-like column.
    #[arg(long, value_name = "NAME")]
    text_column: Option<String>,
    /// With --input: the file's first line is data, not a header (default: guessed).
    #[arg(long)]
    no_header: bool,
    /// Output: `tsv` (label, its probability, then every class's probability in
    /// `labels.json` order; with --input a header line first) or `jsonl`.
    #[arg(long, value_enum, default_value = "tsv")]
    format: PredictFormat,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Output formats of `cotext predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictFormat {
    /// Tab-separated values.
    #[value(alias = "text")]
    Tsv,
    /// One JSON object per line.
    #[value(alias = "json")]
    Jsonl,
}

/// Texts to classify with their line numbers, read lazily where possible.
type Texts = Box<dyn Iterator<Item = cotext::Result<(usize, String)>>>;

/// `cotext predict`: texts from stdin or `--input FILE`, one prediction per
/// line with every class's probability, in input order.
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let (setup, model) =
        infer::classify::load_run(&args.run, &cotext::train::run_device(&args.run)?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (total, texts): (Option<u64>, Texts) = match &args.input {
        None => {
            let stdin = std::io::stdin().lock();
            (
                None,
                Box::new(cotext::data::lines::Lines::new(
                    stdin,
                    std::path::Path::new("<stdin>"),
                )),
            )
        }
        Some(path) if file::is_data_file(&path.to_string_lossy()) => {
            let columns = file::FileColumns {
                text: args.text_column.clone(),
                label: None,
                header: args.no_header.then_some(false),
            };
            let (layout, texts) = file::read_texts(path, &columns)?;
            eprintln!("{}", layout.describe());
            (
                Some(texts.len() as u64),
                Box::new(texts.into_iter().map(Ok)),
            )
        }
        Some(path) => {
            if args.text_column.is_some() || args.no_header {
                return Err(cotext::Error::Config(format!(
                    "{}: --text-column/--no-header are for .tsv, .csv and .jsonl files; this file is read as one text per line",
                    path.display()
                ))
                .into());
            }
            let total = cotext::data::lines::count_lines(path)? as u64;
            (
                Some(total),
                Box::new(cotext::data::lines::Lines::open(path)?),
            )
        }
    };
    let bar = predict_bar(!args.quiet && total.is_some(), total.unwrap_or(0));
    if args.input.is_some() && args.format == PredictFormat::Tsv {
        let names: Vec<String> = setup.labels.iter().map(|l| format!("p({l})")).collect();
        writeln!(out, "label\tprobability\t{}", names.join("\t"))?;
    }
    let mut texts = texts.peekable();
    while texts.peek().is_some() {
        let batch: Vec<(usize, String)> = texts.by_ref().take(64).collect::<cotext::Result<_>>()?;
        let examples: Vec<cotext::data::Example> = batch
            .iter()
            .map(|(_, t)| cotext::data::Example {
                text: t.clone(),
                label: 0,
            })
            .collect();
        let data = task::classify::encode(&setup.tokenizer, &setup.config, &examples)?;
        let probs = infer::classify::predict_probs(
            &model,
            &data,
            setup.tokenizer.pad_id(),
            setup.config.train.eval_batch_size,
            &setup.device,
        )?;
        for ((line, text), p) in batch.iter().zip(&probs) {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |b, (i, &x)| if x > p[b] { i } else { b });
            match args.format {
                PredictFormat::Tsv => {
                    let all: Vec<String> = p.iter().map(|x| format!("{x:.4}")).collect();
                    writeln!(
                        out,
                        "{}\t{:.4}\t{}",
                        setup.labels[best],
                        p[best],
                        all.join("\t")
                    )?
                }
                PredictFormat::Jsonl => {
                    let probs: serde_json::Map<String, serde_json::Value> = setup
                        .labels
                        .iter()
                        .zip(p)
                        .map(|(l, &x)| (l.clone(), serde_json::json!(x)))
                        .collect();
                    let mut v = serde_json::json!({"text": text, "label": setup.labels[best], "probs": probs});
                    if args.input.is_some() {
                        v["line"] = serde_json::json!(line);
                    }
                    writeln!(out, "{v}")?;
                }
            }
        }
        bar.inc(batch.len() as u64);
        // Stream when reading stdin: each batch's answers appear as it is done.
        if args.input.is_none() {
            out.flush()?;
        }
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

/// A progress bar on stderr for `predict --input` (hidden when stderr is not a terminal).
fn predict_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} texts [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar
}
