//! Reusing cotext's token-level losses in your own candle model.
//!
//! The model here is the user's, not cotext's: a two-layer next-token predictor
//! (embedding → tanh MLP → vocabulary) written with plain candle-nn. It is trained
//! with Complement Objective Training as in the paper's Algorithm 1: per mini-batch,
//! one cross-entropy step with optimizer A, then a second forward pass with the
//! updated weights and one complement-entropy step with optimizer B. The two
//! optimizers keep separate state. Padding (token 0) is ignored by both losses.
//!
//! Run: `cargo run --release --example reuse_loss`

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{
    embedding, linear, AdamW, Embedding, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap,
};
use cotext::loss::{self, ComplementOptions, CrossEntropyOptions};

const VOCAB: usize = 50;
const PAD: u32 = 0;

/// The user's own model.
struct NextToken {
    emb: Embedding,
    hidden: Linear,
    out: Linear,
}

impl NextToken {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            emb: embedding(VOCAB, 32, vb.pp("emb"))?,
            hidden: linear(32, 64, vb.pp("hidden"))?,
            out: linear(64, VOCAB, vb.pp("out"))?,
        })
    }

    /// `[B, T]` token ids → `[B, T, V]` logits for the next token.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.hidden.forward(&self.emb.forward(ids)?)?.tanh()?;
        self.out.forward(&h)
    }
}

/// A toy corpus: sequences where each next token is `(3·t + 1) mod (V − 1) + 1`,
/// of varying lengths, padded with 0. Inputs and targets are shifted by one.
fn batch(step: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let (b, t) = (16, 12);
    let mut inputs = vec![PAD; b * t];
    let mut targets = vec![PAD; b * t];
    for row in 0..b {
        let len = 4 + (row * 7 + step) % (t - 3);
        let mut tok = 1 + ((row * 13 + step * 5) % (VOCAB - 1)) as u32;
        for pos in 0..len {
            let next = (3 * tok + 1) % (VOCAB as u32 - 1) + 1;
            inputs[row * t + pos] = tok;
            targets[row * t + pos] = next;
            tok = next;
        }
    }
    Ok((
        Tensor::from_vec(inputs, (b, t), device)?,
        Tensor::from_vec(targets, (b, t), device)?,
    ))
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = NextToken::new(VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    // Two optimizers over the same parameters, each with its own moment estimates.
    let mut opt_ce = AdamW::new(varmap.all_vars(), params.clone())?;
    let mut opt_complement = AdamW::new(varmap.all_vars(), params)?;

    let ce_opts = CrossEntropyOptions::default().with_ignore_index(PAD);
    // Exact form, divided by ln(V − 1) so the complement loss lies in [−1, 0].
    let complement_opts = ComplementOptions {
        normalization: loss::Normalization::LogClassesMinusOne,
        ..ComplementOptions::default()
    }
    .with_ignore_index(PAD);

    println!("step   cross-entropy   complement (−H_c / ln(V−1))");
    for step in 0..60 {
        let (ids, targets) = batch(step, &device)?;
        // 1. Cross-entropy step (optimizer A).
        let ce = loss::cross_entropy(&model.forward(&ids)?, &targets, &ce_opts)?;
        opt_ce.backward_step(&ce)?;
        // 2. Second forward with the updated weights, complement step (optimizer B).
        let logits = model.forward(&ids)?;
        let complement = loss::complement_entropy(&logits, &targets, &complement_opts)?;
        opt_complement.backward_step(&complement)?;
        if step % 10 == 0 || step == 59 {
            println!(
                "{step:>4}   {:>13.4}   {:>10.4}",
                ce.to_scalar::<f32>()?,
                complement.to_scalar::<f32>()?
            );
        }
    }
    Ok(())
}
