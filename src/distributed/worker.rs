//! The worker side of parameter-server training. A worker holds no table: per batch it lists the
//! distinct ids its rows use (grouped by shard, so each shard gets one pull), receives those rows,
//! and runs the ordinary model code on a compact copy in which the batch's ids are renumbered
//! 0..n_unique. The gradients come back in the same id order, ready to push. The math is the
//! single-process model's, so a worker computes exactly what `Model::compute_gradients` would on
//! a model holding the pulled rows.

use crate::data::{CsrView, Idx};
use crate::error::Result;
use crate::invalid;
use crate::model::workspace::{RowSlots, Workspace};
use crate::model::{Batch, Model, ModelConfig};
use crate::optim::OptimizerKind;

use super::shard::ShardLayout;

pub struct PullWorker {
    config: ModelConfig,
    shard_count: usize,
    /// The compact model: row k holds the batch's k-th id. Its optimizer is never used.
    local: Model,
    ws: Workspace,
    dedup: RowSlots,
    /// Distinct ids of the loaded batch, by shard, ascending within a shard.
    ids: Vec<u64>,
    /// `ids[shard_offsets[s]..shard_offsets[s + 1]]` are shard s's.
    shard_offsets: Vec<usize>,
    indptr: Vec<u32>,
    compact_ids: Vec<u32>,
    values: Vec<f32>,
    targets: Vec<f32>,
    weights: Option<Vec<f32>>,
    /// Gradients of the last `compute`, in `ids` order.
    pub row_grads: Vec<f32>,
    pub feat_bias_grads: Vec<f32>,
    /// max_abs of each id after the batch (what the shards raise theirs to).
    pub max_abs: Vec<f32>,
    /// Gradients of the dense tensors, flattened as `DenseShard::pull` orders them.
    pub dense_grads: Vec<f32>,
}

fn compact_config(config: &ModelConfig, capacity: usize) -> ModelConfig {
    let mut c = config.clone();
    c.n_features = capacity;
    // No optimizer state (the shards own it) and no optimizer settings to validate (FTRL's l1).
    c.optimizer.kind = OptimizerKind::Sgd;
    c.optimizer.l1 = 0.0;
    c
}

impl PullWorker {
    pub fn new(config: ModelConfig, shard_count: usize) -> Result<Self> {
        config.validate()?;
        ShardLayout::new(0, shard_count, config.n_features)?;
        let local = Model::new(compact_config(&config, 1024))?;
        let ws = local.workspace();
        Ok(Self {
            config,
            shard_count,
            local,
            ws,
            dedup: RowSlots::default(),
            ids: Vec::new(),
            shard_offsets: Vec::new(),
            indptr: Vec::new(),
            compact_ids: Vec::new(),
            values: Vec::new(),
            targets: Vec::new(),
            weights: None,
            row_grads: Vec::new(),
            feat_bias_grads: Vec::new(),
            max_abs: Vec::new(),
            dense_grads: Vec::new(),
        })
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn shard_offsets(&self) -> &[usize] {
        &self.shard_offsets
    }

    /// Loads rows `rows` of `x` as the next batch: lists its distinct ids (see `ids`) and keeps
    /// a renumbered copy of the rows, their targets and weights.
    pub fn load_batch<P: Idx, I: Idx>(
        &mut self,
        x: &CsrView<'_, P, I>,
        rows: &[u32],
        targets: &[f32],
        weights: Option<&[f32]>,
    ) -> Result<()> {
        if rows.is_empty() {
            return Err(invalid!("empty batch"));
        }
        if x.n_features() > self.config.n_features {
            return Err(invalid!("X has {} features but the model was built for n_features={}", x.n_features(), self.config.n_features));
        }
        if targets.len() != x.n_rows() || weights.is_some_and(|w| w.len() != x.n_rows()) {
            return Err(invalid!("X has {} rows but there are {} targets", x.n_rows(), targets.len()));
        }
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= x.n_rows()) {
            return Err(invalid!("row {r} is out of range for {} rows", x.n_rows()));
        }
        self.dedup.reset();
        for &r in rows {
            for id in x.row(r as usize).0 {
                self.dedup.slot_of(id.as_usize() as u64);
            }
        }
        let count = self.shard_count as u64;
        // Sorted by shard, then id: one contiguous pull per shard, read in address order there.
        let mut order: Vec<u32> = (0..self.dedup.len() as u32).collect();
        let ids = &self.dedup.ids;
        order.sort_unstable_by_key(|&s| (ids[s as usize] % count, ids[s as usize]));
        let mut position_of_slot = vec![0u32; order.len()];
        self.ids.clear();
        for (pos, &s) in order.iter().enumerate() {
            position_of_slot[s as usize] = pos as u32;
            self.ids.push(ids[s as usize]);
        }
        self.shard_offsets.clear();
        self.shard_offsets.push(0);
        for s in 0..self.shard_count {
            let end = self.shard_offsets[s] + self.ids[self.shard_offsets[s]..].iter().take_while(|&&id| id % count == s as u64).count();
            self.shard_offsets.push(end);
        }
        self.indptr.clear();
        self.indptr.push(0);
        self.compact_ids.clear();
        self.values.clear();
        self.targets.clear();
        let mut batch_weights = weights.map(|_| Vec::with_capacity(rows.len()));
        for &r in rows {
            let (row_ids, row_values) = x.row(r as usize);
            for id in row_ids {
                let (slot, _) = self.dedup.slot_of(id.as_usize() as u64);
                self.compact_ids.push(position_of_slot[slot as usize]);
            }
            self.values.extend_from_slice(row_values);
            self.indptr.push(self.compact_ids.len() as u32);
            self.targets.push(targets[r as usize]);
            if let (Some(out), Some(w)) = (batch_weights.as_mut(), weights) {
                out.push(w[r as usize]);
            }
        }
        self.weights = batch_weights;
        let unique = self.ids.len();
        if unique > self.local.config.n_features {
            self.local = Model::new(compact_config(&self.config, unique.next_power_of_two()))?;
            self.ws = self.local.workspace();
        }
        Ok(())
    }

    /// Number of values `compute` takes for the dense tensors.
    pub fn dense_len(&self) -> usize {
        self.local.sparse.bias.len() + self.local.dense.iter().map(|d| d.weight.len() + d.bias.len()).sum::<usize>()
    }

    /// Forward and backward on the loaded batch with the pulled values: `rows` (ids x width),
    /// `feat_bias` and `max_abs` (one per id when normalizing, else empty), `dense` (flattened
    /// dense tensors). Returns the batch's mean loss; the gradients are in the public fields.
    pub fn compute(&mut self, rows: &[f32], feat_bias: &[f32], max_abs: &[f32], dense: &[f32]) -> Result<f64> {
        let (unique, width) = (self.ids.len(), self.config.sparse_width);
        if unique == 0 && self.targets.is_empty() {
            return Err(invalid!("no batch is loaded"));
        }
        if rows.len() != unique * width {
            return Err(invalid!("{} pulled row values for {unique} ids of width {width}", rows.len()));
        }
        let per_id = if self.config.normalize { unique } else { 0 };
        if feat_bias.len() != per_id || max_abs.len() != per_id {
            return Err(invalid!(
                "expected {per_id} pulled feature biases and max_abs values, got {} and {}",
                feat_bias.len(),
                max_abs.len()
            ));
        }
        if dense.len() != self.dense_len() {
            return Err(invalid!("{} pulled dense values, expected {}", dense.len(), self.dense_len()));
        }
        let model = &self.local;
        model.sparse.weight.values.store_from(0, rows);
        if let Some(norm) = &model.norm {
            norm.feat_bias.values.store_from(0, feat_bias);
            norm.max_abs.store_from(0, max_abs);
        }
        let mut start = 0;
        let mut take = |len: usize| {
            let part = &dense[start..start + len];
            start += len;
            part
        };
        model.sparse.bias.values.copy_from(take(width));
        for layer in &model.dense {
            layer.weight.values.copy_from(take(layer.weight.len()));
            layer.bias.values.copy_from(take(layer.bias.len()));
        }
        let x = CsrView::new(&self.indptr, &self.compact_ids, &self.values, model.config.n_features)?;
        let batch_rows: Vec<u32> = (0..self.targets.len() as u32).collect();
        let batch = Batch { x: &x, rows: &batch_rows, targets: &self.targets, weights: self.weights.as_deref() };
        let loss = model.compute_gradients(&batch, &mut self.ws)?;

        let ws = &self.ws;
        self.row_grads.clear();
        self.row_grads.resize(unique * width, 0.0);
        self.feat_bias_grads.clear();
        self.feat_bias_grads.resize(per_id, 0.0);
        for (slot, &k) in ws.batch.slots.ids.iter().enumerate() {
            let k = k as usize;
            self.row_grads[k * width..(k + 1) * width].copy_from_slice(&ws.grad_rows[slot * width..(slot + 1) * width]);
            if per_id > 0 {
                self.feat_bias_grads[k] = ws.grad_feat_bias[slot];
            }
        }
        self.max_abs.clear();
        if let Some(norm) = &model.norm {
            self.max_abs.extend((0..unique).map(|k| norm.max_abs.get(k)));
        }
        self.dense_grads.clear();
        self.dense_grads.extend_from_slice(&ws.grad_sparse_bias);
        for (gw, gb) in ws.grad_dense_w.iter().zip(&ws.grad_dense_b) {
            self.dense_grads.extend_from_slice(gw);
            self.dense_grads.extend_from_slice(gb);
        }
        Ok(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::super::shard::{DenseShard, ParameterShard};
    use super::*;
    use crate::data::synthetic::{make_ctr, CtrSpec};
    use crate::data::Task;
    use crate::model::Head;
    use crate::optim::OptimizerConfig;

    /// A worker with pulled rows computes the single-process model's gradients, and pushing them
    /// to the shards gives the single-process update.
    #[test]
    fn pull_compute_push_equals_one_local_step() {
        let data = make_ctr(&CtrSpec { n_rows: 300, n_features: 1 << 10, seed: 3, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let labels = &data[0].labels;
        for (head, width) in [(Head::Linear, 1), (Head::Mlp { hidden: vec![5] }, 6)] {
            let config = ModelConfig {
                n_features: 1 << 10,
                sparse_width: width,
                head,
                task: Task::Binary,
                normalize: true,
                optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.05, l1: 0.0, l2: 0.0 },
                seed: 8,
            };
            let model = Model::new(config.clone()).unwrap();
            let shards: Vec<ParameterShard> = (0..3).map(|i| ParameterShard::new(config.clone(), i, 3).unwrap()).collect();
            let dense = DenseShard::new(&config).unwrap();
            let mut worker = PullWorker::new(config.clone(), 3).unwrap();
            let mut ws = model.workspace();
            for batch_rows in [(0..64).collect::<Vec<u32>>(), (64..65).collect(), (65..300).collect()] {
                let batch = Batch { x: &x, rows: &batch_rows, targets: labels, weights: None };
                let local_loss = model.train_batch(&batch, &mut ws).unwrap();

                worker.load_batch(&x, &batch_rows, labels, None).unwrap();
                let offsets = worker.shard_offsets().to_vec();
                let ids = worker.ids().to_vec();
                let (mut rows, mut fb, mut ma) = (Vec::new(), Vec::new(), Vec::new());
                let (mut r, mut f, mut m) = (Vec::new(), Vec::new(), Vec::new());
                for (s, shard) in shards.iter().enumerate() {
                    shard.pull(&ids[offsets[s]..offsets[s + 1]], &mut r, &mut f, &mut m).unwrap();
                    rows.extend_from_slice(&r);
                    fb.extend_from_slice(&f);
                    ma.extend_from_slice(&m);
                }
                let mut d = Vec::new();
                dense.pull(&mut d);
                let loss = worker.compute(&rows, &fb, &ma, &d).unwrap();
                assert!((loss - local_loss).abs() < 1e-6 * local_loss.abs().max(1.0), "{loss} vs {local_loss}");
                for (s, shard) in shards.iter().enumerate() {
                    let (a, b) = (offsets[s], offsets[s + 1]);
                    shard
                        .push(&ids[a..b], &worker.row_grads[a * width..b * width], &worker.feat_bias_grads[a..b], &worker.max_abs[a..b])
                        .unwrap();
                }
                dense.push(&worker.dense_grads).unwrap();
            }
            // Every row of every shard equals the model's row.
            let w = model.sparse.weight.values.to_vec();
            let max_abs = model.tensor("norm.max_abs").unwrap().to_vec();
            for shard in &shards {
                let local = shard.weight.values.to_vec();
                for r in 0..shard.layout.n_local() {
                    let id = shard.layout.global(r) as usize;
                    for j in 0..width {
                        let (a, b) = (local[r * width + j], w[id * width + j]);
                        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "id {id}: {a} vs {b}");
                    }
                    assert_eq!(shard.norm.as_ref().unwrap().max_abs.get(r), max_abs[id]);
                }
            }
            let mut d = Vec::new();
            dense.pull(&mut d);
            let mut expected = model.sparse.bias.values.to_vec();
            for layer in &model.dense {
                expected.extend(layer.weight.values.to_vec());
                expected.extend(layer.bias.values.to_vec());
            }
            for (a, b) in d.iter().zip(&expected) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn every_optimizer_config_builds_a_worker() {
        for (kind, l1) in [(OptimizerKind::Ftrl, 0.01), (OptimizerKind::Adagrad, 0.0), (OptimizerKind::LazyAdam, 0.0)] {
            let config = ModelConfig {
                n_features: 64,
                sparse_width: 1,
                head: Head::Linear,
                task: Task::Binary,
                normalize: true,
                optimizer: OptimizerConfig { kind, learning_rate: 0.1, l1, l2: 0.01 },
                seed: 1,
            };
            PullWorker::new(config, 3).unwrap();
        }
    }

    #[test]
    fn bad_calls_are_errors() {
        let data = make_ctr(&CtrSpec { n_rows: 10, n_features: 64, seed: 3, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let config = ModelConfig {
            n_features: 64,
            sparse_width: 1,
            head: Head::Linear,
            task: Task::Binary,
            normalize: false,
            optimizer: OptimizerConfig { kind: OptimizerKind::Sgd, learning_rate: 0.1, l1: 0.0, l2: 0.0 },
            seed: 1,
        };
        let mut worker = PullWorker::new(config, 2).unwrap();
        assert!(worker.load_batch(&x, &[], &data[0].labels, None).is_err());
        assert!(worker.load_batch(&x, &[10], &data[0].labels, None).is_err());
        worker.load_batch(&x, &[0, 1], &data[0].labels, None).unwrap();
        let n = worker.ids().len();
        assert!(worker.compute(&vec![0.0; n + 1], &[], &[], &[0.0]).is_err());
        assert!(worker.compute(&vec![0.0; n], &[], &[], &[]).is_err());
        assert!(worker.compute(&vec![0.0; n], &[], &[], &[0.0]).is_ok());
    }
}
