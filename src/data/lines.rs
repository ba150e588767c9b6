//! Line-by-line reading with 1-based line numbers, strict UTF-8 and a bound on
//! line length: the one place where raw bytes become text.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The longest line any reader accepts, in bytes (without the newline): 1 MiB.
///
/// The longest IMDB review is about 14 kB; a longer line almost always means a
/// binary file or a file with the wrong line endings. The bound also keeps a
/// corrupt multi-gigabyte "line" from being read into memory whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Opens `path` for reading; the error names the file.
pub fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

/// An iterator over the lines of a file: `(line number, text)`, 1-based.
///
/// Lines are split on `\n` only (never on U+0085 or U+2028, which occur inside
/// IMDB reviews); one trailing `\r` is removed so CRLF files read like LF files.
/// A final line without `\n` is still a line. Each line must be valid UTF-8
/// and at most [`MAX_LINE_BYTES`] long, else the iterator yields an
/// [`Error::Parse`] naming the file and line, and then stops.
pub struct Lines<R> {
    reader: R,
    path: PathBuf,
    line: usize,
    max_bytes: usize,
    buf: Vec<u8>,
    done: bool,
}

impl Lines<BufReader<File>> {
    /// Opens `path` and iterates over its lines.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self::new(open(path)?, path))
    }
}

impl<R: BufRead> Lines<R> {
    /// Iterates over the lines of `reader`; `path` is only used in errors.
    pub fn new(reader: R, path: &Path) -> Self {
        Self {
            reader,
            path: path.to_path_buf(),
            line: 0,
            max_bytes: MAX_LINE_BYTES,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Sets the longest accepted line in bytes (default [`MAX_LINE_BYTES`]).
    pub fn max_line_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The file the lines come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse_error(&self, msg: String) -> Error {
        Error::Parse {
            path: self.path.clone(),
            line: self.line,
            msg,
        }
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        self.buf.clear();
        let limit = self.max_bytes as u64 + 2; // room for "\r\n"
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        if self.buf.len() > self.max_bytes {
            return Err(self.parse_error(format!(
                "line is longer than the limit of {} bytes (is this a text file with \\n line endings?)",
                self.max_bytes
            )));
        }
        let bytes = std::mem::take(&mut self.buf);
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(err) => {
                let at = err.utf8_error().valid_up_to();
                let bad = err.as_bytes()[at];
                Err(self.parse_error(format!(
                    "invalid UTF-8: byte 0x{bad:02x} at byte {} of the line (expected UTF-8 text)",
                    at + 1
                )))
            }
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<(usize, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_line() {
            Ok(Some(text)) => Some(Ok((self.line, text))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Counts the lines of a file the way [`Lines`] does (a final line without
/// `\n` counts), without decoding them.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn count_lines(path: &Path) -> Result<usize> {
    let mut reader = open(path)?;
    let mut count = 0;
    let mut last = b'\n';
    loop {
        let buf = reader.fill_buf().map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if buf.is_empty() {
            break;
        }
        count += memchr_count(buf);
        last = buf[buf.len() - 1];
        let len = buf.len();
        reader.consume(len);
    }
    if last != b'\n' {
        count += 1;
    }
    Ok(count)
}

fn memchr_count(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<Result<(usize, String)>> {
        Lines::new(bytes, Path::new("mem.txt")).collect()
    }

    #[test]
    fn splits_on_newline_only_and_strips_cr() {
        let got: Vec<_> = lines(b"a\xc2\x85b\r\nc\nlast")
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a\u{85}b".to_string()),
                (2, "c".to_string()),
                (3, "last".to_string())
            ]
        );
    }

    #[test]
    fn invalid_utf8_names_line_and_byte() {
        let got = lines(b"ok\nbad \xff here\nnever\n");
        assert_eq!(got.len(), 2);
        let err = got[1].as_ref().unwrap_err().to_string();
        assert_eq!(
            err,
            "mem.txt:2: invalid UTF-8: byte 0xff at byte 5 of the line (expected UTF-8 text)"
        );
    }

    #[test]
    fn overlong_line_is_an_error_not_an_allocation() {
        let mut data = vec![b'x'; 100];
        data.push(b'\n');
        let got: Vec<_> = Lines::new(&data[..], Path::new("m"))
            .max_line_bytes(10)
            .collect();
        assert_eq!(got.len(), 1);
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("m:1: line is longer than the limit of 10 bytes"));
        let exact: Vec<_> = Lines::new(&data[..], Path::new("m"))
            .max_line_bytes(100)
            .collect();
        assert_eq!(exact.len(), 1);
        assert_eq!(exact[0].as_ref().unwrap().1.len(), 100);
    }

    #[test]
    fn count_lines_matches_iterator() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"a", b"a\n", b"a\nb", b"a\n\nb\n"] {
            let path = dir.path().join("f.txt");
            std::fs::write(&path, content).unwrap();
            let n = Lines::open(&path).unwrap().count();
            assert_eq!(count_lines(&path).unwrap(), n, "{content:?}");
        }
    }
}
