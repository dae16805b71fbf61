//! Lazy Adam with TensorFlow's LazyAdamOptimizer semantics: only touched rows move, their moments
//! decay only when touched, and the bias correction uses the global step t (one per batch):
//! `lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)`, `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
//! `w -= lr_t m / (sqrt(v) + eps)`.

use super::non_finite_bit;
#[cfg(target_arch = "x86_64")]
use super::GroupLog;
#[cfg(target_arch = "x86_64")]
use crate::train::shared::{load, load4, store, store4};
#[cfg(target_arch = "x86_64")]
use std::sync::atomic::AtomicU32;

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

/// `update` on shared memory, four elements at a time in SSE registers: each group of w, m and v
/// is loaded, logged to `log` (its old values), updated, checked and stored, with no copy through
/// stack arrays (which took about half the time of the update). The same operations in the same
/// order as `update`, so the results are bit for bit the same. Returns false as soon as a group
/// (or a last single element) would not be finite, storing nothing of it; what was stored before
/// it is in `log`, for the caller to undo.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn update_shared(
    w: &[AtomicU32],
    m: &[AtomicU32],
    v: &[AtomicU32],
    grads: &[f32],
    lr_t: f32,
    l2: f32,
    mut log: Option<&mut GroupLog>,
) -> bool {
    use std::arch::x86_64::*;
    let n = grads.len();
    assert!(w.len() == n && m.len() == n && v.len() == n);
    // SAFETY (every intrinsic below): SSE and SSE2 are part of the x86-64 baseline; the only
    // memory access, `_mm_loadu_ps`, reads 4 floats of `grads` at j with j + 4 <= n.
    unsafe {
        let (b1, b1c, b2, b2c) = (_mm_set1_ps(BETA1), _mm_set1_ps(ONE_MINUS_BETA1), _mm_set1_ps(BETA2), _mm_set1_ps(ONE_MINUS_BETA2));
        let (lr, l2v, eps) = (_mm_set1_ps(lr_t), _mm_set1_ps(l2), _mm_set1_ps(EPSILON));
        let (exponent, step) = (_mm_set1_epi32(0x7f80_0000), _mm_set1_epi32(0x0080_0000));
        let mut j = 0;
        while j + 4 <= n {
            let (wv, mv, vv) = (load4(&w[j..j + 4]), load4(&m[j..j + 4]), load4(&v[j..j + 4]));
            if let Some(log) = log.as_deref_mut() {
                log.group(&[wv, mv, vv]);
            }
            let g = _mm_add_ps(_mm_loadu_ps(grads.as_ptr().add(j)), _mm_mul_ps(l2v, wv));
            let mn = _mm_add_ps(_mm_mul_ps(b1, mv), _mm_mul_ps(b1c, g));
            let vn = _mm_add_ps(_mm_mul_ps(b2, vv), _mm_mul_ps(_mm_mul_ps(b2c, g), g));
            let wn = _mm_sub_ps(wv, _mm_div_ps(_mm_mul_ps(lr, mn), _mm_add_ps(_mm_sqrt_ps(vn), eps)));
            // non_finite_bit, four lanes at a time.
            let bad = [wn, mn, vn]
                .iter()
                .fold(_mm_setzero_si128(), |acc, &x| _mm_or_si128(acc, _mm_add_epi32(_mm_and_si128(_mm_castps_si128(x), exponent), step)));
            if _mm_movemask_ps(_mm_castsi128_ps(bad)) != 0 {
                return false;
            }
            store4(&w[j..j + 4], wn);
            store4(&m[j..j + 4], mn);
            store4(&v[j..j + 4], vn);
            j += 4;
        }
        while j < n {
            let (mut wj, mut mj, mut vj) = ([load(&w[j])], [load(&m[j])], [load(&v[j])]);
            if let Some(log) = log.as_deref_mut() {
                log.element(&[wj[0], mj[0], vj[0]]);
            }
            if !update(&mut wj, &mut mj, &mut vj, &grads[j..j + 1], lr_t, l2) {
                return false;
            }
            store(&w[j], wj[0]);
            store(&m[j], mj[0]);
            store(&v[j], vj[0]);
            j += 1;
        }
    }
    true
}
