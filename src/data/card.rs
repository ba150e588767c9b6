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

/// Where a source's files are, with exactly what that place needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder under `--data-dir` / `COTEXT_DATA` (`""` for the data dir itself).
    Local {
        /// The folder, relative to the data dir.
        dir: String,
    },
    /// A Hugging Face hub dataset repo, cached in the HF cache.
    Hub {
        /// The dataset repo id, e.g. `SetFit/sst2`.
        repo: String,
        /// The revision (a commit sha pins the content); `None` is `main`.
        revision: Option<String>,
    },
    /// Files (or one `.tar.gz` archive) at an original URL, cached under
    /// `$HF_HOME/cotext/NAME/`.
    Url {
        /// The base URL the file paths are appended to.
        base_url: String,
        /// A `.tar.gz` (path under `base_url`) that holds the files; it is
        /// unpacked into the cache folder after download.
        archive: Option<FileCard>,
    },
}

impl Location {
    /// The kind of place, without its details.
    pub fn kind(&self) -> SourceKind {
        match self {
            Location::Local { .. } => SourceKind::Local,
            Location::Hub { .. } => SourceKind::Hub,
            Location::Url { .. } => SourceKind::Url,
        }
    }
}

/// How a source's files are read, with what a table needs to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// See [`Format::SstTsv`].
    SstTsv,
    /// See [`Format::ImdbTsv`].
    ImdbTsv,
    /// See [`Format::Aclimdb`].
    Aclimdb,
    /// See [`Format::Parallel`].
    Parallel,
    /// See [`Format::Table`].
    Table(TableSource),
}

impl Layout {
    /// The format's name tag, without its details.
    pub fn format(&self) -> Format {
        match self {
            Layout::SstTsv => Format::SstTsv,
            Layout::ImdbTsv => Format::ImdbTsv,
            Layout::Aclimdb => Format::Aclimdb,
            Layout::Parallel => Format::Parallel,
            Layout::Table(_) => Format::Table,
        }
    }
}

/// A table source: the file format and, for classification, the columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// The file format (`tsv`, `csv`, `jsonl`).
    pub format: TableFormat,
    /// Classification: the text and label columns. Translation tables have
    /// one column per language instead, so `None`.
    pub columns: Option<TableColumns>,
    /// TSV or CSV: whether the first line names the columns. Without a
    /// header, the columns are 1-based column numbers (`"1"`).
    pub header: bool,
}

/// The columns of a classification table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    /// The text column.
    pub text: String,
    /// The label column.
    pub label: String,
}

/// One place a dataset can come from: where ([`Location`]), how its files are
/// read ([`Layout`]), and the files per split.
///
/// In a card it is a flat TOML table (`kind = "hub"`, `repo = …`,
/// `format = "table"`, `table_format = …`); parsing checks that each kind and
/// format has the keys it needs and none that belong to another, so the rest
/// of the code never meets a half-filled source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSourceCard", into = "RawSourceCard")]
pub struct SourceCard {
    /// Local folder, hub repo or URL.
    pub location: Location,
    /// File layout.
    pub layout: Layout,
    /// Free-text note shown by `cotext data info` (differences from other sources).
    pub note: Option<String>,
    /// The files, per split.
    pub files: Vec<FileCard>,
}

/// A source as written in a card: every key of every kind, all optional.
/// Only [`SourceCard`]'s conversion reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceCard {
    kind: SourceKind,
    format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archive: Option<FileCard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table_format: Option<TableFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    files: Vec<FileCard>,
}

impl TryFrom<RawSourceCard> for SourceCard {
    type Error = String;

    fn try_from(raw: RawSourceCard) -> std::result::Result<SourceCard, String> {
        let kind = match raw.kind {
            SourceKind::Local => "a local source",
            SourceKind::Hub => "a hub source",
            SourceKind::Url => "a url source",
        };
        let need =
            |value: Option<String>, key: &str| value.ok_or_else(|| format!("{kind} needs `{key}`"));
        let refuse = |present: bool, key: &str| match present {
            true => Err(format!("{kind} does not take `{key}`")),
            false => Ok(()),
        };
        let location = match raw.kind {
            SourceKind::Local => {
                refuse(raw.repo.is_some(), "repo")?;
                refuse(raw.revision.is_some(), "revision")?;
                refuse(raw.base_url.is_some(), "base_url")?;
                refuse(raw.archive.is_some(), "archive")?;
                Location::Local {
                    dir: need(raw.dir, "dir")?,
                }
            }
            SourceKind::Hub => {
                refuse(raw.dir.is_some(), "dir")?;
                refuse(raw.base_url.is_some(), "base_url")?;
                refuse(raw.archive.is_some(), "archive")?;
                Location::Hub {
                    repo: need(raw.repo, "repo")?,
                    revision: raw.revision,
                }
            }
            SourceKind::Url => {
                refuse(raw.dir.is_some(), "dir")?;
                refuse(raw.repo.is_some(), "repo")?;
                refuse(raw.revision.is_some(), "revision")?;
                Location::Url {
                    base_url: need(raw.base_url, "base_url")?,
                    archive: raw.archive,
                }
            }
        };
        let layout = match raw.format {
            Format::Table => {
                let format = raw
                    .table_format
                    .ok_or("a table source needs `table_format`")?;
                let columns = match (raw.text_column, raw.label_column) {
                    (None, None) => None,
                    (Some(text), Some(label)) => Some(TableColumns { text, label }),
                    (Some(_), None) => return Err("`text_column` needs `label_column`".into()),
                    (None, Some(_)) => return Err("`label_column` needs `text_column`".into()),
                };
                Layout::Table(TableSource {
                    format,
                    columns,
                    header: raw.header.unwrap_or(true),
                })
            }
            other => {
                let not_table = |present: bool, key: &str| match present {
                    true => Err(format!(
                        "`{key}` belongs to format \"table\", not {:?}",
                        other.name()
                    )),
                    false => Ok(()),
                };
                not_table(raw.table_format.is_some(), "table_format")?;
                not_table(raw.text_column.is_some(), "text_column")?;
                not_table(raw.label_column.is_some(), "label_column")?;
                not_table(raw.header.is_some(), "header")?;
                match other {
                    Format::SstTsv => Layout::SstTsv,
                    Format::ImdbTsv => Layout::ImdbTsv,
                    Format::Aclimdb => Layout::Aclimdb,
                    Format::Parallel => Layout::Parallel,
                    Format::Table => unreachable!("matched above"),
                }
            }
        };
        Ok(SourceCard {
            location,
            layout,
            note: raw.note,
            files: raw.files,
        })
    }
}

impl From<SourceCard> for RawSourceCard {
    fn from(card: SourceCard) -> RawSourceCard {
        let mut raw = RawSourceCard {
            kind: card.location.kind(),
            format: card.layout.format(),
            dir: None,
            repo: None,
            revision: None,
            base_url: None,
            archive: None,
            table_format: None,
            text_column: None,
            label_column: None,
            header: None,
            note: card.note,
            files: card.files,
        };
        match card.location {
            Location::Local { dir } => raw.dir = Some(dir),
            Location::Hub { repo, revision } => {
                raw.repo = Some(repo);
                raw.revision = revision;
            }
            Location::Url { base_url, archive } => {
                raw.base_url = Some(base_url);
                raw.archive = archive;
            }
        }
        if let Layout::Table(table) = card.layout {
            raw.table_format = Some(table.format);
            if let Some(columns) = table.columns {
                raw.text_column = Some(columns.text);
                raw.label_column = Some(columns.label);
            }
            raw.header = (!table.header).then_some(false);
        }
        raw
    }
}

impl SourceCard {
    /// Local folder, hub repo or URL.
    pub fn kind(&self) -> SourceKind {
        self.location.kind()
    }

    /// The file layout's name tag.
    pub fn format(&self) -> Format {
        self.layout.format()
    }

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
        match &self.location {
            Location::Local { dir } => match dir.as_str() {
                "" => "local data folder itself".to_string(),
                dir => format!("local folder {dir:?}"),
            },
            Location::Hub { repo, revision } => format!(
                "hub dataset {repo}@{}",
                revision.as_deref().unwrap_or("main")
            ),
            Location::Url { base_url, .. } => base_url.clone(),
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
            if let Layout::Table(table) = &source.layout {
                match (self.task, &table.columns) {
                    (Task::Classification, None) => {
                        return Err(
                            "a classification table source needs `text_column` and `label_column`"
                                .into(),
                        )
                    }
                    (Task::Translation, Some(_)) => {
                        return Err("a translation table source takes no `text_column` or \
                                    `label_column`: its columns are the languages"
                            .into())
                    }
                    _ => {}
                }
            }
            for file in &source.files {
                if !self.splits.iter().any(|s| s.name == file.split) {
                    return Err(format!(
                        "file {} is in undeclared split {:?}",
                        file.path, file.split
                    ));
                }
                if file.path.split('/').any(|c| c == "..") && source.kind() != SourceKind::Local {
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
                card.sources.iter().any(|s| s.kind() == SourceKind::Local),
                "{name}"
            );
            assert!(
                card.sources.iter().any(|s| s.kind() != SourceKind::Local),
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
    fn builtin_cards_round_trip_through_toml() {
        for name in builtin_names() {
            let card = DatasetCard::load(name).unwrap();
            let text = toml::to_string(&card).unwrap();
            let again = DatasetCard::from_toml(Path::new("again.toml"), &text).unwrap();
            assert_eq!(again, card, "{name}");
        }
        let sst2 = DatasetCard::load("sst2").unwrap();
        let hub = sst2.sources.iter().find(|s| s.kind() == SourceKind::Hub);
        let hub = hub.unwrap();
        assert!(
            matches!(&hub.location, Location::Hub { repo, revision: Some(_) } if repo == "SetFit/sst2")
        );
        let Layout::Table(table) = &hub.layout else {
            panic!("{:?}", hub.layout)
        };
        assert_eq!(table.format, TableFormat::Jsonl);
        assert!(table.header);
        let columns = table.columns.as_ref().unwrap();
        assert_eq!(
            (columns.text.as_str(), columns.label.as_str()),
            ("text", "label")
        );
    }

    /// Each source kind and format takes exactly its own keys: a missing one
    /// and one that belongs to another kind are both refused, naming the key
    /// and the line.
    #[test]
    fn sources_take_exactly_the_keys_of_their_kind_and_format() {
        let sst2 = include_str!("../../datasets/sst2.toml");
        let cases = [
            (
                sst2.replace("dir = \"sst2\"", "dir = \"sst2\"\nrepo = \"x/y\""),
                "a local source does not take `repo`",
            ),
            (
                sst2.replace("repo = \"SetFit/sst2\"\n", ""),
                "a hub source needs `repo`",
            ),
            (
                sst2.replace("dir = \"sst2\"\n", ""),
                "a local source needs `dir`",
            ),
            (
                sst2.replace(
                    "format = \"sst-tsv\"",
                    "format = \"sst-tsv\"\nheader = false",
                ),
                "`header` belongs to format \"table\", not \"sst-tsv\"",
            ),
            (
                sst2.replace("table_format = \"jsonl\"\n", ""),
                "a table source needs `table_format`",
            ),
            (
                sst2.replace("label_column = \"label\"\n", ""),
                "`text_column` needs `label_column`",
            ),
            (
                sst2.replace("text_column = \"text\"\nlabel_column = \"label\"\n", ""),
                "a classification table source needs `text_column` and `label_column`",
            ),
        ];
        for (text, want) in cases {
            assert_ne!(text, sst2, "the case did not change the card: {want}");
            let err = DatasetCard::from_toml(Path::new("z.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("z.toml: ") && err.contains(want),
                "{want}: {err}"
            );
        }
        let multi30k = include_str!("../../datasets/multi30k-en-de.toml").replace(
            "table_format = \"jsonl\"",
            "table_format = \"jsonl\"\ntext_column = \"de\"\nlabel_column = \"en\"",
        );
        let err = DatasetCard::from_toml(Path::new("m.toml"), &multi30k)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a translation table source takes no"), "{err}");
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
