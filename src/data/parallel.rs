//! Parallel text: one sentence per line, one file per language, line *i* of
//! each file belonging together (Multi30k `train.en`/`train.de`, IWSLT
//! `tst2012.en`/`tst2012.vi`).

use std::path::Path;

use super::lines::{count_lines, Lines};
use super::Pair;
use crate::{Error, Result};

/// Reads all lines of a text file (UTF-8, `\n`-separated, see [`Lines`]).
///
/// # Errors
/// [`Error::Parse`] for invalid UTF-8 or an over-long line; [`Error::Io`].
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    Lines::open(path)?
        .map(|item| item.map(|(_, text)| text))
        .collect()
}

/// Reads two line-aligned files into sentence pairs. Empty lines are kept
/// (they are valid, if useless, sentences).
///
/// # Errors
/// [`Error::LineCount`] naming both files and both counts when they
/// differ in length; [`Error::InvalidFile`] when both are empty; the errors of
/// [`read_lines`].
pub fn read_parallel(source: &Path, target: &Path) -> Result<Vec<Pair>> {
    // Count first, so a mismatch is reported before decoding (and without
    // blaming a line that is merely the first one past the shorter file).
    let (source_lines, target_lines) = (count_lines(source)?, count_lines(target)?);
    if source_lines != target_lines {
        return Err(Error::LineCount {
            left: source.display().to_string(),
            left_lines: source_lines,
            right: target.display().to_string(),
            right_lines: target_lines,
        });
    }
    if source_lines == 0 {
        return Err(Error::InvalidFile {
            path: source.to_path_buf(),
            msg: "empty file: expected one sentence per line".into(),
        });
    }
    let sources = read_lines(source)?;
    let targets = read_lines(target)?;
    Ok(sources
        .into_iter()
        .zip(targets)
        .map(|(source, target)| Pair { source, target })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unequal_files_name_both_counts() {
        let dir = tempfile::tempdir().unwrap();
        let en = dir.path().join("x.en");
        let de = dir.path().join("x.de");
        std::fs::write(&en, "a\nb\nc\n").unwrap();
        std::fs::write(&de, "a\nb\n").unwrap();
        let err = read_parallel(&en, &de).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "line counts differ: {} has 3 lines but {} has 2",
                en.display(),
                de.display()
            )
        );
        std::fs::write(&de, "A\n\nC").unwrap();
        let pairs = read_parallel(&en, &de).unwrap();
        assert_eq!(
            pairs[1],
            Pair {
                source: "b".into(),
                target: "".into()
            }
        );
        assert_eq!(pairs[2].target, "C");
    }
}
