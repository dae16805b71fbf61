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

/// Columns summed at once in registers by the dense kernels: each output run is accumulated
/// over the whole inner dimension before it is stored, instead of being loaded and stored again
/// for every term. Every element is still summed term by term in the same order as a plain loop
/// (bit for bit the same results).
const LANES: usize = 16;

/// Batch rows whose gradient terms `grad_w` accumulates per pass (their `d_out` and `x` rows stay
/// in the L1 cache while every run of `grad_w` visits them).
const ROW_BLOCK: usize = 32;

/// `acc += a * x[..acc.len()]`, element by element.
#[inline(always)]
fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    let x = &x[..acc.len()];
    for (o, &v) in acc.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// `0..n` as runs of `LANES` columns, then runs of 8, 4, 2 and 1 for the rest: every run has a
/// length `accumulate` holds in registers.
fn runs(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let whole = n / LANES * LANES;
    let tail = [8, 4, 2, 1].into_iter().filter(move |&len| (n - whole) & len != 0);
    let tail_runs = tail.scan(whole, |start, len| {
        *start += len;
        Some(*start - len..*start)
    });
    (0..whole).step_by(LANES).map(|c| c..c + LANES).chain(tail_runs)
}

/// `acc += sum_k a_k x_k[..acc.len()]` over `terms` in order, with `acc` (a run from `runs`)
/// held in registers.
#[inline(always)]
fn accumulate<'x>(acc: &mut [f32], terms: impl Iterator<Item = (f32, &'x [f32])>) {
    match acc.len() {
        LANES => accumulate_run::<LANES>(acc, terms),
        8 => accumulate_run::<8>(acc, terms),
        4 => accumulate_run::<4>(acc, terms),
        2 => accumulate_run::<2>(acc, terms),
        1 => accumulate_run::<1>(acc, terms),
        _ => terms.for_each(|(a, x)| axpy(acc, a, x)),
    }
}

#[inline(always)]
fn accumulate_run<'x, const N: usize>(acc: &mut [f32], terms: impl Iterator<Item = (f32, &'x [f32])>) {
    let mut regs: [f32; N] = (&*acc).try_into().expect("a run of N columns");
    for (a, x) in terms {
        axpy(&mut regs, a, x);
    }
    acc.copy_from_slice(&regs);
}

/// `out[b, :] = x[b, :] W + bias` for `rows` rows (terms with a zero input, ReLU's, skipped).
#[inline(never)] // a per-batch call: keeps profiles readable
pub fn forward(x: &[f32], w: &[f32], bias: &[f32], n_in: usize, n_out: usize, out: &mut [f32]) {
    let mut nonzero = Vec::with_capacity(n_in);
    for (x_row, out_row) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
        nonzero_positions(x_row.iter().copied(), &mut nonzero);
        for cols in runs(n_out) {
            let acc = &mut out_row[cols.clone()];
            acc.copy_from_slice(&bias[cols.clone()]);
            accumulate(acc, nonzero.iter().map(|&i| (x_row[i], &w[i * n_out + cols.start..])));
        }
    }
}

/// The positions of the non-zero values, in order. Found without a branch per value: after a
/// ReLU about half the inputs are zero, at random, and a skipped term per mispredicted branch
/// cost more than the term itself.
fn nonzero_positions(values: impl Iterator<Item = f32>, out: &mut Vec<usize>) {
    out.clear();
    let mut n = 0;
    for (i, v) in values.enumerate() {
        out.push(i);
        n += (v != 0.0) as usize;
        out.truncate(n);
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
    // grad_w[i, :] += x[b, i] d_out[b, :] over the rows b in order, a block of rows at a time.
    let mut nonzero = Vec::with_capacity(ROW_BLOCK);
    for (x_block, d_block) in x.chunks(ROW_BLOCK * n_in).zip(d_out.chunks(ROW_BLOCK * n_out)) {
        for (i, gw_row) in grad_w.chunks_exact_mut(n_out).enumerate() {
            nonzero_positions(x_block.chunks_exact(n_in).map(|x_row| x_row[i]), &mut nonzero);
            for cols in runs(n_out) {
                let terms = nonzero.iter().map(|&b| (x_block[b * n_in + i], &d_block[b * n_out + cols.start..]));
                accumulate(&mut gw_row[cols.clone()], terms);
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
            for cols in runs(n_in) {
                let acc = &mut dx_row[cols.clone()];
                acc.fill(0.0);
                accumulate(acc, d_row.iter().zip(w_t.chunks_exact(n_in)).map(|(&d, wt_row)| (d, &wt_row[cols.start..])));
            }
        }
    }
}

/// `sum_i a[i] b[i]` with 8 partial sums, so that it vectorizes (an f32 sum in one accumulator
/// must run in order, one add at a time).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Partial sums k and k + 4 as two vectors of four (written so, the compiler keeps them in
    // two registers instead of shuffling eight lanes).
    let (mut lo, mut hi) = ([0.0f32; 4], [0.0f32; 4]);
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..4 {
            lo[k] += x[k] * y[k];
            hi[k] += x[k + 4] * y[k + 4];
        }
    }
    ((lo[0] + hi[0]) + (lo[1] + hi[1])) + ((lo[2] + hi[2]) + (lo[3] + hi[3])) + tail
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
    // A select, not a branch (which mispredicts on half the values, at random).
    for (dv, &p) in d.iter_mut().zip(pre) {
        *dv = if p <= 0.0 { 0.0 } else { *dv };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random values, about a third of them exactly zero (as after a ReLU).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let u = crate::rng::hash_to_unit(seed, i as u64);
                if u < 0.33 {
                    0.0
                } else {
                    (u as f32 - 0.6) * 3.0
                }
            })
            .collect()
    }

    #[test]
    fn register_blocked_kernels_match_plain_loops_bit_for_bit() {
        for (rows, n_in, n_out) in [(1, 1, 1), (3, 50, 64), (70, 64, 16), (33, 16, 1), (5, 23, 7), (2, 50, 50)] {
            let (x, w, bias, d) = (values(rows * n_in, 1), values(n_in * n_out, 2), values(n_out, 3), values(rows * n_out, 4));
            let mut out = vec![0.0; rows * n_out];
            forward(&x, &w, &bias, n_in, n_out, &mut out);
            let (mut grad_w, mut grad_b, mut d_x) = (vec![0.0; n_in * n_out], vec![0.0; n_out], vec![0.0; rows * n_in]);
            backward(&x, &d, &w, n_in, n_out, &mut grad_w, &mut grad_b, &mut Vec::new(), &mut Vec::new(), Some(&mut d_x));
            let (mut out_ref, mut grad_w_ref, mut d_x_ref) =
                (vec![0.0f32; rows * n_out], vec![0.0f32; n_in * n_out], vec![0.0f32; rows * n_in]);
            for b in 0..rows {
                for j in 0..n_out {
                    out_ref[b * n_out + j] = bias[j];
                }
                for i in 0..n_in {
                    let xi = x[b * n_in + i];
                    for j in 0..n_out {
                        if xi != 0.0 {
                            out_ref[b * n_out + j] += xi * w[i * n_out + j];
                            grad_w_ref[i * n_out + j] += xi * d[b * n_out + j];
                        }
                        d_x_ref[b * n_in + i] += d[b * n_out + j] * w[i * n_out + j];
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&out_ref), "forward {rows}x{n_in}x{n_out}");
            assert_eq!(bits(&grad_w), bits(&grad_w_ref), "grad_w {rows}x{n_in}x{n_out}");
            assert_eq!(bits(&d_x), bits(&d_x_ref), "d_x {rows}x{n_in}x{n_out}");
        }
    }

    #[test]
    fn runs_cover_every_column_once_in_register_sized_pieces() {
        for n in 0..100 {
            let runs: Vec<_> = runs(n).collect();
            assert_eq!(runs.iter().flat_map(|r| r.clone()).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
            assert!(runs.iter().all(|r| [LANES, 8, 4, 2, 1].contains(&r.len())));
        }
    }
}
