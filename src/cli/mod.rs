//! Command-line interface: clap arguments are parsed and validated into ready
//! configs in one step; nothing downstream re-validates.

mod attack;
mod bleu;
mod compare;
mod data;
mod predict;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

/// Complement Objective Training for text models.
#[derive(Debug, Parser)]
#[command(name = "cotext", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Datasets: list the cards, show statistics, download and verify.
    Data(data::DataArgs),
    /// Tokenizers: train, encode, decode, check round trips.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Train a classifier (ce, cot, gce, hcot, cot-joint) or a translator (ce, cot, gce, cot-joint) from a TOML config.
    Train(train::TrainArgs),
    /// Evaluate a trained run: accuracy, macro-F1, per-class scores, confusion; BLEU for translation.
    Eval(train::EvalArgs),
    /// Classify text lines from stdin with a trained run.
    Predict(predict::PredictArgs),
    /// Translate source lines from stdin with a trained translation run.
    Translate(train::TranslateArgs),
    /// Score translations with BLEU or chrF, identical to sacreBLEU 2.6.0.
    Bleu(bleu::BleuArgs),
    /// Train every objective × seed from one config, then write report.md, summary.json and plots.
    Compare(compare::CompareArgs),
    /// Accuracy of a classification run under adversarial attack (FGSM, PGD, HotFlip).
    Attack(attack::AttackArgs),
    /// Draw one run's curves (loss, train accuracy, dev metric) as a PNG.
    Plot(compare::PlotArgs),
}

/// Parses the process arguments and runs the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Data(args) => data::run(args),
        Command::Tokenizer(args) => tokenizer::run(args),
        Command::Train(args) => train::train(args),
        Command::Eval(args) => train::eval(args),
        Command::Predict(args) => predict::predict(args),
        Command::Translate(args) => train::translate(args),
        Command::Bleu(args) => bleu::run(args),
        Command::Compare(args) => compare::compare(args),
        Command::Plot(args) => compare::plot(args),
        Command::Attack(args) => attack::run(args),
    }
}

/// The `--set` overrides of `train` and `compare`, followed by the ones their
/// shared flags stand for: `--device`, `--precision` and `--data-dir` (made
/// absolute, so child processes and resumes find it from any folder).
fn overrides(
    mut sets: Vec<String>,
    device: Option<&str>,
    precision: Option<cotext::train::Precision>,
    data_dir: Option<&std::path::Path>,
) -> Vec<String> {
    if let Some(d) = device {
        sets.push(format!("train.device={d:?}"));
    }
    if let Some(p) = precision {
        sets.push(format!("train.precision={:?}", p.name()));
    }
    if let Some(d) = data_dir {
        let abs = std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf());
        sets.push(format!("data.data_dir={:?}", abs.display().to_string()));
    }
    sets
}

/// Installs the Ctrl-C / SIGTERM handler of the training commands and returns
/// the flag the loop polls. First signal (`timeout`, a batch scheduler,
/// `docker stop`): finish the step, save, exit 130. Second: exit 130 at once
/// (the checkpoint on disk stays whole either way).
fn install_ctrlc() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    stop
}

/// The exit code for an error: 2 for bad user input, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<cotext::Error>() {
        Some(e) if e.is_user_error() => 2,
        _ => 1,
    }
}
