//! The PyO3 layer: `sparselin._core`. One file per core module; each only converts types and
//! errors and releases the GIL around core calls. No training logic lives here.

mod checkpoint;
mod data;
mod distributed;
mod errors;
mod features;
mod gpu;
mod metrics;
mod model;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    data::register(m)?;
    metrics::register(m)?;
    model::register(m)?;
    checkpoint::register(m)?;
    features::register(m)?;
    distributed::register(m)?;
    gpu::register(m)?;
    Ok(())
}
