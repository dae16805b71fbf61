//! numpy <-> CSR: borrows int32/int64 index arrays and float32 values without copying; the
//! svmlight reader and the synthetic generator.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::errors::detach;
use crate::data::svmlight::{read_svmlight, IdBase};
use crate::data::synthetic::{make_ctr as core_make_ctr, CtrSpec};
use crate::data::OwnedCsr;
use crate::invalid;

/// An index array as numpy gave it: int32 or int64, C-contiguous.
pub enum IndexArray<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

impl<'py> IndexArray<'py> {
    pub fn new(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i32>>() {
            return Ok(Self::I32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray1<'py, i64>>() {
            return Ok(Self::I64(a));
        }
        Err(PyTypeError::new_err(format!("{what} must be a 1-D int32 or int64 numpy array")))
    }
}

pub fn f32_slice<'a>(a: &'a PyReadonlyArray1<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    a.as_slice().map_err(|_| PyTypeError::new_err(format!("{what} must be C-contiguous")))
}

pub fn index_slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| PyTypeError::new_err(format!("{what} must be C-contiguous")))
}

/// Expands `$body` once per (indptr, indices) dtype pair, with `$p` and `$i` bound to the
/// borrowed slices, so the core runs monomorphized on the caller's own arrays.
macro_rules! with_csr_slices {
    ($indptr:expr, $indices:expr, |$p:ident, $i:ident| $body:expr) => {{
        use super::data::{index_slice, IndexArray as IA};
        match (&$indptr, &$indices) {
            (IA::I32(a), IA::I32(b)) => { let $p = index_slice(a, "indptr")?; let $i = index_slice(b, "indices")?; $body }
            (IA::I32(a), IA::I64(b)) => { let $p = index_slice(a, "indptr")?; let $i = index_slice(b, "indices")?; $body }
            (IA::I64(a), IA::I32(b)) => { let $p = index_slice(a, "indptr")?; let $i = index_slice(b, "indices")?; $body }
            (IA::I64(a), IA::I64(b)) => { let $p = index_slice(a, "indptr")?; let $i = index_slice(b, "indices")?; $body }
        }
    }};
}
pub(crate) use with_csr_slices;

type CsrArrays<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f32>>);

fn csr_to_numpy(py: Python<'_>, m: OwnedCsr) -> CsrArrays<'_> {
    (m.indptr.into_pyarray(py), m.indices.into_pyarray(py), m.values.into_pyarray(py))
}

/// Returns (indptr, indices, values, labels, n_features).
#[pyfunction]
#[pyo3(signature = (path, n_features=None, zero_based="auto"))]
fn load_svmlight<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    n_features: Option<usize>,
    zero_based: &str,
) -> PyResult<(CsrArrays<'py>, Bound<'py, PyArray1<f32>>, usize)> {
    let base = match zero_based {
        "auto" => IdBase::Auto,
        "true" => IdBase::Zero,
        "false" => IdBase::One,
        other => return Err(super::errors::to_py(invalid!("zero_based must be True, False or 'auto', got {other}"))),
    };
    let data = detach(py, || read_svmlight(&path, n_features, base))?;
    let n = data.matrix.n_features;
    Ok((csr_to_numpy(py, data.matrix), data.labels.into_pyarray(py), n))
}

/// Returns a list of (indptr, indices, values, labels), one per day.
#[pyfunction]
#[pyo3(signature = (n_rows, n_features, nnz, days, ctr, drift, seed))]
fn make_ctr<'py>(
    py: Python<'py>,
    n_rows: usize,
    n_features: usize,
    nnz: f64,
    days: usize,
    ctr: f64,
    drift: f64,
    seed: u64,
) -> PyResult<Vec<(CsrArrays<'py>, Bound<'py, PyArray1<f32>>)>> {
    let spec = CtrSpec { n_rows, n_features, nnz, days, ctr, drift, seed };
    let days = detach(py, || core_make_ctr(&spec))?;
    Ok(days.into_iter().map(|d| (csr_to_numpy(py, d.matrix), d.labels.into_pyarray(py))).collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_svmlight, m)?)?;
    m.add_function(wrap_pyfunction!(make_ctr, m)?)?;
    Ok(())
}
