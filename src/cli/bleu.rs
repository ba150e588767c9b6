//! `cotext bleu`: corpus BLEU or chrF of hypothesis files against reference
//! files, identical to sacreBLEU 2.6.0, with its signature.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use cotext::metrics::bleu::{Bleu, BleuConfig, Smoothing, Tokenize};
use cotext::metrics::chrf::{Chrf, ChrfConfig};
use cotext::metrics::text::read_lines;
use rayon::prelude::*;
use serde::Serialize;

/// Score detokenized hypothesis files with BLEU or chrF exactly as sacreBLEU 2.6.0.
#[derive(Debug, Args)]
pub struct BleuArgs {
    /// A reference file; repeat for several references (line i of each is a
    /// reference for line i of every hypothesis file).
    #[arg(short = 'r', long = "reference", value_name = "REF", required = true)]
    references: Vec<PathBuf>,
    /// Hypothesis files, one segment per line; each is scored on its own.
    #[arg(value_name = "HYP", required = true)]
    hypotheses: Vec<PathBuf>,
    /// The metric.
    #[arg(long, value_enum, default_value_t = MetricArg::Bleu)]
    metric: MetricArg,
    /// BLEU tokenizer [default: 13a].
    #[arg(long, value_enum)]
    tokenize: Option<TokenizeArg>,
    /// Lowercase hypotheses and references (BLEU and chrF).
    #[arg(long)]
    lowercase: bool,
    /// BLEU smoothing method [default: exp].
    #[arg(long, value_enum)]
    smooth: Option<SmoothArg>,
    /// Value for `floor` (default 0.1) or `add-k` (default 1) smoothing.
    #[arg(long)]
    smooth_value: Option<f64>,
    /// chrF character n-gram order, 1..=6 [default: 6].
    #[arg(long)]
    chrf_char_order: Option<usize>,
    /// chrF word n-gram order, 0..=4; 2 gives chrF++ [default: 0].
    #[arg(long)]
    chrf_word_order: Option<usize>,
    /// chrF β, the weight of recall [default: 2].
    #[arg(long)]
    chrf_beta: Option<u32>,
    /// Keep whitespace in chrF character n-grams.
    #[arg(long)]
    chrf_whitespace: bool,
    /// chrF epsilon smoothing (chrF++.py, Moses, NLTK) instead of effective order.
    #[arg(long)]
    chrf_eps_smoothing: bool,
    /// Output format: `text` (sacreBLEU's line) or `json` (one object per line
    /// and hypothesis file).
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricArg {
    Bleu,
    Chrf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TokenizeArg {
    #[value(name = "13a")]
    V13a,
    Intl,
    None,
    Char,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SmoothArg {
    Exp,
    Floor,
    #[value(name = "add-k")]
    AddK,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

enum Metric {
    Bleu(Bleu),
    Chrf(Chrf),
}

/// `BleuArgs` validated once; nothing downstream re-checks.
struct BleuCommand {
    references: Vec<PathBuf>,
    hypotheses: Vec<PathBuf>,
    metric: Metric,
    format: FormatArg,
}

impl BleuCommand {
    fn from_args(a: BleuArgs) -> cotext::Result<Self> {
        let cfg_err = |m: &str| cotext::Error::Config(m.to_string());
        let metric = match a.metric {
            MetricArg::Bleu => {
                if a.chrf_char_order.is_some()
                    || a.chrf_word_order.is_some()
                    || a.chrf_beta.is_some()
                    || a.chrf_whitespace
                    || a.chrf_eps_smoothing
                {
                    return Err(cfg_err("--chrf-* options need --metric chrf"));
                }
                let tokenize = match a.tokenize.unwrap_or(TokenizeArg::V13a) {
                    TokenizeArg::V13a => Tokenize::V13a,
                    TokenizeArg::Intl => Tokenize::Intl,
                    TokenizeArg::None => Tokenize::None,
                    TokenizeArg::Char => Tokenize::Char,
                };
                let smooth = match a.smooth.unwrap_or(SmoothArg::Exp) {
                    SmoothArg::Exp => "exp",
                    SmoothArg::Floor => "floor",
                    SmoothArg::AddK => "add-k",
                    SmoothArg::None => "none",
                };
                let smoothing = Smoothing::from_name(smooth, a.smooth_value)?;
                Metric::Bleu(Bleu::new(BleuConfig {
                    tokenize,
                    lowercase: a.lowercase,
                    smoothing,
                    ..BleuConfig::default()
                })?)
            }
            MetricArg::Chrf => {
                if a.tokenize.is_some() || a.smooth.is_some() || a.smooth_value.is_some() {
                    return Err(cfg_err(
                        "--tokenize, --smooth and --smooth-value apply to BLEU only",
                    ));
                }
                let d = ChrfConfig::default();
                Metric::Chrf(Chrf::new(ChrfConfig {
                    char_order: a.chrf_char_order.unwrap_or(d.char_order),
                    word_order: a.chrf_word_order.unwrap_or(d.word_order),
                    beta: a.chrf_beta.unwrap_or(d.beta),
                    lowercase: a.lowercase,
                    whitespace: a.chrf_whitespace,
                    eps_smoothing: a.chrf_eps_smoothing,
                })?)
            }
        };
        Ok(BleuCommand {
            references: a.references,
            hypotheses: a.hypotheses,
            metric,
            format: a.format,
        })
    }
}

/// One JSON object of `--format json` for BLEU (sacreBLEU's fields, the file,
/// the unrounded score and the statistics).
#[derive(Serialize)]
struct BleuJson<'a> {
    file: String,
    name: &'static str,
    signature: String,
    verbose_score: String,
    #[serde(flatten)]
    details: &'a cotext::metrics::BleuScore,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// One JSON object of `--format json` for chrF.
#[derive(Serialize)]
struct ChrfJson {
    file: String,
    name: String,
    score: f64,
    signature: String,
    char_order: usize,
    word_order: usize,
    beta: u32,
    stats: Vec<[u64; 3]>,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

fn field_map(fields: Vec<(&'static str, String)>) -> serde_json::Map<String, serde_json::Value> {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect()
}

/// Runs `cotext bleu`.
pub fn run(args: BleuArgs) -> anyhow::Result<()> {
    let cmd = BleuCommand::from_args(args)?;
    let read = |paths: &[PathBuf]| -> cotext::Result<Vec<Vec<String>>> {
        paths.par_iter().map(|p| read_lines(p)).collect()
    };
    let refs = read(&cmd.references)?;
    for (path, lines) in cmd.references.iter().zip(&refs).skip(1) {
        if lines.len() != refs[0].len() {
            return Err(line_count(&cmd.references[0], refs[0].len(), path, lines.len()).into());
        }
    }
    let hyps = read(&cmd.hypotheses)?;
    for (path, lines) in cmd.hypotheses.iter().zip(&hyps) {
        if lines.len() != refs[0].len() {
            return Err(line_count(path, lines.len(), &cmd.references[0], refs[0].len()).into());
        }
        if lines.is_empty() {
            // sacreBLEU refuses an empty system too ("contains no sentence").
            return Err(cotext::Error::EmptyInput { path: path.clone() }.into());
        }
    }
    let several = cmd.hypotheses.len() > 1;
    let systems: Vec<&[String]> = hyps.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    match &cmd.metric {
        Metric::Bleu(bleu) => {
            let cache = bleu.references(&refs)?;
            let sig = cache.signature();
            let scores = cache.corpus_scores(&systems)?;
            for (path, s) in cmd.hypotheses.iter().zip(&scores) {
                let file = path.display().to_string();
                if cmd.format == FormatArg::Json {
                    let json = BleuJson {
                        file,
                        name: "BLEU",
                        signature: sig.to_string(),
                        verbose_score: s.verbose(),
                        details: s,
                        fields: field_map(sig.fields()),
                    };
                    writeln!(out, "{}", serde_json::to_string(&json)?)?;
                } else {
                    let prefix = if several {
                        format!("{file}\t")
                    } else {
                        String::new()
                    };
                    writeln!(out, "{prefix}BLEU|{sig} = {:.2} {}", s.score, s.verbose())?;
                }
            }
        }
        Metric::Chrf(chrf) => {
            let cache = chrf.references(&refs)?;
            let sig = cache.signature();
            let scores = cache.corpus_scores(&systems)?;
            for (path, s) in cmd.hypotheses.iter().zip(scores) {
                let file = path.display().to_string();
                if cmd.format == FormatArg::Json {
                    let c = chrf.config();
                    let json = ChrfJson {
                        file,
                        name: s.name,
                        score: s.score,
                        signature: sig.to_string(),
                        char_order: c.char_order,
                        word_order: c.word_order,
                        beta: c.beta,
                        stats: s.stats,
                        fields: field_map(sig.fields()),
                    };
                    writeln!(out, "{}", serde_json::to_string(&json)?)?;
                } else {
                    let prefix = if several {
                        format!("{file}\t")
                    } else {
                        String::new()
                    };
                    writeln!(out, "{prefix}{}|{sig} = {:.2}", s.name, s.score)?;
                }
            }
        }
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("writing the scores")?;
    Ok(())
}

fn line_count(
    left: &std::path::Path,
    left_lines: usize,
    right: &std::path::Path,
    right_lines: usize,
) -> cotext::Error {
    cotext::Error::LineCount {
        left: left.display().to_string(),
        left_lines,
        right: right.display().to_string(),
        right_lines,
    }
}
