//! The talk's baseline, for `sparselin bench`: the sparse layer's gradient materialized as a
//! dense [n_features x width] matrix and a dense (not lazy) optimizer step over every row of the
//! table, as `tf.sparse_tensor_dense_matmul` + a dense optimizer do. Same forward math as the
//! optimized path; only the update differs. Never used for real training.

use rayon::prelude::*;

use super::trainer::{resolve_threads, TrainData};
use crate::data::{epoch_order, Idx};
use crate::error::{Error, Result};
use crate::model::{Batch, Model};
use crate::optim::UndoLog;
use crate::train::shared::{huge_page_zeros, prefetch_slice, rows_ahead};

/// The talk's comparison points that `sparselin bench` runs beside the optimized trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Dense gradient and dense optimizer step (`fit_dense_baseline`).
    DenseBaseline,
    /// Approach A: batches split by rows between threads (`row_partition::fit_row_partitioned`).
    RowPartitioned,
}

impl Comparison {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "dense_baseline" => Ok(Self::DenseBaseline),
            "row_partitioned" => Ok(Self::RowPartitioned),
            other => Err(crate::invalid!("unknown comparison '{other}': use 'dense_baseline' or 'row_partitioned'")),
        }
    }
}

/// One epoch of `kind`; returns (mean loss, seconds).
pub fn fit_comparison<P: Idx, I: Idx>(
    kind: Comparison,
    model: &Model,
    data: &TrainData<'_, P, I>,
    batch_size: usize,
    threads: usize,
) -> Result<(f64, f64)> {
    match kind {
        Comparison::DenseBaseline => fit_dense_baseline(model, data, batch_size, threads),
        Comparison::RowPartitioned => super::row_partition::fit_row_partitioned(model, data, batch_size, threads),
    }
}

/// One epoch with dense gradients and dense optimizer steps; returns (mean loss, seconds).
pub fn fit_dense_baseline<P: Idx, I: Idx>(
    model: &Model,
    data: &TrainData<'_, P, I>,
    batch_size: usize,
    threads: usize,
) -> Result<(f64, f64)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(resolve_threads(threads))
        .build()
        .map_err(|e| Error::Io(format!("cannot start worker threads: {e}")))?;
    let start = std::time::Instant::now();
    let n_features = model.config.n_features;
    let width = model.config.sparse_width;
    let mut dense_w = vec![0.0f32; n_features * width];
    let mut dense_fb = vec![0.0f32; if model.norm.is_some() { n_features } else { 0 }];
    let mut ws = model.workspace();
    let order = epoch_order(data.x.n_rows(), model.config.seed, model.epochs_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed), true);
    let mut loss_sum = 0.0;
    for rows in order.chunks(batch_size.max(1)) {
        let batch = Batch { x: &data.x, rows, targets: data.targets, weights: data.weights };
        loss_sum += model.compute_gradients(&batch, &mut ws)? * rows.len() as f64;
        pool.install(|| {
            dense_w.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
            dense_fb.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        });
        for (slot, &id) in ws.batch.slots.ids.iter().enumerate() {
            let id = id as usize;
            dense_w[id * width..(id + 1) * width].copy_from_slice(&ws.grad_rows[slot * width..(slot + 1) * width]);
            if let Some(g) = dense_fb.get_mut(id) {
                *g = ws.grad_feat_bias[slot];
            }
        }
        let t = model.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let step = model.config.optimizer.step(t);
        const ROWS: usize = 4096;
        pool.install(|| {
            dense_w.par_chunks(ROWS * width).enumerate().for_each(|(c, g)| {
                step.apply_row_range(&model.sparse.weight, 0, &[0], 0, c * ROWS * width, g.len(), g, &mut UndoLog::disabled());
            });
            if let Some(norm) = &model.norm {
                dense_fb.par_chunks(ROWS).enumerate().for_each(|(c, g)| {
                    step.apply_row_range(&norm.feat_bias, 1, &[0], 0, c * ROWS, g.len(), g, &mut UndoLog::disabled());
                });
            }
        });
        let mut log = UndoLog::disabled();
        step.apply_rows(&model.sparse.bias, 2, &[0], width, &ws.grad_sparse_bias, &mut log);
        for (l, layer) in model.dense.iter().enumerate() {
            step.apply_rows(&layer.weight, 3 + 2 * l as u32, &[0], layer.n_in * layer.n_out, &ws.grad_dense_w[l], &mut log);
            step.apply_rows(&layer.bias, 4 + 2 * l as u32, &[0], layer.n_out, &ws.grad_dense_b[l], &mut log);
        }
    }
    Ok((loss_sum / order.len().max(1) as f64, start.elapsed().as_secs_f64()))
}

/// The memory roofline of the lazy Adam step, for `sparselin bench`: plain-Rust Adam updates (no
/// atomics, no undo log, no checks) of `width`-wide rows of a plain `n_rows` x `width` table, W,
/// m and v in three arrays on huge pages as the model keeps them, for each list of distinct ids
/// in `batches`, rows prefetched as far ahead as the model's own update does (without, the same
/// loop runs at a quarter of the rate: it waits for every row). Returns distinct rows updated
/// per second, the best of `repeats` passes after a first pass that commits the pages.
pub fn adam_row_roofline(n_rows: usize, width: usize, batches: &[Vec<u64>], repeats: usize) -> Result<f64> {
    let n = n_rows.checked_mul(width).ok_or_else(|| crate::invalid!("n_rows * width overflows"))?;
    if let Some(&id) = batches.iter().flatten().find(|&&id| id as usize >= n_rows) {
        return Err(crate::invalid!("row id {id} is out of range [0, {n_rows})"));
    }
    // On huge pages, as the model's tables are.
    let (mut w, mut m, mut v) = (huge_page_zeros::<f32>(n)?, huge_page_zeros::<f32>(n)?, huge_page_zeros::<f32>(n)?);
    w.fill(0.5);
    let grads: Vec<f32> = (0..width).map(|j| (j as f32 - width as f32 / 2.0) * 1e-4).collect();
    let rows: usize = batches.iter().map(Vec::len).sum();
    let ahead_rows = rows_ahead(width);
    let mut best = 0.0f64;
    for pass in 0..=repeats.max(1) {
        let start = std::time::Instant::now();
        for ids in batches {
            for (k, &id) in ids.iter().enumerate() {
                if let Some(&ahead) = ids.get(k + ahead_rows) {
                    let r = ahead as usize * width..(ahead as usize + 1) * width;
                    [&w[r.clone()], &m[r.clone()], &v[r]].into_iter().for_each(prefetch_slice);
                }
                let r = id as usize * width..(id as usize + 1) * width;
                for (((w, m), v), &g) in w[r.clone()].iter_mut().zip(&mut m[r.clone()]).zip(&mut v[r]).zip(&grads) {
                    *m = 0.9 * *m + 0.1 * g;
                    *v = 0.999 * *v + 0.001 * g * g;
                    *w -= 1e-3 * *m / (v.sqrt() + 1e-8);
                }
            }
        }
        std::hint::black_box((&w, &m, &v));
        if pass > 0 {
            best = best.max(rows as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}
