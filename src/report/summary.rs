//! Reading a run's `metrics.jsonl` and aggregating runs over seeds: mean and
//! sample standard deviation, mean curves, and the [`Summary`] that `compare`
//! saves as `summary.json` and renders as `report.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runlog::LogLine;

use crate::error::{Error, Result};

/// Mean, sample standard deviation and count of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (denominator n − 1, as `numpy.std(ddof=1)`), or
    /// `None` for a single value: one seed says nothing about the spread, and a
    /// 0 would read as "no variance" (a NaN would not survive JSON).
    pub std: Option<f64>,
    /// Number of values.
    pub n: usize,
}

impl MeanStd {
    /// The mean and sample std of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<MeanStd> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(MeanStd { mean, std, n })
    }

    /// `mean − std` and `mean + std` (both the mean when the std is undefined).
    pub fn band(&self) -> (f64, f64) {
        let s = self.std.unwrap_or(0.0);
        (self.mean - s, self.mean + s)
    }
}

/// One training log line of `metrics.jsonl` (a line without `"split"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    /// Updates made.
    pub step: u64,
    /// Mean training loss since the previous line.
    pub loss: f64,
    /// Training accuracy since the previous line.
    pub train_accuracy: f64,
}

/// One evaluation line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Updates made when it was evaluated.
    pub step: u64,
    /// Accuracy (translation: teacher-forced token accuracy).
    pub accuracy: f64,
    /// Macro-F1 (classification).
    pub macro_f1: Option<f64>,
    /// Corpus BLEU (translation runs whose metric is BLEU, and their test line).
    pub bleu: Option<f64>,
    /// Mean cross-entropy, when it was finite.
    pub loss: Option<f64>,
    /// Whether it was the best dev evaluation so far (dev lines only).
    pub best: bool,
}

/// What a run's `metrics.jsonl` says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Training lines, by step.
    pub train: Vec<TrainPoint>,
    /// Dev evaluations (lines with `"split":"dev"`), by step.
    pub dev: Vec<EvalPoint>,
    /// The test evaluation with the best weights (the last line with any other
    /// `"split"`: the run's `data.test_split`).
    pub test: Option<EvalPoint>,
}

/// Keeps `points` sorted by step when a resumed run logs steps again: a run killed
/// between checkpoints replays the steps after the last one, and the replay is
/// what the saved weights went through.
fn push_replacing<T>(points: &mut Vec<T>, point: T, step: impl Fn(&T) -> u64) {
    let s = step(&point);
    let keep = points
        .iter()
        .position(|p| step(p) >= s)
        .unwrap_or(points.len());
    points.truncate(keep);
    points.push(point);
}

impl RunMetrics {
    /// Reads `metrics.jsonl`. A last line that is cut short (no newline, not valid
    /// JSON: the process died while appending) is ignored; any other bad line is an
    /// error naming the file and line.
    pub fn read(path: &Path) -> Result<RunMetrics> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// As [`RunMetrics::read`], from the file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<RunMetrics> {
        let mut m = RunMetrics::default();
        let lines: Vec<&str> = text.split('\n').collect();
        for (i, raw) in lines.iter().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let last = i + 1 == lines.len();
            let line = match LogLine::parse(raw) {
                Ok(line) => line,
                Err(_) if last => break,
                Err(e) => {
                    return Err(Error::Parse {
                        path: origin.to_path_buf(),
                        line: i + 1,
                        msg: e.to_string(),
                    })
                }
            };
            match line {
                LogLine::Train(t) => {
                    let point = TrainPoint {
                        step: t.step,
                        loss: t.loss.unwrap_or(f64::NAN),
                        train_accuracy: t.train_accuracy,
                    };
                    push_replacing(&mut m.train, point, |p| p.step);
                }
                LogLine::Eval(e) => {
                    let point = EvalPoint {
                        step: e.step,
                        accuracy: e.accuracy,
                        macro_f1: e.macro_f1,
                        bleu: e.bleu,
                        loss: e.loss,
                        best: e.best.unwrap_or(false),
                    };
                    if e.split == "dev" {
                        push_replacing(&mut m.dev, point, |p| p.step);
                    } else {
                        m.test = Some(point);
                    }
                }
            }
        }
        Ok(m)
    }

    /// The best dev evaluation: the last one marked `"best": true`, which is the
    /// one whose weights `best.safetensors` holds and the test line used.
    pub fn best_dev(&self) -> Option<&EvalPoint> {
        self.dev.iter().rev().find(|p| p.best)
    }
}

/// The mean and std across runs at every step that any run logged (`n` says how
/// many had it: runs stopped early end sooner).
pub fn mean_curve(runs: &[Vec<(u64, f64)>]) -> Vec<(u64, MeanStd)> {
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for &(step, v) in run {
            if v.is_finite() {
                at.entry(step).or_default().push(v);
            }
        }
    }
    at.into_iter()
        .filter_map(|(step, vs)| MeanStd::of(&vs).map(|m| (step, m)))
        .collect()
}

/// The scores of one run on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The step evaluated.
    pub step: u64,
    /// Accuracy (translation: teacher-forced token accuracy).
    pub accuracy: f64,
    /// Macro-F1 (classification).
    pub macro_f1: Option<f64>,
    /// Corpus BLEU (translation).
    pub bleu: Option<f64>,
}

impl From<&EvalPoint> for Scores {
    fn from(p: &EvalPoint) -> Self {
        Scores {
            step: p.step,
            accuracy: p.accuracy,
            macro_f1: p.macro_f1,
            bleu: p.bleu,
        }
    }
}

/// One run of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Objective name (`ce`, `cot`, …).
    pub objective: String,
    /// Seed.
    pub seed: u64,
    /// Run directory.
    pub dir: PathBuf,
    /// Last training step logged.
    pub steps: u64,
    /// Best dev evaluation.
    pub dev: Option<Scores>,
    /// Test evaluation with the best weights.
    pub test: Option<Scores>,
}

/// Mean ± std of one objective's runs on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Accuracy across seeds.
    pub accuracy: MeanStd,
    /// Macro-F1 across the seeds that have it (classification).
    pub macro_f1: Option<MeanStd>,
    /// BLEU across the seeds that have it (translation).
    pub bleu: Option<MeanStd>,
}

impl SplitStats {
    /// Aggregates the runs' scores; `None` when no run has any.
    pub fn of<'a>(scores: impl IntoIterator<Item = &'a Scores>) -> Option<SplitStats> {
        let scores: Vec<&Scores> = scores.into_iter().collect();
        let acc: Vec<f64> = scores.iter().map(|s| s.accuracy).collect();
        let f1: Vec<f64> = scores.iter().filter_map(|s| s.macro_f1).collect();
        let bleu: Vec<f64> = scores.iter().filter_map(|s| s.bleu).collect();
        Some(SplitStats {
            accuracy: MeanStd::of(&acc)?,
            macro_f1: MeanStd::of(&f1),
            bleu: MeanStd::of(&bleu),
        })
    }
}

/// One objective across seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveSummary {
    /// Objective name.
    pub objective: String,
    /// Best dev scores across seeds.
    pub dev: Option<SplitStats>,
    /// Test scores across seeds.
    pub test: Option<SplitStats>,
    /// Mean sorted wrong-class probabilities on the test split (rank 1 first),
    /// over examples and seeds; empty when there was no test split.
    #[serde(default)]
    pub complement: Vec<f64>,
    /// Test confusion matrix (`[gold][predicted]`), summed over seeds.
    #[serde(default)]
    pub confusion: Vec<Vec<usize>>,
}

/// Where the comparison ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs available (as `nproc`).
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo, when readable.
    pub cpu_model: Option<String>,
    /// The runs' `train.device`.
    pub device: String,
}

impl Machine {
    /// This machine, training on `device`.
    pub fn detect(device: &str) -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            });
        Machine {
            cpus,
            cpu_model,
            device: device.to_string(),
        }
    }
}

/// Everything `cotext compare` reports: `summary.json` is this, `report.md` is
/// [`Summary::to_markdown`] of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Wall time of this `compare` call in seconds (runs skipped as finished
    /// cost nothing here).
    pub wall_s: f64,
    /// The dev metric that chose each run's best checkpoint.
    pub metric: String,
    /// Class names, by index.
    pub labels: Vec<String>,
    /// Per objective, in the order asked for.
    pub objectives: Vec<ObjectiveSummary>,
    /// Every run.
    pub runs: Vec<RunSummary>,
    /// Each objective against the baseline (`ce` when compared, else the first
    /// objective), per split and metric: see [`Difference`].
    #[serde(default)]
    pub differences: Vec<Difference>,
}

/// One objective against the baseline on one split and metric: the difference
/// of the means across seeds, its 95% interval and Welch's p-value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// The objective.
    pub objective: String,
    /// The baseline it is compared with.
    pub baseline: String,
    /// `"dev (best)"` or `"test"`.
    pub split: String,
    /// `"accuracy"`, `"macro_f1"` or `"bleu"`.
    pub metric: String,
    /// The objective's mean ± std.
    pub value: MeanStd,
    /// The baseline's mean ± std.
    pub base: MeanStd,
    /// Welch's t-test of `value − base`; `None` when either side has one seed.
    pub welch: Option<super::stats::Welch>,
}

/// Every objective against the baseline (`ce` when present, else the first), for
/// each split and metric both have.
pub fn differences(objectives: &[ObjectiveSummary]) -> Vec<Difference> {
    let Some(base) = objectives
        .iter()
        .find(|o| o.objective == "ce")
        .or(objectives.first())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for o in objectives.iter().filter(|o| o.objective != base.objective) {
        for (split, mine, theirs) in [
            ("dev (best)", &o.dev, &base.dev),
            ("test", &o.test, &base.test),
        ] {
            let (Some(mine), Some(theirs)) = (mine, theirs) else {
                continue;
            };
            for (metric, a, b) in [
                ("accuracy", Some(mine.accuracy), Some(theirs.accuracy)),
                ("macro_f1", mine.macro_f1, theirs.macro_f1),
                ("bleu", mine.bleu, theirs.bleu),
            ] {
                let (Some(a), Some(b)) = (a, b) else { continue };
                out.push(Difference {
                    objective: o.objective.clone(),
                    baseline: base.objective.clone(),
                    split: split.into(),
                    metric: metric.into(),
                    value: a,
                    base: b,
                    welch: super::stats::Welch::test(&a, &b),
                });
            }
        }
    }
    out
}

/// One objective's runs as read from disk, with its test-split predictions
/// already reduced to a complement profile and a confusion matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveRuns {
    /// Objective name.
    pub objective: String,
    /// `(seed, run directory, metrics)` per run.
    pub runs: Vec<(u64, PathBuf, RunMetrics)>,
    /// See [`ObjectiveSummary::complement`].
    pub complement: Vec<f64>,
    /// See [`ObjectiveSummary::confusion`].
    pub confusion: Vec<Vec<usize>>,
}

impl ObjectiveRuns {
    /// The per-run rows and the aggregate over seeds.
    pub fn summarize(&self) -> (ObjectiveSummary, Vec<RunSummary>) {
        let runs: Vec<RunSummary> = self
            .runs
            .iter()
            .map(|(seed, dir, m)| RunSummary {
                objective: self.objective.clone(),
                seed: *seed,
                dir: dir.clone(),
                steps: m.train.last().map(|p| p.step).unwrap_or(0),
                dev: m.best_dev().map(Scores::from),
                test: m.test.as_ref().map(Scores::from),
            })
            .collect();
        let summary = ObjectiveSummary {
            objective: self.objective.clone(),
            dev: SplitStats::of(runs.iter().filter_map(|r| r.dev.as_ref())),
            test: SplitStats::of(runs.iter().filter_map(|r| r.test.as_ref())),
            complement: self.complement.clone(),
            confusion: self.confusion.clone(),
        };
        (summary, runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        // numpy: np.mean([1, 2, 4]) = 2.3333…, np.std([1, 2, 4], ddof=1) = 1.5275252316519468
        let m = MeanStd::of(&[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(m.n, 3);
        assert!((m.mean - 7.0 / 3.0).abs() < 1e-15);
        assert!((m.std.unwrap() - 1.527_525_231_651_946_8).abs() < 1e-15);
        let one = MeanStd::of(&[0.25]).unwrap();
        assert_eq!((one.mean, one.std, one.n), (0.25, None, 1));
        assert_eq!(one.band(), (0.25, 0.25));
        assert!(MeanStd::of(&[]).is_none());
    }

    const LOG: &str = r#"{"step":2,"epoch":0,"lr":0.001,"loss":1.6,"train_accuracy":0.25,"tokens_per_s":10.0,"elapsed_s":0.1}
{"step":3,"epoch":0,"split":"dev","loss":1.5,"accuracy":0.3,"macro_f1":0.2,"best":true}
{"step":4,"epoch":0,"lr":0.001,"loss":1.4,"train_accuracy":0.5,"complement":0.9,"tokens_per_s":10.0,"elapsed_s":0.2}
{"step":6,"epoch":1,"split":"dev","loss":1.4,"accuracy":0.25,"macro_f1":0.3,"best":false}
{"step":6,"split":"test","loss":1.45,"accuracy":0.28,"macro_f1":0.21}
"#;

    #[test]
    fn reads_train_dev_and_test_lines() {
        let m = RunMetrics::parse(LOG, Path::new("m.jsonl")).unwrap();
        assert_eq!(
            m.train.iter().map(|p| (p.step, p.loss)).collect::<Vec<_>>(),
            [(2, 1.6), (4, 1.4)]
        );
        assert_eq!(m.dev.len(), 2);
        assert_eq!(m.best_dev().unwrap().step, 3);
        let test = m.test.unwrap();
        assert_eq!(
            (test.accuracy, test.macro_f1, test.bleu),
            (0.28, Some(0.21), None)
        );
    }

    #[test]
    fn a_truncated_last_line_is_ignored_but_a_bad_middle_line_is_not() {
        let cut = format!("{LOG}{{\"step\":8,\"epoch\":1,\"lr\":0.0");
        let m = RunMetrics::parse(&cut, Path::new("m.jsonl")).unwrap();
        assert_eq!(m, RunMetrics::parse(LOG, Path::new("m.jsonl")).unwrap());
        let bad = LOG.replacen("\"best\":true}", "\"best\":tr", 1);
        let err = RunMetrics::parse(&bad, Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.jsonl:2:"), "{err}");
    }

    #[test]
    fn replayed_steps_replace_the_earlier_lines() {
        let replay = format!(
            "{LOG}{}\n",
            r#"{"step":4,"epoch":0,"lr":0.001,"loss":1.3,"train_accuracy":0.5}"#
        );
        let m = RunMetrics::parse(&replay, Path::new("m.jsonl")).unwrap();
        assert_eq!(
            m.train.iter().map(|p| (p.step, p.loss)).collect::<Vec<_>>(),
            [(2, 1.6), (4, 1.3)]
        );
    }

    #[test]
    fn translation_lines_carry_bleu_and_no_macro_f1() {
        let log = r#"{"step":2,"epoch":0,"lr":0.001,"loss":6.1,"train_accuracy":0.1,"tokens_per_s":10.0,"elapsed_s":0.1}
{"step":2,"epoch":0,"split":"dev","loss":5.9,"accuracy":0.12,"bleu":1.5,"best":true}
{"step":2,"split":"test","loss":5.8,"accuracy":0.13,"bleu":1.75,"beam":5,"signature":"nrefs:1"}
"#;
        let m = RunMetrics::parse(log, Path::new("m.jsonl")).unwrap();
        assert_eq!(m.best_dev().unwrap().bleu, Some(1.5));
        let t = Scores::from(m.test.as_ref().unwrap());
        assert_eq!((t.accuracy, t.macro_f1, t.bleu), (0.13, None, Some(1.75)));
        let st = SplitStats::of([&t, &t]).unwrap();
        assert!(st.macro_f1.is_none());
        assert_eq!(st.bleu.unwrap().mean, 1.75);
    }

    #[test]
    fn mean_curve_counts_the_runs_at_each_step() {
        let c = mean_curve(&[vec![(1, 1.0), (2, 3.0)], vec![(1, 3.0)]]);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].0, c[0].1.mean, c[0].1.n), (1, 2.0, 2));
        assert_eq!((c[1].0, c[1].1.mean, c[1].1.std), (2, 3.0, None));
    }
}
