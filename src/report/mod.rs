//! Reports over finished runs: reading `metrics.jsonl`, mean ± std across seeds,
//! the complement-distribution profile, PNG plots and the Markdown report of
//! `cotext compare` / `cotext plot`.
//!
//! This room reads run directories and draws; it must not train or change a run
//! (it only loads a run's best weights to predict its test split). The pure parts
//! ([`summary`], [`complement`], [`plot`]) take numbers, not paths.

pub mod complement;
mod markdown;
pub mod plot;
pub mod stats;
pub mod summary;

use std::path::Path;

use candle_core::Device;

pub use complement::{sorted_complement, ComplementProfile};
pub use markdown::split_cells;
pub use plot::{draw_complement, draw_confusion, draw_curves, Band, Heatmap, Panel};
pub use stats::Welch;
pub use summary::{
    differences, mean_curve, Difference, Machine, MeanStd, ObjectiveRuns, ObjectiveSummary,
    RunMetrics, RunSummary, Scores, SplitStats, Summary,
};

use crate::error::{Error, Result};
use crate::infer;
use crate::metrics::ClassificationReport;
use crate::task;
use crate::train::Metric;

/// A classification run's predictions on its test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Class names, by index.
    pub labels: Vec<String>,
    /// Gold class per example.
    pub gold: Vec<u32>,
    /// Predicted probabilities per example (`[N][K]`).
    pub probs: Vec<Vec<f32>>,
}

impl Predictions {
    /// `confusion[gold][predicted]` counts (the predicted class is the argmax).
    pub fn confusion(&self) -> Result<Vec<Vec<usize>>> {
        let predicted: Vec<u32> = self
            .probs
            .iter()
            .map(|p| {
                p.iter()
                    .enumerate()
                    .fold(0, |b, (i, &x)| if x > p[b] { i } else { b }) as u32
            })
            .collect();
        Ok(
            ClassificationReport::new(&self.gold, &predicted, self.labels.len())
                .map_err(Error::Config)?
                .confusion,
        )
    }
}

/// Predicts a classification run's test split with its best weights: the same
/// examples the run's own test line scored (`data.test_split`, with the run's
/// `eval_limit` subset). `None` when the run has no test split. The run is loaded
/// on the caller's `device`: this room never opens one.
pub fn classification_test_predictions(run: &Path, device: &Device) -> Result<Option<Predictions>> {
    let (setup, model) = infer::classify::load_run(run, device)?;
    let config = &setup.config;
    let split = &config.data.test_split;
    let dataset = task::classify::open_dataset(config, Some(&setup.labels))?;
    if split.is_empty() || !dataset.has_split(split) {
        return Ok(None);
    }
    let examples = task::classify::load_split(&dataset, config, split, config.data.eval_limit)?;
    let data = task::classify::encode(&setup.tokenizer, config, &examples)?;
    let probs = infer::classify::predict_probs(
        &model,
        &data,
        setup.tokenizer.pad_id(),
        config.train.eval_batch_size,
        &setup.device,
    )?;
    Ok(Some(Predictions {
        gold: data.iter().map(|e| e.label).collect(),
        probs,
        labels: setup.labels,
    }))
}

/// Ranks of the wrong vocabulary entries kept in a translation run's complement
/// profile (the head of the distribution; the tail of a large vocabulary is flat
/// and tiny).
pub const TOKEN_PROFILE_RANKS: usize = 100;

/// A translation run's token-level complement profile on its test split: with
/// its best weights and teacher forcing, for every non-pad target token, the
/// probabilities of the wrong vocabulary entries sorted largest first (the first
/// [`TOKEN_PROFILE_RANKS`]). `None` when the run has no test split. The run is
/// loaded on the caller's `device`: this room never opens one.
pub fn translation_test_profile(run: &Path, device: &Device) -> Result<Option<ComplementProfile>> {
    let (config, tokenizer, model) = infer::translate::load_run(run, device)?;
    let split = &config.data.test_split;
    let dataset = task::translate::open_dataset(&config)?;
    if split.is_empty() || !dataset.has_split(split) {
        return Ok(None);
    }
    let pairs = task::translate::load_pairs(&dataset, &config, split, config.data.eval_limit)?;
    let data = task::translate::encode_pairs(&tokenizer, &config, &pairs)?;
    let mut profile = ComplementProfile::new(TOKEN_PROFILE_RANKS);
    infer::translate::for_each_token_distribution(
        &model,
        &tokenizer,
        &data,
        config.train.eval_batch_size,
        device,
        |probs, gold| profile.add(probs, gold as usize),
    )?;
    Ok(Some(profile))
}

fn dev_value(p: &summary::EvalPoint, metric: Metric) -> f64 {
    match metric {
        Metric::Accuracy => p.accuracy,
        Metric::MacroF1 => p.macro_f1.unwrap_or(f64::NAN),
        Metric::Bleu => p.bleu.unwrap_or(f64::NAN),
    }
}

fn band(label: &str, color: usize, curve: Vec<(u64, MeanStd)>) -> Band {
    Band {
        label: label.to_string(),
        color,
        points: curve
            .into_iter()
            .map(|(step, m)| {
                let (lo, hi) = m.band();
                (step as f64, m.mean, lo, hi)
            })
            .collect(),
    }
}

/// The two panels of `compare`'s `curves.png`: training loss and the dev metric
/// against the step, one band (mean ± std over seeds) per objective, coloured
/// by its position in `groups`.
pub fn comparison_panels(groups: &[(String, Vec<RunMetrics>)], metric: Metric) -> Vec<Panel> {
    let loss = groups
        .iter()
        .enumerate()
        .map(|(i, (name, runs))| {
            band(
                name,
                i,
                mean_curve(
                    &runs
                        .iter()
                        .map(|m| m.train.iter().map(|p| (p.step, p.loss)).collect())
                        .collect::<Vec<_>>(),
                ),
            )
        })
        .collect();
    let dev = groups
        .iter()
        .enumerate()
        .map(|(i, (name, runs))| {
            band(
                name,
                i,
                mean_curve(
                    &runs
                        .iter()
                        .map(|m| {
                            m.dev
                                .iter()
                                .map(|p| (p.step, dev_value(p, metric)))
                                .collect()
                        })
                        .collect::<Vec<_>>(),
                ),
            )
        })
        .collect();
    vec![
        Panel {
            title: "training loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            bands: loss,
        },
        Panel {
            title: format!("dev {}", metric.name()),
            x_label: "step".into(),
            y_label: metric.name().into(),
            bands: dev,
        },
    ]
}

/// The three panels of `cotext plot`: training loss, training accuracy and the
/// dev metric against the step, for one run.
pub fn run_panels(m: &RunMetrics, metric: Metric) -> Vec<Panel> {
    let line = |label: &str, points: Vec<(u64, f64)>| {
        band(
            label,
            0,
            points
                .into_iter()
                .filter_map(|(s, v)| MeanStd::of(&[v]).map(|m| (s, m)))
                .collect(),
        )
    };
    vec![
        Panel {
            title: "training loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            bands: vec![line("", m.train.iter().map(|p| (p.step, p.loss)).collect())],
        },
        Panel {
            title: "training accuracy".into(),
            x_label: "step".into(),
            y_label: "accuracy".into(),
            bands: vec![line(
                "",
                m.train.iter().map(|p| (p.step, p.train_accuracy)).collect(),
            )],
        },
        Panel {
            title: format!("dev {}", metric.name()),
            x_label: "step".into(),
            y_label: metric.name().into(),
            bands: vec![line(
                "",
                m.dev
                    .iter()
                    .map(|p| (p.step, dev_value(p, metric)))
                    .collect(),
            )],
        },
    ]
}

#[cfg(test)]
mod tests {
    /// The report loads runs on its caller's device and never opens one: a second
    /// device object in one process fails on Metal (and CUDA) as soon as a tensor
    /// of one meets a tensor of the other. `compare`'s robustness table, which
    /// also loads runs, is held to the same rule.
    #[test]
    fn report_code_never_opens_a_device() {
        // Spelled in pieces so that this test does not find itself.
        let needles = [
            ["Device::", "new"].concat(),
            ["cuda_if", "_available"].concat(),
            ["parse_", "device("].concat(),
            ["run_", "device("].concat(),
            [".open", "()"].concat(),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = ["src/report", "src/infer"]
            .iter()
            .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        for name in ["attack", "aggregate", "render"] {
            files.push(root.join(format!("src/cli/compare/{name}.rs")));
        }
        assert!(files.len() > 2, "{files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} calls {needle}: take the caller's &Device instead",
                    file.display()
                );
            }
        }
    }
}
