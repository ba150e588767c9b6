//! Loading a classification run and predicting with it.

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::metrics::ClassificationReport;
use crate::models::Model;
use crate::task::classify::{batch_tensors, build_model, read_run_labels, Encoded};
use crate::task::TaskKind;
use crate::tokenize::TextTokenizer;
use crate::train::{checkpoint, RunConfig};

/// A loaded classification setup: config, tokenizer, labels and data.
pub struct Setup {
    /// The config.
    pub config: RunConfig,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// Class names, by index.
    pub labels: Vec<String>,
    /// The compute device.
    pub device: Device,
}

/// Loads what a run directory holds for evaluation or prediction, on `device`:
/// the setup and the model with the best weights (or the last ones when there was
/// no dev split). The caller opens the device once for the process
/// ([`crate::train::run_device`] opens the one the run was trained on), so that a
/// caller loading several runs (`compare`'s report) keeps all tensors on one
/// device object, as Metal and CUDA require.
pub fn load_run(run: &Path, device: &Device) -> Result<(Setup, Model)> {
    TaskKind::Classification.expect_run(run)?;
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    let tokenizer = TextTokenizer::from_file(&run.join("tokenizer.json"))?;
    let labels = read_run_labels(run)?;
    let model = build_model(&config, tokenizer.vocab_size(), labels.len(), device)?;
    checkpoint::load_inference_weights(run, &model)?;
    Ok((
        Setup {
            config,
            tokenizer,
            labels,
            device: device.clone(),
        },
        model,
    ))
}

/// Predicted class probabilities `[N, K]` for `data`, in batches, dropout off.
pub fn predict_probs(
    model: &Model,
    data: &[Encoded],
    pad: u32,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(data.len());
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(batch_size) {
        let ((ids, mask), _, _) = batch_tensors(data, chunk, pad, device)?;
        let logits = model.forward(&ids, &mask, false)?.detach();
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, 1)?;
        out.extend(probs.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Evaluates on `data`: the report and the mean cross-entropy.
pub fn evaluate(
    model: &Model,
    data: &[Encoded],
    pad: u32,
    batch_size: usize,
    classes: usize,
    device: &Device,
) -> Result<(ClassificationReport, f64)> {
    let probs = predict_probs(model, data, pad, batch_size, device)?;
    let mut nll = 0.0;
    let mut predicted = Vec::with_capacity(data.len());
    for (p, e) in probs.iter().zip(data) {
        nll -= f64::from(p[e.label as usize].max(f32::MIN_POSITIVE)).ln();
        predicted.push(argmax(p));
    }
    let gold: Vec<u32> = data.iter().map(|e| e.label).collect();
    let report = ClassificationReport::new(&gold, &predicted, classes).map_err(Error::Config)?;
    Ok((
        report,
        if data.is_empty() {
            0.0
        } else {
            nll / data.len() as f64
        },
    ))
}

fn argmax(p: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = i;
        }
    }
    best as u32
}
