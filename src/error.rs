//! The library's error type. Only the binary uses `anyhow`; `main` maps these
//! variants to exit codes (bad user input → 2).

use std::path::PathBuf;

/// Everything that can go wrong in cotext outside the pure tensor functions
/// (which return `candle_core::Result` so they compose with user code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A user-supplied file is malformed at a given line (1-based).
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        /// The file that was being read.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What was expected and what was found.
        msg: String,
    },
    /// A configuration value or command-line argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Training produced a NaN or infinite loss; the weights of that step were not
    /// applied and the last checkpoint on disk (if one was saved) is the last good one.
    #[error("the {what} became {value} at step {step}; training stopped{}", kept_note(kept.as_deref()))]
    NonFinite {
        /// The update (1-based) whose loss was not finite.
        step: u64,
        /// Which loss.
        what: String,
        /// Its value.
        value: f64,
        /// The run directory holding the last good checkpoint, if one was saved.
        kept: Option<PathBuf>,
    },
    /// A user-supplied file is malformed as a whole (no single line is to blame:
    /// an empty file, a bad `tokenizer.json`, a TOML card, an archive).
    #[error("{}: {msg}", path.display())]
    InvalidFile {
        /// The file that was being read.
        path: PathBuf,
        /// What was expected and what was found.
        msg: String,
    },
    /// Two files that must be line-aligned (parallel text, an IMDB TSV and its
    /// `.source.tsv`) have different numbers of lines.
    #[error(
        "line counts differ: {} has {left_lines} lines but {} has {right_lines}",
        left.display(),
        right.display()
    )]
    LineCountMismatch {
        /// The first file.
        left: PathBuf,
        /// Its number of lines.
        left_lines: usize,
        /// The second file.
        right: PathBuf,
        /// Its number of lines.
        right_lines: usize,
    },
    /// A data file's content differs from what its dataset card promises
    /// (sha256, byte size or record count).
    #[error("{}: {what}: expected {expected}, found {found}", path.display())]
    Mismatch {
        /// The file (or folder) that was checked.
        path: PathBuf,
        /// What was compared (`sha256`, `records in split train`, ...).
        what: String,
        /// The value the card gives.
        expected: String,
        /// The value found on disk.
        found: String,
    },
    /// A dataset could not be found locally; the message says where cotext
    /// looked and how to get it.
    #[error("dataset `{name}` not found; looked in:\n{}\n{hint}", bullets(.looked))]
    DatasetNotFound {
        /// The dataset name (a card in `datasets/`).
        name: String,
        /// Every place that was searched, with why it did not match.
        looked: Vec<String>,
        /// How to get the data (`cotext data fetch ...`, `--data-dir ...`).
        hint: String,
    },
    /// Downloading from the Hugging Face hub or a URL failed.
    #[error("download failed: {0}")]
    Download(String),
    /// The `tokenizers` library reported an error (training, encoding, decoding).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model checkpoint lacks a tensor the model needs, or has one of the wrong
    /// shape or dtype.
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Which tensor, and what was expected and found.
        msg: String,
    },
    /// Two line-parallel inputs (a hypothesis file and a reference file, say) hold
    /// different numbers of lines; each is named as the caller knows it.
    #[error("{left} has {left_lines} lines but {right} has {right_lines}")]
    LineCount {
        /// The first input (a file path, or a description for in-memory data).
        left: String,
        /// Its number of lines.
        left_lines: usize,
        /// The second input.
        right: String,
        /// Its number of lines.
        right_lines: usize,
    },
    /// An input that must hold at least one line (a hypothesis file) is empty.
    #[error("{}: no lines to score", path.display())]
    EmptyInput {
        /// The empty file.
        path: PathBuf,
    },
}

impl Error {
    /// Whether the error is the user's input (a bad file, flag or config value):
    /// the CLI exits with code 2 for these and 1 for everything else.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Parse { .. }
                | Error::Config(_)
                | Error::Io { .. }
                | Error::InvalidFile { .. }
                | Error::LineCountMismatch { .. }
                | Error::Mismatch { .. }
                | Error::DatasetNotFound { .. }
                | Error::Checkpoint { .. }
                | Error::LineCount { .. }
                | Error::EmptyInput { .. }
        )
    }
}

fn kept_note(kept: Option<&std::path::Path>) -> String {
    match kept {
        Some(run) => format!(" and the last good checkpoint in {} is kept", run.display()),
        None => " before its first checkpoint, so no weights were saved".to_string(),
    }
}

fn bullets(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("  - {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Result with the cotext [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
