//! `make_ctr`: seeded "Twitter-like" click data (BRIEF section 5).
//!
//! - Feature ids: rank r is log-uniform on [0, n_features) (P(r) ~ 1/(r+1), so a few hot
//!   features appear in most rows and there is a long tail), then scattered over the id space by
//!   a fixed bijection so hot ids are not all small.
//! - Values: 70% of features are binary (1.0); 30% are continuous, `v = scale_f * u` with a
//!   per-feature scale log-uniform in [1e-2, 1e6] and u uniform in [0.01, 1].
//! - Labels: Bernoulli(sigmoid(bias + sum_k w_f x_k + sum_k c_f (2 x_k - 1)^2)) with `x = v / scale_f`
//!   (the normalized value) and per-feature weights from the seed; the quadratic term is something
//!   only a non-linear model can fit. The bias is solved on day 0 so the CTR is `ctr`.
//! - Days: weights take a random-walk step of size `drift` per day (`w_d = w_{d-1} sqrt(1-drift^2)
//!   + drift N(0, sigma)`), so a model trained on day 0 slowly goes stale.

use rayon::prelude::*;

use super::csr::OwnedCsr;
use crate::error::Result;
use crate::invalid;
use crate::rng::{hash_to_unit, mix64, SplitMix64};

#[derive(Clone, Debug)]
pub struct CtrSpec {
    pub n_rows: usize,
    pub n_features: usize,
    pub nnz: f64,
    pub days: usize,
    pub ctr: f64,
    pub drift: f64,
    pub seed: u64,
}

impl Default for CtrSpec {
    fn default() -> Self {
        Self { n_rows: 10_000, n_features: 1 << 20, nnz: 100.0, days: 1, ctr: 0.15, drift: 0.3, seed: 0 }
    }
}

#[derive(Clone, Debug)]
pub struct CtrDay {
    pub matrix: OwnedCsr,
    pub labels: Vec<f32>,
}

const CONTINUOUS_SHARE: f64 = 0.3;
const WEIGHT_SIGMA: f64 = 0.35;
const QUADRATIC_SIGMA: f64 = 0.6;

struct Planted<'a> {
    spec: &'a CtrSpec,
    multiplier: u64,
    offset: u64,
}

impl<'a> Planted<'a> {
    fn new(spec: &'a CtrSpec) -> Self {
        let n = spec.n_features as u64;
        let mut multiplier = (mix64(spec.seed ^ 0xA11CE) % n.max(2)) | 1;
        while gcd(multiplier, n) != 1 {
            multiplier += 2;
        }
        Self { spec, multiplier: multiplier % n.max(1), offset: mix64(spec.seed ^ 0x0FF5E7) % n }
    }

    fn id_of_rank(&self, rank: u64) -> i64 {
        let n = self.spec.n_features as u64;
        if n == 1 {
            return 0;
        }
        ((rank as u128 * self.multiplier as u128 + self.offset as u128) % n as u128) as i64
    }

    fn draw_id(&self, rng: &mut SplitMix64) -> i64 {
        let n = self.spec.n_features as f64;
        let rank = ((rng.uniform() * (n + 1.0).ln()).exp() - 1.0).floor().clamp(0.0, n - 1.0);
        self.id_of_rank(rank as u64)
    }

    fn key(&self, salt: u64) -> u64 {
        mix64(self.spec.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt)
    }

    fn normal(&self, salt: u64, id: i64) -> f64 {
        let u1 = 1.0 - hash_to_unit(self.key(salt), id as u64);
        let u2 = hash_to_unit(self.key(salt ^ 0xB0B), id as u64);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `Some(scale)` for a continuous feature, `None` for a binary one.
    fn scale(&self, id: i64) -> Option<f64> {
        if hash_to_unit(self.key(1), id as u64) < CONTINUOUS_SHARE {
            Some(10f64.powf(-2.0 + 8.0 * hash_to_unit(self.key(2), id as u64)))
        } else {
            None
        }
    }

    fn weight(&self, id: i64, day: usize) -> f64 {
        let keep = (1.0 - self.spec.drift * self.spec.drift).max(0.0).sqrt();
        let mut w = WEIGHT_SIGMA * self.normal(3, id);
        for d in 1..=day as u64 {
            w = w * keep + self.spec.drift * WEIGHT_SIGMA * self.normal(100 + d, id);
        }
        w
    }

    /// One row: ids, values and the planted logit without the global bias.
    fn row(&self, day: usize, row: usize, ids: &mut Vec<i64>, values: &mut Vec<f32>) -> f64 {
        let mut rng = SplitMix64::substream(self.key(day as u64 + 7), row as u64);
        let count = rng.poisson(self.spec.nnz);
        let mut logit = 0.0;
        for _ in 0..count {
            let id = self.draw_id(&mut rng);
            let (value, x) = match self.scale(id) {
                Some(scale) => {
                    let u = 0.01 + 0.99 * rng.uniform();
                    ((scale * u) as f32, u)
                }
                None => (1.0, 1.0),
            };
            logit += self.weight(id, day) * x;
            if self.scale(id).is_some() {
                logit += QUADRATIC_SIGMA * self.normal(4, id) * (2.0 * x - 1.0).powi(2);
            }
            ids.push(id);
            values.push(value);
        }
        logit
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Bias b with mean(sigmoid(logit + b)) = ctr, by bisection.
fn solve_bias(logits: &[f64], ctr: f64) -> f64 {
    let (mut lo, mut hi) = (-30.0, 30.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let mean = logits.iter().map(|&z| sigmoid(z + mid)).sum::<f64>() / logits.len().max(1) as f64;
        if mean > ctr {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

struct RawDay {
    matrix: OwnedCsr,
    logits: Vec<f64>,
}

fn generate_day(planted: &Planted, day: usize) -> RawDay {
    const CHUNK: usize = 2048;
    let spec = planted.spec;
    let chunks: Vec<(Vec<i64>, Vec<i64>, Vec<f32>, Vec<f64>)> = (0..spec.n_rows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let rows = c * CHUNK..((c + 1) * CHUNK).min(spec.n_rows);
            let mut lens = Vec::with_capacity(rows.len());
            let mut ids = Vec::with_capacity(rows.len() * (spec.nnz as usize + 8));
            let mut values = Vec::with_capacity(ids.capacity());
            let mut logits = Vec::with_capacity(rows.len());
            for row in rows {
                let before = ids.len();
                logits.push(planted.row(day, row, &mut ids, &mut values));
                lens.push((ids.len() - before) as i64);
            }
            (lens, ids, values, logits)
        })
        .collect();
    let nnz: usize = chunks.iter().map(|c| c.1.len()).sum();
    let mut matrix = OwnedCsr {
        indptr: Vec::with_capacity(spec.n_rows + 1),
        indices: Vec::with_capacity(nnz),
        values: Vec::with_capacity(nnz),
        n_features: spec.n_features,
    };
    matrix.indptr.push(0);
    let mut logits = Vec::with_capacity(spec.n_rows);
    for (lens, ids, values, chunk_logits) in chunks {
        for len in lens {
            let last = *matrix.indptr.last().unwrap();
            matrix.indptr.push(last + len);
        }
        matrix.indices.extend_from_slice(&ids);
        matrix.values.extend_from_slice(&values);
        logits.extend_from_slice(&chunk_logits);
    }
    RawDay { matrix, logits }
}

pub fn make_ctr(spec: &CtrSpec) -> Result<Vec<CtrDay>> {
    if spec.n_features == 0 {
        return Err(invalid!("n_features must be at least 1"));
    }
    if spec.days == 0 {
        return Err(invalid!("days must be at least 1"));
    }
    if !(spec.nnz.is_finite() && spec.nnz >= 0.0) {
        return Err(invalid!("nnz must be a finite number >= 0, got {}", spec.nnz));
    }
    if !(spec.ctr > 0.0 && spec.ctr < 1.0) {
        return Err(invalid!("ctr must be in (0, 1), got {}", spec.ctr));
    }
    if !(0.0..=1.0).contains(&spec.drift) {
        return Err(invalid!("drift must be in [0, 1], got {}", spec.drift));
    }
    let planted = Planted::new(spec);
    let mut bias = None;
    let mut days = Vec::with_capacity(spec.days);
    for day in 0..spec.days {
        let raw = generate_day(&planted, day);
        let b = *bias.get_or_insert_with(|| solve_bias(&raw.logits, spec.ctr));
        let mut rng = SplitMix64::substream(planted.key(0x1AB), day as u64);
        let labels = raw.logits.iter().map(|&z| (rng.uniform() < sigmoid(z + b)) as u8 as f32).collect();
        days.push(CtrDay { matrix: raw.matrix, labels });
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_ctr_and_determinism() {
        let spec = CtrSpec { n_rows: 4000, n_features: 1 << 16, seed: 3, ..Default::default() };
        let a = make_ctr(&spec).unwrap();
        let b = make_ctr(&spec).unwrap();
        assert_eq!(a[0].matrix, b[0].matrix);
        assert_eq!(a[0].labels, b[0].labels);
        let m = &a[0].matrix;
        m.view().unwrap();
        let mean_nnz = m.indices.len() as f64 / m.n_rows() as f64;
        assert!((mean_nnz - 100.0).abs() < 3.0, "{mean_nnz}");
        let ctr = a[0].labels.iter().sum::<f32>() / 4000.0;
        assert!((0.1..0.2).contains(&ctr), "{ctr}");
        let big = m.values.iter().cloned().fold(0.0f32, f32::max);
        assert!(big > 1e4, "heavy tail expected, max value {big}");
    }

    #[test]
    fn days_drift() {
        let spec = CtrSpec { n_rows: 500, n_features: 1 << 12, days: 3, seed: 1, ..Default::default() };
        let days = make_ctr(&spec).unwrap();
        assert_eq!(days.len(), 3);
        assert_ne!(days[0].matrix.indices, days[1].matrix.indices);
    }
}
