//! Lazy Adam with TensorFlow's LazyAdamOptimizer semantics: only touched rows move, their moments
//! decay only when touched, and the bias correction uses the global step t (one per batch):
//! `lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)`, `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
//! `w -= lr_t m / (sqrt(v) + eps)`.

use super::non_finite_bit;

pub const BETA1: f32 = 0.9;
pub const BETA2: f32 = 0.999;
pub const EPSILON: f32 = 1e-8;
// Written out rather than computed as `1.0 - BETA2` in f32, which gives 0.000999987 (0.999 is not
// exact in binary): a 1.3e-5 relative error on every second moment.
const ONE_MINUS_BETA1: f32 = 0.1;
const ONE_MINUS_BETA2: f32 = 0.001;

pub fn corrected_rate(lr: f32, t: u64) -> f32 {
    let t = t.max(1) as f64;
    let b1t = (BETA1 as f64).powf(t);
    let b2t = (BETA2 as f64).powf(t);
    (lr as f64 * (1.0 - b2t).sqrt() / (1.0 - b1t)) as f32
}

/// Returns whether every updated value is finite.
#[inline]
pub fn update(w: &mut [f32], m: &mut [f32], v: &mut [f32], grads: &[f32], lr_t: f32, l2: f32) -> bool {
    let mut bad = 0;
    for (((wv, mv), vv), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(grads) {
        let g = g + l2 * *wv;
        *mv = BETA1 * *mv + ONE_MINUS_BETA1 * g;
        *vv = BETA2 * *vv + ONE_MINUS_BETA2 * g * g;
        *wv -= lr_t * *mv / (vv.sqrt() + EPSILON);
        bad |= non_finite_bit(*wv) | non_finite_bit(*mv) | non_finite_bit(*vv);
    }
    bad == 0
}
