//! Data files used directly (`--data FILE`): a `.tsv`, `.csv` or `.jsonl` file
//! whose text and label columns are named by the user or guessed, read through
//! a dataset card built in memory. `cotext data card FILE` writes that same
//! card, so the file route and the card route read the same examples.
//!
//! Guessing, in order:
//! - **header** (TSV, CSV): the first line is a header when it holds the label
//!   column's name (default `label`) or the named text column; otherwise, if a
//!   value of its first or last field is a label, the file has no header and
//!   columns are numbered from 1; otherwise it is a header that lacks the label
//!   column, which is an error asking for `--label-column`. A one-column file
//!   (texts to predict) has a header only when its first line is a usual name
//!   (`text`, `sentence`, `review`, …);
//! - **label column**: `label`, or for a file without a header the last column
//!   (the first if only that one holds a label);
//! - **text column**: the first column, other than the label's, whose values in
//!   the first 100 records are not all numbers (so `id`/`idx` columns are skipped).
//!
//! [`read_labelled_file`] is the one call for a command that scores a model on
//! a file against the model's own labels.

use std::path::{Path, PathBuf};

use super::card::{
    self, DatasetCard, FileCard, Location, SourceCard, SplitCard, TableColumns, TableSource, Task,
};
use super::dataset::{Dataset, LoadOptions, SplitData};
use super::table::{self, Sample, TableFormat, TableSpec};
use super::Example;
use crate::{Error, Result};

/// The label column used when none is named.
pub const DEFAULT_LABEL_COLUMN: &str = "label";

/// Header names that mark the first line of a one-column file as a header.
const USUAL_TEXT_NAMES: &[&str] = &[
    "text", "sentence", "review", "content", "document", "comment", "body", "input",
];

/// Records looked at to guess the layout.
const SAMPLE_RECORDS: usize = 101;

/// Whether `name` is a data file path (`.tsv`, `.csv`, `.jsonl` or `.json`)
/// rather than a dataset name or a card.
pub fn is_data_file(name: &str) -> bool {
    TableFormat::from_path(Path::new(name)).is_some()
}

/// The table format of a data file, from its extension.
///
/// # Errors
/// [`Error::Config`] for another extension, listing the accepted ones.
pub fn format_of(path: &Path) -> Result<TableFormat> {
    TableFormat::from_path(path).ok_or_else(|| {
        Error::Config(format!(
            "{}: unknown data file type: expected .tsv, .csv or .jsonl",
            path.display()
        ))
    })
}

/// What the user said about a file's columns; `None` leaves it to the guess.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileColumns {
    /// The text column: a header name or JSON key, or a 1-based column number
    /// for a file without a header.
    pub text: Option<String>,
    /// The label column, as `text`. Default [`DEFAULT_LABEL_COLUMN`].
    pub label: Option<String>,
    /// Whether the first line is a header (TSV, CSV). Default: guessed.
    pub header: Option<bool>,
}

/// How a file is read: its format and the columns used, and which of them
/// were guessed (to say so in the output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: TableFormat,
    /// Whether the first line is a header (always true for JSON Lines).
    pub header: bool,
    /// The text column (a name, or a 1-based number without a header).
    pub text: String,
    /// The label column; `None` when reading texts only and there is none.
    pub label: Option<String>,
    /// The header decision was guessed.
    pub header_guessed: bool,
    /// The text column was guessed.
    pub text_guessed: bool,
    /// The label column was guessed (the default name, or a position).
    pub label_guessed: bool,
}

impl Layout {
    /// One line for the user: the columns used and how they were chosen.
    pub fn describe(&self) -> String {
        let column = |name: &str| {
            if self.header {
                format!("{name:?}")
            } else {
                format!("column {name}")
            }
        };
        let how = |guessed: bool| if guessed { " (guessed)" } else { "" };
        let header = match (self.format, self.header) {
            (TableFormat::Jsonl, _) => String::new(),
            (_, true) => format!(", header line{}", how(self.header_guessed)),
            (_, false) => format!(", no header line{}", how(self.header_guessed)),
        };
        let label = match &self.label {
            Some(l) if self.label_guessed && self.header => {
                format!(", label {} (the default)", column(l))
            }
            Some(l) => format!(", label {}{}", column(l), how(self.label_guessed)),
            None => String::new(),
        };
        let hint = if self.text_guessed || self.label_guessed || self.header_guessed {
            "; choose with --text-column/--label-column"
        } else {
            ""
        };
        format!(
            "{}: {}{header}: text {}{}{label}{hint}",
            self.path.display(),
            format_name(self.format),
            column(&self.text),
            how(self.text_guessed),
        )
    }

    fn spec(&self, labels: &[String]) -> TableSpec {
        TableSpec {
            format: self.format,
            text_column: self.text.clone(),
            label_column: self.label.clone().unwrap_or_default(),
            labels: labels.to_vec(),
            header: self.header,
        }
    }
}

fn format_name(format: TableFormat) -> &'static str {
    match format {
        TableFormat::Tsv => "tsv",
        TableFormat::Csv => "csv",
        TableFormat::Jsonl => "jsonl",
    }
}

fn parse_error(path: &Path, line: usize, msg: String) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        line,
        msg,
    }
}

fn empty_file(path: &Path) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        msg: "empty file: expected labelled texts (a .tsv/.csv with a text and a label column, or JSON Lines)".into(),
    }
}

fn no_examples(path: &Path) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        msg: "no examples: the file has a header line only (pass --no-header if that line is data)"
            .into(),
    }
}

/// Whether `value` can be a label: one of `labels`, or an integer class index
/// (below `labels.len()` when the labels are known).
fn is_label(value: &str, labels: Option<&[String]>) -> bool {
    let value = value.trim();
    match labels {
        Some(labels) => {
            labels.iter().any(|l| l == value)
                || value.parse::<usize>().is_ok_and(|i| i < labels.len())
        }
        None => value.parse::<u32>().is_ok(),
    }
}

/// A value that is not text (a number or nothing), for the text-column guess.
fn is_number(value: &str) -> bool {
    let value = value.trim();
    value.is_empty() || value.parse::<f64>().is_ok()
}

/// Guesses (or checks) how a file is laid out. `labels` are the label names
/// when known (a trained run's); `need_label` is false when only the texts
/// are read (prediction), so a missing label column is fine.
///
/// # Errors
/// [`Error::InvalidFile`] for an empty file; [`Error::Parse`] naming line 1
/// for a named column that is not there, a header without the label column,
/// or no text-like column; [`Error::Config`] for an unknown extension.
pub fn layout(
    path: &Path,
    columns: &FileColumns,
    labels: Option<&[String]>,
    need_label: bool,
) -> Result<Layout> {
    let format = format_of(path)?;
    match table::sample(path, format, SAMPLE_RECORDS)? {
        sample if sample.is_empty() => Err(empty_file(path)),
        Sample::Objects(objects) => jsonl_layout(path, columns, need_label, &objects),
        Sample::Fields(rows) => fields_layout(path, format, columns, labels, need_label, &rows),
    }
}

type Object = Vec<(String, serde_json::Value)>;

fn jsonl_layout(
    path: &Path,
    columns: &FileColumns,
    need_label: bool,
    objects: &[(usize, Object)],
) -> Result<Layout> {
    let (line, first) = &objects[0];
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    let missing = |what: &str, key: &str, flag: &str| {
        parse_error(
            path,
            *line,
            format!(
                "no {what} key {key:?}: the first object has keys {keys:?}; name it with {flag}"
            ),
        )
    };
    let label_name = columns.label.as_deref().unwrap_or(DEFAULT_LABEL_COLUMN);
    let label = if keys.contains(&label_name) {
        Some(label_name.to_string())
    } else if need_label || columns.label.is_some() {
        return Err(missing("label", label_name, "--label-column"));
    } else {
        None
    };
    let text = match &columns.text {
        Some(t) if keys.contains(&t.as_str()) => t.clone(),
        Some(t) => return Err(missing("text", t, "--text-column")),
        None => {
            let text_like = |key: &str| {
                objects.iter().all(|(_, o)| {
                    matches!(
                        o.iter().find(|(k, _)| k == key),
                        Some((_, serde_json::Value::String(_)))
                    )
                }) && objects.iter().any(|(_, o)| {
                    o.iter()
                        .any(|(k, v)| k == key && v.as_str().is_some_and(|s| !is_number(s)))
                })
            };
            keys.iter()
                .find(|k| Some(**k) != label.as_deref() && text_like(k))
                .map(|k| k.to_string())
                .ok_or_else(|| {
                    parse_error(
                        path,
                        *line,
                        format!("no text key: no key of {keys:?} holds text in every object; name it with --text-column"),
                    )
                })?
        }
    };
    Ok(Layout {
        path: path.to_path_buf(),
        format: TableFormat::Jsonl,
        header: true,
        text,
        label,
        header_guessed: false,
        text_guessed: columns.text.is_none(),
        label_guessed: columns.label.is_none(),
    })
}

fn fields_layout(
    path: &Path,
    format: TableFormat,
    columns: &FileColumns,
    labels: Option<&[String]>,
    need_label: bool,
    rows: &[(usize, Vec<String>)],
) -> Result<Layout> {
    let first = &rows[0].1;
    let label_name = columns.label.as_deref().unwrap_or(DEFAULT_LABEL_COLUMN);
    let numbered = |c: &Option<String>| c.as_deref().is_some_and(|c| c.parse::<usize>().is_ok());
    let named = |c: &str| first.iter().any(|f| f == c);
    let header = match columns.header {
        Some(h) => h,
        None if named(label_name) || columns.text.as_deref().is_some_and(named) => true,
        // Columns chosen by number: the file has no header.
        None if numbered(&columns.text) || numbered(&columns.label) => false,
        // Columns chosen by a name that is not on line 1: a header that lacks
        // them, which the check below reports.
        None if columns.text.is_some() || columns.label.is_some() => true,
        // One column (texts to predict): a header only if it reads like one.
        None if first.len() == 1 => {
            USUAL_TEXT_NAMES.contains(&first[0].trim().to_lowercase().as_str())
        }
        None => {
            let data_like = first.first().is_some_and(|f| is_label(f, labels))
                || first.last().is_some_and(|f| is_label(f, labels));
            !(data_like && first.len() > 1)
        }
    };
    if header && rows.len() == 1 {
        return Err(no_examples(path));
    }
    let data: Vec<&Vec<String>> = rows
        .iter()
        .skip(usize::from(header))
        .map(|(_, r)| r)
        .collect();
    let line_one = |msg: String| parse_error(path, rows[0].0, msg);
    let label = if header {
        if named(label_name) {
            Some(label_name.to_string())
        } else if need_label || columns.label.is_some() {
            return Err(line_one(format!(
                "no label column {label_name:?}: the header has {first:?}; name it with --label-column \
                 (or pass --no-header if line 1 is data)"
            )));
        } else {
            None
        }
    } else {
        match &columns.label {
            Some(l) => Some(check_number(path, rows[0].0, first, l, "--label-column")?),
            None if !need_label => None,
            None => {
                let last = first.len();
                let at = |i: usize| first.get(i - 1).is_some_and(|f| is_label(f, labels));
                Some(if !at(last) && at(1) { 1 } else { last }.to_string())
            }
        }
    };
    let text = match &columns.text {
        Some(t) if header => {
            if !named(t) {
                return Err(line_one(format!(
                    "no text column {t:?}: the header has {first:?}; name it with --text-column"
                )));
            }
            t.clone()
        }
        Some(t) => check_number(path, rows[0].0, first, t, "--text-column")?,
        None => {
            let index = |i: usize| {
                if header {
                    first[i].clone()
                } else {
                    (i + 1).to_string()
                }
            };
            (0..first.len())
                .map(index)
                .zip(0..)
                .find(|(name, i)| {
                    Some(name) != label.as_ref()
                        && data.iter().any(|r| r.get(*i).is_some_and(|v| !is_number(v)))
                })
                .map(|(name, _)| name)
                .ok_or_else(|| {
                    line_one(format!(
                        "no text column: no column of {first:?} holds text; name it with --text-column"
                    ))
                })?
        }
    };
    Ok(Layout {
        path: path.to_path_buf(),
        format,
        header,
        text,
        label,
        header_guessed: columns.header.is_none(),
        text_guessed: columns.text.is_none(),
        label_guessed: columns.label.is_none(),
    })
}

fn check_number(
    path: &Path,
    line: usize,
    first: &[String],
    name: &str,
    flag: &str,
) -> Result<String> {
    match name.parse::<usize>() {
        Ok(n) if (1..=first.len()).contains(&n) => Ok(n.to_string()),
        _ => Err(parse_error(
            path,
            line,
            format!(
                "no column {name:?}: the file has no header line, so {flag} takes a column number 1-{} (line 1 is {first:?})",
                first.len()
            ),
        )),
    }
}

/// The label names of a file whose labels are not given: the integers
/// `0..K` when the values are exactly those class indices, else the distinct
/// values in sorted order (numerically when all are integers: star ratings
/// 1-5 become 5 classes named "1" … "5").
///
/// # Errors
/// The readers' errors; [`Error::InvalidFile`] when fewer than 2 distinct
/// labels are found.
pub fn discover_labels(layout: &Layout) -> Result<Vec<String>> {
    let label = layout.label.as_deref().unwrap_or(DEFAULT_LABEL_COLUMN);
    let rows = table::read_columns_with(
        &layout.path,
        layout.format,
        layout.header,
        &[&layout.text, label],
    )?;
    let mut values: Vec<String> = rows
        .into_iter()
        .map(|(_, mut f)| f.pop().expect("two columns"))
        .collect();
    values.sort();
    values.dedup();
    let mut numbers: Vec<u32> = values.iter().filter_map(|v| v.parse().ok()).collect();
    if numbers.len() == values.len() {
        numbers.sort_unstable();
        values = numbers.iter().map(u32::to_string).collect();
    }
    if values.len() < 2 {
        return Err(Error::InvalidFile {
            path: layout.path.clone(),
            msg: format!("column {label:?} holds {} distinct label(s) {values:?}; a classifier needs at least 2", values.len()),
        });
    }
    Ok(values)
}

/// Reads a labelled file against known label names (a value is a name or an
/// integer index below `labels.len()`).
///
/// # Errors
/// [`Error::Parse`] naming the line of a label outside `labels` (and the
/// readers' errors); [`Error::InvalidFile`] for a file without examples.
pub fn read_examples(layout: &Layout, labels: &[String]) -> Result<Vec<Example>> {
    let examples = table::read_table(&layout.path, &layout.spec(labels))?;
    if examples.is_empty() {
        return Err(no_examples(&layout.path));
    }
    Ok(examples)
}

/// A labelled file read for a trained model.
#[derive(Debug, Clone)]
pub struct LabelledFile {
    /// How the file was read.
    pub layout: Layout,
    /// The examples, labels as indices into the labels given.
    pub examples: Vec<Example>,
}

/// Reads labelled examples from a data file for a model trained with `labels`
/// (its `labels.json`): the one call for commands that score a run on a file
/// (`eval`, `attack`). Say [`Layout::describe`] to the user.
///
/// # Errors
/// As [`layout`] and [`read_examples`].
pub fn read_labelled_file(
    path: &Path,
    columns: &FileColumns,
    labels: &[String],
) -> Result<LabelledFile> {
    let layout = layout(path, columns, Some(labels), true)?;
    let examples = read_examples(&layout, labels)?;
    Ok(LabelledFile { layout, examples })
}

/// Reads the texts of a data file (prediction): `(line, text)` per record.
///
/// # Errors
/// As [`layout`] and the readers'.
pub fn read_texts(path: &Path, columns: &FileColumns) -> Result<(Layout, Vec<(usize, String)>)> {
    let layout = layout(path, columns, None, false)?;
    let rows = table::read_columns_with(path, layout.format, layout.header, &[&layout.text])?;
    let texts = rows
        .into_iter()
        .map(|(line, mut f)| (line, f.pop().expect("one column")))
        .collect();
    Ok((layout, texts))
}

/// A dataset made of data files, one per split, with the layout they were
/// read with.
#[derive(Debug, Clone)]
pub struct FileDataset {
    /// The dataset (its card describes the files).
    pub dataset: Dataset,
    /// The layout, guessed from the first file and used for all.
    pub layout: Layout,
}

/// Opens data files as a dataset: `files` maps split names to paths. The
/// layout is guessed from the first file; the labels are `labels` (a run's)
/// or discovered in the first file ([`discover_labels`]). Every file is read
/// once here, so a bad label is reported (file and line) before anything runs,
/// and the card holds each split's count and label counts.
///
/// # Errors
/// As [`layout`], [`discover_labels`] and [`read_examples`].
pub fn open(
    files: &[(String, PathBuf)],
    columns: &FileColumns,
    labels: Option<&[String]>,
) -> Result<FileDataset> {
    let (_, first) = files
        .first()
        .ok_or_else(|| Error::Config("no data file given".into()))?;
    let layout = layout(first, columns, labels, true)?;
    let labels = match labels {
        Some(l) => l.to_vec(),
        None => discover_labels(&layout)?,
    };
    let root = absolute(first)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut splits = Vec::new();
    let mut file_cards = Vec::new();
    for (i, (split, path)) in files.iter().enumerate() {
        let layout = if i == 0 {
            layout.clone()
        } else {
            if format_of(path)? != layout.format {
                return Err(Error::Config(format!(
                    "the files of one data set must share a layout: {} is {}, but {} is {}",
                    first.display(),
                    format_name(layout.format),
                    path.display(),
                    format_name(format_of(path)?)
                )));
            }
            let other = self::layout(path, columns, Some(&labels), true)?;
            let key = |l: &Layout| (l.format, l.header, l.text.clone(), l.label.clone());
            if key(&other) != key(&layout) {
                return Err(Error::Config(format!(
                    "the files of one data set must share a layout: {}, but {}",
                    layout.describe(),
                    other.describe()
                )));
            }
            other
        };
        let examples = read_examples(&layout, &labels)?;
        let mut label_counts = vec![0; labels.len()];
        for e in &examples {
            label_counts[e.label as usize] += 1;
        }
        splits.push(SplitCard {
            name: split.clone(),
            count: examples.len(),
            label_counts,
            rating_counts: Vec::new(),
        });
        let abs = absolute(path)?;
        let relative = match abs.parent() {
            Some(parent) if parent == root => {
                abs.file_name().map(PathBuf::from).unwrap_or(abs.clone())
            }
            _ => abs.clone(),
        };
        file_cards.push(FileCard {
            split: split.clone(),
            path: relative.to_string_lossy().into_owned(),
            role: None,
            sha256: None,
            bytes: None,
        });
    }
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let label = layout
        .label
        .clone()
        .ok_or_else(|| Error::Internal("a file data set read without a label column".into()))?;
    let source = SourceCard {
        location: Location::Local {
            dir: root.to_string_lossy().into_owned(),
        },
        layout: card::Layout::Table(TableSource {
            format: layout.format,
            columns: Some(TableColumns {
                text: layout.text.clone(),
                label,
            }),
            header: layout.header,
        }),
        note: Some(layout.describe()),
        files: file_cards,
    };
    let card = DatasetCard {
        name: name.clone(),
        title: format!(
            "{name} ({} file{})",
            format_name(layout.format),
            if files.len() > 1 { "s" } else { "" }
        ),
        task: Task::Classification,
        labels,
        languages: Vec::new(),
        license: "unknown: state the data's licence here".into(),
        citation: "unknown: say where the data comes from here".into(),
        splits,
        sources: vec![source.clone()],
    };
    let text =
        toml::to_string(&card).map_err(|e| Error::Internal(format!("card for {name}: {e}")))?;
    // Round-trip through the card parser so a file dataset obeys every rule a
    // written card does (at least 2 labels, label counts adding up).
    let card = DatasetCard::from_toml(first, &text)?;
    let dataset = Dataset {
        card,
        source,
        root,
        origin: "data file".into(),
    };
    Ok(FileDataset { dataset, layout })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The card text for a [`FileDataset`]: the in-memory card with each file's
/// byte size and sha256 added (so `cotext data fetch CARD --data-dir DIR`
/// verifies the files), and a comment saying where it came from.
///
/// # Errors
/// [`Error::Io`] if a file cannot be read for its checksum.
pub fn card_toml(files: &FileDataset) -> Result<String> {
    let mut card = files.dataset.card.clone();
    for source in &mut card.sources {
        source.note = None;
        for file in &mut source.files {
            let path = files.dataset.root.join(&file.path);
            let bytes = std::fs::read(&path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            use sha2::Digest;
            file.sha256 = Some(format!("{:x}", sha2::Sha256::digest(&bytes)));
            file.bytes = Some(bytes.len() as u64);
        }
    }
    let body = toml::to_string(&card)
        .map_err(|e| Error::Internal(format!("card for {}: {e}", card.name)))?;
    Ok(format!(
        "# Dataset card written by `cotext data card` for {}.\n# {}\n# `dir` is absolute so the card works from any folder; make it relative\n# (to --data-dir) before sharing, and fill in the licence and citation.\n\n{body}",
        files.layout.path.display(),
        files.layout.describe(),
    ))
}

/// Reads one split of a file dataset (a shortcut for [`Dataset::load`]).
///
/// # Errors
/// As [`Dataset::load`].
pub fn load_split(files: &FileDataset, split: &str) -> Result<Vec<Example>> {
    match files.dataset.load(split, &LoadOptions::default())? {
        SplitData::Classification(v) => Ok(v),
        SplitData::Translation(_) => unreachable!("file datasets are classification"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn guess(path: &Path) -> Layout {
        layout(path, &FileColumns::default(), None, true).unwrap()
    }

    #[test]
    fn guesses_header_text_and_label() {
        let dir = tempfile::tempdir().unwrap();
        let with = write(
            dir.path(),
            "a.tsv",
            b"idx\tsentence\tlabel\n1\tfine .\t1\n2\tbad\t0\n",
        );
        let l = guess(&with);
        assert_eq!(
            (l.header, l.text.as_str(), l.label.as_deref()),
            (true, "sentence", Some("label"))
        );
        let without = write(dir.path(), "b.tsv", b"fine .\t1\nbad\t0\n");
        let l = guess(&without);
        assert_eq!(
            (l.header, l.text.as_str(), l.label.as_deref()),
            (false, "1", Some("2"))
        );
        let texts = write(dir.path(), "t.tsv", b"fine .\nbad\n");
        let l = layout(&texts, &FileColumns::default(), None, false).unwrap();
        assert_eq!((l.header, l.text.as_str(), l.label), (false, "1", None));
        let named = write(dir.path(), "n.tsv", b"Text\nfine .\n");
        let l = layout(&named, &FileColumns::default(), None, false).unwrap();
        assert_eq!((l.header, l.text.as_str()), (true, "Text"));
        let label_first = write(dir.path(), "c.csv", b"1,\"fine, really\"\n0,bad\n");
        let l = guess(&label_first);
        assert_eq!(
            (l.header, l.text.as_str(), l.label.as_deref()),
            (false, "2", Some("1"))
        );
        let jsonl = write(
            dir.path(),
            "d.jsonl",
            b"{\"id\": 3, \"review\": \"ok\", \"label\": \"pos\"}\n",
        );
        let l = guess(&jsonl);
        assert_eq!(
            (l.text.as_str(), l.label.as_deref()),
            ("review", Some("label"))
        );
        assert!(
            l.describe().contains("text \"review\" (guessed)"),
            "{}",
            l.describe()
        );
    }

    #[test]
    fn discovered_labels_are_indices_or_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let ints = write(dir.path(), "i.tsv", b"text\tlabel\na\t2\nb\t0\nc\t1\n");
        assert_eq!(discover_labels(&guess(&ints)).unwrap(), ["0", "1", "2"]);
        let stars = write(dir.path(), "s.tsv", b"text\tlabel\na\t5\nb\t10\nc\t1\n");
        assert_eq!(discover_labels(&guess(&stars)).unwrap(), ["1", "5", "10"]);
        let names = write(dir.path(), "n.tsv", b"text\tlabel\na\tpos\nb\tneg\n");
        assert_eq!(discover_labels(&guess(&names)).unwrap(), ["neg", "pos"]);
        let one = write(dir.path(), "o.tsv", b"text\tlabel\na\tpos\n");
        assert!(discover_labels(&guess(&one))
            .unwrap_err()
            .to_string()
            .contains("at least 2"));
    }

    #[test]
    fn the_card_reads_what_the_file_route_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "r.csv",
            b"\xef\xbb\xbfreview,label\r\n\"good, very\",pos\r\nbad,0\r\n",
        );
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let files = open(
            &[("test".into(), path.clone())],
            &FileColumns::default(),
            Some(&labels),
        )
        .unwrap();
        let direct = load_split(&files, "test").unwrap();
        assert_eq!(direct.iter().map(|e| e.label).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(direct[0].text, "good, very");
        let card_path = dir.path().join("card.toml");
        std::fs::write(&card_path, card_toml(&files).unwrap()).unwrap();
        let dataset =
            Dataset::open(card_path.to_str().unwrap(), &super::super::DataDir::None).unwrap();
        match dataset.load("test", &LoadOptions::default()).unwrap() {
            SplitData::Classification(v) => assert_eq!(v, direct),
            other => panic!("{other:?}"),
        }
    }
}
