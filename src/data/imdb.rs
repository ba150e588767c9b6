//! IMDB Large Movie Review Dataset (Maas et al., 2011): the original
//! `aclImdb/{train,test}/{pos,neg}/ID_RATING.txt` layout, and the TSV form
//! (`train.tsv` `text\tlabel` + line-aligned `train.source.tsv` `file\trating`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lines::{count_lines, Lines, MAX_LINE_BYTES};
use super::table::split_tsv_line;
use super::Example;
use crate::{Error, Result};

/// One review with its star rating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// Raw review text (HTML `<br />` kept).
    pub text: String,
    /// Star rating 1–4 (negative) or 7–10 (positive).
    pub rating: u8,
    /// The original aclImdb path, e.g. `train/pos/0_9.txt`.
    pub file: String,
}

/// How IMDB ratings become class labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelScheme {
    /// 2 classes: rating ≤ 4 → 0 (negative), rating ≥ 7 → 1 (positive).
    #[default]
    Binary,
    /// 8 classes, one per rating that occurs: 1–4 → 0–3, 7–10 → 4–7.
    Rating,
}

impl LabelScheme {
    /// The number of classes.
    pub fn num_classes(self) -> usize {
        self.names().len()
    }

    /// Class names in label order.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            LabelScheme::Binary => &["negative", "positive"],
            LabelScheme::Rating => &["1", "2", "3", "4", "7", "8", "9", "10"],
        }
    }

    /// The label of a rating, or `None` for ratings that IMDB's labelled set
    /// never contains (0, 5, 6, above 10).
    pub fn label(self, rating: u8) -> Option<u32> {
        match (self, rating) {
            (LabelScheme::Binary, 1..=4) => Some(0),
            (LabelScheme::Binary, 7..=10) => Some(1),
            (LabelScheme::Rating, 1..=4) => Some(u32::from(rating) - 1),
            (LabelScheme::Rating, 7..=10) => Some(u32::from(rating) - 3),
            _ => None,
        }
    }
}

/// Turns reviews into labelled examples under `scheme`.
pub fn examples(reviews: Vec<Review>, scheme: LabelScheme) -> Vec<Example> {
    reviews
        .into_iter()
        .map(|r| Example {
            label: scheme
                .label(r.rating)
                .expect("ratings are validated on read"),
            text: r.text,
        })
        .collect()
}

/// Parses an aclImdb file name `ID_RATING.txt` into `(id, rating)`, checking
/// the rating against the folder (`neg`: 1–4, `pos`: 7–10).
fn parse_file_name(name: &str, polarity: &str) -> std::result::Result<(u32, u8), String> {
    let stem = name
        .strip_suffix(".txt")
        .ok_or_else(|| format!("expected a file name ID_RATING.txt, found {name:?}"))?;
    let (id, rating) = stem
        .split_once('_')
        .ok_or_else(|| format!("expected a file name ID_RATING.txt, found {name:?}"))?;
    let id: u32 = id
        .parse()
        .map_err(|_| format!("expected a numeric review id in {name:?}"))?;
    let rating: u8 = rating
        .parse()
        .map_err(|_| format!("expected a numeric rating in {name:?}"))?;
    let ok = match polarity {
        "neg" => (1..=4).contains(&rating),
        "pos" => (7..=10).contains(&rating),
        _ => false,
    };
    if !ok {
        return Err(format!(
            "rating {rating} in {name:?} does not fit folder `{polarity}` (neg: 1-4, pos: 7-10)"
        ));
    }
    Ok((id, rating))
}

/// Parses an aclImdb relative path `SPLIT/POLARITY/ID_RATING.txt`.
fn parse_source_path(file: &str) -> std::result::Result<(u32, u8), String> {
    let parts: Vec<&str> = file.split('/').collect();
    match parts.as_slice() {
        [_, polarity @ ("pos" | "neg"), name] => parse_file_name(name, polarity),
        _ => Err(format!(
            "expected a path SPLIT/{{pos,neg}}/ID_RATING.txt, found {file:?}"
        )),
    }
}

/// Reads one split of the original layout: `root/split/{neg,pos}/ID_RATING.txt`
/// (`root` is the `aclImdb` folder). Reviews come negative first, then
/// positive, each by numeric id: the row order of the TSV form. Other folders
/// (`unsup`) and files (`urls_*.txt`, `*.feat`) are ignored.
///
/// # Errors
/// [`Error::Io`] for a missing folder; [`Error::InvalidFile`] for a file name
/// that is not `ID_RATING.txt` or a rating that does not fit its folder, an
/// over-long review or one with invalid UTF-8; [`Error::InvalidFile`] for a
/// split without reviews.
pub fn read_aclimdb(root: &Path, split: &str) -> Result<Vec<Review>> {
    let mut reviews = Vec::new();
    for polarity in ["neg", "pos"] {
        let dir = root.join(split).join(polarity);
        let io = |source| Error::Io {
            path: dir.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let path = entry.path();
            let name = name.to_str().ok_or_else(|| Error::InvalidFile {
                path: path.clone(),
                msg: "file name is not UTF-8".into(),
            })?;
            let (id, rating) =
                parse_file_name(name, polarity).map_err(|msg| Error::InvalidFile {
                    path: path.clone(),
                    msg,
                })?;
            entries.push((id, rating, name.to_string(), path));
        }
        entries.sort_by_key(|e| e.0);
        for (_, rating, name, path) in entries {
            let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            if bytes.len() > MAX_LINE_BYTES {
                return Err(Error::InvalidFile {
                    path,
                    msg: format!("review is longer than the limit of {MAX_LINE_BYTES} bytes"),
                });
            }
            let text = String::from_utf8(bytes).map_err(|e| Error::InvalidFile {
                path: path.clone(),
                msg: format!(
                    "invalid UTF-8 at byte {} (expected UTF-8 text)",
                    e.utf8_error().valid_up_to() + 1
                ),
            })?;
            reviews.push(Review {
                text,
                rating,
                file: format!("{split}/{polarity}/{name}"),
            });
        }
    }
    if reviews.is_empty() {
        return Err(Error::InvalidFile {
            path: root.join(split),
            msg: "no reviews: expected files neg/ID_RATING.txt and pos/ID_RATING.txt".into(),
        });
    }
    Ok(reviews)
}

/// Reads the TSV form: `data` (`text<TAB>label`, label 0/1) and its
/// line-aligned `source` (`file<TAB>rating`, the aclImdb path and 1–10 rating).
/// Every row is checked: the rating must fit the label (0 ↔ 1–4, 1 ↔ 7–10)
/// and the file name (`ID_RATING.txt`).
///
/// # Errors
/// [`Error::LineCount`] when the two files differ in length;
/// [`Error::Parse`] naming the file and line of a bad header, a wrong number
/// of columns, a bad label or rating, a rating that contradicts the label or
/// the file name, invalid UTF-8; [`Error::InvalidFile`] for an empty file.
pub fn read_imdb_tsv(data: &Path, source: &Path) -> Result<Vec<Review>> {
    let (data_lines, source_lines) = (count_lines(data)?, count_lines(source)?);
    if data_lines != source_lines {
        return Err(Error::LineCount {
            left: data.display().to_string(),
            left_lines: data_lines,
            right: source.display().to_string(),
            right_lines: source_lines,
        });
    }
    let mut texts = Lines::open(data)?;
    let mut sources = Lines::open(source)?;
    for (lines, path, header) in [
        (&mut texts, data, "text\tlabel"),
        (&mut sources, source, "file\trating"),
    ] {
        match lines.next() {
            None => {
                return Err(Error::InvalidFile {
                    path: path.to_path_buf(),
                    msg: format!("empty file: expected a header line {header:?}"),
                })
            }
            Some(first) => {
                let (line, found) = first?;
                if found != header {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        line,
                        msg: format!("expected the header {header:?}, found {found:?}"),
                    });
                }
            }
        }
    }
    let mut reviews = Vec::with_capacity(data_lines.saturating_sub(1));
    for (text_item, source_item) in texts.zip(sources) {
        let (line, text_line) = text_item?;
        let (source_line_no, source_line) = source_item?;
        debug_assert_eq!(line, source_line_no);
        let [text, label] = split_tsv_line::<2>(data, line, &text_line)?;
        let [file, rating] = split_tsv_line::<2>(source, line, &source_line)?;
        let label = super::table::parse_label(data, line, label, 2)?;
        let source_error = |msg: String| Error::Parse {
            path: source.to_path_buf(),
            line,
            msg,
        };
        let rating: u8 = match rating.parse() {
            Ok(r @ (1..=4 | 7..=10)) => r,
            _ => {
                return Err(source_error(format!(
                    "bad rating {rating:?}: expected an integer 1-4 or 7-10"
                )))
            }
        };
        let (_, file_rating) = parse_source_path(file).map_err(source_error)?;
        if file_rating != rating {
            return Err(source_error(format!(
                "rating {rating} contradicts the file name {file:?}"
            )));
        }
        if LabelScheme::Binary.label(rating) != Some(label) {
            return Err(Error::Parse {
                path: data.to_path_buf(),
                line,
                msg: format!(
                    "label {label} contradicts rating {rating} on line {line} of {} (expected {})",
                    source.display(),
                    LabelScheme::Binary.label(rating).expect("valid rating")
                ),
            });
        }
        reviews.push(Review {
            text: text.to_string(),
            rating,
            file: file.to_string(),
        });
    }
    Ok(reviews)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_schemes() {
        let ratings = [1u8, 2, 3, 4, 7, 8, 9, 10];
        let binary: Vec<_> = ratings
            .iter()
            .map(|&r| LabelScheme::Binary.label(r).unwrap())
            .collect();
        assert_eq!(binary, [0, 0, 0, 0, 1, 1, 1, 1]);
        let rating: Vec<_> = ratings
            .iter()
            .map(|&r| LabelScheme::Rating.label(r).unwrap())
            .collect();
        assert_eq!(rating, [0, 1, 2, 3, 4, 5, 6, 7]);
        for (r, l) in ratings.iter().zip(&rating) {
            assert_eq!(LabelScheme::Rating.names()[*l as usize], r.to_string());
        }
        for bad in [0u8, 5, 6, 11] {
            assert_eq!(LabelScheme::Binary.label(bad), None);
            assert_eq!(LabelScheme::Rating.label(bad), None);
        }
    }

    #[test]
    fn aclimdb_and_tsv_agree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aclImdb");
        for (rel, text) in [
            ("train/neg/10_2.txt", "Dull.<br />Very dull."),
            ("train/neg/2_4.txt", "Meh\tmeh."),
            ("train/pos/0_9.txt", "Bromwell High is a cartoon comedy."),
            ("train/unsup/0_0.txt", "ignored"),
        ] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        std::fs::write(root.join("train/urls_pos.txt"), "x").unwrap();
        let reviews = read_aclimdb(&root, "train").unwrap();
        let files: Vec<_> = reviews.iter().map(|r| r.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "train/neg/2_4.txt",
                "train/neg/10_2.txt",
                "train/pos/0_9.txt"
            ]
        );
        let labels: Vec<_> = examples(reviews.clone(), LabelScheme::Rating)
            .iter()
            .map(|e| e.label)
            .collect();
        assert_eq!(labels, [3, 1, 6]);

        let data = dir.path().join("train.tsv");
        let source = dir.path().join("train.source.tsv");
        let mut d = String::from("text\tlabel\n");
        let mut s = String::from("file\trating\n");
        for r in &reviews {
            d.push_str(&format!(
                "{}\t{}\n",
                r.text.replace('\t', " "),
                u32::from(r.rating >= 7)
            ));
            s.push_str(&format!("{}\t{}\n", r.file, r.rating));
        }
        std::fs::write(&data, &d).unwrap();
        std::fs::write(&source, &s).unwrap();
        let from_tsv = read_imdb_tsv(&data, &source).unwrap();
        assert_eq!(from_tsv.len(), 3);
        assert_eq!(from_tsv[0], reviews[0].clone().with_text("Meh meh."));
        assert_eq!(from_tsv[1..], reviews[1..]);

        // A label that contradicts the rating names the data file and line.
        std::fs::write(
            &data,
            d.replacen("Dull.<br />Very dull.\t0", "Dull.<br />Very dull.\t1", 1),
        )
        .unwrap();
        let err = read_imdb_tsv(&data, &source).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:3: label 1 contradicts rating 2",
                data.display()
            )),
            "{err}"
        );
        // Unequal files.
        std::fs::write(&data, &d).unwrap();
        std::fs::write(&source, s.rsplitn(2, "train/pos").last().unwrap()).unwrap();
        let err = read_imdb_tsv(&data, &source).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LineCount {
                    left_lines: 4,
                    right_lines: 3,
                    ..
                }
            ),
            "{err}"
        );
        // A rating that does not fit its folder.
        std::fs::write(root.join("train/pos/5_3.txt"), "x").unwrap();
        let err = read_aclimdb(&root, "train").unwrap_err().to_string();
        assert!(
            err.ends_with(
                "rating 3 in \"5_3.txt\" does not fit folder `pos` (neg: 1-4, pos: 7-10)"
            ),
            "{err}"
        );
    }

    impl Review {
        fn with_text(mut self, text: &str) -> Review {
            self.text = text.to_string();
            self
        }
    }
}
