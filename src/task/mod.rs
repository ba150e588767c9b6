//! Tasks: what differs between text classification and translation, behind one
//! interface. [`TaskKind`] is decided once from a config (the data set's card)
//! and recorded in the run directory (`task.json`), so no command guesses it
//! again; [`Outcome`] is how any training call ends, and [`Outcome::print`] says
//! it. The per-task setup (reading the data, encoding, batching, building the
//! tokenizer, the model and the objective) is in [`classify`] and
//! [`translate`]; the shared loop in [`crate::train`] trains either, and
//! [`crate::infer`] loads either for prediction.

pub mod classify;
pub mod translate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio::atomic_write;
use crate::loss::{ComplementOptions, CrossEntropyOptions, LabelHierarchy, Normalization};
use crate::metrics::bleu::BleuScore;
use crate::metrics::ClassificationReport;
use crate::tokenize::TextTokenizer;
use crate::train::{LossConfig, Metric, Objective, ObjectiveKind, RunConfig};

/// The file in a run directory that records its task.
pub const TASK_FILE: &str = "task.json";

/// The stream of the seeded subsets (`data.train_limit`, `data.eval_limit`), the
/// same for both tasks.
const SUBSET_STREAM: u64 = 0x5EB5E7;

/// The two tasks cotext trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Labelled texts to classes (SST, IMDB, data files).
    Classification,
    /// Sentence pairs, decoded with beam search and scored with BLEU.
    Translation,
}

#[derive(Serialize, Deserialize)]
struct TaskRecord {
    task: TaskKind,
}

impl TaskKind {
    /// The task's name as `task.json` and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Translation => "translation",
        }
    }

    /// The task of `config`'s data set: a data file (`.tsv`, `.csv`, `.jsonl`)
    /// holds labelled texts; a card says its task.
    ///
    /// # Errors
    /// The data set's errors (an unknown card, a missing folder).
    pub fn of_config(config: &RunConfig) -> Result<Self> {
        if crate::data::file::is_data_file(&config.data.dataset) {
            return Ok(Self::Classification);
        }
        Ok(match translate::open_dataset(config)?.card.task {
            crate::data::card::Task::Translation => Self::Translation,
            _ => Self::Classification,
        })
    }

    /// The task a run directory was trained for: its `task.json`, or for a run
    /// written before that file existed, classification when it has
    /// `labels.json`.
    ///
    /// # Errors
    /// [`Error::Config`] when `run` holds no run (no `config.toml`);
    /// [`Error::Parse`] for a bad `task.json`.
    pub fn of_run(run: &Path) -> Result<Self> {
        let path = run.join(TASK_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<TaskRecord>(&bytes)
                .map(|r| r.task)
                .map_err(|e| Error::Parse {
                    path,
                    line: e.line(),
                    msg: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !run.join("config.toml").exists() {
                    return Err(Error::Run {
                        path: run.to_path_buf(),
                        msg: "not a cotext run (no config.toml)".into(),
                    });
                }
                Ok(if run.join("labels.json").exists() {
                    Self::Classification
                } else {
                    Self::Translation
                })
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Writes `task.json` into a fresh run directory (atomically).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn record(self, run: &Path) -> Result<()> {
        let json = serde_json::to_vec(&TaskRecord { task: self }).expect("task record serializes");
        atomic_write(&run.join(TASK_FILE), &json)
    }

    /// Refuses a run of the other task, naming the command that serves it.
    ///
    /// # Errors
    /// [`Error::Config`] when `run` was trained for another task.
    pub fn expect_run(self, run: &Path) -> Result<()> {
        let found = Self::of_run(run)?;
        if found == self {
            return Ok(());
        }
        let hint = match found {
            Self::Classification => format!(
                "classify text with `cotext predict --run {}`",
                run.display()
            ),
            Self::Translation => format!(
                "translate text with `cotext translate --run {}`",
                run.display()
            ),
        };
        Err(Error::Run {
            path: run.to_path_buf(),
            msg: format!("a {} run, not a {} run: {hint}", found.name(), self.name()),
        })
    }

    /// The checks across config sections that need no data: the metric and the
    /// model kind against the task, where the tokenizer comes from, and
    /// `data.max_len` against the model's position table (a longer sequence
    /// would otherwise fail mid-epoch inside the model). Training runs it before
    /// anything is written or a tokenizer trained; [`TaskKind::preflight`]
    /// includes it.
    ///
    /// # Errors
    /// [`Error::Config`] naming the keys; a BERT `config.json`'s errors.
    pub fn check_config(self, config: &RunConfig) -> Result<()> {
        check_metric(self, config.train.metric)?;
        let translation_model = config.model.seq2seq().is_some();
        match self {
            Self::Classification if translation_model => {
                return Err(Error::Config(format!(
                    "model.kind is a translation model (lstm_attention, transformer_seq2seq), but {} is a \
                     classification data set: use bilstm, transformer or bert",
                    config.data.dataset
                )))
            }
            Self::Translation => {
                translate::seq2seq_config(config)?;
            }
            Self::Classification => {}
        }
        let is_bert = matches!(config.model, crate::models::ModelConfig::Bert(_));
        if matches!(config.tokenizer, crate::train::TokenizerSource::Model)
            && !(is_bert && self == Self::Classification)
        {
            return Err(Error::Config(match self {
                Self::Classification => "tokenizer.source = \"model\" needs model.kind = \"bert\"".into(),
                Self::Translation => "tokenizer.source = \"model\" is for pretrained classifiers; translation trains one (source = \"train\") or loads a file".into(),
            }));
        }
        let bert_dir = match &config.model {
            crate::models::ModelConfig::Bert(b) => {
                Some(crate::data::pretrained::resolve_model_dir(&b.path)?)
            }
            _ => None,
        };
        if let Some(limit) = config.model.max_positions(bert_dir.as_deref())? {
            if config.data.max_len > limit {
                let key = if is_bert {
                    "max_position_embeddings in the checkpoint's config.json"
                } else {
                    "model.max_len"
                };
                return Err(Error::Config(format!(
                    "data.max_len ({}) is longer than the model's positions ({key} = {limit}): \
                     lower data.max_len or raise the model's",
                    config.data.max_len
                )));
            }
        }
        Ok(())
    }

    /// The checks that need the data set but no training: [`TaskKind::check_config`]
    /// and the objective (HCOT's hierarchy against the classes). `compare` runs
    /// it for every objective before it trains anything.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key; the data set's errors.
    pub fn preflight(self, config: &RunConfig) -> Result<()> {
        self.check_config(config)?;
        match self {
            Self::Classification => {
                let dataset = classify::open_dataset(config, None)?;
                let classes = dataset.label_names(&classify::load_options(config)).len();
                objective(config, Some(classes)).map(|_| ())
            }
            Self::Translation => objective(config, None).map(|_| ()),
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Refuses a metric the task cannot compute.
///
/// # Errors
/// [`Error::Config`] naming `train.metric`.
pub fn check_metric(task: TaskKind, metric: Metric) -> Result<()> {
    match (task, metric) {
        (TaskKind::Classification, Metric::Bleu) => {
            Err(Error::Config("train.metric = \"bleu\" is for translation; classification uses \"accuracy\" or \"macro_f1\"".into()))
        }
        (TaskKind::Translation, Metric::MacroF1) => {
            Err(Error::Config("train.metric = \"macro_f1\" is for classification; translation uses \"bleu\" or \"accuracy\"".into()))
        }
        _ => Ok(()),
    }
}

/// The test split's score with the best weights.
#[derive(Debug, Clone, PartialEq)]
pub enum TestScore {
    /// Accuracy, macro-F1, per-class scores.
    Classification(ClassificationReport),
    /// Corpus BLEU of the beam-decoded test split, with its sacreBLEU signature.
    Translation {
        /// The score.
        score: BleuScore,
        /// sacreBLEU's signature of the score.
        signature: String,
        /// The beam it was decoded with.
        beam: usize,
    },
}

/// How a training call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps done, or stopped early by patience.
    Finished {
        /// Updates made.
        steps: u64,
        /// Best dev metric and its step, if there was a dev split.
        best: Option<(f64, u64)>,
        /// The test split's score with the best weights, if there was a test split.
        test: Option<TestScore>,
    },
    /// Ctrl-C: the checkpoint was saved at this step.
    Interrupted {
        /// Updates made.
        steps: u64,
    },
}

impl Outcome {
    /// The steps made, and whether the run stopped before its end.
    pub fn interrupted(&self) -> Option<u64> {
        match self {
            Self::Interrupted { steps } => Some(*steps),
            Self::Finished { .. } => None,
        }
    }

    /// Prints a finished run's summary on stdout (`cotext train`): the run, the
    /// steps and wall time, the best dev metric and the test score. An
    /// interrupted run prints nothing here (the caller says how to resume).
    pub fn print(&self, config: &RunConfig, run: &Path, seconds: f64) {
        let Self::Finished { steps, best, test } = self else {
            return;
        };
        println!("run: {}", run.display());
        println!("steps: {steps}  wall time: {seconds:.1} s");
        if let Some((value, step)) = best {
            println!(
                "best dev {}: {value:.4} (step {step})",
                config.train.metric.name()
            );
        }
        match test {
            Some(TestScore::Classification(r)) => {
                println!(
                    "{} accuracy: {:.4}  macro-F1: {:.4}  (n = {})",
                    config.data.test_split, r.accuracy, r.macro_f1, r.count
                );
            }
            Some(TestScore::Translation {
                score,
                signature,
                beam,
            }) => {
                println!(
                    "{} (beam {beam}): BLEU = {:.2} {}",
                    config.data.test_split,
                    score.score,
                    score.verbose()
                );
                println!("signature: {signature}");
                println!("translations: {}", run.join("test.hyp.txt").display());
            }
            None => {}
        }
    }
}

/// A seeded subset of `limit` items (all of them when `limit` is `None` or not
/// below their count), the same draw for a seed in both tasks.
pub fn subset<T>(mut items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    match limit {
        Some(n) if n < items.len() => {
            let mut rng = crate::rng::SplitMix64::stream(seed, SUBSET_STREAM);
            rng.shuffle(&mut items);
            items.truncate(n);
            items
        }
        _ => items,
    }
}

/// The objective of `config`, with HCOT's hierarchy resolved for `classes`
/// classes (`None`: translation, which has no class groups).
///
/// # Errors
/// [`Error::Config`] naming `train.hierarchy` or the objective.
pub fn objective(config: &RunConfig, classes: Option<usize>) -> Result<Objective> {
    let t = &config.train;
    Ok(match t.objective {
        ObjectiveKind::Ce => Objective::CrossEntropy,
        ObjectiveKind::Cot => Objective::Cot,
        ObjectiveKind::Gce => Objective::Gce { alpha: t.gce_alpha },
        ObjectiveKind::CotJoint => Objective::CotJoint {
            weight: t.complement_weight,
        },
        ObjectiveKind::Hcot => {
            let Some(classes) = classes else {
                return Err(Error::Config("objective hcot needs class groups; translation supports ce, cot, gce and cot-joint".into()));
            };
            let h = match (&t.hierarchy, classes) {
                (Some(groups), _) => LabelHierarchy::from_groups(groups).map_err(|e| Error::Config(format!("train.hierarchy: {e}")))?,
                (None, 5) => LabelHierarchy::sst5(),
                (None, k) => {
                    return Err(Error::Config(format!(
                        "train.hierarchy is required for hcot with {k} classes (e.g. [[0, 1], [2], [3, 4]])"
                    )))
                }
            };
            if h.classes() != classes {
                return Err(Error::Config(format!(
                    "train.hierarchy covers {} classes but the data has {classes}",
                    h.classes()
                )));
            }
            Objective::Hcot(h)
        }
    })
}

/// The loss settings of `config`; `ignore_index` is the target id the losses
/// skip (translation's pad id; none for classification).
pub fn loss_config(config: &RunConfig, ignore_index: Option<u32>) -> LossConfig {
    let t = &config.train;
    let normalization = t.complement_normalization.unwrap_or(match t.objective {
        ObjectiveKind::Gce => Normalization::LogClasses,
        _ => Normalization::Classes,
    });
    LossConfig {
        cross_entropy: CrossEntropyOptions {
            ignore_index,
            label_smoothing: t.label_smoothing,
        },
        complement: ComplementOptions {
            form: t.complement_form,
            normalization,
            ignore_index,
        },
        clip_norm: t.clip_norm,
        chunked: t.chunked_loss,
    }
}

/// Loads the `tokenizer.json` a config names (`tokenizer.source = "file"`) for a
/// fresh run. A file without a pad token gets one (see
/// [`TextTokenizer::new`]), and the user is told: the run's saved
/// `tokenizer.json`, and so its vocabulary, then has one more entry than the file.
///
/// # Errors
/// The tokenizer's errors, naming the file.
pub fn tokenizer_file(path: &Path) -> Result<TextTokenizer> {
    let tokenizer = TextTokenizer::from_file(path)?;
    if tokenizer.pad_added() {
        eprintln!(
            "note: {} has no padding token; added {:?} as id {} (saved in the run's tokenizer.json)",
            path.display(),
            tokenizer.special().pad,
            tokenizer.pad_id()
        );
    }
    Ok(tokenizer)
}

/// The default run directory for a config file: `runs/<stem>-<objective>-seed<N>`.
pub fn default_run_dir(config_path: &Path, objective: ObjectiveKind, seed: u64) -> PathBuf {
    let stem = config_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(format!("{stem}-{objective}-seed{seed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_task_is_read_back_and_wins_over_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        std::fs::write(run.join("config.toml"), "").unwrap();
        std::fs::write(run.join("labels.json"), "[]").unwrap();
        TaskKind::Translation.record(run).unwrap();
        assert_eq!(
            std::fs::read_to_string(run.join(TASK_FILE)).unwrap(),
            r#"{"task":"translation"}"#
        );
        assert_eq!(TaskKind::of_run(run).unwrap(), TaskKind::Translation);
        TaskKind::Classification.record(run).unwrap();
        assert_eq!(TaskKind::of_run(run).unwrap(), TaskKind::Classification);
    }

    #[test]
    fn a_run_from_before_task_json_is_told_by_its_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        assert!(
            matches!(TaskKind::of_run(run), Err(Error::Run { msg, .. }) if msg.contains("not a cotext run"))
        );
        std::fs::write(run.join("config.toml"), "").unwrap();
        assert_eq!(TaskKind::of_run(run).unwrap(), TaskKind::Translation);
        std::fs::write(run.join("labels.json"), "[]").unwrap();
        assert_eq!(TaskKind::of_run(run).unwrap(), TaskKind::Classification);
    }

    #[test]
    fn a_bad_task_json_is_a_parse_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(TASK_FILE), r#"{"task":"tagging"}"#).unwrap();
        match TaskKind::of_run(tmp.path()) {
            Err(Error::Parse { path, .. }) => assert!(path.ends_with(TASK_FILE)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_of_the_other_task_is_refused_with_the_command_that_serves_it() {
        let tmp = tempfile::tempdir().unwrap();
        TaskKind::Translation.record(tmp.path()).unwrap();
        TaskKind::Translation.expect_run(tmp.path()).unwrap();
        let e = TaskKind::Classification
            .expect_run(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": a translation run, not a classification run")
                && e.contains("cotext translate --run"),
            "{e}"
        );
    }

    #[test]
    fn metrics_are_checked_against_the_task() {
        assert!(check_metric(TaskKind::Classification, Metric::Bleu).is_err());
        assert!(check_metric(TaskKind::Translation, Metric::MacroF1).is_err());
        for (task, metric) in [
            (TaskKind::Classification, Metric::Accuracy),
            (TaskKind::Classification, Metric::MacroF1),
            (TaskKind::Translation, Metric::Bleu),
            (TaskKind::Translation, Metric::Accuracy),
        ] {
            check_metric(task, metric).unwrap();
        }
    }

    #[test]
    fn subsets_are_seeded_and_leave_short_lists_alone() {
        let items: Vec<u32> = (0..100).collect();
        let a = subset(items.clone(), Some(10), 7);
        assert_eq!(a.len(), 10);
        assert_eq!(a, subset(items.clone(), Some(10), 7));
        assert_ne!(a, subset(items.clone(), Some(10), 8));
        assert_eq!(subset(items.clone(), Some(100), 7), items);
        assert_eq!(subset(items.clone(), None, 7), items);
    }
}
