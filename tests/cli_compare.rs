//! `cotext compare` and `cotext plot` run as a user would, on a small slice of
//! SST-5 from ../shared/datasets, in a temp dir: the run directories, report.md,
//! summary.json agreeing with the runs' metrics, the PNGs, a second call skipping
//! finished runs, and bad flags exiting 2 with the flag named.

mod common;

use common::text;

fn cotext(cwd: &Path, args: &[&str]) -> Output {
    common::cotext(cwd, args, None)
}

fn shared() -> Option<PathBuf> {
    common::shared_datasets()
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime};

fn config(dir: &Path, data: &Path) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "[data]\ndataset = \"sst5\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 160\neval_limit = 64\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nbatch_size = 16\nmax_steps = 6\neval_every = 3\nlog_every = 2\n"
        ),
    )
    .unwrap();
    path
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A file of the run's live checkpoint, checked against state.json's sha256.
fn checkpoint_file(run: &Path, name: &str) -> PathBuf {
    cotext::train::checkpoint::Checkpoint::read(run)
        .unwrap()
        .expect("a checkpoint")
        .verify(name)
        .unwrap()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| b.starts_with(PNG))
        .unwrap_or(false)
}

/// Every file of a run directory with its modification time and contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, SystemTime, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.clone(),
                std::fs::metadata(&p).unwrap().modified().unwrap(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[test]
fn compare_reports_every_run_and_skips_finished_ones_when_run_again() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data);
    let args = [
        "compare",
        "-q",
        "--config",
        cfg.to_str().unwrap(),
        "--objectives",
        "ce,cot",
        "--seeds",
        "2",
        "--out",
        "cmp",
    ];
    let first = Instant::now();
    let o = cotext(tmp.path(), &args);
    let first = first.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("cmp");
    let runs = ["ce-seed1", "ce-seed2", "cot-seed1", "cot-seed2"];
    for run in runs {
        for f in ["config.toml", "state.json", "metrics.jsonl"] {
            assert!(out.join(run).join(f).is_file(), "{run}/{f} missing");
        }
        assert!(
            checkpoint_file(&out.join(run), "best.safetensors").is_file(),
            "{run}: no best weights"
        );
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(run).join("state.json")).unwrap())
                .unwrap();
        assert_eq!(state["finished"], true, "{run}");
        assert_eq!(state["step"], 6, "{run}");
    }
    // The objective and seed were overridden per run.
    let saved = std::fs::read_to_string(out.join("cot-seed2/config.toml")).unwrap();
    assert!(
        saved.contains("objective = \"cot\"") && saved.contains("seed = 2"),
        "{saved}"
    );

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| ce |") && report.contains("| cot |") && report.contains('±'),
        "{report}"
    );
    assert!(
        report.contains("compare") && report.contains("--seeds 2"),
        "{report}"
    );
    assert!(
        report.contains("Against ce") && report.contains("Welch"),
        "{report}"
    );

    // summary.json holds the runs' own numbers.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // cot against ce, per split and metric, with Welch's test (2 seeds a side).
    let diffs = summary["differences"].as_array().unwrap();
    let d = diffs
        .iter()
        .find(|d| d["objective"] == "cot" && d["split"] == "test" && d["metric"] == "accuracy")
        .expect("cot vs ce");
    assert_eq!(d["baseline"], "ce");
    let diff = d["value"]["mean"].as_f64().unwrap() - d["base"]["mean"].as_f64().unwrap();
    if let Some(w) = d["welch"].as_object() {
        assert!((w["diff"].as_f64().unwrap() - diff).abs() < 1e-12);
        let p = w["p"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{p}");
        assert!(w["ci_low"].as_f64().unwrap() <= diff && diff <= w["ci_high"].as_f64().unwrap());
    }
    assert_eq!(summary["runs"].as_array().unwrap().len(), 4);
    for run in summary["runs"].as_array().unwrap() {
        let dir = PathBuf::from(run["dir"].as_str().unwrap());
        let metrics = std::fs::read_to_string(tmp.path().join(&dir).join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let test = lines.iter().find(|l| l["split"] == "test").unwrap();
        assert_eq!(
            run["test"]["accuracy"],
            test["accuracy"],
            "{}",
            dir.display()
        );
        assert_eq!(
            run["test"]["macro_f1"],
            test["macro_f1"],
            "{}",
            dir.display()
        );
        let best = lines
            .iter()
            .rfind(|l| l["split"] == "dev" && l["best"] == true)
            .unwrap();
        assert_eq!(
            run["dev"]["accuracy"],
            best["accuracy"],
            "{}",
            dir.display()
        );
        assert_eq!(run["dev"]["step"], best["step"], "{}", dir.display());
    }
    for (i, objective) in ["ce", "cot"].iter().enumerate() {
        let o = &summary["objectives"][i];
        assert_eq!(o["objective"], *objective);
        let tests: Vec<f64> = summary["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["objective"] == *objective)
            .map(|r| r["test"]["accuracy"].as_f64().unwrap())
            .collect();
        assert_eq!(tests.len(), 2);
        let mean = (tests[0] + tests[1]) / 2.0;
        let std = ((tests[0] - mean).powi(2) + (tests[1] - mean).powi(2)).sqrt(); // n − 1 = 1
        assert!((o["test"]["accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!((o["test"]["accuracy"]["std"].as_f64().unwrap() - std).abs() < 1e-12);
        assert_eq!(o["test"]["accuracy"]["n"], 2);
        // 4 wrong classes of SST-5, decreasing, each below 1.
        let complement: Vec<f64> = o["complement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(complement.len(), 4);
        assert!(
            complement.windows(2).all(|w| w[0] >= w[1]) && complement[0] < 1.0,
            "{complement:?}"
        );
        // 64 test examples per seed, summed over 2 seeds.
        let confusion: usize = o["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|c| c.as_u64().unwrap() as usize)
            .sum();
        assert_eq!(confusion, 128);
    }
    for png in ["curves.png", "complement.png", "confusion.png"] {
        assert!(is_png(&out.join(png)), "{png} is not a PNG");
    }

    // Again: every run is finished, so nothing is trained or rewritten.
    let before: Vec<_> = runs.iter().map(|r| snapshot(&out.join(r))).collect();
    let again = Instant::now();
    let o = cotext(tmp.path(), &args);
    let again = again.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        text(&o).matches("finished, skipped").count(),
        4,
        "{}",
        text(&o)
    );
    let after: Vec<_> = runs.iter().map(|r| snapshot(&out.join(r))).collect();
    assert!(before == after, "a finished run's files changed");
    assert!(
        again < first,
        "skipping took {again:?}, training took {first:?}"
    );

    // `plot` draws one run's curves.
    let o = cotext(tmp.path(), &["plot", "--run", "cmp/cot-seed1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_png(&out.join("cot-seed1/curves.png")));
    let o = cotext(
        tmp.path(),
        &["plot", "--run", "cmp/ce-seed1", "--out", "plots/ce.png"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_png(&tmp.path().join("plots/ce.png")));
}

#[test]
fn compare_resumes_a_half_finished_run() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data);
    let cfg = cfg.to_str().unwrap();
    // A run stopped at step 3 of 6, as Ctrl-C would leave it.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg,
            "--objective",
            "cot",
            "--seed",
            "1",
            "--set",
            "train.max_steps=3",
            "--out",
            "cmp/cot-seed1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let state = tmp.path().join("cmp/cot-seed1/state.json");
    let partial = std::fs::read_to_string(&state)
        .unwrap()
        .replace("\"finished\": true", "\"finished\": false");
    std::fs::write(&state, partial).unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "compare",
            "-q",
            "--config",
            cfg,
            "--objectives",
            "cot",
            "--seeds",
            "1",
            "--out",
            "cmp",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming"), "{}", text(&o));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["finished"].as_bool()),
        (Some(6), Some(true))
    );
    // The resumed run equals a straight one.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg,
            "--objective",
            "cot",
            "--seed",
            "1",
            "--out",
            "straight",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let weights = |run: &str| {
        std::fs::read(checkpoint_file(&tmp.path().join(run), "model.safetensors")).unwrap()
    };
    assert!(weights("cmp/cot-seed1") == weights("straight"));
}

#[test]
fn compare_with_jobs_trains_runs_in_parallel_processes_and_gets_the_same_weights() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data);
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cotext"))
            .args(args)
            .current_dir(tmp.path())
            .env("HF_HOME", tmp.path().join("hf"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        text(&o)
    };
    let common = [
        "compare",
        "-q",
        "--config",
        cfg,
        "--objectives",
        "ce,cot",
        "--seeds",
        "1",
    ];
    let parallel = run(&[&common[..], &["--jobs", "2", "--out", "par"]].concat());
    assert!(parallel.contains("2 at a time"), "{parallel}");
    run(&[&common[..], &["--out", "seq"]].concat());
    for name in ["ce-seed1", "cot-seed1"] {
        let log =
            std::fs::read_to_string(tmp.path().join("par").join(format!("{name}.log"))).unwrap();
        assert!(log.contains("test"), "{name}.log: {log}");
        let weights = |out: &str| {
            std::fs::read(checkpoint_file(
                &tmp.path().join(out).join(name),
                "model.safetensors",
            ))
            .unwrap()
        };
        assert!(
            weights("par") == weights("seq"),
            "{name}: parallel and in-process runs differ"
        );
    }
    let report = std::fs::read_to_string(tmp.path().join("par/report.md")).unwrap();
    assert!(
        report.contains("--jobs 2") && report.contains("cot"),
        "{report}"
    );
    // Run again: both finished, nothing is started.
    let again = run(&[&common[..], &["--jobs", "2", "--out", "par"]].concat());
    assert!(
        again.matches("finished, skipped").count() == 2 && !again.contains("at a time"),
        "{again}"
    );
}

#[test]
fn bad_compare_flags_exit_2_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &tmp.path().join("nodata"));
    let cfg = cfg.to_str().unwrap();
    for (flags, named) in [
        (vec!["--objectives", "ce,xent"], "--objectives"),
        (vec!["--objectives", "ce,ce"], "--objectives"),
        (vec!["--seeds", "0"], "--seeds"),
        (vec!["--jobs", "0"], "--jobs"),
        (vec!["--set", "train.no_such_key=1"], "no_such_key"),
    ] {
        let mut args = vec!["compare", "--config", cfg];
        args.extend(flags);
        let o = cotext(tmp.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(named), "{args:?}: {}", text(&o));
    }
    let o = cotext(tmp.path(), &["plot", "--run", "nowhere"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("nowhere"), "{}", text(&o));
}

/// A tiny Multi30k de→en Transformer config in `dir`.
fn mt_config(dir: &Path, data: &Path) -> PathBuf {
    let cfg = dir.join("mt.toml");
    std::fs::write(
        &cfg,
        format!(
            "[data]\ndataset = \"multi30k-en-de\"\nsource_lang = \"de\"\ndata_dir = {data:?}\ndev_split = \"val\"\n\
             max_len = 20\ntrain_limit = 96\neval_limit = 12\n\n\
             [tokenizer]\nsource = \"train\"\nkind = \"bpe\"\nvocab_size = 300\n\n\
             [model]\nkind = \"transformer_seq2seq\"\nd_model = 16\nheads = 2\nencoder_layers = 1\ndecoder_layers = 1\nffn_dim = 32\n\n\
             [train]\nbatch_size = 16\nmax_steps = 4\neval_every = 2\nlog_every = 2\nmetric = \"bleu\"\n\n\
             [decode]\nbeam = 2\nmax_len_a = 1.0\nmax_len_b = 3\n"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn compare_on_translation_reports_bleu_and_a_token_level_profile() {
    let Some(data) = shared() else { return };
    if !data.join("multi30k").is_dir() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = mt_config(tmp.path(), &data);
    let o = cotext(
        tmp.path(),
        &[
            "compare",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--objectives",
            "ce,cot",
            "--seeds",
            "2",
            "--out",
            "cmp",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("BLEU"), "{}", text(&o));
    let out = tmp.path().join("cmp");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| BLEU |") && report.contains("token accuracy"),
        "{report}"
    );
    assert!(is_png(&out.join("curves.png")) && is_png(&out.join("complement.png")));
    assert!(
        !out.join("confusion.png").exists(),
        "no confusion matrix for translation"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for o in summary["objectives"].as_array().unwrap() {
        let profile: Vec<f64> = o["complement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(profile.len(), 100, "the first 100 wrong-token ranks");
        assert!(
            profile.windows(2).all(|w| w[0] >= w[1]),
            "sorted largest first: {profile:?}"
        );
        assert_eq!(o["test"]["bleu"]["n"], 2);
    }
    // Each run's test BLEU in summary.json is the one its metrics.jsonl logged.
    for r in summary["runs"].as_array().unwrap() {
        let dir = PathBuf::from(r["dir"].as_str().unwrap());
        let dir = if dir.is_absolute() {
            dir
        } else {
            tmp.path().join(dir)
        };
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let test: serde_json::Value = serde_json::from_str(
            metrics
                .lines()
                .rev()
                .find(|l| l.contains("\"split\":\"test\""))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r["test"]["bleu"], test["bleu"]);
    }
    let o = cotext(
        tmp.path(),
        &["plot", "--run", out.join("cot-seed1").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_png(&out.join("cot-seed1/curves.png")));
}

/// `compare` once reused a finished run whatever its config (the report then
/// mixed configs) and resumed an unfinished one with this call's config unchecked.
/// Now a run is reused only if trained as this call would train it, resumed (and
/// a finished one extended) when only keys a resume may change differ, and
/// refused otherwise, naming the run and the key, with nothing changed.
#[test]
fn compare_refuses_a_run_of_another_config_and_extends_one_with_a_larger_budget() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data);
    let compare = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--objectives",
            "ce",
            "--seeds",
            "1",
            "--out",
            "cmp",
        ];
        args.extend(extra);
        cotext(tmp.path(), &args)
    };
    let o = compare(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let run = tmp.path().join("cmp/ce-seed1");
    let before = snapshot(&run);

    let refused = |o: &Output, key: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", text(o));
        let t = text(o);
        assert!(
            t.contains("cmp/ce-seed1")
                && t.contains(key)
                && t.contains("--out")
                && t.contains("delete"),
            "{t}"
        );
    };
    let o = compare(&["--set", "train.optimizer.lr=0.01"]);
    refused(&o, "train.optimizer.lr");
    assert!(
        snapshot(&run) == before,
        "a refused compare changed the run"
    );

    // The same for a run that did not finish: it is not resumed with another config.
    let state = run.join("state.json");
    let finished = std::fs::read(&state).unwrap();
    let partial = String::from_utf8(finished.clone())
        .unwrap()
        .replace("\"finished\": true", "\"finished\": false");
    std::fs::write(&state, partial).unwrap();
    let o = compare(&["--set", "model.hidden=32"]);
    refused(&o, "model.hidden");
    std::fs::write(&state, &finished).unwrap();
    // (state.json was rewritten here, so its time differs; the contents must not.)
    let contents = |s: Vec<(PathBuf, SystemTime, Vec<u8>)>| {
        s.into_iter().map(|(p, _, b)| (p, b)).collect::<Vec<_>>()
    };
    assert!(
        contents(snapshot(&run)) == contents(before.clone()),
        "a refused compare changed the run"
    );

    // A larger budget is a key a resume may change: the finished run is extended.
    let o = compare(&["--set", "train.max_steps=8"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("resumed with train.max_steps 6 → 8"),
        "{}",
        text(&o)
    );
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["finished"].as_bool()),
        (Some(8), Some(true))
    );
    assert!(std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .contains("max_steps = 8"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("cmp/summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["runs"][0]["dev"]["step"].as_u64().map(|s| s <= 8),
        Some(true)
    );

    // A smaller one cannot be undone; a key that only says how to look at the run
    // (eval batch size) reuses it as it is.
    let o = compare(&[]);
    refused(&o, "8 steps");
    let o = compare(&[
        "--set",
        "train.max_steps=8",
        "--set",
        "train.eval_batch_size=5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("finished, skipped"), "{}", text(&o));
}

/// An objective that cannot run on the data set (HCOT without a hierarchy on 2
/// classes) fails before anything trains, not after the runs listed before it.
#[test]
fn compare_checks_every_objective_before_training_any() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data);
    let o = cotext(
        tmp.path(),
        &[
            "compare",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "data.dataset=\"sst2\"",
            "--objectives",
            "ce,hcot",
            "--out",
            "cmp",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("objective hcot") && text(&o).contains("train.hierarchy"),
        "{}",
        text(&o)
    );
    assert!(
        !tmp.path().join("cmp/ce-seed1").exists(),
        "ce was trained before the check"
    );
}

#[test]
fn compare_checks_translation_objectives_before_training_any() {
    let Some(data) = shared() else { return };
    if !data.join("multi30k").is_dir() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = mt_config(tmp.path(), &data);
    let o = cotext(
        tmp.path(),
        &[
            "compare",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--objectives",
            "ce,hcot",
            "--out",
            "cmp",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("objective hcot") && text(&o).contains("translation supports"),
        "{}",
        text(&o)
    );
    assert!(
        !tmp.path().join("cmp/ce-seed1").exists(),
        "ce was trained before the check"
    );
}
