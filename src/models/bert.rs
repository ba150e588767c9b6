//! A BERT-family encoder (BERT, MiniLM, ...) that fine-tunes end to end, with a
//! classification head.
//!
//! candle-transformers' `BertModel` uses candle's fast `LayerNorm`, which records no
//! backward op, so fine-tuning it trains only the head. This one is built from
//! [`super::layers`] and loads the same HF checkpoints (`config.json` +
//! `model.safetensors`) by tensor name, with or without the `bert.` prefix.
//!
//! Variable names are those of HF `BertForSequenceClassification`:
//! `bert.embeddings.*`, `bert.encoder.layer.{i}.*`, `bert.pooler.dense.*` and
//! `classifier.{weight,bias}`, so a saved model loads into candle-transformers'
//! `BertModel` (which finds the `bert.` prefix through `model_type = "bert"`) and
//! into HF transformers. The head is new (initialised N(0, initializer_range²), bias 0)
//! unless the checkpoint has a `classifier.*` of the right shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::layers::{Embedding, Linear};
use candle_core::{Device, Module, Result, Tensor};

use super::layers::{
    self, Activation, Dropout, FeedForward, LayerNorm, MultiHeadAttention, SharedRng,
};
use super::params::{Init, Params};

/// The fields of an HF BERT `config.json` that the encoder needs; other keys are
/// ignored (HF configs carry many).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct HfBertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Feed-forward activation (`"gelu"`, `"gelu_new"`, `"gelu_pytorch_tanh"`, `"relu"`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout on embeddings and sub-layer outputs.
    #[serde(default = "default_drop")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_drop")]
    pub attention_probs_dropout_prob: f64,
    /// Position table size.
    pub max_position_embeddings: usize,
    /// Token type table size.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Std of the normal init of new weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Layer norm epsilon.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Only `"absolute"` is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_drop() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl HfBertConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| crate::Error::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            msg: e.to_string(),
        })?;
        let bad = |msg: String| crate::Error::Parse {
            path: path.to_path_buf(),
            line: 1,
            msg,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                cfg.position_embedding_type
            )));
        }
        cfg.activation().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => candle_core::bail!("hidden_act {other:?} is not supported"),
        }
    }
}

/// How BERT's outputs become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BertPooling {
    /// The `[CLS]` (first) position's hidden state.
    Cls,
    /// Mean over real positions (sentence-transformers' pooling for MiniLM).
    #[default]
    Mean,
    /// HF's pooler: `tanh(dense([CLS]))`, as `BertForSequenceClassification`.
    Pooler,
}

/// Configuration of [`BertClassifier`] (TOML `[model]` with `kind = "bert"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// Directory with `config.json` and `model.safetensors` (a hub id is resolved to
    /// such a directory by the caller). Required, no default.
    pub path: PathBuf,
    /// Pooling: `"cls"`, `"mean"` or `"pooler"`. Default `"mean"`.
    #[serde(default)]
    pub pooling: BertPooling,
    /// Dropout before the classification layer, in training. Default 0.1.
    #[serde(default = "default_drop")]
    pub classifier_dropout: f64,
    /// Overrides `hidden_dropout_prob` of `config.json`. Default: unset (use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_dropout: Option<f64>,
    /// Overrides `attention_probs_dropout_prob` of `config.json`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_dropout: Option<f64>,
}

impl BertConfig {
    /// A config for the model in `path` with every other field at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            pooling: BertPooling::default(),
            classifier_dropout: default_drop(),
            hidden_dropout: None,
            attention_dropout: None,
        }
    }
}

/// Reads an HF BERT safetensors file and renames its tensors to the canonical
/// `bert.`-prefixed names: accepts checkpoints with or without the `bert.` prefix and
/// TF-era `LayerNorm.gamma`/`beta`. Keeps `classifier.*`; drops everything else
/// (`position_ids`, MLM/NSP heads).
pub fn load_hf_tensors(path: &Path) -> crate::Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(crate::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let raw = candle_core::safetensors::load(path, &Device::Cpu)?;
    Ok(canonical_names(raw))
}

fn canonical_names(raw: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (name, t) in raw {
        let name = name
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias");
        let base = name.strip_prefix("bert.").unwrap_or(&name);
        if name.starts_with("classifier.") {
            out.insert(name.clone(), t);
        } else if (base.starts_with("embeddings.")
            || base.starts_with("encoder.")
            || base.starts_with("pooler."))
            && base != "embeddings.position_ids"
        {
            out.insert(format!("bert.{base}"), t);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct BertLayer {
    attn: MultiHeadAttention,
    attn_norm: LayerNorm,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

/// The BERT encoder (embeddings + post-norm layers), trainable end to end.
#[derive(Debug, Clone)]
pub struct Bert {
    word: Embedding,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<BertLayer>,
    dropout: Dropout,
}

impl Bert {
    /// Builds the encoder under `p` (which should be at the `bert` prefix). Every
    /// tensor must come from the pretrained map when `require_pretrained`.
    pub fn build(
        cfg: &HfBertConfig,
        p: &Params,
        hidden_dropout: f64,
        attention_dropout: f64,
        rng: SharedRng,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let init = Init::Normal(cfg.initializer_range);
        let e = p.pp("embeddings");
        let word = layers::embedding(cfg.vocab_size, d, init, &e.pp("word_embeddings"))?;
        let position =
            e.pp("position_embeddings")
                .get((cfg.max_position_embeddings, d), "weight", init)?;
        let token_type =
            e.pp("token_type_embeddings")
                .get((cfg.type_vocab_size, d), "weight", init)?;
        let eps = cfg.layer_norm_eps;
        let emb_norm = LayerNorm::build(d, eps, &e.pp("LayerNorm"))?;
        let act = cfg.activation()?;
        let attn_drop = Dropout::new(attention_dropout, rng.clone())?;
        let mut ls = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = p.pp("encoder").pp("layer").pp(i);
            let lin = |i: usize, o: usize, pp: Params| layers::linear(i, o, init, true, &pp);
            let sp = lp.pp("attention").pp("self");
            let op = lp.pp("attention").pp("output");
            let attn = MultiHeadAttention::new(
                lin(d, d, sp.pp("query"))?,
                lin(d, d, sp.pp("key"))?,
                lin(d, d, sp.pp("value"))?,
                lin(d, d, op.pp("dense"))?,
                cfg.num_attention_heads,
                attn_drop.clone(),
            )?;
            let attn_norm = LayerNorm::build(d, eps, &op.pp("LayerNorm"))?;
            let ffn = FeedForward::new(
                lin(d, cfg.intermediate_size, lp.pp("intermediate").pp("dense"))?,
                lin(cfg.intermediate_size, d, lp.pp("output").pp("dense"))?,
                act,
            );
            let ffn_norm = LayerNorm::build(d, eps, &lp.pp("output").pp("LayerNorm"))?;
            ls.push(BertLayer {
                attn,
                attn_norm,
                ffn,
                ffn_norm,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers: ls,
            dropout: Dropout::new(hidden_dropout, rng)?,
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            word: layers::detach_embedding(&self.word),
            position: self.position.detach(),
            token_type: self.token_type.detach(),
            emb_norm: self.emb_norm.detached(),
            layers: self
                .layers
                .iter()
                .map(|l| BertLayer {
                    attn: l.attn.detached(),
                    attn_norm: l.attn_norm.detached(),
                    ffn: l.ffn.detached(),
                    ffn_norm: l.ffn_norm.detached(),
                })
                .collect(),
            dropout: self.dropout.clone(),
        }
    }

    /// Hidden states `[B, T, D]` for ids `[B, T]` and mask `[B, T]` (token type 0
    /// everywhere, positions 0..T).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(ids)?, mask, train)
    }

    /// The word embeddings `[B, T, D]` of ids `[B, T]`: the lookup alone, before
    /// positions, token types and the embedding layer norm (what
    /// [`Bert::forward_embeddings`] takes).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.word.forward(ids)
    }

    pub(crate) fn word_embedding(&self) -> &layers::Embedding {
        &self.word
    }

    /// As [`Bert::forward`], from word embeddings `[B, T, D]` (as [`Bert::embed`]
    /// gives them, or perturbed); positions, token types and the embedding layer
    /// norm are applied here.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t, _) = emb.dims3()?;
        let max = self.position.dim(0)?;
        if t > max {
            candle_core::bail!("bert: sequence length {t} exceeds max_position_embeddings {max}");
        }
        let d = self.position.dim(1)?;
        let extra =
            (self.position.narrow(0, 0, t)? + self.token_type.get(0)?.broadcast_as((t, d))?)?;
        let x = layers::add_bias(emb, &extra.to_dtype(emb.dtype())?)?;
        let mut x = self.dropout.forward(&self.emb_norm.forward(&x)?, train)?;
        let bias = layers::key_padding_bias(mask, x.dtype())?;
        debug_assert_eq!(bias.dims(), &[b, 1, 1, t]);
        for l in &self.layers {
            let a = l.attn.forward(&x, &bias, train)?;
            x = l
                .attn_norm
                .forward(&(self.dropout.forward(&a, train)? + &x)?)?;
            let f = l.ffn.forward(&x)?;
            x = l
                .ffn_norm
                .forward(&(self.dropout.forward(&f, train)? + &x)?)?;
        }
        Ok(x)
    }
}

/// [`Bert`] → pooling → dropout → `classifier` linear, giving logits `[B, K]`.
#[derive(Debug, Clone)]
pub struct BertClassifier {
    bert: Bert,
    pooler: Option<Linear>,
    classifier: Linear,
    dropout: Dropout,
    pooling: BertPooling,
    /// Checkpoint tensors the model does not train (the pooler when unused), written
    /// back on save so the checkpoint stays complete.
    frozen: HashMap<String, Tensor>,
    hf_config: HfBertConfig,
}

impl BertClassifier {
    /// Loads `cfg.path/config.json` and `cfg.path/model.safetensors` into `varmap`
    /// (through `p`, which must be at the root prefix) and adds a `classes`-way head.
    pub fn load(
        cfg: &BertConfig,
        classes: usize,
        p: &Params,
        rng: SharedRng,
    ) -> crate::Result<Self> {
        let hf = HfBertConfig::from_file(&cfg.path.join("config.json"))?;
        let weights_path = cfg.path.join("model.safetensors");
        let tensors = load_hf_tensors(&weights_path)?;
        Self::from_tensors(cfg, &hf, tensors, &weights_path, classes, p, rng)
    }

    /// Builds the model from already loaded (canonically named, see
    /// [`load_hf_tensors`]) tensors; `source` names them in errors.
    pub fn from_tensors(
        cfg: &BertConfig,
        hf: &HfBertConfig,
        tensors: HashMap<String, Tensor>,
        source: &Path,
        classes: usize,
        p: &Params,
        rng: SharedRng,
    ) -> crate::Result<Self> {
        let checkpoint_err = |msg: String| crate::Error::Checkpoint {
            path: source.to_path_buf(),
            msg,
        };
        for (name, t) in &tensors {
            if !t.dtype().is_float() {
                return Err(checkpoint_err(format!(
                    "tensor {name} has dtype {:?}",
                    t.dtype()
                )));
            }
        }
        let p = p.clone().with_pretrained(tensors.clone());
        let hidden_dropout = cfg.hidden_dropout.unwrap_or(hf.hidden_dropout_prob);
        let attention_dropout = cfg
            .attention_dropout
            .unwrap_or(hf.attention_probs_dropout_prob);
        let before: Vec<String> = p
            .varmap()
            .data()
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        let bert = Bert::build(
            hf,
            &p.pp("bert"),
            hidden_dropout,
            attention_dropout,
            rng.clone(),
        )?;
        // Every encoder variable must have come from the checkpoint: a silently random
        // encoder weight would train, badly, without any error.
        let missing: Vec<String> = {
            let data = p.varmap().data().lock().expect("lock");
            let mut m: Vec<String> = data
                .keys()
                .filter(|k| !before.contains(*k) && !tensors.contains_key(*k))
                .cloned()
                .collect();
            m.sort();
            m
        };
        if !missing.is_empty() {
            return Err(checkpoint_err(format!(
                "{} encoder tensor(s) missing, e.g. {} (with or without the `bert.` prefix)",
                missing.len(),
                missing[0]
            )));
        }
        let d = hf.hidden_size;
        let init = Init::Normal(hf.initializer_range);
        let mut frozen = HashMap::new();
        let pooler = if cfg.pooling == BertPooling::Pooler {
            Some(layers::linear(
                d,
                d,
                init,
                true,
                &p.pp("bert").pp("pooler").pp("dense"),
            )?)
        } else {
            for k in ["bert.pooler.dense.weight", "bert.pooler.dense.bias"] {
                if let Some(t) = tensors.get(k) {
                    frozen.insert(k.to_string(), t.to_device(p.device())?);
                }
            }
            None
        };
        if let Some(w) = tensors.get("classifier.weight") {
            if w.dims() != [classes, d] {
                return Err(checkpoint_err(format!(
                    "classifier.weight has shape {:?}, the model needs [{classes}, {d}] ({classes} classes)",
                    w.dims()
                )));
            }
        }
        let classifier = layers::linear(d, classes, init, true, &p.pp("classifier"))?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            dropout: Dropout::new(cfg.classifier_dropout, rng)?,
            pooling: cfg.pooling,
            frozen,
            hf_config: hf.clone(),
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            bert: self.bert.detached(),
            pooler: self.pooler.as_ref().map(layers::detach_linear),
            classifier: layers::detach_linear(&self.classifier),
            dropout: self.dropout.clone(),
            pooling: self.pooling,
            frozen: self.frozen.clone(),
            hf_config: self.hf_config.clone(),
        }
    }

    /// The HF config the encoder was built from.
    pub fn hf_config(&self) -> &HfBertConfig {
        &self.hf_config
    }

    /// The encoder.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// Tensors kept from the checkpoint but not trained (written back on save).
    pub fn frozen(&self) -> &HashMap<String, Tensor> {
        &self.frozen
    }

    /// The pooled sentence representation `[B, D]`.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.encode_embeddings(&self.embed(ids)?, mask, train)
    }

    /// The word embeddings `[B, T, D]` of ids `[B, T]` (see [`Bert::embed`]).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.bert.embed(ids)
    }

    pub(crate) fn word_embedding(&self) -> &layers::Embedding {
        self.bert.word_embedding()
    }

    /// As [`BertClassifier::encode`], from word embeddings `[B, T, D]`.
    pub fn encode_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bert.forward_embeddings(emb, mask, train)?;
        match self.pooling {
            BertPooling::Cls => h.narrow(1, 0, 1)?.squeeze(1),
            BertPooling::Mean => layers::masked_mean(&h, mask),
            BertPooling::Pooler => {
                let cls = h.narrow(1, 0, 1)?.squeeze(1)?;
                self.pooler
                    .as_ref()
                    .expect("pooler built for Pooler pooling")
                    .forward(&cls)?
                    .tanh()
            }
        }
    }

    /// Logits `[B, K]` for token ids `[B, T]` and mask `[B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(ids)?, mask, train)
    }

    /// Logits `[B, K]` from word embeddings `[B, T, D]` and mask `[B, T]`:
    /// `forward(ids)` is exactly `forward_embeddings(embed(ids))`.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self.encode_embeddings(emb, mask, train)?;
        self.classifier
            .forward(&self.dropout.forward(&pooled, train)?)
    }
}
