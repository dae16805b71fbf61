//! The sparse linear layer (twml FullSparse): `h[b, :] = sum_{k in row b} W[id_k, :] y_k + B`,
//! computed as a gather-sum of W rows (embedding_lookup_sparse), never as a matmul. The backward
//! pass produces gradients only for the rows present in the batch, summed per distinct id.

use crate::data::{CsrView, Idx};
use crate::error::Result;
use crate::features::Normalizer;
use crate::model::workspace::{group_by_slot, resized, zeroed, PreparedBatch, Workspace};
use crate::optim::{OptimizerKind, Param};
use crate::rng::hash_to_unit;
use crate::train::shared::{load, prefetch_slice, rows_ahead};
use crate::train::SharedF32;

/// Visits the non-zeros of batch rows `rows` of `x` in batch order (`visit(state, id, value)`,
/// then `row_done(state)` after each row), prefetching as it goes: rows ROW_AHEAD ahead have
/// their ids and values prefetched and twice that ahead their row pointer (the rows of a shuffled
/// batch are scattered over the whole matrix), and `prefetch(state, id)` is called for each id
/// of the next row while this row runs, id j of the next row beside id j of this one (for the
/// random entries of large arrays the visit will read, about a row ahead).
#[inline(always)]
fn walk_batch<P: Idx, I: Idx, S>(
    x: &CsrView<'_, P, I>,
    rows: &[u32],
    state: &mut S,
    prefetch: impl Fn(&S, usize),
    mut visit: impl FnMut(&mut S, usize, f32),
    mut row_done: impl FnMut(&mut S),
) {
    const ROW_AHEAD: usize = 4;
    for (i, &r) in rows.iter().enumerate() {
        if let Some(&far) = rows.get(i + 2 * ROW_AHEAD) {
            x.prefetch_row_pointer(far as usize);
        }
        if let Some(&ahead) = rows.get(i + ROW_AHEAD) {
            x.prefetch_row(ahead as usize);
        }
        let (ids, values) = x.row(r as usize);
        let next_ids = rows.get(i + 1).map_or(&[][..], |&r| x.row(r as usize).0);
        for (j, (&id, &v)) in ids.iter().zip(values).enumerate() {
            if let Some(&ahead) = next_ids.get(j) {
                prefetch(state, ahead.as_usize());
            }
            visit(state, id.as_usize(), v);
        }
        for &ahead in next_ids.get(ids.len()..).unwrap_or(&[]) {
            prefetch(state, ahead.as_usize());
        }
        row_done(state);
    }
}

/// How many non-zeros ahead the per-batch row cache and gradient rows are prefetched: a batch's
/// cache (distinct ids x width) is megabytes, beyond the L2 cache, and visited in slot order.
const SLOT_AHEAD: usize = 8;

/// When `SparseLinear::prepare` runs: in the batch's turn, or ahead of it (while the batch
/// before it is still training).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepare {
    Now,
    Ahead,
}

pub struct SparseLinear {
    pub weight: Param,
    pub bias: Param,
    pub width: usize,
}

impl SparseLinear {
    /// `init_scale = 0` gives zeros (logistic regression, FTRL); otherwise W ~ U(-s, s) drawn
    /// from `(seed, index)`.
    pub fn new(n_features: usize, width: usize, init_scale: f32, seed: u64, optimizer: OptimizerKind) -> Result<Self> {
        let n = n_features.checked_mul(width).ok_or_else(|| crate::invalid!("n_features * sparse_width overflows"))?;
        let w = if init_scale == 0.0 {
            SharedF32::zeros(n)?
        } else {
            let s = init_scale as f64;
            SharedF32::from_fn(n, |i| ((2.0 * hash_to_unit(seed, i as u64) - 1.0) * s) as f32)?
        };
        Ok(Self {
            weight: Param::new(w, vec![n_features, width], optimizer, true)?,
            bias: Param::new(SharedF32::zeros(width)?, vec![width], optimizer, false)?,
            width,
        })
    }

    /// Training forward over the batch rows: normalizes every non-zero in order (updating
    /// max_abs), assigns each distinct id a slot, then gathers W rows into `ws.row_cache` and
    /// sums them into `ws.pre[0]` (B x width).
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn forward_train<P: Idx, I: Idx>(&self, x: &CsrView<'_, P, I>, rows: &[u32], norm: Option<&Normalizer>, ws: &mut Workspace) {
        self.prepare(x, rows, norm, Prepare::Now, &mut ws.batch);
        let width = self.width;
        resized(&mut ws.row_cache, ws.batch.slots.len() * width);
        self.load_rows(&ws.batch.slots.ids, 0, &mut ws.row_cache);
        zeroed(&mut ws.sparse_bias, width);
        self.bias.values.load_into(0, &mut ws.sparse_bias);
        resized(&mut ws.pre[0], ws.batch.row_end.len() * width);
        self.sum_rows(&ws.batch, &ws.sparse_bias, &ws.row_cache, 0, &mut ws.pre[0]);
    }

    /// The first half of the forward pass: each non-zero's input y (normalized in batch order,
    /// max_abs updated) and slot, with the id of every slot. `Prepare::Ahead` leaves the feature
    /// bias out of y (it may still change before the batch's turn; it is added then) and logs
    /// every max_abs it raises in `batch.raised`.
    pub fn prepare<P: Idx, I: Idx>(
        &self,
        x: &CsrView<'_, P, I>,
        rows: &[u32],
        norm: Option<&Normalizer>,
        mode: Prepare,
        batch: &mut PreparedBatch,
    ) {
        batch.slots.reset();
        batch.nnz_slot.clear();
        batch.nnz_y.clear();
        batch.row_end.clear();
        batch.raised.clear();
        let prefetch_state = |batch: &PreparedBatch, id: usize| {
            batch.slots.prefetch(id as u64);
            if let Some(n) = norm {
                n.max_abs.prefetch_one(id);
                if mode == Prepare::Now {
                    n.feat_bias.values.prefetch_one(id);
                }
            }
        };
        let visit = |batch: &mut PreparedBatch, id: usize, v: f32| {
            let y = match (norm, mode) {
                (Some(n), Prepare::Now) => n.train_value(id, v),
                (Some(n), Prepare::Ahead) => {
                    let (old, scale) = n.max_abs.raise(id, v.abs());
                    if scale != old {
                        batch.raised.push((id, old));
                    }
                    Normalizer::scaled(v, scale)
                }
                (None, _) => v,
            };
            batch.nnz_slot.push(batch.slots.slot_of(id as u64).0);
            batch.nnz_y.push(y);
        };
        walk_batch(x, rows, batch, prefetch_state, visit, |batch| batch.row_end.push(batch.nnz_y.len()));
    }

    /// The forward pass of a linear model without deduplication, for a step whose update is
    /// applied per non-zero (`Model::updates_per_nonzero`): per non-zero, its input y
    /// (normalized as `prepare` does) into `ws.batch.nnz_y`, its id into `ws.nonzero_ids` and
    /// its weight into `ws.nonzero_w`; the row ends into `ws.batch.row_end`; each row's output
    /// into `ws.pre[0]`. Weights are read once per non-zero: a linear model's weight is one float,
    /// as cheap to read again as to look up in a table of distinct ids.
    pub fn forward_per_nonzero<P: Idx, I: Idx>(&self, x: &CsrView<'_, P, I>, rows: &[u32], norm: Option<&Normalizer>, ws: &mut Workspace) {
        debug_assert_eq!(self.width, 1);
        let weight = &self.weight.values;
        let bias = self.bias.values.get(0);
        // Written by position into buffers sized for the batch, through a local view of them:
        // pushed one by one, each buffer's length went to memory and back at every non-zero (a
        // store of a float might be one of a length, as far as the compiler knew).
        let nnz: usize = rows.iter().map(|&r| x.row(r as usize).0.len()).sum();
        // A Hogwild thread's hot ids are looked up here, where the loop mostly waits on the
        // weights' cache misses, rather than in the update.
        let hot_ids = ws.hot_ids.clone();
        resized(&mut ws.batch.nnz_y, nnz);
        resized(&mut ws.nonzero_w, nnz);
        ws.nonzero_ids.resize(nnz, 0);
        ws.nonzero_sum.resize(if hot_ids.is_some() { nnz } else { 0 }, 0);
        ws.batch.row_end.clear();
        ws.pre[0].clear();
        struct Out<'w> {
            y: &'w mut [f32],
            ids: &'w mut [u64],
            w: &'w mut [f32],
            sum_index: &'w mut [u32],
            row_end: &'w mut Vec<usize>,
            row_sums: &'w mut Vec<f32>,
            next: usize,
            row_sum: f32,
        }
        let mut out = Out {
            y: &mut ws.batch.nnz_y,
            ids: &mut ws.nonzero_ids,
            w: &mut ws.nonzero_w,
            sum_index: &mut ws.nonzero_sum,
            row_end: &mut ws.batch.row_end,
            row_sums: &mut ws.pre[0],
            next: 0,
            row_sum: bias,
        };
        let prefetch_state = |_: &Out, id: usize| {
            weight.prefetch_one(id);
            if let Some(n) = norm {
                n.max_abs.prefetch_one(id);
                n.feat_bias.values.prefetch_one(id);
            }
        };
        let visit = |out: &mut Out, id: usize, v: f32| {
            let y = match norm {
                Some(n) => n.train_value(id, v),
                None => v,
            };
            let w = weight.get(id);
            let k = out.next;
            out.y[k] = y;
            out.ids[k] = id as u64;
            out.w[k] = w;
            if let Some(hot) = &hot_ids {
                out.sum_index[k] = hot.sum_index(id as u64, k) as u32;
            }
            out.row_sum += w * y;
            out.next = k + 1;
        };
        let row_done = |out: &mut Out| {
            out.row_sums.push(std::mem::replace(&mut out.row_sum, bias));
            out.row_end.push(out.next);
        };
        walk_batch(x, rows, &mut out, prefetch_state, visit, row_done);
    }

    /// Forgets a batch prepared with `Prepare::Ahead` that will not be trained: puts back the
    /// max_abs values it raised.
    pub fn unprepare(norm: Option<&Normalizer>, batch: &mut PreparedBatch) {
        if let Some(n) = norm {
            for &(id, old) in batch.raised.iter().rev() {
                n.max_abs.set(id, old);
            }
        }
        batch.raised.clear();
    }

    /// Loads the W rows of slots `first_slot..` into `cache` (whole rows, `cache.len() / width`
    /// of them), prefetching a few rows ahead.
    pub fn load_rows(&self, ids: &[u64], first_slot: usize, cache: &mut [f32]) {
        let width = self.width;
        let ahead_rows = rows_ahead(width);
        let ids = &ids[first_slot..first_slot + cache.len() / width];
        for (s, (&id, row)) in ids.iter().zip(cache.chunks_exact_mut(width)).enumerate() {
            if let Some(&ahead) = ids.get(s + ahead_rows) {
                self.weight.values.prefetch(ahead as usize * width, width);
            }
            self.weight.values.load_into(id as usize * width, row);
        }
    }

    /// `h` (batch rows `first_row..`, whole rows) = bias + the gather-sum over `cache` (slots x
    /// width, from `load_rows`).
    pub fn sum_rows(&self, batch: &PreparedBatch, bias: &[f32], cache: &[f32], first_row: usize, h: &mut [f32]) {
        let width = self.width;
        let mut start = if first_row == 0 { 0 } else { batch.row_end[first_row - 1] };
        if width == 1 {
            // A linear model's cache is a few hundred KB, already in cache: no prefetching, no
            // row loop.
            for (h_row, &end) in h.iter_mut().zip(&batch.row_end[first_row..]) {
                let mut sum = bias[0];
                for (&slot, &y) in batch.nnz_slot[start..end].iter().zip(&batch.nnz_y[start..end]) {
                    sum += cache[slot as usize] * y;
                }
                *h_row = sum;
                start = end;
            }
            return;
        }
        for (h_row, &end) in h.chunks_exact_mut(width).zip(&batch.row_end[first_row..]) {
            h_row.copy_from_slice(bias);
            for k in start..end {
                if let Some(&ahead) = batch.nnz_slot.get(k + SLOT_AHEAD) {
                    prefetch_slice(&cache[ahead as usize * width..(ahead as usize + 1) * width]);
                }
                let slot = batch.nnz_slot[k] as usize;
                let y = batch.nnz_y[k];
                for (hj, &w) in h_row.iter_mut().zip(&cache[slot * width..(slot + 1) * width]) {
                    *hj += w * y;
                }
            }
            start = end;
        }
    }

    /// Inference forward of one row into `h` (width).
    #[inline]
    pub fn forward_infer_row<I: Idx>(&self, ids: &[I], values: &[f32], norm: Option<&Normalizer>, bias: &[f32], h: &mut [f32]) {
        let width = self.width;
        h.copy_from_slice(bias);
        for (&id, &v) in ids.iter().zip(values) {
            let id = id.as_usize();
            let y = match norm {
                Some(n) => n.infer_value(id, v),
                None => v,
            };
            let w_row = self.weight.values.range(id * width, width);
            for (hj, wa) in h.iter_mut().zip(w_row) {
                *hj += load(wa) * y;
            }
        }
    }

    /// `backward`, except that the row gradients are not computed (`ws.rows_deferred`): the
    /// non-zeros are grouped by slot instead (`ws.by_slot`), and `row_gradient` sums a row's
    /// gradient when the optimizer comes to it. That saves writing and re-reading megabytes of
    /// gradient rows scattered by slot, and the feature-bias gradients are summed slot by slot
    /// over the row cache in order. The values are bit for bit those of `backward`. The row
    /// gradients are then finite without being checked, so when `row_gradients_bounded` does
    /// not show it, or for a table of one column, this runs `backward` instead.
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn backward_deferred(&self, dh: &[f32], with_feat_bias: bool, ws: &mut Workspace) {
        // A linear model's rows are single floats: nothing to save.
        if self.width == 1 || !Self::row_gradients_bounded(dh, &ws.batch.nnz_y) {
            ws.rows_deferred = false;
            return self.backward(dh, with_feat_bias, ws);
        }
        ws.rows_deferred = true;
        let width = self.width;
        Self::bias_gradients(dh, width, with_feat_bias, ws);
        Self::group_nonzeros_by_slot(&ws.batch, &mut ws.by_slot, &mut ws.by_slot_start, &mut ws.by_slot_next);
        if with_feat_bias {
            Self::feat_bias_gradients(width, &ws.row_cache, dh, &ws.by_slot, &ws.by_slot_start, 0, &mut ws.grad_feat_bias);
        }
        ws.grad_rows.clear();
    }

    /// Whether every partial sum of every row gradient (`row_gradient`) is surely finite: each
    /// is at most max |dh| times the sum of |y| (plus rounding) in magnitude.
    pub(crate) fn row_gradients_bounded(dh: &[f32], nnz_y: &[f32]) -> bool {
        const SAFE: f64 = 1e37;
        let max_dh = dh.iter().fold(0.0f32, |m, &d| m.max(d.abs()));
        let sum_y: f64 = nnz_y.iter().map(|&y| y.abs() as f64).sum();
        crate::optim::all_finite(dh) && max_dh as f64 * sum_y <= SAFE
    }

    /// The batch's non-zeros grouped by slot, in batch order within a slot (`group_by_slot`):
    /// `by_slot` gets each one's batch row and input y, `start` the groups' offsets.
    pub(crate) fn group_nonzeros_by_slot(batch: &PreparedBatch, by_slot: &mut Vec<(u32, f32)>, start: &mut Vec<u32>, next: &mut Vec<u32>) {
        by_slot.clear();
        by_slot.resize(batch.nnz_slot.len(), (0, 0.0));
        let (row_end, nnz_y) = (&batch.row_end, &batch.nnz_y);
        let mut b = 0;
        group_by_slot(batch.nnz_slot.iter().map(|&s| s as usize), batch.slots.len(), start, next, |k, at| {
            while row_end[b] <= k {
                b += 1;
            }
            by_slot[at] = (b as u32, nnz_y[k]);
        });
    }

    /// The feature-bias gradients of slots `first_slot..first_slot + out.len()` from the
    /// grouping (`group_nonzeros_by_slot`): per slot, the sum over its non-zeros in batch order
    /// of its W row (`cache`, slots x width) dotted with the non-zero's row of dh, as `backward`
    /// sums them.
    pub(crate) fn feat_bias_gradients(
        width: usize,
        cache: &[f32],
        dh: &[f32],
        by_slot: &[(u32, f32)],
        start: &[u32],
        first_slot: usize,
        out: &mut [f32],
    ) {
        for (g, s) in out.iter_mut().zip(first_slot..) {
            let group = &by_slot[start[s] as usize..start[s + 1] as usize];
            let w_row = &cache[s * width..(s + 1) * width];
            let mut sum = 0.0;
            if width == 1 {
                group.iter().for_each(|&(b, _)| sum += w_row[0] * dh[b as usize]);
            } else {
                group.iter().for_each(|&(b, _)| sum += super::dense::dot(w_row, &dh[b as usize * width..(b as usize + 1) * width]));
            }
            *g = sum;
        }
    }

    /// The sparse layer's bias gradient (column sums of `dh`, in f64) into `ws.grad_sparse_bias`,
    /// and `ws.grad_feat_bias` zeroed to one entry per slot (none without normalization): what
    /// both backward passes start with.
    pub(crate) fn bias_gradients(dh: &[f32], width: usize, with_feat_bias: bool, ws: &mut Workspace) {
        zeroed(&mut ws.grad_feat_bias, if with_feat_bias { ws.batch.slots.len() } else { 0 });
        super::dense::column_sums(dh, width, &mut ws.bias_acc);
        ws.grad_sparse_bias.clear();
        ws.grad_sparse_bias.extend(ws.bias_acc.iter().map(|&s| s as f32));
    }

    /// The gradient of slot `slot`'s row after `backward_deferred`: `sum dh[b, :] y` over the
    /// slot's non-zeros in batch order, as `backward` sums it.
    #[inline(always)]
    pub fn row_gradient(dh: &[f32], by_slot: &[(u32, f32)], by_slot_start: &[u32], slot: usize, out: &mut [f32]) {
        let width = out.len();
        out.fill(0.0);
        for &(b, y) in &by_slot[by_slot_start[slot] as usize..by_slot_start[slot + 1] as usize] {
            let b = b as usize;
            for (g, &d) in out.iter_mut().zip(&dh[b * width..(b + 1) * width]) {
                *g += d * y;
            }
        }
    }

    /// Given `dh` (B x width), fills the per-slot row gradients, the feature-bias gradients (when
    /// normalizing) and the bias gradient.
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn backward(&self, dh: &[f32], with_feat_bias: bool, ws: &mut Workspace) {
        debug_assert_eq!(ws.row_cache.len(), ws.batch.slots.len() * self.width);
        let width = self.width;
        let n_unique = ws.batch.slots.len();
        zeroed(&mut ws.grad_rows, n_unique * width);
        Self::bias_gradients(dh, width, with_feat_bias, ws);
        if width == 1 {
            // As in `sum_rows`: a linear model's per-slot arrays are small and already cached.
            let mut start = 0;
            for (&d, &end) in dh.iter().zip(&ws.batch.row_end) {
                for (&slot, &y) in ws.batch.nnz_slot[start..end].iter().zip(&ws.batch.nnz_y[start..end]) {
                    let slot = slot as usize;
                    ws.grad_rows[slot] += d * y;
                    if with_feat_bias {
                        ws.grad_feat_bias[slot] += ws.row_cache[slot] * d;
                    }
                }
                start = end;
            }
            return;
        }
        let mut start = 0;
        for (b, &end) in ws.batch.row_end.iter().enumerate() {
            let dh_row = &dh[b * width..(b + 1) * width];
            for k in start..end {
                if let Some(&ahead) = ws.batch.nnz_slot.get(k + SLOT_AHEAD) {
                    let at = ahead as usize * width..(ahead as usize + 1) * width;
                    prefetch_slice(&ws.grad_rows[at.clone()]);
                    prefetch_slice(&ws.row_cache[at]);
                }
                let slot = ws.batch.nnz_slot[k] as usize;
                let y = ws.batch.nnz_y[k];
                let g_row = &mut ws.grad_rows[slot * width..(slot + 1) * width];
                for (g, &d) in g_row.iter_mut().zip(dh_row) {
                    *g += d * y;
                }
                if with_feat_bias {
                    ws.grad_feat_bias[slot] += super::dense::dot(&ws.row_cache[slot * width..(slot + 1) * width], dh_row);
                }
            }
            start = end;
        }
    }
}
