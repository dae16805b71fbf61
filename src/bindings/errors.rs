//! The one place where core errors and panics become Python exceptions.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(_core, TrainingDivergedError, PyRuntimeError, "The loss or a gradient stopped being finite; the model keeps the last good weights.");
create_exception!(_core, ModelFileError, PyValueError, "A model file is truncated, corrupted, or from an unsupported format version.");

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TrainingDivergedError", m.py().get_type::<TrainingDivergedError>())?;
    m.add("ModelFileError", m.py().get_type::<ModelFileError>())?;
    Ok(())
}

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidInput(m) => PyValueError::new_err(m),
        Error::InvalidType(m) => PyTypeError::new_err(m),
        Error::Io(m) => PyOSError::new_err(m),
        Error::BadModelFile(m) => ModelFileError::new_err(m),
        Error::Diverged(m) => TrainingDivergedError::new_err(m),
        Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
        Error::Unavailable(m) => PyRuntimeError::new_err(m),
    }
}

/// Runs core work with the GIL released; a core error becomes its exception and a panic (a bug)
/// becomes a RuntimeError instead of crossing the FFI boundary.
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(to_py),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(PyRuntimeError::new_err(format!("internal error in sparselin (please report it): {msg}")))
        }
    }
}
