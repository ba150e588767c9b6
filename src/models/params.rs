//! Creating a model's trainable variables: seeded init on the host, or values taken
//! by name from a pretrained checkpoint, all registered in one [`VarMap`].
//!
//! `candle_nn::Init` draws from candle's RNG, which cannot be seeded on the CPU, and
//! `VarMap::load` fails as soon as a variable (a new classification head) is missing
//! from the file. [`Params`] replaces both: every variable is either copied from the
//! pretrained tensors (when one of that name is given) or drawn from our own
//! [`SplitMix64`] stream. The stream is one per model, drawn in the order the
//! variables are created: the same seed and architecture give the same weights bit
//! for bit, but adding, removing or reordering a layer changes the init of every
//! variable created after it (runs are reproduced by their config, not across
//! architectures).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::VarMap;

use crate::rng::SplitMix64;

/// How a freshly created variable is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Uniform in [-a, a].
    Uniform(f64),
}

/// Builds the variables of one model under hierarchical names (`pp` pushes a prefix,
/// as with candle's `VarBuilder`). Clones share the same [`VarMap`] and RNG.
#[derive(Clone)]
pub struct Params {
    varmap: VarMap,
    prefix: Vec<String>,
    dtype: DType,
    compute: DType,
    device: Device,
    rng: Arc<Mutex<SplitMix64>>,
    pretrained: Arc<HashMap<String, Tensor>>,
}

impl Params {
    /// A builder registering new variables in `varmap`, initialised from `seed`.
    pub fn new(varmap: VarMap, dtype: DType, device: &Device, seed: u64) -> Self {
        Self {
            varmap,
            prefix: Vec::new(),
            dtype,
            compute: dtype,
            device: device.clone(),
            rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
            pretrained: Arc::new(HashMap::new()),
        }
    }

    /// Variables whose full name is a key of `tensors` take that tensor's value (cast
    /// to this builder's dtype and device) instead of a random init.
    pub fn with_pretrained(mut self, tensors: HashMap<String, Tensor>) -> Self {
        self.pretrained = Arc::new(tensors);
        self
    }

    /// Layers built from here compute in `compute` (bf16 or f16 for mixed precision;
    /// the default is the variables' own dtype). The variables themselves keep
    /// [`Params::dtype`]: only their uses are cast.
    pub fn with_compute_dtype(mut self, compute: DType) -> Self {
        self.compute = compute;
        self
    }

    /// The dtype layers built from here compute in.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// A builder for the sub-module `name` (names joined with `.`).
    pub fn pp(&self, name: impl ToString) -> Self {
        let mut p = self.clone();
        p.prefix.push(name.to_string());
        p
    }

    /// The full name of variable `name` under the current prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix.join("."))
        }
    }

    /// The dtype of the variables created.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the variables created.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The map holding every variable created so far.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Whether a pretrained tensor exists for `name` under the current prefix.
    pub fn has_pretrained(&self, name: &str) -> bool {
        self.pretrained.contains_key(&self.path(name))
    }

    /// Creates (or returns, when it already exists with the same shape) the variable
    /// `name`: from the pretrained tensors if present there, else drawn from `init`.
    pub fn get(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let path = self.path(name);
        let mut data = self.varmap.data().lock().expect("VarMap lock poisoned");
        if let Some(var) = data.get(&path) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {path} exists with shape {:?}, requested {shape:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        // Fork even when the value comes from the checkpoint, so the init of the other
        // variables does not depend on which ones were pretrained.
        let mut rng = self.rng.lock().expect("rng lock poisoned").fork();
        let tensor = match self.pretrained.get(&path) {
            Some(t) => {
                if t.shape() != &shape {
                    candle_core::bail!(
                        "pretrained tensor {path} has shape {:?}, the model expects {shape:?}",
                        t.shape()
                    );
                }
                t.to_dtype(self.dtype)?.to_device(&self.device)?
            }
            None => {
                let n = shape.elem_count();
                let values: Vec<f64> = match init {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::Normal(std) => (0..n).map(|_| std * rng.normal()).collect(),
                    Init::Uniform(a) => (0..n).map(|_| rng.uniform(-a, a)).collect(),
                };
                Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?
            }
        };
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        data.insert(path, var);
        Ok(out)
    }
}
