//! Dataset cards: one TOML file per dataset in `datasets/`, compiled into the
//! binary, saying where the data lives (local layout, hub repo, original URL),
//! its format, splits, label names, expected counts and checksums.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::table::TableFormat;
use crate::{Error, Result};

/// The cards that ship with cotext, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("sst2", include_str!("../../datasets/sst2.toml")),
    ("sst5", include_str!("../../datasets/sst5.toml")),
    ("imdb", include_str!("../../datasets/imdb.toml")),
    (
        "multi30k-en-de",
        include_str!("../../datasets/multi30k-en-de.toml"),
    ),
    (
        "iwslt15-en-vi",
        include_str!("../../datasets/iwslt15-en-vi.toml"),
    ),
];

/// What the examples of a dataset are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Text → class label.
    Classification,
    /// Source sentence → target sentence.
    Translation,
}

/// How the files of a source are laid out and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// SST `sentence<TAB>label` files ([`super::sst::read_sst_tsv`]); files
    /// with role `trees` hold the PTB trees of the same split.
    SstTsv,
    /// IMDB TSV: role `text` (`text<TAB>label`) + role `source` (`file<TAB>rating`).
    ImdbTsv,
    /// The original aclImdb folder; each split's file is the `aclImdb` folder.
    Aclimdb,
    /// One file per language; the file's role is its language code.
    Parallel,
    /// A generic table ([`TableFormat`]) with `text_column`/`label_column`
    /// (classification; a label is a name from the card's `labels` or an
    /// integer index) or one column per language (translation).
    Table,
}

impl Format {
    /// The name used in cards: `sst-tsv`, `imdb-tsv`, `aclimdb`, `parallel`, `table`.
    pub fn name(self) -> &'static str {
        match self {
            Format::SstTsv => "sst-tsv",
            Format::ImdbTsv => "imdb-tsv",
            Format::Aclimdb => "aclimdb",
            Format::Parallel => "parallel",
            Format::Table => "table",
        }
    }
}

/// Where a source is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A folder under `--data-dir` / `COTEXT_DATA`.
    Local,
    /// A Hugging Face hub dataset repo, cached in the HF cache.
    Hub,
    /// Files (or one `.tar.gz` archive) at an original URL, cached under
    /// `$HF_HOME/cotext/NAME/`.
    Url,
}

/// One file of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCard {
    /// The split the file belongs to.
    pub split: String,
    /// Path relative to the source's root (local folder, repo root, URL base).
    pub path: String,
    /// What the file holds within its split: a language code for parallel
    /// text, `text`/`source` for IMDB TSV, `trees` for SST trees. Default: the
    /// split's main file.
    #[serde(default)]
    pub role: Option<String>,
    /// Expected sha256 (lower-case hex), where known.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Expected size in bytes, where known.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// One place a dataset can come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCard {
    /// Local folder, hub repo or URL.
    pub kind: SourceKind,
    /// File layout.
    pub format: Format,
    /// Local: the folder under the data dir (`""` for the data dir itself).
    #[serde(default)]
    pub dir: Option<String>,
    /// Hub: the dataset repo id, e.g. `SetFit/sst2`.
    #[serde(default)]
    pub repo: Option<String>,
    /// Hub: the revision (a commit sha pins the content; default `main`).
    #[serde(default)]
    pub revision: Option<String>,
    /// URL: the base URL the file paths are appended to.
    #[serde(default)]
    pub base_url: Option<String>,
    /// URL: a `.tar.gz` (path under `base_url`) that holds the files; it is
    /// unpacked into the cache folder after download.
    #[serde(default)]
    pub archive: Option<FileCard>,
    /// Table format: the file format (`tsv`, `csv`, `jsonl`).
    #[serde(default)]
    pub table_format: Option<TableFormat>,
    /// Table format, classification: the text column.
    #[serde(default)]
    pub text_column: Option<String>,
    /// Table format, classification: the label column.
    #[serde(default)]
    pub label_column: Option<String>,
    /// Table format, TSV or CSV: whether the first line names the columns
    /// (default true). Without a header, `text_column`/`label_column` are
    /// 1-based column numbers (`"1"`).
    #[serde(default)]
    pub header: Option<bool>,
    /// Free-text note shown by `cotext data info` (differences from other sources).
    #[serde(default)]
    pub note: Option<String>,
    /// The files, per split.
    pub files: Vec<FileCard>,
}

impl SourceCard {
    /// The files of one split.
    pub fn split_files<'a>(&'a self, split: &'a str) -> impl Iterator<Item = &'a FileCard> + 'a {
        self.files.iter().filter(move |f| f.split == split)
    }

    /// The file of `split` with `role` (`None`: the file without a role).
    pub fn file(&self, split: &str, role: Option<&str>) -> Option<&FileCard> {
        self.files
            .iter()
            .find(|f| f.split == split && f.role.as_deref() == role)
    }

    /// A one-line description: `local folder sst2`, `hub SetFit/sst2@00ea8cc`, `url …`.
    pub fn describe(&self) -> String {
        match self.kind {
            SourceKind::Local => match self.dir.as_deref().unwrap_or("") {
                "" => "local data folder itself".to_string(),
                dir => format!("local folder {dir:?}"),
            },
            SourceKind::Hub => format!(
                "hub dataset {}@{}",
                self.repo.as_deref().unwrap_or("?"),
                self.revision.as_deref().unwrap_or("main")
            ),
            SourceKind::Url => self.base_url.as_deref().unwrap_or("?").to_string(),
        }
    }
}

/// Expected size and label counts of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitCard {
    /// Split name (`train`, `dev`, `test`, `tst2012`, …).
    pub name: String,
    /// Number of examples (records, sentence pairs).
    pub count: usize,
    /// Examples per label, in label order (classification; may be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_counts: Vec<usize>,
    /// IMDB only: examples per rating-scheme label (1, 2, 3, 4, 7, 8, 9, 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rating_counts: Vec<usize>,
}

/// A dataset card (`datasets/NAME.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCard {
    /// Short name used on the command line.
    pub name: String,
    /// One-line description.
    pub title: String,
    /// Classification or translation.
    pub task: Task,
    /// Classification: label names in class order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Translation: `[source, target]` language codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// Licence or terms of use, as stated by the sources.
    pub license: String,
    /// What to cite.
    pub citation: String,
    /// Splits with expected counts.
    pub splits: Vec<SplitCard>,
    /// Places the data can come from, tried in order (local before caches).
    pub sources: Vec<SourceCard>,
}

impl DatasetCard {
    /// Parses and validates a card from TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::InvalidFile`] for bad TOML, an unknown field, or an
    /// inconsistent card (a file in an undeclared split, a source missing the
    /// fields its kind needs, label counts not adding up).
    pub fn from_toml(origin: &Path, text: &str) -> Result<DatasetCard> {
        let invalid = |msg: String| Error::InvalidFile {
            path: origin.to_path_buf(),
            msg,
        };
        let card: DatasetCard = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        card.validate().map_err(invalid)?;
        Ok(card)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.task {
            Task::Classification if self.labels.len() < 2 => {
                return Err("a classification card needs at least 2 labels".into())
            }
            Task::Translation if self.languages.len() != 2 => {
                return Err("a translation card needs languages = [source, target]".into())
            }
            _ => {}
        }
        for split in &self.splits {
            if !split.label_counts.is_empty() {
                if split.label_counts.len() != self.labels.len() {
                    return Err(format!(
                        "split {}: {} label counts for {} labels",
                        split.name,
                        split.label_counts.len(),
                        self.labels.len()
                    ));
                }
                let sum: usize = split.label_counts.iter().sum();
                if sum != split.count {
                    return Err(format!(
                        "split {}: label counts add up to {sum}, not {}",
                        split.name, split.count
                    ));
                }
            }
        }
        for source in &self.sources {
            let need = |field: &Option<String>, name: &str| {
                field
                    .as_ref()
                    .map(|_| ())
                    .ok_or_else(|| format!("{:?} source needs `{name}`", source.kind))
            };
            match source.kind {
                SourceKind::Local => need(&source.dir, "dir")?,
                SourceKind::Hub => need(&source.repo, "repo")?,
                SourceKind::Url => need(&source.base_url, "base_url")?,
            }
            if source.format == Format::Table {
                if source.table_format.is_none() {
                    return Err("a table source needs `table_format`".into());
                }
                if self.task == Task::Classification {
                    need(&source.text_column, "text_column")?;
                    need(&source.label_column, "label_column")?;
                }
            }
            for file in &source.files {
                if !self.splits.iter().any(|s| s.name == file.split) {
                    return Err(format!(
                        "file {} is in undeclared split {:?}",
                        file.path, file.split
                    ));
                }
                if file.path.split('/').any(|c| c == "..") && source.kind != SourceKind::Local {
                    return Err(format!(
                        "file {}: `..` is only allowed in local sources",
                        file.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// Loads a card: a built-in name (`sst2`, `imdb`, …) or a path to a `.toml` file.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name (listing the known ones);
    /// [`Error::Io`] / [`Error::InvalidFile`] for a card file.
    pub fn load(name_or_path: &str) -> Result<DatasetCard> {
        if let Some((name, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            let origin = format!("datasets/{name}.toml");
            return DatasetCard::from_toml(Path::new(&origin), text);
        }
        let path = Path::new(name_or_path);
        if super::file::is_data_file(name_or_path) {
            return Err(Error::Config(format!(
                "{name_or_path} is a data file, not a dataset card: this command needs a card; \
                 `cotext data card {name_or_path} --out card.toml` writes one"
            )));
        }
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            return DatasetCard::from_toml(path, &text);
        }
        Err(Error::Config(format!(
            "unknown dataset {name_or_path:?}: expected one of {}, a path to a card (.toml) \
             or a data file (.tsv, .csv, .jsonl)",
            builtin_names().join(", ")
        )))
    }

    /// The expected size of a split.
    pub fn split(&self, name: &str) -> Option<&SplitCard> {
        self.splits.iter().find(|s| s.name == name)
    }
}

/// Names of the built-in cards.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_cards_parse_and_are_consistent() {
        for name in builtin_names() {
            let card = DatasetCard::load(name).unwrap();
            assert_eq!(card.name, name);
            assert!(
                card.sources.iter().any(|s| s.kind == SourceKind::Local),
                "{name}"
            );
            assert!(
                card.sources.iter().any(|s| s.kind != SourceKind::Local),
                "{name}: no download source"
            );
            for source in &card.sources {
                for file in &source.files {
                    if let Some(sha) = &file.sha256 {
                        assert!(
                            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                            "{name}: {sha}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_fields_and_names_are_rejected() {
        let text =
            include_str!("../../datasets/sst2.toml").replace("task =", "colour = \"red\"\ntask =");
        let err = DatasetCard::from_toml(Path::new("x.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml: ") && err.contains("colour"),
            "{err}"
        );
        let err = DatasetCard::load("sst3").unwrap_err().to_string();
        assert!(
            err.contains("unknown dataset \"sst3\"") && err.contains("sst2, sst5"),
            "{err}"
        );
        let text = include_str!("../../datasets/sst2.toml").replace("count = 6920", "count = 6921");
        let err = DatasetCard::from_toml(Path::new("y.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("label counts add up to 6920, not 6921"),
            "{err}"
        );
    }
}
