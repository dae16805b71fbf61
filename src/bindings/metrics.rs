//! `sparselin._core` metric functions over float32 arrays.

use numpy::PyReadonlyArray1;
use pyo3::prelude::*;

use super::data::f32_slice;
use super::errors::detach;
use crate::metrics;

macro_rules! metric {
    ($name:ident) => {
        #[pyfunction]
        #[pyo3(signature = (y_true, y_pred, sample_weight=None))]
        fn $name(
            py: Python<'_>,
            y_true: PyReadonlyArray1<'_, f32>,
            y_pred: PyReadonlyArray1<'_, f32>,
            sample_weight: Option<PyReadonlyArray1<'_, f32>>,
        ) -> PyResult<f64> {
            let y = f32_slice(&y_true, "y_true")?;
            let p = f32_slice(&y_pred, "y_pred")?;
            let w = sample_weight.as_ref().map(|w| f32_slice(w, "sample_weight")).transpose()?;
            detach(py, || metrics::$name(y, p, w))
        }
    };
}

metric!(logloss);
metric!(roc_auc);
metric!(pr_auc);
metric!(rce);
metric!(calibration);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(logloss, m)?)?;
    m.add_function(wrap_pyfunction!(roc_auc, m)?)?;
    m.add_function(wrap_pyfunction!(pr_auc, m)?)?;
    m.add_function(wrap_pyfunction!(rce, m)?)?;
    m.add_function(wrap_pyfunction!(calibration, m)?)?;
    Ok(())
}
