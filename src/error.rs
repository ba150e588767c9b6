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
    /// A model checkpoint lacks a tensor the model needs, or has one of the wrong
    /// shape or dtype.
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Which tensor, and what was expected and found.
        msg: String,
    },
}

impl Error {
    /// Whether the error is the user's input (a bad file, flag or config value):
    /// the CLI exits with code 2 for these and 1 for everything else.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Parse { .. } | Error::Config(_) | Error::Io { .. } | Error::Checkpoint { .. }
        )
    }
}

/// Result with the cotext [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
