//! Learning-rate schedules. COT's two optimizers follow the same schedule.

use serde::{Deserialize, Serialize};

/// How the learning rate moves over training. In TOML:
/// `schedule = { kind = "linear", warmup_steps = 100 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The optimizer's learning rate throughout. The default.
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then linear decay to 0 at the
    /// last step (BERT fine-tuning's schedule).
    Linear {
        /// Steps of warm-up. Default 0.
        #[serde(default)]
        warmup_steps: u64,
    },
    /// Linear warm-up, then half a cosine from the peak down to
    /// `min_ratio × peak` at the last step.
    Cosine {
        /// Steps of warm-up. Default 0.
        #[serde(default)]
        warmup_steps: u64,
        /// Final learning rate as a fraction of the peak. Default 0.
        #[serde(default)]
        min_ratio: f64,
    },
}

impl Schedule {
    /// The learning rate for update number `step` (0-based) of `total` updates.
    pub fn lr(&self, peak: f64, step: u64, total: u64) -> f64 {
        let warm =
            |w: u64| -> Option<f64> { (step < w).then(|| peak * (step + 1) as f64 / w as f64) };
        match *self {
            Schedule::Constant => peak,
            Schedule::Linear { warmup_steps } => warm(warmup_steps).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup_steps).max(1) as f64;
                let done = (step - warmup_steps) as f64;
                peak * (1.0 - done / span).max(0.0)
            }),
            Schedule::Cosine {
                warmup_steps,
                min_ratio,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                let floor = peak * min_ratio;
                floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule::Linear { warmup_steps: 4 };
        assert_eq!(s.lr(1.0, 0, 14), 0.25);
        assert_eq!(s.lr(1.0, 3, 14), 1.0);
        assert_eq!(s.lr(1.0, 4, 14), 1.0);
        assert!((s.lr(1.0, 9, 14) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(1.0, 14, 14), 0.0);
        let c = Schedule::Cosine {
            warmup_steps: 0,
            min_ratio: 0.1,
        };
        assert_eq!(c.lr(2.0, 0, 10), 2.0);
        assert!((c.lr(2.0, 5, 10) - 1.1).abs() < 1e-12);
        assert!((c.lr(2.0, 10, 10) - 0.2).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 99, 10), 0.3);
    }
}
