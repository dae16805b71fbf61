//! `Calibrator`, `Discretizer` and `IsotonicCalibrator` as Python objects: array borrowing,
//! error conversion and GIL release around `crate::features` calls.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::data::{f32_slice, index_slice, with_csr_slices, IndexArray};
use super::errors::{detach, to_py};
use crate::data::CsrView;
use crate::features::discretize::{Calibrator, Discretizer, Kind, TRANSFORM_CHUNK_NNZ};
use crate::features::Isotonic;
use crate::train::trainer::with_pool;

type CsrArrays<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>);

#[pyclass(module = "sparselin._core", name = "Calibrator")]
pub struct PyCalibrator {
    inner: Calibrator,
}

#[pymethods]
impl PyCalibrator {
    #[new]
    #[pyo3(signature = (n_bins, reservoir_size, seed, columns=None))]
    fn new(n_bins: usize, reservoir_size: Option<usize>, seed: u64, columns: Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Self> {
        let mut inner = Calibrator::new(n_bins, reservoir_size, seed).map_err(to_py)?;
        if let Some(c) = &columns {
            inner = inner.with_columns(index_slice(c, "columns")?).map_err(to_py)?;
        }
        Ok(Self { inner })
    }

    /// Adds one chunk of rows (CSR arrays) with optional row weights.
    #[pyo3(signature = (indptr, indices, values, n_cols, weights=None))]
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        weights: Option<PyReadonlyArray1<'py, f32>>,
    ) -> PyResult<()> {
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let weights = weights.as_ref().map(|w| f32_slice(w, "sample_weight")).transpose()?;
        let cal = &mut self.inner;
        with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            cal.update(&x, weights)
        }))
    }

    /// The discretizer for everything seen so far; `kind` is "percentile" or "hashing".
    fn finish(&self, py: Python<'_>, kind: &str, out_bits: u32) -> PyResult<PyDiscretizer> {
        let kind = Kind::parse(kind).map_err(to_py)?;
        let cal = &self.inner;
        Ok(PyDiscretizer { inner: detach(py, || cal.finish(kind, out_bits))? })
    }

    #[getter]
    fn rows_seen(&self) -> u64 {
        self.inner.rows_seen()
    }

    #[getter]
    fn stored_values(&self) -> usize {
        self.inner.stored_values()
    }
}

#[pyclass(module = "sparselin._core", name = "Discretizer")]
pub struct PyDiscretizer {
    pub(crate) inner: Discretizer,
}

#[pymethods]
impl PyDiscretizer {
    /// Maps CSR arrays to (indptr, indices, values) with ids in [0, 2**out_bits), on `threads`
    /// threads (0 = all cores).
    #[pyo3(signature = (indptr, indices, values, n_cols, threads))]
    fn transform<'py>(
        &self,
        py: Python<'py>,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray1<'py, f32>,
        n_cols: usize,
        threads: usize,
    ) -> PyResult<CsrArrays<'py>> {
        let indptr = IndexArray::new(indptr, "indptr")?;
        let indices = IndexArray::new(indices, "indices")?;
        let values = f32_slice(&values, "values")?;
        let d = &self.inner;
        let out = with_csr_slices!(indptr, indices, |p, i| detach(py, || {
            let x = CsrView::new(p, i, values, n_cols)?;
            // A batch too small to split is one task: starting a pool would cost more than it.
            if x.nnz() < TRANSFORM_CHUNK_NNZ {
                d.transform(&x)
            } else {
                with_pool(threads, || d.transform(&x))?
            }
        }))?;
        Ok((out.indptr.into_pyarray(py), out.indices.into_pyarray(py), out.values.into_pyarray(py)))
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }
    #[getter]
    fn n_bins(&self) -> usize {
        self.inner.n_bins()
    }
    #[getter]
    fn out_bits(&self) -> u32 {
        self.inner.out_bits()
    }
    #[getter]
    fn feature_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.feature_ids().to_vec().into_pyarray(py)
    }
    /// Flat, `n_bins + 1` per feature.
    #[getter]
    fn quantiles<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.inner.quantiles().to_vec().into_pyarray(py)
    }
    /// (split points of all features concatenated, offsets of each feature's run).
    #[getter]
    fn splits<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<u64>>) {
        let (s, o) = self.inner.splits();
        (s.into_pyarray(py), o.into_iter().map(|x| x as u64).collect::<Vec<_>>().into_pyarray(py))
    }

    fn save(&self, py: Python<'_>, path: std::path::PathBuf, extra: &str) -> PyResult<()> {
        let d = &self.inner;
        detach(py, || d.save(&path, extra))
    }

    fn to_bytes<'py>(&self, py: Python<'py>, extra: &str) -> PyResult<Bound<'py, PyBytes>> {
        let d = &self.inner;
        let bytes = detach(py, || d.to_bytes(extra))?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// Returns (discretizer, extra).
#[pyfunction]
fn load_discretizer(py: Python<'_>, path: std::path::PathBuf) -> PyResult<(PyDiscretizer, String)> {
    let (inner, extra) = detach(py, || Discretizer::load(&path))?;
    Ok((PyDiscretizer { inner }, extra))
}

#[pyfunction]
fn discretizer_from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<(PyDiscretizer, String)> {
    let (inner, extra) = detach(py, || Discretizer::from_bytes(data))?;
    Ok((PyDiscretizer { inner }, extra))
}

#[pyclass(module = "sparselin._core", name = "IsotonicCalibrator")]
pub struct PyIsotonic {
    inner: Isotonic,
}

fn f64_slice<'a>(a: &'a PyReadonlyArray1<'_, f64>, what: &str) -> PyResult<&'a [f64]> {
    a.as_slice().map_err(|_| pyo3::exceptions::PyTypeError::new_err(format!("{what} must be C-contiguous")))
}

#[pymethods]
impl PyIsotonic {
    /// Rebuilds a fitted calibrator from its thresholds.
    #[new]
    fn new(x: PyReadonlyArray1<'_, f64>, y: PyReadonlyArray1<'_, f64>) -> PyResult<Self> {
        let x = f64_slice(&x, "x")?.to_vec();
        let y = f64_slice(&y, "y")?.to_vec();
        Ok(Self { inner: Isotonic::from_thresholds(x, y).map_err(to_py)? })
    }

    #[staticmethod]
    #[pyo3(signature = (pred, y, sample_weight=None))]
    fn fit(
        py: Python<'_>,
        pred: PyReadonlyArray1<'_, f64>,
        y: PyReadonlyArray1<'_, f64>,
        sample_weight: Option<PyReadonlyArray1<'_, f64>>,
    ) -> PyResult<Self> {
        let x = f64_slice(&pred, "predictions")?;
        let y = f64_slice(&y, "y")?;
        let w = sample_weight.as_ref().map(|w| f64_slice(w, "sample_weight")).transpose()?;
        Ok(Self { inner: detach(py, || Isotonic::fit(x, y, w))? })
    }

    fn predict<'py>(&self, py: Python<'py>, pred: PyReadonlyArray1<'py, f64>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let x = f64_slice(&pred, "predictions")?;
        let iso = &self.inner;
        let out = detach(py, || {
            let mut out = vec![0.0; x.len()];
            iso.predict(x, &mut out)?;
            Ok(out)
        })?;
        Ok(out.into_pyarray(py))
    }

    /// (x, y) of the interpolation points.
    #[getter]
    fn thresholds<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>) {
        let (x, y) = self.inner.thresholds();
        (x.to_vec().into_pyarray(py), y.to_vec().into_pyarray(py))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCalibrator>()?;
    m.add_class::<PyDiscretizer>()?;
    m.add_class::<PyIsotonic>()?;
    m.add_function(wrap_pyfunction!(load_discretizer, m)?)?;
    m.add_function(wrap_pyfunction!(discretizer_from_bytes, m)?)?;
    Ok(())
}
