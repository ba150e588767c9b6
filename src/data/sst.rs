//! Stanford Sentiment Treebank: the sentence-level TSV files (`sentence\tlabel`)
//! and the PTB-format trees with a sentiment label (0–4) on every node.

use std::path::Path;

use super::lines::Lines;
use super::table::{parse_label, split_tsv_line};
use super::Example;
use crate::{Error, Result};

/// Reads an SST TSV file: a header line `sentence<TAB>label`, then one record
/// per line with exactly one TAB and an integer label in `0..num_classes`
/// (5 for SST-5, 2 for SST-2). No quoting: a `"` is an ordinary character.
///
/// # Errors
/// [`Error::Parse`] naming the line for a wrong header, a wrong number of
/// columns, a bad label or invalid UTF-8; [`Error::InvalidFile`] for an empty
/// file; [`Error::Io`] if the file cannot be read.
pub fn read_sst_tsv(path: &Path, num_classes: u32) -> Result<Vec<Example>> {
    let mut lines = Lines::open(path)?;
    match lines.next() {
        None => {
            return Err(Error::InvalidFile {
                path: path.to_path_buf(),
                msg: "empty file: expected a header line `sentence<TAB>label`".into(),
            })
        }
        Some(first) => {
            let (line, header) = first?;
            if header != "sentence\tlabel" {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    line,
                    msg: format!("expected the header `sentence<TAB>label`, found {header:?}"),
                });
            }
        }
    }
    let mut examples = Vec::new();
    for item in lines {
        let (line, text) = item?;
        let [sentence, label] = split_tsv_line::<2>(path, line, &text)?;
        let label = parse_label(path, line, label, num_classes)?;
        examples.push(Example {
            text: sentence.to_string(),
            label,
        });
    }
    Ok(examples)
}

/// One node of an [`SstTree`]: the words `start..end` of the sentence and
/// their sentiment label (0 very negative … 4 very positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Index of the first word.
    pub start: usize,
    /// One past the last word.
    pub end: usize,
    /// Sentiment label, 0–4.
    pub label: u8,
}

/// A parsed SST tree: the leaves in order and one [`Span`] per node, in
/// pre-order (the root first, so `spans[0]` covers the whole sentence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SstTree {
    /// The leaves (words) as written in the tree, PTB escapes kept (`-LRB-`, `\/`).
    pub words: Vec<String>,
    /// Every node: leaves, phrases and the root.
    pub spans: Vec<Span>,
}

impl SstTree {
    /// The sentence label (the root's label).
    pub fn label(&self) -> u8 {
        self.spans[0].label
    }

    /// The sentence: leaves joined by single spaces.
    pub fn sentence(&self) -> String {
        self.words.join(" ")
    }

    /// Every node as `(phrase, label)`, root first. A phrase is its leaves
    /// joined by spaces; leaves (single words) are included.
    pub fn phrases(&self) -> impl Iterator<Item = (String, u8)> + '_ {
        self.spans
            .iter()
            .map(|s| (self.words[s.start..s.end].join(" "), s.label))
    }

    /// Parses one tree such as `(3 (2 It) (4 (2 's) (4 good)))`: every node is
    /// `(LABEL WORD)` or `(LABEL CHILD CHILD…)` with `LABEL` in 0–4.
    /// `path` and `line` are only used in errors.
    ///
    /// # Errors
    /// [`Error::Parse`] saying which column held what instead of what was expected.
    pub fn parse(path: &Path, line: usize, text: &str) -> Result<SstTree> {
        let mut parser = TreeParser {
            path,
            line,
            text: text.as_bytes(),
            pos: 0,
            words: Vec::new(),
            spans: Vec::new(),
        };
        parser.skip_ws();
        parser.node(0)?;
        parser.skip_ws();
        if parser.pos != parser.text.len() {
            return Err(parser.error("end of line after the root node"));
        }
        Ok(SstTree {
            words: parser.words,
            spans: parser.spans,
        })
    }
}

/// Trees deeper than this are rejected instead of overflowing the stack
/// (SST's deepest tree is about 50 levels).
const MAX_TREE_DEPTH: usize = 1000;

struct TreeParser<'a> {
    path: &'a Path,
    line: usize,
    text: &'a [u8],
    pos: usize,
    words: Vec<String>,
    spans: Vec<Span>,
}

impl TreeParser<'_> {
    fn error(&self, expected: &str) -> Error {
        let found = match self.text.get(self.pos) {
            None => "end of line".to_string(),
            Some(_) => {
                let rest = String::from_utf8_lossy(&self.text[self.pos..]);
                let snippet: String = rest.chars().take(12).collect();
                format!("{snippet:?}")
            }
        };
        Error::Parse {
            path: self.path.to_path_buf(),
            line: self.line,
            msg: format!(
                "bad tree at column {}: expected {expected}, found {found}",
                self.pos + 1
            ),
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<()> {
        if self.text.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn node(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(self.error(&format!("a tree at most {MAX_TREE_DEPTH} levels deep")));
        }
        self.expect(b'(', "`(`")?;
        self.skip_ws();
        let label = match self.text.get(self.pos) {
            Some(&b) if (b'0'..=b'4').contains(&b) => b - b'0',
            _ => return Err(self.error("a label 0-4")),
        };
        self.pos += 1;
        if self.pos < self.text.len() && !self.text[self.pos].is_ascii_whitespace() {
            return Err(self.error("a space after the label"));
        }
        self.skip_ws();
        let index = self.spans.len();
        let start = self.words.len();
        self.spans.push(Span {
            start,
            end: start,
            label,
        });
        match self.text.get(self.pos) {
            Some(b'(') => {
                while self.text.get(self.pos) == Some(&b'(') {
                    self.node(depth + 1)?;
                    self.skip_ws();
                }
            }
            Some(b')') | None => return Err(self.error("a word or a child node")),
            Some(_) => {
                let begin = self.pos;
                while self.pos < self.text.len()
                    && !matches!(self.text[self.pos], b'(' | b')')
                    && !self.text[self.pos].is_ascii_whitespace()
                {
                    self.pos += 1;
                }
                // Slicing at ASCII delimiters keeps UTF-8 boundaries intact.
                let word =
                    std::str::from_utf8(&self.text[begin..self.pos]).expect("split at ASCII bytes");
                self.words.push(word.to_string());
                self.skip_ws();
            }
        }
        self.expect(b')', "`)`")?;
        self.spans[index].end = self.words.len();
        Ok(())
    }
}

/// Reads a file of SST trees, one per line (blank lines are an error).
///
/// # Errors
/// [`Error::Parse`] naming the line and column of the first malformed tree;
/// [`Error::InvalidFile`] for an empty file; [`Error::Io`] if unreadable.
pub fn read_sst_trees(path: &Path) -> Result<Vec<SstTree>> {
    let mut trees = Vec::new();
    for item in Lines::open(path)? {
        let (line, text) = item?;
        trees.push(SstTree::parse(path, line, &text)?);
    }
    if trees.is_empty() {
        return Err(Error::InvalidFile {
            path: path.to_path_buf(),
            msg: "empty file: expected one PTB tree per line".into(),
        });
    }
    Ok(trees)
}

/// Maps a 5-class SST label to SST-2: {0,1} → 0 (negative), {3,4} → 1
/// (positive), 2 (neutral) → `None` (dropped).
pub fn sst2_label(label: u8) -> Option<u32> {
    match label {
        0 | 1 => Some(0),
        3 | 4 => Some(1),
        _ => None,
    }
}

/// Sentence-level examples from trees: the root label, with 5 classes, or
/// mapped by [`sst2_label`] (neutral sentences dropped) when `binary`.
pub fn sentence_examples(trees: &[SstTree], binary: bool) -> Vec<Example> {
    trees
        .iter()
        .filter_map(|tree| {
            let label = if binary {
                sst2_label(tree.label())?
            } else {
                u32::from(tree.label())
            };
            Some(Example {
                text: tree.sentence(),
                label,
            })
        })
        .collect()
}

/// Phrase-level training examples: every node of every tree (words, phrases,
/// roots), each distinct phrase text once (its first occurrence wins, as in
/// the `stsa.*.phrases.train` files), with 5 classes or mapped to SST-2.
pub fn phrase_examples(trees: &[SstTree], binary: bool) -> Vec<Example> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for tree in trees {
        for (text, label) in tree.phrases() {
            let label = if binary {
                match sst2_label(label) {
                    Some(l) => l,
                    None => continue,
                }
            } else {
                u32::from(label)
            };
            if seen.insert(text.clone()) {
                out.push(Example { text, label });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SstTree> {
        SstTree::parse(Path::new("t.txt"), 7, text)
    }

    #[test]
    fn parses_spans_in_preorder() {
        let tree = parse("(3 (2 It) (4 (2 's) (4 good)))").unwrap();
        assert_eq!(tree.words, ["It", "'s", "good"]);
        assert_eq!(tree.label(), 3);
        let phrases: Vec<_> = tree.phrases().collect();
        assert_eq!(
            phrases,
            vec![
                ("It 's good".to_string(), 3),
                ("It".to_string(), 2),
                ("'s good".to_string(), 4),
                ("'s".to_string(), 2),
                ("good".to_string(), 4),
            ]
        );
    }

    #[test]
    fn bad_trees_name_line_and_column() {
        let cases = [
            ("(5 word)", "t.txt:7: bad tree at column 2: expected a label 0-4, found \"5 word)\""),
            ("(3 (2 a)", "t.txt:7: bad tree at column 9: expected `)`, found end of line"),
            ("(3 a) extra", "t.txt:7: bad tree at column 7: expected end of line after the root node, found \"extra\""),
            ("", "t.txt:7: bad tree at column 1: expected `(`, found end of line"),
            ("(2 )", "t.txt:7: bad tree at column 4: expected a word or a child node, found \")\""),
            ("(23 a)", "t.txt:7: bad tree at column 3: expected a space after the label, found \"3 a)\""),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), want, "{text}");
        }
    }

    #[test]
    fn deep_tree_is_an_error_not_a_stack_overflow() {
        let text = format!("{}(2 x){}", "(2 ".repeat(5000), ")".repeat(5000));
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("levels deep"), "{err}");
    }

    #[test]
    fn sst2_mapping_drops_neutral() {
        let got: Vec<_> = (0..5).map(sst2_label).collect();
        assert_eq!(got, vec![Some(0), Some(0), None, Some(1), Some(1)]);
        let trees = vec![
            parse("(1 (2 not) (1 bad))").unwrap(),
            parse("(2 meh)").unwrap(),
            parse("(4 (4 great) (2 film))").unwrap(),
        ];
        let sentences = sentence_examples(&trees, true);
        assert_eq!(sentences.len(), 2);
        assert_eq!(
            (sentences[1].text.as_str(), sentences[1].label),
            ("great film", 1)
        );
        let phrases = phrase_examples(&trees, false);
        let texts: Vec<_> = phrases.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "not bad",
                "not",
                "bad",
                "meh",
                "great film",
                "great",
                "film"
            ]
        );
        let binary = phrase_examples(&trees, true);
        let texts: Vec<_> = binary.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["not bad", "bad", "great film", "great"]);
    }
}
