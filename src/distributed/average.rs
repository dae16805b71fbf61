//! Synchronous model averaging (as Vowpal Wabbit's allreduce): every worker trains its own copy
//! of the model for K batches, then all copies are replaced by their average. Only what changed
//! travels: each worker sends the rows that differ from the last synchronized model (its
//! `SyncPoint`), and the average of those deltas is applied to every copy, so all copies are equal
//! again. A row is averaged over the workers that changed it: a worker whose batches never held
//! a rare feature has nothing to say about it, and counting it as zero would shrink every rare
//! feature's learning by the number of workers (Vowpal Wabbit's adaptive allreduce weights each
//! node by what it saw, to the same end). Every tensor is averaged, optimizer state included,
//! except max_abs, a running maximum, which takes the largest delta.
//! Sums run in worker order, so a run is deterministic given the seed and worker count.

use rayon::prelude::*;

use crate::error::Result;
use crate::invalid;
use crate::model::Model;
use crate::train::shared::load;
use crate::train::SharedF32;

/// The changed rows of one tensor: `values` holds `rows.len() * row_len` deltas.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDelta {
    pub name: String,
    pub row_len: usize,
    pub rows: Vec<u64>,
    pub values: Vec<f32>,
}

/// What one worker changed since the last synchronization (or the average of several).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDelta {
    pub tensors: Vec<TensorDelta>,
    /// Optimizer updates made (Adam's t advances by their average).
    pub steps: u64,
}

/// Rows of the sparse table and per-feature tensors are synchronized row by row; the small dense
/// tensors as one row.
fn row_len(model: &Model, name: &str, len: usize) -> usize {
    if name.starts_with("sparse.weight") {
        model.config.sparse_width
    } else if name.starts_with("norm.") {
        1
    } else {
        len.max(1)
    }
}

/// The model as it was at the last synchronization.
pub struct SyncPoint {
    base: Vec<Vec<f32>>,
    step: u64,
    /// Rows each tensor sent in the last delta (they differ from `base` until `apply`).
    sent: Vec<Vec<u64>>,
}

impl SyncPoint {
    pub fn new(model: &Model) -> Self {
        let base: Vec<Vec<f32>> = model.tensors().iter().map(|(_, _, t)| t.to_vec()).collect();
        let sent = vec![Vec::new(); base.len()];
        Self { base, step: model.step.load(std::sync::atomic::Ordering::Relaxed), sent }
    }

    /// The rows of `model` that differ from this sync point, as deltas.
    pub fn delta(&mut self, model: &Model) -> ModelDelta {
        let tensors = model.tensors();
        let mut out = Vec::with_capacity(tensors.len());
        for ((name, _, t), (base, sent)) in tensors.into_iter().zip(self.base.iter().zip(self.sent.iter_mut())) {
            let row_len = row_len(model, &name, t.len());
            // Compared in place: copying a large table first would double the memory traffic.
            let changed: Vec<(u64, Vec<f32>)> = base
                .par_chunks(row_len)
                .enumerate()
                .filter_map(|(r, b)| {
                    let c = t.range(r * row_len, b.len());
                    c.iter()
                        .zip(b)
                        .any(|(x, y)| load(x).to_bits() != y.to_bits())
                        .then(|| (r as u64, c.iter().zip(b).map(|(x, y)| load(x) - y).collect()))
                })
                .collect();
            *sent = changed.iter().map(|(r, _)| *r).collect();
            out.push(TensorDelta {
                name,
                row_len,
                rows: sent.clone(),
                values: changed.into_iter().flat_map(|(_, v)| v).collect(),
            });
        }
        let steps = model.step.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(self.step);
        ModelDelta { tensors: out, steps }
    }

    /// Moves this sync point by `average` and makes `model` equal to it: the rows this worker
    /// sent go back to the base, then every averaged row gets base + average.
    pub fn apply(&mut self, model: &Model, average: &ModelDelta) -> Result<()> {
        let tensors = model.tensors();
        if average.tensors.len() != tensors.len() {
            return Err(invalid!("the average has {} tensors, the model {}", average.tensors.len(), tensors.len()));
        }
        // Checked in full before anything changes: a bad average leaves the model as it was.
        for (k, ((name, _, t), avg)) in tensors.iter().zip(&average.tensors).enumerate() {
            if avg.name != *name || avg.row_len != row_len(model, name, t.len()) {
                return Err(invalid!("the average's tensor {k} is '{}', the model's '{name}'", avg.name));
            }
            check_shape(avg, t)?;
        }
        for (k, ((_, _, t), avg)) in tensors.iter().zip(&average.tensors).enumerate() {
            let base = &mut self.base[k];
            let w = avg.row_len;
            for &r in &self.sent[k] {
                let r = r as usize;
                t.store_from(r * w, &base[r * w..(r + 1) * w]);
            }
            for (&r, d) in avg.rows.iter().zip(avg.values.chunks_exact(w)) {
                let r = r as usize;
                let row = &mut base[r * w..(r + 1) * w];
                row.iter_mut().zip(d).for_each(|(b, d)| *b += d);
                t.store_from(r * w, row);
            }
            self.sent[k].clear();
        }
        self.step += average.steps;
        model.step.store(self.step, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn check_shape(delta: &TensorDelta, t: &SharedF32) -> Result<()> {
    let w = delta.row_len;
    if w == 0 || delta.values.len() != delta.rows.len() * w {
        return Err(invalid!("tensor '{}': {} delta values for {} rows of {w}", delta.name, delta.values.len(), delta.rows.len()));
    }
    if let Some(&r) = delta.rows.iter().find(|&&r| (r as usize + 1) * w > t.len()) {
        return Err(invalid!("tensor '{}': delta row {r} is out of range", delta.name));
    }
    Ok(())
}

/// The average of the workers' deltas (in worker order): each row's mean over the workers that
/// changed it; for max_abs the largest delta. Rows come out ascending.
pub fn average(deltas: &[ModelDelta]) -> Result<ModelDelta> {
    let first = deltas.first().ok_or_else(|| invalid!("no deltas to average"))?;
    if deltas.iter().any(|d| d.tensors.len() != first.tensors.len()) {
        return Err(invalid!("the workers' deltas do not hold the same tensors"));
    }
    let mut tensors = Vec::with_capacity(first.tensors.len());
    for (k, proto) in first.tensors.iter().enumerate() {
        let parts: Vec<&TensorDelta> = deltas
            .iter()
            .map(|d| d.tensors.get(k).filter(|t| t.name == proto.name && t.row_len == proto.row_len))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid!("the workers' deltas do not hold the same tensors"))?;
        let w = proto.row_len;
        for p in &parts {
            if w == 0 || p.values.len() != p.rows.len() * w {
                return Err(invalid!("tensor '{}': {} delta values for {} rows of {w}", p.name, p.values.len(), p.rows.len()));
            }
        }
        let mut rows: Vec<u64> = parts.iter().flat_map(|p| p.rows.iter().copied()).collect();
        rows.sort_unstable();
        rows.dedup();
        let is_max = proto.name == "norm.max_abs";
        let mut values = vec![0.0f32; rows.len() * w];
        let mut changed_by = vec![0u32; rows.len()];
        for p in &parts {
            for (&r, d) in p.rows.iter().zip(p.values.chunks_exact(w)) {
                let k = rows.binary_search(&r).expect("every row was collected");
                changed_by[k] += 1;
                for (acc, &v) in values[k * w..(k + 1) * w].iter_mut().zip(d) {
                    *acc = if is_max { acc.max(v) } else { *acc + v };
                }
            }
        }
        if !is_max {
            for (row, &count) in values.chunks_exact_mut(w).zip(&changed_by) {
                row.iter_mut().for_each(|v| *v /= count as f32);
            }
        }
        tensors.push(TensorDelta { name: proto.name.clone(), row_len: w, rows, values });
    }
    let total: u64 = deltas.iter().map(|d| d.steps).sum();
    let steps = (total as f64 / deltas.len() as f64).round() as u64;
    Ok(ModelDelta { tensors, steps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{make_ctr, CtrSpec};
    use crate::data::Task;
    use crate::model::{Batch, Head, ModelConfig};
    use crate::optim::{OptimizerConfig, OptimizerKind};

    fn config() -> ModelConfig {
        ModelConfig {
            n_features: 1 << 10,
            sparse_width: 4,
            head: Head::Mlp { hidden: vec![3] },
            task: Task::Binary,
            normalize: true,
            optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
            seed: 2,
        }
    }

    /// After a sync every copy equals, row by row, the mean of the copies that changed the row
    /// (max for max_abs), computed densely here as the reference.
    #[test]
    fn sync_makes_every_copy_the_mean() {
        let data = make_ctr(&CtrSpec { n_rows: 400, n_features: 1 << 10, seed: 6, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let models: Vec<Model> = (0..3).map(|_| Model::new(config()).unwrap()).collect();
        let mut points: Vec<SyncPoint> = models.iter().map(SyncPoint::new).collect();
        for round in 0..2u32 {
            let before: Vec<Vec<Vec<f32>>> = models.iter().map(|m| m.tensors().iter().map(|(_, _, t)| t.to_vec()).collect()).collect();
            for (w, m) in models.iter().enumerate() {
                let mut ws = m.workspace();
                let rows: Vec<u32> = (0..40).map(|i| (round * 200 + w as u32 * 40 + i) % 400).collect();
                m.train_batch(&Batch { x: &x, rows: &rows, targets: &data[0].labels, weights: None }, &mut ws).unwrap();
            }
            let after: Vec<Vec<Vec<f32>>> = models.iter().map(|m| m.tensors().iter().map(|(_, _, t)| t.to_vec()).collect()).collect();
            let deltas: Vec<ModelDelta> = models.iter().zip(&mut points).map(|(m, p)| p.delta(m)).collect();
            let avg = average(&deltas).unwrap();
            for (m, p) in models.iter().zip(&mut points) {
                p.apply(m, &avg).unwrap();
            }
            let names: Vec<String> = models[0].tensors().into_iter().map(|(n, _, _)| n).collect();
            for (k, name) in names.iter().enumerate() {
                let synced = models[0].tensors()[k].2.to_vec();
                for m in &models[1..] {
                    assert_eq!(m.tensors()[k].2.to_vec(), synced, "{name}");
                }
                let w = if name.starts_with("sparse.weight") { 4 } else if name.starts_with("norm.") { 1 } else { synced.len() };
                for (i, &s) in synced.iter().enumerate() {
                    let r = i / w;
                    let b = &before[0][k];
                    let changed = |a: &Vec<Vec<f32>>| a[k][r * w..(r + 1) * w] != b[r * w..(r + 1) * w];
                    let count = after.iter().filter(|a| changed(a)).count();
                    let expected = if name == "norm.max_abs" {
                        after.iter().map(|a| a[k][i]).fold(b[i], f32::max)
                    } else if count == 0 {
                        b[i]
                    } else {
                        b[i] + after.iter().map(|a| (a[k][i] - b[i]) as f64).sum::<f64>() as f32 / count as f32
                    };
                    assert!((s - expected).abs() <= 1e-6 * expected.abs().max(1e-3), "{name}[{i}]: {s} vs {expected}");
                }
            }
            assert_eq!(models[0].step.load(std::sync::atomic::Ordering::Relaxed), round as u64 + 1);
        }
    }

    #[test]
    fn mismatched_deltas_are_errors() {
        let m = Model::new(config()).unwrap();
        let mut p = SyncPoint::new(&m);
        let mut d = p.delta(&m);
        assert!(d.tensors.iter().all(|t| t.rows.is_empty()));
        assert!(average(&[]).is_err());
        d.tensors[0].rows.push(1 << 40);
        let w = d.tensors[0].row_len;
        d.tensors[0].values.extend(vec![0.0; w]);
        assert!(p.apply(&m, &d).is_err());
        d.tensors.pop();
        assert!(average(&[d.clone(), p.delta(&m)]).is_err());
    }
}
