//! `compare`'s aggregation: every finished run read back per objective (its
//! `metrics.jsonl`, and with its best weights the test split's predictions:
//! the complement profile and, for classification, the confusion counts).

use cotext::report::{self, ComplementProfile, ObjectiveRuns, RunMetrics};
use cotext::task::TaskKind;

use super::name;
use super::plan::Plan;

/// The runs of a comparison, read back.
pub(super) struct Aggregate {
    /// One group per objective, its seeds in order.
    pub(super) groups: Vec<ObjectiveRuns>,
    /// The class names (classification), empty for translation.
    pub(super) labels: Vec<String>,
}

/// Reads every run of `plan` on `device` (the one device of the process: the
/// in-process runs got this same object, and Metal and CUDA tensors cannot
/// meet across device objects).
pub(super) fn aggregate(
    plan: &Plan,
    task: TaskKind,
    device: &candle_core::Device,
) -> anyhow::Result<Aggregate> {
    let mut groups = Vec::new();
    let mut labels = Vec::new();
    for &objective in &plan.objectives {
        let mut runs = Vec::new();
        let mut profile = ComplementProfile::new(usize::MAX);
        let mut confusion: Vec<Vec<usize>> = Vec::new();
        for &seed in &plan.seeds {
            let dir = plan.run_dir(objective, seed);
            runs.push((
                seed,
                dir.clone(),
                RunMetrics::read(&dir.join("metrics.jsonl"))?,
            ));
            match task {
                TaskKind::Translation => {
                    if let Some(p) = report::translation_test_profile(&dir, device)? {
                        profile.merge(&p);
                    }
                }
                TaskKind::Classification => {
                    if let Some(p) = report::classification_test_predictions(&dir, device)? {
                        profile.add_rows(&p.probs, &p.gold)?;
                        let c = p.confusion()?;
                        if confusion.is_empty() {
                            confusion = c;
                        } else {
                            confusion
                                .iter_mut()
                                .flatten()
                                .zip(c.iter().flatten())
                                .for_each(|(a, b)| *a += b);
                        }
                        labels = p.labels;
                    }
                }
            }
        }
        groups.push(ObjectiveRuns {
            objective: name(objective),
            runs,
            complement: profile.mean(),
            confusion,
        });
    }
    Ok(Aggregate { groups, labels })
}
