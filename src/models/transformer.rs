//! A Transformer encoder trained from scratch, and its classifier.
//!
//! Pre-norm (`x + f(LN(x))`, with a final layer norm; stable without warmup tricks)
//! or post-norm (`LN(x + f(x))`, as Vaswani et al. and BERT); sinusoidal or learned
//! absolute positions; key padding mask. Token embeddings are scaled by √d.

use super::layers::{Embedding, Linear};
use candle_core::{Module, Result, Tensor};

use super::layers::{
    self, Activation, Dropout, FeedForward, LayerNorm, MultiHeadAttention, SharedRng,
};
use super::params::{Init, Params};

/// Where the layer norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPosition {
    /// `x + f(LN(x))`, plus a final layer norm.
    #[default]
    Pre,
    /// `LN(x + f(x))`.
    Post,
}

/// How positions are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionEncoding {
    /// Fixed sin/cos features (no parameters).
    #[default]
    Sinusoidal,
    /// A learned table of `max_len` vectors.
    Learned,
}

/// How the encoder's outputs become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first position's output (BERT's `[CLS]` when the tokenizer adds one).
    Cls,
    /// Mean over the real positions.
    #[default]
    Mean,
}

/// Configuration of [`TransformerClassifier`] (TOML `[model]` with
/// `kind = "transformer"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Model width d. Default 256.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Attention heads (must divide `d_model`). Default 4.
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Encoder layers. Default 4.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Inner size of the feed-forward blocks. Default 1024.
    #[serde(default = "default_ffn")]
    pub ffn_dim: usize,
    /// Dropout on embeddings, sub-layer outputs and before the output layer, in
    /// training. Default 0.1.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout on the attention probabilities, in training. Default 0.1.
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    /// `"pre"` or `"post"` layer norm. Default `"pre"`.
    #[serde(default)]
    pub norm: NormPosition,
    /// `"sinusoidal"` or `"learned"` positions. Default `"sinusoidal"`.
    #[serde(default)]
    pub positions: PositionEncoding,
    /// Longest sequence accepted. Default 512.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Feed-forward activation: `"gelu"`, `"gelu_tanh"` or `"relu"`. Default `"gelu"`.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Pooling: `"cls"` or `"mean"`. Default `"mean"`.
    #[serde(default)]
    pub pooling: Pooling,
    /// Layer norm epsilon. Default 1e-5.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_d_model() -> usize {
    256
}
fn default_heads() -> usize {
    4
}
fn default_layers() -> usize {
    4
}
fn default_ffn() -> usize {
    1024
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_len() -> usize {
    512
}
fn default_activation() -> Activation {
    Activation::Gelu
}
fn default_eps() -> f64 {
    1e-5
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            d_model: default_d_model(),
            heads: default_heads(),
            layers: default_layers(),
            ffn_dim: default_ffn(),
            dropout: default_dropout(),
            attention_dropout: default_dropout(),
            norm: NormPosition::default(),
            positions: PositionEncoding::default(),
            max_len: default_max_len(),
            activation: default_activation(),
            pooling: Pooling::default(),
            layer_norm_eps: default_eps(),
        }
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: MultiHeadAttention,
    ln_attn: LayerNorm,
    ffn: FeedForward,
    ln_ffn: LayerNorm,
}

/// A stack of Transformer encoder layers with embeddings.
///
/// Variables: `embedding.weight`, `positions.weight` (learned positions only),
/// `layers.{i}.attention.{query,key,value,output}.{weight,bias}`,
/// `layers.{i}.attention_norm.*`, `layers.{i}.ffn.{up,down}.*`, `layers.{i}.ffn_norm.*`,
/// `final_norm.*` (pre-norm only).
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    embedding: Embedding,
    positions: Tensor,
    learned_positions: bool,
    layers: Vec<EncoderLayer>,
    final_norm: Option<LayerNorm>,
    dropout: Dropout,
    norm: NormPosition,
    d_model: usize,
}

impl TransformerEncoder {
    /// Builds the encoder for a vocabulary of `vocab` ids.
    pub fn build(
        cfg: &TransformerConfig,
        vocab: usize,
        p: &Params,
        rng: SharedRng,
    ) -> Result<Self> {
        let d = cfg.d_model;
        if cfg.heads == 0 || !d.is_multiple_of(cfg.heads) {
            candle_core::bail!(
                "transformer: d_model {d} is not divisible by heads {}",
                cfg.heads
            );
        }
        let dropout = Dropout::new(cfg.dropout, rng.clone())?;
        let attn_dropout = Dropout::new(cfg.attention_dropout, rng)?;
        // N(0, 1/d), then scaled by √d in forward: unit-variance inputs.
        let embedding = layers::embedding(
            vocab,
            d,
            Init::Normal((d as f64).powf(-0.5)),
            &p.pp("embedding"),
        )?;
        let (positions, learned_positions) = match cfg.positions {
            PositionEncoding::Sinusoidal => (
                layers::sinusoidal_positions(cfg.max_len, d, p.dtype(), p.device())?,
                false,
            ),
            PositionEncoding::Learned => (
                p.pp("positions")
                    .get((cfg.max_len, d), "weight", Init::Normal(0.02))?,
                true,
            ),
        };
        let mut ls = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let lp = p.pp("layers").pp(i);
            let ap = lp.pp("attention");
            let lin = |name: &str, i: usize, o: usize, pp: &Params| {
                layers::linear(i, o, layers::torch_linear_init(i), true, &pp.pp(name))
            };
            let attn = MultiHeadAttention::new(
                lin("query", d, d, &ap)?,
                lin("key", d, d, &ap)?,
                lin("value", d, d, &ap)?,
                lin("output", d, d, &ap)?,
                cfg.heads,
                attn_dropout.clone(),
            )?;
            let fp = lp.pp("ffn");
            let ffn = FeedForward::new(
                lin("up", d, cfg.ffn_dim, &fp)?,
                lin("down", cfg.ffn_dim, d, &fp)?,
                cfg.activation,
            );
            ls.push(EncoderLayer {
                attn,
                ln_attn: LayerNorm::build(d, cfg.layer_norm_eps, &lp.pp("attention_norm"))?,
                ffn,
                ln_ffn: LayerNorm::build(d, cfg.layer_norm_eps, &lp.pp("ffn_norm"))?,
            });
        }
        let final_norm = match cfg.norm {
            NormPosition::Pre => Some(LayerNorm::build(
                d,
                cfg.layer_norm_eps,
                &p.pp("final_norm"),
            )?),
            NormPosition::Post => None,
        };
        Ok(Self {
            embedding,
            positions,
            learned_positions,
            layers: ls,
            final_norm,
            dropout,
            norm: cfg.norm,
            d_model: d,
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            embedding: layers::detach_embedding(&self.embedding),
            positions: self.positions.detach(),
            learned_positions: self.learned_positions,
            layers: self
                .layers
                .iter()
                .map(|l| EncoderLayer {
                    attn: l.attn.detached(),
                    ln_attn: l.ln_attn.detached(),
                    ffn: l.ffn.detached(),
                    ln_ffn: l.ln_ffn.detached(),
                })
                .collect(),
            final_norm: self.final_norm.as_ref().map(|n| n.detached()),
            dropout: self.dropout.clone(),
            norm: self.norm,
            d_model: self.d_model,
        }
    }

    /// Model width.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Encodes ids `[B, T]` with mask `[B, T]` into `[B, T, d]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(ids)?, mask, train)
    }

    /// The input embeddings `[B, T, d]` of ids `[B, T]`: the table lookup, before
    /// the √d scale and the positions (what
    /// [`TransformerEncoder::forward_embeddings`] takes).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embedding.forward(ids)
    }

    pub(crate) fn word_embedding(&self) -> &layers::Embedding {
        &self.embedding
    }

    /// As [`TransformerEncoder::forward`], from input embeddings `[B, T, d]` (as
    /// [`TransformerEncoder::embed`] gives them, or perturbed); the √d scale and
    /// the positions are applied here.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (_, t, _) = emb.dims3()?;
        let max_len = self.positions.dim(0)?;
        if t > max_len {
            candle_core::bail!("transformer: sequence length {t} exceeds max_len {max_len}");
        }
        let x = (emb * (self.d_model as f64).sqrt())?;
        let pos = self.positions.narrow(0, 0, t)?;
        let pos = if self.learned_positions {
            pos
        } else {
            pos.detach()
        };
        let mut x = self
            .dropout
            .forward(&x.broadcast_add(&pos.to_dtype(x.dtype())?)?, train)?;
        let bias = layers::key_padding_bias(mask, x.dtype())?;
        for l in &self.layers {
            x = match self.norm {
                NormPosition::Pre => {
                    let a = l.attn.forward(&l.ln_attn.forward(&x)?, &bias, train)?;
                    let x = (&x + self.dropout.forward(&a, train)?)?;
                    let f = l.ffn.forward(&l.ln_ffn.forward(&x)?)?;
                    (&x + self.dropout.forward(&f, train)?)?
                }
                NormPosition::Post => {
                    let a = l.attn.forward(&x, &bias, train)?;
                    let x = l
                        .ln_attn
                        .forward(&(&x + self.dropout.forward(&a, train)?)?)?;
                    let f = l.ffn.forward(&x)?;
                    l.ln_ffn
                        .forward(&(&x + self.dropout.forward(&f, train)?)?)?
                }
            };
        }
        match &self.final_norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

/// [`TransformerEncoder`] → pooling → dropout → linear (`classifier.*`), giving
/// logits `[B, K]`.
#[derive(Debug, Clone)]
pub struct TransformerClassifier {
    encoder: TransformerEncoder,
    classifier: Linear,
    dropout: Dropout,
    pooling: Pooling,
}

impl TransformerClassifier {
    /// Builds the model for a vocabulary of `vocab` ids and `classes` labels.
    pub fn build(
        cfg: &TransformerConfig,
        vocab: usize,
        classes: usize,
        p: &Params,
        rng: SharedRng,
    ) -> Result<Self> {
        let encoder = TransformerEncoder::build(cfg, vocab, p, rng.clone())?;
        let d = cfg.d_model;
        let classifier = layers::linear(
            d,
            classes,
            layers::torch_linear_init(d),
            true,
            &p.pp("classifier"),
        )?;
        Ok(Self {
            encoder,
            classifier,
            dropout: Dropout::new(cfg.dropout, rng)?,
            pooling: cfg.pooling,
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            encoder: self.encoder.detached(),
            classifier: layers::detach_linear(&self.classifier),
            dropout: self.dropout.clone(),
            pooling: self.pooling,
        }
    }

    /// The pooled sentence representation `[B, d]`.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.encoder.forward(ids, mask, train)?;
        pool(&h, mask, self.pooling)
    }

    /// Logits `[B, K]` for token ids `[B, T]` and mask `[B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(ids)?, mask, train)
    }

    /// The input embeddings `[B, T, d]` of ids `[B, T]` (see
    /// [`TransformerEncoder::embed`]).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.encoder.embed(ids)
    }

    pub(crate) fn word_embedding(&self) -> &layers::Embedding {
        self.encoder.word_embedding()
    }

    /// Logits `[B, K]` from input embeddings `[B, T, d]` and mask `[B, T]`:
    /// `forward(ids)` is exactly `forward_embeddings(embed(ids))`.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.encoder.forward_embeddings(emb, mask, train)?;
        let pooled = pool(&h, mask, self.pooling)?;
        self.classifier
            .forward(&self.dropout.forward(&pooled, train)?)
    }
}

/// Pools `h [B, T, D]` into `[B, D]`.
pub(crate) fn pool(h: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    match pooling {
        Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => layers::masked_mean(h, mask),
    }
}
