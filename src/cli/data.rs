//! `cotext data`: list dataset cards, print split statistics, fetch and verify.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use cotext::data::card::{builtin_names, Layout, Task};
use cotext::data::file::{self, FileColumns};
use cotext::data::stats::{split_stats, LengthStats};
use cotext::data::{hub, DataDir, Dataset, DatasetCard, LabelScheme, LoadOptions};

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

/// Where to find a dataset (shared by the data and tokenizer commands).
#[derive(Debug, Clone, Args)]
pub struct DataSource {
    /// Folder with local copies (DIR/sst2/train.tsv, DIR/imdb/…); only this
    /// folder is searched. Default: $COTEXT_DATA, then the caches.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// IMDB label scheme: binary (2 classes) or rating (8 classes: 1-4, 7-10).
    #[arg(long, value_enum, default_value_t = Labels::Binary)]
    pub labels: Labels,
    /// SST: read sentences from the PTB trees instead of the TSV files.
    #[arg(long)]
    pub trees: bool,
    /// SST: phrase-level train split (every distinct phrase of the train trees).
    #[arg(long)]
    pub phrases: bool,
}

impl DataSource {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            scheme: match self.labels {
                Labels::Binary => LabelScheme::Binary,
                Labels::Rating => LabelScheme::Rating,
            },
            trees: self.trees,
            phrases: self.phrases,
        }
    }

    pub fn open(&self, name: &str) -> cotext::Result<Dataset> {
        Dataset::open(name, &DataDir::from_flag(self.data_dir.clone()))
    }
}

/// How to read a data file given as `--data FILE` (shared by every command
/// that takes one).
#[derive(Debug, Clone, Default, Args)]
pub struct ColumnArgs {
    /// Data file: the text column (header name or JSON key; a column number
    /// from 1 if the file has no header). Default: the first text-like column.
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Data file: the label column (as --text-column). Default: `label`; the
    /// last column in a file without a header.
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Data file: the first line is data, not a header (default: guessed).
    #[arg(long)]
    pub no_header: bool,
}

impl ColumnArgs {
    /// The user's choices for the file reader.
    pub fn columns(&self) -> FileColumns {
        FileColumns {
            text: self.text_column.clone(),
            label: self.label_column.clone(),
            header: self.no_header.then_some(false),
        }
    }
}

/// `cotext train` on your own files (`--data FILE`).
#[derive(Debug, Args)]
pub struct TrainFileArgs {
    /// Train on this data file (.tsv, .csv, .jsonl) or data set (overrides data.dataset).
    #[arg(long, value_name = "FILE")]
    pub data: Option<String>,
    /// With --data FILE: the dev split's file (overrides data.dev_data).
    #[arg(long, value_name = "FILE")]
    pub dev_data: Option<PathBuf>,
    /// With --data FILE: the test split's file (overrides data.test_data).
    #[arg(long, value_name = "FILE")]
    pub test_data: Option<PathBuf>,
    /// Hold out this many seeded training examples as the dev split (overrides data.dev_holdout).
    #[arg(long, value_name = "N")]
    pub dev_holdout: Option<usize>,
    #[command(flatten)]
    pub columns: ColumnArgs,
}

impl TrainFileArgs {
    /// The `--set` overrides these flags stand for; file paths are made
    /// absolute so the saved config works from any folder.
    pub fn overrides(&self) -> Vec<String> {
        let abs = |p: &std::path::Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let mut o = Vec::new();
        if let Some(d) = &self.data {
            let d = if cotext::data::file::is_data_file(d) {
                abs(d.as_ref())
            } else {
                d.clone()
            };
            o.push(format!("data.dataset={d:?}"));
        }
        if let Some(p) = &self.dev_data {
            o.push(format!("data.dev_data={:?}", abs(p)));
        }
        if let Some(p) = &self.test_data {
            o.push(format!("data.test_data={:?}", abs(p)));
        }
        if let Some(n) = self.dev_holdout {
            o.push(format!("data.dev_holdout={n}"));
        }
        if let Some(c) = &self.columns.text_column {
            o.push(format!("data.text_column={c:?}"));
        }
        if let Some(c) = &self.columns.label_column {
            o.push(format!("data.label_column={c:?}"));
        }
        if self.columns.no_header {
            o.push("data.header=false".into());
        }
        o
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Labels {
    Binary,
    Rating,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// List the built-in dataset cards.
    List,
    /// Print splits, counts (against the card), label distribution and length percentiles.
    Info {
        /// Dataset name (see `cotext data list`), path to a card (.toml), or a
        /// data file (.tsv, .csv, .jsonl).
        name: String,
        #[command(flatten)]
        source: DataSource,
        #[command(flatten)]
        columns: ColumnArgs,
    },
    /// Write the dataset card for a data file (.tsv, .csv, .jsonl): the file's
    /// columns, labels, count, size and sha256, so `--data card.toml` reads
    /// exactly what `--data FILE` reads.
    Card {
        /// The data file.
        file: PathBuf,
        /// Where to write the card (refuses to overwrite). Default: stdout.
        #[arg(long, value_name = "CARD.toml")]
        out: Option<PathBuf>,
        /// The split the file becomes. Default `test`, the split `cotext eval` scores.
        #[arg(long, default_value = "test")]
        split: String,
        /// Take the label names from this trained run's `labels.json`, so the
        /// card matches the run (default: the file's distinct labels).
        #[arg(long, value_name = "RUN")]
        run: Option<PathBuf>,
        #[command(flatten)]
        columns: ColumnArgs,
    },
    /// Download a dataset into the HF cache and verify it; with --data-dir,
    /// verify the local copy (sizes, sha256, counts) instead.
    Fetch {
        /// Dataset name (see `cotext data list`) or path to a card (.toml).
        name: String,
        /// Verify the local copy in this folder instead of downloading.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::List => list(),
        DataCommand::Info {
            name,
            source,
            columns,
        } => info(&name, &source, &columns),
        DataCommand::Card {
            file,
            out,
            split,
            run,
            columns,
        } => card(&file, out.as_deref(), split, run.as_deref(), &columns),
        DataCommand::Fetch { name, data_dir } => fetch(&name, data_dir),
    }
}

fn list() -> anyhow::Result<()> {
    for name in builtin_names() {
        let card = DatasetCard::load(name)?;
        let splits: Vec<String> = card
            .splits
            .iter()
            .map(|s| format!("{} {}", s.name, s.count))
            .collect();
        println!("{name:<16} {}", card.title);
        println!("{:<16} splits: {}", "", splits.join(", "));
        for source in &card.sources {
            let format = match &source.layout {
                Layout::Table(table) => format!("{:?}", table.format).to_lowercase(),
                layout => layout.format().name().to_string(),
            };
            println!("{:<16} from {} ({format})", "", source.describe());
        }
    }
    Ok(())
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn lengths(s: &LengthStats) -> String {
    format!("{}/{}/{}/{}/{}", s.p50, s.p90, s.p95, s.p99, s.max)
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn info(name: &str, source: &DataSource, columns: &ColumnArgs) -> anyhow::Result<()> {
    let dataset = if file::is_data_file(name) {
        let path = PathBuf::from(name);
        let split = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        file::open(&[(split, path)], &columns.columns(), None)?.dataset
    } else {
        source.open(name)?
    };
    let options = source.options();
    let card = &dataset.card;
    let labels = dataset.label_names(&options);
    let rating = options.scheme == LabelScheme::Rating;
    let mut rows = Vec::new();
    let mut header = vec!["split".to_string(), "examples".into(), "card".into()];
    match card.task {
        Task::Classification => {
            header.extend(labels.iter().cloned());
            header.push("words p50/p90/p95/p99/max".into());
        }
        Task::Translation => {
            header.push(format!("{} words p50/p90/p95/p99/max", card.languages[0]));
            header.push(format!("{} words p50/p90/p95/p99/max", card.languages[1]));
        }
    }
    rows.push(header);
    let mut mismatches = Vec::new();
    for split in &card.splits {
        if !options.trees && !options.phrases && !dataset.has_split(&split.name) {
            rows.push(vec![
                split.name.clone(),
                "missing".into(),
                split.count.to_string(),
            ]);
            continue;
        }
        let data = dataset.load(&split.name, &options)?;
        let stats = split_stats(&data, labels.len());
        let phrase_split = options.phrases && split.name == "train";
        let check = if phrase_split {
            "phrases".to_string()
        } else if stats.count == split.count {
            format!("{} ok", split.count)
        } else {
            mismatches.push(format!(
                "{}: {} examples, card says {}",
                split.name, stats.count, split.count
            ));
            format!("{} MISMATCH", split.count)
        };
        let mut row = vec![split.name.clone(), stats.count.to_string(), check];
        match card.task {
            Task::Classification => {
                let expected = if rating {
                    &split.rating_counts
                } else {
                    &split.label_counts
                };
                if !phrase_split && !expected.is_empty() && expected != &stats.label_counts {
                    mismatches.push(format!(
                        "{}: label counts {:?}, card says {:?}",
                        split.name, stats.label_counts, expected
                    ));
                }
                for &n in &stats.label_counts {
                    row.push(format!("{n} ({})", percent(n, stats.count)));
                }
                row.push(lengths(&stats.lengths));
            }
            Task::Translation => {
                row.push(lengths(&stats.lengths));
                row.push(lengths(
                    stats.target_lengths.as_ref().expect("translation stats"),
                ));
            }
        }
        rows.push(row);
    }
    println!("dataset   {} ({})", card.name, card.title);
    println!(
        "source    {} at {} [{}]",
        dataset.source.describe(),
        dataset.root.display(),
        dataset.origin
    );
    if let Some(note) = &dataset.source.note {
        println!("note      {note}");
    }
    match card.task {
        Task::Classification => {
            let names: Vec<String> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{i} {l:?}"))
                .collect();
            println!("labels    {}", names.join(", "));
        }
        Task::Translation => println!("languages {} -> {}", card.languages[0], card.languages[1]),
    }
    println!("licence   {}", card.license);
    println!();
    print_table(&rows);
    let missing = dataset.missing_splits();
    if !missing.is_empty() && !options.trees && !options.phrases {
        println!();
        println!(
            "missing splits: {} (not in this copy; `cotext data fetch {}` downloads the full set)",
            missing.join(", "),
            card.name
        );
    }
    if !mismatches.is_empty() {
        println!();
        for m in &mismatches {
            println!("MISMATCH {m}");
        }
        anyhow::bail!("{} split(s) differ from the card", mismatches.len());
    }
    Ok(())
}

fn card(
    path: &std::path::Path,
    out: Option<&std::path::Path>,
    split: String,
    run: Option<&std::path::Path>,
    columns: &ColumnArgs,
) -> anyhow::Result<()> {
    if let Some(out) = out {
        // Refuse before reading anything: the card may be hand-edited.
        if out.exists() {
            return Err(cotext::Error::Config(format!(
                "{} exists; remove it or choose another --out",
                out.display()
            ))
            .into());
        }
    }
    let labels = run
        .map(cotext::task::classify::read_run_labels)
        .transpose()?;
    let files = file::open(
        &[(split, path.to_path_buf())],
        &columns.columns(),
        labels.as_deref(),
    )?;
    eprintln!("{}", files.layout.describe());
    let text = file::card_toml(&files)?;
    match out {
        None => print!("{text}"),
        Some(out) => {
            cotext::fsio::atomic_write(out, text.as_bytes())?;
            let split = &files.dataset.card.splits[0];
            eprintln!(
                "wrote {}: split {} with {} examples, labels {:?}",
                out.display(),
                split.name,
                split.count,
                files.dataset.card.labels
            );
        }
    }
    Ok(())
}

fn fetch(name: &str, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let card = DatasetCard::load(name)?;
    let (dataset, report) = match data_dir {
        Some(dir) => {
            let dataset = hub::locate(&card, &DataDir::Flag(dir))?;
            let report = hub::verify(&dataset)?;
            (dataset, report)
        }
        None => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            hub::fetch(&card, progress)?
        }
    };
    for line in &report {
        println!("{line}");
    }
    let missing = dataset.missing_splits();
    if !missing.is_empty() {
        println!("not present: {}", missing.join(", "));
    }
    println!(
        "{}: verified {} at {}",
        card.name,
        dataset.source.describe(),
        dataset.root.display()
    );
    Ok(())
}
