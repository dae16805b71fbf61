//! Plain SGD: `w -= lr * (g + l2 w)`.

use std::sync::atomic::AtomicU32;

use crate::train::shared::{load, store};

#[inline]
pub fn update(w: &[AtomicU32], grads: &[f32], lr: f32, l2: f32) {
    for (wa, &g) in w.iter().zip(grads) {
        let wv = load(wa);
        store(wa, wv - lr * (g + l2 * wv));
    }
}
