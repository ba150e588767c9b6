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
    /// A run folder cannot be used as asked: it is not a run, holds no
    /// checkpoint, already holds a run, is a run of the other task, or a resume
    /// would change what it was trained with.
    #[error("{}: {msg}", path.display())]
    Run {
        /// The run folder.
        path: PathBuf,
        /// What is wrong with it for this command.
        msg: String,
    },
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
    /// Two inputs that must be line-aligned (parallel text, an IMDB TSV and its
    /// `.source.tsv`, a hypothesis file and a reference file) hold different
    /// numbers of lines; each is named as the caller knows it (a path, or a
    /// description for in-memory data).
    #[error("line counts differ: {left} has {left_lines} lines but {right} has {right_lines}")]
    LineCount {
        /// The first input.
        left: String,
        /// Its number of lines.
        left_lines: usize,
        /// The second input.
        right: String,
        /// Its number of lines.
        right_lines: usize,
    },
    /// A state cotext itself should never reach (a bug, not the user's input
    /// or the machine): the message says which invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
    /// An input that must hold at least one line (a hypothesis file) is empty.
    #[error("{}: no lines to score", path.display())]
    EmptyInput {
        /// The empty file.
        path: PathBuf,
    },
}

/// Whose an error is, which decides the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The user's input: a file, flag, config value or path (exit code 2).
    User,
    /// The machine or network: a full disk, an I/O failure, a download (exit
    /// code 1; trying again may help).
    Environment,
    /// Training diverged, a tensor operation failed, or cotext broke one of its
    /// own invariants (exit code 1).
    Internal,
}

impl Error {
    /// Whose the error is: see [`Blame`]. A file that is missing, unreadable for
    /// permissions, a folder where a file was expected (or the reverse) or not
    /// valid text is the user's; any other I/O failure (a full disk, a broken
    /// device) is the environment's.
    pub fn blame(&self) -> Blame {
        use std::io::ErrorKind as K;
        match self {
            Error::Parse { .. }
            | Error::Config(_)
            | Error::Run { .. }
            | Error::InvalidFile { .. }
            | Error::Mismatch { .. }
            | Error::DatasetNotFound { .. }
            | Error::Checkpoint { .. }
            | Error::LineCount { .. }
            | Error::EmptyInput { .. } => Blame::User,
            Error::Io { source, .. } => match source.kind() {
                K::NotFound
                | K::PermissionDenied
                | K::AlreadyExists
                | K::InvalidData
                | K::InvalidInput
                | K::IsADirectory
                | K::NotADirectory
                | K::DirectoryNotEmpty => Blame::User,
                _ => Blame::Environment,
            },
            Error::Download(_) => Blame::Environment,
            Error::Candle(_)
            | Error::NonFinite { .. }
            | Error::Tokenizer(_)
            | Error::Internal(_) => Blame::Internal,
        }
    }

    /// Whether the error is the user's input (a bad file, flag, path or config
    /// value): the CLI exits with code 2 for these and 1 for everything else.
    pub fn is_user_error(&self) -> bool {
        self.blame() == Blame::User
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

#[cfg(test)]
mod blame_tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> Error {
        Error::Io {
            path: "x".into(),
            source: std::io::Error::from(kind),
        }
    }

    #[test]
    fn a_missing_file_is_the_users_and_a_full_disk_is_not() {
        use std::io::ErrorKind as K;
        for kind in [
            K::NotFound,
            K::PermissionDenied,
            K::IsADirectory,
            K::NotADirectory,
            K::InvalidData,
        ] {
            assert_eq!(io(kind).blame(), Blame::User, "{kind:?}");
            assert!(io(kind).is_user_error());
        }
        for kind in [K::StorageFull, K::Other, K::UnexpectedEof, K::Interrupted] {
            assert_eq!(io(kind).blame(), Blame::Environment, "{kind:?}");
            assert!(!io(kind).is_user_error());
        }
    }

    #[test]
    fn every_variant_has_its_blame() {
        assert_eq!(Error::Config("x".into()).blame(), Blame::User);
        assert_eq!(
            Error::LineCount {
                left: "a".into(),
                left_lines: 1,
                right: "b".into(),
                right_lines: 2
            }
            .blame(),
            Blame::User
        );
        assert_eq!(Error::Download("x".into()).blame(), Blame::Environment);
        assert_eq!(Error::Internal("x".into()).blame(), Blame::Internal);
        assert_eq!(Error::Tokenizer("x".into()).blame(), Blame::Internal);
        assert_eq!(
            Error::NonFinite {
                step: 1,
                what: "loss".into(),
                value: f64::NAN,
                kept: None
            }
            .blame(),
            Blame::Internal
        );
    }
}
