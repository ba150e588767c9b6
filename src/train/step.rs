//! One optimization step for each objective: CE, COT (paper Algorithm 1), GCE and
//! HCOT, with exact gradient accumulation over micro-batches and optional
//! gradient clipping. Model-agnostic: the caller passes a closure that runs the
//! model's forward pass in training mode.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::loss::{self, ComplementOptions, CrossEntropyOptions, LabelHierarchy, LossSum};

/// What a training step minimizes.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// Cross-entropy only.
    CrossEntropy,
    /// Complement Objective Training: a cross-entropy step with the primary
    /// optimizer, then a second forward pass with the updated weights and a
    /// complement-entropy step with the complement optimizer (separate state, same
    /// schedule).
    Cot,
    /// Guided complement entropy as the single objective.
    Gce {
        /// Exponent of the guiding factor `p_g^α`.
        alpha: f64,
    },
    /// Hierarchical COT: alternates cross-entropy with the hierarchical complement
    /// entropy, as COT does with the flat one.
    Hcot(LabelHierarchy),
}

impl Objective {
    /// Whether the objective has a second, complement step (and optimizer).
    pub fn alternates(&self) -> bool {
        matches!(self, Objective::Cot | Objective::Hcot(_))
    }

    /// The objective's name as the CLI and configs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::CrossEntropy => "ce",
            Objective::Cot => "cot",
            Objective::Gce { .. } => "gce",
            Objective::Hcot(_) => "hcot",
        }
    }
}

/// The objective names accepted in configs and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    /// Cross-entropy. The default.
    #[default]
    Ce,
    /// Complement Objective Training.
    Cot,
    /// Guided complement entropy.
    Gce,
    /// Hierarchical COT.
    Hcot,
}

impl std::str::FromStr for ObjectiveKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ce" => Ok(Self::Ce),
            "cot" => Ok(Self::Cot),
            "gce" => Ok(Self::Gce),
            "hcot" => Ok(Self::Hcot),
            other => Err(format!("unknown objective {other:?}: expected ce, cot, gce or hcot")),
        }
    }
}

/// Loss settings shared by every step.
#[derive(Debug, Clone, Default)]
pub struct LossConfig {
    /// Cross-entropy options (ignore index, label smoothing).
    pub cross_entropy: CrossEntropyOptions,
    /// Complement options (form, normalization, ignore index) for COT, GCE, HCOT.
    pub complement: ComplementOptions,
    /// Clip the global gradient norm to this value before each update.
    pub clip_norm: Option<f64>,
    /// Compute cross-entropy and the exact complement entropy with the chunked
    /// row kernels ([`loss::chunked_cross_entropy_sum`],
    /// [`loss::chunked_complement_entropy_sum`]): same values and gradients, far
    /// less memory over a large vocabulary. GCE, HCOT and the reference form always
    /// take the plain path.
    pub chunked: bool,
}

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The primary loss (CE, or GCE), averaged over the step's counted targets.
    pub loss: f64,
    /// The complement loss of the second pass (COT, HCOT).
    pub complement: Option<f64>,
    /// Counted targets (examples or non-pad tokens) in the step.
    pub count: usize,
    /// Global gradient norm of the primary update, before clipping.
    pub grad_norm: f64,
}

/// A non-finite loss or gradient norm: the step was not applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    /// Which pass produced it: "primary" or "complement".
    pub pass: &'static str,
    /// The offending value.
    pub value: f64,
}

/// Runs steps of one objective with its optimizers.
pub struct Stepper {
    objective: Objective,
    losses: LossConfig,
    primary: Optimizer,
    complement: Option<Optimizer>,
    complement_lr_scale: f64,
}

impl Stepper {
    /// Optimizers over `vars` for `objective` (two for COT and HCOT).
    pub fn new(
        objective: Objective,
        losses: LossConfig,
        vars: Vec<(String, Var)>,
        optimizer: OptimizerConfig,
    ) -> Result<Self> {
        let complement = if objective.alternates() {
            Some(Optimizer::new(vars.clone(), optimizer.clone())?)
        } else {
            None
        };
        Ok(Self { primary: Optimizer::new(vars, optimizer)?, complement, objective, losses, complement_lr_scale: 1.0 })
    }

    /// Runs the complement optimizer (COT, HCOT) at `scale` times the learning rate
    /// of the cross-entropy one, now and at every later
    /// [`set_learning_rate`](Self::set_learning_rate). Default 1 (Algorithm 1: the
    /// same rate). Adam-type optimizers normalize each update by the gradient's
    /// running scale, so the complement loss's normalization (÷K, ÷ln K) does not
    /// shrink its updates; this does. No effect on objectives with one step.
    pub fn with_complement_lr_scale(mut self, scale: f64) -> Self {
        self.complement_lr_scale = scale;
        let lr = self.primary.learning_rate();
        self.set_learning_rate(lr);
        self
    }

    /// The complement optimizer's learning rate, if the objective has one.
    pub fn complement_learning_rate(&self) -> Option<f64> {
        self.complement.as_ref().map(Optimizer::learning_rate)
    }

    /// The objective.
    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    /// Sets the learning rate of both optimizers (they share the schedule; the
    /// complement one runs at `lr ×` [`with_complement_lr_scale`](Self::with_complement_lr_scale)).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.primary.set_learning_rate(lr);
        if let Some(c) = &mut self.complement {
            c.set_learning_rate(lr * self.complement_lr_scale);
        }
    }

    /// One step over `micro` batches (`(input, targets)` pairs; one pair is a plain
    /// step). `forward` runs the model in training mode on an input and returns
    /// logits `[N, K]` or `[B, T, V]`. Gradients of the micro-batches are summed
    /// with each micro-batch's loss divided by the step's total target count, so the
    /// update equals that of one big batch.
    ///
    /// Returns `Ok(Err(NonFinite))`, without touching the weights of the failing
    /// pass, when a loss or gradient norm is NaN or infinite.
    pub fn step<B>(
        &mut self,
        micro: &[(B, Tensor)],
        mut forward: impl FnMut(&B) -> Result<Tensor>,
    ) -> Result<std::result::Result<StepReport, NonFinite>> {
        let ignore = match self.objective {
            Objective::CrossEntropy => self.losses.cross_entropy.ignore_index,
            _ => self.losses.complement.ignore_index.or(self.losses.cross_entropy.ignore_index),
        };
        let mut total = 0;
        for (_, t) in micro {
            total += loss::count_targets(t, ignore)?;
        }
        let primary_loss = |logits: &Tensor, targets: &Tensor| -> Result<LossSum> {
            match &self.objective {
                Objective::Gce { alpha } => {
                    loss::guided_complement_entropy_sum(logits, targets, *alpha, &self.losses.complement)
                }
                _ if self.losses.chunked => loss::chunked_cross_entropy_sum(logits, targets, &self.losses.cross_entropy),
                _ => loss::cross_entropy_sum(logits, targets, &self.losses.cross_entropy),
            }
        };
        let (value, mut grads) = accumulate(micro, total, &mut forward, primary_loss)?;
        if !value.is_finite() {
            return Ok(Err(NonFinite { pass: "primary", value }));
        }
        let vars: Vec<Var> = self.primary.vars().cloned().collect();
        let grad_norm = match self.losses.clip_norm {
            Some(max) => clip_grad_norm(&mut grads, vars.iter(), max)?,
            None => clip_grad_norm(&mut grads, vars.iter(), f64::INFINITY)?,
        };
        if !grad_norm.is_finite() {
            return Ok(Err(NonFinite { pass: "primary", value: grad_norm }));
        }
        self.primary.step(&grads)?;
        drop(grads);

        let complement = match (&self.objective, &mut self.complement) {
            (Objective::Cot | Objective::Hcot(_), Some(opt)) => {
                let opts = ComplementOptions {
                    ignore_index: self.losses.complement.ignore_index.or(self.losses.cross_entropy.ignore_index),
                    ..self.losses.complement
                };
                let objective = &self.objective;
                let chunked = self.losses.chunked && opts.form == loss::Form::Exact;
                let complement_loss = |logits: &Tensor, targets: &Tensor| -> Result<LossSum> {
                    match objective {
                        Objective::Hcot(h) => loss::hierarchical_complement_entropy_sum(logits, targets, h, &opts),
                        _ if chunked => loss::chunked_complement_entropy_sum(logits, targets, &opts),
                        _ => loss::complement_entropy_sum(logits, targets, &opts),
                    }
                };
                // Algorithm 1: a second forward pass with the weights the CE step
                // just updated (and fresh dropout masks).
                let (value, mut grads) = accumulate(micro, total, &mut forward, complement_loss)?;
                if !value.is_finite() {
                    return Ok(Err(NonFinite { pass: "complement", value }));
                }
                if let Some(max) = self.losses.clip_norm {
                    let norm = clip_grad_norm(&mut grads, vars.iter(), max)?;
                    if !norm.is_finite() {
                        return Ok(Err(NonFinite { pass: "complement", value: norm }));
                    }
                }
                opt.step(&grads)?;
                Some(value)
            }
            _ => None,
        };
        Ok(Ok(StepReport { loss: value, complement, count: total, grad_norm }))
    }

    /// Both optimizers' state as named tensors (`primary.*`, `complement.*`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = self.primary.state_tensors("primary")?;
        if let Some(c) = &self.complement {
            out.extend(c.state_tensors("complement")?);
        }
        Ok(out)
    }

    /// Restores what [`Stepper::state_tensors`] saved.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.primary.load_state(tensors, "primary")?;
        if let Some(c) = &mut self.complement {
            c.load_state(tensors, "complement")?;
        }
        Ok(())
    }

    /// Updates made by the primary optimizer.
    pub fn steps(&self) -> u64 {
        self.primary.steps()
    }
}

/// Forward + backward over every micro-batch; returns the step's loss (sum over
/// micro-batches of sum_i / total) and the summed gradients.
fn accumulate<B>(
    micro: &[(B, Tensor)],
    total: usize,
    forward: &mut impl FnMut(&B) -> Result<Tensor>,
    loss_fn: impl Fn(&Tensor, &Tensor) -> Result<LossSum>,
) -> Result<(f64, GradStore)> {
    let mut value = 0.0;
    let mut acc: Option<GradStore> = None;
    for (input, targets) in micro {
        let logits = forward(input)?;
        let scaled = loss_fn(&logits, targets)?.scaled(total)?;
        value += scaled.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let grads = scaled.backward()?;
        acc = Some(match acc {
            None => grads,
            Some(mut sum) => {
                sum.extend(grads)?;
                sum
            }
        });
    }
    let grads = match acc {
        Some(g) => g,
        None => Tensor::zeros((), candle_core::DType::F32, &candle_core::Device::Cpu)?.backward()?,
    };
    Ok((value, grads))
}
