//! Column-partitioned training (the talk's "approach B"): every thread works on the same batch
//! and owns a contiguous range of the sparse layer's output columns, with those columns of W,
//! of its bias and of their optimizer state. Normalization, the dense layers and the loss run on
//! the calling thread. No two threads write the same memory, and every float is computed by the
//! same sequence of operations whatever the thread count (the feature-bias gradient is summed
//! per block of `COLUMN_BLOCK` columns, blocks added in a fixed order), so a run is bit-for-bit
//! reproducible for a seed, on 1 thread or 16.

use std::ops::Range;

use rayon::ThreadPool;

use crate::data::Idx;
use crate::error::{Error, Result};
use crate::model::sparse_linear::COLUMN_BLOCK;
use crate::model::workspace::{zeroed, Workspace};
use crate::model::{Batch, Model};
use crate::optim::UndoLog;

/// One thread's columns and its scratch buffers.
#[derive(Default)]
pub struct ColumnPart {
    pub cols: Range<usize>,
    cache: Vec<f32>,
    h: Vec<f32>,
    grad: Vec<f32>,
    fb_parts: Vec<f32>,
    bias_acc: Vec<f64>,
    bias_grad: Vec<f32>,
    undo: UndoLog,
    ok: bool,
}

/// Splits `width` columns into at most `threads` ranges of whole blocks.
pub fn split_columns(width: usize, threads: usize) -> Vec<ColumnPart> {
    let blocks = width.div_ceil(COLUMN_BLOCK);
    let t = threads.clamp(1, blocks.max(1));
    (0..t)
        .map(|i| {
            let (b0, b1) = (i * blocks / t, (i + 1) * blocks / t);
            ColumnPart { cols: b0 * COLUMN_BLOCK..(b1 * COLUMN_BLOCK).min(width), ..Default::default() }
        })
        .collect()
}

fn finite(v: &[f32]) -> bool {
    v.iter().fold(true, |ok, x| ok & x.is_finite())
}

/// One step on `batch`; the same contract as `Model::train_batch` (never leaves non-finite
/// weights; on a non-finite loss the previous update is undone).
pub fn train_batch_columns<P: Idx, I: Idx>(
    model: &Model,
    batch: &Batch<'_, '_, P, I>,
    ws: &mut Workspace,
    parts: &mut [ColumnPart],
    pool: &ThreadPool,
) -> Result<f64> {
    let n = batch.rows.len();
    if n == 0 {
        return Err(crate::invalid!("empty batch"));
    }
    let width = model.config.sparse_width;
    let sparse = &model.sparse;
    sparse.prepare(batch.x, batch.rows, model.norm.as_ref(), ws);
    {
        let ws: &Workspace = ws;
        pool.scope(|s| {
            for part in parts.iter_mut() {
                s.spawn(move |_| sparse.gather(ws, part.cols.clone(), &mut part.cache, &mut part.h));
            }
        });
    }
    zeroed(&mut ws.pre[0], n * width);
    for part in parts.iter() {
        let cw = part.cols.len();
        for b in 0..n {
            ws.pre[0][b * width + part.cols.start..b * width + part.cols.end].copy_from_slice(&part.h[b * cw..(b + 1) * cw]);
        }
    }
    let mean_loss = match model.dense_and_loss(batch, ws) {
        Ok(loss) => loss,
        Err(Error::Diverged(why)) => {
            let logs: Vec<&UndoLog> = parts.iter().map(|p| &p.undo).chain(std::iter::once(&ws.undo)).collect();
            model.undo_logs(&logs);
            parts.iter_mut().for_each(|p| p.undo.clear());
            ws.undo.clear();
            return Err(Error::Diverged(format!("{why}; the previous update was undone")));
        }
        Err(e) => return Err(e),
    };
    let with_feat_bias = model.norm.is_some();
    {
        let ws: &Workspace = ws;
        let dh = &ws.d_pre[0];
        pool.scope(|s| {
            for part in parts.iter_mut() {
                s.spawn(move |_| {
                    let p = part;
                    sparse.backward_columns(ws, dh, p.cols.clone(), &p.cache, &mut p.grad, &mut p.fb_parts, &mut p.bias_acc, &mut p.bias_grad);
                    p.ok = finite(&p.grad) && finite(&p.bias_grad) && finite(&p.fb_parts);
                });
            }
        });
    }
    // Feature-bias gradient: per non-zero, the blocks' shares in column order.
    zeroed(&mut ws.grad_feat_bias, if with_feat_bias { ws.slots.len() } else { 0 });
    if with_feat_bias {
        for k in 0..ws.nnz_y.len() {
            let mut dy = 0.0f32;
            for part in parts.iter() {
                let blocks = part.cols.len().div_ceil(COLUMN_BLOCK);
                dy = part.fb_parts[k * blocks..(k + 1) * blocks].iter().fold(dy, |acc, &v| acc + v);
            }
            ws.grad_feat_bias[ws.nnz_slot[k] as usize] += dy;
        }
    }
    if !(parts.iter().all(|p| p.ok)
        && finite(&ws.grad_feat_bias)
        && ws.grad_dense_w.iter().all(|g| finite(g))
        && ws.grad_dense_b.iter().all(|g| finite(g)))
    {
        let logs: Vec<&UndoLog> = parts.iter().map(|p| &p.undo).chain(std::iter::once(&ws.undo)).collect();
        model.undo_logs(&logs);
        parts.iter_mut().for_each(|p| p.undo.clear());
        ws.undo.clear();
        return Err(Error::Diverged("a gradient is not finite; the previous update was undone".into()));
    }

    // Update: each thread its columns; the calling thread the feature bias and dense layers.
    let t = model.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let step = model.config.optimizer.step(t);
    {
        let ids = &ws.slots.ids;
        let n_parts = parts.len();
        pool.scope(|s| {
            for (t, part) in parts.iter_mut().enumerate() {
                s.spawn(move |_| {
                    let p = part;
                    let (c0, cw) = (p.cols.start, p.cols.len());
                    p.undo.clear();
                    // A row of W is rarely a whole number of cache lines, so neighbouring column
                    // ranges share a line in most rows. Each thread starts at its own point of
                    // the row list, so two threads do not write the same line at the same time.
                    let k = ids.len() * t / n_parts;
                    let (first, second) = (ids.split_at(k).1, ids.split_at(k).0);
                    let (g_first, g_second) = (&p.grad[k * cw..], &p.grad[..k * cw]);
                    p.ok = step.apply_row_range(&sparse.weight, 0, first, width, c0, cw, g_first, &mut p.undo)
                        && step.apply_row_range(&sparse.weight, 0, second, width, c0, cw, g_second, &mut p.undo)
                        && step.apply_row_range(&sparse.bias, 2, &[0], 0, c0, cw, &p.bias_grad, &mut p.undo);
                });
            }
        });
    }
    ws.undo.clear();
    let mut ok = parts.iter().all(|p| p.ok);
    if let (Some(norm), true) = (&model.norm, ok) {
        ok = step.apply_rows(&norm.feat_bias, 1, &ws.slots.ids, 1, &ws.grad_feat_bias, &mut ws.undo);
    }
    for (l, layer) in model.dense.iter().enumerate() {
        let key = 3 + 2 * l as u32;
        ok = ok
            && step.apply_rows(&layer.weight, key, &[0], layer.n_in * layer.n_out, &ws.grad_dense_w[l], &mut ws.undo)
            && step.apply_rows(&layer.bias, key + 1, &[0], layer.n_out, &ws.grad_dense_b[l], &mut ws.undo);
    }
    if !ok {
        let logs: Vec<&UndoLog> = parts.iter().map(|p| &p.undo).chain(std::iter::once(&ws.undo)).collect();
        model.undo_logs(&logs);
        parts.iter_mut().for_each(|p| p.undo.clear());
        ws.undo.clear();
        return Err(Error::Diverged(
            "an update would make a weight or optimizer state non-finite; it was not applied".into(),
        ));
    }
    Ok(mean_loss)
}
