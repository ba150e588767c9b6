//! Significance of a difference between two objectives across seeds: Welch's
//! unequal-variance t-test, with the 95% confidence interval of the difference
//! of the means. Needs only each side's mean, sample std and count, so it works
//! on the [`MeanStd`] that `compare` already keeps.
//!
//! The Student-t distribution is computed through the regularized incomplete
//! beta function (continued fraction, Numerical Recipes §6.4); the golden values
//! in the tests are SciPy's (`scipy.stats.ttest_ind(equal_var=False)`,
//! `scipy.stats.t.ppf`).

use serde::{Deserialize, Serialize};

use super::summary::MeanStd;

/// `a − b` with its 95% interval and Welch's two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Welch {
    /// Difference of the means, `a − b`.
    pub diff: f64,
    /// Lower end of the 95% confidence interval of the difference.
    pub ci_low: f64,
    /// Upper end of the 95% confidence interval of the difference.
    pub ci_high: f64,
    /// Two-sided p-value of "the means are equal".
    pub p: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
}

impl Welch {
    /// The test of `a` against `b`; `None` unless both have at least two values
    /// (a std). Both stds 0: the interval is the point, and p is 1 for equal
    /// means, 0 otherwise.
    pub fn test(a: &MeanStd, b: &MeanStd) -> Option<Welch> {
        let (sa, sb) = (a.std?, b.std?);
        let (va, vb) = (sa * sa / a.n as f64, sb * sb / b.n as f64);
        let diff = a.mean - b.mean;
        let se2 = va + vb;
        if se2 == 0.0 {
            let p = if diff == 0.0 { 1.0 } else { 0.0 };
            return Some(Welch {
                diff,
                ci_low: diff,
                ci_high: diff,
                p,
                df: (a.n + b.n - 2) as f64,
            });
        }
        let df = se2 * se2 / (va * va / (a.n as f64 - 1.0) + vb * vb / (b.n as f64 - 1.0));
        let se = se2.sqrt();
        let t = diff / se;
        let p = two_sided_p(t, df);
        let q = t_quantile(0.975, df);
        Some(Welch {
            diff,
            ci_low: diff - q * se,
            ci_high: diff + q * se,
            p,
            df,
        })
    }
}

/// `P(|T| ≥ |t|)` for Student's t with `df` degrees of freedom.
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() {
        return f64::NAN;
    }
    let x = df / (df + t * t);
    incomplete_beta(df / 2.0, 0.5, x).clamp(0.0, 1.0)
}

/// The `prob` quantile of Student's t with `df` degrees of freedom (`prob` in
/// (0, 1)), by bisection on the distribution function.
pub fn t_quantile(prob: f64, df: f64) -> f64 {
    let cdf = |t: f64| {
        let tail = 0.5 * two_sided_p(t, df);
        if t >= 0.0 {
            1.0 - tail
        } else {
            tail
        }
    };
    let (mut lo, mut hi) = (-1.0, 1.0);
    while cdf(lo) > prob {
        lo *= 2.0;
    }
    while cdf(hi) < prob {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < prob {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-14 * hi.abs().max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The regularized incomplete beta function `I_x(a, b)`.
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use
    // the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// Lentz's evaluation of the incomplete beta continued fraction.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[f64]) -> MeanStd {
        MeanStd::of(values).unwrap()
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        // math.lgamma
        for (x, want) in [
            (0.5, 0.572_364_942_924_700_1),
            (1.0, 0.0),
            (2.5, 0.284_682_870_472_919_2),
            (10.0, 12.801_827_480_081_469),
        ] {
            assert!(
                (ln_gamma(x) - want).abs() < 1e-13,
                "{x}: {} vs {want}",
                ln_gamma(x)
            );
        }
    }

    #[test]
    fn t_distribution_matches_scipy() {
        // scipy.stats.t.sf(t, df) * 2 and scipy.stats.t.ppf(0.975, df)
        for (t, df, p) in [
            (2.0, 4.0, 0.116_116_523_516_815_56),
            (0.5, 3.3, 0.648_535_076_399_558_4),
            (5.0, 10.0, 0.000_537_333_602_756_452_7),
            (1.0, 1.0, 0.5),
        ] {
            let got = two_sided_p(t, df);
            assert!(
                (got - p).abs() < 1e-9 * p.max(1e-3),
                "t {t} df {df}: {got} vs {p}"
            );
        }
        for (df, q) in [
            (1.0, 12.706_204_736_174_694),
            (4.0, 2.776_445_105_197_793_4),
            (7.5, 2.333_039_626_864_974),
            (1e6, 1.959_966_356_814_107),
        ] {
            let got = t_quantile(0.975, df);
            assert!((got - q).abs() < 1e-8 * q, "df {df}: {got} vs {q}");
        }
    }

    #[test]
    fn welch_matches_scipy() {
        // a = [0.41, 0.40, 0.42, 0.39, 0.405]; b = [0.38, 0.37, 0.395, 0.36, 0.372]
        // r = scipy.stats.ttest_ind(a, b, equal_var=False)  (SciPy 1.17.1)
        // r.statistic 3.84837715944336, r.pvalue 0.005113598442033365, r.df 7.812700847633933
        // r.confidence_interval(0.95): (0.0117889573792797, 0.04741104262072055)
        let a = ms(&[0.41, 0.40, 0.42, 0.39, 0.405]);
        let b = ms(&[0.38, 0.37, 0.395, 0.36, 0.372]);
        let w = Welch::test(&a, &b).unwrap();
        assert!((w.diff - 0.0296).abs() < 1e-12);
        assert!((w.df - 7.812_700_847_633_933).abs() < 1e-9, "{}", w.df);
        assert!((w.p - 0.005_113_598_442_033_365).abs() < 1e-10, "{}", w.p);
        assert!(
            (w.ci_low - 0.011_788_957_379_279_7).abs() < 1e-10,
            "{}",
            w.ci_low
        );
        assert!(
            (w.ci_high - 0.047_411_042_620_720_55).abs() < 1e-10,
            "{}",
            w.ci_high
        );
        // Symmetric in sign.
        let r = Welch::test(&b, &a).unwrap();
        assert!((r.p - w.p).abs() < 1e-15 && (r.diff + w.diff).abs() < 1e-15);
        // One seed: nothing to test.
        assert!(Welch::test(&ms(&[0.4]), &b).is_none());
        // No spread at all.
        let z = Welch::test(&ms(&[0.4, 0.4]), &ms(&[0.4, 0.4])).unwrap();
        assert_eq!((z.p, z.ci_low, z.ci_high), (1.0, 0.0, 0.0));
    }
}
