//! The talk's "approach A", for `sparselin bench`: every batch is split by rows between the
//! threads, each computes the gradients of its slice, the slices' gradients are summed per id
//! (the reduction approach B avoids), and one update is applied, split by ranges of ids. The
//! comparison it exists for: columns mode (`Parallel::Columns`) against this.
//! Never used for real training.

use std::sync::atomic::Ordering::Relaxed;

use super::columns::share;
use super::trainer::{resolve_threads, TrainData};
use crate::data::{epoch_order, Idx};
use crate::error::{Error, Result};
use crate::model::workspace::{zeroed, Workspace};
use crate::model::{Batch, Model};
use crate::optim::UndoLog;

/// Adds `scale` x the gradients of `part` (one slice of the batch) into `sum`, matching ids.
fn accumulate(sum: &mut Workspace, part: &Workspace, scale: f32, width: usize) {
    for (s, &id) in part.batch.slots.ids.iter().enumerate() {
        let (slot, new) = sum.batch.slots.slot_of(id);
        let slot = slot as usize;
        if new {
            sum.grad_rows.resize((slot + 1) * width, 0.0);
            if !part.grad_feat_bias.is_empty() {
                sum.grad_feat_bias.push(0.0);
            }
        }
        for (g, &p) in sum.grad_rows[slot * width..(slot + 1) * width].iter_mut().zip(&part.grad_rows[s * width..(s + 1) * width]) {
            *g += scale * p;
        }
        if let Some(&p) = part.grad_feat_bias.get(s) {
            sum.grad_feat_bias[slot] += scale * p;
        }
    }
    let pairs = std::iter::once((&mut sum.grad_sparse_bias, &part.grad_sparse_bias))
        .chain(sum.grad_dense_w.iter_mut().zip(&part.grad_dense_w))
        .chain(sum.grad_dense_b.iter_mut().zip(&part.grad_dense_b));
    for (total, p) in pairs {
        total.iter_mut().zip(p).for_each(|(t, &g)| *t += scale * g);
    }
}

/// One epoch with row-partitioned batches; returns (mean loss, seconds).
pub fn fit_row_partitioned<P: Idx, I: Idx>(
    model: &Model,
    data: &TrainData<'_, P, I>,
    batch_size: usize,
    threads: usize,
) -> Result<(f64, f64)> {
    let threads = resolve_threads(threads);
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Io(format!("cannot start worker threads: {e}")))?;
    let start = std::time::Instant::now();
    let width = model.config.sparse_width;
    let mut parts: Vec<Workspace> = (0..threads).map(|_| model.workspace()).collect();
    let mut sum = model.workspace();
    let order = epoch_order(data.x.n_rows(), model.config.seed, model.epochs_done.fetch_add(1, Relaxed), true);
    let mut loss_sum = 0.0;
    for rows in order.chunks(batch_size.max(1)) {
        let n = rows.len();
        let slices = threads.min(n);
        let losses: Vec<Result<f64>> = pool.install(|| {
            use rayon::prelude::*;
            parts[..slices]
                .par_iter_mut()
                .enumerate()
                .map(|(i, ws)| {
                    let batch = Batch { x: &data.x, rows: &rows[share(n, i, slices)], targets: data.targets, weights: data.weights };
                    model.compute_gradients(&batch, ws)
                })
                .collect()
        });
        // The gradient of the batch mean is the slices' means weighted by their share of rows.
        sum.batch.slots.reset();
        sum.grad_rows.clear();
        sum.grad_feat_bias.clear();
        zeroed(&mut sum.grad_sparse_bias, width);
        sum.grad_dense_w.iter_mut().chain(sum.grad_dense_b.iter_mut()).for_each(|g| g.fill(0.0));
        for (i, (part, loss)) in parts[..slices].iter().zip(losses).enumerate() {
            let slice_rows = share(n, i, slices).len();
            loss_sum += loss? * slice_rows as f64;
            accumulate(&mut sum, part, slice_rows as f32 / n as f32, width);
        }
        // The update, split by ranges of ids (whole rows of W and the feature bias each).
        let t = model.step.fetch_add(1, Relaxed) + 1;
        let step = model.config.optimizer.step(t);
        let (ids, grad_rows, grad_fb) = (&sum.batch.slots.ids, &sum.grad_rows, &sum.grad_feat_bias);
        pool.scope(|s| {
            for i in 0..threads {
                s.spawn(move |_| {
                    let range = share(ids.len(), i, threads);
                    let mut off = UndoLog::disabled();
                    let rows = &ids[range.clone()];
                    step.apply_rows(&model.sparse.weight, 0, rows, width, &grad_rows[range.start * width..range.end * width], &mut off);
                    if let Some(norm) = &model.norm {
                        step.apply_rows(&norm.feat_bias, 1, rows, 1, &grad_fb[range], &mut off);
                    }
                });
            }
        });
        let mut off = UndoLog::disabled();
        step.apply_rows(&model.sparse.bias, 2, &[0], width, &sum.grad_sparse_bias, &mut off);
        for (l, layer) in model.dense.iter().enumerate() {
            step.apply_rows(&layer.weight, 3 + 2 * l as u32, &[0], layer.n_in * layer.n_out, &sum.grad_dense_w[l], &mut off);
            step.apply_rows(&layer.bias, 4 + 2 * l as u32, &[0], layer.n_out, &sum.grad_dense_b[l], &mut off);
        }
    }
    Ok((loss_sum / order.len().max(1) as f64, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{make_ctr, CtrSpec};
    use crate::data::Task;
    use crate::model::{Head, ModelConfig};
    use crate::optim::{OptimizerConfig, OptimizerKind};

    /// On one thread approach A is ordinary training: the same first update as `train_batch`.
    #[test]
    fn one_slice_equals_one_training_step() {
        let day = make_ctr(&CtrSpec { n_rows: 64, n_features: 1 << 10, seed: 5, ..Default::default() }).unwrap().remove(0);
        let x = day.matrix.view().unwrap();
        let config = ModelConfig {
            n_features: 1 << 10,
            sparse_width: 6,
            head: Head::Mlp { hidden: vec![4] },
            task: Task::Binary,
            normalize: true,
            optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
            seed: 1,
        };
        let (a, b) = (Model::new(config.clone()).unwrap(), Model::new(config).unwrap());
        let data = TrainData::new(x, &day.labels, None, &a).unwrap();
        fit_row_partitioned(&a, &data, 64, 1).unwrap();
        let order = epoch_order(64, b.config.seed, b.epochs_done.fetch_add(1, Relaxed), true);
        let batch = Batch { x: &data.x, rows: &order, targets: data.targets, weights: None };
        b.train_batch(&batch, &mut b.workspace()).unwrap();
        for ((name, _, x), (_, _, y)) in a.tensors().into_iter().zip(b.tensors()) {
            let (x, y) = (x.to_vec(), y.to_vec());
            assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-6 * (1.0 + q.abs())), "{name}");
        }
    }

    /// On several threads the update is the batch's gradient all the same (up to rounding).
    /// Without normalization: slices normalizing at once see each other's max_abs in any order.
    #[test]
    fn slices_sum_to_the_batch_gradient() {
        let day = make_ctr(&CtrSpec { n_rows: 100, n_features: 1 << 10, seed: 6, ..Default::default() }).unwrap().remove(0);
        let x = day.matrix.view().unwrap();
        let config = ModelConfig {
            n_features: 1 << 10,
            sparse_width: 5,
            head: Head::Mlp { hidden: vec![3] },
            task: Task::Binary,
            normalize: false,
            optimizer: OptimizerConfig { kind: OptimizerKind::Sgd, learning_rate: 0.1, l1: 0.0, l2: 0.0 },
            seed: 2,
        };
        let (a, b) = (Model::new(config.clone()).unwrap(), Model::new(config).unwrap());
        let data = TrainData::new(x, &day.labels, None, &a).unwrap();
        fit_row_partitioned(&a, &data, 100, 3).unwrap();
        let order = epoch_order(100, b.config.seed, b.epochs_done.fetch_add(1, Relaxed), true);
        let batch = Batch { x: &data.x, rows: &order, targets: data.targets, weights: None };
        b.train_batch(&batch, &mut b.workspace()).unwrap();
        for ((name, _, x), (_, _, y)) in a.tensors().into_iter().zip(b.tensors()) {
            let (x, y) = (x.to_vec(), y.to_vec());
            assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + q.abs())), "{name}");
        }
    }
}
