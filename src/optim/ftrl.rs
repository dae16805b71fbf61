//! FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", 2013), per
//! coordinate, with alpha = learning_rate and beta = 1:
//! `sigma = (sqrt(n + g^2) - sqrt(n)) / alpha; z += g - sigma w; n += g^2;`
//! `w = 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)`.
//! The weights are a function of (z, n), so they start at 0 whatever the initializer.

use std::sync::atomic::AtomicU32;

use crate::train::shared::{load, store};

pub const BETA: f32 = 1.0;

#[inline]
pub fn update(w: &[AtomicU32], z: &[AtomicU32], n: &[AtomicU32], grads: &[f32], alpha: f32, l1: f32, l2: f32) {
    for (((wa, za), na), &g) in w.iter().zip(z).zip(n).zip(grads) {
        let wv = load(wa);
        let nv = load(na);
        let n_new = nv + g * g;
        let sigma = (n_new.sqrt() - nv.sqrt()) / alpha;
        let z_new = load(za) + g - sigma * wv;
        store(za, z_new);
        store(na, n_new);
        let w_new = if z_new.abs() <= l1 {
            0.0
        } else {
            -(z_new - z_new.signum() * l1) / ((BETA + n_new.sqrt()) / alpha + l2)
        };
        store(wa, w_new);
    }
}
