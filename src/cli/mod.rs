//! Command-line interface: clap arguments are parsed and validated into ready
//! configs in one step; nothing downstream re-validates.

use clap::{Parser, Subcommand};

mod bleu;

/// Complement Objective Training for text models.
#[derive(Debug, Parser)]
#[command(name = "cotext", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Score translations with BLEU or chrF, identical to sacreBLEU 2.6.0.
    Bleu(bleu::BleuArgs),
}

/// Parses the process arguments and runs the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bleu(args) => bleu::run(args),
    }
}

/// The exit code for an error: 2 for bad user input, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<cotext::Error>() {
        Some(e) if e.is_user_error() => 2,
        _ => 1,
    }
}
