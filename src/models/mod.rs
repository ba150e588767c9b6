//! Text classifiers that train end to end on candle: a BiLSTM, a Transformer encoder
//! from scratch, and a BERT-family encoder (MiniLM, BERT) loaded from HF weights;
//! and translation models ([`seq2seq`]: attentional LSTM, Transformer).
//!
//! This room owns the networks, their parameters (in a [`VarMap`]), their seeded init
//! and dropout, and saving/loading their weights. It does not tokenize, batch, compute
//! losses or step optimizers.
//!
//! The trainer sees one type, [`Model`]:
//! `model.forward(&ids, &mask, train)` gives logits `[B, K]` for ids `[B, T]` (u32)
//! and an attention mask `[B, T]` (1 real, 0 padding; any dtype), and
//! [`Model::varmap`] lists every trainable variable.
//!
//! **Gradient coverage.** candle's fast `LayerNorm`, `RmsNorm`, `softmax_last_dim`,
//! rope and sdpa record no backward: a model built on them trains only what lies
//! downstream, without any error. Every layer here uses ops that backpropagate (on
//! the CPU, fused kernels for layer norm, softmax, GELU and the LSTM recurrence, with
//! backward passes checked against finite differences and against plain ops), and the
//! tests `tests/models_*.rs` check that *every* variable of every model receives a
//! non-zero gradient.

pub mod bert;
pub mod bilstm;
pub(crate) mod fused;
pub mod layers;
pub mod memory;
pub mod params;
pub mod seq2seq;
#[cfg(test)]
mod testutil;
pub mod transformer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;

use crate::rng::SplitMix64;

pub use bert::{Bert, BertClassifier, BertConfig, BertPooling, HfBertConfig};
pub use bilstm::{BiLstm, BiLstmClassifier, BiLstmConfig, LstmPooling};
pub use layers::SharedRng;
pub use params::{Init, Params};
pub use seq2seq::{
    AttentionScore, DecoderState, Encoded, LstmSeq2SeqConfig, Seq2Seq, Seq2SeqConfig,
    TransformerSeq2SeqConfig,
};
pub use transformer::{
    NormPosition, Pooling, PositionEncoding, TransformerClassifier, TransformerConfig,
    TransformerEncoder,
};

/// Which network a config builds (TOML: the `[model]` table, chosen by
/// `kind = "bilstm" | "transformer" | "bert"`; the other keys are the chosen
/// variant's fields, unknown keys rejected).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// [`BiLstmClassifier`], fields in [`BiLstmConfig`].
    Bilstm(BiLstmConfig),
    /// [`TransformerClassifier`], fields in [`TransformerConfig`].
    Transformer(TransformerConfig),
    /// [`BertClassifier`], fields in [`BertConfig`].
    Bert(BertConfig),
    /// Translation: the attentional LSTM encoder-decoder, fields in
    /// [`LstmSeq2SeqConfig`] (`kind = "lstm_attention"`).
    LstmAttention(seq2seq::LstmSeq2SeqConfig),
    /// Translation: the Transformer encoder-decoder, fields in
    /// [`TransformerSeq2SeqConfig`](seq2seq::TransformerSeq2SeqConfig)
    /// (`kind = "transformer_seq2seq"`).
    TransformerSeq2seq(seq2seq::TransformerSeq2SeqConfig),
}

impl ModelConfig {
    /// The translation model this config describes, if it is one.
    pub fn seq2seq(&self) -> Option<seq2seq::Seq2SeqConfig> {
        match self {
            ModelConfig::LstmAttention(c) => Some(seq2seq::Seq2SeqConfig::Lstm(c.clone())),
            ModelConfig::TransformerSeq2seq(c) => {
                Some(seq2seq::Seq2SeqConfig::Transformer(c.clone()))
            }
            _ => None,
        }
    }

    /// Checks every field of every model kind, naming the key: the one place
    /// `[model]` is validated (the config loader calls it, and building a model
    /// checks again).
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the key.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: &str, v: f64| -> crate::Result<()> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(crate::Error::Config(format!(
                    "model.{what} must be in [0, 1), got {v}"
                )))
            }
        };
        match self {
            ModelConfig::Bilstm(c) => {
                bad("dropout", c.dropout)?;
                if c.embed_dim == 0 || c.hidden == 0 || c.layers == 0 {
                    return Err(crate::Error::Config(
                        "model.embed_dim, model.hidden and model.layers must be positive".into(),
                    ));
                }
            }
            ModelConfig::Transformer(c) => {
                bad("dropout", c.dropout)?;
                bad("attention_dropout", c.attention_dropout)?;
                if c.heads == 0 || !c.d_model.is_multiple_of(c.heads) {
                    return Err(crate::Error::Config(format!(
                        "model.d_model ({}) must be a positive multiple of model.heads ({})",
                        c.d_model, c.heads
                    )));
                }
                if c.layers == 0 || c.ffn_dim == 0 || c.max_len == 0 {
                    return Err(crate::Error::Config(
                        "model.layers, model.ffn_dim and model.max_len must be positive".into(),
                    ));
                }
            }
            ModelConfig::Bert(c) => {
                bad("classifier_dropout", c.classifier_dropout)?;
                for (what, v) in [
                    ("hidden_dropout", c.hidden_dropout),
                    ("attention_dropout", c.attention_dropout),
                ] {
                    if let Some(v) = v {
                        bad(what, v)?;
                    }
                }
            }
            ModelConfig::LstmAttention(_) | ModelConfig::TransformerSeq2seq(_) => {
                self.seq2seq().expect("a translation model").validate()?;
            }
        }
        Ok(())
    }

    /// The most tokens a sequence may have, where the model has a limit: a
    /// Transformer's learned position table, or, for BERT, the checkpoint's
    /// `max_position_embeddings` (read from its `config.json` in `bert_dir`, the
    /// resolved model folder). `None`: no limit (LSTMs, sinusoidal positions).
    ///
    /// # Errors
    /// The BERT `config.json`'s errors, naming it.
    pub fn max_positions(&self, bert_dir: Option<&Path>) -> crate::Result<Option<usize>> {
        Ok(match self {
            ModelConfig::Transformer(c) => Some(c.max_len),
            ModelConfig::TransformerSeq2seq(c) => Some(c.max_len),
            ModelConfig::Bert(c) => {
                let dir = bert_dir.unwrap_or(&c.path);
                Some(HfBertConfig::from_file(&dir.join("config.json"))?.max_position_embeddings)
            }
            ModelConfig::Bilstm(_) | ModelConfig::LstmAttention(_) => None,
        })
    }

    /// Builds the model for a tokenizer of `vocab` ids and `classes` labels, with
    /// weights and dropout masks drawn from `seed` (a BERT encoder's weights come from
    /// its checkpoint; only the head is drawn).
    pub fn build(
        &self,
        vocab: usize,
        classes: usize,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> crate::Result<Model> {
        self.build_mixed(vocab, classes, dtype, dtype, device, seed)
    }

    /// As [`ModelConfig::build`], with variables in `dtype` (the master weights) and
    /// the forward and backward passes computed in `compute` (bf16 or f16 for mixed
    /// precision; layer norms and softmaxes still normalize in f32).
    pub fn build_mixed(
        &self,
        vocab: usize,
        classes: usize,
        dtype: DType,
        compute: DType,
        device: &Device,
        seed: u64,
    ) -> crate::Result<Model> {
        if classes < 2 {
            return Err(crate::Error::Config(format!(
                "a classifier needs at least 2 classes, got {classes}"
            )));
        }
        self.validate()?;
        let varmap = VarMap::new();
        let params = Params::new(varmap.clone(), dtype, device, seed).with_compute_dtype(compute);
        // A stream independent of the init's.
        let rng = SharedRng::new(SplitMix64::new(seed ^ 0xD20F_0A7C_5EED_0001).next_u64());
        let net = match self {
            ModelConfig::Bilstm(c) => Net::BiLstm(BiLstmClassifier::build(
                c,
                vocab,
                classes,
                &params,
                rng.clone(),
            )?),
            ModelConfig::Transformer(c) => Net::Transformer(TransformerClassifier::build(
                c,
                vocab,
                classes,
                &params,
                rng.clone(),
            )?),
            ModelConfig::Bert(c) => {
                let m = BertClassifier::load(c, classes, &params, rng.clone())?;
                if vocab > m.hf_config().vocab_size {
                    return Err(crate::Error::Config(format!(
                        "the tokenizer has {vocab} ids but {} has a vocabulary of {}",
                        c.path.display(),
                        m.hf_config().vocab_size
                    )));
                }
                Net::Bert(m)
            }
            ModelConfig::LstmAttention(_) | ModelConfig::TransformerSeq2seq(_) => {
                return Err(crate::Error::Config(
                    "model.kind is a translation model (lstm_attention, transformer_seq2seq); \
                     a classification data set needs bilstm, transformer or bert"
                        .into(),
                ))
            }
        };
        Ok(Model {
            net,
            varmap,
            rng,
            classes,
        })
    }
}

/// The concrete network inside a [`Model`].
#[derive(Debug, Clone)]
pub enum Net {
    /// A BiLSTM classifier.
    BiLstm(BiLstmClassifier),
    /// A Transformer classifier.
    Transformer(TransformerClassifier),
    /// A BERT-family classifier.
    Bert(BertClassifier),
}

/// A classifier with its variables and dropout RNG: what the trainer holds.
#[derive(Clone)]
pub struct Model {
    net: Net,
    varmap: VarMap,
    rng: SharedRng,
    classes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("net", &self.net)
            .field("classes", &self.classes)
            .field("variables", &self.varmap.all_vars().len())
            .finish()
    }
}

impl Model {
    /// Logits `[B, K]` for ids `[B, T]` and mask `[B, T]`; dropout only when `train`.
    ///
    /// With `train` false the network runs on detached copies of its weights (candle
    /// has no no-grad mode): no backward graph is recorded, intermediate tensors are
    /// freed as soon as they are used, and the logits carry no gradient.
    ///
    /// Under mixed precision (`train.precision = "bf16"` or `"f16"`) the network
    /// computes in half precision and the logits come out as f32, so every loss
    /// reduces in single precision.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let logits = if !train {
            match &self.net {
                Net::BiLstm(m) => m.detached().forward(ids, mask, false),
                Net::Transformer(m) => m.detached().forward(ids, mask, false),
                Net::Bert(m) => m.detached().forward(ids, mask, false),
            }
        } else {
            match &self.net {
                Net::BiLstm(m) => m.forward(ids, mask, true),
                Net::Transformer(m) => m.forward(ids, mask, true),
                Net::Bert(m) => m.forward(ids, mask, true),
            }
        }?;
        layers::upcast_half(&logits)
    }

    /// The input embeddings `[B, T, D]` of ids `[B, T]`, detached: the lookup into
    /// the word embedding table, cast to the compute dtype, before anything else
    /// (embedding dropout, the Transformer's √d scale and positions, BERT's
    /// positions, token types and layer norm all belong to
    /// [`Model::forward_embeddings`]). Padding positions hold the pad token's row.
    ///
    /// This is where adversarial attacks act (see [`crate::attack`]).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let emb = match &self.net {
            Net::BiLstm(m) => m.embed(ids),
            Net::Transformer(m) => m.embed(ids),
            Net::Bert(m) => m.embed(ids),
        }?;
        Ok(emb.detach())
    }

    /// The word embedding table `[V, D]`, detached, in the compute dtype: row `i`
    /// is what [`Model::embed`] gives for id `i`.
    pub fn embedding_table(&self) -> Result<Tensor> {
        let e = self.word_embedding();
        e.embeddings().detach().to_dtype(e.compute_dtype())
    }

    /// Logits `[B, K]` from input embeddings `[B, T, D]` (as [`Model::embed`] gives
    /// them, or perturbed) and mask `[B, T]`; dropout only when `train`.
    /// `forward(ids, mask, train)` equals
    /// `forward_embeddings(&embed(ids)?, mask, train)` bit for bit.
    ///
    /// With `train` false the weights are detached as in [`Model::forward`], but a
    /// gradient still flows to `emb` when it is a variable: that is how an attack
    /// gets `∂loss/∂emb` without touching the weights' gradients.
    pub fn forward_embeddings(&self, emb: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        // Perturbations are computed in f32; the network expects its compute dtype.
        let emb = emb.to_dtype(self.compute_dtype())?;
        let logits = if !train {
            match &self.net {
                Net::BiLstm(m) => m.detached().forward_embeddings(&emb, mask, false),
                Net::Transformer(m) => m.detached().forward_embeddings(&emb, mask, false),
                Net::Bert(m) => m.detached().forward_embeddings(&emb, mask, false),
            }
        } else {
            match &self.net {
                Net::BiLstm(m) => m.forward_embeddings(&emb, mask, true),
                Net::Transformer(m) => m.forward_embeddings(&emb, mask, true),
                Net::Bert(m) => m.forward_embeddings(&emb, mask, true),
            }
        }?;
        layers::upcast_half(&logits)
    }

    /// The dtype the network computes in (f32, or bf16/f16 under mixed precision).
    pub fn compute_dtype(&self) -> DType {
        self.word_embedding().compute_dtype()
    }

    fn word_embedding(&self) -> &layers::Embedding {
        match &self.net {
            Net::BiLstm(m) => m.word_embedding(),
            Net::Transformer(m) => m.word_embedding(),
            Net::Bert(m) => m.word_embedding(),
        }
    }

    /// Every trainable variable, by name.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The network.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.classes
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The dropout RNG's state (save it in checkpoints).
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    /// Restores the dropout RNG's state.
    pub fn set_rng_state(&self, state: u64) {
        self.rng.set_state(state)
    }

    /// Every tensor a checkpoint holds: the variables plus, for BERT, the checkpoint
    /// tensors kept untrained (the pooler when another pooling is used). Names are
    /// HF's for BERT.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut out = varmap_tensors(&self.varmap);
        if let Net::Bert(b) = &self.net {
            for (k, t) in b.frozen() {
                out.entry(k.clone()).or_insert_with(|| t.clone());
            }
        }
        out
    }

    /// Writes [`Model::tensors`] to a safetensors file at `path`, atomically.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        crate::fsio::save_tensors(path, &self.tensors())
    }

    /// Sets every variable from the safetensors file at `path`, which must hold each
    /// of them with the same shape (extra tensors are ignored).
    pub fn load_weights(&self, path: &Path) -> crate::Result<()> {
        load_varmap(&self.varmap, path)
    }
}

/// Every variable of `varmap`, detached, by name.
pub(crate) fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

/// Sets every variable of `varmap` from the safetensors file at `path`, which must
/// hold each of them with the same shape (extra tensors are ignored).
pub(crate) fn load_varmap(varmap: &VarMap, path: &Path) -> crate::Result<()> {
    if !path.is_file() {
        return Err(crate::Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let data = candle_core::safetensors::load(path, &Device::Cpu)?;
    let vars = varmap.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let t = data
            .get(name.as_str())
            .ok_or_else(|| crate::Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("tensor {name} is missing"),
            })?;
        if t.shape() != var.shape() {
            return Err(crate::Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor {name} has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            });
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// What the training loop needs from any model it trains: its variables, its
/// weights to save and load, and its dropout RNG state (for exact resume).
/// Implemented by [`Model`] (classifiers) and [`seq2seq::Seq2Seq`].
pub trait Trainable {
    /// The variables, by name.
    fn varmap(&self) -> &VarMap;
    /// The weights to save, by name.
    fn tensors(&self) -> HashMap<String, Tensor>;
    /// Loads saved weights.
    fn load_weights(&self, path: &Path) -> crate::Result<()>;
    /// The dropout RNG's state.
    fn rng_state(&self) -> u64;
    /// Restores the dropout RNG's state.
    fn set_rng_state(&self, state: u64);

    /// Every trainable variable, by name.
    fn vars(&self) -> Vec<(String, candle_core::Var)> {
        let data = self.varmap().data().lock().expect("VarMap lock");
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

macro_rules! trainable_by_inherent_methods {
    ($t:ty) => {
        impl Trainable for $t {
            fn varmap(&self) -> &VarMap {
                <$t>::varmap(self)
            }
            fn tensors(&self) -> HashMap<String, Tensor> {
                <$t>::tensors(self)
            }
            fn load_weights(&self, path: &Path) -> crate::Result<()> {
                <$t>::load_weights(self, path)
            }
            fn rng_state(&self) -> u64 {
                <$t>::rng_state(self)
            }
            fn set_rng_state(&self, state: u64) {
                <$t>::set_rng_state(self, state)
            }
        }
    };
}

trainable_by_inherent_methods!(Model);
trainable_by_inherent_methods!(seq2seq::Seq2Seq);
