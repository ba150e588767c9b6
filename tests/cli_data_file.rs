//! `--data FILE` as a user would type it: a model trained on a small TSV, then
//! scored on the same examples written as TSV (with and without a header), CSV
//! (with a BOM and CRLF line ends) and JSON Lines, through the file route and
//! through the card `cotext data card` writes; bad files exit 2 naming the file
//! and line; `predict --input` writes every class's probability.

mod common;

use common::text;

/// `cotext args` in `cwd`, blind to `COTEXT_DATA` (data files are named here).
fn cotext(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = common::command(cwd, args);
    cmd.env_remove("COTEXT_DATA");
    common::run(cmd, None)
}

fn shared() -> Option<PathBuf> {
    common::shared_data_with("sst2")
}

use std::path::{Path, PathBuf};
use std::process::Output;

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn exit_2(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reviews a tiny model can half learn: (text, label name).
fn reviews(n: usize, offset: usize) -> Vec<(String, &'static str)> {
    let good = ["good", "great", "fine", "lovely", "witty"];
    let bad = ["bad", "dull", "awful", "poor", "boring"];
    (offset..offset + n)
        .map(|i| {
            let (words, label) = if i % 2 == 0 {
                (&good, "pos")
            } else {
                (&bad, "neg")
            };
            (
                format!(
                    "a {} and {} film number {i}",
                    words[i % 5],
                    words[(i / 2) % 5]
                ),
                label,
            )
        })
        .collect()
}

fn tsv(rows: &[(String, &str)]) -> String {
    let mut s = "sentence\tlabel\n".to_string();
    for (t, l) in rows {
        s.push_str(&format!("{t}\t{l}\n"));
    }
    s
}

/// Trains a 4-step BiLSTM on `train.tsv` (labels neg, pos) into `dir/run`.
fn trained_run(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("train.tsv"), tsv(&reviews(64, 0))).unwrap();
    std::fs::write(
        dir.join("tiny.toml"),
        "[data]\ndataset = \"train.tsv\"\nmax_len = 16\n\n\
         [model]\nkind = \"bilstm\"\nembed_dim = 8\nhidden = 8\n\n\
         [train]\nbatch_size = 16\nmax_steps = 4\n",
    )
    .unwrap();
    let run = dir.join("run");
    let o = cotext(
        dir,
        &[
            "train",
            "-q",
            "--config",
            "tiny.toml",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(run.join("labels.json")).unwrap(),
        "[\"neg\",\"pos\"]"
    );
    run
}

fn eval_json(dir: &Path, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", "--run", run.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    let o = cotext(dir, &args);
    serde_json::from_str(&ok(&o)).unwrap()
}

#[test]
fn every_format_and_the_card_route_give_the_same_score() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let rows = reviews(40, 1000);
    std::fs::write(dir.join("test.tsv"), tsv(&rows)).unwrap();
    // The same examples: labels as indices, no header, label first.
    let bare: String = rows
        .iter()
        .map(|(t, l)| format!("{}\t{t}\n", usize::from(*l == "pos")))
        .collect();
    std::fs::write(dir.join("bare.tsv"), bare).unwrap();
    let mut csv = "\u{feff}id,review,label\r\n".to_string();
    for (i, (t, l)) in rows.iter().enumerate() {
        csv.push_str(&format!("{i},\"{t}\",{l}\r\n"));
    }
    std::fs::write(dir.join("test.csv"), csv).unwrap();
    let jsonl: String = rows
        .iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"idx": 1, "text": t, "label": l})))
        .collect();
    std::fs::write(dir.join("test.jsonl"), format!("\u{feff}{jsonl}")).unwrap();

    let reference = eval_json(dir, &run, &["--data", "test.tsv"]);
    assert_eq!(reference["count"], 40);
    let accuracy = reference["accuracy"].as_f64().unwrap();
    for file in ["bare.tsv", "test.csv", "test.jsonl"] {
        let v = eval_json(dir, &run, &["--data", file]);
        assert_eq!(v["count"], 40, "{file}");
        assert_eq!(v["accuracy"].as_f64().unwrap(), accuracy, "{file}");
        assert_eq!(v["confusion"], reference["confusion"], "{file}");
    }

    // `attack --data` reads the same file the same way: its clean accuracy is
    // eval's, on every example; a flip can only lower it.
    let o = cotext(
        dir,
        &[
            "attack",
            "-q",
            "--run",
            run.to_str().unwrap(),
            "--data",
            "test.csv",
            "--method",
            "hotflip",
            "--flips",
            "1",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["clean"]["n"], 40);
    assert_eq!(v["clean"]["accuracy"].as_f64().unwrap(), accuracy);
    assert_eq!(v["dataset"], "test.csv");
    let attacked = v["attacks"][0]["accuracy"].as_f64().unwrap();
    assert!(attacked <= accuracy, "{attacked} > {accuracy}");
    // A label the run was not trained with is refused, naming the file.
    std::fs::write(dir.join("other.tsv"), "text\tlabel\na fine film\tmaybe\n").unwrap();
    let err = exit_2(&cotext(
        dir,
        &[
            "attack",
            "-q",
            "--run",
            run.to_str().unwrap(),
            "--data",
            "other.tsv",
            "--method",
            "fgsm",
        ],
    ));
    assert!(err.contains("other.tsv"), "{err}");

    // The guess is said on stderr.
    let o = cotext(
        dir,
        &["eval", "--run", run.to_str().unwrap(), "--data", "test.csv"],
    );
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("text \"review\" (guessed)") && said.contains("label \"label\""),
        "{said}"
    );
    let file_route = ok(&o);

    // The card route on the same file prints the same scores.
    ok(&cotext(
        dir,
        &[
            "data",
            "card",
            "test.csv",
            "--run",
            run.to_str().unwrap(),
            "--out",
            "card.toml",
        ],
    ));
    let card = std::fs::read_to_string(dir.join("card.toml")).unwrap();
    assert!(
        card.contains("labels = [\"neg\", \"pos\"]") && card.contains("sha256 = "),
        "{card}"
    );
    let card_route = ok(&cotext(
        dir,
        &[
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--data",
            "card.toml",
        ],
    ));
    let scores = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(scores(&file_route), scores(&card_route));
    assert!(
        file_route.contains(&format!("accuracy  {accuracy:.4}")),
        "{file_route}"
    );
    let v = eval_json(dir, &run, &["--data", "card.toml"]);
    assert_eq!(v["accuracy"].as_f64().unwrap(), accuracy);
    // The card is found from any folder and verifies with `data fetch`.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let card_path = dir.join("card.toml");
    let out = ok(&cotext(
        &elsewhere,
        &["data", "info", card_path.to_str().unwrap()],
    ));
    let rows: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("test 40 40 ok 20 (50.0%) 20 (50.0%)")),
        "{out}"
    );

    // A file without a header: the card keeps `header = false` and column numbers.
    ok(&cotext(
        dir,
        &[
            "data",
            "card",
            "bare.tsv",
            "--run",
            run.to_str().unwrap(),
            "--out",
            "bare.toml",
        ],
    ));
    let bare_card = std::fs::read_to_string(dir.join("bare.toml")).unwrap();
    assert!(
        bare_card.contains("header = false") && bare_card.contains("text_column = \"2\""),
        "{bare_card}"
    );
    let v = eval_json(dir, &run, &["--data", "bare.toml"]);
    assert_eq!(v["accuracy"].as_f64().unwrap(), accuracy);
    // `data info` on a file: its own labels (here indices), counts, the guess.
    let o = cotext(dir, &["data", "info", "bare.tsv"]);
    let out = ok(&o);
    assert!(out.contains("labels    0 \"0\", 1 \"1\""), "{out}");
    assert!(
        out.contains("no header line (guessed): text column 2 (guessed), label column 1 (guessed)"),
        "{out}"
    );

    // `data card` never overwrites.
    let err = exit_2(&cotext(
        dir,
        &["data", "card", "test.tsv", "--out", "card.toml"],
    ));
    assert!(err.contains("card.toml exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("card.toml")).unwrap(),
        card
    );
}

#[test]
fn bad_files_exit_2_naming_file_line_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let run = run.to_str().unwrap();
    let write = |name: &str, body: &str| std::fs::write(dir.join(name), body).unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--run", run];
        args.extend_from_slice(extra);
        exit_2(&cotext(dir, &args))
    };

    write("test.tsv", &tsv(&reviews(4, 0)));
    let err = eval(&["--data", "test.tsv", "--text-column", "review"]);
    assert!(
        err.contains(
            "test.tsv:1: no text column \"review\": the header has [\"sentence\", \"label\"]"
        ),
        "{err}"
    );
    let err = eval(&["--data", "test.tsv", "--label-column", "stars"]);
    assert!(
        err.contains("test.tsv:1: no label column \"stars\""),
        "{err}"
    );
    write("nolabel.csv", "id,review,score\n1,fine,3\n");
    let err = eval(&["--data", "nolabel.csv"]);
    assert!(
        err.contains("nolabel.csv:1: no label column \"label\"") && err.contains("--label-column"),
        "{err}"
    );
    write("bare.tsv", "fine\t1\nbad\t0\n");
    let err = eval(&["--data", "bare.tsv", "--text-column", "3"]);
    assert!(
        err.contains("bare.tsv:1: no column \"3\": the file has no header line"),
        "{err}"
    );

    // A label outside the run's labels, as a name and as an index.
    write("maybe.tsv", "sentence\tlabel\ngood\tpos\nhmm\tmaybe\n");
    let err = eval(&["--data", "maybe.tsv"]);
    assert!(err.contains("maybe.tsv:3: bad label \"maybe\": expected one of [\"neg\", \"pos\"] or an integer 0-1"), "{err}");
    write(
        "five.jsonl",
        "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"so-so\", \"label\": 4}\n",
    );
    let err = eval(&["--data", "five.jsonl"]);
    assert!(err.contains("five.jsonl:2: bad label \"4\""), "{err}");

    // Empty files, a header alone, a text key that is not text.
    for name in ["empty.tsv", "empty.csv", "empty.jsonl"] {
        write(name, "");
        let err = eval(&["--data", name]);
        assert!(err.contains(&format!("{name}: empty file")), "{err}");
    }
    write("header.tsv", "sentence\tlabel\r\n");
    let err = eval(&["--data", "header.tsv"]);
    assert!(err.contains("header.tsv: no examples"), "{err}");
    write("num.jsonl", "{\"text\": 3, \"label\": 1}\n");
    let err = eval(&["--data", "num.jsonl", "--text-column", "text"]);
    assert!(
        err.contains("num.jsonl:1: key \"text\": expected a string, found 3"),
        "{err}"
    );

    // Another label set through a card: the run's labels.json is named.
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let card = format!("{fixtures}/tiny-sst/card.toml");
    let err = eval(&["--data", &card, "--data-dir", fixtures]);
    assert!(
        err.contains("but the run") && err.contains("labels.json"),
        "{err}"
    );

    // A data file where a card is needed says how to get one.
    let err = exit_2(&cotext(
        dir,
        &[
            "tokenizer",
            "train",
            "--data",
            "test.tsv",
            "--out",
            "tok.json",
        ],
    ));
    assert!(err.contains("cotext data card test.tsv"), "{err}");
}

#[test]
fn predict_input_writes_every_probability() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = trained_run(dir);
    let run = run.to_str().unwrap();
    std::fs::write(
        dir.join("in.jsonl"),
        "{\"id\": 7, \"text\": \"a good film\"}\n\n{\"id\": 8, \"text\": \"dull\"}\n",
    )
    .unwrap();
    let out = ok(&cotext(
        dir,
        &["predict", "--run", run, "--input", "in.jsonl"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "label\tprobability\tp(neg)\tp(pos)");
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines[1..] {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        let p: Vec<f64> = f[2..].iter().map(|x| x.parse().unwrap()).collect();
        assert!((p[0] + p[1] - 1.0).abs() < 2e-4, "{line}");
        assert_eq!(f[1], if f[0] == "neg" { f[2] } else { f[3] });
    }
    let out = ok(&cotext(
        dir,
        &[
            "predict", "--run", run, "--input", "in.jsonl", "--format", "jsonl",
        ],
    ));
    let v: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (v[0]["line"].as_u64(), v[1]["line"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(v[1]["text"], "dull");
    // Any other file is one text per line, CRLF or not.
    std::fs::write(dir.join("in.txt"), "a good film\r\ndull\r\nfine\n").unwrap();
    let out = ok(&cotext(
        dir,
        &["predict", "--run", run, "--input", "in.txt"],
    ));
    assert_eq!(out.lines().count(), 4, "{out}");
    let err = exit_2(&cotext(
        dir,
        &["predict", "--run", run, "--input", "missing.txt"],
    ));
    assert!(err.contains("missing.txt"), "{err}");
}

#[test]
fn train_on_files_with_a_holdout_or_a_test_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut csv = "id,review,sentiment\n".to_string();
    for (i, (t, l)) in reviews(60, 0).iter().enumerate() {
        csv.push_str(&format!("{i},\"{t}\",{l}\n"));
    }
    std::fs::write(dir.join("train.csv"), &csv).unwrap();
    std::fs::write(
        dir.join("test.csv"),
        csv.lines().take(11).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    std::fs::write(dir.join("test.tsv"), tsv(&reviews(4, 0))).unwrap();
    std::fs::write(
        dir.join("m.toml"),
        "[data]\ndataset = \"sst2\"\nmax_len = 16\n[model]\nkind = \"bilstm\"\nembed_dim = 8\nhidden = 8\n[train]\nbatch_size = 16\nmax_steps = 2\n",
    )
    .unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "-q",
            "--config",
            "m.toml",
            "--data",
            "train.csv",
            "--label-column",
            "sentiment",
        ];
        args.extend_from_slice(extra);
        cotext(dir, &args)
    };
    let out = ok(&train(&[
        "--dev-holdout",
        "12",
        "--test-data",
        "test.csv",
        "--out",
        "r1",
    ]));
    assert!(
        out.contains("best dev accuracy")
            && out.contains("test accuracy")
            && out.contains("(n = 10)"),
        "{out}"
    );
    let config = std::fs::read_to_string(dir.join("r1/config.toml")).unwrap();
    let abs = dir.join("train.csv").canonicalize().unwrap();
    assert!(
        config.contains(&format!("dataset = {:?}", abs.display().to_string())),
        "{config}"
    );
    assert!(
        config.contains("dev_holdout = 12") && config.contains("label_column = \"sentiment\""),
        "{config}"
    );
    // `eval --run` alone scores the run's own test file, from any folder.
    let v = eval_json(&dir.join("r1"), Path::new("."), &[]);
    assert_eq!(v["count"], 10);

    // Dev and test files must share the training file's layout.
    let err = exit_2(&train(&["--test-data", "test.tsv", "--out", "r2"]));
    assert!(err.contains("must share a layout"), "{err}");
    // A dev file needs a training file, not a card.
    let err = exit_2(&cotext(
        dir,
        &[
            "train",
            "-q",
            "--config",
            "m.toml",
            "--dev-data",
            "test.csv",
            "--out",
            "r4",
        ],
    ));
    assert!(
        err.contains("data.dev_data and data.test_data need data.dataset to be a data file"),
        "{err}"
    );
    let err = exit_2(&train(&["--text-column", "sentence", "--out", "r3"]));
    assert!(
        err.contains("train.csv:1: no text column \"sentence\""),
        "{err}"
    );
}

/// The "done when": `eval --data file.tsv` prints what the card route
/// prints on the same file, here the built-in `sst2` card's test split.
#[test]
fn file_route_equals_the_builtin_card() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("sst2.toml"),
        format!(
            "[data]\ndataset = \"sst2\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 160\neval_limit = 64\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nbatch_size = 16\nmax_steps = 4\n"
        ),
    )
    .unwrap();
    ok(&cotext(
        dir,
        &["train", "-q", "--config", "sst2.toml", "--out", "run"],
    ));
    let card = eval_json(dir, Path::new("run"), &[]);
    let test = data.join("sst2/test.tsv");
    let file = eval_json(dir, Path::new("run"), &["--data", test.to_str().unwrap()]);
    assert_eq!(card["count"], 1821);
    for key in ["count", "accuracy", "macro_f1", "confusion", "loss"] {
        assert_eq!(card[key], file[key], "{key}");
    }
    // The SST-5 test file has labels 2-4, outside this SST-2 run's.
    let sst5 = data.join("sst5/test.tsv");
    let err = exit_2(&cotext(
        dir,
        &["eval", "--run", "run", "--data", sst5.to_str().unwrap()],
    ));
    assert!(
        err.contains("sst5/test.tsv:")
            && err.contains("expected one of [\"negative\", \"positive\"]"),
        "{err}"
    );
    let err = exit_2(&cotext(
        dir,
        &[
            "eval",
            "--run",
            "run",
            "--data",
            "sst5",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("dataset sst5 has labels"), "{err}");
}
