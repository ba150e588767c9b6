//! Python string semantics that sacreBLEU's results depend on: what `str.split()`
//! and `str.rstrip()` treat as whitespace, the character classes of the `regex`
//! module, and how the sacreBLEU CLI reads a text file into lines.

use std::path::Path;

use super::unicode_tables::{NUMBER, PUNCTUATION, PY_WHITESPACE, SYMBOL};
use crate::{Error, Result};

fn in_table(c: char, table: &[(u32, u32)]) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Python's `str.isspace()`: Unicode `Zs` or bidirectional class WS, B or S. It
/// differs from [`char::is_whitespace`]: U+001C..U+001F are whitespace here.
#[inline]
pub fn is_py_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, '\t'..='\r' | '\x1c'..=' ')
    } else {
        c >= '\u{85}' && in_table(c, PY_WHITESPACE)
    }
}

/// Python's `line.split()`: the non-empty runs between [`is_py_space`] characters.
pub fn py_split(line: &str) -> impl Iterator<Item = &str> {
    PySplit { s: line, pos: 0 }
}

/// [`py_split`]'s iterator: walks bytes and decodes a character only where a
/// non-ASCII byte starts one.
struct PySplit<'a> {
    s: &'a str,
    pos: usize,
}

impl PySplit<'_> {
    /// Whether a Python whitespace character starts at `pos`, and its length.
    #[inline]
    fn space_at(&self, pos: usize) -> (bool, usize) {
        let b = self.s.as_bytes()[pos];
        if b < 0x80 {
            (matches!(b, b'\t'..=b'\r' | 0x1c..=b' '), 1)
        } else {
            let c = self.s[pos..]
                .chars()
                .next()
                .expect("pos is on a character boundary");
            (is_py_space(c), c.len_utf8())
        }
    }
}

impl<'a> Iterator for PySplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let len = self.s.len();
        loop {
            if self.pos >= len {
                return None;
            }
            let (space, w) = self.space_at(self.pos);
            if !space {
                break;
            }
            self.pos += w;
        }
        let start = self.pos;
        while self.pos < len {
            let (space, w) = self.space_at(self.pos);
            if space {
                break;
            }
            self.pos += w;
        }
        Some(&self.s[start..self.pos])
    }
}

/// A fast non-cryptographic hasher (rustc's Fx hash) for the word maps: their
/// keys come from the files being scored, not from an adversary.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` from words to ids with [`FxHasher`].
pub(crate) type WordIds =
    std::collections::HashMap<Box<str>, u32, std::hash::BuildHasherDefault<FxHasher>>;

/// Python's `line.rstrip()`.
pub fn py_rstrip(line: &str) -> &str {
    let mut end = line.len();
    loop {
        match line.as_bytes()[..end].last() {
            Some(&b) if b < 0x80 => {
                if !matches!(b, b'\t'..=b'\r' | 0x1c..=b' ') {
                    return &line[..end];
                }
                end -= 1;
            }
            Some(_) => {
                let c = line[..end].chars().next_back().expect("non-empty");
                if !is_py_space(c) {
                    return &line[..end];
                }
                end -= c.len_utf8();
            }
            None => return "",
        }
    }
}

/// `\p{N}` in Python's `regex` module (Unicode numbers: `Nd`, `Nl`, `No`).
#[inline]
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_table(c, NUMBER)
    }
}

/// `\p{P}` in Python's `regex` module (Unicode punctuation, `P*`).
#[inline]
pub(crate) fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation()
            && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~')
    } else {
        in_table(c, PUNCTUATION)
    }
}

/// `\p{S}` in Python's `regex` module (Unicode symbols, `S*`).
#[inline]
pub(crate) fn is_symbol(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~')
    } else {
        in_table(c, SYMBOL)
    }
}

/// Splits decoded text into lines as the sacreBLEU CLI does: the file is opened
/// with `newline="\n"`, so lines end at `\n` only (a final line without one still
/// counts, an empty file has no lines), and each line is `rstrip()`ped, which also
/// removes a `\r` from Windows line ends and any other trailing whitespace.
pub fn split_lines(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n').map(|l| py_rstrip(l).to_string()).collect()
}

/// Reads a UTF-8 text file into lines with [`split_lines`]. Invalid UTF-8 is an
/// [`Error::Parse`] naming the line (sacreBLEU fails with a `UnicodeDecodeError`);
/// a byte-order mark is kept as a character, as Python's `utf-8` codec does.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..bad].iter().filter(|&&b| b == b'\n').count();
        Error::Parse {
            path: path.to_path_buf(),
            line,
            msg: format!("invalid UTF-8 at byte {bad}"),
        }
    })?;
    Ok(split_lines(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_differs_from_rust_on_information_separators() {
        assert!(is_py_space('\x1f') && !'\x1f'.is_whitespace());
        assert!(is_py_space('\u{3000}') && is_py_space('\u{a0}'));
        assert!(!is_py_space('\u{200b}') && !is_py_space('\u{180e}'));
        assert_eq!(
            py_split(" a\x1cb\u{3000}c  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(py_rstrip("x \r\u{a0}"), "x");
    }

    #[test]
    fn lines_end_at_newline_only() {
        assert_eq!(split_lines(""), Vec::<String>::new());
        assert_eq!(split_lines("\n"), [""]);
        assert_eq!(split_lines("a\r\nb"), ["a", "b"]);
        assert_eq!(split_lines("a\rb\n\n"), ["a\rb", ""]);
        assert_eq!(split_lines("a\u{2028}b \n"), ["a\u{2028}b"]);
    }

    #[test]
    fn ascii_fast_paths_agree_with_the_tables() {
        for b in 0u8..128 {
            let c = b as char;
            assert_eq!(is_number(c), in_table(c, NUMBER), "{c:?}");
            assert_eq!(is_punctuation(c), in_table(c, PUNCTUATION), "{c:?}");
            assert_eq!(is_symbol(c), in_table(c, SYMBOL), "{c:?}");
            assert_eq!(is_py_space(c), in_table(c, PY_WHITESPACE), "{c:?}");
        }
    }
}
