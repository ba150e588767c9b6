//! Shared helpers for the `models_*` integration tests.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use cotext::models::{layers, Bert, HfBertConfig, Params, SharedRng};
use cotext::rng::SplitMix64;

/// The all-MiniLM-L6-v2 directory: `$COTEXT_MINILM`, else
/// `${COTEXT_CACHE:-$HOME/.cache/cotext}/all-minilm-l6-v2`. `None` (with the reason
/// printed) when its files are absent: run `scripts/fetch-minilm.sh`.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("COTEXT_MINILM") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = match std::env::var_os("COTEXT_CACHE") {
                Some(c) => PathBuf::from(c),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/cotext"),
            };
            cache.join("all-minilm-l6-v2")
        }
    };
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            common::skip(&format!(
                "{} not found (run scripts/fetch-minilm.sh or set COTEXT_MINILM)",
                dir.join(f).display()
            ));
            return None;
        }
    }
    Some(dir)
}

/// The config.json of a tiny random BERT.
pub const TINY_BERT_CONFIG: &str = r#"{
  "architectures": ["BertModel"],
  "model_type": "bert",
  "vocab_size": 50,
  "hidden_size": 8,
  "num_hidden_layers": 2,
  "num_attention_heads": 2,
  "intermediate_size": 16,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 32,
  "type_vocab_size": 2,
  "initializer_range": 0.02,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0
}"#;

/// Writes a tiny random BERT checkpoint (config.json + model.safetensors with a
/// pooler, HF names, with or without the `bert.` prefix) into `dir`.
pub fn write_tiny_bert(dir: &Path, with_prefix: bool, seed: u64) -> Result<()> {
    std::fs::write(dir.join("config.json"), TINY_BERT_CONFIG)?;
    let hf: HfBertConfig = serde_json::from_str(TINY_BERT_CONFIG).unwrap();
    let varmap = VarMap::new();
    let p = Params::new(varmap.clone(), DType::F32, &Device::Cpu, seed);
    Bert::build(&hf, &p, 0.0, 0.0, SharedRng::new(0))?;
    let d = hf.hidden_size;
    let mut g = SplitMix64::new(seed ^ 77);
    let mut rand = |shape: &[usize]| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (0.3 * g.normal()) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    };
    let prefix = if with_prefix { "bert." } else { "" };
    let mut out = HashMap::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let t = rand(var.dims())?;
        // LayerNorm weights near 1 keep activations in a sensible range.
        let t = if name.ends_with("LayerNorm.weight") {
            (t + 1.0)?
        } else {
            t
        };
        out.insert(format!("{prefix}{name}"), t);
    }
    out.insert(format!("{prefix}pooler.dense.weight"), rand(&[d, d])?);
    out.insert(format!("{prefix}pooler.dense.bias"), rand(&[d])?);
    let ids: Vec<i64> = (0..hf.max_position_embeddings as i64).collect();
    out.insert(
        format!("{prefix}embeddings.position_ids"),
        Tensor::from_vec(ids, (1, hf.max_position_embeddings), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&out, dir.join("model.safetensors"))
}

/// Random ids in `1..vocab` `[B, T]` with rows of the given lengths padded (id 0) to
/// `t`, and the mask.
pub fn batch(vocab: u32, lens: &[usize], t: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut g = SplitMix64::new(seed);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for &l in lens {
        for i in 0..t {
            if i < l {
                ids.push(1 + (g.next_u64() % (vocab as u64 - 1)) as u32);
                mask.push(1u32);
            } else {
                ids.push(0);
                mask.push(0);
            }
        }
    }
    let b = lens.len();
    Ok((
        Tensor::from_vec(ids, (b, t), &Device::Cpu)?,
        Tensor::from_vec(mask, (b, t), &Device::Cpu)?,
    ))
}

/// Σ_i log softmax(logits_i)[target_i].
pub fn log_likelihood(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let t = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    layers::log_softmax_last_dim(logits)?
        .gather(&t, 1)?
        .sum_all()
}

/// Backpropagates `loss` and returns each variable's gradient norm, by name.
pub fn grad_norms(varmap: &VarMap, loss: &Tensor) -> Result<Vec<(String, Option<f64>)>> {
    let grads = loss.backward()?;
    let data = varmap.data().lock().unwrap();
    let mut out: Vec<(String, Option<f64>)> = data
        .iter()
        .map(|(name, var): (&String, &Var)| {
            let norm = grads
                .get(var.as_tensor())
                .map(|g| {
                    g.to_dtype(DType::F64)?
                        .sqr()?
                        .sum_all()?
                        .sqrt()?
                        .to_scalar::<f64>()
                })
                .transpose()?;
            Ok((name.clone(), norm))
        })
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Asserts every variable got a finite, non-zero gradient; names the ones that did not.
pub fn assert_all_trained(what: &str, norms: &[(String, Option<f64>)]) {
    let bad: Vec<String> = norms
        .iter()
        .filter(|(_, n)| !matches!(n, Some(x) if x.is_finite() && *x > 0.0))
        .map(|(name, n)| format!("{name}: {n:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} variables got no usable gradient: {bad:?}",
        bad.len(),
        norms.len()
    );
}

/// max |a − b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}
