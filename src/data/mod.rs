//! Datasets in, typed examples out.
//!
//! This room owns everything between files on disk (or on the hub) and
//! in-memory examples: the readers ([`sst`], [`imdb`], [`parallel`],
//! [`table`]), data files used directly ([`file`]), the dataset cards in `datasets/*.toml` ([`card`]), finding and
//! downloading data ([`hub`]), split statistics ([`stats`]) and batching with
//! our own seeded RNG ([`batch`], [`crate::rng`]). It never touches tensors or models.
//!
//! Every reader reports malformed input as a [`crate::Error`] naming the file,
//! the 1-based line and what was expected ([`crate::Error::Parse`]), or the
//! file alone when no line is to blame ([`crate::Error::InvalidFile`],
//! [`crate::Error::LineCount`]); none panics on bad input.
//!
//! ```no_run
//! use cotext::data::{DataDir, Dataset, LoadOptions};
//! let dataset = Dataset::open("sst2", &DataDir::from_flag(None))?;
//! let train = dataset.load("train", &LoadOptions::default())?;
//! println!("{} training sentences", train.len());
//! # Ok::<(), cotext::Error>(())
//! ```

pub mod batch;
pub mod card;
mod dataset;
pub mod file;
pub mod hub;
pub mod imdb;
pub mod lines;
pub mod parallel;
pub mod pretrained;
pub mod sst;
pub mod stats;
pub mod table;
mod tar;

pub use batch::{Batch, BatchCursor, Batcher, BatcherConfig};
pub use card::DatasetCard;
pub use dataset::{Dataset, LoadOptions, SplitData};
pub use hub::DataDir;
pub use imdb::LabelScheme;

/// A labelled text (classification): the text as in the source and a class
/// index into the dataset's label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Class index, `0..num_classes`.
    pub label: u32,
}

/// A translation pair: line *i* of the source file and line *i* of the target file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Source-language sentence.
    pub source: String,
    /// Target-language sentence.
    pub target: String,
}
