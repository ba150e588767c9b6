//! Training a translation model: the translation [`Task`] for the shared loop
//! (token-level CE, COT or GCE over the vocabulary, padding ignored; the best
//! checkpoint chosen by validation BLEU) and the call that trains one run, then
//! decodes the test split with beam search and scores it as sacreBLEU does.
//!
//! The run directory holds what a classification run does (see
//! [`super::classify`]) minus `labels.json`, plus `test.hyp.txt` (the test
//! split's translations with the best weights).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};

use super::checkpoint::{self, atomic_write};
use super::config::{Metric, RunConfig};
use super::runner::{Evaluation, Task, TrainOptions};
use super::session;
use super::step::Head;
use crate::error::{Error, Result};
use crate::infer::translate::{corpus_bleu, decode_options, teacher_forced, translate_ids};
use crate::models::seq2seq::Seq2Seq;
use crate::models::Trainable;
use crate::runlog::{self, EvalLine, LogLine};
use crate::task::translate::{
    batch_tensors, build_model, build_tokenizer, encode_pairs, load_pairs, open_dataset,
    special_ids, EncodedPair,
};
use crate::task::{self, Outcome, TaskKind, TestScore};
use crate::tokenize::TextTokenizer;

/// Trains a translation model into `run` as `config` says (or resumes the run
/// there); at the end decodes the test split with the best weights (beam
/// `decode.beam`), writes `test.hyp.txt` and reports its BLEU.
pub fn train(
    config: &RunConfig,
    run: &Path,
    options: &TrainOptions,
    stop: &AtomicBool,
) -> Result<Outcome> {
    // Before anything is written: the objective, then the config across its
    // sections (in session::begin).
    let objective = task::objective(config, None)?;
    let device = session::begin(config, TaskKind::Translation, run, options)?;
    let dataset = open_dataset(config)?;
    let train_pairs = load_pairs(
        &dataset,
        config,
        &config.data.train_split,
        config.data.train_limit,
    )?;
    if train_pairs.is_empty() {
        return Err(Error::Config(format!(
            "the {} split of {} is empty",
            config.data.train_split, config.data.dataset
        )));
    }
    let tokenizer = session::tokenizer(
        config,
        run,
        options,
        || build_tokenizer(config, &train_pairs),
        || Ok(()),
    )?;
    let (bos, eos) = special_ids(&tokenizer)?;
    let pad = tokenizer.pad_id();
    let train_data = encode_pairs(&tokenizer, config, &train_pairs)?;
    let split = |name: &str| -> Result<Option<(Vec<EncodedPair>, Vec<String>)>> {
        if name.is_empty() || !dataset.has_split(name) {
            return Ok(None);
        }
        let pairs = load_pairs(&dataset, config, name, config.data.eval_limit)?;
        let refs = pairs.iter().map(|p| p.target.clone()).collect();
        Ok(Some((encode_pairs(&tokenizer, config, &pairs)?, refs)))
    };
    let dev = split(&config.data.dev_split)?;
    let test = split(&config.data.test_split)?;

    let model = build_model(config, &tokenizer, &device)?;
    let losses = task::loss_config(config, Some(pad));
    let loop_task = TranslateTask {
        model: &model,
        tokenizer: &tokenizer,
        config,
        train: &train_data,
        dev: dev.as_ref().map(|(d, r)| (d.as_slice(), r.as_slice())),
        pad,
        bos,
        eos,
        device: &device,
        projected: model.projects_on_host() && losses.projects(&objective),
    };
    session::train(
        &loop_task,
        objective,
        losses,
        config,
        run,
        options,
        stop,
        |steps| {
            let Some((data, refs)) = &test else {
                return Ok(None);
            };
            checkpoint::load_inference_weights(run, &model)?;
            let opts = decode_options(&config.decode, &tokenizer, config.decode.beam)?;
            let sources: Vec<Vec<u32>> = data.iter().map(|p| p.source.clone()).collect();
            let hyps = translate_ids(
                &model,
                &tokenizer,
                &sources,
                &opts,
                config.decode.batch_size,
            )?;
            let mut text = hyps.join("\n");
            text.push('\n');
            atomic_write(&run.join("test.hyp.txt"), text.as_bytes())?;
            let (score, signature) = corpus_bleu(&hyps, refs)?;
            let (loss, accuracy) = teacher_forced(
                &model,
                &tokenizer,
                data,
                config.train.eval_batch_size,
                &device,
            )?;
            runlog::append(
                run,
                &LogLine::Eval(EvalLine {
                    step: steps,
                    split: config.data.test_split.clone(),
                    loss: Some(loss),
                    accuracy,
                    bleu: Some(score.score),
                    beam: Some(config.decode.beam),
                    signature: Some(signature.clone()),
                    ..EvalLine::default()
                }),
            )?;
            Ok(Some(TestScore::Translation {
                score,
                signature,
                beam: config.decode.beam,
            }))
        },
    )
}

/// Translation as a [`Task`] for the shared loop.
struct TranslateTask<'a> {
    model: &'a Seq2Seq,
    tokenizer: &'a TextTokenizer,
    config: &'a RunConfig,
    train: &'a [EncodedPair],
    /// Dev pairs encoded, with their raw reference sentences.
    dev: Option<(&'a [EncodedPair], &'a [String])>,
    pad: u32,
    bos: u32,
    eos: u32,
    device: &'a Device,
    /// Train on the hidden states and output layer ([`Head::Projected`]): on the
    /// CPU in f32, when the objective's losses all have the projected kernel.
    projected: bool,
}

impl Task for TranslateTask<'_> {
    type Input = (Tensor, Tensor, Tensor);

    fn metric_name(&self) -> &'static str {
        self.config.train.metric.name()
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.train
            .iter()
            .map(|p| p.source.len() + p.target.len())
            .collect()
    }

    fn batch(&self, indices: &[usize]) -> Result<(Self::Input, Tensor, usize)> {
        batch_tensors(
            self.train,
            indices,
            self.pad,
            self.bos,
            self.eos,
            self.device,
        )
    }

    fn forward(
        &self,
        (src, mask, tgt_in): &Self::Input,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.model.forward(src, mask, tgt_in, train)
    }

    fn train_head(&self, (src, mask, tgt_in): &Self::Input) -> candle_core::Result<Head> {
        if !self.projected {
            return self
                .model
                .forward(src, mask, tgt_in, true)
                .map(Head::Logits);
        }
        let hidden = self.model.forward_hidden(src, mask, tgt_in, true)?;
        let (weight, bias) = self.model.output_layer();
        Ok(Head::Projected {
            hidden,
            weight,
            bias,
        })
    }

    fn evaluate(&self) -> Result<Option<Evaluation>> {
        let Some((dev, refs)) = self.dev else {
            return Ok(None);
        };
        let (loss, accuracy) = teacher_forced(
            self.model,
            self.tokenizer,
            dev,
            self.config.train.eval_batch_size,
            self.device,
        )?;
        let mut line = EvalLine {
            loss: Some(loss),
            accuracy,
            ..EvalLine::default()
        };
        let mut summary = format!("loss {loss:.4}  token acc {accuracy:.4}");
        let value = match self.config.train.metric {
            Metric::Bleu => {
                let opts = decode_options(
                    &self.config.decode,
                    self.tokenizer,
                    self.config.decode.eval_beam,
                )?;
                let sources: Vec<Vec<u32>> = dev.iter().map(|p| p.source.clone()).collect();
                let hyps = translate_ids(
                    self.model,
                    self.tokenizer,
                    &sources,
                    &opts,
                    self.config.decode.batch_size,
                )?;
                let (score, _) = corpus_bleu(&hyps, refs)?;
                line.bleu = Some(score.score);
                summary = format!("{summary}  BLEU {:.2}", score.score);
                score.score
            }
            _ => accuracy,
        };
        Ok(Some(Evaluation {
            value,
            line,
            summary,
        }))
    }

    fn model(&self) -> &dyn Trainable {
        self.model
    }
}
