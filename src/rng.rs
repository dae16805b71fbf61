//! Seeded randomness. Two generators, both tiny and fully specified so that a seed gives the same
//! numbers on every platform and in every version:
//! - `SplitMix64` (Steele et al. 2014) for streams (shuffles, samplers);
//! - `hash_to_unit`, a counter-based draw (`splitmix64` finalizer of `seed ^ index`), for
//!   initialization that must not depend on the order or the thread that computes it.

#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) that depends only on `(seed, index)`.
#[inline]
pub fn hash_to_unit(seed: u64, index: u64) -> f64 {
    let z = mix64(seed.wrapping_mul(GOLDEN) ^ mix64(index.wrapping_add(GOLDEN)));
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: mix64(seed ^ 0x5EED_5EED_5EED_5EED) }
    }

    /// A generator for sub-stream `stream` of `seed` (one per row, per day, per epoch...).
    pub fn substream(seed: u64, stream: u64) -> Self {
        Self::new(mix64(seed.wrapping_add(GOLDEN)) ^ mix64(stream.wrapping_mul(GOLDEN)))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; the tiny bias is irrelevant here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson(lambda): Knuth's method for small lambda, a rounded normal approximation above 30.
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            let x = lambda + lambda.sqrt() * self.normal();
            return x.round().max(0.0) as u64;
        }
        let limit = (-lambda).exp();
        let mut k = 0u64;
        let mut p = self.uniform();
        while p > limit {
            k += 1;
            p *= self.uniform();
        }
        k
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_unit_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let (x, y) = (a.uniform(), b.uniform());
            assert_eq!(x, y);
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(SplitMix64::substream(1, 2).next_u64(), SplitMix64::substream(1, 3).next_u64());
    }

    #[test]
    fn poisson_mean_is_lambda() {
        let mut r = SplitMix64::new(1);
        for lambda in [3.0, 100.0] {
            let n = 20000;
            let mean = (0..n).map(|_| r.poisson(lambda) as f64).sum::<f64>() / n as f64;
            assert!((mean - lambda).abs() < 0.05 * lambda, "{mean} vs {lambda}");
        }
    }
}
