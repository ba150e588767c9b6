//! `cotext bleu` run as a real binary in a temp dir: files read as the sacreBLEU
//! CLI reads them (`\r\n`, trailing whitespace, no final newline), JSON and text
//! output, several hypothesis files, and the user errors with exit code 2.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;

fn cotext(dir: &Path, args: &[&str]) -> Output {
    common::cotext(dir, args, None)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each golden CLI case holds raw file contents and what `sacrebleu REF... -i HYP
/// -f json -w 12` printed for each hypothesis file; all hypothesis files go to one
/// `cotext bleu` call.
#[test]
fn cli_scores_files_like_the_sacrebleu_cli() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/bleu.json"
    ))
    .unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for case in golden["cli"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut args: Vec<String> = Vec::new();
        for (i, r) in case["refs"].as_array().unwrap().iter().enumerate() {
            write(dir.path(), &format!("{name}.ref{i}"), r.as_str().unwrap());
            args.extend(["-r".into(), format!("{name}.ref{i}")]);
        }
        let hyps = case["hyps"].as_array().unwrap();
        for (i, h) in hyps.iter().enumerate() {
            write(dir.path(), &format!("{name}.hyp{i}"), h.as_str().unwrap());
            args.push(format!("{name}.hyp{i}"));
        }
        args.extend(
            case["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string()),
        );
        args.extend(["--format".into(), "json".into()]);
        let mut argv = vec!["bleu"];
        argv.extend(args.iter().map(String::as_str));
        let objs = json_lines(&cotext(dir.path(), &argv));
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(
            objs.len(),
            expected.len(),
            "{name}: one JSON object per hypothesis file"
        );
        for (i, (got, exp)) in objs.iter().zip(expected).enumerate() {
            assert_eq!(got["file"], format!("{name}.hyp{i}"), "{name}");
            let (a, b) = (
                got["score"].as_f64().unwrap(),
                exp["score"].as_f64().unwrap(),
            );
            // the CLI rounds to 12 decimals
            assert!((a - b).abs() <= 1e-9, "{name} hyp{i}: {a} != sacreBLEU {b}");
            assert_eq!(got["signature"], exp["signature"], "{name}");
            assert_eq!(got["name"], exp["name"], "{name}");
            if !exp["verbose_score"].is_null() {
                assert_eq!(got["verbose_score"], exp["verbose_score"], "{name}");
            }
        }
    }
}

#[test]
fn json_has_score_signature_and_details() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ref.txt",
        "the cat sat on the mat\na dog runs in the park\n",
    );
    write(
        dir.path(),
        "hyp.txt",
        "the cat sat on a mat\na dog runs in the park\n",
    );
    let objs = json_lines(&cotext(
        dir.path(),
        &["bleu", "-r", "ref.txt", "hyp.txt", "--format", "json"],
    ));
    assert_eq!(objs.len(), 1);
    let o = &objs[0];
    assert_eq!(
        o["signature"],
        "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    );
    assert_eq!(o["tok"], "13a");
    assert_eq!(o["sys_len"], 12);
    assert_eq!(o["ref_len"], 12);
    assert_eq!(o["counts"], serde_json::json!([11, 8, 6, 4]));
    assert_eq!(o["totals"], serde_json::json!([12, 10, 8, 6]));
    assert_eq!(o["bp"], 1.0);
    assert!(o["precisions"].as_array().unwrap().len() == 4);
    let expected = 100.0 * (11.0f64 / 12.0 * 0.8 * 0.75 * (4.0 / 6.0)).powf(0.25);
    assert!((o["score"].as_f64().unwrap() - expected).abs() < 1e-9);
}

#[test]
fn text_output_is_sacrebleus_line_and_names_files_when_several() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ref.txt", "the cat sat on the mat\n");
    write(dir.path(), "a.txt", "the cat sat on the mat\n");
    write(dir.path(), "b.txt", "a cat sat on the mat\n");
    let out = cotext(dir.path(), &["bleu", "-r", "ref.txt", "a.txt"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0 = 100.00 \
         100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 hyp_len = 6 ref_len = 6)\n"
    );
    let out = cotext(
        dir.path(),
        &[
            "bleu",
            "-r",
            "ref.txt",
            "a.txt",
            "b.txt",
            "--metric",
            "chrf",
            "--chrf-word-order",
            "2",
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        "a.txt\tchrF2++|nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0 = 100.00"
    );
    assert!(
        lines[1].starts_with("b.txt\tchrF2++|") && !lines[1].ends_with("= 100.00"),
        "{}",
        lines[1]
    );
}

#[test]
fn unequal_line_counts_exit_2_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ref.txt", "a\nb\nc\n");
    write(dir.path(), "good.txt", "a\nb\nc");
    write(dir.path(), "short.txt", "a\nb\n");
    let out = cotext(
        dir.path(),
        &["bleu", "-r", "ref.txt", "good.txt", "short.txt"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("short.txt has 2 lines but ref.txt has 3"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unequal_reference_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "r1.txt", "a\nb\n");
    write(dir.path(), "r2.txt", "a\n");
    write(dir.path(), "hyp.txt", "a\nb\n");
    let out = cotext(
        dir.path(),
        &["bleu", "-r", "r1.txt", "-r", "r2.txt", "hyp.txt"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("r1.txt has 2 lines but r2.txt has 1"));
}

#[test]
fn empty_hypothesis_file_is_an_error_like_sacrebleu() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ref.txt", "");
    write(dir.path(), "hyp.txt", "");
    let out = cotext(dir.path(), &["bleu", "-r", "ref.txt", "hyp.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("hyp.txt: no lines to score"));
    // Against a non-empty reference it is a line-count error.
    write(dir.path(), "ref.txt", "a cat\n");
    let out = cotext(dir.path(), &["bleu", "-r", "ref.txt", "hyp.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("hyp.txt has 0 lines but ref.txt has 1"));
}

#[test]
fn bad_input_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ref.txt", "a\n");
    std::fs::write(dir.path().join("latin1.txt"), b"caf\xe9\n").unwrap();
    let out = cotext(dir.path(), &["bleu", "-r", "ref.txt", "latin1.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("latin1.txt:1: invalid UTF-8"));
    let out = cotext(dir.path(), &["bleu", "-r", "ref.txt", "missing.txt"]);
    assert_eq!(out.status.code(), Some(2));
    // Options of the other metric are refused rather than ignored.
    let out = cotext(
        dir.path(),
        &[
            "bleu",
            "-r",
            "ref.txt",
            "ref.txt",
            "--metric",
            "chrf",
            "--tokenize",
            "intl",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = cotext(
        dir.path(),
        &["bleu", "-r", "ref.txt", "ref.txt", "--smooth-value", "0.5"],
    );
    assert_eq!(out.status.code(), Some(2));
}
