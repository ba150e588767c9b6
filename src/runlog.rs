//! `metrics.jsonl`, a run's log: one JSON object a line, appended with a single
//! write each. The training loop writes [`LogLine`]s ([`append`]), and the report
//! reads them back ([`LogLine::parse`]); this module is the one place the format
//! is spelled out.
//!
//! A line without `"split"` is a [`TrainLine`] (every `train.log_every`
//! updates); a line with one is an [`EvalLine`] (`"dev"` after every
//! evaluation, the test split's name once at the end, with the best weights).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The log's file name in a run directory.
pub const FILE: &str = "metrics.jsonl";

/// Training progress over the last `log_every` updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    /// Updates made.
    pub step: u64,
    /// The epoch of the next batch.
    #[serde(default)]
    pub epoch: u64,
    /// The learning rate of the last update.
    #[serde(default)]
    pub lr: f64,
    /// Mean training loss (the CE step's) over the window; `None` only in a log
    /// whose loss was not finite (JSON has no NaN).
    pub loss: Option<f64>,
    /// Training accuracy over the window (translation: token accuracy).
    pub train_accuracy: f64,
    /// Mean complement loss over the window, for objectives that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complement: Option<f64>,
    /// Tokens per second since the start of this process.
    #[serde(default)]
    pub tokens_per_s: f64,
    /// Seconds since the start of this process.
    #[serde(default)]
    pub elapsed_s: f64,
}

/// One evaluation: a dev split during training, or the test split at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Updates made when it was evaluated.
    pub step: u64,
    /// The epoch (dev lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// `"dev"`, or the test split's name.
    pub split: String,
    /// Mean cross-entropy (translation: per target token, teacher forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Accuracy (translation: teacher-forced token accuracy).
    pub accuracy: f64,
    /// Macro-F1 (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Corpus BLEU (translation runs whose metric is BLEU, and their test line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bleu: Option<f64>,
    /// The beam the BLEU was decoded with (translation test line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beam: Option<usize>,
    /// sacreBLEU's signature of the BLEU (translation test line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Whether it was the best dev evaluation so far (dev lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LogLine {
    /// Training progress.
    Train(TrainLine),
    /// An evaluation.
    Eval(EvalLine),
}

impl LogLine {
    /// Parses one line: an [`EvalLine`] when it has `"split"`, else a
    /// [`TrainLine`]; the error names the missing or mistyped field.
    ///
    /// # Errors
    /// The JSON error.
    pub fn parse(raw: &str) -> std::result::Result<LogLine, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(raw)?;
        if value.get("split").is_some() {
            serde_json::from_value(value).map(LogLine::Eval)
        } else {
            serde_json::from_value(value).map(LogLine::Train)
        }
    }

    /// The line as written: compact JSON, no newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a log line serializes")
    }
}

fn path(run: &Path) -> PathBuf {
    run.join(FILE)
}

/// Appends `line` to `run`'s `metrics.jsonl` with one write of the whole line: a
/// kill leaves the line whole or absent (or, at worst, cut short at the end of
/// the file, which [`drop_torn_last_line`] and readers drop), never interleaved
/// with the next one.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn append(run: &Path, line: &LogLine) -> Result<()> {
    let path = path(run);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let mut text = line.to_json();
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)
}

/// Drops a last line of `metrics.jsonl` that a kill cut short (no final
/// newline), so that a resumed run's lines start on a line of their own; says so
/// on stderr.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn drop_torn_last_line(run: &Path) -> Result<()> {
    let path = path(run);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io)?;
    f.set_len(keep as u64)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    eprintln!(
        "note: {}: dropped a last line cut short by an interrupted write ({} bytes)",
        path.display(),
        bytes.len() - keep
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train() -> LogLine {
        LogLine::Train(TrainLine {
            step: 20,
            epoch: 1,
            lr: 0.001,
            loss: Some(1.5),
            train_accuracy: 0.25,
            complement: Some(0.8),
            tokens_per_s: 1000.0,
            elapsed_s: 3.5,
        })
    }

    fn dev() -> LogLine {
        LogLine::Eval(EvalLine {
            step: 20,
            epoch: Some(1),
            split: "dev".into(),
            loss: Some(1.4),
            accuracy: 0.3,
            macro_f1: Some(0.2),
            bleu: None,
            beam: None,
            signature: None,
            best: Some(true),
        })
    }

    #[test]
    fn lines_round_trip_and_leave_out_what_they_lack() {
        for line in [train(), dev()] {
            assert_eq!(LogLine::parse(&line.to_json()).unwrap(), line);
        }
        let json = dev().to_json();
        assert!(
            !json.contains("bleu")
                && !json.contains("signature")
                && json.contains("\"split\":\"dev\""),
            "{json}"
        );
    }

    #[test]
    fn lines_written_before_the_typed_log_still_parse() {
        // serde_json::json! wrote keys in alphabetical order.
        let old_train = r#"{"complement":0.5,"elapsed_s":1.0,"epoch":0,"loss":1.6,"lr":0.001,"step":1,"tokens_per_s":10.0,"train_accuracy":0.2}"#;
        let LogLine::Train(t) = LogLine::parse(old_train).unwrap() else {
            panic!("a train line")
        };
        assert_eq!((t.step, t.complement, t.loss), (1, Some(0.5), Some(1.6)));
        let old_test = r#"{"accuracy":0.4,"beam":5,"bleu":30.1,"loss":2.0,"signature":"nrefs:1","split":"test","step":9}"#;
        let LogLine::Eval(e) = LogLine::parse(old_test).unwrap() else {
            panic!("an eval line")
        };
        assert_eq!(
            (e.split.as_str(), e.bleu, e.beam, e.best),
            ("test", Some(30.1), Some(5), None)
        );
    }

    #[test]
    fn a_line_missing_a_field_names_it() {
        let e = LogLine::parse(r#"{"step":1,"split":"dev"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accuracy"), "{e}");
        let e = LogLine::parse(r#"{"step":1,"loss":1.0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train_accuracy"), "{e}");
    }

    #[test]
    fn append_writes_whole_lines_and_a_torn_tail_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        append(tmp.path(), &train()).unwrap();
        append(tmp.path(), &dev()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(FILE)).unwrap();
        assert_eq!(
            text,
            format!("{}\n{}\n", train().to_json(), dev().to_json())
        );
        std::fs::write(tmp.path().join(FILE), format!("{text}{{\"step\":3,")).unwrap();
        drop_torn_last_line(tmp.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(FILE)).unwrap(),
            text
        );
    }
}
