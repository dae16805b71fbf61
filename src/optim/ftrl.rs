//! FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", 2013), per
//! coordinate, with alpha = learning_rate and beta = 1:
//! `sigma = (sqrt(n + g^2) - sqrt(n)) / alpha; z += g - sigma w; n += g^2;`
//! `w = 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)`.
//! The weights are a function of (z, n), so they start at 0 whatever the initializer.

use super::non_finite_bit;

pub const BETA: f32 = 1.0;

#[inline]
pub fn update(w: &mut [f32], z: &mut [f32], n: &mut [f32], grads: &[f32], alpha: f32, l1: f32, l2: f32) -> bool {
    let mut bad = 0;
    for (((wv, zv), nv), &g) in w.iter_mut().zip(z.iter_mut()).zip(n.iter_mut()).zip(grads) {
        let n_new = *nv + g * g;
        // sqrt(n + g^2) - sqrt(n), written without the subtraction that cancels in f32 when
        // g^2 << n (a late, small gradient): g^2 / (sqrt(n + g^2) + sqrt(n)).
        let root_sum = n_new.sqrt() + nv.sqrt();
        let sigma = if root_sum > 0.0 { g * g / root_sum / alpha } else { 0.0 };
        *zv += g - sigma * *wv;
        *nv = n_new;
        *wv = if zv.abs() <= l1 { 0.0 } else { -(*zv - zv.signum() * l1) / ((BETA + n_new.sqrt()) / alpha + l2) };
        bad |= non_finite_bit(*wv) | non_finite_bit(*zv) | non_finite_bit(*nv);
    }
    bad == 0
}
