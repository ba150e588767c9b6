//! `report.md`: the [`Summary`] as Markdown.

use std::fmt::Write;

use super::summary::{MeanStd, SplitStats, Summary};

fn cell(m: &MeanStd) -> String {
    match m.std {
        Some(s) => format!("{:.4} ± {:.4}", m.mean, s),
        None => format!("{:.4}", m.mean),
    }
}

fn opt_cell(m: &Option<MeanStd>) -> String {
    m.as_ref().map(cell).unwrap_or_else(|| "–".into())
}

impl Summary {
    /// The report: command, machine, wall time, the mean ± std table per objective
    /// and split, each objective against the baseline (`ce` when compared, else the
    /// first objective), every run, and the plots.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let names: Vec<&str> = self
            .objectives
            .iter()
            .map(|o| o.objective.as_str())
            .collect();
        let _ = writeln!(s, "# Comparing objectives: {}\n", names.join(", "));
        let _ = writeln!(s, "* Command: `{}`", self.command);
        let m = &self.machine;
        let _ = writeln!(
            s,
            "* Machine: {} CPU{}{}; device `{}`",
            m.cpus,
            if m.cpus == 1 { "" } else { "s" },
            m.cpu_model
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            m.device
        );
        let _ = writeln!(
            s,
            "* Wall time: {:.1} s (this call, training and any attacks; runs found finished were skipped and cost nothing)",
            self.wall_s
        );
        let _ = writeln!(
            s,
            "* Best checkpoint chosen by dev `{}`; test scores use those weights\n",
            self.metric
        );

        let _ = writeln!(s, "## Results\n");
        let _ = writeln!(s, "Mean ± sample standard deviation over seeds (n runs; no ± when n = 1). \"dev (best)\" is each run's best dev evaluation.\n");
        // Translation runs have BLEU and no macro-F1; classification the reverse.
        let translation = self.objectives.iter().any(|o| {
            [&o.dev, &o.test]
                .iter()
                .any(|st| st.is_some_and(|st| st.bleu.is_some()))
        });
        let (second, second_of): (&str, fn(&SplitStats) -> &Option<MeanStd>) = if translation {
            ("BLEU", |st| &st.bleu)
        } else {
            ("macro-F1", |st| &st.macro_f1)
        };
        let first = if translation {
            "token accuracy"
        } else {
            "accuracy"
        };
        let _ = writeln!(
            s,
            "| objective | split | n | {first} | {second} |\n| --- | --- | --- | --- | --- |"
        );
        for o in &self.objectives {
            for (split, stats) in [("dev (best)", &o.dev), ("test", &o.test)] {
                match stats {
                    Some(st) => {
                        let _ = writeln!(
                            s,
                            "| {} | {split} | {} | {} | {} |",
                            o.objective,
                            st.accuracy.n,
                            cell(&st.accuracy),
                            opt_cell(second_of(st))
                        );
                    }
                    None => {
                        let _ = writeln!(s, "| {} | {split} | 0 | – | – |", o.objective);
                    }
                }
            }
        }

        if let Some(first_diff) = self.differences.first() {
            let _ = writeln!(s, "\n## Against {}\n", first_diff.baseline);
            let _ = writeln!(
                s,
                "Difference of the means (objective − {}) with its 95% confidence interval and the two-sided \
                 p-value of Welch's t-test across seeds (unequal variances; needs at least 2 seeds a side). \
                 With few seeds a large p says \"not shown\", not \"equal\".\n",
                first_diff.baseline
            );
            let _ = writeln!(
                s,
                "| objective | split | metric | mean | {} | difference | 95% interval | p |",
                first_diff.baseline
            );
            let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
            for d in &self.differences {
                let metric = match d.metric.as_str() {
                    "accuracy" => first,
                    "macro_f1" => "macro-F1",
                    "bleu" => "BLEU",
                    other => other,
                };
                let (interval, p) = match &d.welch {
                    Some(w) => (
                        format!("[{:+.4}, {:+.4}]", w.ci_low, w.ci_high),
                        format_p(w.p),
                    ),
                    None => ("–".into(), "– (one seed)".into()),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {metric} | {} | {} | {:+.4} | {interval} | {p} |",
                    d.objective,
                    d.split,
                    cell(&d.value),
                    cell(&d.base),
                    d.value.mean - d.base.mean
                );
            }
        }

        let _ = writeln!(s, "\n## Runs\n");
        let _ = writeln!(s, "| objective | seed | steps | best dev step | dev {first} | dev {second} | test {first} | test {second} | directory |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let num = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | `{}` |",
                r.objective,
                r.seed,
                r.steps,
                r.dev
                    .map(|d| d.step.to_string())
                    .unwrap_or_else(|| "–".into()),
                num(r.dev.map(|d| d.accuracy)),
                num(r
                    .dev
                    .and_then(|d| if translation { d.bleu } else { d.macro_f1 })),
                num(r.test.map(|d| d.accuracy)),
                num(r
                    .test
                    .and_then(|d| if translation { d.bleu } else { d.macro_f1 })),
                r.dir.display()
            );
        }

        let _ = writeln!(s, "\n## Plots\n");
        let _ = writeln!(s, "* `curves.png`: training loss and dev {} against the step; mean over seeds, shaded ± one std.", self.metric);
        let _ = writeln!(
            s,
            "* `complement.png`: on the test split, each example's wrong-class probabilities sorted \
             largest first, averaged rank by rank over examples and seeds (log scale). COT aims to \
             flatten this profile."
        );
        if translation {
            let _ = writeln!(s, "  For translation: every non-pad target token of the test split under teacher forcing, the first {} ranks of the wrong vocabulary entries.\n", super::TOKEN_PROFILE_RANKS);
            let _ = writeln!(s, "![curves](curves.png)\n\n![complement](complement.png)");
        } else {
            let _ = writeln!(s, "* `confusion.png`: test confusion matrices, summed over seeds (rows gold, columns predicted).\n");
            let _ = writeln!(s, "![curves](curves.png)\n\n![complement](complement.png)\n\n![confusion](confusion.png)");
        }
        s
    }
}

/// The accuracy, macro-F1 and BLEU cells of a split ("–" where absent), for
/// callers printing their own tables.
pub fn split_cells(stats: &SplitStats) -> (String, String, String) {
    (
        cell(&stats.accuracy),
        opt_cell(&stats.macro_f1),
        opt_cell(&stats.bleu),
    )
}

/// A p-value for a table: three significant digits, `< 0.001` below that.
pub fn format_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}
