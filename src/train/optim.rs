//! Optimizers with state that can be saved and restored: AdamW and SGD with
//! momentum, both with PyTorch's update rules. (candle-nn's AdamW keeps its moments
//! private, so a run could not resume exactly; its SGD has no momentum.)

use std::collections::HashMap;

use candle_core::{backprop::GradStore, bail, DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which update rule, with its hyper-parameters. In TOML:
/// `optimizer = { kind = "adamw", lr = 2e-5, weight_decay = 0.01 }` or
/// `optimizer = { kind = "sgd", lr = 0.1, momentum = 0.9 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// AdamW (Loshchilov & Hutter), PyTorch's `torch.optim.AdamW` update.
    Adamw {
        /// Peak learning rate (the schedule scales it). Default 1e-3.
        #[serde(default = "default_adam_lr")]
        lr: f64,
        /// β₁. Default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// β₂. Default 0.999.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// ε added to √v̂. Default 1e-8.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay. Default 0.01 (PyTorch's default).
        #[serde(default = "default_wd")]
        weight_decay: f64,
    },
    /// SGD with (optionally Nesterov) momentum, PyTorch's `torch.optim.SGD` update
    /// (dampening 0); the authors of COT train with two of these.
    Sgd {
        /// Peak learning rate. Default 0.1.
        #[serde(default = "default_sgd_lr")]
        lr: f64,
        /// Momentum μ. Default 0.9.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// Nesterov momentum. Default false.
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay added to the gradient. Default 0.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_adam_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_wd() -> f64 {
    0.01
}
fn default_sgd_lr() -> f64 {
    0.1
}
fn default_momentum() -> f64 {
    0.9
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adamw {
            lr: default_adam_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_wd(),
        }
    }
}

impl OptimizerConfig {
    /// The configured (peak) learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adamw { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }

    /// Checks every hyper-parameter's range; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        match *self {
            OptimizerConfig::Adamw {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                check(lr > 0.0 && lr.is_finite(), "optimizer.lr must be > 0")?;
                check(
                    (0.0..1.0).contains(&beta1),
                    "optimizer.beta1 must be in [0, 1)",
                )?;
                check(
                    (0.0..1.0).contains(&beta2),
                    "optimizer.beta2 must be in [0, 1)",
                )?;
                check(eps > 0.0, "optimizer.eps must be > 0")?;
                check(weight_decay >= 0.0, "optimizer.weight_decay must be >= 0")
            }
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
                nesterov,
            } => {
                check(lr > 0.0 && lr.is_finite(), "optimizer.lr must be > 0")?;
                check(
                    (0.0..1.0).contains(&momentum),
                    "optimizer.momentum must be in [0, 1)",
                )?;
                check(
                    !nesterov || momentum > 0.0,
                    "optimizer.nesterov needs momentum > 0",
                )?;
                check(weight_decay >= 0.0, "optimizer.weight_decay must be >= 0")
            }
        }
    }
}

/// A moment buffer: a tensor (the op-by-op path, or as loaded from a
/// checkpoint), or the host values the one-pass CPU update keeps between steps
/// (no copy in or out of a tensor per step).
#[derive(Debug, Clone)]
enum Moment {
    Tensor(Tensor),
    Host {
        values: Vec<f32>,
        shape: candle_core::Shape,
    },
}

impl Moment {
    /// The values as an f32 tensor (a copy for host values).
    fn tensor(&self) -> Result<Tensor> {
        match self {
            Moment::Tensor(t) => Ok(t.clone()),
            Moment::Host { values, shape } => {
                Tensor::from_slice(values, shape, &candle_core::Device::Cpu)
            }
        }
    }
}

/// One optimizer over a fixed, named set of variables. COT runs two of these over
/// the same variables (one for the cross-entropy step, one for the complement
/// step), each with its own state.
pub struct Optimizer {
    config: OptimizerConfig,
    vars: Vec<(String, Var)>,
    /// First moment (AdamW) or momentum buffer (SGD), per variable.
    first: Vec<Option<Moment>>,
    /// Second moment (AdamW only), per variable.
    second: Vec<Option<Moment>>,
    steps: u64,
    lr: f64,
    /// Whether CPU f32 variables take the one-pass update ([`fused`]); only the
    /// tests that compare the two paths turn it off.
    fused: bool,
}

impl Optimizer {
    /// An optimizer over `vars` (name, variable); names key the saved state.
    /// Variables are kept sorted by name so state files are deterministic.
    pub fn new(mut vars: Vec<(String, Var)>, config: OptimizerConfig) -> Result<Self> {
        if let Err(e) = config.validate() {
            bail!("{e}");
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let n = vars.len();
        Ok(Self {
            lr: config.lr(),
            config,
            vars,
            first: vec![None; n],
            second: vec![None; n],
            steps: 0,
            fused: true,
        })
    }

    /// Number of updates made so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The update rule and its hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The learning rate of the next update.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate of the next update (the schedule calls this).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The variables this optimizer updates.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.vars.iter().map(|(_, v)| v)
    }

    /// One update from `grads`. Variables without a gradient are left alone (as
    /// PyTorch does for parameters whose `.grad` is None).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let lr = self.lr;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // Detached: the variable is a graph leaf, so `p * weight_decay` would be
            // a tracked op, and a moment built from it would keep every earlier
            // step's tensors alive through its graph (SGD with weight decay grew
            // by the model's size each step until the OOM killer came).
            let g = g.detach().to_dtype(DType::F32)?;
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            // One pass on the CPU; `None` (another device or layout, or the
            // tests' comparison) falls through to the op-by-op rule.
            let one_pass = match self.fused {
                true => fused::step(
                    &self.config,
                    lr,
                    self.steps,
                    &p,
                    &g,
                    &mut self.first[i],
                    &mut self.second[i],
                )?,
                false => None,
            };
            if let Some(new_p) = one_pass {
                var.set(&new_p.to_dtype(var.dtype())?)?;
                continue;
            }
            let new_p = match self.config {
                OptimizerConfig::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let m = match &self.first[i] {
                        Some(m) => ((m.tensor()? * beta1)? + (&g * (1.0 - beta1))?)?,
                        None => (&g * (1.0 - beta1))?,
                    };
                    let v = match &self.second[i] {
                        Some(v) => ((v.tensor()? * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let t = self.steps as i32;
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let decayed = (&p * (1.0 - lr * weight_decay))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    self.first[i] = Some(Moment::Tensor(m));
                    self.second[i] = Some(Moment::Tensor(v));
                    (decayed - (update * lr)?)?
                }
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    let g = if weight_decay > 0.0 {
                        (&g + (&p * weight_decay)?)?
                    } else {
                        g
                    };
                    let dir = if momentum > 0.0 {
                        let buf = match &self.first[i] {
                            Some(b) => ((b.tensor()? * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let dir = if nesterov {
                            (&g + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.first[i] = Some(Moment::Tensor(buf.clone()));
                        dir
                    } else {
                        g
                    };
                    (&p - (dir * lr)?)?
                }
            };
            var.set(&new_p.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// The optimizer's state as named tensors, every name starting with `prefix.`:
    /// `{prefix}.steps`, `{prefix}.lr`, and per variable `{prefix}.m.{name}` /
    /// `{prefix}.v.{name}` (AdamW) or `{prefix}.momentum.{name}` (SGD).
    pub fn state_tensors(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        let device = candle_core::Device::Cpu;
        let mut out = HashMap::new();
        // u32 pairs keep the step count exact (safetensors has no u64 in candle).
        let steps = [(self.steps >> 32) as u32, self.steps as u32];
        out.insert(format!("{prefix}.steps"), Tensor::new(&steps, &device)?);
        out.insert(format!("{prefix}.lr"), Tensor::new(&[self.lr], &device)?);
        let (first, second) = match self.config {
            OptimizerConfig::Adamw { .. } => ("m", Some("v")),
            OptimizerConfig::Sgd { .. } => ("momentum", None),
        };
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let Some(t) = &self.first[i] {
                out.insert(
                    format!("{prefix}.{first}.{name}"),
                    t.tensor()?.to_device(&device)?,
                );
            }
            if let (Some(s), Some(t)) = (second, &self.second[i]) {
                out.insert(
                    format!("{prefix}.{s}.{name}"),
                    t.tensor()?.to_device(&device)?,
                );
            }
        }
        Ok(out)
    }

    /// Restores what [`Optimizer::state_tensors`] saved under `prefix`.
    ///
    /// The state must be this optimizer's: state of the other kind (AdamW's `m`/`v`
    /// for SGD, SGD's `momentum` for AdamW), a moment for a variable this optimizer
    /// does not have or of another shape, or (after the first step) a variable
    /// without its moments is refused, and nothing is changed. Otherwise a resume
    /// would go on with some moments silently reset to zero.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        let steps = tensors
            .get(&format!("{prefix}.steps"))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state has no {prefix}.steps"))
            })?
            .to_vec1::<u32>()?;
        if steps.len() != 2 {
            bail!("optimizer state: {prefix}.steps must hold 2 values");
        }
        let steps = (u64::from(steps[0]) << 32) | u64::from(steps[1]);
        let lr = match tensors.get(&format!("{prefix}.lr")) {
            Some(lr) => Some(lr.to_vec1::<f64>()?.first().copied().ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state: {prefix}.lr is empty"))
            })?),
            None => None,
        };
        let (kind, ours, other): (&str, &[&str], &[&str]) = match self.config {
            OptimizerConfig::Adamw { .. } => ("adamw", &["m", "v"], &["momentum"]),
            OptimizerConfig::Sgd { .. } => ("sgd", &["momentum"], &["m", "v"]),
        };
        // Every per-variable tensor under `prefix` must be one of ours, for one of
        // our variables, of its shape.
        let index: HashMap<&str, usize> = self
            .vars
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut names: Vec<&String> = tensors
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}.")))
            .collect();
        names.sort();
        for key in names {
            let rest = &key[prefix.len() + 1..];
            if rest == "steps" || rest == "lr" {
                continue;
            }
            let (moment, var) = rest.split_once('.').unwrap_or((rest, ""));
            if other.contains(&moment) {
                let theirs = if kind == "adamw" { "sgd" } else { "adamw" };
                bail!(
                    "optimizer state holds {key}, state of {theirs}, but this optimizer is {kind}: \
                     the optimizer kind cannot change when resuming"
                );
            }
            if !ours.contains(&moment) {
                bail!("optimizer state holds {key}, which is no state of {kind}");
            }
            let Some(&i) = index.get(var) else {
                bail!("optimizer state holds {key}, but the model has no variable {var:?}");
            };
            let (want, found) = (self.vars[i].1.shape(), tensors[key].shape());
            if want != found {
                bail!("optimizer state: {key} has shape {found:?}, but the variable has shape {want:?}");
            }
        }
        let keeps_state = match self.config {
            OptimizerConfig::Adamw { .. } => true,
            OptimizerConfig::Sgd { momentum, .. } => momentum > 0.0,
        };
        let mut first = Vec::with_capacity(self.vars.len());
        let mut second = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let device = var.device();
            let get = |moment: &str| {
                tensors
                    .get(&format!("{prefix}.{moment}.{name}"))
                    .map(|t| t.to_device(device))
                    .transpose()
            };
            let (m, v) = match self.config {
                OptimizerConfig::Adamw { .. } => (get("m")?, get("v")?),
                OptimizerConfig::Sgd { .. } => (get("momentum")?, None),
            };
            // After a step every variable has its moments (each one got a gradient:
            // the models test that), so a missing one means the state is not ours.
            let complete = match self.config {
                OptimizerConfig::Adamw { .. } => m.is_some() && v.is_some(),
                OptimizerConfig::Sgd { .. } => m.is_some() || !keeps_state,
            };
            if steps > 0 && keeps_state && !complete {
                let missing = if m.is_none() { ours[0] } else { ours[1] };
                bail!("optimizer state has no {prefix}.{missing}.{name} although {steps} steps were taken");
            }
            if m.is_some() != v.is_some() && matches!(self.config, OptimizerConfig::Adamw { .. }) {
                bail!("optimizer state has only one of {prefix}.m.{name} and {prefix}.v.{name}");
            }
            first.push(m.map(Moment::Tensor));
            second.push(v.map(Moment::Tensor));
        }
        self.steps = steps;
        if let Some(lr) = lr {
            self.lr = lr;
        }
        self.first = first;
        self.second = second;
        Ok(())
    }
}

/// The update rules as one pass over each variable on the CPU (candle's ops make
/// one pass, and one buffer, per operation: about a dozen for AdamW). Each
/// element goes through exactly the f32 operations the op-by-op path performs,
/// in the same order (candle's `x * c` by a scalar is `x · c + 0`), so the two
/// agree to the bit (`fused_step_matches_the_op_by_op_path_bit_for_bit`).
mod fused {
    use candle_core::{CpuStorage, Result, Storage, Tensor};
    use rayon::prelude::*;

    use super::{Moment, OptimizerConfig};

    /// A contiguous f32 CPU tensor's values.
    fn values(t: &Tensor) -> Option<Vec<f32>> {
        with_values(t, <[f32]>::to_vec)
    }

    /// `f` of a contiguous f32 CPU tensor's values, read in place.
    fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[start..end])),
            _ => None,
        }
    }

    const CHUNK: usize = 1 << 14;

    /// Σ g² in f64, in one pass over a contiguous f32 CPU tensor, summed in
    /// element order as candle's `to_dtype(F64)?.sqr()?.sum_all()` sums (the same
    /// bits, without its two full-size f64 buffers). `None` for other tensors.
    pub(super) fn sum_of_squares(g: &Tensor) -> Option<f64> {
        with_values(g, |g| {
            let mut sum = 0f64;
            for &x in g {
                let x = x as f64;
                sum += x * x;
            }
            sum
        })
    }

    /// A moment's values for the one-pass update, taken out of `slot` (host
    /// values move, a tensor's are copied once); zeros when there is none yet,
    /// which gives the first update's exact bits (`0 · β + 0 + x` is `x`). `None`
    /// for a tensor that is not a contiguous f32 CPU tensor.
    fn take(slot: &mut Option<Moment>, n: usize) -> Option<Vec<f32>> {
        match slot.take() {
            None => Some(vec![0.0; n]),
            Some(Moment::Host { values, .. }) if values.len() == n => Some(values),
            Some(Moment::Host { values, shape }) => {
                *slot = Some(Moment::Host { values, shape });
                None
            }
            Some(Moment::Tensor(t)) => {
                let v = values(&t).filter(|v| v.len() == n);
                if v.is_none() {
                    *slot = Some(Moment::Tensor(t));
                }
                v
            }
        }
    }

    /// One update of one variable (`p`, `g`: f32), its state updated in place.
    /// `None` when a tensor is not a contiguous f32 CPU tensor: the caller then
    /// runs the op-by-op path, and the state is left as it was.
    pub(super) fn step(
        config: &OptimizerConfig,
        lr: f64,
        steps: u64,
        p: &Tensor,
        g: &Tensor,
        first: &mut Option<Moment>,
        second: &mut Option<Moment>,
    ) -> Result<Option<Tensor>> {
        if !p.device().is_cpu() || p.shape() != g.shape() {
            return Ok(None);
        }
        let n = p.elem_count();
        let shape = p.shape().clone();
        let dev = p.device().clone();
        let keeps_first =
            !matches!(config, OptimizerConfig::Sgd { momentum, .. } if *momentum <= 0.0);
        // The state's values first (nothing locked yet); put back on a miss.
        // A fresh SGD buffer starts as the gradient itself (the op-by-op path
        // clones it; `+0 + g` would turn a −0 into +0).
        let fresh = first.is_none();
        let mut m = if keeps_first {
            match take(first, n) {
                Some(m) => m,
                None => return Ok(None),
            }
        } else {
            Vec::new()
        };
        let mut v = match config {
            OptimizerConfig::Adamw { .. } => match take(second, n) {
                Some(v) => v,
                None => {
                    *first = Some(Moment::Host {
                        values: m,
                        shape: shape.clone(),
                    });
                    return Ok(None);
                }
            },
            OptimizerConfig::Sgd { .. } => Vec::new(),
        };
        let new_p = with_values(p, |p| {
            with_values(g, |g| {
                let mut out = vec![0f32; n];
                match *config {
                    OptimizerConfig::Adamw {
                        beta1,
                        beta2,
                        eps,
                        weight_decay,
                        ..
                    } => {
                        let t = steps as i32;
                        let b1 = beta1 as f32;
                        let b1c = (1.0 - beta1) as f32;
                        let b2 = beta2 as f32;
                        let b2c = (1.0 - beta2) as f32;
                        let m_scale = (1. / (1.0 - beta1.powi(t))) as f32;
                        let v_scale = (1. / (1.0 - beta2.powi(t))) as f32;
                        let decay = (1.0 - lr * weight_decay) as f32;
                        let eps = eps as f32;
                        let lr = lr as f32;
                        out.par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK))
                            .zip(v.par_chunks_mut(CHUNK))
                            .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                            .for_each(|(((out, m), v), (p, g))| {
                                let it = out.iter_mut().zip(m.iter_mut()).zip(v.iter_mut());
                                for (((out, m), v), (&p, &g)) in it.zip(p.iter().zip(g)) {
                                    let mj = (*m * b1 + 0.0) + (g * b1c + 0.0);
                                    let vj = (*v * b2 + 0.0) + ((g * g) * b2c + 0.0);
                                    let m_hat = mj * m_scale + 0.0;
                                    let v_hat = vj * v_scale + 0.0;
                                    let update = m_hat / (v_hat.sqrt() * 1.0 + eps);
                                    *out = (p * decay + 0.0) - (update * lr + 0.0);
                                    *m = mj;
                                    *v = vj;
                                }
                            });
                    }
                    OptimizerConfig::Sgd {
                        momentum,
                        nesterov,
                        weight_decay,
                        ..
                    } => {
                        let wd = weight_decay as f32;
                        let decays = weight_decay > 0.0;
                        let mom = momentum as f32;
                        let lr = lr as f32;
                        if momentum > 0.0 {
                            out.par_chunks_mut(CHUNK)
                                .zip(m.par_chunks_mut(CHUNK))
                                .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                                .for_each(|((out, b), (p, g))| {
                                    let it = out.iter_mut().zip(b.iter_mut());
                                    for ((out, b), (&p, &g)) in it.zip(p.iter().zip(g)) {
                                        let g = if decays { g + (p * wd + 0.0) } else { g };
                                        let nb = if fresh { g } else { (*b * mom + 0.0) + g };
                                        *b = nb;
                                        let dir = if nesterov { g + (nb * mom + 0.0) } else { nb };
                                        *out = p - (dir * lr + 0.0);
                                    }
                                });
                        } else {
                            out.par_chunks_mut(CHUNK)
                                .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                                .for_each(|(out, (p, g))| {
                                    for (out, (&p, &g)) in out.iter_mut().zip(p.iter().zip(g)) {
                                        let g = if decays { g + (p * wd + 0.0) } else { g };
                                        *out = p - (g * lr + 0.0);
                                    }
                                });
                        }
                    }
                }
                out
            })
        })
        .flatten();
        let host = |values: Vec<f32>| Moment::Host {
            values,
            shape: shape.clone(),
        };
        // Updated, or on a miss untouched (a fresh state's zeros then go in too:
        // the op-by-op path computes the same bits from zeros as from none).
        if keeps_first {
            *first = Some(host(m));
        }
        if let OptimizerConfig::Adamw { .. } = config {
            *second = Some(host(v));
        }
        match new_p {
            Some(new_p) => Ok(Some(Tensor::from_vec(new_p, shape, &dev)?)),
            None => Ok(None),
        }
    }
}

/// Scales `grads` of `vars` so their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`, same 1e-6 in the denominator). Returns the norm
/// before clipping.
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var> + Clone,
    max_norm: f64,
) -> Result<f64> {
    let mut total = 0f64;
    for var in vars.clone() {
        if let Some(g) = grads.get(var) {
            total += match fused::sum_of_squares(g) {
                Some(sum) => sum,
                None => g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.get(var) {
                let clipped = (g * coef)?;
                grads.insert(var, clipped);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            (
                "a.weight".into(),
                Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap()).unwrap(),
            ),
            (
                "b.bias".into(),
                Var::from_tensor(&Tensor::new(&[0.5f32, -0.5], &dev).unwrap()).unwrap(),
            ),
        ]
    }

    fn sgd() -> OptimizerConfig {
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// The state of `config` after one step on a quadratic loss.
    fn stepped(config: OptimizerConfig) -> HashMap<String, Tensor> {
        let vars = vars();
        let mut opt = Optimizer::new(vars.clone(), config).unwrap();
        let loss = vars
            .iter()
            .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        opt.state_tensors("primary").unwrap()
    }

    fn refused(config: OptimizerConfig, state: &HashMap<String, Tensor>) -> String {
        let mut opt = Optimizer::new(vars(), config).unwrap();
        let err = opt.load_state(state, "primary").unwrap_err().to_string();
        assert_eq!(
            opt.steps(),
            0,
            "a refused state must leave the optimizer as it was"
        );
        err
    }

    #[test]
    fn state_round_trips_for_both_kinds() {
        for config in [OptimizerConfig::default(), sgd()] {
            let state = stepped(config.clone());
            let mut opt = Optimizer::new(vars(), config).unwrap();
            opt.load_state(&state, "primary").unwrap();
            assert_eq!(opt.steps(), 1);
            let again = opt.state_tensors("primary").unwrap();
            let mut keys: Vec<_> = again.keys().collect();
            keys.sort();
            let mut want: Vec<_> = state.keys().collect();
            want.sort();
            assert_eq!(keys, want);
        }
    }

    /// Resuming with the other optimizer kind once loaded whatever matched (SGD
    /// found no `momentum.*` in AdamW state and went on with zero momentum).
    #[test]
    fn fused_step_matches_the_op_by_op_path_bit_for_bit() {
        let dev = Device::Cpu;
        // Sizes across the parallel chunking, and a scalar.
        let shapes: [&[usize]; 3] = [&[40_000], &[7, 3], &[]];
        let configs = [
            OptimizerConfig::default(),
            OptimizerConfig::Adamw {
                lr: 3e-3,
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-6,
                weight_decay: 0.1,
            },
            sgd(),
            OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            },
            OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
        ];
        for config in configs {
            let make = || -> Vec<(String, Var)> {
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, shape)| {
                        let t = Tensor::randn(0f32, 1.0, *shape, &dev).unwrap();
                        (format!("v{i}"), Var::from_tensor(&t).unwrap())
                    })
                    .collect()
            };
            let vars = make();
            let twins: Vec<(String, Var)> = vars
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                    )
                })
                .collect();
            let mut fused = Optimizer::new(vars.clone(), config.clone()).unwrap();
            let mut plain = Optimizer::new(twins.clone(), config.clone()).unwrap();
            plain.fused = false;
            for step in 0..4 {
                let grads = |vars: &[(String, Var)]| {
                    let loss = vars
                        .iter()
                        .map(|(_, v)| {
                            (v.as_tensor().sqr().unwrap() * (step as f64 + 0.5))
                                .unwrap()
                                .sum_all()
                                .unwrap()
                        })
                        .reduce(|a, b| (a + b).unwrap())
                        .unwrap();
                    loss.backward().unwrap()
                };
                fused.step(&grads(&vars)).unwrap();
                plain.step(&grads(&twins)).unwrap();
                for ((name, a), (_, b)) in vars.iter().zip(&twins) {
                    let bits = |v: &Var| -> Vec<u32> {
                        v.as_tensor()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|x| x.to_bits())
                            .collect()
                    };
                    assert_eq!(bits(a), bits(b), "{config:?} step {step} {name}");
                }
            }
            let (sa, sb) = (
                fused.state_tensors("o").unwrap(),
                plain.state_tensors("o").unwrap(),
            );
            assert_eq!(sa.len(), sb.len());
            for (k, a) in &sa {
                let b = &sb[k];
                let a = a
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let b = b
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                assert_eq!(a, b, "{config:?} state {k}");
            }
        }
    }

    #[test]
    fn fused_sum_of_squares_matches_candles_bit_for_bit() {
        for (n, seed) in [(1usize, 1u64), (1000, 2), (70_001, 3)] {
            let g = Tensor::randn(0f32, 3.0, n, &Device::Cpu).unwrap();
            let g = (g * (seed as f64)).unwrap();
            let want = g
                .to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(
                fused::sum_of_squares(&g).unwrap().to_bits(),
                want.to_bits(),
                "n = {n}"
            );
        }
        // Not f32, or not contiguous: the caller takes candle's path.
        let g = Tensor::ones((3, 4), DType::F64, &Device::Cpu).unwrap();
        assert!(fused::sum_of_squares(&g).is_none());
        let t = Tensor::ones((3, 4), DType::F32, &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!(fused::sum_of_squares(&t).is_none());
    }

    #[test]
    fn load_state_refuses_the_other_optimizer_kind() {
        let err = refused(sgd(), &stepped(OptimizerConfig::default()));
        assert!(
            err.contains("primary.m.a.weight")
                && err.contains("adamw")
                && err.contains("cannot change"),
            "{err}"
        );
        let err = refused(OptimizerConfig::default(), &stepped(sgd()));
        assert!(
            err.contains("primary.momentum.a.weight")
                && err.contains("sgd")
                && err.contains("cannot change"),
            "{err}"
        );
    }

    #[test]
    fn load_state_refuses_missing_unknown_and_misshapen_moments() {
        for (config, moment) in [(OptimizerConfig::default(), "v"), (sgd(), "momentum")] {
            let mut state = stepped(config.clone());
            state.remove(&format!("primary.{moment}.b.bias"));
            let err = refused(config.clone(), &state);
            assert!(
                err.contains(&format!("no primary.{moment}.b.bias")) && err.contains("1 steps"),
                "{err}"
            );

            let mut state = stepped(config.clone());
            let t = state[&format!("primary.{moment}.b.bias")].clone();
            state.insert(format!("primary.{moment}.c.weight"), t);
            let err = refused(config.clone(), &state);
            assert!(err.contains("no variable \"c.weight\""), "{err}");

            let mut state = stepped(config.clone());
            state.insert(
                format!("primary.{moment}.b.bias"),
                Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            );
            let err = refused(config, &state);
            assert!(err.contains("shape"), "{err}");
        }
    }
}
