//! Parameter-server shards (Downpour SGD / distributed Hogwild). The sparse table is split by
//! id modulo the shard count: shard `s` of `S` holds the rows `id % S == s` at local row
//! `id / S`, with their feature bias, max_abs and optimizer state, so hot and cold ids spread
//! evenly. The small tensors after the sparse table (its bias, the dense layers) live in one
//! `DenseShard`. Workers pull the rows their batch uses and push row gradients; the shard
//! applies the lazy optimizer to those rows only. Every method takes `&self`: values are shared
//! atomics, so concurrent pulls and pushes from several workers are Hogwild inside the shard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::checkpoint::{bad, tensors_to_bytes, TensorFile};
use crate::error::{Error, Result};
use crate::features::Normalizer;
use crate::invalid;
use crate::model::dense::Dense;
use crate::model::{sparse_init_scale, Head, ModelConfig};
use crate::optim::{OptimizerConfig, Param, UndoLog};
use crate::rng::hash_to_unit;
use crate::train::SharedF32;

/// Which ids a shard holds: `id % count == index`, for ids below `n_features`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub index: usize,
    pub count: usize,
    pub n_features: usize,
}

impl ShardLayout {
    pub fn new(index: usize, count: usize, n_features: usize) -> Result<Self> {
        if count == 0 {
            return Err(invalid!("the number of shards must be at least 1"));
        }
        if index >= count {
            return Err(invalid!("shard index {index} is out of range for {count} shards"));
        }
        Ok(Self { index, count, n_features })
    }

    /// Rows this shard holds.
    pub fn n_local(&self) -> usize {
        if self.index >= self.n_features {
            0
        } else {
            (self.n_features - self.index).div_ceil(self.count)
        }
    }

    /// Local row of global `id`, or an error naming the id if this shard does not hold it.
    #[inline]
    pub fn local(&self, id: u64) -> Result<usize> {
        if id >= self.n_features as u64 {
            return Err(invalid!("feature id {id} is out of range for n_features={}", self.n_features));
        }
        if id % self.count as u64 != self.index as u64 {
            return Err(invalid!("feature id {id} belongs to shard {}, not shard {} of {}", id % self.count as u64, self.index, self.count));
        }
        Ok((id / self.count as u64) as usize)
    }

    #[inline]
    pub fn global(&self, local: usize) -> u64 {
        (local * self.count + self.index) as u64
    }
}

/// The rows of the sparse table one shard holds.
pub struct ParameterShard {
    pub config: ModelConfig,
    pub layout: ShardLayout,
    pub weight: Param,
    pub norm: Option<Normalizer>,
    /// Pushes applied (the lazy optimizer's t for this shard's rows).
    pub step: AtomicU64,
    pub rows_pulled: AtomicU64,
    pub rows_pushed: AtomicU64,
}

const KEY_WEIGHT: u32 = 0;
const KEY_FEAT_BIAS: u32 = 1;

impl ParameterShard {
    /// A new shard whose rows start exactly as the same rows of a single-process `Model` with
    /// this config (same seed, same initializer), so distributed and local runs begin alike.
    pub fn new(config: ModelConfig, index: usize, count: usize) -> Result<Self> {
        config.validate()?;
        let layout = ShardLayout::new(index, count, config.n_features)?;
        let (n_local, width) = (layout.n_local(), config.sparse_width);
        let scale = sparse_init_scale(&config) as f64;
        let len = n_local.checked_mul(width).ok_or_else(|| invalid!("n_features * sparse_width overflows"))?;
        let values = if scale == 0.0 {
            SharedF32::zeros(len)?
        } else {
            let seed = config.seed;
            SharedF32::from_fn(len, |k| {
                let global = layout.global(k / width) as usize * width + k % width;
                ((2.0 * hash_to_unit(seed, global as u64) - 1.0) * scale) as f32
            })?
        };
        let kind = config.optimizer.kind;
        let norm = if config.normalize { Some(Normalizer::new(n_local, kind)?) } else { None };
        Ok(Self {
            weight: Param::new(values, vec![n_local, width], kind, true)?,
            norm,
            layout,
            config,
            step: AtomicU64::new(0),
            rows_pulled: AtomicU64::new(0),
            rows_pushed: AtomicU64::new(0),
        })
    }

    fn local_rows(&self, ids: &[u64]) -> Result<Vec<u64>> {
        ids.iter().map(|&id| self.layout.local(id).map(|r| r as u64)).collect()
    }

    /// Copies the rows of `ids` into `rows` (ids x width), and their feature bias and max_abs
    /// (when normalizing; left empty otherwise).
    pub fn pull(&self, ids: &[u64], rows: &mut Vec<f32>, feat_bias: &mut Vec<f32>, max_abs: &mut Vec<f32>) -> Result<()> {
        let local = self.local_rows(ids)?;
        let width = self.config.sparse_width;
        rows.clear();
        rows.resize(ids.len() * width, 0.0);
        for (&r, out) in local.iter().zip(rows.chunks_exact_mut(width)) {
            self.weight.values.load_into(r as usize * width, out);
        }
        feat_bias.clear();
        max_abs.clear();
        if let Some(norm) = &self.norm {
            feat_bias.extend(local.iter().map(|&r| norm.feat_bias.values.get(r as usize)));
            max_abs.extend(local.iter().map(|&r| norm.max_abs.get(r as usize)));
        }
        self.rows_pulled.fetch_add(ids.len() as u64, Relaxed);
        Ok(())
    }

    /// Applies one batch's row gradients (`row_grads`: ids x width; `feat_bias_grads` and
    /// `max_abs`: one per id when normalizing) with the lazy optimizer to these rows only, and
    /// raises max_abs to the values the worker saw. An update that would leave a non-finite value
    /// is undone and reported; the shard keeps its previous rows.
    pub fn push(&self, ids: &[u64], row_grads: &[f32], feat_bias_grads: &[f32], max_abs: &[f32]) -> Result<()> {
        let width = self.config.sparse_width;
        if row_grads.len() != ids.len() * width {
            return Err(invalid!("{} row gradients for {} ids of width {width}", row_grads.len(), ids.len()));
        }
        let per_id = if self.norm.is_some() { ids.len() } else { 0 };
        if feat_bias_grads.len() != per_id || max_abs.len() != per_id {
            return Err(invalid!(
                "expected {per_id} feature-bias gradients and max_abs values, got {} and {}",
                feat_bias_grads.len(),
                max_abs.len()
            ));
        }
        if let Some(k) = max_abs.iter().position(|m| !(m.is_finite() && *m >= 0.0)) {
            return Err(invalid!("max_abs of feature {} is {}: it must be a finite number >= 0", ids[k], max_abs[k]));
        }
        let local = self.local_rows(ids)?;
        let t = self.step.fetch_add(1, Relaxed) + 1;
        let step = self.config.optimizer.step(t);
        let mut undo = UndoLog::default();
        let mut ok = step.apply_rows(&self.weight, KEY_WEIGHT, &local, width, row_grads, &mut undo);
        if let Some(norm) = &self.norm {
            ok = ok && step.apply_rows(&norm.feat_bias, KEY_FEAT_BIAS, &local, 1, feat_bias_grads, &mut undo);
        }
        if !ok {
            undo.restore(|key| if key == KEY_WEIGHT { &self.weight } else { &self.norm.as_ref().expect("feature bias key").feat_bias });
            self.step.fetch_sub(1, Relaxed);
            return Err(Error::Diverged(format!(
                "a push to shard {} would make a weight or optimizer state non-finite; it was not applied",
                self.layout.index
            )));
        }
        if let Some(norm) = &self.norm {
            for (&r, &m) in local.iter().zip(max_abs) {
                norm.max_abs.fetch_max_nonneg(r as usize, m);
            }
        }
        self.rows_pushed.fetch_add(ids.len() as u64, Relaxed);
        Ok(())
    }

    /// Every local tensor by its name in a model file (shapes have `n_local` rows).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &SharedF32)> {
        let slot_names = self.config.optimizer.kind.slot_names();
        let mut out = Vec::new();
        let n_local = self.layout.n_local();
        if let Some(norm) = &self.norm {
            out.push(("norm.max_abs".to_string(), vec![n_local], &norm.max_abs));
            push_param(&mut out, "norm.feat_bias", &norm.feat_bias, slot_names);
        }
        push_param(&mut out, "sparse.weight", &self.weight, slot_names);
        out
    }
}

fn push_param<'p>(out: &mut Vec<(String, Vec<usize>, &'p SharedF32)>, name: &str, p: &'p Param, slot_names: &[&str]) {
    out.push((name.to_string(), p.shape.clone(), &p.values));
    for (slot, slot_name) in p.slots.iter().zip(slot_names) {
        out.push((format!("{name}.{slot_name}"), p.shape.clone(), slot));
    }
}

/// The tensors after the sparse table: its bias and the dense layers, flattened in the order
/// `sparse.bias, dense.0.weight, dense.0.bias, ...` for pulls and pushes.
pub struct DenseShard {
    pub optimizer: OptimizerConfig,
    params: Vec<(String, Param)>,
    pub step: AtomicU64,
}

impl DenseShard {
    /// Starts as the same tensors of a single-process `Model` with this config.
    pub fn new(config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let kind = config.optimizer.kind;
        let width = config.sparse_width;
        let mut params = vec![("sparse.bias".to_string(), Param::new(SharedF32::zeros(width)?, vec![width], kind, false)?)];
        if let Head::Mlp { hidden } = &config.head {
            let mut n_in = width;
            for (l, &n_out) in hidden.iter().chain(std::iter::once(&1)).enumerate() {
                let layer = Dense::new(n_in, n_out, config.seed, l as u64 + 1, kind)?;
                params.push((format!("dense.{l}.weight"), layer.weight));
                params.push((format!("dense.{l}.bias"), layer.bias));
                n_in = n_out;
            }
        }
        Ok(Self { optimizer: config.optimizer, params, step: AtomicU64::new(0) })
    }

    /// Number of values a pull returns and a push takes.
    pub fn len(&self) -> usize {
        self.params.iter().map(|(_, p)| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pull(&self, out: &mut Vec<f32>) {
        out.clear();
        for (_, p) in &self.params {
            out.extend(p.values.to_vec());
        }
    }

    /// Applies one batch's gradients of every dense tensor (flattened as `pull` returns them).
    pub fn push(&self, grads: &[f32]) -> Result<()> {
        if grads.len() != self.len() {
            return Err(invalid!("{} dense gradients, expected {}", grads.len(), self.len()));
        }
        let t = self.step.fetch_add(1, Relaxed) + 1;
        let step = self.optimizer.step(t);
        let mut undo = UndoLog::default();
        let mut start = 0;
        for (key, (_, p)) in self.params.iter().enumerate() {
            let g = &grads[start..start + p.len()];
            start += p.len();
            if !step.apply_rows(p, key as u32, &[0], p.len(), g, &mut undo) {
                undo.restore(|k| &self.params[k as usize].1);
                self.step.fetch_sub(1, Relaxed);
                return Err(Error::Diverged(
                    "a push to the dense shard would make a weight or optimizer state non-finite; it was not applied".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &SharedF32)> {
        let slot_names = self.optimizer.kind.slot_names();
        let mut out = Vec::new();
        for (name, p) in &self.params {
            push_param(&mut out, name, p, slot_names);
        }
        out
    }
}

/// What a shard checkpoint holds: the shard's rows, and the dense tensors if it carries them.
pub struct ShardCheckpoint {
    pub shard: ParameterShard,
    pub dense: Option<DenseShard>,
}

impl ShardCheckpoint {
    /// The checkpoint bytes: a sparselin safetensors file whose metadata names the shard, so it
    /// cannot be mistaken for a model file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let config = serde_json::to_string(&self.shard.config).map_err(|e| Error::Io(e.to_string()))?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
            self.shard.tensors().into_iter().map(|(n, s, t)| (n, s, t.to_vec())).collect();
        if let Some(dense) = &self.dense {
            tensors.extend(dense.tensors().into_iter().map(|(n, s, t)| (n, s, t.to_vec())));
        }
        let layout = self.shard.layout;
        tensors_to_bytes(
            tensors,
            vec![
                ("config", config),
                ("shard", format!("{} of {}", layout.index, layout.count)),
                ("step", self.shard.step.load(Relaxed).to_string()),
                ("dense_step", self.dense.as_ref().map_or(0, |d| d.step.load(Relaxed)).to_string()),
                ("has_dense", (self.dense.is_some() as u8).to_string()),
            ],
        )
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file = TensorFile::open(bytes)?;
        let shard_field = file.meta.get("shard").ok_or_else(|| bad("not a parameter-shard checkpoint (a model file?)"))?;
        let parts: Vec<usize> = shard_field.split(" of ").filter_map(|p| p.parse().ok()).collect();
        let [index, count] = parts[..] else {
            return Err(bad(format!("shard metadata '{shard_field}' is invalid")));
        };
        let config: ModelConfig =
            serde_json::from_str(&file.field("config")?).map_err(|e| bad(format!("model config in the file is invalid: {e}")))?;
        config.validate().map_err(|e| bad(format!("model config in the file is invalid: {e}")))?;
        ShardLayout::new(index, count, config.n_features).map_err(|e| bad(e.to_string()))?;
        // Checked before allocating, so a damaged config cannot make this allocate gigabytes.
        if config.memory_bytes() / count as u128 > bytes.len() as u128 * 2 {
            return Err(bad("model config in the file is invalid: it describes a shard larger than the file"));
        }
        let shard = ParameterShard::new(config.clone(), index, count)?;
        let dense = if file.number("has_dense")? == 1 { Some(DenseShard::new(&config)?) } else { None };
        let checkpoint = Self { shard, dense };
        let mut expected: Vec<(String, Vec<usize>)> =
            checkpoint.shard.tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
        if let Some(d) = &checkpoint.dense {
            expected.extend(d.tensors().into_iter().map(|(n, s, _)| (n, s)));
        }
        file.verify(&expected)?;
        for (name, _, t) in checkpoint.shard.tensors() {
            file.read_into(&name, t)?;
        }
        if let Some(d) = &checkpoint.dense {
            for (name, _, t) in d.tensors() {
                file.read_into(&name, t)?;
            }
            d.step.store(file.number("dense_step")?, Relaxed);
        }
        checkpoint.shard.step.store(file.number("step")?, Relaxed);
        Ok(checkpoint)
    }
}

/// Builds the full model from every shard's checkpoint (the dense tensors from the one that
/// carries them): the rows go back to their global ids, so the result is an ordinary `Model`
/// that saves and loads like one trained in a single process. Its step is the largest shard step.
pub fn assemble(shards: &[ShardCheckpoint]) -> Result<crate::model::Model> {
    let first = shards.first().ok_or_else(|| invalid!("no shards to assemble"))?;
    let config = first.shard.config.clone();
    let count = first.shard.layout.count;
    if shards.len() != count {
        return Err(invalid!("{} shard checkpoints for a model split into {count} shards", shards.len()));
    }
    let mut seen = vec![false; count];
    for s in shards {
        if s.shard.config != config || s.shard.layout.count != count {
            return Err(invalid!("the shard checkpoints come from different models"));
        }
        if std::mem::replace(&mut seen[s.shard.layout.index], true) {
            return Err(invalid!("shard {} appears twice", s.shard.layout.index));
        }
    }
    let dense = match shards.iter().filter_map(|s| s.dense.as_ref()).collect::<Vec<_>>()[..] {
        [d] => d,
        _ => return Err(invalid!("exactly one shard must carry the dense tensors")),
    };
    let model = crate::model::Model::new(config)?;
    let width = model.config.sparse_width;
    for s in shards {
        let layout = s.shard.layout;
        for (name, _, local) in s.shard.tensors() {
            // A shard holds only the sparse table (rows of `width`) and per-feature tensors.
            let row_len = if name.starts_with("sparse.weight") { width } else { 1 };
            let global = model.tensor(&name)?;
            let values = local.to_vec();
            for (r, row) in values.chunks_exact(row_len).enumerate() {
                global.store_from(layout.global(r) as usize * row_len, row);
            }
        }
    }
    for (name, _, t) in dense.tensors() {
        model.tensor(&name)?.copy_from(&t.to_vec());
    }
    let step = shards.iter().map(|s| s.shard.step.load(Relaxed)).max().unwrap_or(0);
    model.step.store(step.max(dense.step.load(Relaxed)), Relaxed);
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Task;
    use crate::model::Model;
    use crate::optim::OptimizerKind;

    pub(crate) fn config(head: Head, width: usize) -> ModelConfig {
        ModelConfig {
            n_features: 103,
            sparse_width: width,
            head,
            task: Task::Binary,
            normalize: true,
            optimizer: OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
            seed: 4,
        }
    }

    #[test]
    fn layout_covers_every_id_once() {
        for count in 1..6 {
            let mut seen = vec![0; 103];
            for index in 0..count {
                let layout = ShardLayout::new(index, count, 103).unwrap();
                for r in 0..layout.n_local() {
                    let id = layout.global(r);
                    assert_eq!(layout.local(id).unwrap(), r);
                    seen[id as usize] += 1;
                }
                assert!(layout.local(103).is_err());
            }
            assert!(seen.iter().all(|&c| c == 1));
        }
        assert!(ShardLayout::new(2, 2, 10).is_err());
        assert!(ShardLayout::new(0, 0, 10).is_err());
    }

    #[test]
    fn shards_start_as_the_model_and_assemble_back() {
        let cfg = config(Head::Mlp { hidden: vec![3] }, 4);
        let model = Model::new(cfg.clone()).unwrap();
        let shards: Vec<ShardCheckpoint> = (0..3)
            .map(|i| ShardCheckpoint {
                shard: ParameterShard::new(cfg.clone(), i, 3).unwrap(),
                dense: (i == 0).then(|| DenseShard::new(&cfg).unwrap()),
            })
            .collect();
        let (mut rows, mut fb, mut ma) = (Vec::new(), Vec::new(), Vec::new());
        shards[1].shard.pull(&[1, 4, 100], &mut rows, &mut fb, &mut ma).unwrap();
        let w = model.sparse.weight.values.to_vec();
        assert_eq!(&rows[..4], &w[4..8]);
        assert_eq!(&rows[8..], &w[400..404]);
        assert!(shards[1].shard.pull(&[2], &mut rows, &mut fb, &mut ma).is_err());
        // Round trip through checkpoint bytes, then assemble.
        shards[2].shard.push(&[2, 5], &[1.0; 8], &[0.5, 0.5], &[3.0, 0.0]).unwrap();
        let restored: Vec<ShardCheckpoint> =
            shards.iter().map(|s| ShardCheckpoint::from_bytes(&s.to_bytes().unwrap()).unwrap()).collect();
        let assembled = assemble(&restored).unwrap();
        let a = assembled.sparse.weight.values.to_vec();
        assert_ne!(&a[8..12], &w[8..12]);
        assert_eq!(&a[12..20], &w[12..20]);
        assert_eq!(assembled.tensor("norm.max_abs").unwrap().get(2), 3.0);
        assert_eq!(assembled.tensor("dense.0.weight").unwrap().to_vec(), model.tensor("dense.0.weight").unwrap().to_vec());
        // A shard checkpoint is not a model file, and the reverse.
        let e = crate::checkpoint::from_bytes(&shards[0].to_bytes().unwrap()).err().unwrap();
        assert!(e.to_string().contains("shard 0 of 3"), "{e}");
        assert!(ShardCheckpoint::from_bytes(&crate::checkpoint::to_bytes(&model, "").unwrap()).is_err());
        assert!(assemble(&restored[1..]).is_err());
    }

    #[test]
    fn a_push_that_would_overflow_is_undone() {
        let mut cfg = config(Head::Linear, 1);
        cfg.optimizer = OptimizerConfig { kind: OptimizerKind::Sgd, learning_rate: 1e30, l1: 0.0, l2: 0.0 };
        let shard = ParameterShard::new(cfg, 0, 1).unwrap();
        shard.push(&[7], &[1e10], &[0.0], &[1.0]).err().unwrap();
        assert_eq!(shard.weight.values.get(7), 0.0);
        assert_eq!(shard.step.load(Relaxed), 0);
        assert!(shard.push(&[7], &[1.0], &[0.0], &[f32::NAN]).is_err());
        assert!(shard.push(&[7, 8], &[1.0], &[0.0], &[1.0]).is_err());
    }
}
