//! Plain SGD: `w -= lr * (g + l2 w)`.

use super::non_finite_bit;

/// Returns whether every updated value is finite.
#[inline]
pub fn update(w: &mut [f32], grads: &[f32], lr: f32, l2: f32) -> bool {
    let mut bad = 0;
    for (wv, &g) in w.iter_mut().zip(grads) {
        *wv -= lr * (g + l2 * *wv);
        bad |= non_finite_bit(*wv);
    }
    bad == 0
}
