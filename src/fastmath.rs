//! Vectorizable `f32` transcendentals for the hot loops of our own kernels
//! (the fused LSTM cell): `exp`, `sigmoid` and `tanh` without a libm call per
//! element.
//!
//! Each function is branch-free (selects, no jumps), so a loop over a slice
//! compiles to SIMD code: SSE2 on any x86-64, AVX2 + FMA when the CPU has them
//! (the slice functions check once per call and run a copy compiled for it), NEON
//! on aarch64. The arithmetic is the same plain multiply-and-add on every path
//! (no fused multiply-add contraction), so a result does not depend on which
//! copy ran.
//!
//! Accuracy, measured against `f64` libm over every `f32` in the stated ranges
//! (`fastmath::tests`, every 61st `f32` of the range): `exp` within 8.1e-8
//! relative (about 1 ulp) on [−86.6, 88.7], `sigmoid` within 1.5e-7 relative on
//! [−80, 80], `tanh` within 1.4e-7 relative (7.6e-8 absolute) on [−10, 10]; the
//! tests fail above 1.2e-7, 2e-7 and 2e-7 (1e-7). NaN propagates; `exp` of
//! anything below −86.64 is 0 (the true value is under 2.5e-38) and above 88.72
//! is +∞ (it overflows), `sigmoid` and `tanh` saturate to their limits.
//!
//! The polynomials are Cephes' `expf` and `tanhf` (S. L. Moshier, public domain),
//! the same as SLEEF-style vectorized kernels in other frameworks use.

// The polynomial coefficients are written as published; the compiler rounds them
// to the nearest f32.
#![allow(clippy::excessive_precision)]

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n · LN2_HI` is exact for |n| ≤ 2⁸.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds an `f32` of magnitude < 2²² to an integer
/// (to nearest, ties to even), held in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
const EXP_HI: f32 = 88.722_83;
/// Below this the result would need 2^n with n < −125; the true value is under
/// 2.5e-38 and is returned as 0.
const EXP_LO: f32 = -86.643_4;

#[inline(always)]
fn select(condition: bool, a: f32, b: f32) -> f32 {
    if condition {
        a
    } else {
        b
    }
}

/// `e^x` (see the module docs for accuracy and limits).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Clamp into the range where 2^n is a normal number; NaN compares false
    // and passes through unchanged.
    let xc = select(x > EXP_HI, EXP_HI, select(x < EXP_LO, EXP_LO, x));
    let t = xc * LOG2E + ROUND;
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    // 2^n built from its exponent bits; n is in [−125, 128] after the clamp,
    // and y · 2^(n−1) · 2 keeps 2^128 within reach.
    let scale = f32::from_bits(n_bits.wrapping_add(126) << 23);
    let e = y * scale * 2.0;
    select(x > EXP_HI, f32::INFINITY, select(x < EXP_LO, 0.0, e))
}

/// The logistic function `1 / (1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    // e^−x overflows to +∞ for x < −88.7, and 1 / ∞ = 0: the right limit.
    1.0 / (1.0 + exp(-x))
}

/// The hyperbolic tangent.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    // tanh is odd: compute it at |x| and give the result x's sign (so
    // tanh(−0) = −0).
    let a = x.abs();
    // Small |x|: Cephes' odd polynomial (no cancellation near 0).
    let z = a * a;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328_2e-1)
            * z
            * a
            + a;
    // Otherwise 1 − 2 / (e^{2|x|} + 1) (e^{2|x|} = ∞ gives 1).
    let large = 1.0 - 2.0 / (exp(a + a) + 1.0);
    let t = select(a < 0.625, small, large);
    f32::from_bits(t.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// Applies `f` to every element in place, through the widest SIMD copy the CPU
/// runs.
macro_rules! slice_fn {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $f:ident) => {
        $(#[$doc])*
        pub fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { $avx2(xs) };
                return;
            }
            for x in xs.iter_mut() {
                *x = $f(*x);
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2(xs: &mut [f32]) {
            for x in xs.iter_mut() {
                *x = $f(*x);
            }
        }
    };
}

slice_fn!(
    /// `x ← e^x` over a slice.
    exp_slice,
    exp_slice_avx2,
    exp
);
slice_fn!(
    /// `x ← sigmoid(x)` over a slice.
    sigmoid_slice,
    sigmoid_slice_avx2,
    sigmoid
);
slice_fn!(
    /// `x ← tanh(x)` over a slice.
    tanh_slice,
    tanh_slice_avx2,
    tanh
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `f32` in `[lo, hi]` (stepping through the bit patterns, so each
    /// binade is covered), as (x, f(x) in f32, the f64 reference).
    fn sweep(
        lo: f32,
        hi: f32,
        step: u32,
        f: fn(f32) -> f32,
        reference: fn(f64) -> f64,
    ) -> (f64, f64) {
        let (mut max_rel, mut max_abs) = (0f64, 0f64);
        let mut check = |x: f32| {
            let got = f(x) as f64;
            let want = reference(x as f64);
            let abs = (got - want).abs();
            let rel = if want == 0.0 { abs } else { abs / want.abs() };
            assert!(got.is_finite(), "f({x}) = {got}");
            max_rel = max_rel.max(rel);
            max_abs = max_abs.max(abs);
        };
        for sign in [1f32, -1.0] {
            let mut bits = 0u32;
            loop {
                let x = f32::from_bits(bits) * sign;
                if x.abs() > hi.abs().max(lo.abs()) {
                    break;
                }
                if x >= lo && x <= hi {
                    check(x);
                }
                bits += step;
            }
        }
        (max_rel, max_abs)
    }

    #[test]
    fn exp_is_within_one_ulp_of_libm() {
        let (rel, _) = sweep(-86.6, 88.7, 61, exp, f64::exp);
        eprintln!("exp: max relative error {rel:e}");
        assert!(rel < 1.2e-7, "max relative error {rel:e}");
    }

    #[test]
    fn sigmoid_is_accurate() {
        let (rel, _) = sweep(-80.0, 80.0, 61, sigmoid, |x| 1.0 / (1.0 + (-x).exp()));
        eprintln!("sigmoid: max relative error {rel:e}");
        assert!(rel < 2e-7, "max relative error {rel:e}");
    }

    #[test]
    fn tanh_is_accurate() {
        let (rel, abs) = sweep(-10.0, 10.0, 61, tanh, f64::tanh);
        eprintln!("tanh: max relative error {rel:e}, absolute {abs:e}");
        assert!(
            rel < 2e-7 && abs < 1e-7,
            "max relative error {rel:e}, absolute {abs:e}"
        );
    }

    #[test]
    fn limits_nan_and_the_simd_copies_agree_with_the_scalar_functions() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan() && tanh(f32::NAN).is_nan());
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
        assert_eq!(tanh(0.0), 0.0);
        assert!(tanh(-0.0).is_sign_negative());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        // The slice functions (SIMD where the CPU has it) give the scalar
        // functions' bits, so results do not depend on the CPU.
        let xs: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.173).collect();
        for (slice_fn, f) in [
            (exp_slice as fn(&mut [f32]), exp as fn(f32) -> f32),
            (sigmoid_slice, sigmoid),
            (tanh_slice, tanh),
        ] {
            let mut ys = xs.clone();
            slice_fn(&mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(y.to_bits(), f(*x).to_bits(), "at {x}");
            }
        }
    }
}
