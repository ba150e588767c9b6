//! Vectorizable `f32` transcendentals for the hot loops of our own kernels
//! (the fused LSTM cell, softmax, GELU): `exp`, `sigmoid`, `tanh`, the normal
//! CDF `Φ`, GELU and its derivative, without a libm call per element.
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
//! `normal_cdf` and `gelu` (`x·Φ(x)`) keep their *relative* accuracy in the left
//! tail, where `x·Φ(x)` is tiny: within 8e-7 relative on [−3, 10] (for `gelu`,
//! away from the subnormal results next to 0), 1.3e-6 on
//! [−5, −3], 4.0e-6 on [−10, −5] (the tests fail above 1e-6, 1.6e-6 and 5e-6);
//! `gelu_derivative` is within 2.6e-7 absolute on [−10, 10] (it crosses zero near
//! −0.752, so a relative bound means nothing there; the test fails above 4e-7).
//! Below about −13.2, where `Φ` is under 2.5e-38, both return 0.
//!
//! The polynomials are Cephes' `expf` and `tanhf` (S. L. Moshier, public domain),
//! the same as SLEEF-style vectorized kernels in other frameworks use, and
//! Numerical Recipes' Chebyshev fit of `erfc` for `Φ`.

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

/// `e^x` in `f64`, branch-free like [`exp`] (so a loop over a slice vectorizes):
/// Cephes' `exp` (a Padé form of `e^r` on |r| ≤ ln 2 / 2). Within 2 ulp of libm
/// (`exp_f64_is_within_two_ulps_of_libm`); below −708 it returns 0 (the true value
/// is under 3.3e-308, a subnormal), above 709.78 +∞; NaN propagates.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    // 1.5 · 2⁵²: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    const HI: f64 = 709.782_712_893_384;
    const LO: f64 = -708.0;
    // ln 2 = C1 + C2, C1 with few enough bits that n · C1 is exact.
    const C1: f64 = 6.931_457_519_531_25e-1;
    const C2: f64 = 1.428_606_820_309_417_232e-6;
    const P: [f64; 3] = [
        1.261_771_930_748_105_908_78e-4,
        3.029_944_077_074_419_613_00e-2,
        9.999_999_999_999_999_999_10e-1,
    ];
    const Q: [f64; 4] = [
        3.001_985_051_386_644_550_42e-6,
        2.524_483_403_496_841_041_92e-3,
        2.272_655_482_081_550_287_66e-1,
        2.000_000_000_000_000_000_09,
    ];
    let big = x > HI;
    let small = x < LO;
    let xc = if big {
        HI
    } else if small {
        LO
    } else {
        x
    };
    let t = xc * std::f64::consts::LOG2_E + ROUND;
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let n = t - ROUND;
    let r = xc - n * C1 - n * C2;
    let rr = r * r;
    let p = r * ((P[0] * rr + P[1]) * rr + P[2]);
    let q = ((Q[0] * rr + Q[1]) * rr + Q[2]) * rr + Q[3];
    let y = 1.0 + 2.0 * (p / (q - p));
    // n is in [−1021, 1024]; 2^(n−1) is a normal number and y · 2^(n−1) · 2
    // reaches the top of the range.
    let scale = f64::from_bits(n_bits.wrapping_add(1022) << 52);
    let e = y * scale * 2.0;
    if big {
        f64::INFINITY
    } else if small {
        0.0
    } else {
        e
    }
}

/// `x ← e^x` over an `f64` slice ([`exp_f64`]), through the widest SIMD copy the
/// CPU runs.
pub fn exp_f64_slice(xs: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { exp_f64_slice_avx2(xs) };
        return;
    }
    for x in xs.iter_mut() {
        *x = exp_f64(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_f64_slice_avx2(xs: &mut [f64]) {
    for x in xs.iter_mut() {
        *x = exp_f64(*x);
    }
}

/// Numerical Recipes' `erfcc` (Press et al., §6.2, a Chebyshev fit):
/// `erfc(z) = t·exp(−z² + P(t))` with `t = 1 / (1 + z/2)`, `z ≥ 0`, fractional error
/// below 1.2e-7 everywhere in exact arithmetic. `P`'s coefficients, constant term
/// first.
const ERFC: [f32; 10] = [
    -1.265_512_23,
    1.000_023_68,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_203_98,
    1.488_515_87,
    -0.822_152_23,
    0.170_872_77,
];
const FRAC_1_SQRT_2PI: f32 = 0.398_942_28;

/// `(Φ(x), x²/2)`: the standard normal CDF from the upper tail `Φ(−|x|) =
/// erfc(|x|/√2) / 2`, which keeps its relative accuracy far out on the left (no
/// `1 + erf` cancellation), and the square the density needs.
#[inline(always)]
fn normal_cdf_parts(x: f32) -> (f32, f32) {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = ERFC[9];
    for c in ERFC[..9].iter().rev() {
        p = p * t + c;
    }
    let h = 0.5 * (x * x);
    let tail = 0.5 * t * exp(p - h);
    (select(x < 0.0, tail, 1.0 - tail), h)
}

/// `Φ(x)`, the standard normal CDF.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    normal_cdf_parts(x).0
}

/// GELU, erf form: `x·Φ(x)` (0 where `Φ(x)` underflows, also at −∞).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let c = normal_cdf(x);
    select(c == 0.0, 0.0, x * c)
}

/// GELU's derivative `Φ(x) + x·φ(x)` (its limits 0 and 1 far out, where `x·φ(x)`
/// underflows).
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    let (c, h) = normal_cdf_parts(x);
    let d = c + x * (FRAC_1_SQRT_2PI * exp(-h));
    select(x.abs() > 20.0, c, d)
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

slice_fn!(
    /// `x ← gelu(x)` over a slice.
    gelu_slice,
    gelu_slice_avx2,
    gelu
);

/// `dx ← dy · gelu′(x)` over slices of one length (GELU's backward pass): `dx`
/// holds `x` on entry.
pub fn gelu_backward_slice(dx: &mut [f32], dy: &[f32]) {
    assert_eq!(dx.len(), dy.len(), "gelu_backward_slice: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { gelu_backward_slice_avx2(dx, dy) };
        return;
    }
    for (x, dy) in dx.iter_mut().zip(dy) {
        *x = dy * gelu_derivative(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_backward_slice_avx2(dx: &mut [f32], dy: &[f32]) {
    for (x, dy) in dx.iter_mut().zip(dy) {
        *x = dy * gelu_derivative(*x);
    }
}

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
    fn exp_f64_is_within_two_ulps_of_libm() {
        // Every 2⁴⁰-th f64 bit pattern of [−708, 709.78] (4,096 a binade, about 8.5
        // million values),
        // against libm's exp (itself within 1 ulp).
        let mut max_rel = 0f64;
        for sign in [1.0f64, -1.0] {
            let mut bits = 0u64;
            loop {
                let x = f64::from_bits(bits) * sign;
                if x.abs() > 709.78 {
                    break;
                }
                if x >= -708.0 {
                    let want = x.exp();
                    let rel = ((exp_f64(x) - want) / want).abs();
                    max_rel = max_rel.max(rel);
                }
                bits += 1 << 40;
            }
        }
        eprintln!("exp_f64: max relative error {max_rel:e}");
        assert!(max_rel < 4.5e-16, "max relative error {max_rel:e}");
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f64(-709.0), 0.0);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(710.0), f64::INFINITY);
        assert!(exp_f64(709.78).is_finite());
        assert!(exp_f64(f64::NAN).is_nan());
        let xs: Vec<f64> = (0..1001).map(|i| (i as f64 - 500.0) * 1.37).collect();
        let mut ys = xs.clone();
        exp_f64_slice(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            assert_eq!(y.to_bits(), exp_f64(*x).to_bits(), "at {x}");
        }
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

    /// Φ(x) = erfc(−x/√2) / 2 in f64.
    fn normal_cdf_f64(x: f64) -> f64 {
        0.5 * candle_core::cpu::erf::erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2)
    }

    #[test]
    fn normal_cdf_and_gelu_keep_their_relative_accuracy_in_the_left_tail() {
        // Measured: 4.0e-6 on [−10, −5] (rounding x²/2 to f32 before the exp: at
        // x = −10 half an ulp of 50 is 1.9e-6), 1.3e-6 on [−5, −3], under 8e-7 on
        // [−3, 10].
        for (lo, hi, bound) in [
            (-10.0, -5.0, 5e-6),
            (-5.0, -3.0, 1.6e-6),
            (-3.0, 10.0, 1e-6),
        ] {
            let (rel, _) = sweep(lo, hi, 61, normal_cdf, normal_cdf_f64);
            eprintln!("normal_cdf on [{lo}, {hi}]: max relative error {rel:e}");
            assert!(rel < bound, "[{lo}, {hi}]: max relative error {rel:e}");
        }
        // GELU away from 0, where x·Φ(x) ≈ x/2 would be subnormal in f32 and lose
        // relative precision whatever computes it.
        for (lo, hi, bound) in [
            (-10.0, -5.0, 5e-6),
            (-5.0, -3.0, 1.6e-6),
            (-3.0, -1e-30, 1e-6),
            (1e-30, 10.0, 1e-6),
        ] {
            let (rel, _) = sweep(lo, hi, 61, gelu, |x| x * normal_cdf_f64(x));
            eprintln!("gelu on [{lo}, {hi}]: max relative error {rel:e}");
            assert!(rel < bound, "gelu [{lo}, {hi}]: max relative error {rel:e}");
        }
    }

    #[test]
    fn gelu_derivative_is_accurate() {
        // The derivative crosses 0 near x = −0.752, so the bound is absolute
        // (the derivative is at most 1.13); measured 2.6e-7.
        let (_, abs) = sweep(-10.0, 10.0, 61, gelu_derivative, |x| {
            normal_cdf_f64(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
        });
        eprintln!("gelu_derivative: max absolute error {abs:e}");
        assert!(abs < 4e-7, "max absolute error {abs:e}");
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
        assert_eq!(normal_cdf(f32::INFINITY), 1.0);
        assert_eq!(normal_cdf(f32::NEG_INFINITY), 0.0);
        assert_eq!(gelu(f32::NEG_INFINITY), 0.0);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu_derivative(f32::NEG_INFINITY), 0.0);
        assert_eq!(gelu_derivative(f32::INFINITY), 1.0);
        assert_eq!(gelu(0.0), 0.0);
        assert!(gelu(f32::NAN).is_nan() && gelu_derivative(f32::NAN).is_nan());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        // The slice functions (SIMD where the CPU has it) give the scalar
        // functions' bits, so results do not depend on the CPU.
        let xs: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.173).collect();
        for (slice_fn, f) in [
            (exp_slice as fn(&mut [f32]), exp as fn(f32) -> f32),
            (sigmoid_slice, sigmoid),
            (tanh_slice, tanh),
            (gelu_slice, gelu),
        ] {
            let mut ys = xs.clone();
            slice_fn(&mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(y.to_bits(), f(*x).to_bits(), "at {x}");
            }
        }
        let dy: Vec<f32> = xs.iter().map(|x| 1.0 - 0.01 * x).collect();
        let mut dx = xs.clone();
        gelu_backward_slice(&mut dx, &dy);
        for ((x, dy), dx) in xs.iter().zip(&dy).zip(&dx) {
            assert_eq!(dx.to_bits(), (dy * gelu_derivative(*x)).to_bits(), "at {x}");
        }
    }
}
