//! `compare`'s execution: which runs are missing, unfinished or done (and
//! whether a done one was trained as this call would), then training what is
//! left, in this process or as `cotext train` children.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cotext::report::RunMetrics;
use cotext::train::checkpoint::Checkpoint;
use cotext::train::runner::{self, ConfigDifference, RunState, TrainOptions};
use cotext::train::{ObjectiveKind, RunConfig};

use super::plan::Plan;
use super::{name, user_error};

/// What a run directory holds.
enum Status {
    /// No checkpoint: start.
    Missing,
    /// A checkpoint of an unfinished run: resume.
    Partial,
    /// Finished, test line written: skip.
    Finished(RunState),
}

fn status(dir: &Path, config: &RunConfig) -> anyhow::Result<Status> {
    let Some(checkpoint) = Checkpoint::read(dir)? else {
        return Ok(Status::Missing);
    };
    if !checkpoint.state.finished {
        return Ok(Status::Partial);
    }
    // Finished but killed while scoring the test split: a resume only does that.
    let metrics = dir.join("metrics.jsonl");
    let has_test = metrics.exists() && RunMetrics::read(&metrics)?.test.is_some();
    Ok(if has_test || config.data.test_split.is_empty() {
        Status::Finished(checkpoint.state)
    } else {
        Status::Partial
    })
}

/// Keys that say where and how a finished run is looked at, not what it trained
/// or scored: a finished run that differs from this call only in these is reused
/// as it is (moving the data, or reporting on another machine, retrains nothing).
const VIEW_KEYS: &[&str] = &[
    "train.device",
    "data.data_dir",
    "train.eval_batch_size",
    "train.log_every",
    "train.checkpoint_every",
];

/// What to do with a run directory that already holds a run.
enum Existing {
    /// Reuse it as it is (finished, and trained as this call would).
    Reuse,
    /// Resume it with this call's config, which differs from the saved one only in
    /// keys a resume may change (`cotext train --resume --set KEY=VALUE` for each).
    Resume(Vec<ConfigDifference>),
}

fn user_error_at(dir: &Path, msg: String) -> anyhow::Error {
    user_error(format!(
        "{}: {msg}. Choose a new --out for this config, or delete {} to train that run again",
        dir.display(),
        dir.display()
    ))
}

/// Compares the config saved in `dir` (a run already started there) with the one
/// this call resolves for it (same base config, overrides, objective and seed).
/// A difference outside the keys a resume may change is refused: the report
/// would mix two configs. Within them, a run is resumed with this call's values,
/// as `cotext train --resume --set` would: a larger epochs or max_steps extends a
/// finished run (one stopped early stays stopped) and its test split is scored
/// again (a new decode.beam, say). A smaller budget than a finished run already
/// trained is refused, as it cannot be undone.
fn check_existing(
    dir: &Path,
    wanted: &RunConfig,
    finished: Option<&RunState>,
) -> anyhow::Result<Existing> {
    let saved = RunConfig::load(&dir.join("config.toml"), &[])?;
    let differences = runner::config_differences(&saved, wanted);
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
    let fixed: Vec<&ConfigDifference> = differences
        .iter()
        .filter(|d| !runner::is_resumable_key(&d.key))
        .collect();
    if !fixed.is_empty() {
        let listed: Vec<String> = fixed
            .iter()
            .take(3)
            .map(|d| {
                format!(
                    "{} is {} there but {} here",
                    d.key,
                    show(&d.before),
                    show(&d.after)
                )
            })
            .collect();
        let more = if fixed.len() > 3 {
            format!(" (and {} more keys)", fixed.len() - 3)
        } else {
            String::new()
        };
        return Err(user_error_at(dir, format!("holds a run trained with another config: {}{more}; its results would be mixed into this report", listed.join("; "))));
    }
    let is_view = |d: &&ConfigDifference| VIEW_KEYS.contains(&d.key.as_str());
    let relevant: Vec<ConfigDifference> = match finished {
        Some(_) => differences
            .iter()
            .filter(|d| !is_view(d))
            .cloned()
            .collect(),
        None => differences.clone(),
    };
    if let Some(d) = relevant.iter().find(|d| d.after.is_none() && !is_view(d)) {
        return Err(user_error_at(
            dir,
            format!("{} is {} in its config.toml and unset here, and a resume cannot unset a key (set it with --set {}=…)", d.key, show(&d.before), d.key),
        ));
    }
    if let Some(why) =
        finished.and_then(|state| runner::budget_below_trained(&saved, wanted, state))
    {
        return Err(user_error_at(dir, format!("holds a finished run: {why}")));
    }
    Ok(if relevant.is_empty() && finished.is_some() {
        Existing::Reuse
    } else {
        Existing::Resume(relevant)
    })
}

/// A run `compare` still has to train (or finish).
struct Pending {
    label: String,
    objective: ObjectiveKind,
    seed: u64,
    config: RunConfig,
    dir: PathBuf,
    resume: bool,
    /// `--set KEY=VALUE` a resuming child gets besides the plan's overrides, so that
    /// it runs `config` (the run's saved config.toml is its starting point).
    sets: Vec<String>,
}

/// Trains `pending` as `cotext train` child processes, at most `plan.jobs` at a
/// time, each with its output in `<out>/<objective>-seed<N>.log`. A child gets the
/// same config and overrides as the in-process path. Ctrl-C reaches the children
/// too (same process group): each saves a checkpoint and exits; no new run starts.
fn run_in_processes(plan: &Plan, pending: Vec<Pending>, stop: &AtomicBool) -> anyhow::Result<()> {
    use std::process::{Child, Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the cotext executable to start runs: {e}"))?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .unwrap_or_else(|| (cores / plan.jobs).max(1).to_string());
    std::fs::create_dir_all(&plan.out).map_err(|source| cotext::Error::Io {
        path: plan.out.clone(),
        source,
    })?;
    eprintln!(
        "running {} runs, {} at a time, RAYON_NUM_THREADS={threads} each",
        pending.len(),
        plan.jobs
    );
    let mut queue = pending.into_iter();
    let mut running: Vec<(Pending, PathBuf, Child)> = Vec::new();
    let mut failures = Vec::new();
    let mut interrupted = false;
    loop {
        while running.len() < plan.jobs && !stop.load(Ordering::SeqCst) {
            let Some(run) = queue.next() else { break };
            let log = plan
                .out
                .join(format!("{}-seed{}.log", name(run.objective), run.seed));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| cotext::Error::Io {
                    path: log.clone(),
                    source,
                })?;
            let err = file.try_clone().map_err(|source| cotext::Error::Io {
                path: log.clone(),
                source,
            })?;
            let mut cmd = Command::new(&exe);
            cmd.arg("train").arg("--quiet").arg("--out").arg(&run.dir);
            if run.resume {
                cmd.arg("--resume");
            } else {
                cmd.arg("--config").arg(&plan.config_path);
            }
            for o in &plan.overrides {
                cmd.arg("--set").arg(o);
            }
            cmd.arg("--set")
                .arg(format!("train.objective=\"{}\"", name(run.objective)));
            cmd.arg("--set").arg(format!("train.seed={}", run.seed));
            for s in &run.sets {
                cmd.arg("--set").arg(s);
            }
            cmd.env("RAYON_NUM_THREADS", &threads)
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(err);
            let child = cmd
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
            eprintln!(
                "{}: {} {} (log: {})",
                run.label,
                if run.resume { "resuming" } else { "training" },
                run.dir.display(),
                log.display()
            );
            running.push((run, log, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let exited = running[i]
                .2
                .try_wait()
                .map_err(|e| anyhow::anyhow!("waiting for a run: {e}"))?;
            match exited {
                None => i += 1,
                Some(code) => {
                    let (run, log, _) = running.swap_remove(i);
                    if code.success() {
                        eprintln!("{}: finished {}", run.label, run.dir.display());
                    } else if code.code() == Some(130) || stop.load(Ordering::SeqCst) {
                        interrupted = true;
                        eprintln!(
                            "{}: stopped; checkpoint in {}",
                            run.label,
                            run.dir.display()
                        );
                    } else {
                        eprintln!("{}: failed ({code}); see {}", run.label, log.display());
                        failures.push(format!("{} ({})", run.label, log.display()));
                    }
                }
            }
        }
    }
    if interrupted || stop.load(Ordering::SeqCst) {
        eprintln!("stopped; the checkpoints are saved. Run the same command again to continue.");
        std::process::exit(130);
    }
    if !failures.is_empty() {
        anyhow::bail!("{} run(s) failed: {}", failures.len(), failures.join(", "));
    }
    Ok(())
}

/// Every run of `plan` not yet finished, in the order the report lists them.
/// Every existing run is checked before any starts: a refusal leaves all as
/// they were.
fn pending(plan: &Plan) -> anyhow::Result<Vec<Pending>> {
    let total = plan.objectives.len() * plan.seeds.len();
    let mut pending = Vec::new();
    for (index, (objective, seed)) in plan.runs().enumerate() {
        let config = plan.config(objective, seed)?;
        let dir = plan.run_dir(objective, seed);
        let label = format!("[{}/{total}] {} seed {seed}", index + 1, name(objective));
        let (finished, state) = match status(&dir, &config)? {
            Status::Missing => {
                pending.push(Pending {
                    label,
                    objective,
                    seed,
                    config,
                    dir,
                    resume: false,
                    sets: Vec::new(),
                });
                continue;
            }
            Status::Partial => (false, None),
            Status::Finished(state) => (true, Some(state)),
        };
        match check_existing(&dir, &config, state.as_ref())? {
            Existing::Reuse => eprintln!("{label}: finished, skipped: {}", dir.display()),
            Existing::Resume(differences) => {
                if finished {
                    let changed: Vec<String> =
                        differences.iter().map(ToString::to_string).collect();
                    eprintln!(
                        "{label}: finished, resumed with {}: {}",
                        changed.join(", "),
                        dir.display()
                    );
                }
                let sets = differences
                    .iter()
                    .filter_map(|d| d.after.as_ref().map(|v| format!("{}={v}", d.key)))
                    .collect();
                pending.push(Pending {
                    label,
                    objective,
                    seed,
                    config,
                    dir,
                    resume: true,
                    sets,
                });
            }
        }
    }
    Ok(pending)
}

/// Trains every run of `plan` that is not finished: as `--jobs` child processes,
/// or one after another in this process. Ctrl-C saves the checkpoints and exits
/// 130; a rerun of the same command continues.
pub(super) fn execute(plan: &Plan, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let pending = pending(plan)?;
    if plan.jobs > 1 && pending.len() > 1 {
        return run_in_processes(plan, pending, stop);
    }
    for run in pending {
        eprintln!(
            "{}: {} {}",
            run.label,
            if run.resume { "resuming" } else { "training" },
            run.dir.display()
        );
        let options = TrainOptions {
            resume: run.resume,
            progress: plan.progress,
        };
        if let Some(steps) =
            cotext::train::train(&run.config, &run.dir, &options, stop)?.interrupted()
        {
            eprintln!("stopped at step {steps}; checkpoint saved in {}. Run the same command again to continue.", run.dir.display());
            std::process::exit(130);
        }
    }
    Ok(())
}
