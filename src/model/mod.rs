//! The model: online normalization -> sparse linear layer -> (ReLU -> dense layers) -> output,
//! and its loss. LR is the width-1 sparse layer alone. Every method takes `&self`: parameters
//! are shared atomics, so any number of threads may train or predict at once (Hogwild).

pub mod dense;
pub mod hot_ids;
pub mod loss;
pub mod sparse_linear;
pub mod workspace;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{CsrView, Idx, Task};
use crate::error::{Error, Result};
use crate::features::Normalizer;
use crate::invalid;
use crate::optim::{OptimizerConfig, OptimizerKind, Param};
use crate::train::SharedF32;
use dense::Dense;
use hot_ids::HotIds;
use sparse_linear::SparseLinear;
use workspace::{zeroed, Workspace};

/// What follows the sparse layer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// The sparse layer output is the logit (width 1): logistic / linear regression.
    Linear,
    /// ReLU, then a dense layer with ReLU per entry of `hidden`, then a dense layer to one output.
    Mlp { hidden: Vec<usize> },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub n_features: usize,
    pub sparse_width: usize,
    pub head: Head,
    pub task: Task,
    pub normalize: bool,
    pub optimizer: OptimizerConfig,
    pub seed: u64,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        if self.n_features == 0 {
            return Err(invalid!("n_features must be at least 1"));
        }
        if self.sparse_width == 0 {
            return Err(invalid!("sparse_width must be at least 1"));
        }
        match &self.head {
            Head::Linear if self.sparse_width != 1 => return Err(invalid!("a linear model has sparse_width 1, got {}", self.sparse_width)),
            Head::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err(invalid!("hidden layer sizes must be >= 1, got {hidden:?}"));
                }
                if self.optimizer.kind == OptimizerKind::Ftrl {
                    return Err(invalid!("optimizer='ftrl' is for linear models; use 'lazy_adam', 'adagrad' or 'sgd' for an MLP"));
                }
            }
            _ => {}
        }
        self.optimizer.validate()
    }

    /// Bytes of all tensors and optimizer state (what a model file holds), to refuse impossible
    /// sizes before allocating. Saturates rather than overflowing.
    pub fn memory_bytes(&self) -> u128 {
        self.footprint().0
    }

    /// (bytes of all tensors and optimizer state, bytes written when the model is created).
    /// Tables come from `alloc_zeroed`, so zeros cost no RAM until a batch touches their row;
    /// what is written eagerly is the MLP's random sparse table and dense layers, and Adagrad's
    /// accumulators (filled with 0.1).
    fn footprint(&self) -> (u128, u128) {
        let kind = self.optimizer.kind;
        let slots = kind.slot_names().len() as u128;
        let eager_slots = if kind == OptimizerKind::Adagrad { slots } else { 0 };
        let (mut total, mut eager) = (0u128, 0u128);
        let mut param = |len: u128, random_init: bool| {
            total = total.saturating_add(len.saturating_mul(1 + slots));
            eager = eager.saturating_add(len.saturating_mul(random_init as u128 + eager_slots));
        };
        let (n, w) = (self.n_features as u128, self.sparse_width as u128);
        if self.normalize {
            param(n, false); // feature bias
        }
        param(n.saturating_mul(w), matches!(self.head, Head::Mlp { .. }));
        param(w, false);
        if let Head::Mlp { hidden } = &self.head {
            let mut n_in = w;
            for &n_out in hidden.iter().chain(std::iter::once(&1)) {
                param(n_in.saturating_mul(n_out as u128), true);
                param(n_out as u128, false);
                n_in = n_out as u128;
            }
        }
        if self.normalize {
            total = total.saturating_add(n); // max_abs: a statistic, no optimizer state
        }
        (total.saturating_mul(4), eager.saturating_mul(4))
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (None where there is no such file).
fn memory_available() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub struct Model {
    pub config: ModelConfig,
    pub norm: Option<Normalizer>,
    pub sparse: SparseLinear,
    pub dense: Vec<Dense>,
    /// Optimizer updates applied so far (Adam's t).
    pub step: AtomicU64,
    /// Epochs started so far; seeds each epoch's shuffle.
    pub epochs_done: AtomicU64,
    /// Batches finished in the current epoch (0 at an epoch boundary).
    pub batches_into_epoch: AtomicU64,
}

/// The dense layers' buffers for a run of batch rows: `pre[0]` holds the rows' sparse layer
/// output h; for layer l, `act[l]` is its input and `pre[l + 1]` its output before the ReLU;
/// `d_pre` are their gradients; `bias_acc` and `w_t` are scratch.
pub(crate) struct DenseRows<'a> {
    pub pre: &'a mut [Vec<f32>],
    pub act: &'a mut [Vec<f32>],
    pub d_pre: &'a mut [Vec<f32>],
    pub grad_w: &'a mut [Vec<f32>],
    pub grad_b: &'a mut [Vec<f32>],
    pub bias_acc: &'a mut Vec<f64>,
    pub w_t: &'a mut Vec<f32>,
}

/// One mini-batch: rows of `x` (in this order) and their targets and weights, indexed by row.
pub struct Batch<'a, 'b, P: Idx, I: Idx> {
    pub x: &'b CsrView<'a, P, I>,
    pub rows: &'b [u32],
    pub targets: &'b [f32],
    pub weights: Option<&'b [f32]>,
}

/// Sparse-layer init scale for an MLP: U(-1/sqrt(width), 1/sqrt(width)).
pub(crate) fn sparse_init_scale(config: &ModelConfig) -> f32 {
    match config.head {
        Head::Linear => 0.0,
        Head::Mlp { .. } => 1.0 / (config.sparse_width as f32).sqrt(),
    }
}

impl Model {
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        const LIMIT: u128 = 1 << 40;
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        let (bytes, eager) = config.footprint();
        if bytes > LIMIT {
            return Err(invalid!(
                "this model needs {:.1} GiB for its tables and optimizer state (more than the {:.0} GiB limit): \
                 reduce n_features, sparse_width or hidden",
                gib(bytes),
                gib(LIMIT)
            ));
        }
        if let Some(available) = memory_available().filter(|&a| eager > a) {
            let what = match (&config.head, config.optimizer.kind == OptimizerKind::Adagrad) {
                (Head::Mlp { .. }, false) => "the MLP's randomly initialized tables",
                (Head::Mlp { .. }, true) => "the MLP's randomly initialized tables and Adagrad's accumulators",
                _ => "Adagrad's accumulators, which start at 0.1",
            };
            return Err(invalid!(
                "this model writes {:.1} GiB when it is created ({what}) but only {:.1} GiB of memory is available: \
                 reduce n_features, sparse_width or hidden",
                gib(eager),
                gib(available)
            ));
        }
        let kind = config.optimizer.kind;
        let norm = if config.normalize { Some(Normalizer::new(config.n_features, kind)?) } else { None };
        let sparse = SparseLinear::new(config.n_features, config.sparse_width, sparse_init_scale(&config), config.seed, kind)?;
        let mut dense = Vec::new();
        if let Head::Mlp { hidden } = &config.head {
            let mut n_in = config.sparse_width;
            for (l, &n_out) in hidden.iter().chain(std::iter::once(&1)).enumerate() {
                dense.push(Dense::new(n_in, n_out, config.seed, l as u64 + 1, kind)?);
                n_in = n_out;
            }
        }
        Ok(Self {
            config,
            norm,
            sparse,
            dense,
            step: AtomicU64::new(0),
            epochs_done: AtomicU64::new(0),
            batches_into_epoch: AtomicU64::new(0),
        })
    }

    pub fn workspace(&self) -> Workspace {
        let layers = self.dense.len();
        Workspace {
            pre: vec![Vec::new(); layers + 1],
            act: vec![Vec::new(); layers],
            d_pre: vec![Vec::new(); layers + 1],
            dense_w: self.dense.iter().map(|d| vec![0.0; d.n_in * d.n_out]).collect(),
            dense_b: self.dense.iter().map(|d| vec![0.0; d.n_out]).collect(),
            grad_dense_w: self.dense.iter().map(|d| vec![0.0; d.n_in * d.n_out]).collect(),
            grad_dense_b: self.dense.iter().map(|d| vec![0.0; d.n_out]).collect(),
            ..Default::default()
        }
    }

    /// Forward and backward on one batch; gradients are left in `ws`. Returns the batch's mean
    /// weighted loss. Updates `max_abs` (training-time normalization) but no learned weight.
    pub fn compute_gradients<P: Idx, I: Idx>(&self, batch: &Batch<'_, '_, P, I>, ws: &mut Workspace) -> Result<f64> {
        self.gradients(batch, ws, false)
    }

    /// `compute_gradients`; with `defer_rows`, the sparse layer's row gradients may be left for
    /// `apply_gradients` to sum as it updates each row (`SparseLinear::backward_deferred`).
    fn gradients<P: Idx, I: Idx>(&self, batch: &Batch<'_, '_, P, I>, ws: &mut Workspace, defer_rows: bool) -> Result<f64> {
        let n = batch.rows.len();
        if n == 0 {
            return Err(invalid!("empty batch"));
        }
        self.sparse.forward_train(batch.x, batch.rows, self.norm.as_ref(), ws);
        let mean_loss = self.dense_and_loss(batch, ws)?;
        let d_h = std::mem::take(&mut ws.d_pre[0]);
        if defer_rows {
            self.sparse.backward_deferred(&d_h, self.norm.is_some(), ws);
        } else {
            ws.rows_deferred = false;
            self.sparse.backward(&d_h, self.norm.is_some(), ws);
        }
        ws.d_pre[0] = d_h;

        let finite = crate::optim::all_finite;
        if !(finite(&ws.grad_rows)
            && finite(&ws.grad_feat_bias)
            && finite(&ws.grad_sparse_bias)
            && ws.grad_dense_w.iter().all(|g| finite(g))
            && ws.grad_dense_b.iter().all(|g| finite(g)))
        {
            return Err(Error::Diverged("a gradient is not finite".into()));
        }
        Ok(mean_loss)
    }

    /// From the sparse layer output `ws.pre[0]` to the loss and back to its gradient
    /// `ws.d_pre[0]`, with the dense layers' gradients. Returns the mean batch loss.
    pub(crate) fn dense_and_loss<P: Idx, I: Idx>(&self, batch: &Batch<'_, '_, P, I>, ws: &mut Workspace) -> Result<f64> {
        let n = batch.rows.len();
        // Plain snapshots of the shared weights.
        for (l, layer) in self.dense.iter().enumerate() {
            layer.weight.values.copy_to(&mut ws.dense_w[l]);
            layer.bias.values.copy_to(&mut ws.dense_b[l]);
        }
        let rows = DenseRows {
            pre: &mut ws.pre,
            act: &mut ws.act,
            d_pre: &mut ws.d_pre,
            grad_w: &mut ws.grad_dense_w,
            grad_b: &mut ws.grad_dense_b,
            bias_acc: &mut ws.bias_acc,
            w_t: &mut ws.dense_wt,
        };
        let total = self.dense_rows(rows, &ws.dense_w, &ws.dense_b, batch.rows, batch, 1.0 / n as f32);
        ws.logits.clear();
        ws.logits.extend_from_slice(&ws.pre[self.dense.len()]);
        let mean_loss = total / n as f64;
        if !mean_loss.is_finite() {
            return Err(Error::Diverged(format!("the batch loss is {mean_loss}")));
        }
        Ok(mean_loss)
    }

    /// Batch rows `rows` (whose sparse layer output is `r.pre[0]`) through the dense layers
    /// (weights `dense_w`, `dense_b`: plain snapshots), their loss scaled by `inv_batch`, and back
    /// to `r.d_pre[0]`, with the rows' dense-layer gradients in `r.grad_w`, `r.grad_b`. Returns
    /// the rows' loss total. Columns mode runs it on chunks of a batch.
    pub(crate) fn dense_rows<P: Idx, I: Idx>(
        &self,
        r: DenseRows<'_>,
        dense_w: &[Vec<f32>],
        dense_b: &[Vec<f32>],
        rows: &[u32],
        batch: &Batch<'_, '_, P, I>,
        inv_batch: f32,
    ) -> f64 {
        let m = rows.len();
        for (l, layer) in self.dense.iter().enumerate() {
            let input = &mut r.act[l];
            input.clear();
            input.extend_from_slice(&r.pre[l]);
            dense::relu_in_place(input);
            zeroed(&mut r.pre[l + 1], m * layer.n_out);
            dense::forward(input, &dense_w[l], &dense_b[l], layer.n_in, layer.n_out, &mut r.pre[l + 1]);
        }
        let last = self.dense.len();
        debug_assert_eq!(r.pre[last].len(), m * if last == 0 { self.config.sparse_width } else { 1 });
        let targets = rows.iter().map(|&row| {
            let row = row as usize;
            (batch.targets[row], batch.weights.map_or(1.0, |w| w[row]))
        });
        let mut d_logits = std::mem::take(&mut r.d_pre[last]);
        zeroed(&mut d_logits, r.pre[last].len());
        let total = loss::loss_and_grad(self.config.task, &r.pre[last], targets, inv_batch, &mut d_logits);
        r.d_pre[last] = d_logits;
        for (l, layer) in self.dense.iter().enumerate().rev() {
            zeroed(&mut r.grad_w[l], layer.n_in * layer.n_out);
            zeroed(&mut r.grad_b[l], layer.n_out);
            let mut d_in = std::mem::take(&mut r.d_pre[l]);
            zeroed(&mut d_in, m * layer.n_in);
            dense::backward(
                &r.act[l],
                &r.d_pre[l + 1],
                &dense_w[l],
                layer.n_in,
                layer.n_out,
                &mut r.grad_w[l],
                &mut r.grad_b[l],
                r.bias_acc,
                r.w_t,
                Some(&mut d_in),
            );
            dense::relu_backward(&r.pre[l], &mut d_in);
            r.d_pre[l] = d_in;
        }
        total
    }

    /// The parameter an undo-log key names: 0 sparse weight, 1 feature bias, 2 sparse bias,
    /// then weight and bias of each dense layer.
    pub(crate) fn param_by_key(&self, key: u32) -> &Param {
        match key {
            0 => &self.sparse.weight,
            1 => &self.norm.as_ref().expect("feature bias only exists when normalizing").feat_bias,
            2 => &self.sparse.bias,
            k => {
                let layer = &self.dense[(k as usize - 3) / 2];
                if (k - 3) % 2 == 0 {
                    &layer.weight
                } else {
                    &layer.bias
                }
            }
        }
    }

    fn undo(&self, log: &crate::optim::UndoLog) {
        self.undo_logs(&[log]);
    }

    /// Restores what the logs (one update, maybe split between threads) overwrote.
    pub(crate) fn undo_logs(&self, logs: &[&crate::optim::UndoLog]) {
        if logs.iter().any(|l| !l.is_empty()) {
            for log in logs.iter().rev() {
                log.restore(|key| self.param_by_key(key));
            }
            self.step.fetch_sub(1, Relaxed);
        }
    }

    /// Applies the gradients in `ws` with the configured optimizer to the touched rows only.
    /// If the update would make any weight or optimizer state non-finite, it is undone and the
    /// model keeps the weights it had before this batch.
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn apply_gradients(&self, ws: &mut Workspace) -> Result<()> {
        ws.undo.clear();
        let t = self.step.fetch_add(1, Relaxed) + 1;
        let step = self.config.optimizer.step(t);
        let width = self.config.sparse_width;
        let undo = &mut ws.undo;
        let ids = &ws.batch.slots.ids;
        let mut ok = if ws.rows_deferred {
            let (dh, by_slot, start) = (&ws.d_pre[0], &ws.by_slot, &ws.by_slot_start);
            ws.grad_row.resize(width, 0.0);
            step.apply_rows_with(&self.sparse.weight, 0, ids, width, &mut ws.grad_row, undo, |s, g| {
                SparseLinear::row_gradient(dh, by_slot, start, s, g)
            })
        } else {
            step.apply_rows(&self.sparse.weight, 0, ids, width, &ws.grad_rows, undo)
        };
        if let Some(norm) = &self.norm {
            ok = ok && step.apply_rows(&norm.feat_bias, 1, ids, 1, &ws.grad_feat_bias, undo);
        }
        ok = ok && step.apply_rows(&self.sparse.bias, 2, &[0], width, &ws.grad_sparse_bias, undo);
        for (l, layer) in self.dense.iter().enumerate() {
            let key = 3 + 2 * l as u32;
            ok = ok
                && step.apply_rows(&layer.weight, key, &[0], layer.n_in * layer.n_out, &ws.grad_dense_w[l], undo)
                && step.apply_rows(&layer.bias, key + 1, &[0], layer.n_out, &ws.grad_dense_b[l], undo);
        }
        if !ok {
            self.undo(&ws.undo);
            ws.undo.clear();
            return Err(Error::Diverged("an update would make a weight or optimizer state non-finite; it was not applied".into()));
        }
        Ok(())
    }

    /// Whether `train_batch` skips the deduplication of the batch's ids: a linear model trained
    /// with plain SGD and no l2, by the fit's only thread (`Workspace::sole_writer`). SGD's
    /// change to a weight is linear in its gradient, so each non-zero's share of its weight's
    /// and feature bias's gradient can be applied as it comes (`Step::apply_rows` with an id listed once per occurrence):
    /// the update of the per-id sums, rounded differently, without the table of distinct ids,
    /// the row cache and the sums (LR sgd, 1 thread, batch 512: ~650k -> ~950k samples/s in the
    /// Rust bench). Columns mode keeps the per-id sums, whose order it fixes.
    ///
    /// Hogwild threads take it too when their workspace holds hot ids (`hot_ids::HotIds`):
    /// those are summed per batch and updated once, the others per non-zero.
    pub fn updates_per_nonzero(&self, ws: &Workspace) -> bool {
        (ws.sole_writer || ws.hot_ids.is_some()) && self.is_linear_plain_sgd()
    }

    /// A linear model whose SGD step is linear in its gradient (no l2): the models that can be
    /// updated per non-zero.
    fn is_linear_plain_sgd(&self) -> bool {
        self.config.head == Head::Linear && self.config.optimizer.step(1).per_occurrence()
    }

    /// The hot ids for Hogwild threads training this model on `x` (`Workspace::hot_ids`): only a
    /// linear model with plain SGD updates per non-zero.
    pub fn hot_ids<P: Idx, I: Idx>(&self, x: &CsrView<'_, P, I>) -> Option<std::sync::Arc<HotIds>> {
        self.is_linear_plain_sgd().then(|| HotIds::sample(x)).flatten().map(std::sync::Arc::new)
    }

    /// The forward pass and loss of `updates_per_nonzero` training; leaves what the update needs
    /// in `ws` (`SparseLinear::forward_per_nonzero`, dh in `ws.d_pre[0]`, the bias gradient).
    fn loss_per_nonzero<P: Idx, I: Idx>(&self, batch: &Batch<'_, '_, P, I>, ws: &mut Workspace) -> Result<f64> {
        if batch.rows.is_empty() {
            return Err(invalid!("empty batch"));
        }
        self.sparse.forward_per_nonzero(batch.x, batch.rows, self.norm.as_ref(), ws);
        let mean_loss = self.dense_and_loss(batch, ws)?;
        let dh = std::mem::take(&mut ws.d_pre[0]);
        SparseLinear::bias_gradients(&dh, 1, false, ws);
        ws.d_pre[0] = dh;
        if !(crate::optim::all_finite(&ws.d_pre[0]) && crate::optim::all_finite(&ws.grad_sparse_bias)) {
            return Err(Error::Diverged("a gradient is not finite".into()));
        }
        Ok(mean_loss)
    }

    /// The update of `updates_per_nonzero` training, per non-zero: the weight's gradient is
    /// dh y, the feature bias's w dh, as `SparseLinear::backward` sums them per id. Undone and
    /// refused, as `apply_gradients`, if a value would not be finite.
    fn apply_per_nonzero(&self, ws: &mut Workspace) -> Result<()> {
        ws.undo.clear();
        let t = self.step.fetch_add(1, Relaxed) + 1;
        let step = self.config.optimizer.step(t);
        // Each non-zero's gradients, in batch order: dh y for its weight, w dh for its feature bias.
        ws.grad_rows.clear();
        ws.grad_feat_bias.clear();
        let mut start = 0;
        for (&d, &end) in ws.d_pre[0].iter().zip(&ws.batch.row_end) {
            ws.grad_rows.extend(ws.batch.nnz_y[start..end].iter().map(|&y| d * y));
            if self.norm.is_some() {
                ws.grad_feat_bias.extend(ws.nonzero_w[start..end].iter().map(|&w| w * d));
            }
            start = end;
        }
        if let Some(hot) = ws.hot_ids.clone() {
            sum_hot_ids(&hot, self.norm.is_some(), ws);
        }
        // Rows listed once per occurrence: plain SGD applies each in turn.
        let (ids, undo) = (&ws.nonzero_ids, &mut ws.undo);
        let mut ok = step.apply_rows(&self.sparse.weight, 0, ids, 1, &ws.grad_rows, undo);
        if let Some(norm) = &self.norm {
            ok = ok && step.apply_rows(&norm.feat_bias, 1, ids, 1, &ws.grad_feat_bias, undo);
        }
        ok = ok && step.apply_rows(&self.sparse.bias, 2, &[0], 1, &ws.grad_sparse_bias, undo);
        if !ok {
            self.undo(&ws.undo);
            ws.undo.clear();
            return Err(Error::Diverged("an update would make a weight or optimizer state non-finite; it was not applied".into()));
        }
        Ok(())
    }

    /// One step on a batch; returns its mean loss. Training never leaves non-finite weights:
    /// if this batch's loss or a gradient is not finite, the previous batch's update (whose
    /// weights led here) is undone too, so the model keeps the last weights under which a batch
    /// loss was finite; if the update itself would overflow, it is not applied.
    pub fn train_batch<P: Idx, I: Idx>(&self, batch: &Batch<'_, '_, P, I>, ws: &mut Workspace) -> Result<f64> {
        let per_nonzero = self.updates_per_nonzero(ws);
        let gradients = if per_nonzero { self.loss_per_nonzero(batch, ws) } else { self.gradients(batch, ws, true) };
        match gradients {
            Ok(loss) => {
                if per_nonzero {
                    self.apply_per_nonzero(ws)?;
                } else {
                    self.apply_gradients(ws)?;
                }
                Ok(loss)
            }
            Err(Error::Diverged(why)) => {
                self.undo(&ws.undo);
                ws.undo.clear();
                Err(Error::Diverged(format!("{why}; the previous update was undone")))
            }
            Err(e) => Err(e),
        }
    }

    /// Raw outputs (logits for a classifier) of every row, in parallel on the current rayon pool.
    pub fn decision_function<P: Idx, I: Idx>(&self, x: &CsrView<'_, P, I>, out: &mut [f32]) -> Result<()> {
        if x.n_features() != self.config.n_features {
            return Err(invalid!("X has {} features but the model was built for n_features={}", x.n_features(), self.config.n_features));
        }
        if out.len() != x.n_rows() {
            return Err(invalid!("output has {} entries for {} rows", out.len(), x.n_rows()));
        }
        let width = self.config.sparse_width;
        let sparse_bias = self.sparse.bias.values.to_vec();
        let dense_w: Vec<Vec<f32>> = self.dense.iter().map(|d| d.weight.values.to_vec()).collect();
        let dense_b: Vec<Vec<f32>> = self.dense.iter().map(|d| d.bias.values.to_vec()).collect();
        const CHUNK: usize = 256;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out_chunk)| {
            let mut h = vec![0.0f32; width];
            let mut a = Vec::new();
            let mut next = Vec::new();
            for (k, o) in out_chunk.iter_mut().enumerate() {
                let (ids, values) = x.row(c * CHUNK + k);
                self.sparse.forward_infer_row(ids, values, self.norm.as_ref(), &sparse_bias, &mut h);
                a.clear();
                a.extend_from_slice(&h);
                for (l, layer) in self.dense.iter().enumerate() {
                    dense::relu_in_place(&mut a);
                    next.clear();
                    next.resize(layer.n_out, 0.0);
                    dense::forward(&a, &dense_w[l], &dense_b[l], layer.n_in, layer.n_out, &mut next);
                    std::mem::swap(&mut a, &mut next);
                }
                *o = a[0];
            }
        });
        Ok(())
    }

    /// Multiplies every optimizer state tensor by `factor` (in [0, 1]): an exponential decay of
    /// the statistics gathered on older data, for continual training under drift.
    pub fn decay_optimizer_state(&self, factor: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&factor) {
            return Err(invalid!("the optimizer state decay factor must be in [0, 1], got {factor}"));
        }
        let slot_names = self.config.optimizer.kind.slot_names();
        for (name, _, tensor) in self.tensors() {
            if slot_names.iter().any(|s| name.ends_with(&format!(".{s}"))) {
                tensor.scale(factor);
            }
        }
        Ok(())
    }

    /// Every tensor by name, learned ones and optimizer state: the checkpoint layout.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &SharedF32)> {
        fn push_param<'m>(out: &mut Vec<(String, Vec<usize>, &'m SharedF32)>, name: String, p: &'m Param, slot_names: &[&str]) {
            out.push((name.clone(), p.shape.clone(), &p.values));
            for (slot, slot_name) in p.slots.iter().zip(slot_names) {
                out.push((format!("{name}.{slot_name}"), p.shape.clone(), slot));
            }
        }
        let mut out = Vec::new();
        let slot_names = self.config.optimizer.kind.slot_names();
        if let Some(norm) = &self.norm {
            out.push(("norm.max_abs".to_string(), vec![self.config.n_features], &norm.max_abs));
            push_param(&mut out, "norm.feat_bias".into(), &norm.feat_bias, slot_names);
        }
        push_param(&mut out, "sparse.weight".into(), &self.sparse.weight, slot_names);
        push_param(&mut out, "sparse.bias".into(), &self.sparse.bias, slot_names);
        for (l, layer) in self.dense.iter().enumerate() {
            push_param(&mut out, format!("dense.{l}.weight"), &layer.weight, slot_names);
            push_param(&mut out, format!("dense.{l}.bias"), &layer.bias, slot_names);
        }
        out
    }

    pub fn tensor(&self, name: &str) -> Result<&SharedF32> {
        self.tensors()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, t)| t)
            .ok_or_else(|| invalid!("this model has no tensor named '{name}'"))
    }
}

/// Moves the hot ids' terms out of a per-non-zero update list (`ws.nonzero_ids` with
/// `ws.grad_rows` and, if `with_feat_bias`, `ws.grad_feat_bias`) and appends each hot id once,
/// with the sum of its terms in batch order; the other ids keep their order. Hot ids whose terms
/// sum to zero are left out: plain SGD would not change them.
fn sum_hot_ids(hot: &HotIds, with_feat_bias: bool, ws: &mut Workspace) {
    let n_hot = hot.len();
    // Rare ids add their terms to a spare sum (`HotIds::sum_index`, looked up by the forward
    // pass) instead of branching.
    debug_assert_eq!(ws.nonzero_sum.len(), ws.nonzero_ids.len());
    zeroed(&mut ws.hot_grad, n_hot + 8);
    zeroed(&mut ws.hot_grad_feat_bias, n_hot + 8);
    let Workspace { nonzero_ids: ids, nonzero_sum, grad_rows, grad_feat_bias, hot_grad, hot_grad_feat_bias, .. } = ws;
    let mut kept = 0;
    for (k, &sum) in nonzero_sum.iter().enumerate() {
        let (id, sum) = (ids[k], sum as usize);
        let g = grad_rows[k];
        hot_grad[sum] += g;
        ids[kept] = id;
        grad_rows[kept] = g;
        if with_feat_bias {
            let gb = grad_feat_bias[k];
            hot_grad_feat_bias[sum] += gb;
            grad_feat_bias[kept] = gb;
        }
        kept += (sum >= n_hot) as usize;
    }
    ids.truncate(kept);
    grad_rows.truncate(kept);
    grad_feat_bias.truncate(if with_feat_bias { kept } else { 0 });
    for (i, &id) in hot.ids().iter().enumerate() {
        let (g, gb) = (hot_grad[i], hot_grad_feat_bias[i]);
        if g != 0.0 || gb != 0.0 {
            ids.push(id);
            grad_rows.push(g);
            if with_feat_bias {
                grad_feat_bias.push(gb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{make_ctr, CtrSpec};

    fn config(head: Head, width: usize, kind: OptimizerKind) -> ModelConfig {
        ModelConfig {
            n_features: 1 << 12,
            sparse_width: width,
            head,
            task: Task::Binary,
            normalize: true,
            optimizer: OptimizerConfig { kind, learning_rate: 0.01, l1: 0.0, l2: 0.0 },
            seed: 1,
        }
    }

    #[test]
    fn training_lowers_the_loss() {
        let data = make_ctr(&CtrSpec { n_rows: 3000, n_features: 1 << 12, seed: 5, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        for (head, width) in [(Head::Linear, 1), (Head::Mlp { hidden: vec![8] }, 8)] {
            let model = Model::new(config(head, width, OptimizerKind::LazyAdam)).unwrap();
            let mut ws = model.workspace();
            let mut first = 0.0;
            let mut last = 0.0;
            for epoch in 0..3 {
                let mut total = 0.0;
                let rows: Vec<u32> = (0..3000).collect();
                for chunk in rows.chunks(100) {
                    let batch = Batch { x: &x, rows: chunk, targets: &data[0].labels, weights: None };
                    total += model.train_batch(&batch, &mut ws).unwrap();
                }
                if epoch == 0 {
                    first = total;
                }
                last = total;
            }
            assert!(last < first * 0.97, "{first} -> {last}");
            let mut out = vec![0.0; 3000];
            model.decision_function(&x, &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn deferred_row_gradients_give_bit_for_bit_the_same_model() {
        // train_batch sums each sparse row's gradient as it updates the row; compute_gradients
        // then apply_gradients materializes them first. Same weights, bit for bit.
        let data = make_ctr(&CtrSpec { n_rows: 600, n_features: 1 << 10, seed: 3, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        for normalize in [true, false] {
            let cfg = ModelConfig { normalize, ..config(Head::Mlp { hidden: vec![6] }, 12, OptimizerKind::LazyAdam) };
            let (deferred, plain) = (Model::new(cfg.clone()).unwrap(), Model::new(cfg).unwrap());
            let (mut ws_d, mut ws_p) = (deferred.workspace(), plain.workspace());
            let rows: Vec<u32> = (0..600).rev().collect();
            for chunk in rows.chunks(97) {
                let batch = Batch { x: &x, rows: chunk, targets: &data[0].labels, weights: None };
                let loss_d = deferred.train_batch(&batch, &mut ws_d).unwrap();
                assert!(ws_d.rows_deferred && ws_d.grad_rows.is_empty());
                let loss_p = plain.compute_gradients(&batch, &mut ws_p).unwrap();
                plain.apply_gradients(&mut ws_p).unwrap();
                assert_eq!(loss_d.to_bits(), loss_p.to_bits());
            }
            let bits = |m: &Model| {
                m.tensors().iter().map(|(_, _, t)| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>()
            };
            assert!(bits(&deferred) == bits(&plain), "normalize={normalize}");
        }
    }

    #[test]
    fn linear_sgd_per_nonzero_is_the_per_id_update() {
        // A fit's only thread updates a linear model's weights and feature biases once per
        // non-zero; Hogwild threads do so too, but sum the terms of hot ids over the batch;
        // otherwise per distinct id. Same math, so the same model up to rounding, with and
        // without normalization and sample weights (make_ctr's hot ids repeat in a batch).
        let data = make_ctr(&CtrSpec { n_rows: 900, n_features: 1 << 10, seed: 8, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let weights: Vec<f32> = (0..900).map(|i| 0.5 + (i % 3) as f32).collect();
        // The 40 most frequent ids, and ids never seen.
        let mut counts = vec![(0usize, 0u64); 1 << 10];
        for &id in &data[0].matrix.indices {
            counts[id as usize] = (counts[id as usize].0 + 1, id as u64);
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert!(counts[39].0 > 100, "{:?}", counts[39]);
        let hot = HotIds::new(counts[..40].iter().map(|&(_, id)| id).chain([5000, 6000])).map(std::sync::Arc::new);
        for (normalize, sample_weights) in [(true, None), (false, None), (true, Some(&weights[..]))] {
            let mut cfg = ModelConfig { normalize, ..config(Head::Linear, 1, OptimizerKind::Sgd) };
            cfg.optimizer.learning_rate = if normalize { 0.1 } else { 1e-7 };
            let [per_nonzero, with_hot, per_id] = [0; 3].map(|_| Model::new(cfg.clone()).unwrap());
            let mut ws_n = Workspace { sole_writer: true, ..per_nonzero.workspace() };
            let mut ws_h = Workspace { hot_ids: hot.clone(), ..with_hot.workspace() };
            let mut ws_i = per_id.workspace();
            let rows: Vec<u32> = (0..900).rev().collect();
            for chunk in rows.chunks(128) {
                let batch = Batch { x: &x, rows: chunk, targets: &data[0].labels, weights: sample_weights };
                let loss_i = per_id.train_batch(&batch, &mut ws_i).unwrap();
                for (model, ws) in [(&per_nonzero, &mut ws_n), (&with_hot, &mut ws_h)] {
                    let loss = model.train_batch(&batch, ws).unwrap();
                    assert!((loss - loss_i).abs() <= 1e-5 * loss_i.abs(), "{loss} {loss_i}");
                }
                // Each hot id is updated once, after the rare ids.
                let hot_listed: Vec<u64> =
                    ws_h.nonzero_ids.iter().copied().filter(|&id| hot.as_ref().unwrap().index_of(id) != hot_ids::NOT_HOT).collect();
                let mut distinct = hot_listed.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert!(distinct.len() == hot_listed.len() && hot_listed.len() >= 10, "{hot_listed:?}");
                assert_eq!(&ws_h.nonzero_ids[ws_h.nonzero_ids.len() - hot_listed.len()..], &hot_listed[..]);
            }
            assert!(!ws_n.nonzero_ids.is_empty() && !ws_h.nonzero_ids.is_empty() && ws_i.nonzero_ids.is_empty());
            for model in [&per_nonzero, &with_hot] {
                for ((name, _, a), (_, _, b)) in model.tensors().into_iter().zip(per_id.tensors()) {
                    let (a, b) = (a.to_vec(), b.to_vec());
                    assert!(a.iter().any(|&v| v != 0.0) || name == "norm.max_abs" || !normalize, "{name} never trained");
                    let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs() / (1e-3 + q.abs())).fold(0.0f32, f32::max);
                    assert!(worst < 1e-4, "{name} normalize={normalize}: {worst}");
                }
            }
        }
    }

    #[test]
    fn row_gradients_are_computed_first_when_they_might_overflow() {
        // backward_deferred leaves the row gradients to the update only when a bound shows them
        // finite; otherwise (here a huge dh) it runs the plain backward.
        let data = make_ctr(&CtrSpec { n_rows: 64, n_features: 1 << 10, seed: 4, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let model = Model::new(config(Head::Mlp { hidden: vec![3] }, 8, OptimizerKind::LazyAdam)).unwrap();
        let rows: Vec<u32> = (0..64).collect();
        for (scale, deferred) in [(1e-3f32, true), (1e35, false), (f32::INFINITY, false)] {
            let dh: Vec<f32> = (0..64 * 8).map(|i| (i % 5) as f32 * scale).collect();
            let (mut a, mut b) = (model.workspace(), model.workspace());
            for ws in [&mut a, &mut b] {
                model.sparse.forward_train(&x, &rows, model.norm.as_ref(), ws);
            }
            model.sparse.backward_deferred(&dh, true, &mut a);
            model.sparse.backward(&dh, true, &mut b);
            assert_eq!(a.rows_deferred, deferred, "{scale}");
            if !deferred {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.grad_rows), bits(&b.grad_rows));
                assert_eq!(bits(&a.grad_feat_bias), bits(&b.grad_feat_bias));
            }
        }
    }

    #[test]
    fn divergence_keeps_the_last_weights_with_a_finite_loss() {
        // The MLP's per-id step, and a linear model's per-non-zero step (its undo log holds an
        // id once per occurrence), without and with hot ids.
        for (head, width, sole_writer, hot) in
            [(Head::Mlp { hidden: vec![4] }, 4, false, false), (Head::Linear, 1, true, false), (Head::Linear, 1, false, true)]
        {
            divergence_keeps_the_last_weights(head, width, sole_writer, hot);
        }
    }

    fn divergence_keeps_the_last_weights(head: Head, width: usize, sole_writer: bool, hot: bool) {
        let data = make_ctr(&CtrSpec { n_rows: 512, n_features: 1 << 10, seed: 2, ..Default::default() }).unwrap();
        let x = data[0].matrix.view().unwrap();
        let mut cfg = config(head, width, OptimizerKind::Sgd);
        cfg.normalize = false;
        cfg.optimizer.learning_rate = 1e30;
        let model = Model::new(cfg).unwrap();
        let hot_ids = hot.then(|| std::sync::Arc::new(HotIds::new(0..200).unwrap()));
        let mut ws = Workspace { sole_writer, hot_ids, ..model.workspace() };
        assert_eq!(model.updates_per_nonzero(&ws), sole_writer || hot);
        let rows: Vec<u32> = (0..512).collect();
        let mut snapshots = vec![model.tensors().iter().map(|(_, _, t)| t.to_vec()).collect::<Vec<_>>()];
        let mut failed = None;
        for (b, chunk) in rows.chunks(32).enumerate() {
            let batch = Batch { x: &x, rows: chunk, targets: &data[0].labels, weights: None };
            match model.train_batch(&batch, &mut ws) {
                Ok(_) => snapshots.push(model.tensors().iter().map(|(_, _, t)| t.to_vec()).collect()),
                Err(Error::Diverged(_)) => {
                    failed = Some(b);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let b = failed.expect("lr=1e30 on raw values up to 1e6 must diverge");
        let now: Vec<Vec<f32>> = model.tensors().iter().map(|(_, _, t)| t.to_vec()).collect();
        assert!(now.iter().flatten().all(|v| v.is_finite()));
        // Either this batch's update was refused (weights of before batch b) or its loss was not
        // finite and batch b-1's update was undone too.
        assert!(now == snapshots[b] || (b > 0 && now == snapshots[b - 1]));
    }

    #[test]
    fn config_errors() {
        assert!(Model::new(ModelConfig { n_features: 0, ..config(Head::Linear, 1, OptimizerKind::Sgd) }).is_err());
        assert!(Model::new(config(Head::Mlp { hidden: vec![4] }, 4, OptimizerKind::Ftrl)).is_err());
        assert!(
            Model::new(ModelConfig { n_features: 1 << 40, ..config(Head::Mlp { hidden: vec![] }, 64, OptimizerKind::LazyAdam) }).is_err()
        );
        // Sizes whose products overflow usize are refused before anything is allocated.
        let e = Model::new(config(Head::Mlp { hidden: vec![usize::MAX, usize::MAX] }, usize::MAX, OptimizerKind::Sgd)).err().unwrap();
        assert!(e.to_string().contains("GiB"), "{e}");
        let e = Model::new(config(Head::Mlp { hidden: vec![1 << 40] }, 4, OptimizerKind::Sgd)).err().unwrap();
        assert!(e.to_string().contains("GiB"), "{e}");
    }

    #[test]
    fn memory_bytes_is_exactly_the_tensor_bytes() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::LazyAdam, OptimizerKind::Adagrad, OptimizerKind::Ftrl] {
            for (head, width) in [(Head::Linear, 1), (Head::Mlp { hidden: vec![5, 3] }, 4), (Head::Mlp { hidden: vec![] }, 2)] {
                for normalize in [true, false] {
                    if kind == OptimizerKind::Ftrl && head != Head::Linear {
                        continue;
                    }
                    let cfg = ModelConfig { normalize, ..config(head.clone(), width, kind) };
                    let model = Model::new(cfg.clone()).unwrap();
                    let floats: usize = model.tensors().iter().map(|(_, _, t)| t.len()).sum();
                    assert_eq!(cfg.memory_bytes(), floats as u128 * 4, "{cfg:?}");
                }
            }
        }
    }

    #[test]
    fn eager_bytes_must_fit_in_available_memory() {
        let Some(available) = memory_available() else { return };
        // An MLP's sparse table is written at creation: refused when it cannot fit now, while the
        // same size of lazily allocated (zero) tables is fine for a linear model.
        let n_features = (available / 4 / 16 + 1) as usize * 2;
        let cfg = ModelConfig { n_features, ..config(Head::Mlp { hidden: vec![] }, 16, OptimizerKind::Sgd) };
        if cfg.memory_bytes() < 1 << 40 {
            let e = Model::new(cfg).err().unwrap().to_string();
            assert!(e.contains("GiB") && e.contains("available"), "{e}");
        }
        let lazy = ModelConfig { n_features: 1 << 28, normalize: false, ..config(Head::Linear, 1, OptimizerKind::Sgd) };
        assert!(Model::new(lazy).is_ok());
    }
}
