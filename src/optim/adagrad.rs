//! Adagrad as TensorFlow defines it: `acc += g^2`, `w -= lr g / sqrt(acc)`, with the accumulator
//! starting at 0.1 (so the first step is bounded without an epsilon).

use super::non_finite_bit;

pub const INITIAL_ACCUMULATOR: f32 = 0.1;

/// Returns whether every updated value is finite.
#[inline]
pub fn update(w: &mut [f32], acc: &mut [f32], grads: &[f32], lr: f32, l2: f32) -> bool {
    let mut bad = 0;
    for ((wv, a), &g) in w.iter_mut().zip(acc.iter_mut()).zip(grads) {
        let g = g + l2 * *wv;
        *a += g * g;
        *wv -= lr * g / a.sqrt();
        bad |= non_finite_bit(*wv) | non_finite_bit(*a);
    }
    bad == 0
}
