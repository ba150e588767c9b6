//! BERT: same outputs as candle-transformers' `BertModel` on the same weights, HF-named
//! checkpoints that round-trip into `BertModel` and back, clear errors on bad
//! checkpoints. Runs on a tiny random BERT always, and on all-MiniLM-L6-v2 when
//! `scripts/fetch-minilm.sh` has fetched it.

mod models_support;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder, SGD};
use candle_transformers::models::bert as ct;
use cotext::models::{BertConfig, BertPooling, Model, ModelConfig, Net};
use models_support::*;

fn build(dir: &Path, pooling: BertPooling, classes: usize) -> Model {
    let mut cfg = BertConfig::new(dir);
    cfg.pooling = pooling;
    ModelConfig::Bert(cfg)
        .build(0, classes, DType::F32, &Device::Cpu, 17)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn encoder_output(model: &Model, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    match model.net() {
        Net::Bert(b) => b.bert().forward(ids, mask, false),
        _ => unreachable!(),
    }
}

/// candle-transformers' `BertModel` loaded from `dir`, run on the same inputs.
fn reference_output(dir: &Path, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let cfg: ct::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    let model = ct::BertModel::load(vb, &cfg)?;
    model.forward(ids, &ids.zeros_like()?, Some(mask))
}

/// Perturbs every weight with one large SGD step on a classification loss (a stand-in
/// for fine-tuning), and checks the encoder output moved.
fn fine_tune_once(model: &Model, ids: &Tensor, mask: &Tensor) -> Result<()> {
    let before = encoder_output(model, ids, mask)?;
    let mut sgd = SGD::new(model.varmap().all_vars(), 0.05)?;
    let targets: Vec<u32> = (0..ids.dim(0)? as u32).map(|i| i % 3).collect();
    let loss = log_likelihood(&model.forward(ids, mask, true)?, &targets)?.neg()?;
    sgd.backward_step(&loss)?;
    let after = encoder_output(model, ids, mask)?;
    assert!(
        max_abs_diff(&before, &after)? > 1e-3,
        "the step changed the encoder"
    );
    Ok(())
}

/// Saves `model` into `out` (with `config.json` from `src`), loads the file into
/// candle-transformers' `BertModel` and into a fresh cotext model, and compares.
fn round_trip(
    model: &Model,
    src: &Path,
    out: &Path,
    ids: &Tensor,
    mask: &Tensor,
    pooling: BertPooling,
) -> Result<f64> {
    std::fs::copy(src.join("config.json"), out.join("config.json"))?;
    model.save(&out.join("model.safetensors")).unwrap();
    let saved = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)?;
    assert!(saved.contains_key("bert.embeddings.word_embeddings.weight"));
    assert!(
        saved.contains_key("bert.pooler.dense.weight"),
        "the pooler is kept even when unused"
    );
    assert!(saved.contains_key("classifier.weight"));
    let ours = encoder_output(model, ids, mask)?;
    let theirs = reference_output(out, ids, mask)?;
    let diff = max_abs_diff(&ours, &theirs)?;
    // Reloading through the config restores the head too: identical logits.
    let reloaded = build(out, pooling, model.num_classes());
    let a = model.forward(ids, mask, false)?;
    let b = reloaded.forward(ids, mask, false)?;
    assert_eq!(max_abs_diff(&a, &b)?, 0.0, "reloaded logits");
    // And load_weights into a model built from the original checkpoint.
    let fresh = build(src, pooling, model.num_classes());
    assert!(max_abs_diff(&fresh.forward(ids, mask, false)?, &a)? > 1e-4);
    fresh.load_weights(&out.join("model.safetensors")).unwrap();
    assert_eq!(
        max_abs_diff(&fresh.forward(ids, mask, false)?, &a)?,
        0.0,
        "load_weights logits"
    );
    Ok(diff)
}

#[test]
fn tiny_bert_matches_candle_transformers_with_and_without_prefix() -> Result<()> {
    let (ids, mask) = batch(50, &[9, 5, 2], 9, 2)?;
    for prefix in [false, true] {
        let dir = tempfile::tempdir()?;
        write_tiny_bert(dir.path(), prefix, 12)?;
        let model = build(dir.path(), BertPooling::Mean, 3);
        let ours = encoder_output(&model, &ids, &mask)?;
        let theirs = reference_output(dir.path(), &ids, &mask)?;
        let diff = max_abs_diff(&ours, &theirs)?;
        eprintln!("tiny bert (prefix {prefix}): max |ours - candle-transformers| = {diff:e}");
        assert!(diff < 1e-5, "prefix {prefix}: {diff}");
    }
    Ok(())
}

#[test]
fn tiny_bert_round_trips_through_hf_names() -> Result<()> {
    let (ids, mask) = batch(50, &[9, 5, 2], 9, 3)?;
    let src = tempfile::tempdir()?;
    write_tiny_bert(src.path(), false, 13)?;
    for pooling in [BertPooling::Mean, BertPooling::Pooler] {
        let model = build(src.path(), pooling, 3);
        fine_tune_once(&model, &ids, &mask)?;
        let out = tempfile::tempdir()?;
        let diff = round_trip(&model, src.path(), out.path(), &ids, &mask, pooling)?;
        assert!(diff < 1e-5, "{pooling:?}: {diff}");
    }
    Ok(())
}

#[test]
fn bad_checkpoints_are_reported_by_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_tiny_bert(dir.path(), false, 14)?;
    let file = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu)?;
    // A head of the wrong size.
    tensors.insert(
        "classifier.weight".into(),
        Tensor::zeros((7, 8), DType::F32, &Device::Cpu)?,
    );
    tensors.insert(
        "classifier.bias".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&tensors, &file)?;
    let err = ModelConfig::Bert(BertConfig::new(dir.path()))
        .build(0, 3, DType::F32, &Device::Cpu, 0)
        .unwrap_err();
    assert!(err.is_user_error());
    assert!(err.to_string().contains("classifier.weight"), "{err}");
    // A missing encoder tensor.
    tensors.remove("encoder.layer.1.output.dense.bias");
    tensors.remove("classifier.weight");
    tensors.remove("classifier.bias");
    candle_core::safetensors::save(&tensors, &file)?;
    let err = ModelConfig::Bert(BertConfig::new(dir.path()))
        .build(0, 3, DType::F32, &Device::Cpu, 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("bert.encoder.layer.1.output.dense.bias"),
        "{err}"
    );
    // No checkpoint at all.
    let err = ModelConfig::Bert(BertConfig::new(dir.path().join("nope")))
        .build(0, 3, DType::F32, &Device::Cpu, 0)
        .unwrap_err();
    assert!(
        err.is_user_error() && err.to_string().contains("nope"),
        "{err}"
    );
    Ok(())
}

/// Real sentences through MiniLM's own tokenizer, with its padding/truncation to 128
/// turned off and the batch padded to its longest sentence.
fn minilm_batch(dir: &Path, sentences: &[&str]) -> (Tensor, Tensor) {
    let mut tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tok.with_padding(None);
    tok.with_truncation(None).unwrap();
    let encs: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| tok.encode(*s, true).unwrap().get_ids().to_vec())
        .collect();
    let t = encs.iter().map(|e| e.len()).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for e in &encs {
        for i in 0..t {
            ids.push(e.get(i).copied().unwrap_or(0));
            mask.push(u32::from(i < e.len()));
        }
    }
    let b = sentences.len();
    (
        Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
    )
}

const SENTENCES: [&str; 4] = [
    "A gripping, beautifully acted film that stays with you long after the credits.",
    "Dull.",
    "The plot is thin, but the soundtrack almost makes up for it.",
    "I expected more from this director; the second half drags badly and the ending is a mess.",
];

#[test]
fn minilm_matches_candle_transformers() -> Result<()> {
    let Some(dir) = minilm_dir() else {
        return Ok(());
    };
    let (ids, mask) = minilm_batch(&dir, &SENTENCES);
    assert!(
        mask.sum_all()?.to_scalar::<u32>()? < ids.elem_count() as u32,
        "the batch has padding"
    );
    let model = build(&dir, BertPooling::Mean, 2);
    let ours = encoder_output(&model, &ids, &mask)?;
    let theirs = reference_output(&dir, &ids, &mask)?;
    let diff = max_abs_diff(&ours, &theirs)?;
    eprintln!(
        "all-MiniLM-L6-v2: max |ours - candle-transformers| = {diff:e} over {:?}",
        ours.dims()
    );
    assert!(diff < 1e-4, "{diff}");
    Ok(())
}

#[test]
fn minilm_round_trips_through_hf_names() -> Result<()> {
    let Some(dir) = minilm_dir() else {
        return Ok(());
    };
    let (ids, mask) = minilm_batch(&dir, &SENTENCES);
    let model = build(&dir, BertPooling::Cls, 3);
    fine_tune_once(&model, &ids, &mask)?;
    let out = tempfile::tempdir()?;
    let diff = round_trip(&model, &dir, out.path(), &ids, &mask, BertPooling::Cls)?;
    eprintln!("fine-tuned MiniLM saved and loaded into candle-transformers: max diff {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    Ok(())
}

/// Forward + backward time of MiniLM on a 32 × 64 batch (train mode, dropout on).
/// Run with `cargo test --release --test models_bert -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run explicitly"]
fn minilm_step_timing() -> Result<()> {
    let Some(dir) = minilm_dir() else {
        return Ok(());
    };
    let model = build(&dir, BertPooling::Mean, 2);
    let lens: Vec<usize> = (0..32).map(|i| 64 - (i % 8) * 4).collect();
    let (ids, mask) = batch(30522, &lens, 64, 1)?;
    let targets: Vec<u32> = (0..32).map(|i| i % 2).collect();
    let reference = {
        let cfg: ct::Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?).unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )?
        };
        ct::BertModel::load(vb, &cfg)?
    };
    for round in 0..3 {
        let t0 = Instant::now();
        let logits = model.forward(&ids, &mask, true)?;
        let loss = log_likelihood(&logits, &targets)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        let _ = model.forward(&ids, &mask, false)?;
        let t3 = Instant::now();
        let _ = reference.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let t4 = Instant::now();
        assert!(grads
            .get(model.varmap().all_vars()[0].as_tensor())
            .is_some());
        eprintln!(
            "round {round}: train forward {:.3}s, backward {:.3}s, eval forward {:.3}s, candle-transformers forward {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64()
        );
    }
    Ok(())
}
