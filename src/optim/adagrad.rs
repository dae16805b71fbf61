//! Adagrad as TensorFlow defines it: `acc += g^2`, `w -= lr g / sqrt(acc)`, with the accumulator
//! starting at 0.1 (so the first step is bounded without an epsilon).

use std::sync::atomic::AtomicU32;

use crate::train::shared::{load, store};

pub const INITIAL_ACCUMULATOR: f32 = 0.1;

#[inline]
pub fn update(w: &[AtomicU32], acc: &[AtomicU32], grads: &[f32], lr: f32, l2: f32) {
    for ((wa, aa), &g) in w.iter().zip(acc).zip(grads) {
        let wv = load(wa);
        let g = g + l2 * wv;
        let a = load(aa) + g * g;
        store(aa, a);
        store(wa, wv - lr * g / a.sqrt());
    }
}
