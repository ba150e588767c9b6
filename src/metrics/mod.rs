//! Evaluation metrics. Pure functions over plain Rust values (no tensors): this
//! room depends on nothing else in cotext.

pub mod bleu;
pub mod chrf;
mod classification;
pub mod text;
mod unicode_tables;

pub use bleu::{Bleu, BleuConfig, BleuScore, Smoothing, Tokenize};
pub use chrf::{Chrf, ChrfConfig, ChrfScore};
pub use classification::{ClassScores, ClassificationReport};
