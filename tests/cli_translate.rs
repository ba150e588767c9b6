//! `cotext train / eval / translate` on translation runs, as a user would run
//! them, on a small slice of Multi30k (de→en) from ../shared/datasets in a temp
//! dir: exact resume for ce and cot, the test translations scored the same way
//! by training, `cotext eval` and `cotext bleu`, and `translate` on stdin.

mod common;

use common::{cotext, text};

fn shared() -> Option<PathBuf> {
    common::shared_data_with("multi30k")
}

use std::path::{Path, PathBuf};

const LSTM: &str = "[model]\nkind = \"lstm_attention\"\nembed_dim = 16\nhidden = 16\nlayers = 1\n";
const TRANSFORMER: &str =
    "[model]\nkind = \"transformer_seq2seq\"\nd_model = 16\nheads = 2\nencoder_layers = 1\ndecoder_layers = 1\nffn_dim = 32\n";

fn config(dir: &Path, data: &Path, name: &str, model: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[data]\ndataset = \"multi30k-en-de\"\nsource_lang = \"de\"\ndata_dir = {data:?}\ndev_split = \"val\"\n\
             max_len = 24\ntrain_limit = 128\neval_limit = 24\n\n\
             [tokenizer]\nsource = \"train\"\nkind = \"bpe\"\nvocab_size = 400\n\n{model}\n\
             [train]\nbatch_size = 16\nepochs = 1\nlog_every = 2\nmetric = \"bleu\"\n\n\
             [decode]\nbeam = 2\nmax_len_a = 1.0\nmax_len_b = 4\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// A file of the run: checkpoint files from the folder state.json points at
/// (checked against its sha256), the others from the run directory.
fn read(run: &Path, file: &str) -> Vec<u8> {
    let path = if file.ends_with(".safetensors") {
        cotext::train::checkpoint::Checkpoint::read(run)
            .unwrap()
            .expect("a checkpoint")
            .verify(file)
            .unwrap()
    } else {
        run.join(file)
    };
    std::fs::read(path).unwrap()
}

#[test]
fn translation_resume_continues_exactly() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The chunked loss trains on the projected head (the loss fused with the
    // output layer); the plain one on the logits.
    for (objective, chunked) in [("ce", false), ("cot", false), ("ce", true), ("cot", true)] {
        let name = format!("{objective}-chunked-{chunked}");
        let cfg = config(tmp.path(), &data, &name, LSTM, "");
        let cfg = cfg.to_str().unwrap();
        let args = |steps: u32, out: &Path| -> Vec<String> {
            [
                "train",
                "-q",
                "--config",
                cfg,
                "--objective",
                objective,
                "--set",
                "train.eval_every=3",
                "--set",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("train.chunked_loss={chunked}"),
                "--set".into(),
                "train.log_every=1".into(),
                "--set".into(),
                format!("train.max_steps={steps}"),
                "--out".into(),
                out.display().to_string(),
            ])
            .collect()
        };
        let objective = name.as_str();
        let straight = tmp.path().join(format!("straight-{objective}"));
        let o = cotext(
            tmp.path(),
            &args(6, &straight)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        let split = tmp.path().join(format!("split-{objective}"));
        let o = cotext(
            tmp.path(),
            &args(3, &split)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(read(&split, "model.safetensors") != read(&straight, "model.safetensors"));
        let o = cotext(
            tmp.path(),
            &[
                "train",
                "-q",
                "--resume",
                "--set",
                "train.max_steps=6",
                "--out",
                split.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            read(&split, "model.safetensors") == read(&straight, "model.safetensors"),
            "{objective}: weights differ after resume"
        );
        assert!(
            read(&split, "optim.safetensors") == read(&straight, "optim.safetensors"),
            "{objective}: optimizer state differs"
        );
        // The logged training losses too, to the last bit.
        let losses = |run: &Path| -> Vec<String> {
            String::from_utf8(read(run, "metrics.jsonl"))
                .unwrap()
                .lines()
                .filter(|l| l.contains("\"lr\""))
                .filter_map(|l| l.split("\"loss\":").nth(1))
                .map(|rest| rest.split(',').next().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            losses(&split),
            losses(&straight),
            "{objective}: logged losses"
        );
        assert_eq!(
            losses(&straight).len(),
            6,
            "{objective}: a train line every step"
        );
        if objective.starts_with("cot") {
            let metrics = String::from_utf8(read(&straight, "metrics.jsonl")).unwrap();
            assert!(
                metrics.contains("\"complement\""),
                "cot logs its complement loss: {metrics}"
            );
        }
    }
}

#[test]
fn train_eval_translate_and_bleu_agree() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // No eval limit on the test split: its 1000 translations are scored three ways.
    let cfg = config(tmp.path(), &data, "tf", TRANSFORMER, "");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("eval_limit = 24\n", "");
    std::fs::write(
        &cfg,
        text_cfg.replace("dev_split = \"val\"", "dev_split = \"\""),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "train.max_steps=4",
            "--set",
            "decode.beam=1",
            "--out",
            run.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("BLEU")
            && out.contains("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"),
        "{out}"
    );
    for f in [
        "config.toml",
        "task.json",
        "tokenizer.json",
        "state.json",
        "metrics.jsonl",
        "test.hyp.txt",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    assert_eq!(
        String::from_utf8(read(&run, "task.json")).unwrap(),
        r#"{"task":"translation"}"#
    );
    assert!(
        !read(&run, "model.safetensors").is_empty() && !read(&run, "optim.safetensors").is_empty()
    );
    let hyps = String::from_utf8(read(&run, "test.hyp.txt")).unwrap();
    assert_eq!(hyps.lines().count(), 1000);
    let metrics = String::from_utf8(read(&run, "metrics.jsonl")).unwrap();
    let test_line: serde_json::Value = serde_json::from_str(
        metrics
            .lines()
            .rev()
            .find(|l| l.contains("\"split\":\"test\""))
            .expect("a test line"),
    )
    .unwrap();
    let trained_bleu = test_line["bleu"].as_f64().unwrap();

    // `cotext bleu` on the written translations against the raw references.
    let refs = data.join("multi30k/test_2016_flickr.en");
    let o = cotext(
        tmp.path(),
        &[
            "bleu",
            "-r",
            refs.to_str().unwrap(),
            run.join("test.hyp.txt").to_str().unwrap(),
            "--format",
            "json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let scored: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!(
        (scored["score"].as_f64().unwrap() - trained_bleu).abs() < 1e-9,
        "{scored} vs {trained_bleu}"
    );

    // `cotext eval` decodes the test split again (the run's beam, here 1): same text, same score.
    let o = cotext(
        tmp.path(),
        &["eval", "--run", run.to_str().unwrap(), "--format", "json"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["count"], 1000);
    assert!((report["bleu"].as_f64().unwrap() - trained_bleu).abs() < 1e-9);
    assert!(report["signature"]
        .as_str()
        .unwrap()
        .starts_with("nrefs:1|"));
    // The text report leads with the score, as sacreBLEU's does, for eval and train.
    let o = cotext(tmp.path(), &["eval", "--run", run.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.contains("BLEU"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.starts_with(&format!("BLEU = {trained_bleu:.2} ")),
        "{line}"
    );
    assert!(out.contains(&format!("BLEU = {trained_bleu:.2} ")), "{out}");

    // `cotext translate`: one output line per input line, in order, empty lines included.
    let input = "Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n";
    let o = cotext(
        tmp.path(),
        &["translate", "--run", run.to_str().unwrap(), "--beam", "3"],
        Some(input),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        3,
        "{}",
        text(&o)
    );
    // Greedy from the CLI equals the training run's greedy test translations.
    let first_src = std::fs::read_to_string(data.join("multi30k/test_2016_flickr.de")).unwrap();
    let first_src = first_src.lines().take(5).collect::<Vec<_>>().join("\n") + "\n";
    let o = cotext(
        tmp.path(),
        &["translate", "--run", run.to_str().unwrap(), "--beam", "1"],
        Some(&first_src),
    );
    assert!(o.status.success(), "{}", text(&o));
    let got: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = hyps.lines().take(5).map(str::to_string).collect();
    assert_eq!(got, want);
}

#[test]
fn translation_config_errors_exit_2() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "classifier",
            "[model]\nkind = \"bilstm\"\n",
            "",
            "model.kind",
        ),
        ("hcot", LSTM, "", "hcot"),
        ("lang", LSTM, "", "data.source_lang"),
        ("badkey", LSTM, "beams = 3\n", "beams"),
    ];
    for (name, model, extra, needle) in cases {
        let cfg = config(tmp.path(), &data, name, model, extra);
        let mut args = vec!["train", "-q", "--config", cfg.to_str().unwrap(), "--out"];
        let out = tmp.path().join(name);
        args.push(out.to_str().unwrap());
        if name == "hcot" {
            args.extend(["--objective", "hcot"]);
        }
        if name == "lang" {
            args.extend(["--set", "data.source_lang=fr"]);
        }
        let o = cotext(tmp.path(), &args, None);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(text(&o).contains(needle), "{name}: {}", text(&o));
    }
}
