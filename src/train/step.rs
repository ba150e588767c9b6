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
    /// Joint single-pass COT: minimizes `CE + weight · (−H_c / d)` with one
    /// forward and one backward pass and the primary optimizer only (the form of
    /// Complement Cross-Entropy, Kim et al. 2021). Half COT's cost; the weight sets
    /// the complement term's share of every update, whatever the optimizer.
    CotJoint {
        /// γ, the complement term's weight (`train.complement_weight`).
        weight: f64,
    },
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
            Objective::CotJoint { .. } => "cot-joint",
        }
    }

    /// Whether a step reports a complement loss (COT, HCOT, cot-joint).
    pub fn reports_complement(&self) -> bool {
        matches!(
            self,
            Objective::Cot | Objective::Hcot(_) | Objective::CotJoint { .. }
        )
    }

    /// Whether the objective uses the complement entropy at all (so it is a no-op
    /// addition on 2-class tasks).
    pub fn uses_complement(&self) -> bool {
        !matches!(self, Objective::CrossEntropy)
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
    /// Joint single-pass COT (`CE + γ·complement`, one backward pass).
    #[serde(rename = "cot-joint")]
    CotJoint,
}

impl ObjectiveKind {
    /// Every objective, in the order the CLI lists them.
    pub const ALL: [ObjectiveKind; 5] =
        [Self::Ce, Self::Cot, Self::Gce, Self::Hcot, Self::CotJoint];

    /// The name as configs and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ce => "ce",
            Self::Cot => "cot",
            Self::Gce => "gce",
            Self::Hcot => "hcot",
            Self::CotJoint => "cot-joint",
        }
    }
}

impl std::fmt::Display for ObjectiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ObjectiveKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown objective {s:?}: expected ce, cot, gce, hcot or cot-joint")
            })
    }
}

/// The complement optimizer's learning rate relative to the primary one's
/// (`train.complement_lr_scale`: a number, or `"auto"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComplementLrScale {
    /// A fixed multiple of the schedule's rate. 1 is Algorithm 1.
    Fixed(f64),
    /// Reproduces, under Adam-type optimizers, the step-size ratio that SGD gives
    /// the authors' recipe: at every step the complement optimizer runs at
    /// `lr · min(1, ‖g_c‖ / ‖g_ce‖)`, the ratio of the two gradients' norms (each
    /// after clipping) that SGD's updates would have. SGD already has that ratio
    /// in its updates, so there `auto` is 1.
    Auto,
}

impl Default for ComplementLrScale {
    fn default() -> Self {
        ComplementLrScale::Fixed(1.0)
    }
}

impl From<f64> for ComplementLrScale {
    fn from(x: f64) -> Self {
        ComplementLrScale::Fixed(x)
    }
}

impl std::fmt::Display for ComplementLrScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComplementLrScale::Fixed(x) => write!(f, "{x}"),
            ComplementLrScale::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for ComplementLrScale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ComplementLrScale::Fixed(x) => s.serialize_f64(*x),
            ComplementLrScale::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for ComplementLrScale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ComplementLrScale;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number above 0 or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> std::result::Result<Self::Value, E> {
                Ok(ComplementLrScale::Fixed(x))
            }
            fn visit_i64<E: serde::de::Error>(self, x: i64) -> std::result::Result<Self::Value, E> {
                Ok(ComplementLrScale::Fixed(x as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, x: u64) -> std::result::Result<Self::Value, E> {
                Ok(ComplementLrScale::Fixed(x as f64))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                s: &str,
            ) -> std::result::Result<Self::Value, E> {
                match s {
                    "auto" => Ok(ComplementLrScale::Auto),
                    other => Err(E::custom(format!(
                        "expected a number above 0 or \"auto\", got {other:?}"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
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

/// What a model's training forward pass hands the loss: its logits, or the
/// hidden states before its output layer together with that layer, so that the
/// token-level losses run fused with the projection
/// ([`loss::projected_token_loss`]) and the `[B·T, V]` logits never exist.
///
/// The projected form is used for cross-entropy and COT's passes when
/// [`LossConfig::chunked`] is set and the complement's form is exact (see
/// [`LossConfig::projects`]); every other loss gets the logits computed from it.
#[derive(Debug, Clone)]
pub enum Head {
    /// Logits `[N, K]` or `[B, T, V]`.
    Logits(Tensor),
    /// `logits = hidden · weightᵀ + bias`.
    Projected {
        /// `[N, H]` or `[B, T, H]`.
        hidden: Tensor,
        /// `[V, H]`.
        weight: Tensor,
        /// `[V]`, if the layer has one.
        bias: Option<Tensor>,
    },
}

impl From<Tensor> for Head {
    fn from(logits: Tensor) -> Self {
        Head::Logits(logits)
    }
}

impl Head {
    /// The logits (computed, for the projected form: `[.., V]` with the hidden
    /// states' leading dimensions).
    pub fn logits(&self) -> Result<Tensor> {
        match self {
            Head::Logits(l) => Ok(l.clone()),
            Head::Projected {
                hidden,
                weight,
                bias,
            } => {
                let mut dims = hidden.dims().to_vec();
                let width = dims.pop().unwrap_or(1);
                let rows = hidden.elem_count() / width.max(1);
                let mut logits = hidden
                    .reshape((rows, width))?
                    .matmul(&weight.to_dtype(hidden.dtype())?.t()?)?;
                if let Some(b) = bias {
                    logits = logits.broadcast_add(&b.to_dtype(hidden.dtype())?)?;
                }
                dims.push(weight.dim(0)?);
                logits.reshape(dims)
            }
        }
    }

    /// For a projected head, `which` through the fused kernel: the loss sum and
    /// (with `accuracy`) the targets predicted right; `None` for logits.
    fn projected_loss(
        &self,
        targets: &Tensor,
        which: &loss::ProjectedLoss,
        accuracy: bool,
    ) -> Result<Option<(Tensor, usize)>> {
        let Head::Projected {
            hidden,
            weight,
            bias,
        } = self
        else {
            return Ok(None);
        };
        let bias = bias.as_ref();
        Ok(Some(if accuracy {
            let (sum, correct) =
                loss::projected_token_loss_and_correct(hidden, weight, bias, targets, which, 0)?;
            (sum.sum, correct)
        } else {
            let sum = loss::projected_token_loss(hidden, weight, bias, targets, which, 0)?;
            (sum.sum, 0)
        }))
    }
}

/// How many of the counted targets (those other than `ignore`) the logits' argmax
/// predicts, and how many targets were counted.
pub fn count_correct(
    logits: &Tensor,
    targets: &Tensor,
    ignore: Option<u32>,
) -> candle_core::Result<(usize, usize)> {
    let pred = logits
        .argmax(logits.rank() - 1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let gold = targets.flatten_all()?.to_vec1::<u32>()?;
    let mut correct = 0;
    let mut seen = 0;
    for (p, g) in pred.iter().zip(&gold) {
        if Some(*g) == ignore {
            continue;
        }
        seen += 1;
        correct += usize::from(p == g);
    }
    Ok((correct, seen))
}

impl LossConfig {
    /// Whether every loss of `objective` has a projected kernel under these
    /// settings ([`Head::Projected`] then never computes the logits): chunked
    /// losses, and cross-entropy or COT with the exact complement. Other objectives
    /// work on a projected head too, through its logits.
    pub fn projects(&self, objective: &Objective) -> bool {
        self.chunked
            && match objective {
                Objective::CrossEntropy => true,
                Objective::Cot => self.complement.form == loss::Form::Exact,
                _ => false,
            }
    }
}

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The primary loss (CE, or GCE), averaged over the step's counted targets;
    /// for `cot-joint`, its cross-entropy part.
    pub loss: f64,
    /// The complement loss of the second pass (COT, HCOT), or the (unweighted)
    /// complement part of `cot-joint`'s loss.
    pub complement: Option<f64>,
    /// Counted targets (examples or non-pad tokens) in the step.
    pub count: usize,
    /// How many of them the first (primary) pass predicted right (argmax).
    pub correct: usize,
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
    complement_lr_scale: ComplementLrScale,
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
        Ok(Self {
            primary: Optimizer::new(vars, optimizer)?,
            complement,
            objective,
            losses,
            complement_lr_scale: ComplementLrScale::default(),
        })
    }

    /// Runs the complement optimizer (COT, HCOT) at `scale` times the learning rate
    /// of the cross-entropy one, now and at every later
    /// [`set_learning_rate`](Self::set_learning_rate) (a number), or at the
    /// gradient-norm ratio of each step ([`ComplementLrScale::Auto`]). Default 1
    /// (Algorithm 1: the same rate). Adam-type optimizers normalize each update by
    /// the gradient's running scale, so the complement loss's normalization (÷K,
    /// ÷ln K) does not shrink its updates; this does. No effect on objectives with
    /// one step.
    pub fn with_complement_lr_scale(mut self, scale: impl Into<ComplementLrScale>) -> Self {
        self.complement_lr_scale = scale.into();
        if matches!(self.primary.config(), OptimizerConfig::Sgd { .. })
            && self.complement_lr_scale == ComplementLrScale::Auto
        {
            self.complement_lr_scale = ComplementLrScale::Fixed(1.0);
        }
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
            // Under `auto` the step sets the complement rate from its gradients;
            // until then it is the primary one's.
            let scale = match self.complement_lr_scale {
                ComplementLrScale::Fixed(x) => x,
                ComplementLrScale::Auto => 1.0,
            };
            c.set_learning_rate(lr * scale);
        }
    }

    /// One step over `micro` batches (`(input, targets)` pairs; one pair is a plain
    /// step). `forward` runs the model in training mode on an input and returns
    /// logits `[N, K]` or `[B, T, V]` (or a [`Head`]). Gradients of the micro-batches are summed
    /// with each micro-batch's loss divided by the step's total target count, so the
    /// update equals that of one big batch.
    ///
    /// Returns `Ok(Err(NonFinite))`, without touching the weights of the failing
    /// pass, when a loss or gradient norm is NaN or infinite.
    pub fn step<B, O: Into<Head>>(
        &mut self,
        micro: &[(B, Tensor)],
        mut forward: impl FnMut(&B) -> Result<O>,
    ) -> Result<std::result::Result<StepReport, NonFinite>> {
        let mut forward = |b: &B| forward(b).map(Into::into);
        let ignore = match self.objective {
            Objective::CrossEntropy => self.losses.cross_entropy.ignore_index,
            _ => self
                .losses
                .complement
                .ignore_index
                .or(self.losses.cross_entropy.ignore_index),
        };
        let mut total = 0;
        for (_, t) in micro {
            total += loss::count_targets(t, ignore)?;
        }
        let complement_opts = ComplementOptions {
            ignore_index: self
                .losses
                .complement
                .ignore_index
                .or(self.losses.cross_entropy.ignore_index),
            ..self.losses.complement
        };
        let chunked_complement = self.losses.chunked && complement_opts.form == loss::Form::Exact;
        let losses = &self.losses;
        let cross_entropy = |logits: &Tensor, targets: &Tensor| -> Result<LossSum> {
            if losses.chunked {
                loss::chunked_cross_entropy_sum(logits, targets, &losses.cross_entropy)
            } else {
                loss::cross_entropy_sum(logits, targets, &losses.cross_entropy)
            }
        };
        let flat_complement = |logits: &Tensor, targets: &Tensor| -> Result<LossSum> {
            if chunked_complement {
                loss::chunked_complement_entropy_sum(logits, targets, &complement_opts)
            } else {
                loss::complement_entropy_sum(logits, targets, &complement_opts)
            }
        };
        let objective = &self.objective;
        let primary_loss = |head: &Head, targets: &Tensor, accuracy: bool| -> Result<Parts> {
            if matches!(objective, Objective::CrossEntropy | Objective::Cot) && losses.chunked {
                let which = loss::ProjectedLoss::CrossEntropy(losses.cross_entropy);
                if let Some((sum, correct)) = head.projected_loss(targets, &which, accuracy)? {
                    return Ok(Parts::one(sum).with_correct(correct));
                }
            }
            let logits = head.logits()?;
            let parts = match objective {
                Objective::Gce { alpha } => Parts::one(
                    loss::guided_complement_entropy_sum(
                        &logits,
                        targets,
                        *alpha,
                        &complement_opts,
                    )?
                    .sum,
                ),
                Objective::CotJoint { weight } => {
                    let ce = cross_entropy(&logits, targets)?.sum;
                    let c = flat_complement(&logits, targets)?.sum;
                    Parts {
                        minimized: (&ce + c.affine(*weight, 0.0)?)?,
                        primary: ce,
                        complement: Some(c),
                        correct: None,
                    }
                }
                _ => Parts::one(cross_entropy(&logits, targets)?.sum),
            };
            Ok(if accuracy {
                parts.with_correct(count_correct(&logits, targets, ignore)?.0)
            } else {
                parts
            })
        };
        let Accumulated {
            minimized,
            primary: value,
            complement: joint_complement,
            correct,
            mut grads,
        } = accumulate(micro, total, &mut forward, primary_loss, true)?;
        if !minimized.is_finite() {
            let pass = if value.is_finite() {
                "complement"
            } else {
                "primary"
            };
            return Ok(Err(NonFinite {
                pass,
                value: if value.is_finite() { minimized } else { value },
            }));
        }
        let vars: Vec<Var> = self.primary.vars().cloned().collect();
        let max_norm = self.losses.clip_norm.unwrap_or(f64::INFINITY);
        let grad_norm = clip_grad_norm(&mut grads, vars.iter(), max_norm)?;
        if !grad_norm.is_finite() {
            return Ok(Err(NonFinite {
                pass: "primary",
                value: grad_norm,
            }));
        }
        self.primary.step(&grads)?;
        drop(grads);

        let complement = match (objective, &mut self.complement) {
            (Objective::Cot | Objective::Hcot(_), Some(opt)) => {
                let complement_loss = |head: &Head, targets: &Tensor, _: bool| -> Result<Parts> {
                    if matches!(objective, Objective::Cot) && chunked_complement {
                        let which = loss::ProjectedLoss::Complement(complement_opts);
                        if let Some((sum, _)) = head.projected_loss(targets, &which, false)? {
                            return Ok(Parts::one(sum));
                        }
                    }
                    let logits = head.logits()?;
                    Ok(Parts::one(match objective {
                        Objective::Hcot(h) => {
                            loss::hierarchical_complement_entropy_sum(
                                &logits,
                                targets,
                                h,
                                &complement_opts,
                            )?
                            .sum
                        }
                        _ => flat_complement(&logits, targets)?.sum,
                    }))
                };
                // Algorithm 1: a second forward pass with the weights the CE step
                // just updated (and fresh dropout masks).
                let Accumulated {
                    minimized: value,
                    mut grads,
                    ..
                } = accumulate(micro, total, &mut forward, complement_loss, false)?;
                if !value.is_finite() {
                    return Ok(Err(NonFinite {
                        pass: "complement",
                        value,
                    }));
                }
                let auto = self.complement_lr_scale == ComplementLrScale::Auto;
                let norm = if self.losses.clip_norm.is_some() || auto {
                    clip_grad_norm(&mut grads, vars.iter(), max_norm)?
                } else {
                    0.0
                };
                if !norm.is_finite() {
                    return Ok(Err(NonFinite {
                        pass: "complement",
                        value: norm,
                    }));
                }
                if auto {
                    // The ratio SGD's two updates would have (after clipping);
                    // never above Algorithm 1's equal rate.
                    let primary = grad_norm.min(max_norm);
                    let ratio = if primary > 0.0 {
                        (norm.min(max_norm) / primary).min(1.0)
                    } else {
                        1.0
                    };
                    opt.set_learning_rate(self.primary.learning_rate() * ratio);
                }
                opt.step(&grads)?;
                Some(value)
            }
            _ => joint_complement,
        };
        Ok(Ok(StepReport {
            loss: value,
            complement,
            count: total,
            correct,
            grad_norm,
        }))
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

/// What a loss closure returns for one micro-batch: the sum to minimize, and the
/// sums to report (the cross-entropy part, and the complement part of a joint
/// objective). All are sums over the micro-batch's counted targets.
struct Parts {
    minimized: Tensor,
    primary: Tensor,
    complement: Option<Tensor>,
    /// Targets the pass predicted right, when it was asked to count them.
    correct: Option<usize>,
}

impl Parts {
    fn one(sum: Tensor) -> Self {
        Parts {
            minimized: sum.clone(),
            primary: sum,
            complement: None,
            correct: None,
        }
    }

    fn with_correct(self, correct: usize) -> Self {
        Parts {
            correct: Some(correct),
            ..self
        }
    }
}

fn scalar(t: &Tensor, total: usize) -> Result<f64> {
    LossSum {
        sum: t.clone(),
        count: 0,
    }
    .scaled(total)?
    .to_dtype(candle_core::DType::F64)?
    .to_scalar::<f64>()
}

/// What [`accumulate`] measured: each value is the sum over micro-batches of
/// `sum_i / total`.
struct Accumulated {
    /// The minimized loss.
    minimized: f64,
    /// Its cross-entropy (or single-objective) part.
    primary: f64,
    /// Its complement part, for the joint objective.
    complement: Option<f64>,
    /// Targets predicted right (0 unless counted).
    correct: usize,
    grads: GradStore,
}

/// Forward + backward over every micro-batch; returns the values and the summed
/// gradients of the minimized loss (and, with `accuracy`, the targets predicted
/// right).
fn accumulate<B>(
    micro: &[(B, Tensor)],
    total: usize,
    forward: &mut impl FnMut(&B) -> Result<Head>,
    loss_fn: impl Fn(&Head, &Tensor, bool) -> Result<Parts>,
    accuracy: bool,
) -> Result<Accumulated> {
    let mut correct = 0;
    let mut minimized = 0.0;
    let mut primary = 0.0;
    let mut complement: Option<f64> = None;
    let mut acc: Option<GradStore> = None;
    for (input, targets) in micro {
        let head = forward(input)?;
        let parts = loss_fn(&head, targets, accuracy)?;
        drop(head);
        correct += parts.correct.unwrap_or(0);
        let scaled = LossSum {
            sum: parts.minimized.clone(),
            count: 0,
        }
        .scaled(total)?;
        let value = scaled
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        minimized += value;
        primary += match parts.complement {
            None => value,
            Some(_) => scalar(&parts.primary, total)?,
        };
        if let Some(c) = &parts.complement {
            *complement.get_or_insert(0.0) += scalar(c, total)?;
        }
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
        None => {
            Tensor::zeros((), candle_core::DType::F32, &candle_core::Device::Cpu)?.backward()?
        }
    };
    Ok(Accumulated {
        minimized,
        primary,
        complement,
        correct,
        grads,
    })
}
