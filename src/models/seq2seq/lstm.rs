//! An attentional LSTM encoder-decoder after TensorFlow-NMT's IWSLT'15 setup
//! (Luong et al. 2015), sized for the CPU.
//!
//! - Encoder: source embedding → a stack of bidirectional LSTM layers
//!   ([`BiLstm`], the fused CPU recurrence over all time steps at once) with
//!   `hidden / 2` units per direction, so its outputs `h̄_s` have `hidden` features.
//! - Decoder: a stack of unidirectional LSTM layers of `hidden` units with **input
//!   feeding**: layer 0 reads `[emb(y_{t-1}); h̃_{t-1}]`. Luong attention over the
//!   encoder outputs of the top layer's state `h_t` (score `general`
//!   `h_tᵀ W_a h̄_s` or `scaled_dot` `h_tᵀ h̄_s / √hidden`), context
//!   `c_t = Σ_s a_ts h̄_s`, attentional vector `h̃_t = tanh(W_c [c_t; h_t])`, logits
//!   `W_out h̃_t + b_out`.
//! - Every decoder layer starts from the encoder's final state (the top layer's
//!   forward state after the last real token and backward state after the first,
//!   concatenated: `hidden` features) with a zero cell; `h̃_0 = 0`.
//! - Dropout (training only) on both embeddings, between LSTM layers (encoder and
//!   decoder) and on `h̃_t` before the output projection (the fed-back `h̃_t` is not
//!   dropped).
//!
//! The decoder cannot precompute its inputs (input feeding), so it runs step by
//! step; layer 0's embedding projection is one matmul for all steps. On the CPU each
//! step's products and attention are fused nodes that add their gradients of the
//! weights and of the encoder's keys and values into one buffer per forward pass
//! ([`fused::Shared`]), instead of autograd's new full-size sum at every step.

use std::sync::Arc;

use crate::models::layers::Embedding;
use candle_core::{Module, Result, Tensor};

use super::select_rows;
use crate::models::bilstm::BiLstm;
use crate::models::fused;
use crate::models::layers::{self, Dropout, SharedRng};
use crate::models::params::{Init, Params};

/// Luong's attention score between the decoder state `h_t` and an encoder output
/// `h̄_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionScore {
    /// `h_tᵀ W_a h̄_s` with a learned `W_a [hidden, hidden]` (Luong's "general").
    #[default]
    General,
    /// `h_tᵀ h̄_s / √hidden` (no parameters).
    ScaledDot,
}

/// Configuration of the LSTM encoder-decoder (TOML `[model]` with `kind = "lstm"`).
///
/// The model's variables: `encoder.embedding.weight`, `encoder.lstm.*` (PyTorch
/// `nn.LSTM` names, `_reverse` for the backward direction),
/// `decoder.embedding.weight`, `decoder.lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{i}`
/// (layer 0's input is `[embedding; h̃_{t-1}]`), `decoder.attention.weight`
/// (`general` only), `decoder.combine.weight` (`W_c [H, 2H]`, no bias),
/// `decoder.output.weight` (untied only) and `decoder.output.bias`. Every weight is
/// drawn from U(−0.1, 0.1) as in TF-NMT, except the encoder LSTM's (PyTorch's
/// U(−1/√(hidden/2), 1/√(hidden/2))); the output bias starts at zero.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmSeq2SeqConfig {
    /// Embedding size (source and target tables are separate). Default 256.
    #[serde(default = "default_dim")]
    pub embed_dim: usize,
    /// Decoder LSTM units and encoder output size; the bidirectional encoder has
    /// `hidden / 2` units per direction, so it must be even. Default 256.
    #[serde(default = "default_dim")]
    pub hidden: usize,
    /// Layers of the encoder (each bidirectional) and of the decoder. Default 2.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Dropout on embeddings, between LSTM layers and on `h̃_t` before the output
    /// projection, in training. Default 0.2.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Attention score: `"general"` or `"scaled_dot"`. Default `"general"`.
    #[serde(default)]
    pub attention: AttentionScore,
    /// Use the target embedding table as the output projection's weight (needs
    /// `embed_dim == hidden`). Default false.
    #[serde(default)]
    pub tie_embeddings: bool,
}

fn default_dim() -> usize {
    256
}
fn default_layers() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.2
}

impl Default for LstmSeq2SeqConfig {
    fn default() -> Self {
        Self {
            embed_dim: default_dim(),
            hidden: default_dim(),
            layers: default_layers(),
            dropout: default_dropout(),
            attention: AttentionScore::default(),
            tie_embeddings: false,
        }
    }
}

impl LstmSeq2SeqConfig {
    /// Checks every field; the message names the key.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let err = |m: String| Err(crate::Error::Config(m));
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!(
                "model.dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.embed_dim == 0 || self.layers == 0 {
            return err("model.embed_dim and model.layers must be positive".into());
        }
        if self.hidden < 2 || !self.hidden.is_multiple_of(2) {
            return err(format!(
                "model.hidden must be even and positive (the bidirectional encoder has hidden/2 units per direction), got {}",
                self.hidden
            ));
        }
        if self.tie_embeddings && self.embed_dim != self.hidden {
            return err(format!(
                "model.tie_embeddings needs model.embed_dim ({}) == model.hidden ({})",
                self.embed_dim, self.hidden
            ));
        }
        Ok(())
    }
}

/// One decoder layer, PyTorch `nn.LSTM` names and gate order (i, f, g, o).
#[derive(Debug, Clone)]
struct DecLayer {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// The network. Variables: `encoder.embedding.weight`, `encoder.lstm.*` (PyTorch
/// names, `_reverse` for the backward direction), `decoder.embedding.weight`,
/// `decoder.lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{i}`,
/// `decoder.attention.weight` (`general` only), `decoder.combine.weight`,
/// `decoder.output.weight` (untied only), `decoder.output.bias`.
#[derive(Debug, Clone)]
pub(crate) struct LstmSeq2Seq {
    src_embedding: Embedding,
    tgt_embedding: Embedding,
    encoder: BiLstm,
    decoder: Vec<DecLayer>,
    attention: Option<Tensor>,
    combine: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    dropout: Dropout,
    hidden: usize,
    embed_dim: usize,
}

/// The encoder's output for attention, one row per hypothesis.
#[derive(Debug, Clone)]
pub(crate) struct LstmEncoded {
    /// The attention keys and values side by side, `[N, S, 2H]`: per source
    /// position `W_a h̄_s` (or `h̄_s / √H`) and then `h̄_s` (zero at padding).
    kv: Tensor,
    /// Key padding bias `[N, 1, S]`.
    bias: Tensor,
    /// The encoder's final state `[N, H]`.
    last: Tensor,
    /// The decoder's weights as its steps read them, built once when encoding for
    /// evaluation (a decode's steps reuse them), `None` in training.
    weights: Option<Arc<DecWeights>>,
}

impl LstmEncoded {
    pub(crate) fn select(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            kv: select_rows(&self.kv, idx)?,
            bias: select_rows(&self.bias, idx)?,
            last: select_rows(&self.last, idx)?,
            weights: self.weights.clone(),
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.kv.dim(0).unwrap_or(0)
    }
}

/// The decoder's recurrent state: per layer `h`, `c` `[N, H]`, and `h̃_{t-1}`.
#[derive(Debug, Clone)]
pub(crate) struct LstmState {
    h: Vec<Tensor>,
    c: Vec<Tensor>,
    feed: Tensor,
}

impl LstmState {
    pub(crate) fn select(&self, idx: &Tensor) -> Result<Self> {
        let sel = |v: &[Tensor]| -> Result<Vec<Tensor>> {
            v.iter().map(|t| select_rows(t, idx)).collect()
        };
        Ok(Self {
            h: sel(&self.h)?,
            c: sel(&self.c)?,
            feed: select_rows(&self.feed, idx)?,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.feed.dim(0).unwrap_or(0)
    }
}

/// Transposed views and summed biases, computed once per forward pass or decode.
/// The weights every step reads are [`fused::Shared`]: on the CPU the steps add
/// their gradients into one buffer each instead of autograd's new sum per step.
#[derive(Debug)]
struct DecWeights {
    /// Layer 0's embedding part `[E, 4H]`.
    w_emb_t: Tensor,
    /// Layer 0's input-feeding part of `W_ih` `[4H, H]` (contiguous).
    w_feed: fused::Shared,
    /// Layers ≥ 1's input weights `[4H, H]` (index 0 unused: `None`).
    w_ih: Vec<Option<fused::Shared>>,
    /// The recurrent weights `[4H, H]`.
    w_hh: Vec<fused::Shared>,
    /// `b_ih + b_hh` per layer `[4H]`.
    bias: Vec<Tensor>,
    /// The attentional combination `[H, 2H]`.
    combine: fused::Shared,
}

/// Luong attention of the decoder's top state `x [N, H]` over the encoder's keys
/// and values `kv [N, S, 2H]` with the key padding bias `[N, 1, S]`: the context
/// `Σ_s softmax(x · k_s + bias)_s v_s`, `[N, H]`. On the CPU one fused node whose
/// gradient of `kv` is summed in place ([`fused::cross_attention_shared`]); plain
/// candle ops elsewhere.
fn attend(x: &Tensor, kv: &fused::Shared, bias: &Tensor) -> Result<Tensor> {
    let h = x.dim(1)?;
    let q = x.unsqueeze(1)?;
    if fused::supported(x) {
        return fused::cross_attention_shared(&q, kv, Some(bias), 1, 1.0)?.squeeze(1);
    }
    let kv = kv.tensor();
    let keys_t = kv.narrow(2, 0, h)?.transpose(1, 2)?.contiguous()?;
    let values = kv.narrow(2, h, h)?.contiguous()?;
    let scores = q.matmul(&keys_t)?.broadcast_add(bias)?; // [N, 1, S]
    let probs = layers::softmax_last_dim(&scores)?;
    probs.matmul(&values)?.squeeze(1)
}

/// Layer 0's embedding part of `W_ih [4H, E + H]`, transposed: `[E, 4H]`. On the
/// CPU a strided view (gemm reads any strides). `packed` (every other device)
/// copies the slice first, so the transpose is a packed column-major matrix:
/// candle's cuBLAS matmul takes only matrices packed along one dimension and
/// refuses the view's row stride of `E + H` (seen on an H200: "matmul is only
/// supported for contiguous tensors"); Metal, untested, gets the packed copy too.
fn embedding_part_t(w_ih: &Tensor, e: usize, packed: bool) -> Result<Tensor> {
    let part = w_ih.narrow(1, 0, e)?;
    if packed {
        part.contiguous()?.t()
    } else {
        part.t()
    }
}

impl LstmSeq2Seq {
    pub(crate) fn build(
        cfg: &LstmSeq2SeqConfig,
        vocab: usize,
        p: &Params,
        rng: SharedRng,
    ) -> Result<Self> {
        let (e, h) = (cfg.embed_dim, cfg.hidden);
        let dropout = Dropout::new(cfg.dropout, rng)?;
        // TF-NMT initialises every weight from U(-0.1, 0.1).
        let init = Init::Uniform(0.1);
        let ep = p.pp("encoder");
        let dp = p.pp("decoder");
        let src_embedding = layers::embedding(vocab, e, init, &ep.pp("embedding"))?;
        let encoder = BiLstm::build(e, h / 2, cfg.layers, dropout.clone(), &ep.pp("lstm"))?;
        let tgt_embedding = layers::embedding(vocab, e, init, &dp.pp("embedding"))?;
        let lp = dp.pp("lstm");
        let mut decoder = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let input = if l == 0 { e + h } else { h };
            decoder.push(DecLayer {
                w_ih: lp.get((4 * h, input), &format!("weight_ih_l{l}"), init)?,
                w_hh: lp.get((4 * h, h), &format!("weight_hh_l{l}"), init)?,
                b_ih: lp.get(4 * h, &format!("bias_ih_l{l}"), init)?,
                b_hh: lp.get(4 * h, &format!("bias_hh_l{l}"), init)?,
            });
        }
        let attention = match cfg.attention {
            AttentionScore::General => Some(dp.pp("attention").get((h, h), "weight", init)?),
            AttentionScore::ScaledDot => None,
        };
        let combine = dp.pp("combine").get((h, 2 * h), "weight", init)?;
        let op = dp.pp("output");
        let out_w = if cfg.tie_embeddings {
            tgt_embedding.embeddings().clone()
        } else {
            op.get((vocab, h), "weight", init)?
        };
        let out_b = op.get(vocab, "bias", Init::Zeros)?;
        Ok(Self {
            src_embedding,
            tgt_embedding,
            encoder,
            decoder,
            attention,
            combine,
            out_w,
            out_b,
            dropout,
            hidden: h,
            embed_dim: e,
        })
    }

    pub(crate) fn detached(&self) -> Self {
        Self {
            src_embedding: layers::detach_embedding(&self.src_embedding),
            tgt_embedding: layers::detach_embedding(&self.tgt_embedding),
            encoder: self.encoder.detached(),
            decoder: self
                .decoder
                .iter()
                .map(|l| DecLayer {
                    w_ih: l.w_ih.detach(),
                    w_hh: l.w_hh.detach(),
                    b_ih: l.b_ih.detach(),
                    b_hh: l.b_hh.detach(),
                })
                .collect(),
            attention: self.attention.as_ref().map(|t| t.detach()),
            combine: self.combine.detach(),
            out_w: self.out_w.detach(),
            out_b: self.out_b.detach(),
            dropout: self.dropout.clone(),
            hidden: self.hidden,
            embed_dim: self.embed_dim,
        }
    }

    pub(crate) fn encode(&self, src: &Tensor, mask: &Tensor, train: bool) -> Result<LstmEncoded> {
        let (b, s) = src.dims2()?;
        let h = self.hidden;
        let emb = self
            .dropout
            .forward(&self.src_embedding.forward(src)?, train)?;
        let out = self.encoder.forward(&emb, mask, train)?;
        let memory = out.outputs;
        let keys = match &self.attention {
            Some(w) => memory
                .reshape((b * s, h))?
                .matmul(&w.t()?)?
                .reshape((b, s, h))?,
            None => (&memory * (1.0 / (h as f64).sqrt()))?,
        };
        let kv = Tensor::cat(&[&keys, &memory], 2)?;
        let bias = layers::key_padding_bias(mask, memory.dtype())?.reshape((b, 1, s))?;
        // Evaluation decodes step by step: build the decoder's weights once here.
        let weights = (!train).then(|| self.weights().map(Arc::new)).transpose()?;
        Ok(LstmEncoded {
            kv,
            bias,
            last: out.last,
            weights,
        })
    }

    pub(crate) fn start(&self, enc: &LstmEncoded) -> Result<LstmState> {
        let n = self.decoder.len();
        let zeros = enc.last.zeros_like()?;
        Ok(LstmState {
            h: vec![enc.last.clone(); n],
            c: vec![zeros.clone(); n],
            feed: zeros,
        })
    }

    fn weights(&self) -> Result<DecWeights> {
        let (e, h) = (self.embed_dim, self.hidden);
        let l0 = &self.decoder[0];
        Ok(DecWeights {
            w_emb_t: embedding_part_t(&l0.w_ih, e, !l0.w_ih.device().is_cpu())?,
            w_feed: fused::share(&l0.w_ih.narrow(1, e, h)?.contiguous()?)?,
            w_ih: self
                .decoder
                .iter()
                .enumerate()
                .map(|(i, l)| (i > 0).then(|| fused::share(&l.w_ih)).transpose())
                .collect::<Result<_>>()?,
            w_hh: self
                .decoder
                .iter()
                .map(|l| fused::share(&l.w_hh))
                .collect::<Result<_>>()?,
            bias: self
                .decoder
                .iter()
                .map(|l| &l.b_ih + &l.b_hh)
                .collect::<Result<_>>()?,
            combine: fused::share(&self.combine)?,
        })
    }

    /// One decoder step from layer 0's embedding projection `pre0 [N, 4H]` (bias
    /// included): returns `h̃_t [N, H]` and the new state.
    fn dec_step(
        &self,
        w: &DecWeights,
        pre0: &Tensor,
        st: &LstmState,
        (kv, enc): (&fused::Shared, &LstmEncoded),
        train: bool,
    ) -> Result<(Tensor, LstmState)> {
        let h = self.hidden;
        let mut hs = Vec::with_capacity(self.decoder.len());
        let mut cs = Vec::with_capacity(self.decoder.len());
        let mut x = st.feed.clone();
        for l in 0..self.decoder.len() {
            // The input's part, then the recurrent product added to it (each sum
            // rounded as `(input + bias) + recurrent` by plain additions).
            let input = match &w.w_ih[l] {
                None => fused::matmul_t_shared(&x, &w.w_feed, Some(pre0))?,
                Some(w_ih) => {
                    let xin = self.dropout.forward(&x, train)?;
                    layers::add_bias(&fused::matmul_t_shared(&xin, w_ih, None)?, &w.bias[l])?
                }
            };
            let gates = fused::matmul_t_shared(&st.h[l], &w.w_hh[l], Some(&input))?;
            let (hn, c) = if fused::supported(&gates) {
                let state = fused::lstm_step(&gates, &st.c[l])?;
                (state.get(0)?, state.get(1)?)
            } else {
                let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, h)?)?;
                let f = candle_nn::ops::sigmoid(&gates.narrow(1, h, h)?)?;
                let g = gates.narrow(1, 2 * h, h)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * h, h)?)?;
                let c = ((f * &st.c[l])? + (i * g)?)?;
                ((o * c.tanh()?)?, c)
            };
            x = hn.clone();
            hs.push(hn);
            cs.push(c);
        }
        // Luong attention of the top state over the encoder outputs.
        let ctx = attend(&x, kv, &enc.bias)?; // [N, H]
        let tilde =
            fused::matmul_t_shared(&Tensor::cat(&[&ctx, &x], 1)?, &w.combine, None)?.tanh()?;
        Ok((
            tilde.clone(),
            LstmState {
                h: hs,
                c: cs,
                feed: tilde,
            },
        ))
    }

    /// Logits `[N, V]` of `h̃ [N, H]`, in the compute dtype (the vocabulary-wide
    /// matmul is where mixed precision pays). On the CPU one [`fused::linear`] node
    /// (the same bits as the matmul and bias addition, without autograd's second
    /// `[N, V]` gradient buffer).
    fn project(&self, tilde: &Tensor) -> Result<Tensor> {
        let cd = self.tgt_embedding.compute_dtype();
        let (x, w, b) = (
            tilde.to_dtype(cd)?,
            self.out_w.to_dtype(cd)?,
            self.out_b.to_dtype(cd)?,
        );
        if fused::supported(&x) {
            return fused::linear(&x, &w, &b);
        }
        layers::add_bias(&x.matmul(&w.t()?)?, &b)
    }

    /// Layer 0's input projection of target embeddings `[N, E]` (in the compute
    /// dtype) with its bias, returned in the recurrence's dtype (the weights').
    fn project_embedding(&self, w: &DecWeights, emb: &Tensor) -> Result<Tensor> {
        let cd = emb.dtype();
        let y = emb.matmul(&w.w_emb_t.to_dtype(cd)?)?;
        layers::add_bias(&y, &w.bias[0].to_dtype(cd)?)?.to_dtype(w.bias[0].dtype())
    }

    /// Teacher-forced attentional vectors `h̃ [B, T, H]` (after the output dropout),
    /// the input of the output projection.
    pub(crate) fn forward_hidden(
        &self,
        src: &Tensor,
        mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let enc = self.encode(src, mask, train)?;
        let (b, t) = tgt_in.dims2()?;
        let (e, h) = (self.embed_dim, self.hidden);
        let w = match &enc.weights {
            Some(w) => w.clone(),
            None => Arc::new(self.weights()?),
        };
        let emb = self
            .dropout
            .forward(&self.tgt_embedding.forward(tgt_in)?, train)?;
        // Layer 0's embedding projection for every step in one matmul, time-major.
        let pre = self
            .project_embedding(&w, &emb.reshape((b * t, e))?)?
            .reshape((b, t, 4 * h))?
            .transpose(0, 1)?
            .contiguous()?;
        let mut st = self.start(&enc)?;
        let kv = fused::share(&enc.kv)?;
        let mut tildes = Vec::with_capacity(t);
        // Per-step slices whose gradients are assembled once, not padded per step.
        for pre_s in fused::unstack(&pre)? {
            let (tilde, next) = self.dec_step(&w, &pre_s, &st, (&kv, &enc), train)?;
            tildes.push(tilde);
            st = next;
        }
        let tildes = Tensor::stack(&tildes, 1)?; // [B, T, H]
        self.dropout.forward(&tildes, train)
    }

    /// The output projection's weight `[V, H]` and bias `[V]`.
    pub(crate) fn output_layer(&self) -> (Tensor, Option<Tensor>) {
        (self.out_w.clone(), Some(self.out_b.clone()))
    }

    /// Teacher-forced logits `[B, T, V]`.
    pub(crate) fn forward(
        &self,
        src: &Tensor,
        mask: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hs = self.forward_hidden(src, mask, tgt_in, train)?;
        let (b, t, h) = hs.dims3()?;
        let v = self.out_b.dim(0)?;
        self.project(&hs.reshape((b * t, h))?)?.reshape((b, t, v))
    }

    /// One evaluation step: logits `[N, V]` for the previous tokens `[N]`.
    pub(crate) fn step(
        &self,
        enc: &LstmEncoded,
        st: &LstmState,
        prev: &Tensor,
    ) -> Result<(Tensor, LstmState)> {
        let w = match &enc.weights {
            Some(w) => w.clone(),
            None => Arc::new(self.weights()?),
        };
        let emb = self.tgt_embedding.forward(prev)?;
        let pre0 = self.project_embedding(&w, &emb)?;
        let kv = fused::share(&enc.kv)?;
        let (tilde, next) = self.dec_step(&w, &pre0, st, (&kv, enc), false)?;
        Ok((self.project(&tilde)?, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Whether a right-hand side `[k, n]` passes candle's cuBLAS layout check
    /// (`gemm_config` in candle-core's CUDA backend): packed row-major or packed
    /// column-major.
    fn cublas_accepts(rhs: &Tensor) -> bool {
        let (k, n) = rhs.dims2().unwrap();
        let st = rhs.stride();
        ((st[1] == 1 || n == 1) && (st[0] == n || k == 1))
            || ((st[1] == k || n == 1) && (st[0] == 1 || k == 1))
    }

    #[test]
    fn the_embedding_part_is_packed_off_the_cpu() {
        let (h, e) = (8, 6);
        let w = Tensor::randn(0f32, 1.0, (4 * h, e + h), &Device::Cpu).unwrap();
        let view = embedding_part_t(&w, e, false).unwrap();
        let packed = embedding_part_t(&w, e, true).unwrap();
        // The strided view is what the CPU multiplies, and what cuBLAS refused.
        assert!(!cublas_accepts(&view), "{:?}", view.stride());
        assert!(cublas_accepts(&packed), "{:?}", packed.stride());
        // Same values, and the same product bit for bit on the CPU.
        let x = Tensor::randn(0f32, 1.0, (5, e), &Device::Cpu).unwrap();
        let a = x.matmul(&view).unwrap().flatten_all().unwrap();
        let b = x.matmul(&packed).unwrap().flatten_all().unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let diff = (view.to_dtype(DType::F64).unwrap() - packed.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}
