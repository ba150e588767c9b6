//! Malformed inputs give the documented errors, naming file and line, and
//! never panic: bad labels, missing columns, non-UTF-8 bytes, empty files,
//! unequal parallel files, a 10 MB line.

use std::path::{Path, PathBuf};

use cotext::data::imdb::read_imdb_tsv;
use cotext::data::parallel::read_parallel;
use cotext::data::sst::{read_sst_trees, read_sst_tsv};
use cotext::data::table::{read_table, TableFormat, TableSpec};
use cotext::Error;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn parse_error(err: Error) -> (PathBuf, usize, String) {
    assert!(err.is_user_error(), "{err}");
    match err {
        Error::Parse { path, line, msg } => (path, line, msg),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn sst_tsv_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, &[u8], usize, &str); 5] = [
        (
            "label.tsv",
            b"sentence\tlabel\ngood\t1\nbad\t5\n",
            3,
            "bad label \"5\": expected an integer 0-4",
        ),
        (
            "neg.tsv",
            b"sentence\tlabel\ngood\t-1\n",
            2,
            "bad label \"-1\"",
        ),
        (
            "column.tsv",
            b"sentence\tlabel\njust text\n",
            2,
            "expected 2 TAB-separated columns, found 1",
        ),
        (
            "header.tsv",
            b"text\tlabel\nx\t1\n",
            1,
            "expected the header `sentence<TAB>label`",
        ),
        (
            "utf8.tsv",
            b"sentence\tlabel\nok\t1\ncaf\xe9 \t2\n",
            3,
            "invalid UTF-8: byte 0xe9 at byte 4",
        ),
    ];
    for (name, bytes, line, msg) in cases {
        let path = write(d, name, bytes);
        let (p, l, m) = parse_error(read_sst_tsv(&path, 5).unwrap_err());
        assert_eq!((p, l), (path.clone(), line), "{name}");
        assert!(m.contains(msg), "{name}: {m}");
    }
    let empty = write(d, "empty.tsv", b"");
    let err = read_sst_tsv(&empty, 5).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: empty file: expected a header line `sentence<TAB>label`",
            empty.display()
        )
    );
    let missing = d.join("nope.tsv");
    let err = read_sst_tsv(&missing, 5).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. })
            && err.to_string().starts_with(&missing.display().to_string())
    );
}

#[test]
fn tree_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "trees.txt",
        b"(3 (2 a) (3 b))\n(3 (2 a) (7 b))\n",
    );
    let (_, line, msg) = parse_error(read_sst_trees(&path).unwrap_err());
    assert_eq!(line, 2);
    assert_eq!(
        msg,
        "bad tree at column 11: expected a label 0-4, found \"7 b))\""
    );
    let empty = write(dir.path(), "empty.txt", b"");
    assert!(matches!(
        read_sst_trees(&empty).unwrap_err(),
        Error::InvalidFile { .. }
    ));
}

#[test]
fn a_10_mb_line_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"sentence\tlabel\nshort\t1\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
    bytes.extend_from_slice(b"\t1\nafter\t0\n");
    let path = write(dir.path(), "long.tsv", &bytes);
    let (_, line, msg) = parse_error(read_sst_tsv(&path, 2).unwrap_err());
    assert_eq!(line, 3);
    assert!(
        msg.starts_with("line is longer than the limit of 1048576 bytes"),
        "{msg}"
    );
    let en = write(dir.path(), "long.en", &bytes);
    let de = write(dir.path(), "long.de", b"a\nb\nc\nd\n");
    let (_, line, _) = parse_error(read_parallel(&en, &de).unwrap_err());
    assert_eq!(line, 3);
}

#[test]
fn unequal_parallel_files_name_both_counts() {
    let dir = tempfile::tempdir().unwrap();
    let en = write(dir.path(), "train.en", b"one\ntwo\nthree\n");
    let de = write(dir.path(), "train.de", b"eins\nzwei\n");
    let err = read_parallel(&en, &de).unwrap_err();
    assert!(err.is_user_error());
    assert_eq!(
        err.to_string(),
        format!(
            "line counts differ: {} has 3 lines but {} has 2",
            en.display(),
            de.display()
        )
    );
    let e1 = write(dir.path(), "e.en", b"");
    let e2 = write(dir.path(), "e.de", b"");
    assert!(matches!(
        read_parallel(&e1, &e2).unwrap_err(),
        Error::InvalidFile { .. }
    ));
    let bad = write(dir.path(), "bad.de", b"eins\nzw\xffei\ndrei\n");
    let (path, line, _) = parse_error(read_parallel(&en, &bad).unwrap_err());
    assert_eq!((path, line), (bad, 2));
}

#[test]
fn imdb_tsv_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write(d, "train.tsv", b"text\tlabel\nGreat.\t1\nAwful.\t0\n");
    let cases: [(&[u8], usize, &str); 4] = [
        (
            b"file\trating\ntrain/pos/0_9.txt\t9\ntrain/neg/1_5.txt\t5\n",
            3,
            "bad rating \"5\": expected an integer 1-4 or 7-10",
        ),
        (
            b"file\trating\ntrain/pos/0_9.txt\t9\ntrain/neg/1_2.txt\t3\n",
            3,
            "rating 3 contradicts the file name \"train/neg/1_2.txt\"",
        ),
        (
            b"file\trating\ntrain/pos/0_9.txt\t9\ntrain/neg/1_2.txt\n",
            3,
            "expected 2 TAB-separated columns, found 1",
        ),
        (
            b"file\trating\ntrain/pos/0_9.txt\t9\nneg/1_2.txt\t2\n",
            3,
            "expected a path SPLIT/{pos,neg}/ID_RATING.txt",
        ),
    ];
    for (bytes, line, msg) in cases {
        let source = write(d, "train.source.tsv", bytes);
        let (path, l, m) = parse_error(read_imdb_tsv(&data, &source).unwrap_err());
        assert_eq!((path, l), (source, line));
        assert!(m.contains(msg), "{m}");
    }
    let source = write(
        d,
        "train.source.tsv",
        b"file\trating\ntrain/pos/0_9.txt\t9\ntrain/pos/1_8.txt\t8\n",
    );
    let (path, line, msg) = parse_error(read_imdb_tsv(&data, &source).unwrap_err());
    assert_eq!((path, line), (data.clone(), 3));
    assert!(msg.starts_with("label 0 contradicts rating 8"), "{msg}");
    let short = write(d, "short.source.tsv", b"file\trating\n");
    assert!(matches!(
        read_imdb_tsv(&data, &short).unwrap_err(),
        Error::LineCount {
            left_lines: 3,
            right_lines: 1,
            ..
        }
    ));
}

#[test]
fn generic_table_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |format| TableSpec {
        format,
        text_column: "text".into(),
        label_column: "label".into(),
        labels: vec!["neg".into(), "pos".into()],
        header: true,
    };
    let tsv = write(dir.path(), "a.tsv", b"text\tscore\nx\t1\n");
    let (_, line, msg) = parse_error(read_table(&tsv, &spec(TableFormat::Tsv)).unwrap_err());
    assert_eq!(
        (line, msg.as_str()),
        (
            1,
            "missing column \"label\": the header has [\"text\", \"score\"]"
        )
    );
    let csv = write(dir.path(), "a.csv", b"text,label\n\"open quote,1\nnext,0\n");
    let err = read_table(&csv, &spec(TableFormat::Csv));
    // An unterminated quote swallows the rest of the file into one field:
    // the record then has too few fields.
    let (_, line, msg) = parse_error(err.unwrap_err());
    assert_eq!(line, 2);
    assert!(msg.contains("expected 2 comma-separated fields"), "{msg}");
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        b"{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\"}\n",
    );
    let (_, line, msg) = parse_error(read_table(&jsonl, &spec(TableFormat::Jsonl)).unwrap_err());
    assert_eq!((line, msg.as_str()), (2, "missing key \"label\""));
    let ok = write(
        dir.path(),
        "b.jsonl",
        b"{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\", \"label\": 0}\n",
    );
    let examples = read_table(&ok, &spec(TableFormat::Jsonl)).unwrap();
    assert_eq!(examples.iter().map(|e| e.label).collect::<Vec<_>>(), [1, 0]);
}
