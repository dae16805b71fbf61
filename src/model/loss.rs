//! Losses on the final output z: sigmoid + binary cross-entropy for classification, squared
//! error for regression. Both are sample-weighted and averaged over the batch:
//! `L = (1/B) sum_b s_b l_b`.

use crate::data::Task;

/// log(1 + e^z) without overflow.
#[inline]
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[inline]
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Writes dL/dz into `d_logits` and returns the summed weighted loss `sum_b s_b l_b` (not
/// divided by B, so callers can also sum over batches).
pub fn loss_and_grad(task: Task, logits: &[f32], targets: impl Iterator<Item = (f32, f32)>, inv_batch: f32, d_logits: &mut [f32]) -> f64 {
    let mut total = 0.0f64;
    for ((&z, (t, s)), d) in logits.iter().zip(targets).zip(d_logits.iter_mut()) {
        match task {
            Task::Binary => {
                total += s as f64 * (softplus(z as f64) - t as f64 * z as f64);
                *d = s * (sigmoid(z) - t) * inv_batch;
            }
            Task::Regression => {
                let r = z - t;
                total += s as f64 * (r as f64) * (r as f64);
                *d = 2.0 * s * r * inv_batch;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_gradient_matches_finite_difference() {
        for &(z, t) in &[(0.3f32, 1.0f32), (-2.0, 0.0), (8.0, 0.0), (-30.0, 1.0)] {
            let mut d = [0.0];
            let l = |z: f32| loss_and_grad(Task::Binary, &[z], [(t, 1.0)].into_iter(), 1.0, &mut [0.0]);
            loss_and_grad(Task::Binary, &[z], [(t, 1.0)].into_iter(), 1.0, &mut d);
            let h = 1e-3;
            let fd = (l(z + h) - l(z - h)) / (2.0 * h as f64);
            assert!((fd - d[0] as f64).abs() < 1e-3, "z={z}: {fd} vs {}", d[0]);
        }
        assert!(softplus(1000.0).is_finite() && softplus(-1000.0) >= 0.0);
    }
}
