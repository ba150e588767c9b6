//! Losses: cross-entropy, complement entropy (COT), guided complement entropy
//! (GCE), hierarchical complement entropy (HCOT), and a chunked token-level path
//! for large vocabularies.
//!
//! Every loss here is a pure function of candle tensors and depends on candle only,
//! so it can be reused in any candle model. This room owns the numerics; it must not
//! know about models, data or training loops.
//!
//! # Shapes
//! Logits are `[N, K]` (N examples, K classes) or `[B, T, V]` (B sequences of T
//! tokens over a vocabulary of V); targets are `[N]` or `[B, T]`, `u32` or `i64`.
//! Rank-3 inputs are flattened to `[B·T, V]` rows: at token level every target token
//! is one row. A row whose target equals `ignore_index` (padding) contributes nothing
//! to the value, the gradient or the denominator.
//!
//! # Precision
//! `f32` and `f64` logits are used as they are; `bf16` and `f16` logits are upcast to
//! `f32` first (the fused CUDA kernel reads them in place and accumulates in `f32`),
//! so the reduction always runs in at least single precision.
//!
//! # Exact accumulation
//! Each loss has a `*_sum` variant returning a [`LossSum`]: the sum over counted rows
//! and their number. For gradient accumulation over micro-batches, backpropagate
//! `sum_i / (n_1 + … + n_m)` for each micro-batch `i` (count the targets first with
//! [`count_targets`]): the accumulated gradient then equals the gradient of one big
//! batch exactly, which the mean of per-micro-batch means does not when the micro-batches
//! hold different numbers of non-pad tokens.

mod chunked;
mod complement;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod hierarchy;
mod projected;
mod row_kernels;
mod rows;

pub use chunked::{
    chunked_complement_entropy, chunked_complement_entropy_sum, chunked_cross_entropy,
    chunked_cross_entropy_sum,
};
pub use complement::{
    complement_entropy, complement_entropy_sum, guided_complement_entropy,
    guided_complement_entropy_sum, ComplementOptions, Form, Normalization,
};
pub use cross_entropy::{cross_entropy, cross_entropy_sum, CrossEntropyOptions};
pub use hierarchy::{
    hierarchical_complement_entropy, hierarchical_complement_entropy_sum, LabelHierarchy,
};
pub use projected::{projected_token_loss, projected_token_loss_and_correct, ProjectedLoss};
pub use rows::count_targets;

use candle_core::{Result, Tensor};

/// A loss summed over its counted rows, with the number of rows counted.
///
/// `sum / count` is the mean the non-`_sum` functions return. Keep the pair when
/// accumulating over micro-batches: `(s1 + s2) / (n1 + n2)` is the loss of the
/// union, the mean of means is not.
#[derive(Debug, Clone)]
pub struct LossSum {
    /// Scalar tensor: the sum of the per-row losses over counted rows (already
    /// divided by the normalization, for complement losses). Carries the graph.
    pub sum: Tensor,
    /// Number of rows (examples or non-pad tokens) that were counted.
    pub count: usize,
}

impl LossSum {
    /// The mean over counted rows, `sum / count`; zero (not NaN) when nothing was
    /// counted, so a batch made only of padding leaves the weights unchanged.
    pub fn mean(&self) -> Result<Tensor> {
        if self.count == 0 {
            return self.sum.zeros_like();
        }
        self.sum.affine(1.0 / self.count as f64, 0.0)
    }

    /// The sum divided by an explicit denominator, e.g. the number of counted rows
    /// over all micro-batches of an accumulated step.
    pub fn scaled(&self, denominator: usize) -> Result<Tensor> {
        if denominator == 0 {
            return self.sum.zeros_like();
        }
        self.sum.affine(1.0 / denominator as f64, 0.0)
    }
}
