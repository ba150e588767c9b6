//! Translation runs: train a sequence-to-sequence model (token-level CE, COT or GCE
//! over the vocabulary, padding ignored) through the same loop as classification,
//! choose the best checkpoint by validation BLEU, decode the test split with beam
//! search and score it as sacreBLEU does; translate text with a trained run.
//!
//! One joint tokenizer (trained on both sides of the training pairs, BPE by
//! default) serves source and target. A source is encoded as `x EOS`; the decoder
//! reads `BOS y` and predicts `y EOS`. Hypotheses are decoded back to text
//! (detokenized) before BLEU, so scores compare with published sacreBLEU numbers.
//!
//! The run directory holds what a classification run does (see
//! [`super::runner`]) minus `labels.json`, plus `test.hyp.txt` (the test split's
//! translations with the best weights).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, atomic_write};
use super::config::{parse_device, DecodeSettings, Metric, RunConfig, TokenizerSource};
use super::runner::{self, Evaluation, LoopEnd, Task, TrainOptions};
use super::step::{LossConfig, Objective, ObjectiveKind, Stepper};
use crate::data::{DataDir, Dataset, LoadOptions, Pair, SplitData};
use crate::decode::{self, DecodeOptions};
use crate::error::{Error, Result};
use crate::loss::{ComplementOptions, CrossEntropyOptions, Normalization};
use crate::metrics::bleu::{Bleu, BleuConfig, BleuScore};
use crate::models::seq2seq::{Seq2Seq, Seq2SeqConfig};
use crate::models::Trainable;
use crate::tokenize::{self, EncodeOptions, TextTokenizer, TokenizerKind, Truncation};

/// One encoded sentence pair.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    /// Source ids, `x EOS`.
    pub source: Vec<u32>,
    /// Target ids without BOS/EOS.
    pub target: Vec<u32>,
}

/// How a translation run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps done, or stopped early by patience.
    Finished {
        /// Updates made.
        steps: u64,
        /// Best dev metric and its step.
        best: Option<(f64, u64)>,
        /// Test BLEU with the best weights, and its sacreBLEU signature.
        test: Option<(BleuScore, String)>,
    },
    /// Ctrl-C: the checkpoint was saved at this step.
    Interrupted {
        /// Updates made.
        steps: u64,
    },
}

/// Whether `config`'s data set is a translation data set.
pub fn is_translation(config: &RunConfig) -> Result<bool> {
    // Data files (`--data FILE`) are labelled texts.
    if crate::data::file::is_data_file(&config.data.dataset) {
        return Ok(false);
    }
    Ok(open_dataset(config)?.card.task == crate::data::card::Task::Translation)
}

fn open_dataset(config: &RunConfig) -> Result<Dataset> {
    Dataset::open(&config.data.dataset, &DataDir::from_flag(config.data.data_dir.clone()))
}

/// The source and target languages of a run, checked against the card.
pub fn languages(config: &RunConfig, dataset: &Dataset) -> Result<(String, String)> {
    let langs = &dataset.card.languages;
    let [a, b] = langs.as_slice() else {
        return Err(Error::Config(format!("dataset {} is not a language pair", dataset.card.name)));
    };
    let other = |l: &str| if l == a { b.clone() } else { a.clone() };
    let (src, tgt) = match (&config.data.source_lang, &config.data.target_lang) {
        (None, None) => (a.clone(), b.clone()),
        (Some(s), None) => (s.clone(), other(s)),
        (None, Some(t)) => (other(t), t.clone()),
        (Some(s), Some(t)) => (s.clone(), t.clone()),
    };
    for (key, l) in [("data.source_lang", &src), ("data.target_lang", &tgt)] {
        if l != a && l != b {
            return Err(Error::Config(format!("{key} = {l:?}: dataset {} has languages {a} and {b}", dataset.card.name)));
        }
    }
    if src == tgt {
        return Err(Error::Config(format!("data.source_lang and data.target_lang are both {src:?}")));
    }
    Ok((src, tgt))
}

/// The pairs of `split` in the run's direction, optionally a seeded subset.
pub fn load_pairs(dataset: &Dataset, config: &RunConfig, split: &str, limit: Option<usize>) -> Result<Vec<Pair>> {
    let pairs = match dataset.load(split, &LoadOptions::default())? {
        SplitData::Translation(p) => p,
        SplitData::Classification(_) => {
            return Err(Error::Config(format!("data.dataset {:?} is a classification data set", config.data.dataset)))
        }
    };
    let (src, _) = languages(config, dataset)?;
    let swap = dataset.card.languages.first().is_some_and(|first| *first != src);
    let mut pairs: Vec<Pair> = if swap {
        pairs.into_iter().map(|p| Pair { source: p.target, target: p.source }).collect()
    } else {
        pairs
    };
    if let Some(n) = limit.filter(|&n| n < pairs.len()) {
        let mut rng = crate::data::SplitMix64::stream(config.train.seed, 0x5EB5E7);
        rng.shuffle(&mut pairs);
        pairs.truncate(n);
    }
    Ok(pairs)
}

fn special_ids(tokenizer: &TextTokenizer) -> Result<(u32, u32)> {
    match (tokenizer.bos_id(), tokenizer.eos_id()) {
        (Some(b), Some(e)) => Ok((b, e)),
        _ => Err(Error::Config("translation needs a tokenizer with BOS and EOS tokens (<s>, </s>)".into())),
    }
}

/// Encodes a source sentence: `x EOS`, at most `data.max_len` tokens.
pub fn encode_source(tokenizer: &TextTokenizer, config: &RunConfig, text: &str) -> Result<Vec<u32>> {
    tokenizer.encode_with(text, &EncodeOptions { add_bos: false, add_eos: true, truncation: Truncation::Head { max_len: config.data.max_len } })
}

/// Encodes pairs for training.
pub fn encode_pairs(tokenizer: &TextTokenizer, config: &RunConfig, pairs: &[Pair]) -> Result<Vec<EncodedPair>> {
    let target_options = EncodeOptions { add_bos: false, add_eos: false, truncation: Truncation::Head { max_len: config.data.max_len - 1 } };
    pairs
        .iter()
        .map(|p| Ok(EncodedPair { source: encode_source(tokenizer, config, &p.source)?, target: tokenizer.encode_with(&p.target, &target_options)? }))
        .collect()
}

fn build_tokenizer(config: &RunConfig, pairs: &[Pair]) -> Result<TextTokenizer> {
    match &config.tokenizer {
        TokenizerSource::File { path } => runner::tokenizer_file(path),
        TokenizerSource::Model => Err(Error::Config("tokenizer.source = \"model\" is for pretrained classifiers; translation trains one (source = \"train\") or loads a file".into())),
        TokenizerSource::Train { kind, vocab_size, min_frequency } => {
            if *kind == TokenizerKind::WordLevel {
                eprintln!("warning: a word-level tokenizer cannot restore the original spacing; BLEU is computed on its space-joined output (use kind = \"bpe\")");
            }
            let cfg = tokenize::TrainConfig { kind: *kind, vocab_size: *vocab_size, min_frequency: *min_frequency, ..Default::default() };
            tokenize::train(pairs.iter().flat_map(|p| [p.source.as_str(), p.target.as_str()]), &cfg)
        }
    }
}

/// The model config of a translation run (`kind = "lstm_attention" |
/// "transformer_seq2seq"`).
pub fn seq2seq_config(config: &RunConfig) -> Result<Seq2SeqConfig> {
    config.model.seq2seq().ok_or_else(|| {
        Error::Config(format!(
            "model.kind must be \"lstm_attention\" or \"transformer_seq2seq\" for the translation data set {}",
            config.data.dataset
        ))
    })
}

fn build_model(config: &RunConfig, tokenizer: &TextTokenizer, device: &Device) -> Result<Seq2Seq> {
    let compute = config.train.precision.compute_dtype();
    super::memory::check_fits(&config.model, tokenizer.vocab_size(), device.is_cpu())?;
    seq2seq_config(config)?.build_mixed(tokenizer.vocab_size(), tokenizer.pad_id(), DType::F32, compute, device, config.train.seed)
}

fn objective(config: &RunConfig) -> Result<Objective> {
    Ok(match config.train.objective {
        ObjectiveKind::Ce => Objective::CrossEntropy,
        ObjectiveKind::Cot => Objective::Cot,
        ObjectiveKind::Gce => Objective::Gce { alpha: config.train.gce_alpha },
        ObjectiveKind::CotJoint => Objective::CotJoint { weight: config.train.complement_weight },
        ObjectiveKind::Hcot => return Err(Error::Config("objective hcot needs class groups; translation supports ce, cot, gce and cot-joint".into())),
    })
}

fn loss_config(config: &RunConfig, pad: u32) -> LossConfig {
    let t = &config.train;
    let normalization = t.complement_normalization.unwrap_or(match t.objective {
        ObjectiveKind::Gce => Normalization::LogClasses,
        _ => Normalization::Classes,
    });
    LossConfig {
        cross_entropy: CrossEntropyOptions { ignore_index: Some(pad), label_smoothing: t.label_smoothing },
        complement: ComplementOptions { form: t.complement_form, normalization, ignore_index: Some(pad) },
        clip_norm: t.clip_norm,
        chunked: t.chunked_loss,
    }
}

/// Decoding options from the config, with `beam` beams.
pub fn decode_options(settings: &DecodeSettings, tokenizer: &TextTokenizer, beam: usize) -> Result<DecodeOptions> {
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
pub fn translate_ids(model: &Seq2Seq, tokenizer: &TextTokenizer, sources: &[Vec<u32>], options: &DecodeOptions, batch: usize) -> Result<Vec<String>> {
    decode::translate_all(model, sources, options, batch)?
        .iter()
        .map(|ids| Ok(tokenizer.decode(ids, true)?.trim().to_string()))
        .collect()
}

/// Translates text lines with a model (each line encoded as a source).
pub fn translate_lines(model: &Seq2Seq, tokenizer: &TextTokenizer, config: &RunConfig, lines: &[String], options: &DecodeOptions) -> Result<Vec<String>> {
    let sources = lines.iter().map(|l| encode_source(tokenizer, config, l)).collect::<Result<Vec<_>>>()?;
    translate_ids(model, tokenizer, &sources, options, config.decode.batch_size)
}

/// Corpus BLEU (sacreBLEU defaults) of hypotheses against one reference stream,
/// with its signature.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<(BleuScore, String)> {
    let bleu = Bleu::new(BleuConfig::default())?;
    let score = bleu.corpus_score(hyps, &[refs.to_vec()])?;
    Ok((score, bleu.signature(1).to_string()))
}

/// `[B, S]` source ids and mask, `[B, T]` decoder input and targets for the pairs
/// at `indices`; the count is source + target tokens.
fn batch_tensors(data: &[EncodedPair], indices: &[usize], pad: u32, bos: u32, eos: u32, device: &Device) -> Result<((Tensor, Tensor, Tensor), Tensor, usize)> {
    let srcs: Vec<Vec<u32>> = indices.iter().map(|&i| data[i].source.clone()).collect();
    let src = crate::tokenize::PaddedBatch::pad(&srcs, pad);
    let ins: Vec<Vec<u32>> = indices.iter().map(|&i| std::iter::once(bos).chain(data[i].target.iter().copied()).collect()).collect();
    let outs: Vec<Vec<u32>> = indices.iter().map(|&i| data[i].target.iter().copied().chain(std::iter::once(eos)).collect()).collect();
    let tgt_in = crate::tokenize::PaddedBatch::pad(&ins, pad);
    let tgt_out = crate::tokenize::PaddedBatch::pad(&outs, pad);
    let tokens = src.lengths.iter().sum::<usize>() + tgt_out.lengths.iter().sum::<usize>();
    let src_ids = Tensor::from_vec(src.ids, (src.rows, src.cols), device)?;
    let src_mask = Tensor::from_vec(src.mask, (src.rows, src.cols), device)?;
    let tgt_in = Tensor::from_vec(tgt_in.ids, (tgt_in.rows, tgt_in.cols), device)?;
    let targets = Tensor::from_vec(tgt_out.ids, (tgt_out.rows, tgt_out.cols), device)?;
    Ok(((src_ids, src_mask, tgt_in), targets, tokens))
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
        let logits = model.forward(&src, &mask, &tgt_in, false)?.detach().to_dtype(DType::F32)?;
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
}

impl TranslateTask<'_> {
    /// Teacher-forced mean token cross-entropy and token accuracy on `data`.
    fn teacher_forced(&self, data: &[EncodedPair]) -> Result<(f64, f64)> {
        let (mut nll, mut correct, mut count) = (0.0f64, 0usize, 0usize);
        let all: Vec<usize> = (0..data.len()).collect();
        let opts = CrossEntropyOptions { ignore_index: Some(self.pad), label_smoothing: 0.0 };
        for chunk in all.chunks(self.config.train.eval_batch_size) {
            let ((src, mask, tgt_in), targets, _) = batch_tensors(data, chunk, self.pad, self.bos, self.eos, self.device)?;
            let logits = self.model.forward(&src, &mask, &tgt_in, false)?.detach();
            let sum = crate::loss::cross_entropy_sum(&logits, &targets, &opts)?;
            nll += sum.sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let (c, n) = runner::count_correct(&logits, &targets, Some(self.pad))?;
            correct += c;
            count += n;
        }
        Ok((nll / count.max(1) as f64, correct as f64 / count.max(1) as f64))
    }
}

impl Task for TranslateTask<'_> {
    type Input = (Tensor, Tensor, Tensor);

    fn metric_name(&self) -> &'static str {
        self.config.train.metric.name()
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.train.iter().map(|p| p.source.len() + p.target.len()).collect()
    }

    fn batch(&self, indices: &[usize]) -> Result<(Self::Input, Tensor, usize)> {
        batch_tensors(self.train, indices, self.pad, self.bos, self.eos, self.device)
    }

    fn forward(&self, (src, mask, tgt_in): &Self::Input, train: bool) -> candle_core::Result<Tensor> {
        self.model.forward(src, mask, tgt_in, train)
    }

    fn ignore_index(&self) -> Option<u32> {
        Some(self.pad)
    }

    fn evaluate(&self) -> Result<Option<Evaluation>> {
        let Some((dev, refs)) = self.dev else { return Ok(None) };
        let (loss, accuracy) = self.teacher_forced(dev)?;
        let mut fields = serde_json::Map::new();
        fields.insert("loss".into(), loss.into());
        fields.insert("accuracy".into(), accuracy.into());
        let mut summary = format!("loss {loss:.4}  token acc {accuracy:.4}");
        let value = match self.config.train.metric {
            Metric::Bleu => {
                let opts = decode_options(&self.config.decode, self.tokenizer, self.config.decode.eval_beam)?;
                let sources: Vec<Vec<u32>> = dev.iter().map(|p| p.source.clone()).collect();
                let hyps = translate_ids(self.model, self.tokenizer, &sources, &opts, self.config.decode.batch_size)?;
                let (score, _) = corpus_bleu(&hyps, refs)?;
                fields.insert("bleu".into(), score.score.into());
                summary = format!("{summary}  BLEU {:.2}", score.score);
                score.score
            }
            _ => accuracy,
        };
        Ok(Some(Evaluation { value, fields, summary }))
    }

    fn model(&self) -> &dyn Trainable {
        self.model
    }
}

/// Trains a translation model into `run` as `config` says (or resumes the run
/// there); at the end decodes the test split with the best weights (beam
/// `decode.beam`), writes `test.hyp.txt` and reports its BLEU.
pub fn train(config: &RunConfig, run: &Path, options: &TrainOptions, stop: &AtomicBool) -> Result<Outcome> {
    if config.train.metric == Metric::MacroF1 {
        return Err(Error::Config("train.metric = \"macro_f1\" is for classification; translation uses \"bleu\" or \"accuracy\"".into()));
    }
    let model_config = seq2seq_config(config)?;
    let objective = objective(config)?;
    runner::prepare_run_dir(run, options.resume)?;
    let device = parse_device(&config.train.device).map_err(Error::Config)?.open()?;
    let dataset = open_dataset(config)?;
    let train_pairs = load_pairs(&dataset, config, &config.data.train_split, config.data.train_limit)?;
    if train_pairs.is_empty() {
        return Err(Error::Config(format!("the {} split of {} is empty", config.data.train_split, config.data.dataset)));
    }
    let tokenizer = if options.resume {
        TextTokenizer::from_file(&run.join("tokenizer.json"))?
    } else {
        let t = build_tokenizer(config, &train_pairs)?;
        t.save(&run.join("tokenizer.json"))?;
        t
    };
    atomic_write(&run.join("config.toml"), config.to_toml().as_bytes())?;
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

    let compute = config.train.precision.compute_dtype();
    super::memory::check_fits(&config.model, tokenizer.vocab_size(), device.is_cpu())?;
    let model = model_config.build_mixed(tokenizer.vocab_size(), pad, DType::F32, compute, &device, config.train.seed)?;
    let task = TranslateTask {
        model: &model,
        tokenizer: &tokenizer,
        config,
        train: &train_data,
        dev: dev.as_ref().map(|(d, r)| (d.as_slice(), r.as_slice())),
        pad,
        bos,
        eos,
        device: &device,
    };
    let mut stepper = Stepper::new(objective, loss_config(config, pad), task.vars(), config.train.optimizer.clone())?
        .with_complement_lr_scale(config.train.complement_lr_scale);
    let (steps, best) = match runner::run(&task, &mut stepper, &config.train, run, options, stop)? {
        LoopEnd::Interrupted { steps } => return Ok(Outcome::Interrupted { steps }),
        LoopEnd::Finished { steps, best } => (steps, best),
    };
    let test = match &test {
        Some((data, refs)) => {
            checkpoint::load_inference_weights(run, &model)?;
            let opts = decode_options(&config.decode, &tokenizer, config.decode.beam)?;
            let sources: Vec<Vec<u32>> = data.iter().map(|p| p.source.clone()).collect();
            let hyps = translate_ids(&model, &tokenizer, &sources, &opts, config.decode.batch_size)?;
            let mut text = hyps.join("\n");
            text.push('\n');
            atomic_write(&run.join("test.hyp.txt"), text.as_bytes())?;
            let (score, signature) = corpus_bleu(&hyps, refs)?;
            let (loss, accuracy) = task.teacher_forced(data)?;
            runner::log_line(run, serde_json::json!({
                "step": steps, "split": config.data.test_split, "bleu": score.score,
                "loss": loss, "accuracy": accuracy,
                "beam": config.decode.beam, "signature": signature,
            }))?;
            Some((score, signature))
        }
        None => None,
    };
    Ok(Outcome::Finished { steps, best, test })
}

/// Loads a translation run for decoding, on `device` (see
/// [`crate::train::classify::load_run`] on why the caller opens it): config,
/// tokenizer, model with the best weights (or the last ones).
pub fn load_run(run: &Path, device: &Device) -> Result<(RunConfig, TextTokenizer, Seq2Seq)> {
    if run.join("labels.json").exists() {
        return Err(Error::Config(format!(
            "{} is a text classification run (it has labels.json), not a translation run: classify text with `cotext predict --run {}`",
            run.display(),
            run.display()
        )));
    }
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    let tokenizer = TextTokenizer::from_file(&run.join("tokenizer.json"))?;
    let model = build_model(&config, &tokenizer, device)?;
    checkpoint::load_inference_weights(run, &model)?;
    Ok((config, tokenizer, model))
}
