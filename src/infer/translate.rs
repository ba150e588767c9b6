//! Loading a translation run and decoding with it: beam search to detokenized
//! text, corpus BLEU as sacreBLEU computes it, teacher-forced loss and token
//! accuracy, and the model's distribution at every reference token.

use std::path::Path;

use candle_core::{DType, Device};

use crate::decode::{self, DecodeOptions};
use crate::error::Result;
use crate::loss::CrossEntropyOptions;
use crate::metrics::bleu::{Bleu, BleuConfig, BleuScore};
use crate::models::seq2seq::Seq2Seq;
use crate::task::translate::{batch_tensors, build_model, encode_source, special_ids, EncodedPair};
use crate::task::TaskKind;
use crate::tokenize::TextTokenizer;
use crate::train::{checkpoint, DecodeSettings, RunConfig};

/// Decoding options from the config, with `beam` beams.
pub fn decode_options(
    settings: &DecodeSettings,
    tokenizer: &TextTokenizer,
    beam: usize,
) -> Result<DecodeOptions> {
    let (bos, eos) = special_ids(tokenizer)?;
    Ok(DecodeOptions {
        beam,
        max_len_a: settings.max_len_a,
        max_len_b: settings.max_len_b,
        length_penalty: settings.length_penalty,
        bos,
        eos,
        pad: tokenizer.pad_id(),
    })
}

/// Translates source ids (each `x EOS`) to detokenized text, `batch` sentences at
/// a time (longest first, see [`decode::translate_all`]), in input order.
pub fn translate_ids(
    model: &Seq2Seq,
    tokenizer: &TextTokenizer,
    sources: &[Vec<u32>],
    options: &DecodeOptions,
    batch: usize,
) -> Result<Vec<String>> {
    decode::translate_all(model, sources, options, batch)?
        .iter()
        .map(|ids| Ok(tokenizer.decode(ids, true)?.trim().to_string()))
        .collect()
}

/// Translates text lines with a model (each line encoded as a source).
pub fn translate_lines(
    model: &Seq2Seq,
    tokenizer: &TextTokenizer,
    config: &RunConfig,
    lines: &[String],
    options: &DecodeOptions,
) -> Result<Vec<String>> {
    let sources = lines
        .iter()
        .map(|l| encode_source(tokenizer, config, l))
        .collect::<Result<Vec<_>>>()?;
    translate_ids(
        model,
        tokenizer,
        &sources,
        options,
        config.decode.batch_size,
    )
}

/// Corpus BLEU (sacreBLEU defaults) of hypotheses against one reference stream,
/// with its signature.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<(BleuScore, String)> {
    let bleu = Bleu::new(BleuConfig::default())?;
    let score = bleu.corpus_score(hyps, &[refs.to_vec()])?;
    Ok((score, bleu.signature(1).to_string()))
}

/// Teacher-forced mean token cross-entropy and token accuracy of `model` on
/// `data` (pad targets skipped), `batch` pairs at a time, dropout off.
pub fn teacher_forced(
    model: &Seq2Seq,
    tokenizer: &TextTokenizer,
    data: &[EncodedPair],
    batch: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let (bos, eos) = special_ids(tokenizer)?;
    let pad = tokenizer.pad_id();
    let (mut nll, mut correct, mut count) = (0.0f64, 0usize, 0usize);
    let all: Vec<usize> = (0..data.len()).collect();
    let opts = CrossEntropyOptions {
        ignore_index: Some(pad),
        label_smoothing: 0.0,
    };
    for chunk in all.chunks(batch.max(1)) {
        let ((src, mask, tgt_in), targets, _) = batch_tensors(data, chunk, pad, bos, eos, device)?;
        let logits = model.forward(&src, &mask, &tgt_in, false)?.detach();
        let sum = crate::loss::cross_entropy_sum(&logits, &targets, &opts)?;
        nll += sum.sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (c, n) = crate::train::runner::count_correct(&logits, &targets, Some(pad))?;
        correct += c;
        count += n;
    }
    Ok((
        nll / count.max(1) as f64,
        correct as f64 / count.max(1) as f64,
    ))
}

/// Calls `f(probabilities, gold)` for every non-pad target token of `data` under
/// teacher forcing with dropout off: the model's softmax over the vocabulary at
/// that position and the reference token (for complement profiles).
pub fn for_each_token_distribution(
    model: &Seq2Seq,
    tokenizer: &TextTokenizer,
    data: &[EncodedPair],
    batch: usize,
    device: &Device,
    mut f: impl FnMut(&[f32], u32) -> Result<()>,
) -> Result<()> {
    let (bos, eos) = special_ids(tokenizer)?;
    let pad = tokenizer.pad_id();
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(batch.max(1)) {
        let ((src, mask, tgt_in), targets, _) = batch_tensors(data, chunk, pad, bos, eos, device)?;
        let logits = model
            .forward(&src, &mask, &tgt_in, false)?
            .detach()
            .to_dtype(DType::F32)?;
        let probs = crate::models::layers::softmax_last_dim(&logits)?;
        let (b, t, v) = probs.dims3()?;
        let probs = probs.reshape((b * t, v))?.to_vec2::<f32>()?;
        let gold = targets.flatten_all()?.to_vec1::<u32>()?;
        for (row, &g) in probs.iter().zip(&gold) {
            if g != pad {
                f(row, g)?;
            }
        }
    }
    Ok(())
}

/// Loads a translation run for decoding, on `device` (see
/// [`super::classify::load_run`] on why the caller opens it): config,
/// tokenizer, model with the best weights (or the last ones).
pub fn load_run(run: &Path, device: &Device) -> Result<(RunConfig, TextTokenizer, Seq2Seq)> {
    TaskKind::Translation.expect_run(run)?;
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    let tokenizer = TextTokenizer::from_file(&run.join("tokenizer.json"))?;
    let model = build_model(&config, &tokenizer, device)?;
    checkpoint::load_inference_weights(run, &model)?;
    Ok((config, tokenizer, model))
}
