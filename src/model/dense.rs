//! Dense layers `out = x W + b`, W of shape [n_in, n_out] row-major. The math runs on plain
//! thread-local slices (snapshots of the shared weights) so it vectorizes.

use crate::error::Result;
use crate::optim::{OptimizerKind, Param};
use crate::rng::hash_to_unit;
use crate::train::SharedF32;

pub struct Dense {
    pub weight: Param,
    pub bias: Param,
    pub n_in: usize,
    pub n_out: usize,
}

impl Dense {
    /// Glorot-uniform weights U(-a, a), a = sqrt(6 / (n_in + n_out)), from `(seed, salt, index)`;
    /// zero bias.
    pub fn new(n_in: usize, n_out: usize, seed: u64, salt: u64, optimizer: OptimizerKind) -> Result<Self> {
        let a = (6.0 / (n_in + n_out) as f64).sqrt();
        let key = seed ^ salt.wrapping_mul(0x100_0000_01B3);
        let w = SharedF32::from_fn(n_in * n_out, |i| ((2.0 * hash_to_unit(key, i as u64) - 1.0) * a) as f32)?;
        Ok(Self {
            weight: Param::new(w, vec![n_in, n_out], optimizer, true)?,
            bias: Param::new(SharedF32::zeros(n_out)?, vec![n_out], optimizer, false)?,
            n_in,
            n_out,
        })
    }
}

/// `out[b, :] = x[b, :] W + bias` for `rows` rows.
#[inline(never)] // a per-batch call: keeps profiles readable
pub fn forward(x: &[f32], w: &[f32], bias: &[f32], n_in: usize, n_out: usize, out: &mut [f32]) {
    for (x_row, out_row) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
        out_row.copy_from_slice(bias);
        for (&xi, w_row) in x_row.iter().zip(w.chunks_exact(n_out)) {
            if xi != 0.0 {
                for (o, &wij) in out_row.iter_mut().zip(w_row) {
                    *o += xi * wij;
                }
            }
        }
    }
}

/// Accumulates `grad_w += x^T d_out`, `grad_b += sum_b d_out`, and if asked writes
/// `d_x = d_out W^T` (`w_t` is scratch for W^T). Bias gradients are batch sums of terms of both signs that largely cancel
/// (e.g. mean(p - y) at the output), so they are summed in f64 (`bias_acc`, scratch).
#[inline(never)] // a per-batch call: keeps profiles readable
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    d_out: &[f32],
    w: &[f32],
    n_in: usize,
    n_out: usize,
    grad_w: &mut [f32],
    grad_b: &mut [f32],
    bias_acc: &mut Vec<f64>,
    w_t: &mut Vec<f32>,
    d_x: Option<&mut [f32]>,
) {
    column_sums(d_out, n_out, bias_acc);
    for (g, &s) in grad_b.iter_mut().zip(bias_acc.iter()) {
        *g += s as f32;
    }
    for (x_row, d_row) in x.chunks_exact(n_in).zip(d_out.chunks_exact(n_out)) {
        for (&xi, gw_row) in x_row.iter().zip(grad_w.chunks_exact_mut(n_out)) {
            if xi != 0.0 {
                for (g, &d) in gw_row.iter_mut().zip(d_row) {
                    *g += xi * d;
                }
            }
        }
    }
    if let Some(d_x) = d_x {
        // d_x[b, i] = sum_j d[b, j] w[i, j], summed over j in order as a dot product would, but
        // as axpys over rows of W^T, which vectorize across i.
        w_t.clear();
        w_t.resize(n_in * n_out, 0.0);
        for (i, w_row) in w.chunks_exact(n_out).enumerate() {
            for (j, &wij) in w_row.iter().enumerate() {
                w_t[j * n_in + i] = wij;
            }
        }
        for (dx_row, d_row) in d_x.chunks_exact_mut(n_in).zip(d_out.chunks_exact(n_out)) {
            dx_row.fill(0.0);
            for (&d, wt_row) in d_row.iter().zip(w_t.chunks_exact(n_in)) {
                for (dx, &wij) in dx_row.iter_mut().zip(wt_row) {
                    *dx += wij * d;
                }
            }
        }
    }
}

/// `sum_i a[i] b[i]` with 8 partial sums, so that it vectorizes (an f32 sum in one accumulator
/// must run in order, one add at a time).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[j] = sum_b m[b, j]` in f64.
pub fn column_sums(m: &[f32], n_cols: usize, out: &mut Vec<f64>) {
    out.clear();
    out.resize(n_cols, 0.0);
    for row in m.chunks_exact(n_cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v as f64;
        }
    }
}

pub fn relu_in_place(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// `d *= (pre > 0)`.
pub fn relu_backward(pre: &[f32], d: &mut [f32]) {
    for (dv, &p) in d.iter_mut().zip(pre) {
        if p <= 0.0 {
            *dv = 0.0;
        }
    }
}
