//! Parameter shards, pull workers and model averaging for `sparselin.distributed`. Pulls and
//! pushes release the GIL, so a threaded Ray actor serves several workers at once.

use std::sync::Mutex;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::data::{f32_slice, index_slice, with_csr_slices, IndexArray};
use super::errors::{detach, to_py};
use super::model::{parse_config, PySparseModel};
use crate::checkpoint::write_atomically;
use crate::data::CsrView;
use crate::distributed::{self, DenseShard, ModelDelta, ParameterShard, PullWorker, ShardCheckpoint, SyncPoint, TensorDelta};
use crate::invalid;

type F32Array<'py> = Bound<'py, PyArray1<f32>>;

/// One shard of the sparse table, plus the dense tensors on the shard that carries them.
#[pyclass(module = "sparselin._core", name = "ParameterShard", frozen)]
pub struct PyParameterShard {
    inner: ShardCheckpoint,
    /// Serializes checkpoint writes (pulls and pushes go on meanwhile).
    saving: Mutex<()>,
}

fn dense_of(shard: &ShardCheckpoint) -> PyResult<&DenseShard> {
    shard.dense.as_ref().ok_or_else(|| to_py(invalid!("shard {} does not hold the dense tensors", shard.shard.layout.index)))
}

#[pymethods]
impl PyParameterShard {
    #[new]
    fn new(py: Python<'_>, config_json: &str, index: usize, count: usize, with_dense: bool) -> PyResult<Self> {
        let config = parse_config(config_json)?;
        let inner = detach(py, || {
            let dense = if with_dense { Some(DenseShard::new(&config)?) } else { None };
            Ok(ShardCheckpoint { shard: ParameterShard::new(config, index, count)?, dense })
        })?;
        Ok(Self { inner, saving: Mutex::new(()) })
    }

    /// A shard restored from `to_bytes` / a checkpoint file's bytes.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = detach(py, || ShardCheckpoint::from_bytes(data))?;
        Ok(Self { inner, saving: Mutex::new(()) })
    }

    #[getter]
    fn index(&self) -> usize {
        self.inner.shard.layout.index
    }

    #[getter]
    fn count(&self) -> usize {
        self.inner.shard.layout.count
    }

    #[getter]
    fn config_json(&self) -> String {
        serde_json::to_string(&self.inner.shard.config).unwrap_or_default()
    }

    /// (rows: ids x width, feature biases, max_abs) of `ids` (uint64).
    fn pull<'py>(&self, py: Python<'py>, ids: PyReadonlyArray1<'py, u64>) -> PyResult<(F32Array<'py>, F32Array<'py>, F32Array<'py>)> {
        let ids = index_slice(&ids, "ids")?;
        let shard = &self.inner.shard;
        let (rows, fb, max_abs) = detach(py, || {
            let (mut rows, mut fb, mut max_abs) = (Vec::new(), Vec::new(), Vec::new());
            shard.pull(ids, &mut rows, &mut fb, &mut max_abs)?;
            Ok((rows, fb, max_abs))
        })?;
        Ok((rows.into_pyarray(py), fb.into_pyarray(py), max_abs.into_pyarray(py)))
    }

    fn push(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u64>,
        row_grads: PyReadonlyArray1<'_, f32>,
        feat_bias_grads: PyReadonlyArray1<'_, f32>,
        max_abs: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<()> {
        let ids = index_slice(&ids, "ids")?;
        let (g, fb, m) = (f32_slice(&row_grads, "row_grads")?, f32_slice(&feat_bias_grads, "feat_bias_grads")?, f32_slice(&max_abs, "max_abs")?);
        let shard = &self.inner.shard;
        detach(py, || shard.push(ids, g, fb, m))
    }

    fn pull_dense<'py>(&self, py: Python<'py>) -> PyResult<F32Array<'py>> {
        let mut out = Vec::new();
        dense_of(&self.inner)?.pull(&mut out);
        Ok(out.into_pyarray(py))
    }

    fn push_dense(&self, py: Python<'_>, grads: PyReadonlyArray1<'_, f32>) -> PyResult<()> {
        let dense = dense_of(&self.inner)?;
        let g = f32_slice(&grads, "grads")?;
        detach(py, || dense.push(g))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &self.inner;
        let bytes = detach(py, || inner.to_bytes())?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename).
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let (inner, saving) = (&self.inner, &self.saving);
        detach(py, || {
            let _guard = saving.lock().unwrap_or_else(|e| e.into_inner());
            write_atomically(&path, &inner.to_bytes()?)
        })
    }

    /// {"step", "rows_pulled", "rows_pushed", "n_local"}.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.inner.shard;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("step", s.step.load(Relaxed))?;
        d.set_item("rows_pulled", s.rows_pulled.load(Relaxed))?;
        d.set_item("rows_pushed", s.rows_pushed.load(Relaxed))?;
        d.set_item("n_local", s.layout.n_local())?;
        Ok(d)
    }
}

/// The full model from every shard's checkpoint bytes.
#[pyfunction]
fn assemble_shards(py: Python<'_>, checkpoints: Vec<Vec<u8>>) -> PyResult<PySparseModel> {
    let model = detach(py, || {
        let shards = checkpoints.iter().map(|b| ShardCheckpoint::from_bytes(b)).collect::<crate::Result<Vec<_>>>()?;
        distributed::assemble(&shards)
    })?;
    Ok(PySparseModel { inner: model })
}

/// A worker's batch computation from pulled rows (see `distributed::worker`).
#[pyclass(module = "sparselin._core", name = "PullWorker")]
pub struct PyPullWorker {
    inner: PullWorker,
}

#[pymethods]
impl PyPullWorker {
    #[new]
    fn new(py: Python<'_>, config_json: &str, shard_count: usize) -> PyResult<Self> {
        let config = parse_config(config_json)?;
        Ok(Self { inner: detach(py, || PullWorker::new(config, shard_count))? })
    }

    /// Loads rows `rows` of X as the next batch; returns (distinct ids by shard as uint64,
    /// offsets: shard s owns ids[offsets[s]:offsets[s + 1]]).
    #[pyo3(signature = (indptr, indices, values, n_cols, targets, weights, rows))]
    #[allow(clippy::too_many_arguments)]
    fn load_batch<'py>(
        &mut self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        targets: PyReadonlyArray1<'py, f32>,
        weights: Option<PyReadonlyArray1<'py, f32>>,
        rows: PyReadonlyArray1<'py, u32>,
    ) -> PyResult<(Bound<'py, PyArray1<u64>>, Vec<usize>)> {
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let targets = f32_slice(&targets, "y")?;
        let weights = weights.as_ref().map(|w| f32_slice(w, "sample_weight")).transpose()?;
        let rows = index_slice(&rows, "rows")?;
        let worker = &mut self.inner;
        with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            worker.load_batch(&x, rows, targets, weights)
        }))?;
        Ok((self.inner.ids().to_vec().into_pyarray(py), self.inner.shard_offsets().to_vec()))
    }

    /// Forward and backward with the pulled values; returns the batch's mean loss.
    fn compute(
        &mut self,
        py: Python<'_>,
        rows: PyReadonlyArray1<'_, f32>,
        feat_bias: PyReadonlyArray1<'_, f32>,
        max_abs: PyReadonlyArray1<'_, f32>,
        dense: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<f64> {
        let (r, f, m, d) = (f32_slice(&rows, "rows")?, f32_slice(&feat_bias, "feat_bias")?, f32_slice(&max_abs, "max_abs")?, f32_slice(&dense, "dense")?);
        let worker = &mut self.inner;
        detach(py, || worker.compute(r, f, m, d))
    }

    /// (row gradients, feature-bias gradients, max_abs, dense gradients) of the last batch.
    fn gradients<'py>(&self, py: Python<'py>) -> (F32Array<'py>, F32Array<'py>, F32Array<'py>, F32Array<'py>) {
        let w = &self.inner;
        (
            w.row_grads.clone().into_pyarray(py),
            w.feat_bias_grads.clone().into_pyarray(py),
            w.max_abs.clone().into_pyarray(py),
            w.dense_grads.clone().into_pyarray(py),
        )
    }
}

/// A delta as Python sees it: ([(tensor name, row length, rows, values)], steps).
type PyDelta<'py> = (Vec<(String, usize, Bound<'py, PyArray1<u64>>, F32Array<'py>)>, u64);
type PyDeltaIn<'py> = (Vec<(String, usize, PyReadonlyArray1<'py, u64>, PyReadonlyArray1<'py, f32>)>, u64);

fn delta_to_py(py: Python<'_>, d: ModelDelta) -> PyDelta<'_> {
    let tensors = d.tensors.into_iter().map(|t| (t.name, t.row_len, t.rows.into_pyarray(py), t.values.into_pyarray(py))).collect();
    (tensors, d.steps)
}

fn delta_from_py(delta: PyDeltaIn<'_>) -> PyResult<ModelDelta> {
    let (tensors, steps) = delta;
    let tensors = tensors
        .into_iter()
        .map(|(name, row_len, rows, values)| {
            Ok(TensorDelta { name, row_len, rows: index_slice(&rows, "rows")?.to_vec(), values: f32_slice(&values, "values")?.to_vec() })
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(ModelDelta { tensors, steps })
}

/// The last synchronized state of a model copy in model-averaging training.
#[pyclass(module = "sparselin._core", name = "SyncPoint")]
pub struct PySyncPoint {
    inner: SyncPoint,
}

#[pymethods]
impl PySyncPoint {
    #[new]
    fn new(py: Python<'_>, model: PyRef<'_, PySparseModel>) -> PyResult<Self> {
        let m = &model.inner;
        Ok(Self { inner: detach(py, || Ok(SyncPoint::new(m)))? })
    }

    /// What changed since the sync point: ([(name, row_len, rows, values)], steps).
    fn delta<'py>(&mut self, py: Python<'py>, model: PyRef<'py, PySparseModel>) -> PyResult<PyDelta<'py>> {
        let (point, m) = (&mut self.inner, &model.inner);
        let d = detach(py, || Ok(point.delta(m)))?;
        Ok(delta_to_py(py, d))
    }

    /// Moves the sync point by the averaged delta and makes the model equal to it.
    fn apply(&mut self, py: Python<'_>, model: PyRef<'_, PySparseModel>, average: PyDeltaIn<'_>) -> PyResult<()> {
        let avg = delta_from_py(average)?;
        let (point, m) = (&mut self.inner, &model.inner);
        detach(py, || point.apply(m, &avg))
    }
}

/// The average of the workers' deltas, in the order given.
#[pyfunction]
fn average_deltas<'py>(py: Python<'py>, deltas: Vec<PyDeltaIn<'py>>) -> PyResult<PyDelta<'py>> {
    let deltas = deltas.into_iter().map(delta_from_py).collect::<PyResult<Vec<_>>>()?;
    let avg = detach(py, || distributed::average(&deltas))?;
    Ok(delta_to_py(py, avg))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyParameterShard>()?;
    m.add_class::<PyPullWorker>()?;
    m.add_class::<PySyncPoint>()?;
    m.add_function(wrap_pyfunction!(assemble_shards, m)?)?;
    m.add_function(wrap_pyfunction!(average_deltas, m)?)?;
    Ok(())
}
