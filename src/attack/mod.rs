//! Adversarial attacks on text classifiers: FGSM and PGD on the input embeddings,
//! HotFlip on the tokens, and the evaluation of a trained model under them.
//!
//! This room owns the attacks and the accuracy-under-attack evaluation. It does
//! not train, tokenize or read data sets; the model is anything that maps input
//! embeddings to logits (a closure), so the functions here work on any candle
//! model, not only cotext's ([`crate::models::Model::forward_embeddings`] is the
//! closure cotext's own classifiers provide).
//!
//! # The ε scale
//!
//! Embedding tables differ in scale (a BiLSTM's rows are drawn from N(0, 1), a
//! Transformer's from N(0, 1/d), BERT's are learned), so an absolute ε means
//! nothing across models. Here ε is **relative to the mean embedding norm of the
//! batch**: with `r` the mean, over the real (unpadded) tokens of the batch, of the
//! L2 norm of a token's input embedding ([`mean_token_norm`]):
//!
//! * `Norm::L2`: every real token's embedding moves by at most `ε·r` in L2 norm
//!   (a ball per token, so the budget does not grow with the length of a text);
//! * `Norm::Linf`: every coordinate of a real token's embedding moves by at most
//!   `ε·r/√D` (D the embedding width): the corner of that cube is at L2 distance
//!   `ε·r`, so FGSM moves every token exactly as far under both norms.
//!
//! ε = 0.1 thus lets each token drift a tenth of a typical embedding's length.
//! Padding positions are never perturbed.
//!
//! The loss an attack increases is the per-example cross-entropy; its gradient
//! with respect to the embeddings is taken with the weights detached (no
//! gradient reaches the model's variables) and with dropout off.

mod evaluate;

pub use evaluate::{attack_dataset, AttackOptions, AttackResult, Method};

use candle_core::{bail, DType, Result, Tensor, Var, D};

use crate::models::layers;
use crate::rng::SplitMix64;
use crate::tokenize::TextTokenizer;

/// The norm of the perturbation ball (see the module docs for the ε scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Each coordinate moves by at most `ε·r/√D`.
    #[default]
    Linf,
    /// Each token's embedding moves by at most `ε·r` in L2 norm.
    L2,
}

impl Norm {
    /// The name used on the command line and in reports: `linf` or `l2`.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }
}

/// A perturbation budget: ε (relative, see the module docs) under a norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// ε, relative to the mean token-embedding norm of the batch; `>= 0`.
    pub eps: f64,
    /// The norm of the ball.
    pub norm: Norm,
}

/// The loss, its gradient and the logits at one point.
#[derive(Debug, Clone)]
pub struct LossGradient {
    /// Logits `[B, K]` (f32, detached).
    pub logits: Tensor,
    /// Per-example cross-entropy `[B]` (f32, detached).
    pub losses: Tensor,
    /// `∂(Σ_b loss_b)/∂emb`, `[B, T, D]` f32: row `b` is the gradient of example
    /// `b`'s own loss, whatever the rest of the batch holds.
    pub gradient: Tensor,
}

/// Per-example cross-entropy `[B]` of logits `[B, K]` against labels `[B]` (u32),
/// computed in f32 with ops that backpropagate.
pub fn cross_entropy_per_example(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    if labels.dims() != [b] {
        bail!(
            "attack: labels {:?} do not match logits {:?}",
            labels.dims(),
            logits.dims()
        );
    }
    let logp = layers::log_softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

/// Evaluates `model` (embeddings `[B, T, D]` → logits `[B, K]`) at `emb` and
/// returns the logits, the per-example cross-entropy against `labels` and its
/// gradient with respect to `emb`.
///
/// Fails when the logits do not depend on `emb` (a model that detaches its input,
/// or an op without a backward pass: candle then records no gradient silently).
pub fn loss_and_gradient<F>(model: F, emb: &Tensor, labels: &Tensor) -> Result<LossGradient>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let var = Var::from_tensor(&emb.to_dtype(DType::F32)?)?;
    let logits = model(var.as_tensor())?;
    let losses = cross_entropy_per_example(&logits, labels)?;
    // The sum, not the mean: each row of the gradient is then that example's own
    // gradient, at the same scale whatever the batch size.
    let grads = losses.sum_all()?.backward()?;
    let Some(gradient) = grads.get(var.as_tensor()) else {
        bail!(
            "attack: the logits do not depend on the input embeddings (no gradient reached them)"
        );
    };
    Ok(LossGradient {
        logits: logits.detach().to_dtype(DType::F32)?,
        losses: losses.detach(),
        gradient: gradient.detach(),
    })
}

/// `r`: the mean L2 norm of the real tokens' embeddings in `emb [B, T, D]`, with
/// `mask [B, T]` (1 real, 0 padding; any dtype). 0 for a batch without real tokens.
pub fn mean_token_norm(emb: &Tensor, mask: &Tensor) -> Result<f64> {
    let m = layers::mask_as(mask, DType::F32)?;
    let norms = emb.to_dtype(DType::F32)?.sqr()?.sum(D::Minus1)?.sqrt()?;
    let total = (norms * &m)?.sum_all()?.to_scalar::<f32>()? as f64;
    let count = m.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(if count > 0.0 { total / count } else { 0.0 })
}

/// The radius of the ball in absolute units for `emb`'s batch: `ε·r` for L2 (per
/// token), `ε·r/√D` for L∞ (per coordinate).
pub fn radius(emb: &Tensor, mask: &Tensor, budget: Budget) -> Result<f64> {
    let r = budget.eps * mean_token_norm(emb, mask)?;
    let d = emb.dim(D::Minus1)? as f64;
    Ok(match budget.norm {
        Norm::L2 => r,
        Norm::Linf => r / d.sqrt(),
    })
}

fn check_budget(what: &str, budget: Budget) -> Result<()> {
    if !(budget.eps.is_finite() && budget.eps >= 0.0) {
        bail!("{what}: eps must be finite and >= 0 (got {})", budget.eps);
    }
    Ok(())
}

/// `mask [B, T]` as f32 `[B, T, 1]`, to zero padding positions of `[B, T, D]`.
fn mask3(mask: &Tensor) -> Result<Tensor> {
    layers::mask_as(mask, DType::F32)?.unsqueeze(2)
}

/// The steepest-ascent step of unit size under `norm` for gradient `g [B, T, D]`:
/// `sign(g)` for L∞, `g_t/‖g_t‖` per token for L2 (0 where `g_t = 0`).
fn ascent_direction(g: &Tensor, norm: Norm) -> Result<Tensor> {
    match norm {
        Norm::Linf => g.sign(),
        Norm::L2 => {
            let n = g.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            // Where a token's gradient is 0 the direction is 0, not NaN.
            let safe = n.maximum(f32::MIN_POSITIVE)?;
            g.broadcast_div(&safe)
        }
    }
}

/// Projects a perturbation `delta [B, T, D]` back into the ball of `radius`.
fn project(delta: &Tensor, norm: Norm, radius: f64) -> Result<Tensor> {
    match norm {
        Norm::Linf => delta.clamp(-radius, radius),
        Norm::L2 => {
            let n = delta.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            // scale = min(1, radius/‖δ_t‖): only tokens outside the ball shrink.
            let scale = (n.maximum(f32::MIN_POSITIVE)?.recip()? * radius)?.minimum(1.0)?;
            delta.broadcast_mul(&scale)
        }
    }
}

/// FGSM (Goodfellow et al. 2015) on input embeddings: one step of size `ε` (see
/// the module docs for the scale) along the steepest-ascent direction of the
/// cross-entropy, `emb + radius·sign(∇)` under L∞ or `emb + ε·r·∇_t/‖∇_t‖` per
/// token under L2. Padding positions are left untouched.
///
/// `model` maps embeddings `[B, T, D]` to logits `[B, K]`; `emb` is `[B, T, D]`,
/// `mask [B, T]` (1 real, 0 padding), `labels [B]` (u32). Returns the perturbed
/// embeddings in f32.
pub fn fgsm<F>(
    model: F,
    emb: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
    budget: Budget,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    check_budget("fgsm", budget)?;
    let at = loss_and_gradient(model, emb, labels)?;
    fgsm_from_gradient(emb, mask, &at.gradient, budget)
}

/// FGSM from a gradient already computed at `emb` (the step [`fgsm`] takes): lets
/// several ε share one backward pass.
pub fn fgsm_from_gradient(
    emb: &Tensor,
    mask: &Tensor,
    gradient: &Tensor,
    budget: Budget,
) -> Result<Tensor> {
    check_budget("fgsm", budget)?;
    let radius = radius(emb, mask, budget)?;
    let delta =
        (ascent_direction(gradient, budget.norm)? * radius)?.broadcast_mul(&mask3(mask)?)?;
    emb.to_dtype(DType::F32)? + delta
}

/// Options of [`pgd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgdOptions {
    /// The ball.
    pub budget: Budget,
    /// Ascent steps after the random start; `>= 1`.
    pub steps: usize,
    /// Step size as a fraction of the radius (so it scales with ε): each step moves
    /// `step_size·radius` (L∞: per coordinate; L2: per token). Madry et al.'s
    /// rule of thumb is `2.5/steps`.
    pub step_size: f64,
}

/// PGD (Madry et al. 2018) on input embeddings: a uniformly random start in the
/// ball, then `steps` steps of steepest ascent on the cross-entropy, each followed
/// by the projection back into the ball. Padding positions are left untouched.
///
/// For each example the iterate with the highest loss seen is returned (the
/// random start and every step, the last one included), so a longer attack never
/// does worse than a shorter one on the same draws.
///
/// `rng` draws the random start (the crate's seeded generator, so the attack is
/// deterministic for a seed). Shapes as in [`fgsm`]; returns f32 embeddings.
pub fn pgd<F>(
    model: F,
    emb: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
    options: &PgdOptions,
    rng: &mut SplitMix64,
) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let budget = options.budget;
    check_budget("pgd", budget)?;
    if options.steps == 0 {
        bail!("pgd: steps must be >= 1");
    }
    if !(options.step_size.is_finite() && options.step_size > 0.0) {
        bail!(
            "pgd: step_size must be finite and > 0 (got {})",
            options.step_size
        );
    }
    let emb = emb.to_dtype(DType::F32)?;
    let m = mask3(mask)?;
    let radius = radius(&emb, mask, budget)?;
    let alpha = options.step_size * radius;
    let mut delta =
        random_start(emb.dims(), budget.norm, radius, rng, emb.device())?.broadcast_mul(&m)?;
    let mut best: Option<(Tensor, Vec<f32>)> = None;
    for step in 0..=options.steps {
        let at = loss_and_gradient(&model, &(&emb + &delta)?, labels)?;
        let losses = at.losses.to_vec1::<f32>()?;
        best = Some(match best {
            None => (delta.clone(), losses),
            Some((best_delta, best_losses)) => {
                keep_better(&best_delta, &best_losses, &delta, &losses)?
            }
        });
        if step == options.steps {
            break;
        }
        let moved = (&delta + (ascent_direction(&at.gradient, budget.norm)? * alpha)?)?;
        delta = project(&moved, budget.norm, radius)?.broadcast_mul(&m)?;
    }
    let (delta, _) = best.expect("at least one evaluation");
    emb + delta
}

/// Per example, the perturbation with the higher loss (ties keep the earlier one).
fn keep_better(
    old: &Tensor,
    old_losses: &[f32],
    new: &Tensor,
    new_losses: &[f32],
) -> Result<(Tensor, Vec<f32>)> {
    let pick: Vec<u8> = old_losses
        .iter()
        .zip(new_losses)
        .map(|(o, n)| u8::from(n > o))
        .collect();
    let losses = old_losses
        .iter()
        .zip(new_losses)
        .map(|(&o, &n)| if n > o { n } else { o })
        .collect();
    let b = pick.len();
    let pick = Tensor::from_vec(pick, (b, 1, 1), old.device())?
        .broadcast_as(old.shape())?
        .contiguous()?;
    Ok((pick.where_cond(new, old)?, losses))
}

/// A uniform draw from the ball: L∞, uniform per coordinate in `[-radius, radius]`;
/// L2, per token a uniform direction (normalized Gaussian) at distance
/// `radius·u^(1/D)` (uniform in the D-ball's volume).
fn random_start(
    dims: &[usize],
    norm: Norm,
    radius: f64,
    rng: &mut SplitMix64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let &[b, t, d] = dims else {
        bail!("pgd: embeddings must be [B, T, D], got {dims:?}")
    };
    let n = b * t * d;
    let values: Vec<f32> = match norm {
        Norm::Linf => (0..n)
            .map(|_| rng.uniform(-radius, radius) as f32)
            .collect(),
        Norm::L2 => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..b * t {
                let g: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
                let len = g
                    .iter()
                    .map(|x| x * x)
                    .sum::<f64>()
                    .sqrt()
                    .max(f64::MIN_POSITIVE);
                let dist = radius * rng.next_f64().powf(1.0 / d as f64);
                v.extend(g.iter().map(|x| (x / len * dist) as f32));
            }
            v
        }
    };
    Tensor::from_vec(values, (b, t, d), device)
}

/// Options of [`hotflip`].
#[derive(Debug, Clone, PartialEq)]
pub struct HotFlipOptions {
    /// The most tokens replaced per example (K).
    pub flips: usize,
    /// Per vocabulary id, whether it may be inserted; also, a position whose
    /// current id is not allowed (a special token: padding, BOS/EOS, `[CLS]`,
    /// `[SEP]`, unknown) is never replaced. Its length is the number of ids
    /// considered (at most the table's rows).
    pub allowed: Vec<bool>,
}

/// What [`hotflip`] returns.
#[derive(Debug, Clone)]
pub struct HotFlipResult {
    /// The ids after the flips, `[B, T]` u32.
    pub ids: Tensor,
    /// Flips made in each example (`<= K`).
    pub flips: Vec<usize>,
    /// The ids after each round: `rounds[k]` is the result of the attack with
    /// `K = k` (the greedy rounds do not depend on K), `rounds[0]` the input.
    pub rounds: Vec<Tensor>,
}

/// HotFlip (Ebrahimi et al. 2018), greedy: up to `K` rounds; in each, for every
/// example still classified correctly, the single replacement of token `x_t` by
/// vocabulary id `v` with the largest first-order loss increase
/// `(E_v − E_{x_t})·∂loss/∂e_t` is made (the one-hot gradient through the
/// embedding table `E`), if that increase is positive. A position is replaced at
/// most once, padding and special tokens are never replaced, and only `allowed`
/// ids are inserted. An example stops as soon as it is misclassified, so
/// [`HotFlipResult::flips`] counts the flips the attack needed.
///
/// `model` maps embeddings `[B, T, D]` (rows of `table [V, D]`) to logits;
/// `ids [B, T]` (u32), `mask [B, T]`, `labels [B]` (u32).
pub fn hotflip<F>(
    model: F,
    table: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
    options: &HotFlipOptions,
) -> Result<HotFlipResult>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let (b, t) = ids.dims2()?;
    let (v, d) = table.dims2()?;
    if options.allowed.len() > v {
        bail!(
            "hotflip: {} allowed flags for a table of {v} rows",
            options.allowed.len()
        );
    }
    let table = table.to_dtype(DType::F32)?;
    let candidates = options.allowed.len();
    let allowed_table = table.narrow(0, 0, candidates)?.t()?.contiguous()?; // [D, V']
    let keep = layers::mask_as(mask, DType::F32)?.to_vec2::<f32>()?;
    let gold = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let mut rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mut flipped = vec![vec![false; t]; b];
    let mut flips = vec![0usize; b];
    let to_tensor = |rows: &[Vec<u32>]| Tensor::from_vec(rows.concat(), (b, t), ids.device());
    let mut rounds = vec![to_tensor(&rows)?];
    for _ in 0..options.flips {
        let current = to_tensor(&rows)?;
        let emb = table
            .index_select(&current.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let at = loss_and_gradient(&model, &emb, labels)?;
        let predicted = argmax_rows(&at.logits)?;
        let active: Vec<usize> = (0..b).filter(|&i| predicted[i] == gold[i]).collect();
        if active.is_empty() {
            rounds.push(current);
            continue;
        }
        // Gains only for the active rows: [n·T, V'] at once would be large for a
        // big vocabulary, so a few examples at a time.
        for chunk in active.chunks(8) {
            let index = Tensor::from_vec(
                chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                chunk.len(),
                ids.device(),
            )?;
            let g = at.gradient.index_select(&index, 0)?; // [n, T, D]
            let e = emb.index_select(&index, 0)?;
            let n = chunk.len();
            let to_v = g
                .reshape((n * t, d))?
                .matmul(&allowed_table)?
                .reshape((n, t, candidates))?;
            let from = (&g * &e)?.sum_keepdim(D::Minus1)?;
            let gains = to_v.broadcast_sub(&from)?.to_vec3::<f32>()?;
            for (row_gains, &i) in gains.iter().zip(chunk) {
                if let Some((pos, id)) =
                    best_flip(row_gains, &rows[i], &keep[i], &flipped[i], &options.allowed)
                {
                    rows[i][pos] = id;
                    flipped[i][pos] = true;
                    flips[i] += 1;
                }
            }
        }
        rounds.push(to_tensor(&rows)?);
    }
    Ok(HotFlipResult {
        ids: to_tensor(&rows)?,
        flips,
        rounds,
    })
}

/// The (position, id) with the largest positive gain for one example.
fn best_flip(
    gains: &[Vec<f32>],
    ids: &[u32],
    keep: &[f32],
    flipped: &[bool],
    allowed: &[bool],
) -> Option<(usize, u32)> {
    let mut best: Option<(usize, u32, f32)> = None;
    for (pos, row) in gains.iter().enumerate() {
        let current = ids[pos] as usize;
        if keep[pos] == 0.0 || flipped[pos] || !allowed.get(current).copied().unwrap_or(false) {
            continue;
        }
        for (id, &gain) in row.iter().enumerate() {
            if id == current || !allowed[id] || !gain.is_finite() {
                continue;
            }
            if gain > 0.0 && best.is_none_or(|(_, _, g)| gain > g) {
                best = Some((pos, id as u32, gain));
            }
        }
    }
    best.map(|(pos, id, _)| (pos, id))
}

/// The ids HotFlip may insert or replace for a tokenizer: every id except its
/// special tokens (padding, BOS/EOS or `[CLS]`/`[SEP]`, unknown, and any added
/// token marked special, such as `[MASK]`).
pub fn hotflip_candidates(tokenizer: &TextTokenizer) -> Vec<bool> {
    let mut allowed = vec![true; tokenizer.vocab_size()];
    let mut forbid = |id: u32| {
        if let Some(a) = allowed.get_mut(id as usize) {
            *a = false;
        }
    };
    let named = [
        Some(tokenizer.pad_id()),
        tokenizer.bos_id(),
        tokenizer.eos_id(),
        tokenizer.unk_id(),
    ];
    named.into_iter().flatten().for_each(&mut forbid);
    for (id, token) in tokenizer.inner().get_added_tokens_decoder() {
        if token.special {
            forbid(id);
        }
    }
    allowed
}

/// The index of each row's largest value (the first on ties).
pub(crate) fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0usize, |b, (i, &x)| if x > row[b] { i } else { b }) as u32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A linear "model": logits = (Σ_t emb_t)·W, so ∂loss/∂emb_t is the same for
    /// every real token and known in closed form.
    fn linear(w: &Tensor) -> impl Fn(&Tensor) -> Result<Tensor> + '_ {
        move |emb: &Tensor| emb.sum(1)?.matmul(w)
    }

    fn setup() -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let mut g = SplitMix64::new(5);
        let emb: Vec<f32> = (0..2 * 3 * 4).map(|_| g.normal() as f32).collect();
        let emb = Tensor::from_vec(emb, (2, 3, 4), &dev)?;
        let w: Vec<f32> = (0..4 * 3).map(|_| g.normal() as f32).collect();
        let w = Tensor::from_vec(w, (4, 3), &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &dev)?;
        let labels = Tensor::new(&[0u32, 2], &dev)?;
        Ok((emb, w, mask, labels))
    }

    #[test]
    fn fgsm_moves_each_real_token_by_the_radius_and_padding_not_at_all() -> Result<()> {
        let (emb, w, mask, labels) = setup()?;
        for norm in [Norm::Linf, Norm::L2] {
            let budget = Budget { eps: 0.1, norm };
            let adv = fgsm(linear(&w), &emb, &mask, &labels, budget)?;
            let delta = (&adv - &emb)?;
            let r = 0.1 * mean_token_norm(&emb, &mask)?;
            let norms = delta.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec2::<f32>()?;
            for (b, row) in norms.iter().enumerate() {
                for (t, &n) in row.iter().enumerate() {
                    let want = if (b, t) == (1, 2) { 0.0 } else { r };
                    assert!(
                        (n as f64 - want).abs() < 1e-5,
                        "{norm:?} ({b},{t}): {n} vs {want}"
                    );
                }
            }
            let before = loss_and_gradient(linear(&w), &emb, &labels)?
                .losses
                .sum_all()?
                .to_scalar::<f32>()?;
            let after = loss_and_gradient(linear(&w), &adv, &labels)?
                .losses
                .sum_all()?
                .to_scalar::<f32>()?;
            assert!(after > before, "{norm:?}: {after} <= {before}");
        }
        Ok(())
    }

    #[test]
    fn pgd_stays_in_the_ball_and_is_deterministic() -> Result<()> {
        let (emb, w, mask, labels) = setup()?;
        for norm in [Norm::Linf, Norm::L2] {
            let options = PgdOptions {
                budget: Budget { eps: 0.2, norm },
                steps: 20,
                step_size: 0.2,
            };
            let a = pgd(
                linear(&w),
                &emb,
                &mask,
                &labels,
                &options,
                &mut SplitMix64::new(1),
            )?;
            let b = pgd(
                linear(&w),
                &emb,
                &mask,
                &labels,
                &options,
                &mut SplitMix64::new(1),
            )?;
            assert_eq!(a.to_vec3::<f32>()?, b.to_vec3::<f32>()?);
            let delta = (&a - &emb)?;
            let radius = radius(&emb, &mask, options.budget)?;
            let size = match norm {
                Norm::Linf => delta.abs()?.max(D::Minus1)?,
                Norm::L2 => delta.sqr()?.sum(D::Minus1)?.sqrt()?,
            };
            let size = size.to_vec2::<f32>()?;
            assert!(
                size.iter()
                    .flatten()
                    .all(|&s| s as f64 <= radius * (1.0 + 1e-5)),
                "{norm:?}: {size:?} > {radius}"
            );
            assert_eq!(size[1][2], 0.0, "padding moved");
            // On a linear model FGSM's point is near the worst case; PGD from a
            // random start climbs to a local maximum of the loss on the ball's
            // boundary, which need not be the same point: within 1% or above.
            let fgsm_adv = fgsm(linear(&w), &emb, &mask, &labels, options.budget)?;
            let loss = |x: &Tensor| -> Result<f32> {
                loss_and_gradient(linear(&w), x, &labels)?
                    .losses
                    .sum_all()?
                    .to_scalar::<f32>()
            };
            let (p, f, clean) = (loss(&a)?, loss(&fgsm_adv)?, loss(&emb)?);
            assert!(
                p > clean && p >= f - 1e-2 * f.abs(),
                "{norm:?}: pgd {p}, fgsm {f}, clean {clean}"
            );
        }
        Ok(())
    }

    #[test]
    fn hotflip_picks_the_largest_first_order_gain_and_skips_specials() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = SplitMix64::new(9);
        let table: Vec<f32> = (0..6 * 4).map(|_| g.normal() as f32).collect();
        let table = Tensor::from_vec(table, (6, 4), &dev)?;
        let w: Vec<f32> = (0..4 * 3).map(|_| g.normal() as f32).collect();
        let w = Tensor::from_vec(w, (4, 3), &dev)?;
        // id 0 pad, 1 bos: neither inserted nor replaced.
        let allowed = vec![false, false, true, true, true, true];
        let ids = Tensor::new(&[[1u32, 2, 3, 0]], &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 1, 0]], &dev)?;
        let logits = table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((1, 4, 4))?
            .sum(1)?
            .matmul(&w)?;
        let label = argmax_rows(&logits)?;
        let labels = Tensor::new(label.as_slice(), &dev)?;
        let none = hotflip(
            linear(&w),
            &table,
            &ids,
            &mask,
            &labels,
            &HotFlipOptions {
                flips: 0,
                allowed: allowed.clone(),
            },
        )?;
        assert_eq!(none.ids.to_vec2::<u32>()?, ids.to_vec2::<u32>()?);
        let one = hotflip(
            linear(&w),
            &table,
            &ids,
            &mask,
            &labels,
            &HotFlipOptions { flips: 1, allowed },
        )?;
        let out = one.ids.to_vec2::<u32>()?[0].clone();
        assert_eq!(
            (out[0], out[3]),
            (1, 0),
            "special or padding position replaced: {out:?}"
        );
        assert!(out[1..3].iter().all(|&id| id >= 2), "{out:?}");
        // Brute force over the two replaceable positions and the allowed ids: on a
        // linear model the first-order gain is exact.
        let at = loss_and_gradient(
            linear(&w),
            &table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((1, 4, 4))?,
            &labels,
        )?;
        let g = at.gradient.to_vec3::<f32>()?[0].clone();
        let rows = table.to_vec2::<f32>()?;
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let mut best = (0.0f32, None);
        for pos in 1..3 {
            let cur = [1u32, 2, 3, 0][pos] as usize;
            for id in 2..6 {
                let gain = dot(&g[pos], &rows[id]) - dot(&g[pos], &rows[cur]);
                if id != cur && gain > best.0 {
                    best = (gain, Some((pos, id as u32)));
                }
            }
        }
        match best.1 {
            Some((pos, id)) => {
                assert_eq!(out[pos], id);
                assert_eq!(one.flips, vec![1]);
            }
            None => assert_eq!(one.flips, vec![0]),
        }
        Ok(())
    }
}
