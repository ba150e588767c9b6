//! Generic labelled tables: TSV (quoting off), CSV (RFC 4180 quoting) and JSON
//! Lines, with the text and label columns named by the caller.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lines::{Lines, MAX_LINE_BYTES};
use super::{Example, Pair};
use crate::{Error, Result};

/// The on-disk format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Tab-separated, first line a header, **no quoting or escaping**: every
    /// line has exactly as many TABs as the header.
    Tsv,
    /// Comma-separated with RFC 4180 quoting (`"a, ""b"""`), first line a header.
    Csv,
    /// One JSON object per line; blank lines are skipped.
    Jsonl,
}

impl TableFormat {
    /// Guesses the format from a file extension (`tsv`, `csv`, `jsonl`/`json`).
    pub fn from_path(path: &Path) -> Option<TableFormat> {
        match path.extension()?.to_str()? {
            "tsv" => Some(TableFormat::Tsv),
            "csv" => Some(TableFormat::Csv),
            "jsonl" | "json" => Some(TableFormat::Jsonl),
            _ => None,
        }
    }
}

/// How to read a labelled table: which columns hold the text and the label,
/// and the label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// File format.
    pub format: TableFormat,
    /// Name of the text column (a header field, or a JSON key).
    pub text_column: String,
    /// Name of the label column.
    pub label_column: String,
    /// Label names in class order. A label value is either one of these names
    /// or an integer class index below `labels.len()`. When empty, labels must
    /// be non-negative integers and any value is accepted.
    pub labels: Vec<String>,
    /// Whether the first line (TSV, CSV) names the columns. Without one, the
    /// columns are named by their 1-based number (`"1"`, `"2"`, …). Ignored for
    /// JSON Lines.
    pub header: bool,
}

/// Splits a TSV line into exactly `N` fields (no quoting).
///
/// # Errors
/// [`Error::Parse`] with the number of fields found.
pub fn split_tsv_line<'a, const N: usize>(
    path: &Path,
    line: usize,
    text: &'a str,
) -> Result<[&'a str; N]> {
    let mut out = [""; N];
    let mut fields = text.split('\t');
    let mut found = 0;
    for (i, field) in fields.by_ref().enumerate() {
        if i < N {
            out[i] = field;
        }
        found += 1;
    }
    if found != N {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            line,
            msg: format!(
                "expected {N} TAB-separated columns, found {found} (a missing column or a TAB inside the text)"
            ),
        });
    }
    Ok(out)
}

/// Parses an integer class label in `0..num_classes`.
///
/// # Errors
/// [`Error::Parse`] quoting the bad value and the allowed range.
pub fn parse_label(path: &Path, line: usize, value: &str, num_classes: u32) -> Result<u32> {
    match value.parse::<u32>() {
        Ok(label) if label < num_classes => Ok(label),
        _ => Err(Error::Parse {
            path: path.to_path_buf(),
            line,
            msg: format!(
                "bad label {value:?}: expected an integer 0-{}",
                num_classes.saturating_sub(1)
            ),
        }),
    }
}

fn resolve_label(path: &Path, line: usize, value: &str, labels: &[String]) -> Result<u32> {
    if let Some(i) = labels.iter().position(|name| name == value) {
        return Ok(i as u32);
    }
    match value.parse::<u32>() {
        Ok(label) if labels.is_empty() || (label as usize) < labels.len() => Ok(label),
        _ => {
            let expected = if labels.is_empty() {
                "a non-negative integer".to_string()
            } else {
                format!("one of {:?} or an integer 0-{}", labels, labels.len() - 1)
            };
            Err(Error::Parse {
                path: path.to_path_buf(),
                line,
                msg: format!("bad label {value:?}: expected {expected}"),
            })
        }
    }
}

fn column_index(path: &Path, header: &[&str], name: &str) -> Result<usize> {
    header
        .iter()
        .position(|h| *h == name)
        .ok_or_else(|| Error::Parse {
            path: path.to_path_buf(),
            line: 1,
            msg: format!("missing column {name:?}: the header has {header:?}"),
        })
}

/// The 0-based index of column `name` in a file without a header line, where
/// columns are named by their 1-based number.
fn column_number(path: &Path, first: &[&str], name: &str) -> Result<usize> {
    match name.parse::<usize>() {
        Ok(n) if (1..=first.len()).contains(&n) => Ok(n - 1),
        _ => Err(Error::Parse {
            path: path.to_path_buf(),
            line: 1,
            msg: format!(
                "no column {name:?}: the file has no header line, so columns are numbered 1-{} (first line {first:?})",
                first.len()
            ),
        }),
    }
}

/// Where each of `columns` is in the first record: by header name, or by
/// number when there is no header.
fn column_indices(
    path: &Path,
    first: &[&str],
    columns: &[&str],
    header: bool,
) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            if header {
                column_index(path, first, c)
            } else {
                column_number(path, first, c)
            }
        })
        .collect()
}

/// Drops a UTF-8 byte order mark at the start of a file's first line (Excel
/// and Notepad write one; it would otherwise stick to the first column name).
fn strip_bom(line: usize, text: String) -> String {
    match text.strip_prefix('\u{feff}') {
        Some(rest) if line == 1 => rest.to_string(),
        _ => text,
    }
}

fn empty_file(path: &Path, expected: &str) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        msg: format!("empty file: expected {expected}"),
    }
}

/// Reads a labelled table as described by `spec`.
///
/// # Errors
/// [`Error::Parse`] naming the line for a missing column, a wrong number of
/// fields, bad JSON, a non-string text, a bad label or invalid UTF-8;
/// [`Error::InvalidFile`] for an empty file; [`Error::Io`] if unreadable.
pub fn read_table(path: &Path, spec: &TableSpec) -> Result<Vec<Example>> {
    let rows = read_columns_with(
        path,
        spec.format,
        spec.header,
        &[&spec.text_column, &spec.label_column],
    )?;
    rows.into_iter()
        .map(|(line, mut fields)| {
            let label = fields.pop().expect("two columns");
            let text = fields.pop().expect("two columns");
            let label = resolve_label(path, line, &label, &spec.labels)?;
            Ok(Example { text, label })
        })
        .collect()
}

/// Reads sentence pairs from two columns of a table (e.g. a JSON Lines file
/// with `{"en": …, "de": …}` per line).
///
/// # Errors
/// As [`read_table`].
pub fn read_table_pairs(
    path: &Path,
    format: TableFormat,
    source_column: &str,
    target_column: &str,
) -> Result<Vec<Pair>> {
    let rows = read_columns(path, format, &[source_column, target_column])?;
    Ok(rows
        .into_iter()
        .map(|(_, mut fields)| {
            let target = fields.pop().expect("two columns");
            let source = fields.pop().expect("two columns");
            Pair { source, target }
        })
        .collect())
}

/// Reads the named columns of every record: `(line of the record, values)`.
/// JSON numbers and booleans are turned into their text; the text columns
/// must be JSON strings.
///
/// # Errors
/// As [`read_table`].
pub fn read_columns(
    path: &Path,
    format: TableFormat,
    columns: &[&str],
) -> Result<Vec<(usize, Vec<String>)>> {
    read_columns_with(path, format, true, columns)
}

/// As [`read_columns`], for a TSV or CSV file with (`header`) or without a
/// header line; without one, `columns` are 1-based column numbers.
///
/// # Errors
/// As [`read_table`].
pub fn read_columns_with(
    path: &Path,
    format: TableFormat,
    header: bool,
    columns: &[&str],
) -> Result<Vec<(usize, Vec<String>)>> {
    match format {
        TableFormat::Tsv => read_tsv_columns(path, header, columns),
        TableFormat::Csv => read_csv_columns(path, header, columns),
        TableFormat::Jsonl => read_jsonl_columns(path, columns),
    }
}

fn read_tsv_columns(
    path: &Path,
    header: bool,
    columns: &[&str],
) -> Result<Vec<(usize, Vec<String>)>> {
    let mut lines = Lines::open(path)?;
    let (first_line, first) = lines.next().ok_or_else(|| {
        empty_file(
            path,
            if header {
                "a header line naming the columns"
            } else {
                "TAB-separated lines"
            },
        )
    })??;
    let first = strip_bom(first_line, first);
    let fields: Vec<&str> = first.split('\t').collect();
    let index = column_indices(path, &fields, columns, header)?;
    let width = fields.len();
    let mut rows = Vec::new();
    if !header {
        rows.push((
            first_line,
            index.iter().map(|&i| fields[i].to_string()).collect(),
        ));
    }
    for item in lines {
        let (line, text) = item?;
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() != width {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line,
                msg: format!(
                    "expected {width} TAB-separated columns as {}, found {} (a missing column or a TAB inside the text)",
                    if header { "in the header" } else { "on line 1" },
                    fields.len()
                ),
            });
        }
        rows.push((line, index.iter().map(|&i| fields[i].to_string()).collect()));
    }
    Ok(rows)
}

fn read_csv_columns(
    path: &Path,
    header: bool,
    columns: &[&str],
) -> Result<Vec<(usize, Vec<String>)>> {
    let file = super::lines::open(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(file);
    let mut record = csv::ByteRecord::new();
    let csv_error = |err: csv::Error, line: usize| -> Error {
        let line = err.position().map(|p| p.line() as usize).unwrap_or(line);
        match err.into_kind() {
            csv::ErrorKind::Io(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
            other => Error::Parse {
                path: path.to_path_buf(),
                line,
                msg: format!("malformed CSV: {other:?}"),
            },
        }
    };
    let mut rows = Vec::new();
    let mut index = Vec::new();
    let mut width = 0;
    let mut first = true;
    loop {
        let line = reader.position().line() as usize;
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(err) => return Err(csv_error(err, line)),
        }
        let line = record.position().map(|p| p.line() as usize).unwrap_or(line);
        let mut fields = Vec::with_capacity(record.len());
        for (i, field) in record.iter().enumerate() {
            if field.len() > MAX_LINE_BYTES {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    line,
                    msg: format!(
                        "field {} is longer than the limit of {MAX_LINE_BYTES} bytes",
                        i + 1
                    ),
                });
            }
            match std::str::from_utf8(field) {
                Ok(s) => fields.push(s),
                Err(e) => {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        line,
                        msg: format!(
                            "invalid UTF-8 in field {} at byte {} (expected UTF-8 text)",
                            i + 1,
                            e.valid_up_to() + 1
                        ),
                    })
                }
            }
        }
        if first {
            first = false;
            index = column_indices(path, &fields, columns, header)?;
            width = fields.len();
            if header {
                continue;
            }
        }
        if fields.len() != width {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                line,
                msg: format!(
                    "expected {width} comma-separated fields as {}, found {}",
                    if header { "in the header" } else { "on line 1" },
                    fields.len()
                ),
            });
        }
        rows.push((line, index.iter().map(|&i| fields[i].to_string()).collect()));
    }
    if first {
        return Err(empty_file(
            path,
            if header {
                "a header line naming the columns"
            } else {
                "comma-separated lines"
            },
        ));
    }
    Ok(rows)
}

fn read_jsonl_columns(path: &Path, columns: &[&str]) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    for item in Lines::open(path)? {
        let (line, text) = item?;
        let text = strip_bom(line, text);
        if text.trim().is_empty() {
            continue;
        }
        let parse = |msg: String| Error::Parse {
            path: path.to_path_buf(),
            line,
            msg,
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| parse(format!("expected a JSON object: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| parse("expected a JSON object".into()))?;
        let mut fields = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let field = object
                .get(*column)
                .ok_or_else(|| parse(format!("missing key {column:?}")))?;
            let field = match field {
                serde_json::Value::String(s) => s.clone(),
                // Only the last column (a label) may be a number or a boolean.
                serde_json::Value::Number(n) if i + 1 == columns.len() && columns.len() > 1 => {
                    n.to_string()
                }
                serde_json::Value::Bool(b) if i + 1 == columns.len() && columns.len() > 1 => {
                    b.to_string()
                }
                other => {
                    return Err(parse(format!(
                        "key {column:?}: expected a string, found {other}"
                    )))
                }
            };
            fields.push(field);
        }
        rows.push((line, fields));
    }
    if rows.is_empty() {
        return Err(empty_file(path, "one JSON object per line"));
    }
    Ok(rows)
}

/// The first records of a file as they are, for guessing its layout.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// TSV or CSV: `(line, fields)`; the header line, if any, is the first record.
    Fields(Vec<(usize, Vec<String>)>),
    /// JSON Lines: `(line, key-value pairs)` in the order the keys are written.
    Objects(Vec<(usize, Vec<(String, serde_json::Value)>)>),
}

impl Sample {
    /// Whether the file holds no record at all.
    pub fn is_empty(&self) -> bool {
        match self {
            Sample::Fields(v) => v.is_empty(),
            Sample::Objects(v) => v.is_empty(),
        }
    }
}

/// Reads up to `limit` records from the start of a file (blank JSON Lines
/// skipped), without looking for any column.
///
/// # Errors
/// [`Error::Parse`] for a record that cannot be read (bad UTF-8, bad CSV
/// quoting, a line that is not a JSON object); [`Error::Io`] if unreadable.
pub fn sample(path: &Path, format: TableFormat, limit: usize) -> Result<Sample> {
    match format {
        TableFormat::Tsv => {
            let mut rows = Vec::new();
            for item in Lines::open(path)?.take(limit) {
                let (line, text) = item?;
                let text = strip_bom(line, text);
                rows.push((line, text.split('\t').map(str::to_string).collect()));
            }
            Ok(Sample::Fields(rows))
        }
        TableFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(super::lines::open(path)?);
            let mut rows = Vec::new();
            for record in reader.records().take(limit) {
                let record = record.map_err(|err| Error::Parse {
                    path: path.to_path_buf(),
                    line: err.position().map(|p| p.line() as usize).unwrap_or(0),
                    msg: format!("malformed CSV (expected UTF-8, RFC 4180 quoting): {err}"),
                })?;
                let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
                rows.push((line, record.iter().map(str::to_string).collect()));
            }
            Ok(Sample::Fields(rows))
        }
        TableFormat::Jsonl => {
            let mut rows = Vec::new();
            for item in Lines::open(path)? {
                if rows.len() == limit {
                    break;
                }
                let (line, text) = item?;
                let text = strip_bom(line, text);
                if text.trim().is_empty() {
                    continue;
                }
                let object: Ordered = serde_json::from_str(&text).map_err(|e| Error::Parse {
                    path: path.to_path_buf(),
                    line,
                    msg: format!("expected a JSON object: {e}"),
                })?;
                rows.push((line, object.0));
            }
            Ok(Sample::Objects(rows))
        }
    }
}

/// A JSON object with its keys in file order (`serde_json::Map` sorts them
/// unless the `preserve_order` feature is on, which would change every JSON
/// file cotext writes).
struct Ordered(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn spec(format: TableFormat) -> TableSpec {
        TableSpec {
            format,
            text_column: "review".into(),
            label_column: "stars".into(),
            labels: vec!["neg".into(), "pos".into()],
            header: true,
        }
    }

    #[test]
    fn same_table_in_three_formats() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = write(
            dir.path(),
            "a.tsv",
            b"id\treview\tstars\n1\tsays \"hi\", ok\tpos\n2\tbad\t0\n",
        );
        let csv = write(
            dir.path(),
            "a.csv",
            b"id,review,stars\n1,\"says \"\"hi\"\", ok\",pos\n2,bad,0\n",
        );
        let jsonl = write(
            dir.path(),
            "a.jsonl",
            b"{\"review\": \"says \\\"hi\\\", ok\", \"stars\": \"pos\"}\n\n{\"review\": \"bad\", \"stars\": 0}\n",
        );
        let want = vec![
            Example {
                text: "says \"hi\", ok".into(),
                label: 1,
            },
            Example {
                text: "bad".into(),
                label: 0,
            },
        ];
        for (path, format) in [
            (tsv, TableFormat::Tsv),
            (csv, TableFormat::Csv),
            (jsonl, TableFormat::Jsonl),
        ] {
            assert_eq!(TableFormat::from_path(&path), Some(format));
            assert_eq!(
                read_table(&path, &spec(format)).unwrap(),
                want,
                "{format:?}"
            );
        }
    }

    #[test]
    fn errors_name_line_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], TableFormat, &str); 7] = [
            (
                "m.tsv",
                b"review\tother\nx\t1\n",
                TableFormat::Tsv,
                ":1: missing column \"stars\": the header has [\"review\", \"other\"]",
            ),
            (
                "c.tsv",
                b"review\tstars\nx\n",
                TableFormat::Tsv,
                ":2: expected 2 TAB-separated columns as in the header, found 1",
            ),
            (
                "l.tsv",
                b"review\tstars\nx\tpos\ny\tmaybe\n",
                TableFormat::Tsv,
                ":3: bad label \"maybe\": expected one of [\"neg\", \"pos\"] or an integer 0-1",
            ),
            (
                "i.tsv",
                b"review\tstars\nx\t2\n",
                TableFormat::Tsv,
                ":2: bad label \"2\"",
            ),
            (
                "j.jsonl",
                b"{\"review\": \"a\", \"stars\": 1}\n{\"review\": 3, \"stars\": 1}\n",
                TableFormat::Jsonl,
                ":2: key \"review\": expected a string, found 3",
            ),
            (
                "k.jsonl",
                b"{\"review\": \"a\"\n",
                TableFormat::Jsonl,
                ":1: expected a JSON object",
            ),
            (
                "u.csv",
                b"review,stars\n\"caf\xe9\",1\n",
                TableFormat::Csv,
                ":2: invalid UTF-8 in field 1",
            ),
        ];
        for (name, content, format, want) in cases {
            let path = write(dir.path(), name, content);
            let err = read_table(&path, &spec(format)).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.starts_with(&path.display().to_string()), "{err}");
        }
        for (name, format) in [
            ("e.tsv", TableFormat::Tsv),
            ("e.csv", TableFormat::Csv),
            ("e.jsonl", TableFormat::Jsonl),
        ] {
            let path = write(dir.path(), name, b"");
            let err = read_table(&path, &spec(format)).unwrap_err();
            assert!(matches!(err, Error::InvalidFile { .. }), "{name}: {err}");
            assert!(err.to_string().contains("empty file"), "{err}");
        }
    }

    #[test]
    fn pairs_from_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "p.jsonl",
            "{\"en\": \"A dog.\", \"de\": \"Ein Hund.\"}\n".as_bytes(),
        );
        let pairs = read_table_pairs(&path, TableFormat::Jsonl, "en", "de").unwrap();
        assert_eq!(
            pairs,
            vec![Pair {
                source: "A dog.".into(),
                target: "Ein Hund.".into()
            }]
        );
    }
}
