//! `cotext train / eval / predict` run as a user would, on a small slice of SST-5
//! from ../shared/datasets, in a temp dir: the run directory's files, resume
//! exactness, predictions, and bad configs exiting 2 with the key or path named.

mod common;

use common::{cotext, text};

fn shared() -> Option<PathBuf> {
    common::shared_datasets()
}

use std::path::{Path, PathBuf};

fn config(dir: &Path, data: &Path, objective: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{objective}.toml"));
    std::fs::write(
        &path,
        format!(
            "[data]\ndataset = \"sst5\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 160\neval_limit = 64\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nobjective = \"{objective}\"\nbatch_size = 16\nepochs = 1\nlog_every = 2\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// A file of the run's live checkpoint (the folder state.json points at),
/// checked against the sha256 state.json records.
fn checkpoint_file(run: &Path, name: &str) -> PathBuf {
    cotext::train::checkpoint::Checkpoint::read(run)
        .unwrap()
        .expect("a checkpoint")
        .verify(name)
        .unwrap()
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(checkpoint_file(run, "model.safetensors")).unwrap()
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for objective in ["ce", "cot"] {
        let cfg = config(tmp.path(), &data, objective, "eval_every = 3\n");
        let cfg = cfg.to_str().unwrap();
        let straight = tmp.path().join(format!("straight-{objective}"));
        let o = cotext(
            tmp.path(),
            &[
                "train",
                "-q",
                "--config",
                cfg,
                "--set",
                "train.max_steps=8",
                "--out",
                straight.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        let split = tmp.path().join(format!("split-{objective}"));
        let o = cotext(
            tmp.path(),
            &[
                "train",
                "-q",
                "--config",
                cfg,
                "--set",
                "train.max_steps=4",
                "--out",
                split.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            weights(&split) != weights(&straight),
            "{objective}: 4 and 8 steps gave the same weights"
        );
        let o = cotext(
            tmp.path(),
            &[
                "train",
                "-q",
                "--resume",
                "--set",
                "train.max_steps=8",
                "--out",
                split.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            weights(&split) == weights(&straight),
            "{objective}: resumed weights differ from the uninterrupted run"
        );
        let optim = |run: &Path| std::fs::read(checkpoint_file(run, "optim.safetensors")).unwrap();
        assert!(
            optim(&split) == optim(&straight),
            "{objective}: optimizer state differs"
        );
        // A smaller budget than the run trained cannot be resumed to: refused,
        // and its config.toml keeps the budget it was trained with.
        let saved = std::fs::read(split.join("config.toml")).unwrap();
        let o = cotext(
            tmp.path(),
            &[
                "train",
                "-q",
                "--resume",
                "--set",
                "train.max_steps=4",
                "--out",
                split.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("trained 8 steps"), "{}", text(&o));
        assert_eq!(std::fs::read(split.join("config.toml")).unwrap(), saved);
    }
}

#[test]
fn train_eval_predict_round_trip() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "hcot", "");
    let run = tmp.path().join("run");
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("test accuracy"), "{out}");
    for f in [
        "config.toml",
        "task.json",
        "tokenizer.json",
        "labels.json",
        "state.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run.join("task.json")).unwrap(),
        r#"{"task":"classification"}"#
    );
    for f in ["model.safetensors", "optim.safetensors", "best.safetensors"] {
        assert!(checkpoint_file(&run, f).is_file(), "{f} missing");
    }
    // Both optimizers' state is saved.
    let optim = std::fs::read(checkpoint_file(&run, "optim.safetensors")).unwrap();
    let optim = String::from_utf8_lossy(&optim[..4096.min(optim.len())]);
    assert!(optim.contains("primary.") && optim.contains("complement."));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"split\":\"dev\"")));
    assert!(metrics.lines().any(|l| l.contains("\"complement\"")));
    // A second train into the same folder refuses rather than overwriting.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--resume"));

    let o = cotext(
        tmp.path(),
        &["eval", "--run", run.to_str().unwrap(), "--format", "json"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 2210);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(v["macro_f1"].as_f64().is_some());
    assert_eq!(v["confusion"].as_array().unwrap().len(), 5);

    let o = cotext(
        tmp.path(),
        &[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--format",
            "json",
        ],
        Some("a gorgeous , witty movie .\nthe worst film of the year .\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let total: f64 = lines[0]["probs"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4);
    let o = cotext(
        tmp.path(),
        &["predict", "--run", run.to_str().unwrap()],
        Some("fine .\n"),
    );
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(line.lines().count(), 1);
    assert!(line.contains('\t'), "{line}");
}

#[test]
fn binary_tasks_warn_that_cot_does_nothing() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "cot", "max_steps = 1\n");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"sst5\"", "\"sst2\"");
    std::fs::write(&cfg, body).unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "r",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("complement entropy is identically 0"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_configs_exit_2_naming_the_key_or_path() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nodata");
    let cfg = config(tmp.path(), &data, "ce", "learning_rate = 0.1\n");
    let o = cotext(
        tmp.path(),
        &["train", "--config", cfg.to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("learning_rate") && text(&o).contains("ce.toml"),
        "{}",
        text(&o)
    );

    let cfg = config(tmp.path(), &data, "ce", "batch_size = \"big\"\n");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_size = 16\n", "");
    std::fs::write(&cfg, body).unwrap();
    let o = cotext(
        tmp.path(),
        &["train", "--config", cfg.to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("train.batch_size: expected an integer, got \"big\""),
        "{}",
        text(&o)
    );

    let o = cotext(tmp.path(), &["train", "--config", "missing.toml"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("missing.toml"), "{}", text(&o));

    let o = cotext(
        tmp.path(),
        &[
            "train",
            "--config",
            config(tmp.path(), &data, "ce", "").to_str().unwrap(),
            "--set",
            "train.epochs=0",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("train.epochs"), "{}", text(&o));

    let o = cotext(tmp.path(), &["eval", "--run", "nowhere"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nowhere"), "{}", text(&o));
}

#[test]
fn cross_section_errors_exit_2_before_anything_is_written() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let train = |cfg: &Path, sets: &[&str]| {
        let mut args = vec![
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        cotext(tmp.path(), &args, None)
    };
    // Sequences of data.max_len tokens do not fit a 16-position Transformer.
    let cfg = config(tmp.path(), &data, "ce", "");
    let body = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n",
        "kind = \"transformer\"\nd_model = 16\nheads = 2\nlayers = 1\nffn_dim = 32\nmax_len = 16\n",
    );
    std::fs::write(&cfg, body).unwrap();
    let o = train(&cfg, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("data.max_len (24)") && text(&o).contains("model.max_len = 16"),
        "{}",
        text(&o)
    );
    assert!(!run.exists(), "a refused run left {}", run.display());
    // The model section is checked when the config is read (a bad --set fails
    // before anything else, in compare's children too).
    let o = train(&cfg, &["data.max_len=16", "model.heads=3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("model.d_model (16) must be a positive multiple of model.heads (3)"),
        "{}",
        text(&o)
    );
    assert!(!run.exists());
    // A tokenizer from the model needs a pretrained model.
    let cfg = config(tmp.path(), &data, "ce", "");
    let o = train(&cfg, &["tokenizer.source=\"model\""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("tokenizer.source = \"model\" needs model.kind = \"bert\""),
        "{}",
        text(&o)
    );
    assert!(!run.exists());
    // A translation model on a classification data set.
    let o = train(&cfg, &["model.kind=\"lstm_attention\""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("translation model"), "{}", text(&o));
    assert!(!run.exists());
}
