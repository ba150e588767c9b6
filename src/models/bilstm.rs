//! A bidirectional, length-masked, multi-layer LSTM encoder and its classifier.
//!
//! Unlike `candle_nn::rnn::LSTM` (one layer, one direction, input projection redone at
//! every step, no masking):
//! - the input projection of both directions for all time steps is one matmul,
//!   computed before the recurrence;
//! - both directions advance together: one batched `[2, B, H] × [2, H, 4H]` matmul
//!   per time step; on the CPU the whole recurrence, gate math included, is one fused
//!   op with a hand-written backpropagation through time (plain ops elsewhere);
//! - padding is masked: at a padded step the state is carried unchanged, so the
//!   backward direction starts at each sequence's last real token, and neither the
//!   outputs at real positions nor the final states depend on how much padding follows.
//!
//! Parameter names follow PyTorch's `nn.LSTM` (`weight_ih_l0`, `weight_hh_l0_reverse`,
//! ...; gate order input, forget, cell, output) so weights can be compared or ported.

use std::sync::Arc;

use super::layers::{Embedding, Linear};
use candle_core::{DType, Module, Result, Tensor};

use super::fused;
use super::layers::{self, Dropout, SharedRng};
use super::params::{Init, Params};

/// How a BiLSTM's outputs become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LstmPooling {
    /// Elementwise max over the real positions of the last layer's outputs.
    #[default]
    Max,
    /// Mean over the real positions of the last layer's outputs.
    Mean,
    /// The final states: forward at the last real token, backward at the first.
    Last,
}

/// The weights of one direction of one layer.
#[derive(Debug, Clone)]
struct Direction {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

impl Direction {
    fn detached(&self) -> Self {
        Self {
            w_ih: self.w_ih.detach(),
            w_hh: self.w_hh.detach(),
            b_ih: self.b_ih.detach(),
            b_hh: self.b_hh.detach(),
        }
    }

    fn build(p: &Params, layer: usize, suffix: &str, input: usize, hidden: usize) -> Result<Self> {
        // PyTorch's init for every LSTM weight and bias.
        let init = Init::Uniform(1.0 / (hidden as f64).sqrt());
        Ok(Self {
            w_ih: p.get(
                (4 * hidden, input),
                &format!("weight_ih_l{layer}{suffix}"),
                init,
            )?,
            w_hh: p.get(
                (4 * hidden, hidden),
                &format!("weight_hh_l{layer}{suffix}"),
                init,
            )?,
            b_ih: p.get(4 * hidden, &format!("bias_ih_l{layer}{suffix}"), init)?,
            b_hh: p.get(4 * hidden, &format!("bias_hh_l{layer}{suffix}"), init)?,
        })
    }
}

/// A stack of bidirectional LSTM layers over `[B, T, input]` with a padding mask.
#[derive(Debug, Clone)]
pub struct BiLstm {
    layers: Vec<[Direction; 2]>,
    hidden: usize,
    dropout: Dropout,
}

/// What [`BiLstm::forward`] returns.
#[derive(Debug, Clone)]
pub struct BiLstmOutput {
    /// The last layer's outputs `[B, T, 2H]` (forward then backward features), zero at
    /// padded positions.
    pub outputs: Tensor,
    /// The last layer's final states `[B, 2H]`: forward after the last real token,
    /// backward after the first.
    pub last: Tensor,
}

impl BiLstm {
    /// `layers` bidirectional layers of `hidden` units per direction over `input`
    /// features; `dropout` applies between layers in training.
    pub fn build(
        input: usize,
        hidden: usize,
        layers: usize,
        dropout: Dropout,
        p: &Params,
    ) -> Result<Self> {
        if layers == 0 || hidden == 0 {
            candle_core::bail!("bilstm: layers ({layers}) and hidden ({hidden}) must be positive");
        }
        let mut ls = Vec::with_capacity(layers);
        for l in 0..layers {
            let inp = if l == 0 { input } else { 2 * hidden };
            ls.push([
                Direction::build(p, l, "", inp, hidden)?,
                Direction::build(p, l, "_reverse", inp, hidden)?,
            ]);
        }
        Ok(Self {
            layers: ls,
            hidden,
            dropout,
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|[f, b]| [f.detached(), b.detached()])
                .collect(),
            hidden: self.hidden,
            dropout: self.dropout.clone(),
        }
    }

    /// Units per direction.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Runs the stack over `xs [B, T, input]` with `mask [B, T]` (1 real, 0 padding;
    /// the real tokens of a row need not be contiguous, but padding usually trails).
    pub fn forward(&self, xs: &Tensor, mask: &Tensor, train: bool) -> Result<BiLstmOutput> {
        // The recurrence runs in the weights' dtype: that decides the fused kernel.
        let use_fused = fused::supported(&self.layers[0][0].w_hh);
        self.forward_with(xs, mask, train, use_fused)
    }

    fn forward_with(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        train: bool,
        use_fused: bool,
    ) -> Result<BiLstmOutput> {
        let (b, t, _) = xs.dims3()?;
        let dev = xs.device();
        // Input projections run in the input's (compute) dtype; the recurrence in the
        // weights' own dtype, f32 under mixed precision, where a bf16 cell state
        // would drift over long sequences.
        let compute = xs.dtype();
        let dtype = self.layers[0][0].w_hh.dtype();
        let keep_host: Vec<Vec<f32>> = layers::mask_as(mask, DType::F32)?.to_vec2::<f32>()?;
        // Step s handles time s for the forward direction and T-1-s for the backward one.
        let keep_steps: Vec<Vec<bool>> = (0..t)
            .map(|s| {
                let fwd = keep_host.iter().map(|row| row[s] != 0.0);
                let bwd = keep_host.iter().map(|row| row[t - 1 - s] != 0.0);
                fwd.chain(bwd).collect()
            })
            .collect();
        let keep_steps = Arc::new(keep_steps);
        let rev: Vec<u32> = (0..t as u32).rev().collect();
        let rev = Tensor::from_vec(rev, t, dev)?;
        let mask_f = layers::mask_as(mask, dtype)?.unsqueeze(2)?;
        let h = self.hidden;

        let mut input = xs.clone();
        let mut last = None;
        for (li, [fw, bw]) in self.layers.iter().enumerate() {
            if li > 0 {
                input = self.dropout.forward(&input, train)?;
            }
            let in_dim = input.dim(2)?;
            // One matmul: both directions' input projections for every time step.
            let w_ih = Tensor::cat(&[&fw.w_ih, &bw.w_ih], 0)?.to_dtype(compute)?;
            let bias = Tensor::cat(&[(&fw.b_ih + &fw.b_hh)?, (&bw.b_ih + &bw.b_hh)?], 0)?
                .to_dtype(compute)?;
            // [B, T, 8H]: per time, the forward direction's gates, then the backward's.
            let xp = input
                .to_dtype(compute)?
                .reshape((b * t, in_dim))?
                .matmul(&w_ih.t()?)?
                .apply(&|y: &Tensor| layers::add_bias(y, &bias))?
                .reshape((b, t, 8 * h))?
                .to_dtype(dtype)?;
            let w_hh = Tensor::stack(&[fw.w_hh.t()?, bw.w_hh.t()?], 0)?; // [2, H, 4H]
                                                                         // [B, T, 2H]: the forward direction's h, then the backward's, per time.
            let out = if use_fused {
                fused::bilstm_layer(&xp, &w_hh, keep_steps.clone())?
            } else {
                // Step-major: step s holds time s (forward) and T-1-s (backward).
                let xp = xp.reshape((b, t, 2, 4 * h))?.permute((1, 2, 0, 3))?; // [T, 2, B, 4H]
                let xp = Tensor::cat(
                    &[
                        xp.narrow(1, 0, 1)?.contiguous()?,
                        xp.narrow(1, 1, 1)?.contiguous()?.index_select(&rev, 0)?,
                    ],
                    1,
                )?
                .reshape((t, 2 * b, 4 * h))?;
                let mut state = Tensor::zeros((2, 2 * b, h), dtype, dev)?;
                let mut hs = Vec::with_capacity(t);
                for (s, keep) in keep_steps.iter().enumerate() {
                    let v: Vec<f32> = keep.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
                    let keep = Tensor::from_vec(v, (2 * b, 1), dev)?.to_dtype(dtype)?;
                    let h_prev = state.get(0)?.reshape((2, b, h))?;
                    let gates = (xp.get(s)? + h_prev.matmul(&w_hh)?.reshape((2 * b, 4 * h))?)?;
                    state = fused::lstm_cell_ops(&gates, &state, &keep)?;
                    hs.push(state.get(0)?);
                }
                let hs = Tensor::stack(&hs, 0)?.reshape((t, 2, b, h))?;
                Tensor::cat(
                    &[
                        hs.narrow(1, 0, 1)?,
                        hs.narrow(1, 1, 1)?.contiguous()?.index_select(&rev, 0)?,
                    ],
                    1,
                )?
                .permute((2, 0, 1, 3))?
                .reshape((b, t, 2 * h))?
            };
            // The final states: forward at time T-1 (carried over trailing
            // padding), backward at time 0.
            last = Some(
                Tensor::cat(
                    &[
                        out.narrow(1, t - 1, 1)?.narrow(2, 0, h)?,
                        out.narrow(1, 0, 1)?.narrow(2, h, h)?,
                    ],
                    2,
                )?
                .reshape((b, 2 * h))?,
            );
            // The forward direction carries its state over trailing padding; zero it.
            input = out.broadcast_mul(&mask_f)?;
        }
        Ok(BiLstmOutput {
            outputs: input,
            last: last.expect("at least one layer"),
        })
    }
}

/// Configuration of [`BiLstmClassifier`] (TOML `[model]` with `kind = "bilstm"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BiLstmConfig {
    /// Word embedding size. Default 300.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// LSTM units per direction. Default 256.
    #[serde(default = "default_lstm_hidden")]
    pub hidden: usize,
    /// Number of stacked bidirectional layers. Default 1.
    #[serde(default = "default_one")]
    pub layers: usize,
    /// Dropout on the embeddings, between layers and before the output layer, in
    /// training. Default 0.5.
    #[serde(default = "default_lstm_dropout")]
    pub dropout: f64,
    /// Pooling over time: `"max"`, `"mean"` or `"last"`. Default `"max"`.
    #[serde(default)]
    pub pooling: LstmPooling,
}

fn default_embed_dim() -> usize {
    300
}
fn default_lstm_hidden() -> usize {
    256
}
fn default_one() -> usize {
    1
}
fn default_lstm_dropout() -> f64 {
    0.5
}

impl Default for BiLstmConfig {
    fn default() -> Self {
        Self {
            embed_dim: default_embed_dim(),
            hidden: default_lstm_hidden(),
            layers: default_one(),
            dropout: default_lstm_dropout(),
            pooling: LstmPooling::default(),
        }
    }
}

/// Embedding → [`BiLstm`] → pooling → dropout → linear, giving logits `[B, K]`.
///
/// Variables: `embedding.weight`, `lstm.*` (PyTorch names), `classifier.weight`,
/// `classifier.bias`.
#[derive(Debug, Clone)]
pub struct BiLstmClassifier {
    embedding: Embedding,
    lstm: BiLstm,
    classifier: Linear,
    dropout: Dropout,
    pooling: LstmPooling,
}

impl BiLstmClassifier {
    /// Builds the model for a vocabulary of `vocab` ids and `classes` labels.
    pub fn build(
        cfg: &BiLstmConfig,
        vocab: usize,
        classes: usize,
        p: &Params,
        rng: SharedRng,
    ) -> Result<Self> {
        let dropout = Dropout::new(cfg.dropout, rng)?;
        // N(0, 1), PyTorch's nn.Embedding init.
        let embedding =
            layers::embedding(vocab, cfg.embed_dim, Init::Normal(1.0), &p.pp("embedding"))?;
        let lstm = BiLstm::build(
            cfg.embed_dim,
            cfg.hidden,
            cfg.layers,
            dropout.clone(),
            &p.pp("lstm"),
        )?;
        let classifier = layers::linear(
            2 * cfg.hidden,
            classes,
            layers::torch_linear_init(2 * cfg.hidden),
            true,
            &p.pp("classifier"),
        )?;
        Ok(Self {
            embedding,
            lstm,
            classifier,
            dropout,
            pooling: cfg.pooling,
        })
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            embedding: layers::detach_embedding(&self.embedding),
            lstm: self.lstm.detached(),
            classifier: layers::detach_linear(&self.classifier),
            dropout: self.dropout.clone(),
            pooling: self.pooling,
        }
    }

    /// The pooled sentence representation `[B, 2H]` (before the output dropout).
    pub fn encode(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.encode_embeddings(&self.embed(ids)?, mask, train)
    }

    /// The input embeddings `[B, T, E]` of ids `[B, T]`: the table lookup, before
    /// dropout and the LSTM (what [`BiLstmClassifier::forward_embeddings`] takes).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embedding.forward(ids)
    }

    pub(crate) fn word_embedding(&self) -> &Embedding {
        &self.embedding
    }

    /// As [`BiLstmClassifier::encode`], from input embeddings `[B, T, E]` (as
    /// [`BiLstmClassifier::embed`] gives them, or perturbed).
    pub fn encode_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let emb = self.dropout.forward(emb, train)?;
        let out = self.lstm.forward(&emb, mask, train)?;
        match self.pooling {
            LstmPooling::Max => layers::masked_max(&out.outputs, mask),
            LstmPooling::Mean => layers::masked_mean(&out.outputs, mask),
            LstmPooling::Last => Ok(out.last),
        }
    }

    /// Logits `[B, K]` for token ids `[B, T]` and mask `[B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_embeddings(&self.embed(ids)?, mask, train)
    }

    /// Logits `[B, K]` from input embeddings `[B, T, E]` and mask `[B, T]`:
    /// `forward(ids)` is exactly `forward_embeddings(embed(ids))`.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self.encode_embeddings(emb, mask, train)?;
        self.classifier
            .forward(&self.dropout.forward(&pooled, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::{max_abs_diff, randn};
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    /// The fused CPU cell and the plain-op cell (what GPUs run) give the same outputs,
    /// final states and gradients.
    #[test]
    fn fused_and_plain_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let p = Params::new(varmap.clone(), DType::F64, &dev, 3);
        let lstm = BiLstm::build(3, 4, 2, Dropout::new(0.0, SharedRng::new(0))?, &p)?;
        let xs = Var::from_tensor(&randn(&[3, 5, 3], 4)?)?;
        let mask = Tensor::new(
            &[[1u32, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
            &dev,
        )?;
        let up = randn(&[3, 5, 8], 5)?;
        let up_last = randn(&[3, 8], 6)?;
        let mut results = Vec::new();
        for use_fused in [true, false] {
            let out = lstm.forward_with(&xs, &mask, false, use_fused)?;
            let loss = ((&out.outputs * &up)?.sum_all()? + (&out.last * &up_last)?.sum_all()?)?;
            let grads = loss.backward()?;
            let mut gs = vec![grads.get(&xs).unwrap().clone()];
            for v in varmap.all_vars() {
                gs.push(grads.get(v.as_tensor()).unwrap().clone());
            }
            results.push((out, gs));
        }
        let ((a, ga), (b, gb)) = (&results[0], &results[1]);
        assert!(max_abs_diff(&a.outputs, &b.outputs)? < 1e-12);
        assert!(max_abs_diff(&a.last, &b.last)? < 1e-12);
        assert_eq!(ga.len(), 1 + 16);
        for (x, y) in ga.iter().zip(gb) {
            assert!(max_abs_diff(x, y)? < 1e-10);
        }
        Ok(())
    }
}
