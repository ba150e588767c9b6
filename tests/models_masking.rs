//! Padding must not change a sentence's representation: the same sentence alone and
//! padded inside a batch gives the same logits (and, for the BiLSTM, the same outputs
//! at real positions and the same final states).

mod models_support;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use cotext::models::{
    layers::{Dropout, SharedRng},
    BertConfig, BertPooling, BiLstm, BiLstmConfig, LstmPooling, ModelConfig, NormPosition, Params,
    Pooling, PositionEncoding, TransformerConfig,
};
use models_support::*;

/// Row 1 of a batch of 3 (lengths 7, 4, 2, padded to 9) against the same 4 tokens
/// alone.
fn alone_and_batched(vocab: u32) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (ids, mask) = batch(vocab, &[7, 4, 2], 9, 21)?;
    let alone_ids = ids.get(1)?.narrow(0, 0, 4)?.unsqueeze(0)?;
    let alone_mask = Tensor::ones((1, 4), DType::U32, &Device::Cpu)?;
    Ok((ids, mask, alone_ids, alone_mask))
}

fn check(what: &str, cfg: &ModelConfig, vocab: usize) -> Result<()> {
    let model = cfg.build(vocab, 5, DType::F32, &Device::Cpu, 4).unwrap();
    let (ids, mask, alone_ids, alone_mask) = alone_and_batched(vocab as u32)?;
    let batched = model.forward(&ids, &mask, false)?.get(1)?;
    let alone = model.forward(&alone_ids, &alone_mask, false)?.get(0)?;
    let diff = max_abs_diff(&batched, &alone)?;
    assert!(
        diff < 1e-5,
        "{what}: padded vs alone logits differ by {diff}"
    );
    // The check can fail: the other rows' logits differ from this one's.
    let other = model.forward(&ids, &mask, false)?.get(0)?;
    assert!(
        max_abs_diff(&other, &alone)? > 1e-4,
        "{what}: logits do not depend on the input"
    );
    // A row with no real token at all still gives finite logits.
    let (ids, mask) = batch(vocab as u32, &[3, 0], 5, 9)?;
    let logits = model
        .forward(&ids, &mask, false)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert!(
        logits.iter().all(|x| x.is_finite()),
        "{what}: empty row gives {logits:?}"
    );
    Ok(())
}

#[test]
fn bilstm_logits_ignore_padding() -> Result<()> {
    for pooling in [LstmPooling::Max, LstmPooling::Mean, LstmPooling::Last] {
        let cfg = ModelConfig::Bilstm(BiLstmConfig {
            embed_dim: 6,
            hidden: 5,
            layers: 2,
            dropout: 0.3,
            pooling,
        });
        check(&format!("bilstm {pooling:?}"), &cfg, 30)?;
    }
    Ok(())
}

#[test]
fn bilstm_outputs_and_final_states_ignore_padding() -> Result<()> {
    let dev = Device::Cpu;
    let p = Params::new(VarMap::new(), DType::F64, &dev, 8);
    let lstm = BiLstm::build(3, 4, 2, Dropout::new(0.0, SharedRng::new(0))?, &p)?;
    let mut g = cotext::rng::SplitMix64::new(1);
    let xs: Vec<f64> = (0..2 * 6 * 3).map(|_| g.normal()).collect();
    let xs = Tensor::from_vec(xs, (2, 6, 3), &dev)?;
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], &dev)?;
    let out = lstm.forward(&xs, &mask, false)?;
    let alone = lstm.forward(
        &xs.get(1)?.narrow(0, 0, 3)?.unsqueeze(0)?,
        &Tensor::ones((1, 3), DType::U32, &dev)?,
        false,
    )?;
    let real = out.outputs.get(1)?.narrow(0, 0, 3)?;
    assert!(
        max_abs_diff(&real, &alone.outputs.get(0)?)? < 1e-12,
        "outputs at real positions"
    );
    assert!(
        max_abs_diff(&out.last.get(1)?, &alone.last.get(0)?)? < 1e-12,
        "final states"
    );
    let pads = out.outputs.get(1)?.narrow(0, 3, 3)?;
    assert_eq!(
        pads.abs()?.sum_all()?.to_scalar::<f64>()?,
        0.0,
        "padded outputs are zero"
    );
    // The backward direction's final state is the one after the first token: it must
    // differ from the forward one and from the unmasked (padding-reading) run.
    let unmasked = lstm.forward(&xs, &Tensor::ones((2, 6), DType::U32, &dev)?, false)?;
    assert!(max_abs_diff(&unmasked.last.get(1)?, &alone.last.get(0)?)? > 1e-6);
    Ok(())
}

#[test]
fn transformer_logits_ignore_padding() -> Result<()> {
    for norm in [NormPosition::Pre, NormPosition::Post] {
        for positions in [PositionEncoding::Sinusoidal, PositionEncoding::Learned] {
            for pooling in [Pooling::Cls, Pooling::Mean] {
                let cfg = ModelConfig::Transformer(TransformerConfig {
                    d_model: 8,
                    heads: 2,
                    layers: 2,
                    ffn_dim: 16,
                    max_len: 16,
                    norm,
                    positions,
                    pooling,
                    ..TransformerConfig::default()
                });
                check(
                    &format!("transformer {norm:?} {positions:?} {pooling:?}"),
                    &cfg,
                    30,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn tiny_bert_logits_ignore_padding() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_tiny_bert(dir.path(), true, 6)?;
    for pooling in [BertPooling::Cls, BertPooling::Mean, BertPooling::Pooler] {
        let mut cfg = BertConfig::new(dir.path());
        cfg.pooling = pooling;
        check(
            &format!("tiny bert {pooling:?}"),
            &ModelConfig::Bert(cfg),
            50,
        )?;
    }
    Ok(())
}
