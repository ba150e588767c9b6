//! `cotext compare --attack SPEC`: accuracy under attack of every run of a
//! comparison, as mean ± std over seeds per objective, in `report.md`,
//! `summary.json` and `robustness.png`.
//!
//! Kept apart from [`super::render`] so that the report's own tables can
//! change without touching this.

use std::path::{Path, PathBuf};

use candle_core::Device;
use cotext::attack::{self, AttackOptions, AttackResult, Method, Norm};
use cotext::infer;
use cotext::report::{self, Band, MeanStd, Panel, Welch};
use cotext::task;

/// One `--attack` value: a method and its budgets, e.g. `fgsm:0.01,0.05,0.1` or
/// `hotflip:1,2`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    method: Method,
    budgets: Vec<f64>,
}

fn user_error(msg: String) -> anyhow::Error {
    cotext::Error::Config(msg).into()
}

/// Parses the `--attack` values (exit 2 naming the flag on a bad one).
pub fn parse_specs(raw: &[String]) -> anyhow::Result<Vec<Spec>> {
    let mut specs: Vec<Spec> = Vec::new();
    for item in raw {
        let (method, list) = item.split_once(':').ok_or_else(|| {
            user_error(format!(
                "--attack {item:?}: expected METHOD:LIST, e.g. fgsm:0.01,0.05,0.1 or hotflip:1,2"
            ))
        })?;
        let method = match method.trim() {
            "fgsm" => Method::Fgsm,
            "pgd" => Method::Pgd,
            "hotflip" => Method::Hotflip,
            other => {
                return Err(user_error(format!(
                    "--attack {item:?}: unknown method {other:?} (fgsm, pgd or hotflip)"
                )))
            }
        };
        let mut budgets = Vec::new();
        for b in list.split(',').map(str::trim) {
            let v: f64 = b
                .parse()
                .map_err(|_| user_error(format!("--attack {item:?}: {b:?} is not a number")))?;
            if !v.is_finite() || v < 0.0 || (method == Method::Hotflip && v.fract() != 0.0) {
                return Err(user_error(format!(
                    "--attack {item:?}: {b:?} must be {}",
                    if method == Method::Hotflip {
                        "a whole number of flips >= 0"
                    } else {
                        "finite and >= 0"
                    }
                )));
            }
            budgets.push(v);
        }
        if specs.iter().any(|s| s.method == method) {
            return Err(user_error(format!(
                "--attack: {} is given twice",
                method.name()
            )));
        }
        specs.push(Spec { method, budgets });
    }
    Ok(specs)
}

/// One run's clean test accuracy and its results under each spec.
struct RunRobustness {
    clean: f64,
    results: Vec<Vec<AttackResult>>,
}

/// Attacks one run's test split (the `eval_limit` subset its test score used),
/// with `cotext attack`'s defaults: L∞, PGD 10 steps of 0.25·ε, the run's seed and
/// eval batch size. Results are cached in `<run>/attack-<method>.json` and reused
/// while the budgets match and the weights are older than the file. The run is
/// loaded on `compare`'s one `device`.
fn attack_run(
    run: &Path,
    specs: &[Spec],
    progress: bool,
    device: &Device,
) -> anyhow::Result<RunRobustness> {
    let (setup, model) = infer::classify::load_run(run, device)?;
    let config = &setup.config;
    let dataset = task::classify::open_dataset(config, Some(&setup.labels))?;
    let examples = task::classify::load_split(
        &dataset,
        config,
        &config.data.test_split,
        config.data.eval_limit,
    )?;
    let data = task::classify::encode(&setup.tokenizer, config, &examples)?;
    let pad = setup.tokenizer.pad_id();
    let classes = setup.labels.len();
    let (clean, _) = infer::classify::evaluate(
        &model,
        &data,
        pad,
        config.train.eval_batch_size,
        classes,
        &setup.device,
    )?;
    // The cache is keyed by the weights' content, not by file times: a run that
    // trains further (or is retrained) gets new weights and a new hash.
    let weights = cotext::train::checkpoint::Checkpoint::read(run)?
        .ok_or_else(|| cotext::Error::Run {
            path: run.to_path_buf(),
            msg: "no checkpoint to attack".into(),
        })?
        .inference_weights()?;
    let weights_sha256 = cotext::train::checkpoint::sha256_file(&weights)?;
    let mut results = Vec::new();
    for spec in specs {
        let cache = run.join(format!("attack-{}.json", spec.method.name()));
        if let Some(r) = cached(&cache, spec, &weights_sha256) {
            results.push(r);
            continue;
        }
        let options = AttackOptions {
            method: spec.method,
            budgets: spec.budgets.clone(),
            norm: Norm::Linf,
            steps: 10,
            step_size: 0.25,
            seed: config.train.seed,
            batch_size: config.train.eval_batch_size,
            allowed: attack::hotflip_candidates(&setup.tokenizer),
        };
        if progress {
            eprintln!(
                "attacking {} ({} at {:?})",
                run.display(),
                spec.method.name(),
                spec.budgets
            );
        }
        let r = attack::attack_dataset(&model, &data, pad, &options, &mut |_| {})?;
        let json = serde_json::json!({"method": spec.method.name(), "budgets": spec.budgets, "weights_sha256": weights_sha256, "norm": "linf", "steps": 10, "step_size": 0.25, "attacks": r});
        cotext::fsio::atomic_write(&cache, &serde_json::to_vec_pretty(&json)?)?;
        results.push(r);
    }
    Ok(RunRobustness {
        clean: clean.accuracy,
        results,
    })
}

/// A cached result for `spec`, if the file holds the same budgets and was
/// computed on weights with this sha256.
fn cached(path: &Path, spec: &Spec, weights_sha256: &str) -> Option<Vec<AttackResult>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v["weights_sha256"].as_str() != Some(weights_sha256) {
        return None;
    }
    let budgets: Vec<f64> = serde_json::from_value(v["budgets"].clone()).ok()?;
    if budgets != spec.budgets {
        return None;
    }
    v["attacks"]
        .as_array()?
        .iter()
        .map(|a| {
            Some(AttackResult {
                method: a["method"].as_str()?.to_string(),
                eps: a["eps"].as_f64()?,
                accuracy: a["accuracy"].as_f64()?,
                macro_f1: a["macro_f1"].as_f64()?,
                loss: a["loss"].as_f64()?,
                n: a["n"].as_u64()? as usize,
                flips_mean: a["flips_mean"].as_f64(),
            })
        })
        .collect()
}

/// What the comparison report gets: a Markdown section and the `summary.json`
/// value.
pub struct Robustness {
    /// Appended to `report.md`.
    pub markdown: String,
    /// `summary.json`'s `robustness` key.
    pub json: serde_json::Value,
}

fn cell(m: &Option<MeanStd>) -> String {
    match m {
        Some(MeanStd {
            mean, std: Some(s), ..
        }) => format!("{mean:.4} ± {s:.4}"),
        Some(MeanStd {
            mean, std: None, ..
        }) => format!("{mean:.4}"),
        None => "–".into(),
    }
}

/// Welch's test of each objective's accuracy (clean, then every budget) against
/// ce's, for every objective but ce; empty when there is no ce group.
fn against_ce(
    groups: &[(String, Vec<PathBuf>)],
    columns: &[Vec<Option<MeanStd>>],
) -> Vec<(String, Vec<Option<Welch>>)> {
    let Some(ce) = groups.iter().position(|(o, _)| o == "ce") else {
        return Vec::new();
    };
    groups
        .iter()
        .zip(columns)
        .enumerate()
        .filter(|&(i, _)| i != ce)
        .map(|(_, ((objective, _), column))| {
            let tests = column
                .iter()
                .zip(&columns[ce])
                .map(|(a, b)| Welch::test(a.as_ref()?, b.as_ref()?))
                .collect();
            (objective.clone(), tests)
        })
        .collect()
}

/// Attacks every run of `groups` (objective name, run directories) and draws
/// `out/robustness.png`, loading each run on `device`.
pub fn robustness(
    out: &Path,
    dataset: &str,
    groups: &[(String, Vec<PathBuf>)],
    specs: &[Spec],
    progress: bool,
    device: &Device,
) -> anyhow::Result<Robustness> {
    let mut per_group = Vec::new();
    for (_, runs) in groups {
        per_group.push(
            runs.iter()
                .map(|r| attack_run(r, specs, progress, device))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
    }
    let mut header = vec!["objective".to_string(), "clean".to_string()];
    for s in specs {
        header.extend(s.budgets.iter().map(|b| format!("{} {b}", s.method.name())));
    }
    let mut md = String::from("\n## Robustness (test split)\n\n");
    md.push_str(
        "Accuracy under attack, mean ± std over seeds. FGSM/PGD: ε relative to the mean token-embedding \
         L2 norm of each batch, L∞ ball (each coordinate by ε·r/√D); PGD 10 steps of 0.25·ε from a random \
         start. HotFlip: K = the most tokens replaced per example. Each run's numbers are in its \
         `attack-<method>.json`.\n\n",
    );
    md.push_str(&format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        " --- |".repeat(header.len())
    ));
    let mut json_objectives = Vec::new();
    let mut panels: Vec<Panel> = specs
        .iter()
        .map(|s| Panel {
            title: s.method.name().to_string(),
            x_label: if s.method == Method::Hotflip {
                "K (flips)".into()
            } else {
                "ε (relative)".into()
            },
            y_label: "test accuracy".into(),
            bands: Vec::new(),
        })
        .collect();
    // Per objective: accuracy (clean first, then every budget in header order).
    let mut columns: Vec<Vec<Option<MeanStd>>> = Vec::new();
    for (gi, ((objective, _), runs)) in groups.iter().zip(&per_group).enumerate() {
        let clean = MeanStd::of(&runs.iter().map(|r| r.clean).collect::<Vec<_>>());
        let mut cells = vec![objective.clone(), cell(&clean)];
        let mut column = vec![clean];
        let mut attacks = Vec::new();
        for (si, spec) in specs.iter().enumerate() {
            let mut points = Vec::new();
            if let Some(c) = &clean {
                if !spec.budgets.contains(&0.0) {
                    let (lo, hi) = c.band();
                    points.push((0.0, c.mean, lo, hi));
                }
            }
            for (bi, &budget) in spec.budgets.iter().enumerate() {
                let acc = MeanStd::of(
                    &runs
                        .iter()
                        .map(|r| r.results[si][bi].accuracy)
                        .collect::<Vec<_>>(),
                );
                let f1 = MeanStd::of(
                    &runs
                        .iter()
                        .map(|r| r.results[si][bi].macro_f1)
                        .collect::<Vec<_>>(),
                );
                cells.push(cell(&acc));
                column.push(acc);
                if let Some(a) = &acc {
                    let (lo, hi) = a.band();
                    points.push((budget, a.mean, lo, hi));
                }
                attacks.push(serde_json::json!({"method": spec.method.name(), "eps": budget, "accuracy": acc, "macro_f1": f1}));
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            panels[si].bands.push(Band {
                label: objective.clone(),
                color: gi,
                points,
            });
        }
        md.push_str(&format!("| {} |\n", cells.join(" | ")));
        json_objectives.push(serde_json::json!({"objective": objective, "clean": {"accuracy": clean}, "attacks": attacks}));
        columns.push(column);
    }
    let against = against_ce(groups, &columns);
    if !against.is_empty() {
        md.push_str(
            "\nAgainst ce: the difference of the mean accuracies (objective − ce) and the two-sided p-value of \
             Welch's t-test across seeds, as in the results' \"Against ce\" table (needs 2 seeds a side).\n\n",
        );
        md.push_str(&format!(
            "| {} |\n|{}\n",
            header.join(" | "),
            " --- |".repeat(header.len())
        ));
        for (objective, tests) in &against {
            let cells: Vec<String> = tests
                .iter()
                .map(|w| match w {
                    Some(w) => format!("{:+.4} (p {:.3})", w.diff, w.p),
                    None => "–".into(),
                })
                .collect();
            md.push_str(&format!("| {objective} | {} |\n", cells.join(" | ")));
        }
    }
    // summary.json: each attack gains `against_ce` (the Welch test on accuracy).
    for (objective, tests) in &against {
        if let Some(o) = json_objectives
            .iter_mut()
            .find(|o| o["objective"] == objective.as_str())
        {
            o["clean"]["against_ce"] = serde_json::json!(tests[0]);
            if let Some(attacks) = o["attacks"].as_array_mut() {
                for (a, w) in attacks.iter_mut().zip(&tests[1..]) {
                    a["against_ce"] = serde_json::json!(w);
                }
            }
        }
    }
    report::draw_curves(
        &out.join("robustness.png"),
        &format!("{dataset} test: accuracy under attack"),
        &panels,
    )?;
    Ok(Robustness {
        markdown: md,
        json: serde_json::json!({"norm": "linf", "pgd_steps": 10, "pgd_step_size": 0.25, "objectives": json_objectives}),
    })
}
