//! Deterministic parallel training (`parallel="columns"`, the talk's "approach B"): every
//! thread works on the same batch, and the batch's parameters are partitioned between them, so
//! no two threads write the same memory. The talk splits the sparse layer by output column; here
//! it is split by row (distinct id) instead: a W row of 50 floats is 200 bytes, rarely a whole
//! number of cache lines, so threads owning columns would miss on the same lines of every row,
//! and each would walk all of the batch's rows. Loading the batch's W rows, the feature-bias
//! gradients and the update of W, the feature bias and their optimizer state are divided by
//! ranges of distinct ids; the gather-sum and the dense layers by ranges of batch rows. The next
//! batch is normalized on one thread while the others run this one (it touches only max_abs,
//! which this step no longer reads; its feature biases are added at its turn).
//!
//! Every float is computed by the same sequence of operations whatever the thread count: a row
//! gradient or a feature-bias gradient is summed over its id's non-zeros in batch order (the
//! non-zeros grouped by id, `SparseLinear::group_nonzeros_by_slot`), as a one-thread Hogwild
//! step sums it, and the dense layers' gradients per fixed chunk of rows, chunks added in order.
//! So a run is bit-for-bit reproducible for a seed, on 1 thread or 16.

use std::ops::Range;

use rayon::ThreadPool;

use crate::data::Idx;
use crate::error::{Error, Result};
use crate::model::sparse_linear::{Prepare, SparseLinear};
use crate::model::workspace::{resized, zeroed, PreparedBatch, Workspace};
use crate::model::{Batch, DenseRows, Model};
use crate::optim::{all_finite as finite, UndoLog};

/// Tasks per thread in each parallel phase of a step.
const TASKS_PER_THREAD: usize = 4;

/// How many slots ahead a feature bias is prefetched (random entries of a large array).
const FEAT_BIAS_AHEAD: usize = 16;

/// One task's share of the update: its undo log, a row gradient's scratch, and whether its
/// gradients and rows stayed finite.
#[derive(Default)]
struct RowWorker {
    undo: UndoLog,
    grad_row: Vec<f32>,
    ok: bool,
}

/// The `i`-th of `parts` near-equal ranges of `0..n`.
pub(crate) fn share(n: usize, i: usize, parts: usize) -> Range<usize> {
    n * i / parts..n * (i + 1) / parts
}

/// Calls `f(first, chunk)` on the pool for `tasks` near-equal shares (`share`) of the elements of
/// `buf`, `unit` values each; `first` is the share's first element.
fn for_each_share<T: Send>(pool: &ThreadPool, buf: &mut [T], unit: usize, tasks: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = buf.len() / unit;
    let f = &f;
    pool.scope(|s| {
        let mut rest = buf;
        for i in 0..tasks {
            let range = share(n, i, tasks);
            let (mine, others) = std::mem::take(&mut rest).split_at_mut(range.len() * unit);
            rest = others;
            s.spawn(move |_| f(range.start, mine));
        }
    });
}

/// Deterministic parallel training of one model through one pass over batches, in order.
pub struct ColumnTrainer<'m> {
    model: &'m Model,
    ws: Workspace,
    scratch: StepScratch,
    /// The next batch, normalized during this one's update.
    ahead: PreparedBatch,
    ahead_of: Option<usize>,
}

/// The step's buffers beside the workspace.
struct StepScratch {
    workers: Vec<RowWorker>,
    dense_chunks: Vec<DenseChunk>,
    /// The feature bias of each slot (a batch normalized ahead gets it at its turn).
    fb_of_slot: Vec<f32>,
}

impl<'m> ColumnTrainer<'m> {
    pub fn new(model: &'m Model, threads: usize) -> Self {
        let workers = (0..TASKS_PER_THREAD * threads.max(1)).map(|_| RowWorker::default()).collect();
        Self {
            model,
            ws: model.workspace(),
            scratch: StepScratch { workers, dense_chunks: Vec::new(), fb_of_slot: Vec::new() },
            ahead: PreparedBatch::default(),
            ahead_of: None,
        }
    }

    /// Forgets the batch prepared ahead, if any (the pass stopped before its turn).
    pub fn finish(&mut self) {
        if self.ahead_of.take().is_some() {
            crate::model::sparse_linear::SparseLinear::unprepare(self.model.norm.as_ref(), &mut self.ahead);
        }
    }

    /// Undoes the last update (this batch's, or the previous one's) and the batch prepared ahead.
    fn undo_all(&mut self) {
        let workers = &mut self.scratch.workers;
        let logs: Vec<&UndoLog> = workers.iter().map(|w| &w.undo).chain(std::iter::once(&self.ws.undo)).collect();
        self.model.undo_logs(&logs);
        workers.iter_mut().for_each(|w| w.undo.clear());
        self.ws.undo.clear();
        self.finish();
    }

    /// One step on batch number `index`; `next` is the batch that will follow, if any: it is
    /// normalized on one of the pool's threads while the others run this step. The same
    /// contract as `Model::train_batch` (never leaves non-finite weights; on a non-finite loss
    /// the previous update is undone).
    pub fn train_batch<P: Idx, I: Idx>(
        &mut self,
        index: usize,
        batch: &Batch<'_, '_, P, I>,
        next: Option<(usize, Batch<'_, '_, P, I>)>,
        pool: &ThreadPool,
    ) -> Result<f64> {
        if batch.rows.is_empty() {
            return Err(crate::invalid!("empty batch"));
        }
        let model = self.model;
        let (sparse, norm) = (&model.sparse, model.norm.as_ref());
        // This batch's inputs: normalized ahead (then its feature bias is added now that the
        // previous update is done), or now.
        let was_ahead = self.ahead_of == Some(index);
        if was_ahead {
            std::mem::swap(&mut self.ws.batch, &mut self.ahead);
            self.ahead_of = None;
            self.ws.batch.raised.clear();
        } else {
            self.finish();
            sparse.prepare(batch.x, batch.rows, norm, Prepare::Now, &mut self.ws.batch);
        }
        let add_feature_bias = was_ahead && norm.is_some();
        let (ahead, ahead_of) = (&mut self.ahead, &mut self.ahead_of);
        let (ws, scratch) = (&mut self.ws, &mut self.scratch);
        // On a pool thread, so that the calling thread does not compete with the pool for cores.
        let result = pool.install(|| {
            rayon::in_place_scope(|s| {
                if let Some((j, next)) = &next {
                    s.spawn(move |_| sparse.prepare(next.x, next.rows, norm, Prepare::Ahead, ahead));
                    *ahead_of = Some(*j);
                }
                step_on(model, batch, add_feature_bias, ws, scratch, pool)
            })
        });
        match result {
            Ok(loss) => Ok(loss),
            Err(Error::Diverged(why)) => {
                self.undo_all();
                Err(Error::Diverged(why))
            }
            Err(e) => {
                self.finish();
                Err(e)
            }
        }
    }
}

/// Forward, backward and update of the prepared batch in `ws`, in `workers.len()` tasks per
/// phase, each on a range of slots, non-zeros or batch rows (more tasks than threads, so that the
/// thread normalizing the next batch finds work left when it is done).
fn step_on<P: Idx, I: Idx>(
    model: &Model,
    batch: &Batch<'_, '_, P, I>,
    add_feature_bias: bool,
    ws: &mut Workspace,
    scratch: &mut StepScratch,
    pool: &ThreadPool,
) -> Result<f64> {
    let StepScratch { workers, dense_chunks: chunks, fb_of_slot } = scratch;
    let n = batch.rows.len();
    let (sparse, norm) = (&model.sparse, model.norm.as_ref());
    let width = model.config.sparse_width;
    let tasks = workers.len();

    // Forward: W rows loaded by ranges of slots, then h summed by ranges of batch rows.
    let n_slots = ws.batch.slots.len();
    resized(&mut ws.row_cache, n_slots * width);
    zeroed(&mut ws.sparse_bias, width);
    sparse.bias.values.load_into(0, &mut ws.sparse_bias);
    resized(&mut ws.pre[0], n * width);
    let ids = &ws.batch.slots.ids;
    // A batch normalized ahead gets its feature biases now: gathered per slot, added per input.
    let feat_bias = norm.filter(|_| add_feature_bias).map(|n| &n.feat_bias.values);
    resized(fb_of_slot, if feat_bias.is_some() { n_slots } else { 0 });
    // One task per range of slots loads their W rows and, if due, their feature biases.
    {
        let (mut cache_rest, mut fb_rest) = (&mut ws.row_cache[..], &mut fb_of_slot[..]);
        pool.scope(|s| {
            for i in 0..tasks {
                let slots = share(n_slots, i, tasks);
                let (rows, more) = std::mem::take(&mut cache_rest).split_at_mut(slots.len() * width);
                cache_rest = more;
                let (out, more) = std::mem::take(&mut fb_rest).split_at_mut(if feat_bias.is_some() { slots.len() } else { 0 });
                fb_rest = more;
                s.spawn(move |_| {
                    sparse.load_rows(ids, slots.start, rows);
                    if let Some(fb) = feat_bias {
                        let ids = &ids[slots];
                        for (k, (b, &id)) in out.iter_mut().zip(ids).enumerate() {
                            if let Some(&ahead) = ids.get(k + FEAT_BIAS_AHEAD) {
                                fb.prefetch_one(ahead as usize);
                            }
                            *b = fb.get(id as usize);
                        }
                    }
                });
            }
        });
    }
    if feat_bias.is_some() {
        let (slot_of, fb_of_slot) = (&ws.batch.nnz_slot, &*fb_of_slot);
        for_each_share(pool, &mut ws.batch.nnz_y, 1, tasks, |first, ys| {
            ys.iter_mut().zip(&slot_of[first..]).for_each(|(y, &slot)| *y += fb_of_slot[slot as usize]);
        });
    }
    // The gather-sum, and beside it the grouping of the non-zeros by slot for the backward pass
    // of a table of many columns.
    {
        let (prepared, bias, cache) = (&ws.batch, &ws.sparse_bias, &ws.row_cache);
        let (by_slot, start, next) = (&mut ws.by_slot, &mut ws.by_slot_start, &mut ws.by_slot_next);
        let h = &mut ws.pre[0];
        rayon::join(
            || (width > 1).then(|| SparseLinear::group_nonzeros_by_slot(prepared, by_slot, start, next)),
            || for_each_share(pool, h, width, tasks, |first, h| sparse.sum_rows(prepared, bias, cache, first, h)),
        );
    }

    let mean_loss = dense_and_loss(model, batch, ws, chunks, pool).map_err(|e| match e {
        Error::Diverged(why) => Error::Diverged(format!("{why}; the previous update was undone")),
        other => other,
    })?;

    // Backward. For a linear model, the plain pass on this thread: one float per non-zero is
    // less work than grouping the non-zeros for threads. Otherwise by ranges of slots: each
    // slot's feature-bias gradient, and its row gradient unless it is summed during the update
    // (bounded gradients).
    let with_feat_bias = norm.is_some();
    let dh = std::mem::take(&mut ws.d_pre[0]);
    let deferred = width > 1 && SparseLinear::row_gradients_bounded(&dh, &ws.batch.nnz_y);
    let sparse_finite = if width == 1 {
        sparse.backward(&dh, with_feat_bias, ws);
        finite(&ws.grad_rows) && finite(&ws.grad_feat_bias)
    } else {
        SparseLinear::bias_gradients(&dh, width, with_feat_bias, ws);
        resized(&mut ws.grad_rows, if deferred { 0 } else { n_slots * width });
        let (cache, by_slot, start) = (&ws.row_cache, &ws.by_slot, &ws.by_slot_start);
        let (dh, mut fb_rest, mut rows_rest) = (&dh[..], &mut ws.grad_feat_bias[..], &mut ws.grad_rows[..]);
        pool.scope(|s| {
            for (i, w) in workers.iter_mut().enumerate() {
                let slots = share(n_slots, i, tasks);
                let (fb, more) = std::mem::take(&mut fb_rest).split_at_mut(if with_feat_bias { slots.len() } else { 0 });
                fb_rest = more;
                let (rows, more) = std::mem::take(&mut rows_rest).split_at_mut(if deferred { 0 } else { slots.len() * width });
                rows_rest = more;
                s.spawn(move |_| {
                    SparseLinear::feat_bias_gradients(width, cache, dh, by_slot, start, slots.start, fb);
                    for (out, s) in rows.chunks_exact_mut(width).zip(slots.start..) {
                        SparseLinear::row_gradient(dh, by_slot, start, s, out);
                    }
                    w.ok = finite(fb) && finite(rows);
                });
            }
        });
        workers.iter().all(|w| w.ok)
    };
    if !(sparse_finite
        && finite(&ws.grad_sparse_bias)
        && ws.grad_dense_w.iter().all(|g| finite(g))
        && ws.grad_dense_b.iter().all(|g| finite(g)))
    {
        ws.d_pre[0] = dh;
        return Err(Error::Diverged("a gradient is not finite; the previous update was undone".into()));
    }

    // Update: whole rows of W and the feature bias by ranges of slots; the sparse bias and the
    // dense layers on this thread.
    let t = model.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let step = model.config.optimizer.step(t);
    {
        let ids = &ws.batch.slots.ids;
        let (by_slot, start, grad_rows, fb_grads, dh) = (&ws.by_slot, &ws.by_slot_start, &ws.grad_rows, &ws.grad_feat_bias, &dh[..]);
        pool.scope(|s| {
            for (i, w) in workers.iter_mut().enumerate() {
                s.spawn(move |_| {
                    let slots = share(ids.len(), i, tasks);
                    let rows = &ids[slots.clone()];
                    w.undo.clear();
                    w.ok = if deferred {
                        w.grad_row.resize(width, 0.0);
                        step.apply_rows_with(&sparse.weight, 0, rows, width, &mut w.grad_row, &mut w.undo, |k, g| {
                            SparseLinear::row_gradient(dh, by_slot, start, slots.start + k, g)
                        })
                    } else {
                        step.apply_rows(&sparse.weight, 0, rows, width, &grad_rows[slots.start * width..slots.end * width], &mut w.undo)
                    };
                    w.ok = w.ok && norm.is_none_or(|n| step.apply_rows(&n.feat_bias, 1, rows, 1, &fb_grads[slots], &mut w.undo));
                });
            }
        });
    }
    ws.d_pre[0] = dh;
    ws.undo.clear();
    let mut ok = workers.iter().all(|w| w.ok) && step.apply_rows(&sparse.bias, 2, &[0], width, &ws.grad_sparse_bias, &mut ws.undo);
    for (l, layer) in model.dense.iter().enumerate() {
        let key = 3 + 2 * l as u32;
        ok = ok
            && step.apply_rows(&layer.weight, key, &[0], layer.n_in * layer.n_out, &ws.grad_dense_w[l], &mut ws.undo)
            && step.apply_rows(&layer.bias, key + 1, &[0], layer.n_out, &ws.grad_dense_b[l], &mut ws.undo);
    }
    if !ok {
        return Err(Error::Diverged("an update would make a weight or optimizer state non-finite; it was not applied".into()));
    }
    Ok(mean_loss)
}

/// Rows per task of the dense layers: a fixed number, so that the gradient sums (each chunk's
/// partial sums, added in chunk order) do not depend on the thread count.
const DENSE_CHUNK: usize = 64;

/// One chunk of batch rows through the dense layers and the loss: its activations, the
/// gradient of its rows of h, its partial dense-layer gradients and its loss total.
#[derive(Default)]
struct DenseChunk {
    pre: Vec<Vec<f32>>,
    act: Vec<Vec<f32>>,
    d_pre: Vec<Vec<f32>>,
    grad_w: Vec<Vec<f32>>,
    grad_b: Vec<Vec<f32>>,
    bias_acc: Vec<f64>,
    w_t: Vec<f32>,
    loss: f64,
}

impl DenseChunk {
    /// Rows `rows` of the batch: `h` their sparse layer output, `d_h` gets its gradient.
    #[allow(clippy::too_many_arguments)]
    fn run<P: Idx, I: Idx>(
        &mut self,
        model: &Model,
        batch: &Batch<'_, '_, P, I>,
        rows: Range<usize>,
        h: &[f32],
        dense_w: &[Vec<f32>],
        dense_b: &[Vec<f32>],
        d_h: &mut [f32],
    ) {
        let layers = model.dense.len();
        self.pre.resize_with(layers + 1, Vec::new);
        self.act.resize_with(layers, Vec::new);
        self.d_pre.resize_with(layers + 1, Vec::new);
        self.grad_w.resize_with(layers, Vec::new);
        self.grad_b.resize_with(layers, Vec::new);
        self.pre[0].clear();
        self.pre[0].extend_from_slice(h);
        let buffers = DenseRows {
            pre: &mut self.pre,
            act: &mut self.act,
            d_pre: &mut self.d_pre,
            grad_w: &mut self.grad_w,
            grad_b: &mut self.grad_b,
            bias_acc: &mut self.bias_acc,
            w_t: &mut self.w_t,
        };
        self.loss = model.dense_rows(buffers, dense_w, dense_b, &batch.rows[rows], batch, 1.0 / batch.rows.len() as f32);
        d_h.copy_from_slice(&self.d_pre[0]);
    }
}

/// The dense layers and the loss of the batch in chunks of `DENSE_CHUNK` rows, in parallel:
/// from `ws.pre[0]` (h) to `ws.d_pre[0]` (its gradient) and the dense-layer gradients. Returns
/// the mean batch loss.
fn dense_and_loss<P: Idx, I: Idx>(
    model: &Model,
    batch: &Batch<'_, '_, P, I>,
    ws: &mut Workspace,
    chunks: &mut Vec<DenseChunk>,
    pool: &ThreadPool,
) -> Result<f64> {
    let n = batch.rows.len();
    let width = model.config.sparse_width;
    for (l, layer) in model.dense.iter().enumerate() {
        layer.weight.values.copy_to(&mut ws.dense_w[l]);
        layer.bias.values.copy_to(&mut ws.dense_b[l]);
    }
    let n_chunks = n.div_ceil(DENSE_CHUNK);
    if chunks.len() < n_chunks {
        chunks.resize_with(n_chunks, DenseChunk::default);
    }
    zeroed(&mut ws.d_pre[0], n * width);
    let (dense_w, dense_b, h) = (&ws.dense_w, &ws.dense_b, &ws.pre[0]);
    pool.scope(|s| {
        let mut rest = &mut ws.d_pre[0][..];
        for (c, chunk) in chunks[..n_chunks].iter_mut().enumerate() {
            let rows = c * DENSE_CHUNK..((c + 1) * DENSE_CHUNK).min(n);
            let (d_h, others) = std::mem::take(&mut rest).split_at_mut(rows.len() * width);
            rest = others;
            let h = &h[rows.start * width..rows.end * width];
            s.spawn(move |_| chunk.run(model, batch, rows, h, dense_w, dense_b, d_h));
        }
    });
    let mut total = 0.0;
    for g in ws.grad_dense_w.iter_mut().chain(ws.grad_dense_b.iter_mut()) {
        g.fill(0.0);
    }
    for chunk in &chunks[..n_chunks] {
        total += chunk.loss;
        for (sum, part) in ws.grad_dense_w.iter_mut().zip(&chunk.grad_w).chain(ws.grad_dense_b.iter_mut().zip(&chunk.grad_b)) {
            sum.iter_mut().zip(part).for_each(|(s, &p)| *s += p);
        }
    }
    let mean_loss = total / n as f64;
    if !mean_loss.is_finite() {
        return Err(Error::Diverged(format!("the batch loss is {mean_loss}")));
    }
    Ok(mean_loss)
}
