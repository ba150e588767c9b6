//! `compare`'s rendering: the plots, `summary.json` and `report.md` (with the
//! robustness tables of `--attack`), and the summary on stdout.

use std::path::PathBuf;
use std::time::Instant;

use cotext::report::{self, Heatmap, Machine, RunMetrics, Summary};
use cotext::task::TaskKind;
use cotext::train::RunConfig;

use super::aggregate::Aggregate;
use super::plan::Plan;
use super::write;

/// Writes `curves.png`, `complement.png`, `confusion.png` (classification),
/// `summary.json`, `report.md` and, with `--attack`, `robustness.png` into the
/// plan's folder, then prints the per-objective summary.
pub(super) fn render(
    plan: &Plan,
    task: TaskKind,
    first: &RunConfig,
    all: Aggregate,
    started: Instant,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let translation = task == TaskKind::Translation;
    let Aggregate { groups, labels } = all;
    let metric = first.train.metric;
    let out = &plan.out;
    let curves: Vec<(String, Vec<RunMetrics>)> = groups
        .iter()
        .map(|g| {
            (
                g.objective.clone(),
                g.runs.iter().map(|r| r.2.clone()).collect(),
            )
        })
        .collect();
    let title = format!(
        "{} — {} seed{}",
        first.data.dataset,
        plan.seeds.len(),
        if plan.seeds.len() == 1 { "" } else { "s" }
    );
    report::draw_curves(
        &out.join("curves.png"),
        &title,
        &report::comparison_panels(&curves, metric),
    )?;
    let lines: Vec<(String, usize, Vec<f64>)> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.objective.clone(), i, g.complement.clone()))
        .collect();
    let what = if translation {
        "wrong-token probabilities (teacher forcing)"
    } else {
        "wrong-class probabilities"
    };
    report::draw_complement(
        &out.join("complement.png"),
        &format!("{} test: sorted {what}", first.data.dataset),
        &lines,
    )?;
    if !translation {
        let maps: Vec<Heatmap> = groups
            .iter()
            .map(|g| Heatmap {
                title: format!("{} (summed over {} seeds)", g.objective, g.runs.len()),
                counts: g.confusion.clone(),
            })
            .collect();
        report::draw_confusion(
            &out.join("confusion.png"),
            &format!("{} test confusion", first.data.dataset),
            &labels,
            &maps,
        )?;
    }

    let mut objectives = Vec::new();
    let mut runs = Vec::new();
    for g in &groups {
        let (o, r) = g.summarize();
        objectives.push(o);
        runs.extend(r);
    }
    // The attacks first, so that the wall time covers them.
    let robustness = if plan.attack.is_empty() {
        None
    } else {
        let runs: Vec<(String, Vec<PathBuf>)> = groups
            .iter()
            .map(|g| {
                (
                    g.objective.clone(),
                    g.runs.iter().map(|r| r.1.clone()).collect(),
                )
            })
            .collect();
        Some(super::attack::robustness(
            out,
            &first.data.dataset,
            &runs,
            &plan.attack,
            plan.progress,
            device,
        )?)
    };
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
    if let Some(r) = robustness {
        summary_json["robustness"] = r.json;
        markdown.push_str(&r.markdown);
    }
    write(
        &out.join("summary.json"),
        &serde_json::to_vec_pretty(&summary_json)?,
    )?;
    write(&out.join("report.md"), markdown.as_bytes())?;

    println!("report: {}", out.join("report.md").display());
    for o in &summary.objectives {
        for (split, stats) in [("dev (best)", &o.dev), ("test", &o.test)] {
            if let Some(st) = stats {
                let (acc, f1, bleu) = report::split_cells(st);
                if translation {
                    println!(
                        "{:<5} {split:<10}  BLEU {bleu}  token accuracy {acc}  (n = {})",
                        o.objective, st.accuracy.n
                    );
                } else {
                    println!(
                        "{:<5} {split:<10}  accuracy {acc}  macro-F1 {f1}  (n = {})",
                        o.objective, st.accuracy.n
                    );
                }
            }
        }
    }
    Ok(())
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
