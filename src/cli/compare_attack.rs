//! `cotext compare --attack SPEC`: accuracy under attack of every run of a
//! comparison, as mean ± std over seeds per objective, in `report.md`,
//! `summary.json` and `robustness.png`.
//!
//! Kept apart from `compare.rs` so that the report's own tables can change
//! without touching this.

use std::path::{Path, PathBuf};

use cotext::attack::{self, AttackOptions, AttackResult, Method, Norm};
use cotext::data::{DataDir, Dataset};
use cotext::report::{self, Band, MeanStd, Panel};
use cotext::train::classify;

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
/// while the budgets match and the weights are older than the file.
fn attack_run(run: &Path, specs: &[Spec], progress: bool) -> anyhow::Result<RunRobustness> {
    let (setup, model) = classify::load_run(run)?;
    let config = &setup.config;
    let dataset = Dataset::open(
        &config.data.dataset,
        &DataDir::from_flag(config.data.data_dir.clone()),
    )?;
    let examples = classify::load_split(
        &dataset,
        config,
        &config.data.test_split,
        config.data.eval_limit,
    )?;
    let data = classify::encode(&setup.tokenizer, config, &examples)?;
    let pad = setup.tokenizer.pad_id();
    let classes = setup.labels.len();
    let (clean, _) = classify::evaluate(
        &model,
        &data,
        pad,
        config.train.eval_batch_size,
        classes,
        &setup.device,
    )?;
    let weights = ["best.safetensors", "model.safetensors"]
        .iter()
        .map(|f| run.join(f))
        .find(|p| p.exists());
    let weights_time = weights.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut results = Vec::new();
    for spec in specs {
        let cache = run.join(format!("attack-{}.json", spec.method.name()));
        if let Some(r) = cached(&cache, spec, weights_time) {
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
        let json = serde_json::json!({"method": spec.method.name(), "budgets": spec.budgets, "norm": "linf", "steps": 10, "step_size": 0.25, "attacks": r});
        cotext::fsio::atomic_write(&cache, &serde_json::to_vec_pretty(&json)?)?;
        results.push(r);
    }
    Ok(RunRobustness {
        clean: clean.accuracy,
        results,
    })
}

/// A cached result for `spec`, if the file holds the same budgets and is newer
/// than the weights.
fn cached(
    path: &Path,
    spec: &Spec,
    weights_time: Option<std::time::SystemTime>,
) -> Option<Vec<AttackResult>> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    if weights_time.is_none_or(|w| w > modified) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
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

/// Attacks every run of `groups` (objective name, run directories) and draws
/// `out/robustness.png`.
pub fn robustness(
    out: &Path,
    dataset: &str,
    groups: &[(String, Vec<PathBuf>)],
    specs: &[Spec],
    progress: bool,
) -> anyhow::Result<Robustness> {
    let mut per_group = Vec::new();
    for (_, runs) in groups {
        per_group.push(
            runs.iter()
                .map(|r| attack_run(r, specs, progress))
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
    for (gi, ((objective, _), runs)) in groups.iter().zip(&per_group).enumerate() {
        let clean = MeanStd::of(&runs.iter().map(|r| r.clean).collect::<Vec<_>>());
        let mut cells = vec![objective.clone(), cell(&clean)];
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
