//! Reliability of `cotext train / eval / translate` run as a user would: a folder
//! that is not ours is never written into, a refused resume changes nothing, a
//! damaged checkpoint is refused naming the file, SIGTERM saves, a torn
//! `metrics.jsonl` line is dropped, failed runs leave no folder behind. The
//! kill -9 loop itself is `scripts/kill-loop.sh` (run by `.ci/run`).

mod common;

use common::{command, text};

fn cotext(cwd: &Path, args: &[&str]) -> Output {
    common::cotext(cwd, args, None)
}

fn shared() -> Option<PathBuf> {
    common::shared_datasets()
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cotext::train::checkpoint::{self, Checkpoint};

fn config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            "[data]\ndataset = \"sst5\"\ndata_dir = {data:?}\nmax_len = 24\ntrain_limit = 160\neval_limit = 32\ntest_split = \"\"\n\n\
             [model]\nkind = \"bilstm\"\nembed_dim = 16\nhidden = 16\n\n\
             [train]\nobjective = \"cot\"\nbatch_size = 16\nmax_steps = 3\neval_every = 2\nlog_every = 1\n{extra}"
        ),
    )
    .unwrap();
    path
}

/// Trains the tiny config into `dir/run` and returns the run's path.
fn trained(dir: &Path, data: &Path) -> PathBuf {
    let cfg = config(dir, data, "");
    let o = cotext(
        dir,
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "run",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    dir.join("run")
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_folder_holding_the_users_files_is_never_written_into() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "");
    // `--out .` where the user keeps a config and a metrics file of their own,
    // and a folder with weights but no state.json.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("config.toml"), "# my notes\n").unwrap();
    std::fs::write(mine.join("metrics.jsonl"), "{\"mine\": 1}\n").unwrap();
    let weights = tmp.path().join("weights");
    std::fs::create_dir(&weights).unwrap();
    std::fs::write(weights.join("best.safetensors"), b"my weights").unwrap();
    for (cwd, out) in [(&mine, "."), (&tmp.path().to_path_buf(), "weights")] {
        let before = snapshot(tmp.path());
        let o = cotext(
            cwd,
            &[
                "train",
                "-q",
                "--config",
                cfg.to_str().unwrap(),
                "--out",
                out,
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("not a cotext run"), "{}", text(&o));
        assert!(snapshot(tmp.path()) == before, "--out {out}: files changed");
    }
}

#[test]
fn runs_that_fail_before_their_first_checkpoint_leave_no_folder() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "");
    let cfg = cfg.to_str().unwrap();
    // Refused by the memory estimate before allocating: exit 2, not an abort.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg,
            "--set",
            "model.hidden=100000000",
            "--out",
            "big",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("make the model smaller"), "{}", text(&o));
    assert!(!tmp.path().join("big").exists());
    // A NaN at the first steps: the message does not promise a checkpoint.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg,
            "--set",
            "train.optimizer.lr=1e38",
            "--out",
            "nan",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("before its first checkpoint, so no weights were saved"),
        "{}",
        text(&o)
    );
    assert!(!tmp.path().join("nan").exists());
    // An empty folder the user made is kept, and left empty.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            cfg,
            "--set",
            "train.optimizer.lr=1e38",
            "--out",
            "empty",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("empty")).unwrap().count(),
        0
    );
    // A run killed before its first checkpoint is ours: it may start over.
    let o = cotext(
        tmp.path(),
        &["train", "-q", "--config", cfg, "--out", "empty"],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_file(tmp.path().join("empty/state.json")).unwrap();
    let o = cotext(
        tmp.path(),
        &["train", "-q", "--config", cfg, "--out", "empty"],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_refused_resume_writes_nothing() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), &data);
    let before = snapshot(&run);
    let out = run.to_str().unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--set",
            "model.hidden=32",
            "--out",
            out,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("model.hidden is 16") && text(&o).contains("32"),
        "{}",
        text(&o)
    );
    let cfg = tmp.path().join("tiny.toml");
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("cannot be combined with --resume"),
        "{}",
        text(&o)
    );
    assert!(snapshot(&run) == before, "a refused resume changed the run");
    // What may change does.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--set",
            "train.max_steps=4",
            "--out",
            out,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(Checkpoint::read(&run).unwrap().unwrap().state.step, 4);
}

#[test]
fn damaged_or_non_finite_checkpoints_are_refused_naming_the_file() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), &data);
    let out = run.to_str().unwrap();
    let live = Checkpoint::read(&run).unwrap().unwrap();
    // One flipped byte in the optimizer state: resume refuses it.
    let optim = live.dir.join(checkpoint::OPTIM);
    let good = std::fs::read(&optim).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 3;
    bad[at] ^= 0x40;
    std::fs::write(&optim, &bad).unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--set",
            "train.max_steps=4",
            "--out",
            out,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("optim.safetensors") && text(&o).contains("sha256"),
        "{}",
        text(&o)
    );
    std::fs::write(&optim, &good).unwrap();
    // Truncated best weights: eval names the file.
    let best = live.dir.join(checkpoint::BEST);
    let weights = std::fs::read(&best).unwrap();
    std::fs::remove_file(&best).unwrap();
    std::fs::write(&best, &weights[..weights.len() / 2]).unwrap();
    let o = cotext(tmp.path(), &["eval", "--run", out, "--split", "dev"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("best.safetensors"), "{}", text(&o));
    // NaN weights whose checksum state.json agrees with (written by a buggy tool,
    // say): refused by the finiteness check.
    std::fs::remove_file(&best).unwrap();
    let mut tensors = checkpoint::load_tensors(&live.dir.join(checkpoint::MODEL)).unwrap();
    let name = tensors.keys().min().unwrap().clone();
    let t = &tensors[&name];
    tensors.insert(name.clone(), (t.ones_like().unwrap() * f64::NAN).unwrap());
    checkpoint::save_tensors(&best, &tensors).unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
    state["checkpoint"]["files"]["best.safetensors"] =
        checkpoint::sha256_file(&best).unwrap().into();
    std::fs::write(run.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    let o = cotext(tmp.path(), &["eval", "--run", out, "--split", "dev"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("best.safetensors")
            && text(&o).contains("NaN")
            && text(&o).contains(&name),
        "{}",
        text(&o)
    );
    // A data cursor past the end of an epoch is an error, not a skipped epoch.
    state["cursor"]["batch"] = 9999.into();
    std::fs::write(run.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--set",
            "train.max_steps=4",
            "--out",
            out,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("data cursor is at batch 9999"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_torn_metrics_line_is_dropped_on_resume() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), &data);
    let metrics = run.join("metrics.jsonl");
    let mut body = std::fs::read_to_string(&metrics).unwrap();
    body.push_str("{\"step\":4,\"epoch\":0,\"lr\":0.0");
    std::fs::write(&metrics, &body).unwrap();
    // Readers skip it...
    let o = cotext(tmp.path(), &["plot", "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // ...and a resume drops it, saying so, before appending.
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--resume",
            "--set",
            "train.max_steps=5",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dropped a last line"), "{}", text(&o));
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

/// Starts `cotext train` on `cfg` into `dir/run` with no end in sight (no
/// evaluation either), stderr piped, and returns it once `metrics.jsonl` holds
/// `lines` lines.
fn training_without_end(dir: &Path, cfg: &Path, lines: usize) -> std::process::Child {
    let child = command(
        dir,
        &[
            "train",
            "-q",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "train.max_steps=100000",
            "--set",
            "train.eval_every=100000",
            "--out",
            "run",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .is_ok_and(|m| m.lines().count() >= lines)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no training after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_130() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "");
    // Once it trains (three metrics lines), ask it to stop as `timeout` would.
    let child = training_without_end(tmp.path(), &cfg, 3);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(text(&o).contains("checkpoint saved"), "{}", text(&o));
    let saved = Checkpoint::read(&tmp.path().join("run"))
        .unwrap()
        .expect("a checkpoint");
    assert!(saved.state.step >= 3 && !saved.state.finished);
    saved.verify(checkpoint::MODEL).unwrap();
}

#[test]
fn kill_9_between_evaluations_resumes_from_the_last_checkpoint_every() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &data, "checkpoint_every = 2\n");
    // The line of step 5 is written after the save of step 4.
    let mut child = training_without_end(tmp.path(), &cfg, 5);
    child.kill().unwrap(); // SIGKILL: nothing is saved on the way out
    child.wait().unwrap();
    let saved = Checkpoint::read(&tmp.path().join("run"))
        .unwrap()
        .expect("a checkpoint between evaluations");
    let step = saved.state.step;
    assert!(
        step >= 4 && step.is_multiple_of(2) && !saved.state.finished && saved.state.best.is_none(),
        "step {step}, finished {}",
        saved.state.finished
    );
    // Resumed to a budget a few updates on, it ends where a run that never saved
    // between evaluations (and was never killed) ends.
    let total = format!("train.max_steps={}", step + 3);
    let o = cotext(
        tmp.path(),
        &["train", "-q", "--resume", "--set", &total, "--out", "run"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let plain = config(tmp.path(), &data, "");
    let o = cotext(
        tmp.path(),
        &[
            "train",
            "-q",
            "--config",
            plain.to_str().unwrap(),
            "--set",
            &total,
            "--set",
            "train.eval_every=100000",
            "--out",
            "straight",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let file = |run: &str, name: &str| {
        let c = Checkpoint::read(&tmp.path().join(run)).unwrap().unwrap();
        std::fs::read(c.verify(name).unwrap()).unwrap()
    };
    for name in [checkpoint::MODEL, checkpoint::OPTIM, checkpoint::BEST] {
        assert!(
            file("run", name) == file("straight", name),
            "{name} differs"
        );
    }
}

#[test]
fn translate_on_a_classification_run_says_what_it_is() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), &data);
    let o = cotext(tmp.path(), &["translate", "--run", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("classification run") && text(&o).contains("cotext predict"),
        "{}",
        text(&o)
    );
}

#[test]
fn binary_stdin_to_predict_names_the_line() {
    let Some(data) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = trained(tmp.path(), &data);
    let mut child = command(tmp.path(), &["predict", "--run", run.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a fine film .\n\xff\xfe\x00 binary\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("<stdin>:2: invalid UTF-8"),
        "{}",
        text(&o)
    );
}
