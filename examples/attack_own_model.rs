//! Attacking your own candle classifier with `cotext::attack`.
//!
//! The model here is the user's, not cotext's: a bag-of-embeddings classifier
//! (embedding → masked mean → linear) written with plain candle-nn and trained for
//! a few seconds on a toy task (is the text mostly "positive" ids or "negative"
//! ones?). The attacks only need a closure from input embeddings `[B, T, D]` to
//! logits `[B, K]`; FGSM and PGD return perturbed embeddings, HotFlip returns
//! perturbed ids. ε is relative to the batch's mean token-embedding norm (see the
//! `cotext::attack` docs).
//!
//! Run: `cargo run --release --example attack_own_model`

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{
    embedding, linear, AdamW, Embedding, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap,
};
use cotext::attack::{self, Budget, HotFlipOptions, Norm, PgdOptions};
use cotext::rng::SplitMix64;

const VOCAB: usize = 40;
const PAD: u32 = 0;

/// The user's own model.
struct BagOfEmbeddings {
    emb: Embedding,
    out: Linear,
}

impl BagOfEmbeddings {
    fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            emb: embedding(VOCAB, 16, vb.pp("emb"))?,
            out: linear(16, 2, vb.pp("out"))?,
        })
    }

    /// The split the attacks need: ids → embeddings ...
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.emb.forward(ids)
    }

    /// ... and embeddings (perturbed or not) → logits.
    fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let mean = emb.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
        self.out.forward(&mean)
    }
}

/// Texts of 4–10 ids: ids 1..20 are "negative", 20..40 "positive"; the label is
/// the majority. Returns ids, mask and labels, padded with 0.
fn batch(rng: &mut SplitMix64, b: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let t = 10;
    let (mut ids, mut mask, mut labels) =
        (vec![PAD; b * t], vec![0u32; b * t], Vec::with_capacity(b));
    for row in 0..b {
        let len = 4 + rng.below(7) as usize;
        let mut positive = 0;
        for pos in 0..len {
            let id = 1 + rng.below(VOCAB as u64 - 1) as u32;
            positive += usize::from(id >= 20);
            ids[row * t + pos] = id;
            mask[row * t + pos] = 1;
        }
        labels.push(u32::from(2 * positive > len));
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(ids, (b, t), &dev)?,
        Tensor::from_vec(mask, (b, t), &dev)?,
        Tensor::from_vec(labels, b, &dev)?,
    ))
}

fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    let right = logits.argmax(D::Minus1)?.eq(labels)?.to_dtype(DType::F32)?;
    right.mean_all()?.to_scalar::<f32>()
}

fn main() -> Result<()> {
    let varmap = VarMap::new();
    let model = BagOfEmbeddings::new(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 3e-2,
            ..Default::default()
        },
    )?;
    let mut rng = SplitMix64::new(7);
    for _ in 0..300 {
        let (ids, mask, labels) = batch(&mut rng, 32)?;
        let logits = model.forward_embeddings(&model.embed(&ids)?, &mask)?;
        opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &labels)?)?;
    }

    let (ids, mask, labels) = batch(&mut SplitMix64::new(99), 500)?;
    // Attack with the embeddings detached: gradients go to the input, not the weights.
    let emb = model.embed(&ids)?.detach();
    let forward = |e: &Tensor| model.forward_embeddings(e, &mask);
    println!(
        "clean accuracy           {:.3}",
        accuracy(&forward(&emb)?, &labels)?
    );
    for eps in [0.1, 0.3, 0.5] {
        let budget = Budget {
            eps,
            norm: Norm::Linf,
        };
        let adv = attack::fgsm(forward, &emb, &mask, &labels, budget)?;
        let fgsm = accuracy(&forward(&adv)?, &labels)?;
        let options = PgdOptions {
            budget,
            steps: 10,
            step_size: 0.25,
        };
        let adv = attack::pgd(
            forward,
            &emb,
            &mask,
            &labels,
            &options,
            &mut SplitMix64::new(1),
        )?;
        let pgd = accuracy(&forward(&adv)?, &labels)?;
        println!("ε = {eps:<4} (L∞)  FGSM {fgsm:.3}  PGD {pgd:.3}");
    }
    // HotFlip: any id but the padding may be inserted.
    let allowed: Vec<bool> = (0..VOCAB).map(|id| id as u32 != PAD).collect();
    let table = model.emb.embeddings().detach();
    for flips in [1, 2] {
        let out = attack::hotflip(
            forward,
            &table,
            &ids,
            &mask,
            &labels,
            &HotFlipOptions {
                flips,
                allowed: allowed.clone(),
            },
        )?;
        let acc = accuracy(
            &model.forward_embeddings(&model.embed(&out.ids)?, &mask)?,
            &labels,
        )?;
        let used = out.flips.iter().sum::<usize>() as f32 / out.flips.len() as f32;
        println!("HotFlip K = {flips}            {acc:.3}  ({used:.2} flips per text)");
    }
    Ok(())
}
