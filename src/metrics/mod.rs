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

/// Writes sacreBLEU signature fields as `key:value|key:value|…` (shared by the
/// BLEU and chrF signatures' `Display`).
pub(crate) fn write_signature(
    f: &mut std::fmt::Formatter<'_>,
    fields: &[(&'static str, String)],
) -> std::fmt::Result {
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            f.write_str("|")?;
        }
        write!(f, "{k}:{v}")?;
    }
    Ok(())
}
