//! Every trainable tensor of every model receives a non-zero gradient.
//!
//! This exists to catch candle's silent no-gradient ops (fast `LayerNorm`,
//! `softmax_last_dim`, ...): with one of them in a model, the variables upstream of it
//! get no gradient and no error, and training quietly fits only the head.

mod models_support;

use candle_core::{DType, Device, Result};
use cotext::models::{
    BertConfig, BertPooling, BiLstmConfig, LstmPooling, ModelConfig, Net, NormPosition, Pooling,
    PositionEncoding, TransformerConfig,
};
use models_support::*;

const VOCAB: usize = 40;
const LENS: [usize; 3] = [6, 3, 1];
const TARGETS: [u32; 3] = [0, 2, 1];

fn check(what: &str, cfg: &ModelConfig, vocab: usize, dtype: DType) -> Result<()> {
    let model = cfg.build(vocab, 3, dtype, &Device::Cpu, 11).unwrap();
    let (ids, mask) = batch(vocab as u32, &LENS, 6, 5)?;
    let logits = model.forward(&ids, &mask, true)?;
    assert_eq!(logits.dims(), &[3, 3]);
    let norms = grad_norms(model.varmap(), &log_likelihood(&logits, &TARGETS)?)?;
    assert!(!norms.is_empty());
    assert_all_trained(what, &norms);
    // Evaluation runs on detached weights: no graph, same logits as the tracked net.
    let eval = model.forward(&ids, &mask, false)?;
    assert!(
        !eval.track_op(),
        "{what}: eval logits carry a backward graph"
    );
    let tracked = match model.net() {
        Net::BiLstm(m) => m.forward(&ids, &mask, false)?,
        Net::Transformer(m) => m.forward(&ids, &mask, false)?,
        Net::Bert(m) => m.forward(&ids, &mask, false)?,
    };
    assert!(tracked.track_op());
    assert_eq!(max_abs_diff(&eval, &tracked)?, 0.0, "{what}: eval logits");
    Ok(())
}

#[test]
fn every_bilstm_variable_gets_a_gradient() -> Result<()> {
    for pooling in [LstmPooling::Max, LstmPooling::Mean, LstmPooling::Last] {
        for layers in [1, 2] {
            let cfg = ModelConfig::Bilstm(BiLstmConfig {
                embed_dim: 8,
                hidden: 5,
                layers,
                dropout: 0.2,
                pooling,
            });
            check(
                &format!("bilstm {pooling:?} x{layers}"),
                &cfg,
                VOCAB,
                DType::F32,
            )?;
        }
    }
    // f64 runs the same fused kernels; the plain-op fallback is covered in the unit tests.
    let cfg = ModelConfig::Bilstm(BiLstmConfig {
        embed_dim: 4,
        hidden: 3,
        layers: 2,
        dropout: 0.0,
        pooling: LstmPooling::Max,
    });
    check("bilstm f64", &cfg, VOCAB, DType::F64)
}

#[test]
fn every_transformer_variable_gets_a_gradient() -> Result<()> {
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
                    VOCAB,
                    DType::F32,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn every_tiny_bert_variable_gets_a_gradient() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_tiny_bert(dir.path(), false, 3)?;
    for pooling in [BertPooling::Cls, BertPooling::Mean, BertPooling::Pooler] {
        let mut cfg = BertConfig::new(dir.path());
        cfg.pooling = pooling;
        let cfg = ModelConfig::Bert(cfg);
        check(&format!("tiny bert {pooling:?}"), &cfg, 50, DType::F32)?;
    }
    Ok(())
}

#[test]
fn every_minilm_variable_gets_a_gradient() -> Result<()> {
    let Some(dir) = minilm_dir() else {
        return Ok(());
    };
    let mut cfg = BertConfig::new(dir);
    cfg.pooling = BertPooling::Pooler;
    let model = ModelConfig::Bert(cfg)
        .build(30522, 3, DType::F32, &Device::Cpu, 1)
        .unwrap();
    // 6 layers × 16 + 5 embedding + 2 pooler + 2 head.
    assert_eq!(model.varmap().all_vars().len(), 105);
    let (ids, mask) = batch(30522, &LENS, 6, 9)?;
    let logits = model.forward(&ids, &mask, true)?;
    let norms = grad_norms(model.varmap(), &log_likelihood(&logits, &TARGETS)?)?;
    assert_all_trained("all-MiniLM-L6-v2", &norms);
    Ok(())
}
