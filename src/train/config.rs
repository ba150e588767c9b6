//! The run configuration: one TOML file with `[data]`, `[tokenizer]`, `[model]` and
//! `[train]` tables, unknown keys rejected, every field documented with its default.
//! `--set key=value` overrides are applied to the parsed TOML before it is checked,
//! so they go through the same validation as the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::OptimizerConfig;
use super::schedule::Schedule;
use super::step::{ComplementLrScale, ObjectiveKind};
use crate::data::LabelScheme;
use crate::error::{Error, Result};
use crate::loss::{Form, Normalization};
use crate::models::ModelConfig;
use crate::tokenize::TokenizerKind;

/// Everything a training run needs, as read from `--config FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Which data set and how to read it.
    pub data: DataConfig,
    /// Where the tokenizer comes from. Default: trained on the training split
    /// (word-level, 20000 entries).
    #[serde(default)]
    pub tokenizer: TokenizerSource,
    /// The network (`kind = "bilstm" | "transformer" | "bert"` plus its fields).
    pub model: ModelConfig,
    /// The optimization. Every field has a default.
    #[serde(default)]
    pub train: TrainSettings,
    /// Translation only: how sentences are decoded (validation, test, `cotext
    /// translate`). Every field has a default.
    #[serde(default)]
    pub decode: DecodeSettings,
}

/// `[decode]`: decoding of translation models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSettings {
    /// Beam size for the test split and `cotext translate` (1 = greedy). Default 5.
    #[serde(default = "default_beam")]
    pub beam: usize,
    /// Beam size of the validation decoding during training (BLEU metric).
    /// Default 1 (greedy: cheaper, and it ranks checkpoints the same way).
    #[serde(default = "default_eval_beam")]
    pub eval_beam: usize,
    /// Output length limit `a·|source| + b` (in tokens): `a`. Default 1.5.
    #[serde(default = "default_len_a")]
    pub max_len_a: f64,
    /// Output length limit `a·|source| + b` (in tokens): `b`. Default 10.
    #[serde(default = "default_len_b")]
    pub max_len_b: usize,
    /// GNMT length penalty α: a hypothesis scores log P / ((5 + |Y|) / 6)^α.
    /// Default 0.6; 0 ranks by log P alone.
    #[serde(default = "default_lp")]
    pub length_penalty: f64,
    /// Sentences decoded together. Default 64.
    #[serde(default = "default_decode_batch")]
    pub batch_size: usize,
}

fn default_beam() -> usize {
    crate::decode::DEFAULT_BEAM
}
fn default_eval_beam() -> usize {
    1
}
fn default_len_a() -> f64 {
    crate::decode::DEFAULT_MAX_LEN_A
}
fn default_len_b() -> usize {
    crate::decode::DEFAULT_MAX_LEN_B
}
fn default_lp() -> f64 {
    crate::decode::DEFAULT_LENGTH_PENALTY
}
fn default_decode_batch() -> usize {
    64
}

impl Default for DecodeSettings {
    fn default() -> Self {
        toml::from_str("").expect("every decode field has a default")
    }
}

/// `[data]`: the data set and its preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A built-in dataset card name (`sst2`, `sst5`, `imdb`, …) or the path of a
    /// card TOML. Required.
    pub dataset: String,
    /// Folder holding local copies of the data sets (as `--data-dir`/`COTEXT_DATA`).
    /// Default: unset (the environment, then the HF cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// IMDB label scheme: `"binary"` (2 classes) or `"rating"` (8 classes).
    /// Default `"binary"`.
    #[serde(default)]
    pub scheme: LabelScheme,
    /// SST: read the PTB trees instead of the TSV. Default false.
    #[serde(default)]
    pub trees: bool,
    /// SST: train on every phrase of the training trees. Default false.
    #[serde(default)]
    pub phrases: bool,
    /// Training split name. Default `"train"`.
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Validation split, evaluated during training; `""` for none. Default `"dev"`.
    #[serde(default = "default_dev_split")]
    pub dev_split: String,
    /// Test split, evaluated with the best weights at the end; `""` for none.
    /// Default `"test"`.
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Hold out this many (seeded, random) training examples as the dev split, for
    /// data sets without one (IMDB). Used when `dev_split` is `""` or absent from
    /// the data set. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_holdout: Option<usize>,
    /// Use a seeded random subset of this many training examples. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Use a seeded random subset of this many dev/test examples. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    /// Maximum tokens per example, special tokens included. Default 128.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Translation: the source language (one of the card's `languages`). Default:
    /// the card's first language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lang: Option<String>,
    /// Translation: the target language. Default: the card's other language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lang: Option<String>,
    /// Keep this many tokens from the start of a long text and the rest from its
    /// end (head + tail truncation, for IMDB reviews); default: keep the head only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_tokens: Option<usize>,
    /// When `dataset` is a data file (`.tsv`, `.csv`, `.jsonl`, the training
    /// split): the dev split's file. Default: none (see `dev_holdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_data: Option<PathBuf>,
    /// When `dataset` is a data file: the test split's file. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<PathBuf>,
    /// Data files: the text column (header name, JSON key, or a column number
    /// from 1 without a header). Default: the first text-like column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Data files: the label column. Default `label` (the last column without a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// Data files: whether the first line is a header. Default: guessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// Data files: the label names in class order. Default: the training
    /// file's labels (indices `0..K`, else the distinct values sorted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_names: Option<Vec<String>>,
}

fn default_train_split() -> String {
    "train".into()
}
fn default_dev_split() -> String {
    "dev".into()
}
fn default_test_split() -> String {
    "test".into()
}
fn default_one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_default_scale(x: &ComplementLrScale) -> bool {
    *x == ComplementLrScale::default()
}

fn default_max_len() -> usize {
    128
}

/// `[tokenizer]`: where token ids come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum TokenizerSource {
    /// The pretrained model's own `tokenizer.json` (BERT models), with its
    /// built-in truncation and padding switched off (cotext pads per batch).
    Model,
    /// A `tokenizer.json` file.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// Trained on the training split before the run starts.
    Train {
        /// `"word-level"`, `"bpe"`, `"word-piece"` or `"unigram"`. Default
        /// `"word-level"` (classification needs no lossless decoding).
        #[serde(default = "default_tokenizer_kind")]
        kind: TokenizerKind,
        /// Vocabulary size, special tokens included. Default 20000.
        #[serde(default = "default_vocab")]
        vocab_size: usize,
        /// Minimum frequency of a word or merge. Default 1.
        #[serde(default = "default_min_freq")]
        min_frequency: u64,
    },
}

fn default_tokenizer_kind() -> TokenizerKind {
    TokenizerKind::WordLevel
}
fn default_vocab() -> usize {
    20000
}
fn default_min_freq() -> u64 {
    1
}

impl Default for TokenizerSource {
    fn default() -> Self {
        TokenizerSource::Train {
            kind: default_tokenizer_kind(),
            vocab_size: default_vocab(),
            min_frequency: default_min_freq(),
        }
    }
}

/// The metric that picks the best checkpoint and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Accuracy. The default.
    #[default]
    Accuracy,
    /// Macro-averaged F1.
    MacroF1,
    /// Translation: corpus BLEU (sacreBLEU's default settings) of the dev split
    /// decoded with `decode.eval_beam`, on detokenized text. (`accuracy` there is
    /// the teacher-forced token accuracy.)
    Bleu,
}

impl Metric {
    /// The metric's name in `metrics.jsonl` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro_f1",
            Metric::Bleu => "bleu",
        }
    }
}

/// `[train]`: the optimization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// `"ce"`, `"cot"`, `"gce"`, `"hcot"` or `"cot-joint"`. Default `"ce"`.
    #[serde(default)]
    pub objective: ObjectiveKind,
    /// Passes over the training data. Default 3.
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Stop after this many updates instead (overrides `epochs`). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Examples per micro-batch. Default 32.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Micro-batches per update (exact gradient accumulation: the effective batch
    /// is `batch_size × accumulate`; the learning rate is not rescaled). Default 1.
    #[serde(default = "default_accumulate")]
    pub accumulate: usize,
    /// The optimizer (COT and HCOT run two of these, one per objective, with the
    /// same settings and schedule). Default AdamW, lr 1e-3, weight decay 0.01.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule. Default constant.
    #[serde(default)]
    pub schedule: Schedule,
    /// Clip the global gradient norm to this. Default: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
    /// Use the chunked loss kernels (same values and gradients as the plain ones,
    /// a fraction of the memory over large vocabularies; see `docs/performance.md`,
    /// "Memory and speed of the token-level paths"). Translation on the CPU in f32
    /// then trains CE and COT's complement step on the loss fused with the output
    /// layer (`projected_token_loss`): no `[B·T, V]` logits, no work on padding.
    /// Default false.
    #[serde(default)]
    pub chunked_loss: bool,
    /// Cross-entropy label smoothing. Default 0.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Complement distribution: `"exact"` or `"reference"`. Default `"exact"`.
    #[serde(default)]
    pub complement_form: Form,
    /// Complement normalization (`"none"`, `"classes"`, `"classes-minus-one"`,
    /// `"log-classes"`, `"log-classes-minus-one"`). Default: `"classes"` for cot and
    /// hcot (the authors' COT code), `"log-classes"` for gce (the authors' GCE code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complement_normalization: Option<Normalization>,
    /// The complement optimizer's learning rate as a multiple of the schedule's
    /// (COT and HCOT; ignored by the others): a number, or `"auto"` (under Adam,
    /// the ratio of the complement and CE gradient norms at each step, capped at 1:
    /// the step-size ratio SGD would give; under SGD, 1). Default 1: Algorithm 1's
    /// same rate. With Adam-type optimizers the loss normalization does not shrink
    /// the complement updates; this does (see `docs/compare.md`, "Results").
    #[serde(default, skip_serializing_if = "is_default_scale")]
    pub complement_lr_scale: ComplementLrScale,
    /// `cot-joint`'s weight γ on the complement term: the step minimizes
    /// `CE + γ · (−H_c / d)`. Default 1.
    #[serde(default = "default_one", skip_serializing_if = "is_one")]
    pub complement_weight: f64,
    /// GCE's exponent α. Default 1/3 (the GCE paper).
    #[serde(default = "default_alpha")]
    pub gce_alpha: f64,
    /// HCOT's coarse groups as lists of class ids, e.g. `[[0, 1], [2], [3, 4]]`.
    /// Default: that SST-5 grouping when there are 5 classes; required otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hierarchy: Option<Vec<Vec<u32>>>,
    /// Evaluate on the dev split every this many updates; default: every epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    /// Also save a checkpoint every this many updates between evaluations, so a
    /// killed run (a preempted machine, `kill -9`) loses at most that many updates
    /// on `--resume`; the trained weights are the same with or without it. Default:
    /// checkpoints only at evaluations and at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Metric for the best checkpoint and early stopping. Default `"accuracy"`.
    #[serde(default)]
    pub metric: Metric,
    /// Stop after this many evaluations without improvement. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// Seed of the weights' init, dropout and data order. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// `"cpu"`, `"cuda"`, `"cuda:N"` or `"metal"`. Default `"cpu"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Compute precision: `"f32"`, `"bf16"` or `"f16"` (mixed precision: weights,
    /// optimizer state and loss sums stay f32; see [`Precision`]). Default `"f32"`.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Examples per evaluation batch. Default 64.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Write a training line to `metrics.jsonl` every this many updates. Default 20.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
}

fn default_epochs() -> u64 {
    3
}
fn default_batch() -> usize {
    32
}
fn default_accumulate() -> usize {
    1
}
fn default_alpha() -> f64 {
    1.0 / 3.0
}
fn default_device() -> String {
    "cpu".into()
}
fn default_eval_batch() -> usize {
    64
}
fn default_log_every() -> u64 {
    20
}

impl Default for TrainSettings {
    fn default() -> Self {
        toml::from_str("").expect("every train field has a default")
    }
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`key.path=value`; the value is parsed as
    /// TOML, and taken as a string when that fails), and validates the result.
    /// Errors name the file and the offending key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, overrides, &path.display().to_string())
    }

    /// As [`RunConfig::load`], from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, overrides: &[String], origin: &str) -> Result<Self> {
        let mut value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Config(format!("{origin}: {e}")))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        // `--set train.optimizer.lr=…` on a config without an optimizer table
        // means the default optimizer with that rate.
        if let Some(toml::Value::Table(opt)) =
            value.get_mut("train").and_then(|t| t.get_mut("optimizer"))
        {
            opt.entry("kind")
                .or_insert_with(|| toml::Value::String("adamw".into()));
        }
        let error_of = |t: &toml::Table| {
            toml::Value::Table(t.clone())
                .try_into::<RunConfig>()
                .err()
                .map(|e| e.message().to_string())
        };
        let config: RunConfig =
            toml::Value::Table(value.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Error::Config(format!(
                        "{origin}: {}",
                        super::blame::name_the_key(&value, e.message(), &error_of)
                    ))
                })?;
        config
            .validate()
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        Ok(config)
    }

    /// Range checks that serde cannot express; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.train;
        if t.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if t.accumulate == 0 {
            return Err("train.accumulate must be at least 1".into());
        }
        if t.eval_batch_size == 0 {
            return Err("train.eval_batch_size must be at least 1".into());
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return Err("train.epochs must be at least 1 (or set train.max_steps)".into());
        }
        if t.max_steps == Some(0) {
            return Err("train.max_steps must be at least 1".into());
        }
        if t.eval_every == Some(0) {
            return Err("train.eval_every must be at least 1".into());
        }
        if t.checkpoint_every == Some(0) {
            return Err("train.checkpoint_every must be at least 1".into());
        }
        if let ComplementLrScale::Fixed(x) = t.complement_lr_scale {
            if !(x.is_finite() && x > 0.0) {
                return Err(format!(
                    "train.complement_lr_scale must be a number above 0 or \"auto\", got {x}"
                ));
            }
        }
        if !(t.complement_weight.is_finite() && t.complement_weight >= 0.0) {
            return Err(format!(
                "train.complement_weight must be a number >= 0, got {}",
                t.complement_weight
            ));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(format!(
                "train.label_smoothing must be in [0, 1), got {}",
                t.label_smoothing
            ));
        }
        if !(t.gce_alpha.is_finite() && t.gce_alpha >= 0.0) {
            return Err(format!("train.gce_alpha must be >= 0, got {}", t.gce_alpha));
        }
        if let Some(c) = t.clip_norm {
            // Written so that NaN fails too.
            if c.is_nan() || c <= 0.0 {
                return Err(format!("train.clip_norm must be > 0, got {c}"));
            }
        }
        if t.log_every == 0 {
            return Err("train.log_every must be at least 1".into());
        }
        let d = &self.decode;
        if d.beam == 0 || d.eval_beam == 0 {
            return Err("decode.beam and decode.eval_beam must be at least 1".into());
        }
        if d.batch_size == 0 {
            return Err("decode.batch_size must be at least 1".into());
        }
        if !(d.max_len_a.is_finite() && d.max_len_a >= 0.0) {
            return Err(format!(
                "decode.max_len_a must be >= 0, got {}",
                d.max_len_a
            ));
        }
        if !(d.length_penalty.is_finite() && d.length_penalty >= 0.0) {
            return Err(format!(
                "decode.length_penalty must be >= 0, got {}",
                d.length_penalty
            ));
        }
        parse_device(&t.device)?;
        t.optimizer.validate()?;
        if (self.data.dev_data.is_some() || self.data.test_data.is_some())
            && !crate::data::file::is_data_file(&self.data.dataset)
        {
            return Err(format!(
                "data.dev_data and data.test_data need data.dataset to be a data file (.tsv, .csv, .jsonl), not {:?}",
                self.data.dataset
            ));
        }
        if self.data.max_len < 2 {
            return Err("data.max_len must be at least 2".into());
        }
        self.model.validate().map_err(|e| match e {
            Error::Config(m) => m,
            other => other.to_string(),
        })?;
        if let Some(h) = self.data.head_tokens {
            if h >= self.data.max_len {
                return Err(format!(
                    "data.head_tokens ({h}) must be below data.max_len ({})",
                    self.data.max_len
                ));
            }
        }
        Ok(())
    }

    /// The config as TOML, as saved in the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config always serializes")
    }
}

/// Applies one `a.b.c=value` override to a TOML table.
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--set {spec:?}: expected key=value")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(Error::Config(format!("--set {spec:?}: empty key")));
    }
    let value = parse_value(raw.trim());
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("non-empty key");
    let mut here = table;
    for part in parts {
        let entry = here
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(Error::Config(format!("--set {key}: {part} is not a table"))),
        };
    }
    here.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment; a bare word is a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The dtype the forward and backward passes compute in (`train.precision`).
///
/// Under `bf16` and `f16` the master weights stay f32 in the model's `VarMap` and
/// the optimizers keep f32 state; every layer casts its weights to the compute dtype
/// where it uses them (the cast's backward returns f32 gradients), layer norms and
/// softmaxes normalize in f32, LSTM recurrences run in f32, and logits come out as
/// f32, so losses accumulate in f32. `f16` has no loss scaling: prefer `bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout. The default.
    #[default]
    F32,
    /// bfloat16 compute, f32 master weights.
    Bf16,
    /// IEEE half compute, f32 master weights.
    F16,
}

impl Precision {
    /// The compute dtype.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }

    /// Whether this is the default, f32.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The name as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            other => Err(format!(
                "unknown precision {other:?}: expected f32, bf16 or f16"
            )),
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(spec: &str) -> std::result::Result<DeviceSpec, String> {
    match spec {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        "metal" => Ok(DeviceSpec::Metal),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
            _ => Err(format!(
                "train.device must be cpu, cuda, cuda:N or metal, got {s:?}"
            )),
        },
    }
}

/// A device named in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device N (needs the `cuda` feature).
    Cuda(usize),
    /// The Metal device (needs the `metal` feature).
    Metal,
}

impl DeviceSpec {
    /// Opens the device; a build without the backend's feature says so.
    ///
    /// One device per process: the first call for a spec opens it, later calls
    /// return a clone of that same device object. Tensors on two separately opened
    /// CUDA or Metal devices cannot meet in one op (candle compares the device
    /// objects, not the ordinals), so `compare`, which trains runs and then loads
    /// them for its report, must use the one device throughout.
    pub fn open(self) -> Result<candle_core::Device> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static OPENED: OnceLock<Mutex<HashMap<DeviceSpec, candle_core::Device>>> = OnceLock::new();
        let mut opened = OPENED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(device) = opened.get(&self) {
            return Ok(device.clone());
        }
        let device = match self {
            DeviceSpec::Cpu => candle_core::Device::Cpu,
            DeviceSpec::Cuda(i) => candle_core::Device::new_cuda(i).map_err(|e| {
                Error::Config(format!("cannot open cuda:{i} ({e}); build with `--features cuda` on a machine with a GPU"))
            })?,
            DeviceSpec::Metal => candle_core::Device::new_metal(0).map_err(|e| {
                Error::Config(format!("cannot open metal ({e}); build with `--features metal` on macOS"))
            })?,
        };
        opened.insert(self, device.clone());
        Ok(device)
    }
}

/// Opens the device a run directory was trained on (`train.device` of its saved
/// `config.toml`), for loading the run with [`crate::train::classify::load_run`]
/// or [`crate::train::translate::load_run`]; see [`DeviceSpec::open`].
///
/// # Errors
/// As [`RunConfig::load`] for the run's `config.toml`; [`Error::Config`] if the
/// device cannot be opened.
pub fn run_device(run: &Path) -> Result<candle_core::Device> {
    let config = RunConfig::load(&run.join("config.toml"), &[])?;
    parse_device(&config.train.device)
        .map_err(Error::Config)?
        .open()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[data]\ndataset = \"sst5\"\n[model]\nkind = \"bilstm\"\n";

    #[test]
    fn defaults_and_overrides() {
        let c = RunConfig::from_toml(MIN, &[], "x.toml").unwrap();
        assert_eq!(c.train.batch_size, 32);
        assert_eq!(c.train.objective, ObjectiveKind::Ce);
        let c = RunConfig::from_toml(
            MIN,
            &[
                "train.objective=cot".into(),
                "train.optimizer.lr=0.01".into(),
                "train.batch_size=8".into(),
                "data.train_split=train".into(),
            ],
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.train.objective, ObjectiveKind::Cot);
        assert_eq!(c.train.optimizer.lr(), 0.01);
        assert_eq!(c.train.batch_size, 8);
        // Round trip through the saved form.
        let again = RunConfig::from_toml(&c.to_toml(), &[], "saved").unwrap();
        assert_eq!(again, c);
        // The default precision is not written, so saved configs read as before.
        assert!(!c.to_toml().contains("precision"));
        let c = RunConfig::from_toml(MIN, &["train.precision=bf16".into()], "x.toml").unwrap();
        assert_eq!(c.train.precision, Precision::Bf16);
        assert_eq!(RunConfig::from_toml(&c.to_toml(), &[], "saved").unwrap(), c);
    }

    #[test]
    fn errors_name_the_key() {
        let e = RunConfig::from_toml(&format!("{MIN}[train]\nbatchsize = 3\n"), &[], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("batchsize"), "{e}");
        let e = RunConfig::from_toml(MIN, &["train.batch_size=\"many\"".into()], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch_size") || e.contains("invalid type"),
            "{e}"
        );
        let e = RunConfig::from_toml(MIN, &["train.batch_size=0".into()], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.batch_size must be at least 1"), "{e}");
        let e = RunConfig::from_toml(MIN, &["train.device=tpu".into()], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.device"), "{e}");
        let e = RunConfig::from_toml(MIN, &["train.precision=fp8".into()], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("fp8"), "{e}");
        assert!(RunConfig::from_toml(MIN, &["nokey".into()], "c").is_err());
        for bad in ["0", "-1", "nan"] {
            let e = RunConfig::from_toml(
                MIN,
                &[format!("train.complement_lr_scale={bad}")],
                "cfg.toml",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("train.complement_lr_scale must be a number above 0"),
                "{e}"
            );
        }
    }

    #[test]
    fn complement_lr_scale_defaults_to_one_and_is_saved_only_when_set() {
        let c = RunConfig::from_toml(MIN, &[], "c").unwrap();
        assert_eq!(c.train.complement_lr_scale, ComplementLrScale::Fixed(1.0));
        assert!(!c.to_toml().contains("complement_lr_scale"));
        let c = RunConfig::from_toml(MIN, &["train.complement_lr_scale=0.1".into()], "c").unwrap();
        assert_eq!(
            RunConfig::from_toml(&c.to_toml(), &[], "saved")
                .unwrap()
                .train
                .complement_lr_scale,
            ComplementLrScale::Fixed(0.1)
        );
        // Integers read as numbers; "auto" round-trips; other words are refused with the key.
        let c = RunConfig::from_toml(MIN, &["train.complement_lr_scale=2".into()], "c").unwrap();
        assert_eq!(c.train.complement_lr_scale, ComplementLrScale::Fixed(2.0));
        let c = RunConfig::from_toml(MIN, &["train.complement_lr_scale=auto".into()], "c").unwrap();
        assert_eq!(c.train.complement_lr_scale, ComplementLrScale::Auto);
        assert!(
            c.to_toml().contains("complement_lr_scale = \"auto\""),
            "{}",
            c.to_toml()
        );
        assert_eq!(RunConfig::from_toml(&c.to_toml(), &[], "saved").unwrap(), c);
        let e = RunConfig::from_toml(MIN, &["train.complement_lr_scale=big".into()], "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cfg.toml") && e.contains("auto") && e.contains("big"),
            "{e}"
        );
    }

    #[test]
    fn cot_joint_and_its_weight() {
        let c = RunConfig::from_toml(
            MIN,
            &[
                "train.objective=cot-joint".into(),
                "train.complement_weight=0.5".into(),
            ],
            "c",
        )
        .unwrap();
        assert_eq!(c.train.objective, ObjectiveKind::CotJoint);
        assert_eq!(c.train.complement_weight, 0.5);
        assert_eq!(RunConfig::from_toml(&c.to_toml(), &[], "saved").unwrap(), c);
        assert!(!RunConfig::from_toml(MIN, &[], "c")
            .unwrap()
            .to_toml()
            .contains("complement_weight"));
        for bad in ["-1", "nan", "inf"] {
            let e =
                RunConfig::from_toml(MIN, &[format!("train.complement_weight={bad}")], "cfg.toml")
                    .unwrap_err()
                    .to_string();
            assert!(
                e.contains("train.complement_weight must be a number >= 0"),
                "{e}"
            );
        }
        for k in ObjectiveKind::ALL {
            assert_eq!(k.name().parse::<ObjectiveKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
    }

    /// The library's decoding defaults and a config's `[decode]` defaults were two
    /// numbers once (max_len_a 1.2 and 1.5): both now read the constants in `decode`.
    #[test]
    fn decode_settings_defaults_match_decode_options() {
        let settings = DecodeSettings::default();
        let options = crate::decode::DecodeOptions::new(1, 2, 0);
        assert_eq!(settings.beam, options.beam);
        assert_eq!(settings.max_len_a, options.max_len_a);
        assert_eq!(settings.max_len_b, options.max_len_b);
        assert_eq!(settings.length_penalty, options.length_penalty);
    }

    /// Every open of a spec hands out the same device object (one per process),
    /// so tensors of a run trained and then reloaded in one process can meet.
    #[test]
    fn a_device_is_opened_once_per_process() {
        let a = DeviceSpec::Cpu.open().unwrap();
        let b = DeviceSpec::Cpu.open().unwrap();
        assert!(a.same_device(&b));
        #[cfg(feature = "cuda")]
        if let (Ok(a), Ok(b)) = (DeviceSpec::Cuda(0).open(), DeviceSpec::Cuda(0).open()) {
            assert!(a.same_device(&b), "cuda:0 was opened twice");
        }
    }
}
