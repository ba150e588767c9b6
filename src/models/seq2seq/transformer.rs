//! A pre-norm Transformer encoder-decoder (Vaswani et al. 2017, with layer norms
//! before each sub-layer and a final one per stack, as fairseq's
//! `--encoder-normalize-before`).
//!
//! - Embeddings scaled by √d_model plus sinusoidal positions, then dropout. With
//!   `tie_embeddings` (the default) one table `[V, d]` serves the source, the target
//!   and the output projection (a joint tokenizer makes this possible).
//! - Encoder layer: `x + drop(SelfAttn(LN(x)))`, `x + drop(FFN(LN(x)))`.
//! - Decoder layer: causal self-attention, cross-attention (queries from the
//!   decoder, keys/values from the encoder output, source padding masked), FFN;
//!   same residual form.
//! - Incremental decoding caches each decoder layer's self-attention keys and values
//!   (one row per hypothesis) and the cross-attention keys and values of the
//!   encoder output, computed once in `encode`.
//!
//! Only ops that backpropagate: [`LayerNorm`], [`layers::softmax_last_dim`], the
//! activation of [`layers::Activation`].

use crate::models::layers::Embedding;
use candle_core::{Module, Result, Tensor};

use super::select_rows;
use crate::models::fused;
use crate::models::layers::{
    self, Activation, Dropout, FeedForward, LayerNorm, MultiHeadAttention, SharedRng,
};
use crate::models::params::{Init, Params};

/// Configuration of the Transformer encoder-decoder (TOML `[model]` with
/// `kind = "transformer"`).
///
/// The model's variables: `embedding.weight` (tied; N(0, 1/d)) or
/// `encoder.embedding.weight`, `decoder.embedding.weight` and `output.weight`
/// (untied); `encoder.layers.{i}.attention.{query,key,value,output}.{weight,bias}`,
/// `encoder.layers.{i}.{attention_norm,ffn_norm}.*`,
/// `encoder.layers.{i}.ffn.{up,down}.*`, `encoder.final_norm.*`;
/// `decoder.layers.{i}.{self_attention,cross_attention}.{query,key,value,output}.*`,
/// `decoder.layers.{i}.{self_attention_norm,cross_attention_norm,ffn_norm}.*`,
/// `decoder.layers.{i}.ffn.{up,down}.*`, `decoder.final_norm.*`. Linear layers use
/// PyTorch's default init.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSeq2SeqConfig {
    /// Model width d. Default 256.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Attention heads (must divide `d_model`). Default 4.
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Encoder layers. Default 3.
    #[serde(default = "default_layers")]
    pub encoder_layers: usize,
    /// Decoder layers. Default 3.
    #[serde(default = "default_layers")]
    pub decoder_layers: usize,
    /// Inner size of the feed-forward blocks. Default 1024.
    #[serde(default = "default_ffn")]
    pub ffn_dim: usize,
    /// Dropout on the embeddings and on every sub-layer's output, in training.
    /// Default 0.1.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Longest source, and longest target input (BOS included), accepted. Default 256.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// One embedding table for source, target and output projection. Default true.
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// Feed-forward activation: `"relu"` (Vaswani), `"gelu"` or `"gelu_tanh"`.
    /// Default `"relu"`.
    #[serde(default = "default_activation")]
    pub activation: Activation,
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
    3
}
fn default_ffn() -> usize {
    1024
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_len() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_activation() -> Activation {
    Activation::Relu
}
fn default_eps() -> f64 {
    1e-5
}

impl Default for TransformerSeq2SeqConfig {
    fn default() -> Self {
        Self {
            d_model: default_d_model(),
            heads: default_heads(),
            encoder_layers: default_layers(),
            decoder_layers: default_layers(),
            ffn_dim: default_ffn(),
            dropout: default_dropout(),
            max_len: default_max_len(),
            tie_embeddings: default_true(),
            activation: default_activation(),
            layer_norm_eps: default_eps(),
        }
    }
}

impl TransformerSeq2SeqConfig {
    /// Checks every field; the message names the key.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let err = |m: String| Err(crate::Error::Config(m));
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!(
                "model.dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.heads) {
            return err(format!(
                "model.d_model ({}) must be a positive multiple of model.heads ({})",
                self.d_model, self.heads
            ));
        }
        for (k, v) in [
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
            ("ffn_dim", self.ffn_dim),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                return err(format!("model.{k} must be positive"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return err(format!(
                "model.layer_norm_eps must be > 0, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct EncLayer {
    attn: MultiHeadAttention,
    ln_attn: LayerNorm,
    ffn: FeedForward,
    ln_ffn: LayerNorm,
}

#[derive(Debug, Clone)]
struct DecLayer {
    self_attn: MultiHeadAttention,
    ln_self: LayerNorm,
    cross_attn: MultiHeadAttention,
    ln_cross: LayerNorm,
    ffn: FeedForward,
    ln_ffn: LayerNorm,
}

/// The network. Variables: `embedding.weight` (tied) or
/// `encoder.embedding.weight`, `decoder.embedding.weight`, `output.weight`;
/// `encoder.layers.{i}.attention.{query,key,value,output}.*`,
/// `encoder.layers.{i}.{attention_norm,ffn_norm}.*`, `encoder.layers.{i}.ffn.{up,down}.*`,
/// `encoder.final_norm.*`; `decoder.layers.{i}.{self_attention,cross_attention}.*`,
/// `decoder.layers.{i}.{self_attention_norm,cross_attention_norm,ffn_norm}.*`,
/// `decoder.layers.{i}.ffn.{up,down}.*`, `decoder.final_norm.*`.
#[derive(Debug, Clone)]
pub(crate) struct TransformerSeq2Seq {
    src_embedding: Embedding,
    tgt_embedding: Embedding,
    out_w: Tensor,
    positions: Tensor,
    encoder: Vec<EncLayer>,
    enc_norm: LayerNorm,
    decoder: Vec<DecLayer>,
    dec_norm: LayerNorm,
    dropout: Dropout,
    d_model: usize,
}

/// The encoder output as the decoder needs it, one row per hypothesis.
#[derive(Debug, Clone)]
pub(crate) struct TransformerEncoded {
    /// Source key padding bias `[N, 1, 1, S]`.
    bias: Tensor,
    /// Per decoder layer, the cross-attention keys and values packed as `[N, S, 2·d]`.
    cross: Vec<Tensor>,
}

impl TransformerEncoded {
    pub(crate) fn select(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            bias: select_rows(&self.bias, idx)?,
            cross: self
                .cross
                .iter()
                .map(|kv| select_rows(kv, idx))
                .collect::<Result<_>>()?,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.bias.dim(0).unwrap_or(0)
    }
}

/// The decoder's cache: per layer the self-attention keys and values of every
/// position so far `[N, heads, t, dh]` (`None` before the first step).
#[derive(Debug, Clone)]
pub(crate) struct TransformerState {
    cache: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
    rows: usize,
}

impl TransformerState {
    pub(crate) fn select(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            cache: self
                .cache
                .iter()
                .map(|kv| {
                    kv.as_ref()
                        .map(|(k, v)| Ok((select_rows(k, idx)?, select_rows(v, idx)?)))
                        .transpose()
                })
                .collect::<Result<_>>()?,
            pos: self.pos,
            rows: idx.dim(0)?,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
}

impl TransformerSeq2Seq {
    pub(crate) fn build(
        cfg: &TransformerSeq2SeqConfig,
        vocab: usize,
        p: &Params,
        rng: SharedRng,
    ) -> Result<Self> {
        let d = cfg.d_model;
        let dropout = Dropout::new(cfg.dropout, rng.clone())?;
        let no_dropout = Dropout::new(0.0, rng)?;
        // N(0, 1/d), scaled by √d on input: unit-variance inputs, and logits of
        // sensible size when the table is also the output projection.
        let emb_init = Init::Normal((d as f64).powf(-0.5));
        let (src_embedding, tgt_embedding, out_w) = if cfg.tie_embeddings {
            let e = layers::embedding(vocab, d, emb_init, &p.pp("embedding"))?;
            (e.clone(), e.clone(), e.embeddings().clone())
        } else {
            let s = layers::embedding(vocab, d, emb_init, &p.pp("encoder").pp("embedding"))?;
            let t = layers::embedding(vocab, d, emb_init, &p.pp("decoder").pp("embedding"))?;
            let o = p
                .pp("output")
                .get((vocab, d), "weight", layers::torch_linear_init(d))?;
            (s, t, o)
        };
        let eps = cfg.layer_norm_eps;
        let lin = |i: usize, o: usize, pp: &Params| {
            layers::linear(i, o, layers::torch_linear_init(i), true, pp)
        };
        let ffn = |pp: &Params| -> Result<FeedForward> {
            Ok(FeedForward::new(
                lin(d, cfg.ffn_dim, &pp.pp("up"))?,
                lin(cfg.ffn_dim, d, &pp.pp("down"))?,
                cfg.activation,
            ))
        };
        let mut encoder = Vec::with_capacity(cfg.encoder_layers);
        for i in 0..cfg.encoder_layers {
            let lp = p.pp("encoder").pp("layers").pp(i);
            let ap = lp.pp("attention");
            encoder.push(EncLayer {
                attn: MultiHeadAttention::new(
                    lin(d, d, &ap.pp("query"))?,
                    lin(d, d, &ap.pp("key"))?,
                    lin(d, d, &ap.pp("value"))?,
                    lin(d, d, &ap.pp("output"))?,
                    cfg.heads,
                    no_dropout.clone(),
                )?,
                ln_attn: LayerNorm::build(d, eps, &lp.pp("attention_norm"))?,
                ffn: ffn(&lp.pp("ffn"))?,
                ln_ffn: LayerNorm::build(d, eps, &lp.pp("ffn_norm"))?,
            });
        }
        let enc_norm = LayerNorm::build(d, eps, &p.pp("encoder").pp("final_norm"))?;
        // The decoder's attention has no dropout on its probabilities.
        let attention = |pp: &Params| -> Result<MultiHeadAttention> {
            MultiHeadAttention::new(
                lin(d, d, &pp.pp("query"))?,
                lin(d, d, &pp.pp("key"))?,
                lin(d, d, &pp.pp("value"))?,
                lin(d, d, &pp.pp("output"))?,
                cfg.heads,
                no_dropout.clone(),
            )
        };
        let mut decoder = Vec::with_capacity(cfg.decoder_layers);
        for i in 0..cfg.decoder_layers {
            let lp = p.pp("decoder").pp("layers").pp(i);
            decoder.push(DecLayer {
                self_attn: attention(&lp.pp("self_attention"))?,
                ln_self: LayerNorm::build(d, eps, &lp.pp("self_attention_norm"))?,
                cross_attn: attention(&lp.pp("cross_attention"))?,
                ln_cross: LayerNorm::build(d, eps, &lp.pp("cross_attention_norm"))?,
                ffn: ffn(&lp.pp("ffn"))?,
                ln_ffn: LayerNorm::build(d, eps, &lp.pp("ffn_norm"))?,
            });
        }
        let dec_norm = LayerNorm::build(d, eps, &p.pp("decoder").pp("final_norm"))?;
        let positions = layers::sinusoidal_positions(cfg.max_len, d, p.dtype(), p.device())?;
        Ok(Self {
            src_embedding,
            tgt_embedding,
            out_w,
            positions,
            encoder,
            enc_norm,
            decoder,
            dec_norm,
            dropout,
            d_model: d,
        })
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            src_embedding: layers::detach_embedding(&self.src_embedding),
            tgt_embedding: layers::detach_embedding(&self.tgt_embedding),
            out_w: self.out_w.detach(),
            positions: self.positions.clone(),
            encoder: self
                .encoder
                .iter()
                .map(|l| EncLayer {
                    attn: l.attn.detached(),
                    ln_attn: l.ln_attn.detached(),
                    ffn: l.ffn.detached(),
                    ln_ffn: l.ln_ffn.detached(),
                })
                .collect(),
            enc_norm: self.enc_norm.detached(),
            decoder: self
                .decoder
                .iter()
                .map(|l| DecLayer {
                    self_attn: l.self_attn.detached(),
                    ln_self: l.ln_self.detached(),
                    cross_attn: l.cross_attn.detached(),
                    ln_cross: l.ln_cross.detached(),
                    ffn: l.ffn.detached(),
                    ln_ffn: l.ln_ffn.detached(),
                })
                .collect(),
            dec_norm: self.dec_norm.detached(),
            dropout: self.dropout.clone(),
            d_model: self.d_model,
        }
    }

    /// Longest sequence the position table covers.
    pub(crate) fn max_len(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    /// `drop(emb(ids)·√d + positions[start..start+T])` for ids `[N, T]`.
    fn embed(&self, table: &Embedding, ids: &Tensor, start: usize, train: bool) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if start + t > self.max_len() {
            candle_core::bail!(
                "transformer seq2seq: position {} exceeds max_len {}",
                start + t - 1,
                self.max_len()
            );
        }
        let x = (table.forward(ids)? * (self.d_model as f64).sqrt())?;
        let pos = self.positions.narrow(0, start, t)?.to_dtype(x.dtype())?;
        let x = x.broadcast_add(&pos)?;
        self.dropout.forward(&x, train)
    }

    /// The encoder output `[B, S, d]` (after the final norm).
    fn encoder_output(&self, src: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.embed(&self.src_embedding, src, 0, train)?;
        let bias = layers::key_padding_bias(mask, x.dtype())?;
        for l in &self.encoder {
            let a = l.attn.forward(&l.ln_attn.forward(&x)?, &bias, train)?;
            x = (&x + self.dropout.forward(&a, train)?)?;
            let f = l.ffn.forward(&l.ln_ffn.forward(&x)?)?;
            x = (&x + self.dropout.forward(&f, train)?)?;
        }
        self.enc_norm.forward(&x)
    }

    pub(crate) fn encode(
        &self,
        src: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Result<TransformerEncoded> {
        let memory = self.encoder_output(src, mask, train)?;
        let bias = layers::key_padding_bias(mask, memory.dtype())?;
        let cross = self
            .decoder
            .iter()
            .map(|l| l.cross_attn.cross_key_values(&memory))
            .collect::<Result<_>>()?;
        Ok(TransformerEncoded { bias, cross })
    }

    /// Runs the decoder stack over `y [N, T, d]` (embedded): teacher-forced with a
    /// causal mask when `cache` is `None`, else one step that attends to the cached
    /// self-attention keys and values (and extends them).
    fn decode_layers(
        &self,
        mut y: Tensor,
        enc: &TransformerEncoded,
        mut cache: Option<&mut Vec<Option<(Tensor, Tensor)>>>,
        train: bool,
    ) -> Result<Tensor> {
        for (i, l) in self.decoder.iter().enumerate() {
            let h = l.ln_self.forward(&y)?;
            // No dropout on the attention probabilities in this model.
            let a = match cache.as_deref_mut() {
                None => l.self_attn.forward_causal(&h, false)?,
                Some(cache) => {
                    let (mut k, mut v) = l.self_attn.key_values(&h)?;
                    if let Some((pk, pv)) = &cache[i] {
                        k = Tensor::cat(&[pk, &k], 2)?;
                        v = Tensor::cat(&[pv, &v], 2)?;
                    }
                    cache[i] = Some((k.clone(), v.clone()));
                    l.self_attn.attend(&h, &k, &v, None, false)?
                }
            };
            y = (&y + self.dropout.forward(&a, train)?)?;
            let h = l.ln_cross.forward(&y)?;
            let a = l
                .cross_attn
                .cross_attend(&h, &enc.cross[i], &enc.bias, false)?;
            y = (&y + self.dropout.forward(&a, train)?)?;
            let f = l.ffn.forward(&l.ln_ffn.forward(&y)?)?;
            y = (&y + self.dropout.forward(&f, train)?)?;
        }
        self.dec_norm.forward(&y)
    }

    /// `[N, d]` → logits `[N, V]`.
    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let w = self.out_w.to_dtype(y.dtype())?;
        if fused::supported(y) {
            // The same bits; the weight's gradient written in its own layout.
            return fused::matmul_t(y, &w);
        }
        y.matmul(&w.t()?)
    }

    /// Teacher-forced decoder outputs `[B, T, d]` (after the final norm), the input
    /// of the output projection.
    pub(crate) fn forward_hidden(
        &self,
        src: &Tensor,
        mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let enc = self.encode(src, mask, train)?;
        let y = self.embed(&self.tgt_embedding, tgt_in, 0, train)?;
        self.decode_layers(y, &enc, None, train)
    }

    /// The output projection's weight `[V, d]` (the shared embedding when tied); no
    /// bias.
    pub(crate) fn output_layer(&self) -> (Tensor, Option<Tensor>) {
        (self.out_w.clone(), None)
    }

    /// Teacher-forced logits `[B, T, V]`.
    pub(crate) fn forward(
        &self,
        src: &Tensor,
        mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let y = self.forward_hidden(src, mask, tgt_in, train)?;
        let (b, t, d) = y.dims3()?;
        let v = self.out_w.dim(0)?;
        self.project(&y.reshape((b * t, d))?)?.reshape((b, t, v))
    }

    pub(crate) fn start(&self, enc: &TransformerEncoded) -> TransformerState {
        TransformerState {
            cache: vec![None; self.decoder.len()],
            pos: 0,
            rows: enc.rows(),
        }
    }

    /// One evaluation step with the key/value cache: logits `[N, V]`.
    pub(crate) fn step(
        &self,
        enc: &TransformerEncoded,
        st: &TransformerState,
        prev: &Tensor,
    ) -> Result<(Tensor, TransformerState)> {
        let n = prev.dim(0)?;
        let y = self.embed(&self.tgt_embedding, &prev.reshape((n, 1))?, st.pos, false)?;
        let mut cache = st.cache.clone();
        let y = self.decode_layers(y, enc, Some(&mut cache), false)?;
        let logits = self.project(&y.reshape((n, self.d_model))?)?;
        Ok((
            logits,
            TransformerState {
                cache,
                pos: st.pos + 1,
                rows: n,
            },
        ))
    }
}
