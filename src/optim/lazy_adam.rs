//! Lazy Adam with TensorFlow's LazyAdamOptimizer semantics: only touched rows move, their moments
//! decay only when touched, and the bias correction uses the global step t (one per batch):
//! `lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)`, `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
//! `w -= lr_t m / (sqrt(v) + eps)`.

use std::sync::atomic::AtomicU32;

use crate::train::shared::{load, store};

pub const BETA1: f32 = 0.9;
pub const BETA2: f32 = 0.999;
pub const EPSILON: f32 = 1e-8;

pub fn corrected_rate(lr: f32, t: u64) -> f32 {
    let t = t.max(1) as f64;
    let b1t = (BETA1 as f64).powf(t);
    let b2t = (BETA2 as f64).powf(t);
    (lr as f64 * (1.0 - b2t).sqrt() / (1.0 - b1t)) as f32
}

#[inline]
pub fn update(w: &[AtomicU32], m: &[AtomicU32], v: &[AtomicU32], grads: &[f32], lr_t: f32, l2: f32) {
    for (((wa, ma), va), &g) in w.iter().zip(m).zip(v).zip(grads) {
        let wv = load(wa);
        let g = g + l2 * wv;
        let mv = BETA1 * load(ma) + (1.0 - BETA1) * g;
        let vv = BETA2 * load(va) + (1.0 - BETA2) * g * g;
        store(ma, mv);
        store(va, vv);
        store(wa, wv - lr_t * mv / (vv.sqrt() + EPSILON));
    }
}
