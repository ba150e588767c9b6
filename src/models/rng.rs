//! A small seeded PRNG for weight init and dropout masks.
//!
//! candle's CPU RNG cannot be seeded, so every random number a model draws comes from
//! here, on the host: two runs with the same seed build the same weights and draw the
//! same dropout masks on any device. The whole state is one `u64`, so a checkpoint can
//! store it and a resumed run continues the exact stream.

/// SplitMix64 (Steele, Lea & Flood 2014; the seeding generator of xoshiro).
///
/// Passes BigCrush, has period 2^64, and one 64-bit word of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`. Every seed, 0 included, is fine.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The whole state: `SplitMix64::new(g.state())` continues `g`'s stream exactly.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal by Box–Muller (one value per call; the twin is dropped so the
    /// state stays a single word).
    pub fn normal(&mut self) -> f64 {
        // 1 - u lies in (0, 1], so the log is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A generator for a sub-stream, derived from this one's next output: lets each
    /// parameter or layer get its own stream without sharing mutable state.
    pub fn fork(&mut self) -> SplitMix64 {
        SplitMix64::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64_outputs() {
        // Reference values of SplitMix64 seeded with 1234567, from Vigna's splitmix64.c
        // (the C reference at prng.di.unimi.it), first five outputs.
        let mut g = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| g.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = SplitMix64::new(7);
        for _ in 0..10 {
            a.next_u64();
        }
        let mut b = SplitMix64::new(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut g = SplitMix64::new(42);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| g.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }
}
