//! Isotonic calibration of predicted probabilities (twml's `IsotonicCalibrator`): fit a
//! non-decreasing map from a model's predictions to observed labels on held-out data, apply it at
//! predict time.
//!
//! Fit: points with weight 0 are dropped; points with equal predictions are merged (weighted mean
//! label, summed weight); weighted pool-adjacent-violators on the points sorted by prediction
//! gives blocks of constant fitted value (adjacent blocks whose means are out of order, or equal,
//! are pooled), the weighted least-squares non-decreasing fit. Apply: linear interpolation
//! between the thresholds, which are the first and last prediction of every block with the
//! block's value, clamped to the end values outside `[first threshold, last threshold]`.
//! Interpolating between block ends rather than block centers reproduces the fitted value at
//! every training point exactly (it is scikit-learn's `IsotonicRegression(out_of_bounds="clip")`),
//! while still ranking predictions inside the gaps between blocks.

use crate::error::Result;
use crate::invalid;

#[derive(Clone, Debug, PartialEq)]
pub struct Isotonic {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Isotonic {
    /// `x`: predictions, `y`: labels (any finite targets), `w`: optional weights >= 0.
    pub fn fit(x: &[f64], y: &[f64], w: Option<&[f64]>) -> Result<Self> {
        if x.len() != y.len() {
            return Err(invalid!("{} predictions but {} labels", x.len(), y.len()));
        }
        if let Some(w) = w {
            if w.len() != x.len() {
                return Err(invalid!("{} predictions but {} sample weights", x.len(), w.len()));
            }
        }
        let mut points = Vec::with_capacity(x.len());
        for i in 0..x.len() {
            let wi = w.map_or(1.0, |w| w[i]);
            if !x[i].is_finite() {
                return Err(invalid!("prediction of row {i} is {}: predictions must be finite", x[i]));
            }
            if !y[i].is_finite() {
                return Err(invalid!("label of row {i} is {}: labels must be finite", y[i]));
            }
            if !wi.is_finite() || wi < 0.0 {
                return Err(invalid!("sample_weight of row {i} is {wi}: weights must be finite and >= 0"));
            }
            if wi > 0.0 {
                points.push((x[i], y[i], wi));
            }
        }
        if points.is_empty() {
            return Err(invalid!("no prediction with a positive weight: nothing to calibrate on"));
        }
        points.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));

        // (x, sum of w*y, sum of w) per distinct prediction
        let mut unique: Vec<(f64, f64, f64)> = Vec::new();
        for &(xi, yi, wi) in &points {
            match unique.last_mut() {
                Some(last) if last.0 == xi => {
                    last.1 += wi * yi;
                    last.2 += wi;
                }
                _ => unique.push((xi, wi * yi, wi)),
            }
        }

        // Blocks on a stack: (sum w*y, sum w, first unique index, last unique index).
        let mut blocks: Vec<(f64, f64, usize, usize)> = Vec::with_capacity(unique.len());
        for (i, &(_, wy, w)) in unique.iter().enumerate() {
            blocks.push((wy, w, i, i));
            while blocks.len() >= 2 {
                let b = blocks[blocks.len() - 1];
                let a = blocks[blocks.len() - 2];
                if a.0 / a.1 < b.0 / b.1 {
                    break;
                }
                blocks.pop();
                *blocks.last_mut().unwrap() = (a.0 + b.0, a.1 + b.1, a.2, b.3);
            }
        }
        let mut tx = Vec::with_capacity(2 * blocks.len());
        let mut ty = Vec::with_capacity(2 * blocks.len());
        for &(wy, w, first, last) in &blocks {
            let value = wy / w;
            tx.push(unique[first].0);
            ty.push(value);
            if last != first {
                tx.push(unique[last].0);
                ty.push(value);
            }
        }
        Ok(Self { x: tx, y: ty })
    }

    /// Rebuilds a fitted calibrator from its thresholds (x strictly increasing, y non-decreasing).
    pub fn from_thresholds(x: Vec<f64>, y: Vec<f64>) -> Result<Self> {
        if x.is_empty() || x.len() != y.len() {
            return Err(invalid!("isotonic thresholds need as many x as y values, at least one (got {} and {})", x.len(), y.len()));
        }
        if x.iter().chain(&y).any(|v| !v.is_finite()) {
            return Err(invalid!("isotonic thresholds must be finite"));
        }
        if x.windows(2).any(|p| p[1] <= p[0]) {
            return Err(invalid!("isotonic threshold x values must be strictly increasing"));
        }
        if y.windows(2).any(|p| p[1] < p[0]) {
            return Err(invalid!("isotonic threshold y values must be non-decreasing"));
        }
        Ok(Self { x, y })
    }

    pub fn thresholds(&self) -> (&[f64], &[f64]) {
        (&self.x, &self.y)
    }

    #[inline]
    pub fn apply(&self, v: f64) -> f64 {
        let n = self.x.len();
        if v <= self.x[0] {
            return self.y[0];
        }
        if v >= self.x[n - 1] {
            return self.y[n - 1];
        }
        let j = self.x.partition_point(|&t| t <= v) - 1;
        let slope = (self.y[j + 1] - self.y[j]) / (self.x[j + 1] - self.x[j]);
        self.y[j] + slope * (v - self.x[j])
    }

    pub fn predict(&self, x: &[f64], out: &mut [f64]) -> Result<()> {
        if out.len() != x.len() {
            return Err(invalid!("output has {} entries for {} predictions", out.len(), x.len()));
        }
        for (i, (&v, o)) in x.iter().zip(out.iter_mut()).enumerate() {
            if v.is_nan() {
                return Err(invalid!("prediction of row {i} is NaN"));
            }
            *o = self.apply(v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_violators_and_interpolates_between_blocks() {
        // 0.1 -> 0, 0.2 -> 1, 0.3 -> 0 violate: pooled to 1/2 over [0.2, 0.3]; 0.4 -> 1.
        let iso = Isotonic::fit(&[0.3, 0.1, 0.2, 0.4], &[0.0, 0.0, 1.0, 1.0], None).unwrap();
        assert_eq!(iso.thresholds(), (&[0.1, 0.2, 0.3, 0.4][..], &[0.0, 0.5, 0.5, 1.0][..]));
        let mut out = [0.0; 6];
        iso.predict(&[-5.0, 0.1, 0.15, 0.25, 0.35, 9.0], &mut out).unwrap();
        let expect = [0.0, 0.0, 0.25, 0.5, 0.75, 1.0];
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{out:?}");
        }
    }

    #[test]
    fn weights_ties_and_bad_input() {
        // ties at 0.5 merge to the weighted mean (3*1 + 1*0) / 4
        let iso = Isotonic::fit(&[0.5, 0.5, 0.9], &[1.0, 0.0, 1.0], Some(&[3.0, 1.0, 0.0])).unwrap();
        assert_eq!(iso.thresholds(), (&[0.5][..], &[0.75][..]));
        assert!(Isotonic::fit(&[f64::NAN], &[1.0], None).unwrap_err().to_string().contains("row 0"));
        assert!(Isotonic::fit(&[0.1], &[1.0], Some(&[0.0])).is_err());
        assert!(Isotonic::fit(&[0.1, 0.2], &[1.0], None).is_err());
        assert!(Isotonic::from_thresholds(vec![0.2, 0.1], vec![0.0, 1.0]).is_err());
        let mut out = [0.0];
        assert!(iso.predict(&[f64::NAN], &mut out).is_err());
    }
}
