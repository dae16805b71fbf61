//! Plain SGD: `w -= lr * (g + l2 w)`.

#[inline]
pub fn update(w: &mut [f32], grads: &[f32], lr: f32, l2: f32) {
    for (wv, &g) in w.iter_mut().zip(grads) {
        *wv -= lr * (g + l2 * *wv);
    }
}
