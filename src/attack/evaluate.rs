//! Accuracy of a trained cotext classifier under attack, over a whole split.

use candle_core::{DType, Device, Tensor};

use super::{Budget, HotFlipOptions, Norm, PgdOptions};
use crate::error::{Error, Result};
use crate::metrics::ClassificationReport;
use crate::models::Model;
use crate::rng::SplitMix64;
use crate::task::classify::Encoded;
use crate::tokenize::PaddedBatch;

/// Which attack [`attack_dataset`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// [`super::fgsm`] on the input embeddings; the budgets are ε.
    Fgsm,
    /// [`super::pgd`] on the input embeddings; the budgets are ε.
    Pgd,
    /// [`super::hotflip`] on the tokens; the budgets are K, the most flips.
    Hotflip,
}

impl Method {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Fgsm => "fgsm",
            Method::Pgd => "pgd",
            Method::Hotflip => "hotflip",
        }
    }
}

/// What [`attack_dataset`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackOptions {
    /// The attack.
    pub method: Method,
    /// ε values (FGSM, PGD; relative, see [`crate::attack`]) or K values (HotFlip,
    /// whole numbers), one result each.
    pub budgets: Vec<f64>,
    /// The ball's norm (FGSM, PGD).
    pub norm: Norm,
    /// PGD steps.
    pub steps: usize,
    /// PGD step size, a fraction of the radius.
    pub step_size: f64,
    /// Seed of PGD's random starts.
    pub seed: u64,
    /// Examples per batch (the ε scale `r` is a batch mean, so it matters).
    pub batch_size: usize,
    /// Per vocabulary id, whether HotFlip may insert it (and replace it).
    pub allowed: Vec<bool>,
}

/// Accuracy under one attack budget.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttackResult {
    /// The attack's name.
    pub method: String,
    /// ε (FGSM, PGD) or K (HotFlip).
    pub eps: f64,
    /// Accuracy on the attacked inputs.
    pub accuracy: f64,
    /// Macro-F1 on the attacked inputs.
    pub macro_f1: f64,
    /// Mean cross-entropy on the attacked inputs.
    pub loss: f64,
    /// Examples attacked.
    pub n: usize,
    /// HotFlip: mean flips made per example (an example stops once misclassified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flips_mean: Option<f64>,
}

/// Runs `options.method` at every budget over `data` and scores the model on the
/// attacked inputs. Batches are taken in order, `options.batch_size` at a time,
/// as `cotext eval` takes them, so a zero budget reproduces its accuracy exactly.
/// `progress` is called with the number of batches done after each one.
pub fn attack_dataset(
    model: &Model,
    data: &[Encoded],
    pad: u32,
    options: &AttackOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<AttackResult>> {
    if options.batch_size == 0 {
        return Err(Error::Config(
            "attack: the batch size must be positive".into(),
        ));
    }
    if let Some(bad) = options
        .budgets
        .iter()
        .find(|b| !(b.is_finite() && **b >= 0.0))
    {
        return Err(Error::Config(format!(
            "attack: budgets must be finite and >= 0 (got {bad})"
        )));
    }
    if options.method == Method::Hotflip {
        if let Some(bad) = options.budgets.iter().find(|b| b.fract() != 0.0) {
            return Err(Error::Config(format!(
                "attack: hotflip budgets are numbers of flips (got {bad})"
            )));
        }
    }
    let classes = model.num_classes();
    let device = model
        .varmap()
        .all_vars()
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let nb = options.budgets.len();
    let mut predicted = vec![Vec::with_capacity(data.len()); nb];
    let mut nll = vec![0.0f64; nb];
    let mut flips = vec![0usize; nb];
    let mut rngs: Vec<SplitMix64> = (0..nb)
        .map(|i| SplitMix64::stream(options.seed, 0xA77A_C000 + i as u64))
        .collect();
    let table = match options.method {
        Method::Hotflip => Some(model.embedding_table()?),
        _ => None,
    };
    let all: Vec<usize> = (0..data.len()).collect();
    for (done, chunk) in all.chunks(options.batch_size).enumerate() {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| data[i].ids.clone()).collect();
        let padded = PaddedBatch::pad(&seqs, pad);
        let shape = (padded.rows, padded.cols);
        let ids = Tensor::from_vec(padded.ids, shape, &device)?;
        let mask = Tensor::from_vec(padded.mask, shape, &device)?;
        let labels = Tensor::from_vec(
            chunk.iter().map(|&i| data[i].label).collect::<Vec<u32>>(),
            chunk.len(),
            &device,
        )?;
        let forward = |emb: &Tensor| model.forward_embeddings(emb, &mask, false);
        let mut score = |k: usize, logits: &Tensor| -> Result<()> {
            let (pred, losses) = score_batch(logits, &labels)?;
            predicted[k].extend(pred);
            // One running sum in data order, as `evaluate` does: equal logits then
            // give an equal mean to the last bit.
            for loss in losses {
                nll[k] += loss;
            }
            Ok(())
        };
        match options.method {
            Method::Fgsm => {
                let emb = model.embed(&ids)?;
                // The direction does not depend on ε: one backward pass for all.
                let at = super::loss_and_gradient(forward, &emb, &labels)?;
                for (k, &eps) in options.budgets.iter().enumerate() {
                    let adv = super::fgsm_from_gradient(
                        &emb,
                        &mask,
                        &at.gradient,
                        Budget {
                            eps,
                            norm: options.norm,
                        },
                    )?;
                    score(k, &model.forward_embeddings(&adv, &mask, false)?)?;
                }
            }
            Method::Pgd => {
                let emb = model.embed(&ids)?;
                for (k, &eps) in options.budgets.iter().enumerate() {
                    let pgd = PgdOptions {
                        budget: Budget {
                            eps,
                            norm: options.norm,
                        },
                        steps: options.steps,
                        step_size: options.step_size,
                    };
                    let adv = super::pgd(forward, &emb, &mask, &labels, &pgd, &mut rngs[k])?;
                    score(k, &model.forward_embeddings(&adv, &mask, false)?)?;
                }
            }
            Method::Hotflip => {
                let most = options.budgets.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
                let hf = HotFlipOptions {
                    flips: most,
                    allowed: options.allowed.clone(),
                };
                let table = table.as_ref().expect("table for hotflip");
                let out = super::hotflip(forward, table, &ids, &mask, &labels, &hf)?;
                for (k, &budget) in options.budgets.iter().enumerate() {
                    let k_flips = budget as usize;
                    // Ids, not embeddings: exactly what `cotext eval` would see.
                    score(k, &model.forward(&out.rounds[k_flips], &mask, false)?)?;
                    let before = out.rounds[k_flips].to_vec2::<u32>()?;
                    let original = out.rounds[0].to_vec2::<u32>()?;
                    flips[k] += before
                        .iter()
                        .zip(&original)
                        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count())
                        .sum::<usize>();
                }
            }
        }
        progress(done + 1);
    }
    let gold: Vec<u32> = data.iter().map(|e| e.label).collect();
    let n = data.len();
    options
        .budgets
        .iter()
        .enumerate()
        .map(|(k, &eps)| {
            let report =
                ClassificationReport::new(&gold, &predicted[k], classes).map_err(Error::Config)?;
            Ok(AttackResult {
                method: options.method.name().into(),
                eps,
                accuracy: report.accuracy,
                macro_f1: report.macro_f1,
                loss: if n == 0 { 0.0 } else { nll[k] / n as f64 },
                n,
                flips_mean: (options.method == Method::Hotflip).then(|| {
                    if n == 0 {
                        0.0
                    } else {
                        flips[k] as f64 / n as f64
                    }
                }),
            })
        })
        .collect()
}

/// Predictions and per-example cross-entropy of a batch, computed as
/// [`crate::infer::classify::evaluate`] does (softmax in f32, first maximum), so
/// that equal logits give equal predictions.
fn score_batch(logits: &Tensor, labels: &Tensor) -> Result<(Vec<u32>, Vec<f64>)> {
    let probs =
        candle_nn::ops::softmax(&logits.detach().to_dtype(DType::F32)?, 1)?.to_vec2::<f32>()?;
    let gold = labels.to_vec1::<u32>()?;
    let mut loss = Vec::with_capacity(probs.len());
    let mut pred = Vec::with_capacity(probs.len());
    for (p, &g) in probs.iter().zip(&gold) {
        loss.push(-f64::from(p[g as usize].max(f32::MIN_POSITIVE)).ln());
        pred.push(
            p.iter()
                .enumerate()
                .fold(0usize, |b, (i, &x)| if x > p[b] { i } else { b }) as u32,
        );
    }
    Ok((pred, loss))
}
