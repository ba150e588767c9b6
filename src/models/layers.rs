//! Building blocks that backpropagate.
//!
//! candle's fast `LayerNorm` (contiguous input with a bias), `RmsNorm`,
//! `ops::softmax_last_dim`, rope and sdpa record no backward op: a parameter upstream
//! of them silently gets no gradient. Everything here is written with ops that do
//! record one (or with a custom op whose `bwd` is implemented and checked against
//! finite differences), and the model tests check that every variable receives a
//! non-zero gradient.
//!
//! Dropout draws its masks on the host from our seeded [`SplitMix64`], so runs are
//! reproducible on every device, and is the identity when `train` is false.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::fused;
use super::params::{Init, Params};
use crate::rng::SplitMix64;

/// A seeded RNG shared by every dropout layer of one model; its state is what a
/// checkpoint saves to resume the exact mask stream.
#[derive(Debug, Clone)]
pub struct SharedRng(Arc<Mutex<SplitMix64>>);

impl SharedRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(SplitMix64::new(seed))))
    }

    /// The generator's whole state.
    pub fn state(&self) -> u64 {
        self.0.lock().expect("rng lock poisoned").state()
    }

    /// Restores a state returned by [`SharedRng::state`].
    pub fn set_state(&self, state: u64) {
        *self.0.lock().expect("rng lock poisoned") = SplitMix64::new(state);
    }

    /// `n` values, each `scale` with probability `keep` and 0 otherwise: value `i`
    /// from the generator's `i`-th next draw, computed in parallel blocks
    /// ([`SplitMix64::peek_u64`]), so the mask and the state after it are those of
    /// `n` sequential draws.
    fn keep_mask(&self, n: usize, keep: f64, scale: f64) -> Vec<f32> {
        use rayon::prelude::*;
        const BLOCK: usize = 16384;
        let mut g = self.0.lock().expect("rng lock poisoned");
        let start = *g;
        let scale = scale as f32;
        // Collected in place (no zero fill first), in blocks of at least BLOCK.
        let mask: Vec<f32> = (0..n)
            .into_par_iter()
            .with_min_len(BLOCK)
            .map(|i| {
                let u = SplitMix64::unit_f64(start.peek_u64(i as u64));
                if u < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        g.skip(n as u64);
        mask
    }
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales
/// the rest by `1 / (1 - p)`; in evaluation, the identity.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: SharedRng,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1), masks drawn from `rng`.
    pub fn new(p: f64, rng: SharedRng) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability must be in [0, 1), got {p}");
        }
        Ok(Self { p, rng })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The mask [`Dropout::forward`] would multiply `n` values by (each 0 or
    /// `1/(1−p)`, drawn from the same generator in the same order), for kernels that
    /// apply dropout themselves; `None` when it would be the identity.
    pub fn mask(&self, n: usize, train: bool) -> Option<Vec<f32>> {
        if !train || self.p == 0.0 {
            return None;
        }
        let keep = 1.0 - self.p;
        Some(self.rng.keep_mask(n, keep, 1.0 / keep))
    }

    /// Applies dropout when `train` is true.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let keep = 1.0 - self.p;
        let mask = self.rng.keep_mask(xs.elem_count(), keep, 1.0 / keep);
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        if fused::supported(xs) {
            fused::mul_by_constant(xs, &mask)
        } else {
            xs.mul(&mask)
        }
    }
}

/// Softmax over the last dimension that backpropagates (unlike
/// `candle_nn::ops::softmax_last_dim`): a fused kernel on the CPU (f32/f64),
/// [`softmax_last_dim_ops`] elsewhere.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if is_half(xs.dtype()) {
        // Half-precision scores are normalized in f32 (as PyTorch's autocast does).
        return softmax_last_dim_ops(&xs.to_dtype(DType::F32)?)?.to_dtype(xs.dtype());
    }
    if fused::supported(xs) {
        fused::softmax_last_dim(xs)
    } else {
        softmax_last_dim_ops(xs)
    }
}

/// Softmax over the last dimension in plain candle ops.
///
/// The row maximum is subtracted for stability and detached: the result does not
/// depend on the shift, so its gradient is exactly zero and need not be traced.
pub fn softmax_last_dim_ops(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `xs + b` with `b`'s shape a suffix of `xs`'s (a bias over rows, a position table
/// over a batch), for a `b` that takes a gradient: [`fused::add_bias`] on the CPU
/// (f32/f64; its backward sums the gradient over the leading dimensions in one
/// pass), `broadcast_add` elsewhere.
pub fn add_bias(xs: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused::supported(xs) {
        fused::add_bias(xs, b)
    } else {
        xs.broadcast_add(b)
    }
}

/// Log-softmax over the last dimension (stable, backpropagates).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// GELU, erf form `x/2 · (1 + erf(x/√2))` (BERT's `"gelu"`): a fused kernel with an
/// exact backward on the CPU (f32/f64), [`gelu_ops`] elsewhere.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if fused::supported(xs) {
        fused::gelu(xs)
    } else {
        gelu_ops(xs)
    }
}

/// GELU, erf form, as candle's `gelu_erf` (whose backward rounds 1/√(2π) to six
/// digits).
pub fn gelu_ops(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// The activation of a feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU, erf form (BERT's `"gelu"`).
    Gelu,
    /// GELU, tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// ReLU.
    Relu,
}

impl Activation {
    /// Applies the activation.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => gelu(xs),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// Layer normalisation over the last dimension, `(x − mean) / √(var + eps) · w + b`
/// with the biased variance (as PyTorch and HF BERT).
///
/// On the CPU with f32/f64 it runs a fused kernel with a hand-written backward;
/// elsewhere the same formula in plain candle ops. Both backpropagate to the input,
/// the weight and the bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm from its parameters.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Creates `weight` (ones) and `bias` (zeros) of size `dim` under `p`.
    pub fn build(dim: usize, eps: f64, p: &Params) -> Result<Self> {
        let weight = p.get(dim, "weight", Init::Ones)?;
        let bias = p.get(dim, "bias", Init::Zeros)?;
        Ok(Self::new(weight, bias, eps))
    }

    /// Normalises `xs` over its last dimension. Half-precision inputs are normalized
    /// in f32 (statistics over bf16 values lose too many digits) and cast back.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if is_half(xs.dtype()) {
            let x = xs.to_dtype(DType::F32)?;
            let w = self.weight.to_dtype(DType::F32)?;
            let b = self.bias.to_dtype(DType::F32)?;
            let y = if fused::supported(&x) {
                fused::layer_norm(&x, &w, &b, self.eps)?
            } else {
                layer_norm_ops(&x, &w, &b, self.eps)?
            };
            return y.to_dtype(xs.dtype());
        }
        if fused::supported(xs) {
            fused::layer_norm(xs, &self.weight, &self.bias, self.eps)
        } else {
            layer_norm_ops(xs, &self.weight, &self.bias, self.eps)
        }
    }
}

/// Whether `dtype` is a half-precision float (bf16 or f16), the compute dtypes of
/// `train.precision`.
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `xs` as f32 when it is a half-precision float, unchanged otherwise: what the models
/// apply to their logits, so losses always reduce in at least single precision.
pub fn upcast_half(xs: &Tensor) -> Result<Tensor> {
    if is_half(xs.dtype()) {
        xs.to_dtype(DType::F32)
    } else {
        Ok(xs.clone())
    }
}

/// A linear layer `x·Wᵀ + b` computed in the dtype of its input.
///
/// The weights stay in their master dtype (f32) in the [`VarMap`](candle_nn::VarMap);
/// for a bf16 or f16 input they are cast on the fly, and the cast's backward brings
/// the gradient back to the master dtype. When the dtypes agree this is exactly
/// `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// A layer from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    /// The weight `[out, in]`, in the master dtype.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias `[out]`, in the master dtype.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.weight().dtype() == xs.dtype() {
            return match self.bias() {
                // Sequence layers: one node (the same gemm calls, bit for bit).
                Some(b) if fused::supported(xs) && xs.rank() >= 3 => {
                    fused::linear(xs, self.weight(), b)
                }
                // candle_nn's matmul, then the bias through `add_bias`.
                Some(b) if fused::supported(xs) => add_bias(
                    &candle_nn::Linear::new(self.weight().clone(), None).forward(xs)?,
                    b,
                ),
                _ => self.inner.forward(xs),
            };
        }
        let w = self.weight().to_dtype(xs.dtype())?;
        let b = self.bias().map(|b| b.to_dtype(xs.dtype())).transpose()?;
        candle_nn::Linear::new(w, b).forward(xs)
    }
}

/// An embedding table whose lookups come out in the compute dtype: the entry point
/// of `train.precision` (everything downstream computes in the dtype of its input).
#[derive(Debug, Clone)]
pub struct Embedding {
    inner: candle_nn::Embedding,
    compute: DType,
}

impl Embedding {
    /// A lookup into `table [vocab, dim]` whose results are cast to `compute`.
    pub fn new(table: Tensor, dim: usize, compute: DType) -> Self {
        Self {
            inner: candle_nn::Embedding::new(table, dim),
            compute,
        }
    }

    /// The table `[vocab, dim]`, in the master dtype.
    pub fn embeddings(&self) -> &Tensor {
        self.inner.embeddings()
    }

    /// The width of an embedding.
    pub fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    /// The dtype lookups are cast to.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        // Gather first, then cast: B·T·D values rather than the whole table.
        self.inner.forward(ids)?.to_dtype(self.compute)
    }
}

/// A copy of `l` whose weights are detached: ops on it record no backward graph.
pub(crate) fn detach_linear(l: &Linear) -> Linear {
    Linear::new(l.weight().detach(), l.bias().map(|b| b.detach()))
}

/// A copy of `e` whose table is detached.
pub(crate) fn detach_embedding(e: &Embedding) -> Embedding {
    Embedding::new(e.embeddings().detach(), e.hidden_size(), e.compute)
}

impl LayerNorm {
    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self::new(self.weight.detach(), self.bias.detach(), self.eps)
    }
}

/// Layer norm in plain candle ops (every device; the oracle for the fused kernel).
pub fn layer_norm_ops(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let xc = xs.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

/// A linear layer `x·Wᵀ + b` with `W` of shape `[out, in]` (PyTorch's layout), named
/// `weight` and `bias` under `p`.
pub fn linear(in_dim: usize, out_dim: usize, init: Init, bias: bool, p: &Params) -> Result<Linear> {
    let w = p.get((out_dim, in_dim), "weight", init)?;
    let b = if bias {
        Some(p.get(out_dim, "bias", Init::Zeros)?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// PyTorch's default init for a linear layer's weight: U(−1/√in, 1/√in).
pub fn torch_linear_init(in_dim: usize) -> Init {
    Init::Uniform(1.0 / (in_dim as f64).sqrt())
}

/// An embedding table `[vocab, dim]` named `weight` under `p`, looking up in `p`'s
/// compute dtype.
pub fn embedding(vocab: usize, dim: usize, init: Init, p: &Params) -> Result<Embedding> {
    let w = p.get((vocab, dim), "weight", init)?;
    Ok(Embedding::new(w, dim, p.compute_dtype()))
}

/// The mask `[B, T]` (1 at real tokens, 0 at padding, any dtype) as `dtype`.
pub fn mask_as(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    mask.to_dtype(DType::F32)?.ne(0f32)?.to_dtype(dtype)
}

/// The most negative finite value of a float dtype, as f64. (f32's, converted to
/// bf16, rounds to −∞, and `0 · −∞` would turn unmasked positions into NaN.)
pub fn lowest_finite(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MIN,
        DType::F16 => -65504.0,
        // bf16::MIN: 0xFF7F.
        DType::BF16 => -3.389_531_389_251_535_5e38,
        _ => f32::MIN as f64,
    }
}

/// The causal bias `[1, 1, T, T]`: 0 on and below the diagonal, the dtype's lowest
/// finite value above it (so a future key gets exactly zero weight).
pub fn causal_bias(t: usize, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
    let lowest = lowest_finite(dtype);
    let v: Vec<f64> = (0..t * t)
        .map(|k| if k % t > k / t { lowest } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (1, 1, t, t), dev)?.to_dtype(dtype)
}

/// The additive attention bias `[B, 1, 1, T]` for a key padding mask `[B, T]`:
/// 0 at real keys, the dtype's lowest finite value at padding (as HF BERT, so a
/// padded key gets exactly zero weight).
pub fn key_padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask_as(mask, dtype)?;
    let lowest = lowest_finite(dtype);
    // (1 - m) * lowest, written so that m = 1 gives exactly 0.
    let bias = ((m - 1.0)? * (-lowest))?;
    bias.reshape((b, 1, 1, t))
}

/// Mean of `xs [B, T, D]` over the real positions of `mask [B, T]`.
pub fn masked_mean(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask_as(mask, xs.dtype())?.unsqueeze(2)?;
    let sum = xs.broadcast_mul(&m)?.sum(1)?;
    // An all-padding row gets 0 rather than NaN.
    let count = m.sum(1)?.clamp(1.0, f64::INFINITY)?;
    sum.broadcast_div(&count)
}

/// Max of `xs [B, T, D]` over the real positions of `mask [B, T]`; 0 for a row with
/// no real position (rather than the dtype's lowest value, which would overflow the
/// logits).
pub fn masked_max(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, d) = xs.dims3()?;
    let keep = mask_as(mask, DType::U8)?;
    let any = keep
        .to_dtype(DType::F32)?
        .sum_keepdim(1)?
        .gt(0f32)?
        .broadcast_as((b, d))?;
    let keep = keep.unsqueeze(2)?.broadcast_as((b, t, d))?;
    let lowest = Tensor::full(f32::MIN, (b, t, d), xs.device())?.to_dtype(xs.dtype())?;
    let max = keep.where_cond(xs, &lowest)?.max(1)?;
    any.where_cond(&max, &max.zeros_like()?)
}

/// Multi-head attention, parameterised like BERT (separate query, key, value and
/// output projections with biases): the one attention of every model.
/// [`MultiHeadAttention::forward`] is self-attention with a key padding mask (the
/// three input projections run as one matmul against their concatenated weights),
/// [`MultiHeadAttention::forward_causal`] its causal form (a decoder's teacher-forced
/// pass); [`MultiHeadAttention::cross_key_values`] and
/// [`MultiHeadAttention::cross_attend`] are cross-attention, and
/// [`MultiHeadAttention::key_values`] with [`MultiHeadAttention::attend`] decoding
/// with a key/value cache.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    heads: usize,
    dropout: Dropout,
}

impl MultiHeadAttention {
    /// Attention from its four projections (each `[D, D]` with a bias); `dropout`
    /// applies to the attention probabilities.
    pub fn new(
        query: Linear,
        key: Linear,
        value: Linear,
        output: Linear,
        heads: usize,
        dropout: Dropout,
    ) -> Result<Self> {
        let (d, d_in) = query.weight().dims2()?;
        if d != d_in || heads == 0 || !d.is_multiple_of(heads) {
            candle_core::bail!(
                "attention: hidden size {d} (input {d_in}) is not divisible by {heads} heads"
            );
        }
        Ok(Self {
            query,
            key,
            value,
            output,
            heads,
            dropout,
        })
    }

    /// Attends `xs [B, T, D]` to itself; `bias [B, 1, 1, T]` from [`key_padding_bias`].
    /// Returns `[B, T, D]` after the output projection.
    pub fn forward(&self, xs: &Tensor, bias: &Tensor, train: bool) -> Result<Tensor> {
        self.self_attend(xs, Some(bias), false, train)
    }

    /// Causal self-attention over `xs [B, T, D]`: query `i` sees keys `0..=i` (a
    /// decoder's teacher-forced pass; no key padding mask, since padded targets are
    /// never attended to by a real one). Returns `[B, T, D]` after the output
    /// projection; the same as [`MultiHeadAttention::attend`] with every key and
    /// [`causal_bias`].
    pub fn forward_causal(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.self_attend(xs, None, true, train)
    }

    fn self_attend(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        causal: bool,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let h = self.heads;
        let dh = d / h;
        let w = Tensor::cat(
            &[self.query.weight(), self.key.weight(), self.value.weight()],
            0,
        )?
        .to_dtype(xs.dtype())?;
        let bq = self.bias_of(&self.query, d, xs)?;
        let bk = self.bias_of(&self.key, d, xs)?;
        let bv = self.bias_of(&self.value, d, xs)?;
        let bqkv = Tensor::cat(&[bq, bk, bv], 0)?.to_dtype(xs.dtype())?;
        let qkv = if fused::supported(xs) {
            fused::linear(xs, &w, &bqkv)?
        } else {
            xs.reshape((b * t, d))?
                .matmul(&w.t()?)?
                .apply(&|y: &Tensor| add_bias(y, &bqkv))?
        };
        if fused::supported(xs) && bias.is_none_or(|m| m.dims() == [b, 1, 1, t]) {
            // One kernel from the packed projections to the merged heads.
            let keep = self.dropout.mask(b * h * t * t, train).map(Arc::new);
            let scale = 1.0 / (dh as f64).sqrt();
            let qkv = qkv.reshape((b, t, 3 * d))?;
            let ctx = fused::self_attention(&qkv, bias, causal, h, scale, keep)?;
            return self.output.forward(&ctx);
        }
        let qkv = qkv
            .reshape((b, t, 3, h, dh))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        // Scaling q (B·T·D values) is cheaper than scaling the scores (B·H·T·T).
        let q = (qkv.get(0)? * (1.0 / (dh as f64).sqrt()))?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        if causal {
            scores = scores.broadcast_add(&causal_bias(t, xs.dtype(), xs.device())?)?;
        }
        let probs = softmax_last_dim(&scores)?;
        let probs = self.dropout.forward(&probs, train)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        self.output.forward(&ctx)
    }

    /// The keys and values of `xs [N, S, D]` packed as `[N, S, 2·D]` (per row
    /// `k | v`, one matmul), for [`MultiHeadAttention::cross_attend`].
    pub fn cross_key_values(&self, xs: &Tensor) -> Result<Tensor> {
        let (n, s, d) = xs.dims3()?;
        let w = Tensor::cat(&[self.key.weight(), self.value.weight()], 0)?.to_dtype(xs.dtype())?;
        let bk = self.bias_of(&self.key, d, xs)?;
        let bv = self.bias_of(&self.value, d, xs)?;
        let bkv = Tensor::cat(&[bk, bv], 0)?.to_dtype(xs.dtype())?;
        if fused::supported(xs) {
            return fused::linear(xs, &w, &bkv);
        }
        xs.reshape((n * s, d))?
            .matmul(&w.t()?)?
            .apply(&|y: &Tensor| add_bias(y, &bkv))?
            .reshape((n, s, 2 * d))
    }

    /// Attends queries from `xs [N, T, D]` to the packed keys and values
    /// `kv [N, S, 2·D]` of [`MultiHeadAttention::cross_key_values`], with the key
    /// padding `bias [N, 1, 1, S]`; returns `[N, T, D]` after the output projection.
    /// Dropout applies to the probabilities when `train`. On the CPU (f32, f64) one
    /// fused kernel ([`fused::cross_attention`]); elsewhere [`MultiHeadAttention::attend`].
    pub fn cross_attend(
        &self,
        xs: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (n, t, d) = xs.dims3()?;
        let s = kv.dim(1)?;
        let h = self.heads;
        if fused::supported(xs) && bias.dims() == [n, 1, 1, s] {
            let q = self.query.forward(xs)?;
            let keep = self.dropout.mask(n * h * t * s, train).map(Arc::new);
            let scale = 1.0 / ((d / h) as f64).sqrt();
            let ctx = fused::cross_attention(&q, kv, Some(bias), h, scale, keep)?;
            return self.output.forward(&ctx);
        }
        let k = split_heads(&kv.narrow(2, 0, d)?, h)?;
        let v = split_heads(&kv.narrow(2, d, d)?, h)?;
        self.attend(xs, &k, &v, Some(bias), train)
    }

    /// Keys and values `[N, heads, S, dh]` of `xs [N, S, D]`.
    pub fn key_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.key.forward(xs)?, self.heads)?,
            split_heads(&self.value.forward(xs)?, self.heads)?,
        ))
    }

    /// Attends queries from `xs [N, T, D]` to `k`, `v` `[N, heads, S, dh]` (from
    /// [`MultiHeadAttention::key_values`], possibly cached), with an additive
    /// `bias` broadcastable to `[N, heads, T, S]`; returns `[N, T, D]` after the
    /// output projection. Dropout applies to the probabilities when `train`.
    pub fn attend(
        &self,
        xs: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (n, t, d) = xs.dims3()?;
        let dh = d / self.heads;
        // Scaling q (N·T·D values) is cheaper than scaling the scores.
        let q = (split_heads(&self.query.forward(xs)?, self.heads)? * (1.0 / (dh as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match bias {
            Some(b) => scores.broadcast_add(b)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        let probs = self.dropout.forward(&probs, train)?;
        let ctx = probs
            .matmul(v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, t, d))?;
        self.output.forward(&ctx)
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self {
            query: detach_linear(&self.query),
            key: detach_linear(&self.key),
            value: detach_linear(&self.value),
            output: detach_linear(&self.output),
            heads: self.heads,
            dropout: self.dropout.clone(),
        }
    }

    fn bias_of(&self, l: &Linear, d: usize, xs: &Tensor) -> Result<Tensor> {
        match l.bias() {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(d, l.weight().dtype(), xs.device()),
        }
    }
}

/// `[N, T, D]` → `[N, heads, T, D/heads]`.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, t, d) = x.dims3()?;
    x.reshape((n, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// The position-wise feed-forward block `W2 · act(W1 · x)`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
    act: Activation,
}

impl FeedForward {
    /// A block from its two projections.
    pub fn new(up: Linear, down: Linear, act: Activation) -> Self {
        Self { up, down, act }
    }

    /// A copy with detached parameters (for evaluation without a backward graph).
    pub(crate) fn detached(&self) -> Self {
        Self::new(detach_linear(&self.up), detach_linear(&self.down), self.act)
    }

    /// Applies the block to `xs [.., D]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.act.forward(&self.up.forward(xs)?)?)
    }
}

/// Sinusoidal position encodings `[len, dim]` (Vaswani et al. 2017: sin on even,
/// cos on odd features), computed on the host in f64.
pub fn sinusoidal_positions(len: usize, dim: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(len * dim);
    for pos in 0..len {
        for i in 0..dim {
            let freq = (10000f64).powf(-((i / 2 * 2) as f64) / dim as f64);
            let a = pos as f64 * freq;
            v.push(if i % 2 == 0 { a.sin() } else { a.cos() });
        }
    }
    Tensor::from_vec(v, (len, dim), dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::testutil::{assert_close, numeric_grad, randn};
    use candle_core::Var;
    use candle_nn::VarMap;

    #[test]
    fn softmax_gradient_matches_finite_differences() -> Result<()> {
        let x0 = randn(&[3, 5], 21)?;
        let up = randn(&[3, 5], 22)?;
        let x = Var::from_tensor(&x0)?;
        let f = |x: &Tensor| (softmax_last_dim_ops(x)? * &up)?.sum_all();
        let g = f(&x)?.backward()?;
        let num = numeric_grad(&x0, &|t| f(t)?.to_scalar::<f64>())?;
        assert_close(g.get(&x).unwrap(), &num, 1e-7, "softmax")?;
        let fl = |x: &Tensor| (log_softmax_last_dim(x)? * &up)?.sum_all();
        let g = fl(&x)?.backward()?;
        let num = numeric_grad(&x0, &|t| fl(t)?.to_scalar::<f64>())?;
        assert_close(g.get(&x).unwrap(), &num, 1e-7, "log_softmax")
    }

    #[test]
    fn layer_norm_ops_gradient_matches_finite_differences() -> Result<()> {
        let x0 = randn(&[2, 4, 5], 23)?;
        let w = randn(&[5], 24)?;
        let b = randn(&[5], 25)?;
        let up = randn(&[2, 4, 5], 26)?;
        let x = Var::from_tensor(&x0)?;
        let f = |x: &Tensor| (layer_norm_ops(x, &w, &b, 1e-5)? * &up)?.sum_all();
        let g = f(&x)?.backward()?;
        let num = numeric_grad(&x0, &|t| f(t)?.to_scalar::<f64>())?;
        assert_close(g.get(&x).unwrap(), &num, 1e-6, "layer_norm_ops dx")
    }

    #[test]
    fn gelu_gradient_matches_finite_differences() -> Result<()> {
        let x0 = (randn(&[12], 27)? * 2.0)?;
        let x = Var::from_tensor(&x0)?;
        let g = gelu_ops(&x)?.sum_all()?.backward()?;
        let num = numeric_grad(&x0, &|t| gelu_ops(t)?.sum_all()?.to_scalar::<f64>())?;
        // candle's gelu_erf backward uses 1/sqrt(2 pi) rounded to 6 digits.
        assert_close(g.get(&x).unwrap(), &num, 1e-5, "gelu")
    }

    /// The attention output and every gradient (input and all eight parameters)
    /// against finite differences in f64, with one padded key.
    #[test]
    fn attention_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, d, h) = (2, 3, 4, 2);
        let varmap = VarMap::new();
        let p = Params::new(varmap.clone(), DType::F64, &dev, 5);
        let lin = |n: &str| linear(d, d, Init::Normal(0.5), true, &p.pp(n));
        let drop = Dropout::new(0.0, SharedRng::new(0))?;
        let attn = MultiHeadAttention::new(lin("q")?, lin("k")?, lin("v")?, lin("o")?, h, drop)?;
        // Biases start at zero: give them values so their gradients are tested too.
        for (i, v) in varmap.all_vars().iter().enumerate() {
            v.set(&randn(v.dims(), 100 + i as u64)?)?;
        }
        let x0 = randn(&[b, t, d], 28)?;
        let up = randn(&[b, t, d], 29)?;
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &dev)?;
        let bias = key_padding_bias(&mask, DType::F64)?;
        let x = Var::from_tensor(&x0)?;
        let loss = |x: &Tensor| (attn.forward(x, &bias, true)? * &up)?.sum_all();
        let grads = loss(&x)?.backward()?;
        let num = numeric_grad(&x0, &|t| loss(t)?.to_scalar::<f64>())?;
        assert_close(grads.get(&x).unwrap(), &num, 1e-6, "attention dx")?;
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), 8);
        for (name, var) in data.iter() {
            let orig = var.as_tensor().copy()?;
            let num = numeric_grad(&orig, &|t| {
                var.set(t)?;
                loss(&x0)?.to_scalar::<f64>()
            })?;
            var.set(&orig)?;
            assert_close(grads.get(var.as_tensor()).unwrap(), &num, 1e-6, name)?;
        }
        Ok(())
    }

    #[test]
    fn dropout_is_identity_in_eval_and_seeded_in_train() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::ones((4, 1000), DType::F32, &dev)?;
        let d = Dropout::new(0.25, SharedRng::new(3))?;
        assert_eq!(
            d.forward(&xs, false)?.to_vec2::<f32>()?,
            xs.to_vec2::<f32>()?
        );
        let a = d.forward(&xs, true)?.flatten_all()?.to_vec1::<f32>()?;
        let zeros = a.iter().filter(|&&x| x == 0.0).count();
        assert!(
            (850..1150).contains(&zeros),
            "{zeros} of 4000 dropped at p=0.25"
        );
        assert!(a.iter().all(|&x| x == 0.0 || (x - 4.0 / 3.0).abs() < 1e-6));
        let again = Dropout::new(0.25, SharedRng::new(3))?
            .forward(&xs, true)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, again, "same seed, same mask");
        let next = d.forward(&xs, true)?.flatten_all()?.to_vec1::<f32>()?;
        assert_ne!(a, next, "a new mask every call");
        Ok(())
    }

    #[test]
    fn dropout_masks_are_the_sequential_draws_of_the_generator() {
        // Several parallel blocks and a ragged tail: the mask and the state after
        // it must be those of one draw per element in order, so runs (and their
        // checkpoints) do not depend on how the mask was split over threads.
        let n = 3 * 16384 + 77;
        let rng = SharedRng::new(11);
        let mask = rng.keep_mask(n, 0.9, 1.0 / 0.9);
        let mut seq = SplitMix64::new(11);
        let scale = (1.0 / 0.9) as f32;
        for (i, m) in mask.iter().enumerate() {
            let want = if seq.next_f64() < 0.9 { scale } else { 0.0 };
            assert_eq!(m.to_bits(), want.to_bits(), "element {i}");
        }
        assert_eq!(rng.state(), seq.state());
    }

    #[test]
    fn softmax_matches_candle_and_ignores_padding_bias() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::new(&[[1f32, 2., 3., -1.], [0.5, 0.5, -2., 4.]], &dev)?;
        let ours = softmax_last_dim_ops(&xs)?.to_vec2::<f32>()?;
        let theirs = candle_nn::ops::softmax_last_dim(&xs)?.to_vec2::<f32>()?;
        for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
            assert!((a - b).abs() < 1e-6);
        }
        let mask = Tensor::new(&[[1u32, 1, 0, 0]], &dev)?;
        let bias = key_padding_bias(&mask, DType::F32)?.reshape((1, 4))?;
        let p = softmax_last_dim(&xs.broadcast_add(&bias)?)?.to_vec2::<f32>()?;
        assert_eq!(p[0][2], 0.0);
        assert_eq!(p[0][3], 0.0);
        let e = 1f32.exp() / (1f32.exp() + 2f32.exp());
        assert!((p[0][0] - e).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn masked_pooling_ignores_padding() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::new(
            &[
                [[1f32, -5.], [3., -1.], [100., 100.]],
                [[7., 8.], [9., 10.], [11., 12.]],
            ],
            &dev,
        )?;
        let mask = Tensor::new(&[[1u8, 1, 0], [0, 0, 0]], &dev)?;
        // A row without real tokens pools to 0, not NaN or the lowest float.
        assert_eq!(
            masked_mean(&xs, &mask)?.to_vec2::<f32>()?,
            [[2.0, -3.0], [0.0, 0.0]]
        );
        assert_eq!(
            masked_max(&xs, &mask)?.to_vec2::<f32>()?,
            [[3.0, -1.0], [0.0, 0.0]]
        );
        Ok(())
    }

    #[test]
    fn sinusoidal_positions_follow_the_formula() -> Result<()> {
        let p = sinusoidal_positions(3, 4, DType::F64, &Device::Cpu)?.to_vec2::<f64>()?;
        assert_eq!(p[0], [0.0, 1.0, 0.0, 1.0]);
        assert!((p[2][0] - 2f64.sin()).abs() < 1e-12);
        assert!((p[2][1] - 2f64.cos()).abs() < 1e-12);
        assert!((p[2][2] - (2.0 / 100.0f64).sin()).abs() < 1e-12);
        assert!((p[2][3] - (2.0 / 100.0f64).cos()).abs() < 1e-12);
        Ok(())
    }
}
