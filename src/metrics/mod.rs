//! Evaluation metrics. Pure functions over plain Rust values (no tensors): this
//! room depends on nothing else in cotext.

mod classification;

pub use classification::{ClassScores, ClassificationReport};
