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
        let names: Vec<&str> = self.objectives.iter().map(|o| o.objective.as_str()).collect();
        let _ = writeln!(s, "# Comparing objectives: {}\n", names.join(", "));
        let _ = writeln!(s, "* Command: `{}`", self.command);
        let m = &self.machine;
        let _ = writeln!(
            s,
            "* Machine: {} CPU{}{}; device `{}`",
            m.cpus,
            if m.cpus == 1 { "" } else { "s" },
            m.cpu_model.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
            m.device
        );
        let _ = writeln!(s, "* Wall time: {:.1} s (this call; runs found finished were skipped and cost nothing)", self.wall_s);
        let _ = writeln!(s, "* Best checkpoint chosen by dev `{}`; test scores use those weights\n", self.metric);

        let _ = writeln!(s, "## Results\n");
        let _ = writeln!(s, "Mean ± sample standard deviation over seeds (n runs; no ± when n = 1). \"dev (best)\" is each run's best dev evaluation.\n");
        // Translation runs have BLEU and no macro-F1; classification the reverse.
        let translation = self.objectives.iter().any(|o| [&o.dev, &o.test].iter().any(|st| st.is_some_and(|st| st.bleu.is_some())));
        let (second, second_of): (&str, fn(&SplitStats) -> &Option<MeanStd>) =
            if translation { ("BLEU", |st| &st.bleu) } else { ("macro-F1", |st| &st.macro_f1) };
        let first = if translation { "token accuracy" } else { "accuracy" };
        let _ = writeln!(s, "| objective | split | n | {first} | {second} |\n| --- | --- | --- | --- | --- |");
        for o in &self.objectives {
            for (split, stats) in [("dev (best)", &o.dev), ("test", &o.test)] {
                match stats {
                    Some(st) => {
                        let _ = writeln!(s, "| {} | {split} | {} | {} | {} |", o.objective, st.accuracy.n, cell(&st.accuracy), opt_cell(second_of(st)));
                    }
                    None => {
                        let _ = writeln!(s, "| {} | {split} | 0 | – | – |", o.objective);
                    }
                }
            }
        }

        if let Some(base) = self.objectives.iter().find(|o| o.objective == "ce").or(self.objectives.first()) {
            let others: Vec<_> = self.objectives.iter().filter(|o| o.objective != base.objective).collect();
            if !others.is_empty() {
                let _ = writeln!(s, "\n## Against {}\n", base.objective);
                for o in others {
                    for (split, mine, theirs) in [("dev (best)", &o.dev, &base.dev), ("test", &o.test, &base.test)] {
                        let (Some(mine), Some(theirs)) = (mine, theirs) else { continue };
                        for (metric, a, b) in [
                            (first, Some(&mine.accuracy), Some(&theirs.accuracy)),
                            (second, second_of(mine).as_ref(), second_of(theirs).as_ref()),
                        ] {
                            let (Some(a), Some(b)) = (a, b) else { continue };
                            let verdict = match a.overlaps(b) {
                                Some(true) => "no clear difference (within one std)",
                                Some(false) => "differs by more than one std",
                                None => "one seed each: no spread to judge by",
                            };
                            let _ = writeln!(
                                s,
                                "* {} {split} {metric}: {:.4} vs {:.4} ({:+.4}): {verdict}",
                                o.objective,
                                a.mean,
                                b.mean,
                                a.mean - b.mean
                            );
                        }
                    }
                }
                let _ = writeln!(
                    s,
                    "\n\"Within one std\": the means differ by at most the larger of the two sample stds. \
                     A rough reading with few seeds, not a significance test."
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
                r.dev.map(|d| d.step.to_string()).unwrap_or_else(|| "–".into()),
                num(r.dev.map(|d| d.accuracy)),
                num(r.dev.and_then(|d| if translation { d.bleu } else { d.macro_f1 })),
                num(r.test.map(|d| d.accuracy)),
                num(r.test.and_then(|d| if translation { d.bleu } else { d.macro_f1 })),
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
    (cell(&stats.accuracy), opt_cell(&stats.macro_f1), opt_cell(&stats.bleu))
}
