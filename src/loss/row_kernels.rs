//! The chunked losses' row kernels for `f32` logits: the same statistics and
//! gradients as the generic kernels in `chunked.rs`, at about a third of the cost,
//! with every loop one SIMD pass over the row: the exponentials are taken in `f32`
//! ([`fastmath::exp`], within 8.1e-8 relative) and corrected to first order for
//! the `f32` rounding of their argument (see [`exp_of_difference`]), and every sum
//! is accumulated in `f64` over [`LANES`] interleaved partial sums.
//!
//! Accuracy (`tests` below, against the `f64` kernels on the same values, 8 draws
//! of rows of 2 to 8,001 classes with margins of ±60): values within 1.6e-8
//! relative, gradient entries within 3.3e-8 · `scale` absolute (a CE row's entries
//! are at most `scale`, so this is below one `f32` rounding of the largest; the
//! tests fail above 5e-8 and 1e-7); `tests/loss_golden.rs` holds the chunked `f32` path to
//! PyTorch's `float64` values, `tests/loss_invariance.rs` to the plain path.
//!
//! The partial sums are added in a fixed order (lane 0 to [`LANES`] − 1, then the
//! tail), and there is no fused multiply-add, so a result does not depend on which
//! copy ran: AVX-512, AVX2 or the plain one (picked per row by a cached CPU check).

use super::chunked::{Kind, RowStats};
use crate::fastmath;

/// Interleaved partial sums per loop (one AVX-512 register of `f32`).
const LANES: usize = 16;

/// The row's statistics (as `chunked::row_stats`, plus the sum of exponentials).
pub(super) fn row_stats(z: &[f32], g: usize, kind: Kind) -> RowStats {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { stats_avx512(z, g, kind) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { stats_avx2(z, g, kind) };
        }
    }
    stats(z, g, kind)
}

/// Writes `scale · ∂value/∂z` for one row into `out` (as `chunked::row_grad`),
/// given the statistics [`row_stats`] returned for it.
pub(super) fn row_grad(
    z: &[f32],
    g: usize,
    kind: Kind,
    st: &RowStats,
    scale: f64,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { grad_avx512(z, g, kind, st, scale, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { grad_avx2(z, g, kind, st, scale, out) };
        }
    }
    grad(z, g, kind, st, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stats_avx512(z: &[f32], g: usize, kind: Kind) -> RowStats {
    stats(z, g, kind)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stats_avx2(z: &[f32], g: usize, kind: Kind) -> RowStats {
    stats(z, g, kind)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_avx512(z: &[f32], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [f32]) {
    grad(z, g, kind, st, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn grad_avx2(z: &[f32], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [f32]) {
    grad(z, g, kind, st, scale, out)
}

#[inline(always)]
fn max_of(z: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = z.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            m[k] = m[k].max(c[k]);
        }
    }
    m.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// `(e^s, s)` for `s = x − max`: `s` exact in f64 (both are `f32`), `e^s` from the
/// `f32` exponential of `s` rounded to `f32`, times `1 + δ` for the rounding `δ`
/// (`|δ| ≤ 2⁻²⁴ |s|`; `e^δ = 1 + δ` to within `δ²`). Without the correction the
/// rounding of `s` alone would cost `|s|` times 6e-8 relative (1e-6 at `s = −16`).
#[inline(always)]
fn exp_of_difference(x: f32, max: f64) -> (f64, f64) {
    let s = f64::from(x) - max;
    let s32 = s as f32;
    let e = f64::from(fastmath::exp(s32)) * (1.0 + (s - f64::from(s32)));
    (e, s)
}

/// Sums over a row part, in f64: `Σ e`, `Σ e·s` and `Σ z`, with `s = z − max` and
/// `e = exp(s)` ([`exp_of_difference`]).
#[derive(Clone, Copy, Default)]
struct Sums {
    e: f64,
    es: f64,
    z: f64,
}

impl std::ops::Add for Sums {
    type Output = Sums;
    #[inline(always)]
    fn add(self, o: Sums) -> Sums {
        Sums {
            e: self.e + o.e,
            es: self.es + o.es,
            z: self.z + o.z,
        }
    }
}

#[inline(always)]
fn sums(z: &[f32], max: f64) -> Sums {
    let mut e_lanes = [0f64; LANES];
    let mut es_lanes = [0f64; LANES];
    let mut z_lanes = [0f64; LANES];
    let chunks = z.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let (e, s) = exp_of_difference(c[k], max);
            e_lanes[k] += e;
            es_lanes[k] += e * s;
            z_lanes[k] += f64::from(c[k]);
        }
    }
    let mut out = Sums::default();
    for k in 0..LANES {
        out.e += e_lanes[k];
        out.es += es_lanes[k];
        out.z += z_lanes[k];
    }
    for &x in rest {
        let (e, s) = exp_of_difference(x, max);
        out.e += e;
        out.es += e * s;
        out.z += f64::from(x);
    }
    out
}

#[inline(always)]
fn stats(z: &[f32], g: usize, kind: Kind) -> RowStats {
    match kind {
        Kind::CrossEntropy { smoothing } => {
            let max = f64::from(max_of(z));
            let s = sums(z, max);
            let log_sum = s.e.ln();
            let lse = max + log_sum;
            let nll = lse - f64::from(z[g]);
            let smooth = lse - s.z / z.len() as f64;
            RowStats {
                value: (1.0 - smoothing) * nll + smoothing * smooth,
                max,
                log_sum,
                sum: s.e,
                entropy: 0.0,
            }
        }
        Kind::Complement => {
            // The support is every class but the target: the row in two parts.
            let (head, tail) = (&z[..g], &z[g + 1..]);
            let max = f64::from(max_of(head).max(max_of(tail)));
            let s = sums(head, max) + sums(tail, max);
            let log_sum = s.e.ln();
            let entropy = log_sum - s.es / s.e;
            RowStats {
                value: -entropy,
                max,
                log_sum,
                sum: s.e,
                entropy,
            }
        }
    }
}

#[inline(always)]
fn grad(z: &[f32], g: usize, kind: Kind, st: &RowStats, scale: f64, out: &mut [f32]) {
    let (max, a) = (st.max, scale / st.sum);
    match kind {
        Kind::CrossEntropy { smoothing } => {
            // scale · (p_j − ε/V), p_j = e_j / Σ e; the target also − (1 − ε).
            let b = scale * (smoothing / z.len() as f64);
            for (o, &x) in out.iter_mut().zip(z) {
                let (e, _) = exp_of_difference(x, max);
                *o = (e * a - b) as f32;
            }
            let (e, _) = exp_of_difference(z[g], max);
            out[g] = (e * a - b - scale * (1.0 - smoothing)) as f32;
        }
        Kind::Complement => {
            // ∂(−H)/∂z_j = q_j (log q_j + H) for j ≠ g, with q_j = e_j / Σ e and
            // log q_j = s_j − ln Σ e; 0 for the target.
            let c = st.entropy - st.log_sum;
            for (o, &x) in out.iter_mut().zip(z) {
                let (e, s) = exp_of_difference(x, max);
                *o = (e * a * (s + c)) as f32;
            }
            out[g] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform in [0, 1) from a fixed xorshift stream (the loss-only build has no
    /// `crate::rng`).
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Rows of awkward shapes and values: lengths below, at and off a multiple of
    /// [`LANES`], targets at either end, large margins either way, ties.
    fn rows(seed: u64) -> Vec<(Vec<f32>, usize)> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut out = Vec::new();
        for (v, spread) in [
            (2, 3.0),
            (5, 1.0),
            (16, 4.0),
            (17, 2.0),
            (300, 8.0),
            (8001, 6.0),
        ] {
            for g in [0, v / 2, v - 1] {
                let z: Vec<f32> = (0..v)
                    .map(|_| ((uniform(&mut state) * 2.0 - 1.0) * spread) as f32)
                    .collect();
                out.push((z.clone(), g));
                let mut far = z.clone();
                far[g] += 60.0; // a confident model: the target far above the rest
                out.push((far, g));
                let mut below = z;
                below[g] -= 60.0;
                out.push((below, g));
            }
            out.push((vec![0.5; v], v / 3)); // all tied
        }
        out
    }

    fn kinds() -> [Kind; 3] {
        [
            Kind::CrossEntropy { smoothing: 0.0 },
            Kind::CrossEntropy { smoothing: 0.1 },
            Kind::Complement,
        ]
    }

    #[test]
    fn f32_kernels_agree_with_the_f64_kernels() {
        let (mut worst_value, mut worst_grad) = (0f64, 0f64);
        for (z, g) in (0..8).flat_map(rows) {
            let z64: Vec<f64> = z.iter().map(|&x| f64::from(x)).collect();
            for kind in kinds() {
                let a = row_stats(&z, g, kind);
                let b = super::super::chunked::row_stats(&z64, g, kind);
                let err = (a.value - b.value).abs() / b.value.abs().max(1.0);
                worst_value = worst_value.max(err);
                let scale = 0.25;
                let mut ga = vec![0f32; z.len()];
                let mut gb = vec![0f64; z.len()];
                row_grad(&z, g, kind, &a, scale, &mut ga);
                super::super::chunked::row_grad(&z64, g, kind, &b, scale, &mut gb);
                for (&x, &y) in ga.iter().zip(&gb) {
                    // In units of `scale`: a CE row's gradient has an L1 norm of
                    // at most 2 · scale, and its entries are at most scale.
                    worst_grad = worst_grad.max((f64::from(x) - y).abs() / scale);
                }
            }
        }
        // Measured 1.6e-8 and 3.3e-8 · scale: below one f32 rounding of an entry
        // of size scale (2^-24 ≈ 6e-8).
        assert!(worst_value < 5e-8, "value off by {worst_value:e}");
        assert!(worst_grad < 1e-7, "gradient off by {worst_grad:e} · scale");
    }

    #[test]
    fn every_simd_copy_gives_the_same_bits() {
        for (z, g) in rows(0) {
            for kind in kinds() {
                let plain = stats(&z, g, kind);
                let picked = row_stats(&z, g, kind);
                assert_eq!(plain.value.to_bits(), picked.value.to_bits());
                assert_eq!(plain.sum.to_bits(), picked.sum.to_bits());
                let mut a = vec![0f32; z.len()];
                let mut b = vec![0f32; z.len()];
                grad(&z, g, kind, &plain, 0.5, &mut a);
                row_grad(&z, g, kind, &plain, 0.5, &mut b);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    let narrow = unsafe { stats_avx2(&z, g, kind) };
                    assert_eq!(plain.value.to_bits(), narrow.value.to_bits());
                    unsafe { grad_avx2(&z, g, kind, &plain, 0.5, &mut b) };
                    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
                }
            }
        }
    }

    #[test]
    fn nan_logits_give_a_nan_value() {
        let mut z = vec![0.25f32; 40];
        z[17] = f32::NAN;
        for kind in kinds() {
            assert!(row_stats(&z, 3, kind).value.is_nan(), "{kind:?}");
        }
    }
}
