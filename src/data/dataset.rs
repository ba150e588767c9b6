//! A located dataset: a card plus the source whose files were found, and the
//! code that reads one split according to the source's format.

use std::path::{Path, PathBuf};

use super::card::{DatasetCard, FileCard, Format, Layout, SourceCard, Task};
use super::hub::{self, DataDir};
use super::imdb::{self, LabelScheme};
use super::table::{self, TableSpec};
use super::{parallel, sst, Example, Pair};
use crate::{Error, Result};

/// Choices that change which examples a split yields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// IMDB: binary (2 classes) or rating (8 classes) labels. Ignored elsewhere.
    pub scheme: LabelScheme,
    /// SST: read sentences from the PTB trees (root labels) instead of the TSV.
    pub trees: bool,
    /// SST: phrase-level training: the **train** split yields every distinct
    /// phrase of its trees with its label (other splits stay sentence-level,
    /// from the trees). Implies `trees`.
    pub phrases: bool,
}

/// The examples of one split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitData {
    /// Labelled texts.
    Classification(Vec<Example>),
    /// Sentence pairs.
    Translation(Vec<Pair>),
}

impl SplitData {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            SplitData::Classification(v) => v.len(),
            SplitData::Translation(v) => v.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The texts a tokenizer should be trained on: texts, or source and
    /// target sentences.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            SplitData::Classification(v) => v.iter().map(|e| e.text.as_str()).collect(),
            SplitData::Translation(v) => v
                .iter()
                .flat_map(|p| [p.source.as_str(), p.target.as_str()])
                .collect(),
        }
    }
}

/// A dataset whose files were found: where, and in which layout.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The card.
    pub card: DatasetCard,
    /// The source whose files were found.
    pub source: SourceCard,
    /// The folder the source's file paths are relative to.
    pub root: PathBuf,
    /// Where it was found, for messages (`--data-dir …`, `HF cache …`).
    pub origin: String,
}

impl Dataset {
    /// Finds dataset `name` (a built-in card name or a card path) as
    /// [`hub::locate`] does.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name, [`Error::DatasetNotFound`]
    /// saying where it looked and how to get the data.
    pub fn open(name: &str, data_dir: &DataDir) -> Result<Dataset> {
        let card = DatasetCard::load(name)?;
        hub::locate(&card, data_dir)
    }

    /// Where a file of the source lies on disk.
    pub fn path(&self, file: &FileCard) -> PathBuf {
        self.root.join(&file.path)
    }

    /// Whether all files that a split needs (trees excluded) are present.
    pub fn has_split(&self, split: &str) -> bool {
        hub::split_present(&self.source, &self.root, split)
    }

    /// The card's splits that are present here, in card order.
    pub fn splits(&self) -> Vec<String> {
        self.card
            .splits
            .iter()
            .filter(|s| self.has_split(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }

    /// The card's splits that are missing here.
    pub fn missing_splits(&self) -> Vec<String> {
        self.card
            .splits
            .iter()
            .filter(|s| !self.has_split(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }

    /// Label names for `options` (IMDB's rating scheme has 8), empty for translation.
    pub fn label_names(&self, options: &LoadOptions) -> Vec<String> {
        if self.card.task == Task::Translation {
            return Vec::new();
        }
        if matches!(self.source.format(), Format::ImdbTsv | Format::Aclimdb) {
            return options
                .scheme
                .names()
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        self.card.labels.clone()
    }

    fn file(&self, split: &str, role: Option<&str>) -> Result<PathBuf> {
        match self.source.file(split, role) {
            Some(file) => Ok(self.path(file)),
            None => Err(Error::Config(format!(
                "dataset {} ({}) has no {} file for split {split:?}; splits: {}",
                self.card.name,
                self.source.describe(),
                role.unwrap_or("data"),
                self.card
                    .splits
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Reads one split.
    ///
    /// # Errors
    /// [`Error::Config`] for a split the card does not have, or options the
    /// source cannot honour (`trees` without tree files);
    /// [`Error::DatasetNotFound`] for a split whose files are missing here;
    /// the readers' errors ([`Error::Parse`], …) for malformed files.
    pub fn load(&self, split: &str, options: &LoadOptions) -> Result<SplitData> {
        if self.card.split(split).is_none() {
            return Err(Error::Config(format!(
                "dataset {} has no split {split:?}; splits: {}",
                self.card.name,
                self.card
                    .splits
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let wants_trees = options.trees || options.phrases;
        if !wants_trees && !self.has_split(split) {
            return Err(Error::DatasetNotFound {
                name: format!("{}/{split}", self.card.name),
                looked: vec![format!(
                    "{} ({}): files of split {split} missing",
                    self.root.display(),
                    self.origin
                )],
                hint: hub::hint(&self.card),
            });
        }
        let num_classes = self.card.labels.len() as u32;
        match &self.source.layout {
            Layout::SstTsv if wants_trees => {
                let trees = sst::read_sst_trees(&self.file(split, Some("trees"))?)?;
                let binary = num_classes == 2;
                Ok(SplitData::Classification(
                    if options.phrases && split == "train" {
                        sst::phrase_examples(&trees, binary)
                    } else {
                        sst::sentence_examples(&trees, binary)
                    },
                ))
            }
            Layout::SstTsv => Ok(SplitData::Classification(sst::read_sst_tsv(
                &self.file(split, None)?,
                num_classes,
            )?)),
            _ if wants_trees => Err(Error::Config(format!(
                "--trees/--phrases need the SST PTB trees; {} ({}) has none",
                self.card.name,
                self.source.describe()
            ))),
            Layout::ImdbTsv => {
                let reviews = imdb::read_imdb_tsv(
                    &self.file(split, Some("text"))?,
                    &self.file(split, Some("source"))?,
                )?;
                Ok(SplitData::Classification(imdb::examples(
                    reviews,
                    options.scheme,
                )))
            }
            Layout::Aclimdb => {
                let reviews = imdb::read_aclimdb(&self.file(split, None)?, split)?;
                Ok(SplitData::Classification(imdb::examples(
                    reviews,
                    options.scheme,
                )))
            }
            Layout::Parallel => {
                let [src, tgt] = self.languages()?;
                Ok(SplitData::Translation(parallel::read_parallel(
                    &self.file(split, Some(src))?,
                    &self.file(split, Some(tgt))?,
                )?))
            }
            Layout::Table(table) => {
                let path = self.file(split, None)?;
                let format = table.format;
                match (self.card.task, &table.columns) {
                    (Task::Classification, Some(columns)) => {
                        let spec = TableSpec {
                            format,
                            text_column: columns.text.clone(),
                            label_column: columns.label.clone(),
                            labels: self.card.labels.clone(),
                            header: table.header,
                        };
                        let examples = table::read_table(&path, &spec)?;
                        check_labels(&path, &examples, num_classes)?;
                        Ok(SplitData::Classification(examples))
                    }
                    (Task::Classification, None) => Err(Error::Internal(format!(
                        "card {}: a classification table without columns passed the card check",
                        self.card.name
                    ))),
                    (Task::Translation, _) => {
                        let [src, tgt] = self.languages()?;
                        Ok(SplitData::Translation(table::read_table_pairs(
                            &path, format, src, tgt,
                        )?))
                    }
                }
            }
        }
    }

    fn languages(&self) -> Result<[&str; 2]> {
        match self.card.languages.as_slice() {
            [a, b] => Ok([a.as_str(), b.as_str()]),
            _ => Err(Error::Config(format!(
                "card {} needs languages = [source, target]",
                self.card.name
            ))),
        }
    }
}

fn check_labels(path: &Path, examples: &[Example], num_classes: u32) -> Result<()> {
    match examples.iter().position(|e| e.label >= num_classes) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidFile {
            path: path.to_path_buf(),
            msg: format!(
                "record {}: label {} is not below the card's {num_classes} classes",
                i + 1,
                examples[i].label
            ),
        }),
    }
}
