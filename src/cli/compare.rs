//! `cotext compare` (every objective × seed as a normal run, then `report.md`,
//! `summary.json` and plots) and `cotext plot` (one run's curves).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use cotext::report::{self, ComplementProfile, Heatmap, Machine, ObjectiveRuns, RunMetrics, Summary};
use cotext::train::checkpoint::Checkpoint;
use cotext::train::classify::{self, Outcome, TrainOptions};
use cotext::train::runner::{self, ConfigDifference, RunState};
use cotext::train::translate;
use cotext::train::{Metric, ObjectiveKind, Precision, RunConfig};

/// Arguments of `cotext compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The TOML config every run starts from (its objective and seed are overridden).
    #[arg(long, short)]
    config: PathBuf,
    /// Objectives to compare, comma-separated: ce, cot, gce, hcot, cot-joint.
    #[arg(long, default_value = "ce,cot", value_name = "LIST")]
    objectives: String,
    /// Seeds per objective.
    #[arg(long, default_value_t = 3, value_name = "N")]
    seeds: u64,
    /// The first seed: the runs use seeds S, S+1, …, S+N−1.
    #[arg(long, default_value_t = 1, value_name = "S")]
    first_seed: u64,
    /// Output folder: one run directory per objective and seed, and the report.
    /// Default: runs/compare-<config name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a config key for every run, e.g. `--set train.max_steps=500` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Folder with local copies of the data sets (overrides data.data_dir; as COTEXT_DATA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Runs trained at the same time, each as its own `cotext train` process with
    /// its output in `<out>/<objective>-seed<N>.log`. Each gets RAYON_NUM_THREADS =
    /// cores / jobs (at least 1) unless RAYON_NUM_THREADS is set already.
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Device for every run: cpu, cuda, cuda:N or metal (overrides train.device).
    #[arg(long)]
    device: Option<String>,
    /// Compute precision for every run: f32, bf16 or f16 (overrides train.precision).
    #[arg(long)]
    precision: Option<Precision>,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
    /// Robustness columns and robustness.png: METHOD:LIST, e.g. fgsm:0.01,0.05,0.1,
    /// pgd:0.1 or hotflip:1,2 (repeatable; classification only).
    #[arg(long = "attack", value_name = "SPEC")]
    attack: Vec<String>,
}

/// Arguments of `cotext plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run directory written by `cotext train` (or one of `compare`'s).
    #[arg(long)]
    run: PathBuf,
    /// The PNG to write. Default: <run>/curves.png.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `compare`'s arguments, checked: nothing below re-validates.
struct Plan {
    config_path: PathBuf,
    overrides: Vec<String>,
    objectives: Vec<ObjectiveKind>,
    seeds: Vec<u64>,
    out: PathBuf,
    jobs: usize,
    progress: bool,
    attack: Vec<super::compare_attack::Spec>,
}

fn name(objective: ObjectiveKind) -> String {
    objective.name().to_string()
}

fn user_error(msg: String) -> anyhow::Error {
    cotext::Error::Config(msg).into()
}

impl Plan {
    fn from_args(args: CompareArgs) -> anyhow::Result<Plan> {
        let mut objectives = Vec::new();
        for raw in args.objectives.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let o: ObjectiveKind = raw.parse().map_err(|e| user_error(format!("--objectives: {e}")))?;
            if objectives.contains(&o) {
                return Err(user_error(format!("--objectives: {raw} is listed twice")));
            }
            objectives.push(o);
        }
        if objectives.is_empty() {
            return Err(user_error("--objectives: give at least one of ce, cot, gce, hcot, cot-joint".into()));
        }
        if args.jobs == 0 {
            return Err(user_error("--jobs must be at least 1".into()));
        }
        if args.seeds == 0 {
            return Err(user_error("--seeds must be at least 1".into()));
        }
        let last = args
            .first_seed
            .checked_add(args.seeds - 1)
            .ok_or_else(|| user_error(format!("--first-seed {} + --seeds {} overflows", args.first_seed, args.seeds)))?;
        let mut overrides = args.set;
        if let Some(d) = &args.device {
            overrides.push(format!("train.device={d:?}"));
        }
        if let Some(p) = args.precision {
            overrides.push(format!("train.precision={:?}", p.name()));
        }
        if let Some(d) = &args.data_dir {
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            overrides.push(format!("data.data_dir={:?}", abs.display().to_string()));
        }
        let out = args.out.unwrap_or_else(|| {
            let stem = args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "config".into());
            PathBuf::from("runs").join(format!("compare-{stem}"))
        });
        let attack = super::compare_attack::parse_specs(&args.attack)?;
        let plan = Plan { config_path: args.config, overrides, objectives, seeds: (args.first_seed..=last).collect(), out, jobs: args.jobs, progress: !args.quiet, attack };
        // A bad config or --set fails here, before any run starts.
        for &o in &plan.objectives {
            plan.config(o, plan.seeds[0])?;
        }
        Ok(plan)
    }

    fn config(&self, objective: ObjectiveKind, seed: u64) -> cotext::Result<RunConfig> {
        let mut overrides = self.overrides.clone();
        overrides.push(format!("train.objective=\"{}\"", name(objective)));
        overrides.push(format!("train.seed={seed}"));
        RunConfig::load(&self.config_path, &overrides)
    }

    fn run_dir(&self, objective: ObjectiveKind, seed: u64) -> PathBuf {
        self.out.join(format!("{}-seed{seed}", name(objective)))
    }
}

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
    Ok(if has_test || config.data.test_split.is_empty() { Status::Finished(checkpoint.state) } else { Status::Partial })
}

/// Keys that say where and how a finished run is looked at, not what it trained
/// or scored: a finished run that differs from this call only in these is reused
/// as it is (moving the data, or reporting on another machine, retrains nothing).
const VIEW_KEYS: &[&str] = &["train.device", "data.data_dir", "train.eval_batch_size", "train.log_every"];

/// What to do with a run directory that already holds a run.
enum Existing {
    /// Reuse it as it is (finished, and trained as this call would).
    Reuse,
    /// Resume it with this call's config, which differs from the saved one only in
    /// keys a resume may change (`cotext train --resume --set KEY=VALUE` for each).
    Resume(Vec<ConfigDifference>),
}

fn user_error_at(dir: &Path, msg: String) -> anyhow::Error {
    user_error(format!("{}: {msg}. Choose a new --out for this config, or delete {} to train that run again", dir.display(), dir.display()))
}

/// Compares the config saved in `dir` (a run already started there) with the one
/// this call resolves for it (same base config, overrides, objective and seed).
/// A difference outside the keys a resume may change is refused: the report
/// would mix two configs. Within them, a run is resumed with this call's values,
/// as `cotext train --resume --set` would: a larger epochs or max_steps extends a
/// finished run (one stopped early stays stopped) and its test split is scored
/// again (a new decode.beam, say). A smaller budget than a finished run already
/// trained is refused, as it cannot be undone.
fn check_existing(dir: &Path, wanted: &RunConfig, finished: Option<&RunState>) -> anyhow::Result<Existing> {
    let saved = RunConfig::load(&dir.join("config.toml"), &[])?;
    let differences = runner::config_differences(&saved, wanted);
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
    let fixed: Vec<&ConfigDifference> = differences.iter().filter(|d| !runner::is_resumable_key(&d.key)).collect();
    if !fixed.is_empty() {
        let listed: Vec<String> = fixed.iter().take(3).map(|d| format!("{} is {} there but {} here", d.key, show(&d.before), show(&d.after))).collect();
        let more = if fixed.len() > 3 { format!(" (and {} more keys)", fixed.len() - 3) } else { String::new() };
        return Err(user_error_at(dir, format!("holds a run trained with another config: {}{more}; its results would be mixed into this report", listed.join("; "))));
    }
    let is_view = |d: &&ConfigDifference| VIEW_KEYS.contains(&d.key.as_str());
    let relevant: Vec<ConfigDifference> = match finished {
        Some(_) => differences.iter().filter(|d| !is_view(d)).cloned().collect(),
        None => differences.clone(),
    };
    if let Some(d) = relevant.iter().find(|d| d.after.is_none() && !is_view(d)) {
        return Err(user_error_at(
            dir,
            format!("{} is {} in its config.toml and unset here, and a resume cannot unset a key (set it with --set {}=…)", d.key, show(&d.before), d.key),
        ));
    }
    if let Some(state) = finished {
        let smaller = match (wanted.train.max_steps, saved.train.max_steps) {
            (Some(n), _) => n < state.step,
            (None, None) => wanted.train.epochs < saved.train.epochs,
            (None, Some(_)) => false,
        };
        if smaller && !state.stopped_early {
            return Err(user_error_at(
                dir,
                format!("holds a finished run of {} steps, more than this config's training budget (train.epochs {}, train.max_steps {})", state.step, wanted.train.epochs, wanted.train.max_steps.map_or("unset".into(), |n| n.to_string())),
            ));
        }
    }
    Ok(if relevant.is_empty() && finished.is_some() { Existing::Reuse } else { Existing::Resume(relevant) })
}

fn install_ctrlc() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // First Ctrl-C: finish the step, save, exit. Second: exit at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    stop
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c)) {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(cotext::fsio::atomic_write(path, bytes)?)
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
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the cotext executable to start runs: {e}"))?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = std::env::var("RAYON_NUM_THREADS").ok().unwrap_or_else(|| (cores / plan.jobs).max(1).to_string());
    std::fs::create_dir_all(&plan.out).map_err(|source| cotext::Error::Io { path: plan.out.clone(), source })?;
    eprintln!("running {} runs, {} at a time, RAYON_NUM_THREADS={threads} each", pending.len(), plan.jobs);
    let mut queue = pending.into_iter();
    let mut running: Vec<(Pending, PathBuf, Child)> = Vec::new();
    let mut failures = Vec::new();
    let mut interrupted = false;
    loop {
        while running.len() < plan.jobs && !stop.load(Ordering::SeqCst) {
            let Some(run) = queue.next() else { break };
            let log = plan.out.join(format!("{}-seed{}.log", name(run.objective), run.seed));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| cotext::Error::Io { path: log.clone(), source })?;
            let err = file.try_clone().map_err(|source| cotext::Error::Io { path: log.clone(), source })?;
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
            cmd.arg("--set").arg(format!("train.objective=\"{}\"", name(run.objective)));
            cmd.arg("--set").arg(format!("train.seed={}", run.seed));
            for s in &run.sets {
                cmd.arg("--set").arg(s);
            }
            cmd.env("RAYON_NUM_THREADS", &threads).stdin(Stdio::null()).stdout(file).stderr(err);
            let child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
            eprintln!("{}: {} {} (log: {})", run.label, if run.resume { "resuming" } else { "training" }, run.dir.display(), log.display());
            running.push((run, log, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let exited = running[i].2.try_wait().map_err(|e| anyhow::anyhow!("waiting for a run: {e}"))?;
            match exited {
                None => i += 1,
                Some(code) => {
                    let (run, log, _) = running.swap_remove(i);
                    if code.success() {
                        eprintln!("{}: finished {}", run.label, run.dir.display());
                    } else if code.code() == Some(130) || stop.load(Ordering::SeqCst) {
                        interrupted = true;
                        eprintln!("{}: stopped; checkpoint in {}", run.label, run.dir.display());
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

/// `cotext compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let translation = translate::is_translation(&plan.config(plan.objectives[0], plan.seeds[0])?)?;
    if translation && !plan.attack.is_empty() {
        return Err(user_error("--attack is for classification configs".into()));
    }
    if !translation {
        // Every objective against the data set's classes (HCOT's hierarchy, the
        // metric) before anything trains, not after the runs listed before it.
        for &objective in &plan.objectives {
            classify::preflight(&plan.config(objective, plan.seeds[0])?)
                .map_err(|e| anyhow::Error::new(e).context(format!("objective {}", name(objective))))?;
        }
    }
    let stop = install_ctrlc();
    let started = Instant::now();
    // Every run not yet finished, in the order the table lists them. Every
    // existing run is checked before any starts: a refusal leaves all as they were.
    let total = plan.objectives.len() * plan.seeds.len();
    let mut pending = Vec::new();
    for (index, (objective, seed)) in plan.objectives.iter().flat_map(|&o| plan.seeds.iter().map(move |&s| (o, s))).enumerate() {
        let config = plan.config(objective, seed)?;
        let dir = plan.run_dir(objective, seed);
        let label = format!("[{}/{total}] {} seed {seed}", index + 1, name(objective));
        let (finished, state) = match status(&dir, &config)? {
            Status::Missing => {
                pending.push(Pending { label, objective, seed, config, dir, resume: false, sets: Vec::new() });
                continue;
            }
            Status::Partial => (false, None),
            Status::Finished(state) => (true, Some(state)),
        };
        match check_existing(&dir, &config, state.as_ref())? {
            Existing::Reuse => eprintln!("{label}: finished, skipped: {}", dir.display()),
            Existing::Resume(differences) => {
                if finished {
                    let changed: Vec<String> = differences.iter().map(ToString::to_string).collect();
                    eprintln!("{label}: finished, resumed with {}: {}", changed.join(", "), dir.display());
                }
                let sets = differences.iter().filter_map(|d| d.after.as_ref().map(|v| format!("{}={v}", d.key))).collect();
                pending.push(Pending { label, objective, seed, config, dir, resume: true, sets });
            }
        }
    }
    if plan.jobs > 1 && pending.len() > 1 {
        run_in_processes(&plan, pending, &stop)?;
    } else {
        for run in pending {
            eprintln!("{}: {} {}", run.label, if run.resume { "resuming" } else { "training" }, run.dir.display());
            let options = TrainOptions { resume: run.resume, progress: plan.progress };
            let interrupted = if translation {
                match translate::train(&run.config, &run.dir, &options, &stop)? {
                    translate::Outcome::Interrupted { steps } => Some(steps),
                    translate::Outcome::Finished { .. } => None,
                }
            } else {
                match classify::train(&run.config, &run.dir, &options, &stop)? {
                    Outcome::Interrupted { steps } => Some(steps),
                    Outcome::Finished { .. } => None,
                }
            };
            if let Some(steps) = interrupted {
                eprintln!("stopped at step {steps}; checkpoint saved in {}. Run the same command again to continue.", run.dir.display());
                std::process::exit(130);
            }
        }
    }

    let first = plan.config(plan.objectives[0], plan.seeds[0])?;
    let metric = first.train.metric;
    // One device for the whole process: the in-process runs above got this same
    // object (DeviceSpec::open hands out one per spec), and the report loads every
    // run on it (Metal and CUDA tensors cannot meet across device objects).
    let device = cotext::train::parse_device(&first.train.device).map_err(user_error)?.open()?;
    let mut groups = Vec::new();
    let mut labels = Vec::new();
    for &objective in &plan.objectives {
        let mut runs = Vec::new();
        let mut profile = ComplementProfile::new(usize::MAX);
        let mut confusion: Vec<Vec<usize>> = Vec::new();
        for &seed in &plan.seeds {
            let dir = plan.run_dir(objective, seed);
            runs.push((seed, dir.clone(), RunMetrics::read(&dir.join("metrics.jsonl"))?));
            if translation {
                if let Some(p) = report::translation_test_profile(&dir, &device)? {
                    profile.merge(&p);
                }
            } else if let Some(p) = report::classification_test_predictions(&dir, &device)? {
                profile.add_rows(&p.probs, &p.gold)?;
                let c = p.confusion()?;
                if confusion.is_empty() {
                    confusion = c;
                } else {
                    confusion.iter_mut().flatten().zip(c.iter().flatten()).for_each(|(a, b)| *a += b);
                }
                labels = p.labels;
            }
        }
        groups.push(ObjectiveRuns { objective: name(objective), runs, complement: profile.mean(), confusion });
    }

    let out = &plan.out;
    let curves: Vec<(String, Vec<RunMetrics>)> =
        groups.iter().map(|g| (g.objective.clone(), g.runs.iter().map(|r| r.2.clone()).collect())).collect();
    let title = format!("{} — {} seed{}", first.data.dataset, plan.seeds.len(), if plan.seeds.len() == 1 { "" } else { "s" });
    report::draw_curves(&out.join("curves.png"), &title, &report::comparison_panels(&curves, metric))?;
    let lines: Vec<(String, usize, Vec<f64>)> = groups.iter().enumerate().map(|(i, g)| (g.objective.clone(), i, g.complement.clone())).collect();
    let what = if translation { "wrong-token probabilities (teacher forcing)" } else { "wrong-class probabilities" };
    report::draw_complement(&out.join("complement.png"), &format!("{} test: sorted {what}", first.data.dataset), &lines)?;
    if !translation {
        let maps: Vec<Heatmap> = groups
            .iter()
            .map(|g| Heatmap { title: format!("{} (summed over {} seeds)", g.objective, g.runs.len()), counts: g.confusion.clone() })
            .collect();
        report::draw_confusion(&out.join("confusion.png"), &format!("{} test confusion", first.data.dataset), &labels, &maps)?;
    }

    let mut objectives = Vec::new();
    let mut runs = Vec::new();
    for g in &groups {
        let (o, r) = g.summarize();
        objectives.push(o);
        runs.extend(r);
    }
    let summary = Summary {
        command: command_line(),
        machine: Machine::detect(&first.train.device),
        wall_s: started.elapsed().as_secs_f64(),
        metric: metric.name().into(),
        labels,
        differences: cotext::report::differences(&objectives),
        objectives,
        runs,
    };
    let mut summary_json = serde_json::to_value(&summary)?;
    let mut markdown = summary.to_markdown();
    if !plan.attack.is_empty() {
        let runs: Vec<(String, Vec<PathBuf>)> = groups.iter().map(|g| (g.objective.clone(), g.runs.iter().map(|r| r.1.clone()).collect())).collect();
        let r = super::compare_attack::robustness(out, &first.data.dataset, &runs, &plan.attack, plan.progress, &device)?;
        summary_json["robustness"] = r.json;
        markdown.push_str(&r.markdown);
    }
    write(&out.join("summary.json"), &serde_json::to_vec_pretty(&summary_json)?)?;
    write(&out.join("report.md"), markdown.as_bytes())?;

    println!("report: {}", out.join("report.md").display());
    for o in &summary.objectives {
        for (split, stats) in [("dev (best)", &o.dev), ("test", &o.test)] {
            if let Some(st) = stats {
                let (acc, f1, bleu) = report::split_cells(st);
                if translation {
                    println!("{:<5} {split:<10}  BLEU {bleu}  token accuracy {acc}  (n = {})", o.objective, st.accuracy.n);
                } else {
                    println!("{:<5} {split:<10}  accuracy {acc}  macro-F1 {f1}  (n = {})", o.objective, st.accuracy.n);
                }
            }
        }
    }
    Ok(())
}

/// `cotext plot`.
pub fn plot(args: PlotArgs) -> anyhow::Result<()> {
    let metrics = RunMetrics::read(&args.run.join("metrics.jsonl"))?;
    let metric = RunConfig::load(&args.run.join("config.toml"), &[]).map(|c| c.train.metric).unwrap_or(Metric::Accuracy);
    let out = args.out.unwrap_or_else(|| args.run.join("curves.png"));
    let title = args.run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| args.run.display().to_string());
    report::draw_curves(&out, &title, &report::run_panels(&metrics, metric))?;
    println!("{}", out.display());
    Ok(())
}
