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
                | Error::LineCount { .. }
                | Error::EmptyInput { .. }
        )
    }
}

/// Result with the cotext [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
