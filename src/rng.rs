//! Our own seeded random number generator (candle's CPU RNG cannot be seeded),
//! shared by weight init and dropout (`models`) and shuffling (`data`).
//!
//! SplitMix64 (Steele, Lea, Flood: *Fast splittable pseudorandom number
//! generators*, OOPSLA 2014; the constants are those of Vigna's public-domain
//! reference `splitmix64.c`): a 64-bit state advanced by a fixed odd constant
//! and passed through a bijective mixer. It passes BigCrush, has period 2^64,
//! is a few lines long and its whole state is one `u64`, which makes it trivial
//! to save in a checkpoint and to re-derive per epoch. It is not
//! cryptographically secure, and its streams are fixed forever: changing this
//! file changes every shuffle, so it carries golden tests.

use serde::{Deserialize, Serialize};

/// The SplitMix64 generator. `Clone` + `Serialize`: the state is the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    /// The full state.
    pub state: u64,
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl SplitMix64 {
    /// A generator whose state is `seed` (every seed is fine, including 0).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one of many independent streams of a seed (e.g. one per
    /// epoch): the stream number is mixed into the seed, not added, so nearby
    /// `(seed, stream)` pairs give unrelated sequences.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mixer = SplitMix64::new(seed ^ mix(stream.wrapping_add(GAMMA)));
        Self::new(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (Lemire's multiply-and-reject, no modulo
    /// bias). Panics if `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        Self::unit_f64(self.next_u64())
    }

    /// The whole state: `SplitMix64::new(g.state())` continues `g`'s stream exactly.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The value the `i`-th next call to [`SplitMix64::next_u64`] would return
    /// (`i = 0` is the next one), without advancing: the state moves by a constant
    /// per draw, so any draw can be computed on its own (and draws split over
    /// threads give the sequential stream's values).
    pub fn peek_u64(&self, i: u64) -> u64 {
        mix(self
            .state
            .wrapping_add(GAMMA.wrapping_mul(i.wrapping_add(1))))
    }

    /// Advances the generator by `n` draws at once, as `n` calls to
    /// [`SplitMix64::next_u64`] would.
    pub fn skip(&mut self, n: u64) {
        self.state = self.state.wrapping_add(GAMMA.wrapping_mul(n));
    }

    /// The float [`SplitMix64::next_f64`] makes of 64 random bits.
    pub fn unit_f64(bits: u64) -> f64 {
        (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
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

    /// Shuffles `items` in place (Fisher–Yates, from the back).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64() {
        // Vigna's splitmix64.c, transcribed to Python:
        //   M = (1 << 64) - 1; x = 1234567
        //   for _ in range(5):
        //       x = (x + 0x9e3779b97f4a7c15) & M; z = x
        //       z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
        //       z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
        //       print(z ^ (z >> 31))
        let mut rng = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
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
    fn peek_and_skip_follow_the_sequential_stream() {
        let start = SplitMix64::new(0xdead_beef);
        let mut seq = start;
        for i in 0..1000 {
            assert_eq!(start.peek_u64(i), seq.next_u64(), "draw {i}");
        }
        let mut jumped = start;
        jumped.skip(1000);
        assert_eq!(jumped, seq);
        assert_eq!(jumped.next_f64(), seq.next_f64());
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
        let f = rng.next_f64();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(42).shuffle(&mut a);
        SplitMix64::new(42).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..100).collect();
        SplitMix64::new(43).shuffle(&mut c);
        assert_ne!(a, c);
        assert_ne!(SplitMix64::stream(1, 0), SplitMix64::stream(1, 1));
        assert_eq!(SplitMix64::stream(1, 5), SplitMix64::stream(1, 5));
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
