//! numpy <-> CSR: borrows int32/int64 index arrays and float32 values without copying; the
//! svmlight reader and the synthetic generator.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::errors::detach;
use crate::data::svmlight::{read_svmlight, IdBase};
use crate::data::synthetic::{make_ctr as core_make_ctr, CtrSpec};
use std::path::PathBuf;

use crate::data::hashing;
use crate::data::readers::source::{read_all, resolve};
use crate::data::readers::{collision_stats, hashed_key_stats, ReaderSpec};
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

/// The reader settings given from Python as JSON (see `ReaderSpec`).
pub fn reader_spec(spec_json: &str) -> PyResult<ReaderSpec> {
    serde_json::from_str(spec_json).map_err(|e| super::errors::to_py(invalid!("bad reader settings: {e}")))
}

/// Reads whole files into memory (parsing in parallel). Returns ((indptr, indices, values),
/// labels, weights or None, n_features, (distinct keys, distinct slots) or None).
#[pyfunction]
#[pyo3(signature = (paths, spec_json, binary, collect_keys=false))]
#[allow(clippy::type_complexity)]
fn read_files<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    spec_json: &str,
    binary: bool,
    collect_keys: bool,
) -> PyResult<(CsrArrays<'py>, Bound<'py, PyArray1<f32>>, Option<Bound<'py, PyArray1<f32>>>, usize, Option<(usize, usize)>)> {
    let spec = reader_spec(spec_json)?;
    let (chunk, n_features, stats) = detach(py, || {
        let resolved = resolve(&paths, &spec, binary)?;
        let chunk = read_all(&paths, &resolved, collect_keys && spec.is_hashed())?;
        let stats = hashed_key_stats(chunk.keys.as_ref(), &spec)?;
        Ok((chunk, resolved.n_features, stats))
    })?;
    let weights = chunk.weights.map(|w| w.into_pyarray(py));
    Ok((csr_to_numpy(py, chunk.matrix), chunk.labels.into_pyarray(py), weights, n_features, stats))
}

/// The first `max_rows` rows of the files (a calibration sample): ((indptr, indices, values),
/// labels, n_features). Reads only as much of the files as that needs.
#[pyfunction]
fn read_head<'py>(py: Python<'py>, paths: Vec<PathBuf>, spec_json: &str, binary: bool, max_rows: usize) -> PyResult<(CsrArrays<'py>, Bound<'py, PyArray1<f32>>, usize)> {
    let spec = reader_spec(spec_json)?;
    let (chunk, n_features) = detach(py, || {
        let resolved = resolve(&paths, &spec, binary)?;
        Ok((crate::data::readers::source::read_head(&paths, &resolved, max_rows)?, resolved.n_features))
    })?;
    Ok((csr_to_numpy(py, chunk.matrix), chunk.labels.into_pyarray(py), n_features))
}

/// (n_features, zero_based) the files resolve to (svmlight: one streaming pass when the user
/// gave neither; hashed formats: 2^bits).
#[pyfunction]
fn resolve_files(py: Python<'_>, paths: Vec<PathBuf>, spec_json: &str) -> PyResult<(usize, bool)> {
    let spec = reader_spec(spec_json)?;
    let resolved = detach(py, || resolve(&paths, &spec, false))?;
    Ok((resolved.n_features, resolved.shift == 0))
}

/// Hashed ids of categorical (field, value) pairs.
#[pyfunction]
fn hash_categorical<'py>(py: Python<'py>, fields: Vec<String>, values: Vec<String>, bits: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    if fields.len() != values.len() {
        return Err(super::errors::to_py(invalid!("{} fields but {} values", fields.len(), values.len())));
    }
    check_bits(bits)?;
    let mut scratch = Vec::new();
    let ids: Vec<i64> = fields
        .iter()
        .zip(&values)
        .map(|(f, v)| hashing::slot(hashing::field_value_key(f.as_bytes(), v.as_bytes(), &mut scratch), bits))
        .collect();
    Ok(ids.into_pyarray(py))
}

/// Hashed ids of numeric fields.
#[pyfunction]
fn hash_numeric<'py>(py: Python<'py>, fields: Vec<String>, bits: u32) -> PyResult<Bound<'py, PyArray1<i64>>> {
    check_bits(bits)?;
    let ids: Vec<i64> = fields.iter().map(|f| hashing::slot(hashing::field_key(f.as_bytes()), bits)).collect();
    Ok(ids.into_pyarray(py))
}

/// Hashed ids of 64-bit integer keys (DataRecord style).
#[pyfunction]
fn hash_keys<'py>(py: Python<'py>, keys: PyReadonlyArray1<'py, u64>, bits: u32) -> PyResult<(Bound<'py, PyArray1<i64>>, usize, usize)> {
    check_bits(bits)?;
    let keys = index_slice(&keys, "keys")?;
    let (ids, distinct, slots) = detach(py, || {
        let hashed: Vec<u64> = keys.iter().map(|&k| hashing::integer_key(k)).collect();
        let set: crate::data::readers::KeySet = hashed.iter().copied().collect();
        let (distinct, slots) = collision_stats(&set, bits);
        Ok((hashed.into_iter().map(|k| hashing::slot(k, bits)).collect::<Vec<i64>>(), distinct, slots))
    })?;
    Ok((ids.into_pyarray(py), distinct, slots))
}

fn check_bits(bits: u32) -> PyResult<()> {
    if !(1..=40).contains(&bits) {
        return Err(super::errors::to_py(invalid!("bits must be in [1, 40], got {bits}")));
    }
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_files, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_files, m)?)?;
    m.add_function(wrap_pyfunction!(read_head, m)?)?;
    m.add_function(wrap_pyfunction!(hash_categorical, m)?)?;
    m.add_function(wrap_pyfunction!(hash_numeric, m)?)?;
    m.add_function(wrap_pyfunction!(hash_keys, m)?)?;
    m.add_function(wrap_pyfunction!(load_svmlight, m)?)?;
    m.add_function(wrap_pyfunction!(make_ctr, m)?)?;
    Ok(())
}
