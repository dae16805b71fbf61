//! Training and prediction on the GPU. For one `fit` call every tensor (weights, feature bias,
//! max_abs, optimizer state) lives on the device; the CPU `Model` is uploaded at the start and
//! receives the result at the end, so checkpoints, prediction on the CPU and the Python layer see
//! an ordinary model. Host threads build the next batches (with their feature-grouped
//! transpose, packed into pinned memory) while the device trains the current one; each batch is
//! one asynchronous copy on the compute stream. Not done: a second stream for the copies, CUDA
//! graphs. The loss total stays on the device and is read every 32 batches (the divergence check),
//! so the host runs ahead of the device in between. Batches follow the CPU trainer's order
//! (`epoch_order`), and the epoch position is kept the same way, so a GPU run can be compared
//! batch for batch with a CPU run.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::batch::HostBatch;
use super::transfer::{cuda, uninit, zeros, DeviceBatch, StagedBatch, Staging};
use super::{device, guarded, Gpu};
use crate::data::batches::epoch_order;
use crate::data::{CsrView, Idx, Task};
use crate::error::{Error, Result};
use crate::model::workspace::RowSlots;
use crate::model::Model;
use crate::optim::{OptimizerKind, Param};
use crate::train::{FitOptions, FitReport, Progress, TrainData};

const THREADS: u32 = 256;

fn kernel_code(kind: OptimizerKind) -> Result<i32> {
    match kind {
        OptimizerKind::Sgd => Ok(0),
        OptimizerKind::LazyAdam => Ok(1),
        OptimizerKind::Adagrad => Ok(2),
        OptimizerKind::Ftrl => Err(crate::invalid!("optimizer='ftrl' is not available on the GPU; use device='cpu'")),
    }
}

fn grid(n: usize, per_block: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(per_block).max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Threads per item: `grid(n, THREADS)` for one thread per item, `grid(n, THREADS / 32)` for one
/// warp per item.
const WARPS_PER_BLOCK: usize = THREADS as usize / 32;

/// A parameter on the device: values and up to two optimizer slots (a one-element placeholder
/// where the optimizer has fewer, so every kernel gets valid pointers).
struct DeviceParam {
    values: CudaSlice<f32>,
    s0: CudaSlice<f32>,
    s1: CudaSlice<f32>,
    len: usize,
}

impl DeviceParam {
    /// `p` on the device; its optimizer state too when `with_state` (training), else placeholders
    /// (prediction reads values only).
    fn upload(stream: &Arc<CudaStream>, staging: &mut Staging, p: &Param, with_state: bool) -> Result<Self> {
        let mut slot = |k: usize| match p.slots.get(k) {
            Some(state) if with_state => staging.upload(stream, state),
            _ => zeros(stream, 1),
        };
        let (s0, s1) = (slot(0)?, slot(1)?);
        Ok(Self { values: staging.upload(stream, &p.values)?, s0, s1, len: p.len() })
    }

    fn download(&self, stream: &Arc<CudaStream>, staging: &mut Staging, p: &Param) -> Result<()> {
        staging.download(stream, &self.values, &p.values)?;
        for (k, slot) in p.slots.iter().enumerate() {
            staging.download(stream, if k == 0 { &self.s0 } else { &self.s1 }, slot)?;
        }
        Ok(())
    }
}

struct DeviceLayer {
    weight: DeviceParam,
    bias: DeviceParam,
    n_in: usize,
    n_out: usize,
}

/// Every tensor of a model, on the device.
struct DeviceModel {
    gpu: Arc<Gpu>,
    width: usize,
    sparse: DeviceParam,
    sparse_bias: DeviceParam,
    feat_bias: Option<DeviceParam>,
    max_abs: Option<CudaSlice<f32>>,
    layers: Vec<DeviceLayer>,
    optimizer: OptimizerKind,
    regression: bool,
    /// One-element stand-ins for the feature bias, its optimizer state and max_abs when the
    /// model does not normalize (kernels still take valid pointers).
    placeholders: [CudaSlice<f32>; 4],
    /// Whether the optimizer state was uploaded (for training): only then can the model be
    /// downloaded back.
    with_state: bool,
}

impl DeviceModel {
    /// Every tensor of `model` on the device; optimizer state only `for_training`.
    fn upload(gpu: Arc<Gpu>, model: &Model, for_training: bool) -> Result<Self> {
        Staging::with(&gpu.clone(), |staging| Self::upload_with(gpu, model, for_training, staging))
    }

    fn upload_with(gpu: Arc<Gpu>, model: &Model, with_state: bool, staging: &mut Staging) -> Result<Self> {
        let s = &gpu.stream;
        let norm = model.norm.as_ref();
        let placeholders = [zeros(s, 1)?, zeros(s, 1)?, zeros(s, 1)?, zeros(s, 1)?];
        Ok(Self {
            placeholders,
            with_state,
            width: model.config.sparse_width,
            sparse: DeviceParam::upload(s, staging, &model.sparse.weight, with_state)?,
            sparse_bias: DeviceParam::upload(s, staging, &model.sparse.bias, with_state)?,
            feat_bias: norm.map(|n| DeviceParam::upload(s, staging, &n.feat_bias, with_state)).transpose()?,
            max_abs: norm.map(|n| staging.upload(s, &n.max_abs)).transpose()?,
            layers: model
                .dense
                .iter()
                .map(|d| {
                    Ok(DeviceLayer {
                        weight: DeviceParam::upload(s, staging, &d.weight, with_state)?,
                        bias: DeviceParam::upload(s, staging, &d.bias, with_state)?,
                        n_in: d.n_in,
                        n_out: d.n_out,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            optimizer: model.config.optimizer.kind,
            regression: model.config.task == Task::Regression,
            gpu,
        })
    }

    fn download(&self, model: &Model) -> Result<()> {
        Staging::with(&self.gpu, |staging| self.download_with(model, staging))
    }

    fn download_with(&self, model: &Model, staging: &mut Staging) -> Result<()> {
        if !self.with_state {
            return Err(Error::Unavailable("internal: a model uploaded for prediction has no optimizer state to download".into()));
        }
        let s = &self.gpu.stream;
        self.sparse.download(s, staging, &model.sparse.weight)?;
        self.sparse_bias.download(s, staging, &model.sparse.bias)?;
        if let (Some(norm), Some(fb), Some(m)) = (&model.norm, &self.feat_bias, &self.max_abs) {
            fb.download(s, staging, &norm.feat_bias)?;
            staging.download(s, m, &norm.max_abs)?;
        }
        for (layer, d) in self.layers.iter().zip(&model.dense) {
            layer.weight.download(s, staging, &d.weight)?;
            layer.bias.download(s, staging, &d.bias)?;
        }
        Ok(())
    }

    /// Normalization, sparse layer and dense layers: returns the layer input of every entry and
    /// `pre` (the sparse layer output, then each dense layer's output; the last is the logits),
    /// and, in training, the maxima of hot slots' chunks (for `sparse_update_hot`).
    fn forward(&mut self, b: &DeviceBatch, training: bool) -> Result<Forward> {
        let gpu = self.gpu.clone();
        let s = &gpu.stream;
        let z = b.sizes;
        let (n, nnz, n_chunks, width) = (z.n_rows as i32, z.nnz as i32, z.n_chunks as i32, self.width as i32);
        let (chunk_slot, chunk_begin, chunk_partial) = (b.chunk_slot(), b.chunk_begin(), b.chunk_partial());
        let (slot_ptr, slot_entries, slot_id, values) = (b.slot_ptr(), b.slot_entries(), b.slot_id(), b.values());
        let (row_ptr, entry_slot) = (b.row_ptr(), b.entry_slot());
        // SAFETY (allocations): each buffer below is written whole by the kernel that produces it
        // (normalize_entries / copy_values: every entry; chunk_max_abs: every hot chunk; the
        // gathers and dense layers: every output) before anything reads it.
        let mut y = unsafe { uninit::<f32>(s, z.nnz)? };
        let mut chunk_max = unsafe { uninit::<f32>(s, z.n_partials)? };
        // SAFETY (every launch below): the arguments match the kernel's parameter list in
        // kernels.cu in order and type; every index a kernel reads was built by HostBatch within
        // the bounds of the buffers passed (entries < nnz, rows < n_rows, slots < n_slots, chunk
        // partials < n_partials, ids < n_features, the size of the tables).
        unsafe {
            match (&self.max_abs, &self.feat_bias) {
                (Some(max_abs), Some(fb)) => {
                    let training = training as i32;
                    if training != 0 && z.n_partials > 0 {
                        s.launch_builder(gpu.function("chunk_max_abs"))
                            .arg(&n_chunks)
                            .arg(&chunk_slot)
                            .arg(&chunk_begin)
                            .arg(&chunk_partial)
                            .arg(&slot_ptr)
                            .arg(&slot_entries)
                            .arg(&values)
                            .arg(&mut chunk_max)
                            .launch(grid(z.n_chunks, WARPS_PER_BLOCK))
                            .map_err(cuda("normalizing"))?;
                    }
                    s.launch_builder(gpu.function("normalize_entries"))
                        .arg(&n_chunks)
                        .arg(&chunk_slot)
                        .arg(&chunk_begin)
                        .arg(&chunk_partial)
                        .arg(&slot_ptr)
                        .arg(&slot_entries)
                        .arg(&slot_id)
                        .arg(&values)
                        .arg(max_abs)
                        .arg(&fb.values)
                        .arg(&chunk_max)
                        .arg(&mut y)
                        .arg(&training)
                        .launch(grid(z.n_chunks, WARPS_PER_BLOCK))
                        .map_err(cuda("normalizing"))?;
                }
                _ => {
                    s.launch_builder(gpu.function("copy_values"))
                        .arg(&nnz)
                        .arg(&values)
                        .arg(&mut y)
                        .launch(grid(z.nnz, THREADS as usize))
                        .map_err(cuda("copying values"))?;
                }
            }
            let mut h = uninit::<f32>(s, z.n_rows * self.width)?;
            if self.width == 1 {
                s.launch_builder(gpu.function("gather_forward_width1"))
                    .arg(&n)
                    .arg(&row_ptr)
                    .arg(&entry_slot)
                    .arg(&slot_id)
                    .arg(&y)
                    .arg(&self.sparse.values)
                    .arg(&self.sparse_bias.values)
                    .arg(&mut h)
                    .launch(grid(z.n_rows, WARPS_PER_BLOCK))
                    .map_err(cuda("the sparse layer"))?;
            } else {
                s.launch_builder(gpu.function("gather_forward"))
                    .arg(&n)
                    .arg(&width)
                    .arg(&row_ptr)
                    .arg(&entry_slot)
                    .arg(&slot_id)
                    .arg(&y)
                    .arg(&self.sparse.values)
                    .arg(&self.sparse_bias.values)
                    .arg(&mut h)
                    .launch(grid(z.n_rows, WARPS_PER_BLOCK))
                    .map_err(cuda("the sparse layer"))?;
            }
            let mut pre = vec![h];
            for layer in &self.layers {
                let (n_in, n_out, relu) = (layer.n_in as i32, layer.n_out as i32, 1i32);
                let mut out = uninit::<f32>(s, z.n_rows * layer.n_out)?;
                s.launch_builder(gpu.function("dense_forward"))
                    .arg(&n)
                    .arg(&n_in)
                    .arg(&n_out)
                    .arg(pre.last().expect("the sparse layer output"))
                    .arg(&layer.weight.values)
                    .arg(&layer.bias.values)
                    .arg(&mut out)
                    .arg(&relu)
                    .launch(grid(z.n_rows * layer.n_out, THREADS as usize))
                    .map_err(cuda("a dense layer"))?;
                pre.push(out);
            }
            Ok(Forward { y, pre, chunk_max })
        }
    }

    /// One training step on the batch; adds the sum of its weighted loss terms to `loss_total`
    /// (on the device: nothing here waits for the device).
    fn train_batch(&mut self, b: &DeviceBatch, step: crate::optim::Step, loss_total: &mut CudaSlice<f64>) -> Result<()> {
        let gpu = self.gpu.clone();
        let s = &gpu.stream;
        let Forward { y, pre, chunk_max } = self.forward(b, true)?;
        let z = b.sizes;
        let (n, width, n_chunks, n_hot) = (z.n_rows as i32, self.width as i32, z.n_chunks as i32, z.n_hot as i32);
        let (kind, lr, lr_t, l2) = (kernel_code(self.optimizer)?, step.learning_rate, step.lr_t, step.l2);
        let (no_l2, regression, inv_n) = (0.0f32, self.regression as i32, 1.0 / z.n_rows as f32);
        let (targets, weights) = (b.targets(), b.weights());
        let (chunk_slot, chunk_begin, chunk_partial) = (b.chunk_slot(), b.chunk_begin(), b.chunk_partial());
        let (slot_ptr, slot_entries, slot_id, entry_row) = (b.slot_ptr(), b.slot_entries(), b.slot_id(), b.entry_row());
        let (hot_slot, hot_partial) = (b.hot_slot(), b.hot_partial());
        // SAFETY (allocations): as in `forward`; partial_g / partial_d: every hot chunk writes all
        // `width` of its values.
        let (mut d_logits, mut loss_terms) = unsafe { (uninit::<f32>(s, z.n_rows)?, uninit::<f32>(s, z.n_rows)?) };
        let (mut partial_g, mut partial_d) =
            unsafe { (uninit::<f32>(s, z.n_partials * self.width)?, uninit::<f32>(s, z.n_partials * self.width)?) };
        // SAFETY: as in `forward`.
        unsafe {
            s.launch_builder(gpu.function("loss_grad"))
                .arg(&n)
                .arg(&regression)
                .arg(pre.last().expect("logits"))
                .arg(&targets)
                .arg(&weights)
                .arg(&inv_n)
                .arg(&mut d_logits)
                .arg(&mut loss_terms)
                .launch(grid(z.n_rows, THREADS as usize))
                .map_err(cuda("the loss"))?;
            s.launch_builder(gpu.function("accumulate_loss"))
                .arg(&n)
                .arg(&loss_terms)
                .arg(loss_total)
                .launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
                .map_err(cuda("the loss"))?;
            // Dense backward, gradients first, updates after: the input gradient of a layer
            // uses its weights before this step, as on the CPU.
            let mut d_out = d_logits;
            let mut dense_grads = Vec::new();
            for (l, layer) in self.layers.iter().enumerate().rev() {
                let (n_in, n_out, relu) = (layer.n_in as i32, layer.n_out as i32, 1i32);
                let mut gw = uninit::<f32>(s, layer.n_in * layer.n_out)?;
                let mut gb = uninit::<f32>(s, layer.n_out)?;
                s.launch_builder(gpu.function("dense_grad_weights"))
                    .arg(&n)
                    .arg(&n_in)
                    .arg(&n_out)
                    .arg(&pre[l])
                    .arg(&d_out)
                    .arg(&mut gw)
                    .arg(&mut gb)
                    .arg(&relu)
                    .launch(grid((layer.n_in + 1) * layer.n_out, WARPS_PER_BLOCK))
                    .map_err(cuda("dense gradients"))?;
                let mut d_in = uninit::<f32>(s, z.n_rows * layer.n_in)?;
                s.launch_builder(gpu.function("dense_grad_input"))
                    .arg(&n)
                    .arg(&n_in)
                    .arg(&n_out)
                    .arg(&pre[l])
                    .arg(&layer.weight.values)
                    .arg(&d_out)
                    .arg(&mut d_in)
                    .launch(grid(z.n_rows * layer.n_in, THREADS as usize))
                    .map_err(cuda("dense gradients"))?;
                dense_grads.push((l, gw, gb));
                d_out = d_in;
            }
            let dh = d_out;
            let mut bias_grad = uninit::<f32>(s, self.width)?;
            s.launch_builder(gpu.function("column_sums"))
                .arg(&n)
                .arg(&width)
                .arg(&dh)
                .arg(&mut bias_grad)
                .launch(grid(self.width, WARPS_PER_BLOCK))
                .map_err(cuda("the bias gradient"))?;
            let update = |p: &mut DeviceParam, g: &CudaSlice<f32>, l2: f32| -> Result<()> {
                let len = p.len as i32;
                s.launch_builder(gpu.function("dense_update"))
                    .arg(&len)
                    .arg(&kind)
                    .arg(&mut p.values)
                    .arg(&mut p.s0)
                    .arg(&mut p.s1)
                    .arg(g)
                    .arg(&lr)
                    .arg(&lr_t)
                    .arg(&l2)
                    .launch(grid(p.len, THREADS as usize))
                    .map_err(cuda("an optimizer step"))?;
                Ok(())
            };
            for (l, gw, gb) in &dense_grads {
                let layer = &mut self.layers[*l];
                update(&mut layer.weight, gw, l2)?;
                update(&mut layer.bias, gb, no_l2)?;
            }
            update(&mut self.sparse_bias, &bias_grad, no_l2)?;
            let normalized = self.feat_bias.is_some() as i32;
            let [ph0, ph1, ph2, ph3] = &mut self.placeholders;
            let (fb_values, fb_s0, fb_s1) = match self.feat_bias.as_mut() {
                Some(p) => (&mut p.values, &mut p.s0, &mut p.s1),
                None => (ph0, ph1, ph2),
            };
            let max_abs = self.max_abs.as_mut().unwrap_or(ph3);
            s.launch_builder(gpu.function("sparse_backward"))
                .arg(&n_chunks)
                .arg(&width)
                .arg(&chunk_slot)
                .arg(&chunk_begin)
                .arg(&chunk_partial)
                .arg(&slot_ptr)
                .arg(&slot_entries)
                .arg(&entry_row)
                .arg(&slot_id)
                .arg(&y)
                .arg(&dh)
                .arg(&mut self.sparse.values)
                .arg(&mut self.sparse.s0)
                .arg(&mut self.sparse.s1)
                .arg(&mut *fb_values)
                .arg(&mut *fb_s0)
                .arg(&mut *fb_s1)
                .arg(&normalized)
                .arg(&kind)
                .arg(&lr)
                .arg(&lr_t)
                .arg(&l2)
                .arg(&mut partial_g)
                .arg(&mut partial_d)
                .launch(grid(z.n_chunks, WARPS_PER_BLOCK))
                .map_err(cuda("the sparse update"))?;
            if z.n_hot > 0 {
                s.launch_builder(gpu.function("sparse_update_hot"))
                    .arg(&n_hot)
                    .arg(&width)
                    .arg(&hot_slot)
                    .arg(&hot_partial)
                    .arg(&slot_ptr)
                    .arg(&slot_id)
                    .arg(&partial_g)
                    .arg(&partial_d)
                    .arg(&chunk_max)
                    .arg(max_abs)
                    .arg(&mut self.sparse.values)
                    .arg(&mut self.sparse.s0)
                    .arg(&mut self.sparse.s1)
                    .arg(fb_values)
                    .arg(fb_s0)
                    .arg(fb_s1)
                    .arg(&normalized)
                    .arg(&kind)
                    .arg(&lr)
                    .arg(&lr_t)
                    .arg(&l2)
                    .launch(grid(z.n_hot, WARPS_PER_BLOCK))
                    .map_err(cuda("the sparse update"))?;
            }
        }
        Ok(())
    }
}

/// What `forward` leaves for the backward pass.
struct Forward {
    y: CudaSlice<f32>,
    pre: Vec<CudaSlice<f32>>,
    chunk_max: CudaSlice<f32>,
}

/// `train::fit` on the GPU: same options, same batch order and epoch position, same report.
pub fn fit<P: Idx, I: Idx>(
    model: &Model,
    data: &TrainData<'_, P, I>,
    options: &FitOptions,
    on_progress: &mut dyn FnMut(&Progress) -> Result<()>,
) -> Result<FitReport> {
    if options.batch_size == 0 {
        return Err(crate::invalid!("batch_size must be at least 1"));
    }
    kernel_code(model.config.optimizer.kind)?;
    let gpu = device()?;
    let counters = (model.step.load(Relaxed), model.epochs_done.load(Relaxed), model.batches_into_epoch.load(Relaxed));
    let result = guarded("training on the GPU", || fit_on(gpu, model, data, options, on_progress));
    if matches!(result, Err(ref e) if *e != Error::Interrupted) {
        // The weights are only downloaded at the end, so a failed fit left them as they were:
        // the counters go back with them.
        model.step.store(counters.0, Relaxed);
        model.epochs_done.store(counters.1, Relaxed);
        model.batches_into_epoch.store(counters.2, Relaxed);
    }
    result
}

fn fit_on<P: Idx, I: Idx>(
    gpu: Arc<Gpu>,
    model: &Model,
    data: &TrainData<'_, P, I>,
    options: &FitOptions,
    on_progress: &mut dyn FnMut(&Progress) -> Result<()>,
) -> Result<FitReport> {
    let start = Instant::now();
    let mut device_model = DeviceModel::upload(gpu.clone(), model, true)?;
    let mut report = FitReport { transfer_seconds: start.elapsed().as_secs_f64(), ..FitReport::default() };
    let n = data.x.n_rows();
    let n_batches = n.div_ceil(options.batch_size);
    if !options.continue_epoch || model.batches_into_epoch.load(Relaxed) as usize >= n_batches {
        model.batches_into_epoch.store(0, Relaxed);
    }
    let mut batches_left = options.max_batches.unwrap_or(usize::MAX);
    let mut last_report = Instant::now();
    let mut epoch = 0;
    let pool = &gpu.batch_buffers;
    while epoch < options.epochs && batches_left > 0 {
        let first = model.batches_into_epoch.load(Relaxed) as usize;
        let shuffle_epoch =
            if first > 0 { model.epochs_done.load(Relaxed).saturating_sub(1) } else { model.epochs_done.fetch_add(1, Relaxed) };
        let end = n_batches.min(first.saturating_add(batches_left));
        let order = epoch_order(n, model.config.seed, shuffle_epoch, options.shuffle);
        let mut samples = 0u64;
        let mut loss_total = gpu.stream.alloc_zeros::<f64>(1).map_err(cuda("allocating device memory"))?;
        // The loss total is read (a host-device sync) every CHECK_EVERY batches and at the end:
        // a non-finite total means training diverged in the batches since the last check.
        let mut checked_step = model.step.load(Relaxed);
        let mut check = |loss_total: &CudaSlice<f64>, t: u64| -> Result<f64> {
            let total = gpu.stream.clone_dtoh(loss_total).map_err(cuda("reading the loss"))?[0];
            if !total.is_finite() {
                return Err(Error::Diverged(format!(
                    "training diverged on the GPU between updates {} and {t} (loss {total}); the model keeps the weights it had before this fit",
                    checked_step + 1
                )));
            }
            checked_step = t;
            Ok(total)
        };
        // The next batches are built on host threads while the device trains (builder t builds
        // every `builders`-th batch, two in flight each; the device side takes them in order):
        // building a batch's transpose costs the host more than the device spends training it.
        let builders = host_builders().min(end.saturating_sub(first)).max(1);
        let result = std::thread::scope(|scope| -> Result<()> {
            let order = &order;
            let mut inboxes = Vec::with_capacity(builders);
            for t in 0..builders {
                let (send, receive) = sync_channel::<Result<StagedBatch>>(2);
                inboxes.push(receive);
                scope.spawn(move || {
                    let (mut batch, mut slots) = (HostBatch::default(), RowSlots::default());
                    for b in (first + t..end).step_by(builders) {
                        let rows = &order[b * options.batch_size..((b + 1) * options.batch_size).min(n)];
                        batch.build(&data.x, rows, data.targets, data.weights, &mut slots);
                        let staged = pool.stage(&batch);
                        let failed = staged.is_err();
                        if send.send(staged).is_err() || failed {
                            return; // the device side stopped, or this thread cannot go on
                        }
                    }
                });
            }
            const CHECK_EVERY: u64 = 32;
            for b in first..end {
                let waited = Instant::now();
                let Ok(staged) = inboxes[(b - first) % builders].recv() else {
                    return Err(Error::Unavailable("a host thread building GPU batches stopped".into()));
                };
                report.waiting += waited.elapsed().as_secs_f64();
                let batch = DeviceBatch::upload_staged(&gpu.stream, staged?, pool)?;
                let t = model.step.load(Relaxed) + 1;
                device_model.train_batch(&batch, model.config.optimizer.step(t), &mut loss_total)?;
                model.step.store(t, Relaxed);
                model.batches_into_epoch.fetch_add(1, Relaxed);
                samples += batch.sizes.n_rows as u64;
                report.batches += 1;
                if t % CHECK_EVERY == 0 {
                    check(&loss_total, t)?;
                }
                if last_report.elapsed() >= options.progress_every {
                    last_report = Instant::now();
                    on_progress(&Progress { epoch, epochs: options.epochs, samples_done: samples, samples_per_epoch: n as u64 })?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            if e == Error::Interrupted {
                // Ctrl-C keeps what was trained, as on the CPU; the loss check comes first so
                // that diverged weights are never kept.
                check(&loss_total, model.step.load(Relaxed))?;
                device_model.download(model)?;
            }
            return Err(e);
        }
        let loss_sum = check(&loss_total, model.step.load(Relaxed))?;
        report.samples += samples;
        report.epoch_losses.push(if samples > 0 { loss_sum / samples as f64 } else { 0.0 });
        batches_left -= end - first;
        if end == n_batches {
            model.batches_into_epoch.store(0, Relaxed);
            report.epochs_completed += 1;
            epoch += 1;
        }
    }
    gpu.stream.synchronize().map_err(cuda("finishing"))?;
    let download = Instant::now();
    device_model.download(model)?;
    report.transfer_seconds += download.elapsed().as_secs_f64();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Host threads that build batches for the device: enough to keep it fed, a few cores left for
/// the thread that drives the device.
fn host_builders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).saturating_sub(1).clamp(1, 12)
}

/// Raw outputs of every row, computed on the GPU (inference normalization: max_abs is read, not
/// raised).
pub fn decision_function<P: Idx, I: Idx>(model: &Model, x: &CsrView<'_, P, I>, out: &mut [f32]) -> Result<()> {
    if x.n_features() != model.config.n_features {
        return Err(crate::invalid!(
            "X has {} features but the model was built for n_features={}",
            x.n_features(),
            model.config.n_features
        ));
    }
    if out.len() != x.n_rows() {
        return Err(crate::invalid!("output has {} entries for {} rows", out.len(), x.n_rows()));
    }
    let gpu = device()?;
    guarded("predicting on the GPU", || {
        let mut device_model = DeviceModel::upload(gpu.clone(), model, false)?;
        const CHUNK: usize = 1 << 16;
        let (mut host, mut slots) = (HostBatch::default(), RowSlots::default());
        let ones = vec![1.0f32; x.n_rows()];
        let rows: Vec<u32> = (0..x.n_rows() as u32).collect();
        for (c, chunk) in rows.chunks(CHUNK).enumerate() {
            host.build(x, chunk, &ones, None, &mut slots);
            let batch = DeviceBatch::upload(&gpu.stream, &host)?;
            let forward = device_model.forward(&batch, false)?;
            let logits = gpu.stream.clone_dtoh(forward.pre.last().expect("logits")).map_err(cuda("reading outputs"))?;
            out[c * CHUNK..c * CHUNK + chunk.len()].copy_from_slice(&logits[..chunk.len()]);
        }
        Ok(())
    })
}
