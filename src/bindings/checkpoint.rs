//! Model files and in-memory model bytes (pickling).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::detach;
use super::model::PySparseModel;
use crate::checkpoint;

#[pyfunction]
fn save_model(py: Python<'_>, model: PyRef<'_, PySparseModel>, path: std::path::PathBuf, extra: &str) -> PyResult<()> {
    let m = &model.inner;
    detach(py, || checkpoint::save(m, &path, extra))
}

/// Returns (model, extra). `inference_only` drops the optimizer state.
#[pyfunction]
#[pyo3(signature = (path, inference_only=false))]
fn load_model(py: Python<'_>, path: std::path::PathBuf, inference_only: bool) -> PyResult<(PySparseModel, String)> {
    let loaded = detach(py, || checkpoint::load_with(&path, inference_only))?;
    Ok((PySparseModel { inner: loaded.model }, loaded.extra))
}

#[pyfunction]
fn model_to_bytes<'py>(py: Python<'py>, model: PyRef<'py, PySparseModel>, extra: &str) -> PyResult<Bound<'py, PyBytes>> {
    let m = &model.inner;
    let bytes = detach(py, || checkpoint::to_bytes(m, extra))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pyfunction]
fn model_from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<(PySparseModel, String)> {
    let loaded = detach(py, || checkpoint::from_bytes(data))?;
    Ok((PySparseModel { inner: loaded.model }, loaded.extra))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save_model, m)?)?;
    m.add_function(wrap_pyfunction!(load_model, m)?)?;
    m.add_function(wrap_pyfunction!(model_to_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(model_from_bytes, m)?)?;
    Ok(())
}
