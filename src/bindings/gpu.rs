//! The CUDA backend's probes for Python: whether a GPU can be used (and why not), and the kernel
//! compile check CI runs without a GPU.

use pyo3::prelude::*;

use super::errors::detach;
use crate::gpu;

/// (usable, description or the reason it is not).
#[pyfunction]
fn gpu_status(py: Python<'_>) -> (bool, String) {
    match py.detach(gpu::available) {
        Ok(description) => (true, description),
        Err(reason) => (false, reason.to_string()),
    }
}

/// PTX of every kernel for `arch` (e.g. "sm_90"), compiled by NVRTC as the device path does.
#[pyfunction]
fn compile_kernels(py: Python<'_>, arch: &str) -> PyResult<String> {
    detach(py, || gpu::compile(arch))
}

/// PTX of any CUDA C source (the tests check that a broken kernel is reported).
#[pyfunction]
fn compile_cuda_source(py: Python<'_>, source: &str, arch: &str) -> PyResult<String> {
    detach(py, || gpu::compile_source(source, arch))
}

#[pyfunction]
fn kernel_names() -> Vec<&'static str> {
    gpu::KERNEL_NAMES.to_vec()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gpu_status, m)?)?;
    m.add_function(wrap_pyfunction!(compile_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_names, m)?)?;
    m.add_function(wrap_pyfunction!(compile_cuda_source, m)?)?;
    Ok(())
}
