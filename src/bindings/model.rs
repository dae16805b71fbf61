//! `SparseModel`: the core `Model` as a Python object. Training and prediction release the GIL;
//! the progress callback re-takes it briefly, which is also where Ctrl-C is noticed.

use std::time::Duration;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::data::{f32_slice, with_csr_slices, IndexArray};
use super::errors::{detach, to_py};
use crate::data::{CsrView, Task};
use crate::error::Error;
use crate::model::{Batch, Head, Model, ModelConfig};
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::train::trainer::with_pool;
use crate::train::{fit, FitOptions, Parallel, Progress, TrainData};

#[pyclass(module = "sparselin._core", name = "SparseModel")]
pub struct PySparseModel {
    pub inner: Model,
}

fn parse_parallel(parallel: &str) -> PyResult<Parallel> {
    match parallel {
        "hogwild" => Ok(Parallel::Hogwild),
        "columns" => Ok(Parallel::Columns),
        other => Err(to_py(crate::invalid!("parallel must be 'hogwild' or 'columns', got '{other}'"))),
    }
}

/// `true` for "cuda" (the estimators resolve "auto" before calling).
fn parse_device(device: &str) -> PyResult<bool> {
    match device {
        "cpu" => Ok(false),
        "cuda" => Ok(true),
        other => Err(to_py(crate::invalid!("device must be 'cpu' or 'cuda', got '{other}'"))),
    }
}

fn parse_task(task: &str) -> PyResult<Task> {
    match task {
        "binary" => Ok(Task::Binary),
        "regression" => Ok(Task::Regression),
        other => Err(to_py(crate::invalid!("task must be 'binary' or 'regression', got '{other}'"))),
    }
}

/// The model config the Python estimators describe (`hidden=None`: the linear model).
#[allow(clippy::too_many_arguments)]
pub fn build_config(
    n_features: usize,
    sparse_width: usize,
    hidden: Option<Vec<usize>>,
    task: &str,
    normalize: bool,
    optimizer: &str,
    learning_rate: f32,
    l1: f32,
    l2: f32,
    seed: u64,
) -> PyResult<ModelConfig> {
    let config = ModelConfig {
        n_features,
        sparse_width,
        head: match hidden {
            None => Head::Linear,
            Some(hidden) => Head::Mlp { hidden },
        },
        task: parse_task(task)?,
        normalize,
        optimizer: OptimizerConfig { kind: OptimizerKind::parse(optimizer).map_err(to_py)?, learning_rate, l1, l2 },
        seed,
    };
    config.validate().map_err(to_py)?;
    Ok(config)
}

/// The config as JSON, validated, without building the model (a distributed run's shards and
/// workers each build their part of it).
#[pyfunction]
#[pyo3(signature = (n_features, sparse_width, hidden, task, normalize, optimizer, learning_rate, l1, l2, seed))]
#[allow(clippy::too_many_arguments)]
fn model_config_json(
    n_features: usize,
    sparse_width: usize,
    hidden: Option<Vec<usize>>,
    task: &str,
    normalize: bool,
    optimizer: &str,
    learning_rate: f32,
    l1: f32,
    l2: f32,
    seed: u64,
) -> PyResult<String> {
    let config = build_config(n_features, sparse_width, hidden, task, normalize, optimizer, learning_rate, l1, l2, seed)?;
    serde_json::to_string(&config).map_err(|e| to_py(crate::invalid!("{e}")))
}

/// A config from `model_config_json` or `SparseModel.config_json`.
pub fn parse_config(json: &str) -> PyResult<ModelConfig> {
    let config: ModelConfig = serde_json::from_str(json).map_err(|e| to_py(crate::invalid!("invalid model config JSON: {e}")))?;
    config.validate().map_err(to_py)?;
    Ok(config)
}

#[pymethods]
impl PySparseModel {
    /// `hidden=None` builds the linear model (sparse_width must be 1).
    #[new]
    #[pyo3(signature = (n_features, sparse_width, hidden, task, normalize, optimizer, learning_rate, l1, l2, seed))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        n_features: usize,
        sparse_width: usize,
        hidden: Option<Vec<usize>>,
        task: &str,
        normalize: bool,
        optimizer: &str,
        learning_rate: f32,
        l1: f32,
        l2: f32,
        seed: u64,
    ) -> PyResult<Self> {
        let config = build_config(n_features, sparse_width, hidden, task, normalize, optimizer, learning_rate, l1, l2, seed)?;
        Ok(Self { inner: detach(py, || Model::new(config))? })
    }

    /// Trains for `epochs` (or `max_batches`); returns a dict: epoch_losses, epochs_completed,
    /// batches, samples, seconds. `progress(epoch, samples_done, samples_per_epoch)` is called
    /// about every 0.2 s.
    #[pyo3(signature = (indptr, indices, values, n_cols, targets, weights, epochs, batch_size, threads, shuffle, progress=None, max_batches=None, continue_epoch=false, parallel="hogwild", device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn fit<'py>(
        &self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        targets: PyReadonlyArray1<'py, f32>,
        weights: Option<PyReadonlyArray1<'py, f32>>,
        epochs: usize,
        batch_size: usize,
        threads: usize,
        shuffle: bool,
        progress: Option<Py<PyAny>>,
        max_batches: Option<usize>,
        continue_epoch: bool,
        parallel: &str,
        device: &str,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let parallel = parse_parallel(parallel)?;
        let on_gpu = parse_device(device)?;
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let targets = f32_slice(&targets, "y")?;
        let weights = weights.as_ref().map(|w| f32_slice(w, "sample_weight")).transpose()?;
        let options = FitOptions {
            epochs,
            batch_size,
            threads,
            shuffle,
            progress_every: Duration::from_millis(200),
            max_batches,
            continue_epoch,
            parallel,
        };
        let model = &self.inner;
        let mut callback_error: Option<PyErr> = None;
        let result = with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            let data = TrainData::new(x, targets, weights, model)?;
            let mut on_progress = |pr: &Progress| -> crate::Result<()> {
                Python::attach(|py| -> PyResult<()> {
                    py.check_signals()?;
                    if let Some(cb) = &progress {
                        cb.call1(py, (pr.epoch, pr.samples_done, pr.samples_per_epoch))?;
                    }
                    Ok(())
                })
                .map_err(|e| {
                    callback_error = Some(e);
                    Error::Interrupted
                })
            };
            if on_gpu {
                crate::gpu::trainer::fit(model, &data, &options, &mut on_progress)
            } else {
                fit(model, &data, &options, &mut on_progress)
            }
        }));
        if let Some(e) = callback_error {
            return Err(e);
        }
        let report = result?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("epoch_losses", report.epoch_losses)?;
        d.set_item("epochs_completed", report.epochs_completed)?;
        d.set_item("batches", report.batches)?;
        d.set_item("samples", report.samples)?;
        d.set_item("seconds", report.seconds)?;
        d.set_item("transfer_seconds", report.transfer_seconds)?;
        d.set_item("waiting", report.waiting)?;
        Ok(d)
    }

    /// Trains on text files streamed in bounded memory (see `train::stream::fit_files`).
    /// Returns a dict: epoch_losses, samples, seconds, waiting, chunks, n_features, and
    /// distinct_keys / distinct_slots for hashed formats.
    #[pyo3(signature = (paths, spec_json, binary, epochs, batch_size, threads, window, cache=None, progress=None, collect_keys=false, parallel="hogwild", discretizer=None))]
    #[allow(clippy::too_many_arguments)]
    fn fit_files<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<std::path::PathBuf>,
        spec_json: &str,
        binary: bool,
        epochs: usize,
        batch_size: usize,
        threads: usize,
        window: usize,
        cache: Option<std::path::PathBuf>,
        progress: Option<Py<PyAny>>,
        collect_keys: bool,
        parallel: &str,
        discretizer: Option<PyRef<'py, super::features::PyDiscretizer>>,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let discretizer = discretizer.as_ref().map(|d| &d.inner);
        let spec = super::data::reader_spec(spec_json)?;
        let model = &self.inner;
        let options = FitOptions { epochs, batch_size, threads, parallel: parse_parallel(parallel)?, ..Default::default() };
        let mut callback_error: Option<PyErr> = None;
        let result = detach(py, || {
            let resolved = crate::data::readers::source::resolve(&paths, &spec, binary)?;
            let mut on_progress = |pr: &Progress| -> crate::Result<()> {
                Python::attach(|py| -> PyResult<()> {
                    py.check_signals()?;
                    if let Some(cb) = &progress {
                        cb.call1(py, (pr.epoch, pr.samples_done, pr.samples_per_epoch))?;
                    }
                    Ok(())
                })
                .map_err(|e| {
                    callback_error = Some(e);
                    Error::Interrupted
                })
            };
            let report = crate::train::stream::fit_files(
                model,
                &paths,
                &resolved,
                window,
                cache.as_deref(),
                collect_keys,
                discretizer,
                &options,
                &mut on_progress,
            )?;
            let stats = crate::data::readers::hashed_key_stats(report.keys.as_ref(), &spec)?;
            Ok((report, resolved.n_features, stats))
        });
        if let Some(e) = callback_error {
            return Err(e);
        }
        let (report, n_features, stats) = result?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("epoch_losses", report.epoch_losses)?;
        d.set_item("samples", report.samples)?;
        d.set_item("seconds", report.seconds)?;
        d.set_item("waiting", report.waiting)?;
        d.set_item("chunks", report.chunks)?;
        d.set_item("n_features", n_features)?;
        if let Some((keys, slots)) = stats {
            d.set_item("distinct_keys", keys)?;
            d.set_item("distinct_slots", slots)?;
        }
        Ok(d)
    }

    /// One epoch of one of the talk's comparison points (benchmarks only: `"dense_baseline"` or
    /// `"row_partitioned"`): returns (mean loss, seconds).
    #[pyo3(signature = (kind, indptr, indices, values, n_cols, targets, batch_size, threads))]
    #[allow(clippy::too_many_arguments)]
    fn fit_comparison<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        targets: PyReadonlyArray1<'py, f32>,
        batch_size: usize,
        threads: usize,
    ) -> PyResult<(f64, f64)> {
        let kind = crate::train::baseline::Comparison::parse(kind).map_err(to_py)?;
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let targets = f32_slice(&targets, "y")?;
        let model = &self.inner;
        with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            let data = TrainData::new(x, targets, None, model)?;
            crate::train::baseline::fit_comparison(kind, model, &data, batch_size, threads)
        }))
    }

    /// Multiplies all optimizer state by `factor` in [0, 1].
    fn decay_optimizer_state(&self, py: Python<'_>, factor: f32) -> PyResult<()> {
        let model = &self.inner;
        detach(py, || model.decay_optimizer_state(factor))
    }

    /// (epochs started, batches done in the current epoch).
    #[getter]
    fn position(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.inner.epochs_done.load(Relaxed), self.inner.batches_into_epoch.load(Relaxed))
    }

    /// Raw outputs (logits for a classifier), computed on `threads` threads or on the GPU.
    #[pyo3(signature = (indptr, indices, values, n_cols, threads, device="cpu"))]
    #[allow(clippy::too_many_arguments)]
    fn decision_function<'py>(
        &self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        threads: usize,
        device: &str,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let on_gpu = parse_device(device)?;
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let model = &self.inner;
        let out = with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            let mut out = vec![0.0f32; x.n_rows()];
            if on_gpu {
                crate::gpu::trainer::decision_function(model, &x, &mut out)?;
            } else {
                with_pool(threads, || model.decision_function(&x, &mut out))??;
            }
            Ok(out)
        }))?;
        Ok(out.into_pyarray(py))
    }

    /// One forward/backward pass on `rows` (in order) without updating the weights (max_abs
    /// does update, as in training). Returns a dict of the batch's loss, outputs and gradients:
    /// the hook the float64 reference tests use.
    #[pyo3(signature = (indptr, indices, values, n_cols, targets, weights, rows, apply=false))]
    #[allow(clippy::too_many_arguments)]
    fn batch_gradients<'py>(
        &self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        targets: PyReadonlyArray1<'py, f32>,
        weights: Option<PyReadonlyArray1<'py, f32>>,
        rows: Vec<u32>,
        apply: bool,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let targets = f32_slice(&targets, "y")?;
        let weights = weights.as_ref().map(|w| f32_slice(w, "sample_weight")).transpose()?;
        let model = &self.inner;
        let (loss, ws) = with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            let data = TrainData::new(x, targets, weights, model)?;
            if let Some(&r) = rows.iter().find(|&&r| r as usize >= data.x.n_rows()) {
                return Err(crate::invalid!("row {r} is out of range"));
            }
            let batch = Batch { x: &data.x, rows: &rows, targets, weights };
            let mut ws = model.workspace();
            let loss = model.compute_gradients(&batch, &mut ws)?;
            if apply {
                model.apply_gradients(&mut ws)?;
            }
            Ok((loss, ws))
        }))?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("loss", loss)?;
        d.set_item("outputs", ws.logits.into_pyarray(py))?;
        d.set_item("ids", ws.batch.slots.ids.into_pyarray(py))?;
        d.set_item("sparse.weight", ws.grad_rows.into_pyarray(py))?;
        d.set_item("norm.feat_bias", ws.grad_feat_bias.into_pyarray(py))?;
        d.set_item("sparse.bias", ws.grad_sparse_bias.into_pyarray(py))?;
        for (l, (gw, gb)) in ws.grad_dense_w.into_iter().zip(ws.grad_dense_b).enumerate() {
            d.set_item(format!("dense.{l}.weight"), gw.into_pyarray(py))?;
            d.set_item(format!("dense.{l}.bias"), gb.into_pyarray(py))?;
        }
        Ok(d)
    }

    /// (name, shape) of every tensor, learned ones and optimizer state.
    fn tensor_names(&self) -> Vec<(String, Vec<usize>)> {
        self.inner.tensors().into_iter().map(|(n, s, _)| (n, s)).collect()
    }

    /// A flat float32 copy of one tensor.
    fn get_tensor<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let t = self.inner.tensor(name).map_err(to_py)?;
        Ok(t.to_vec().into_pyarray(py))
    }

    fn set_tensor(&self, name: &str, values: PyReadonlyArray1<'_, f32>) -> PyResult<()> {
        let t = self.inner.tensor(name).map_err(to_py)?;
        let v = f32_slice(&values, "values")?;
        if v.len() != t.len() {
            return Err(to_py(crate::invalid!("tensor '{name}' has {} elements, got {}", t.len(), v.len())));
        }
        t.copy_from(v);
        Ok(())
    }

    /// Puts the model at `batches` into its epoch number `epochs` (a distributed worker rolled
    /// back to a synchronized checkpoint).
    fn set_position(&self, epochs: u64, batches: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.epochs_done.store(epochs, Relaxed);
        self.inner.batches_into_epoch.store(batches, Relaxed);
    }

    #[getter]
    fn step(&self) -> u64 {
        self.inner.step.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[getter]
    fn config_json(&self) -> String {
        serde_json::to_string(&self.inner.config).unwrap_or_default()
    }
}

/// Distinct rows per second of plain Adam row updates on random rows (benchmarks only).
#[pyfunction]
fn adam_row_roofline(py: Python<'_>, n_rows: usize, width: usize, batches: Vec<Vec<u64>>, repeats: usize) -> PyResult<f64> {
    detach(py, || crate::train::baseline::adam_row_roofline(n_rows, width, &batches, repeats))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(model_config_json, m)?)?;
    m.add_function(wrap_pyfunction!(adam_row_roofline, m)?)?;
    m.add_class::<PySparseModel>()
}
