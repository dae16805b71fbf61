//! The CUDA backend (cudarc). The kernels are CUDA C in `kernels.cu`, compiled at first use by
//! NVRTC for the device's compute capability and kept for the life of the process. CUDA is loaded
//! at run time: on a machine without it everything else works, `available()` says why the GPU
//! cannot be used, and nothing here panics (cudarc panics when a library is missing, so every
//! entry point probes first and catches panics).

pub mod batch;
pub mod trainer;
pub mod transfer;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{Error, Result};

pub const KERNELS: &str = include_str!("kernels.cu");

/// Every kernel `kernels.cu` defines (all are loaded at start, so a missing one fails early).
pub const KERNEL_NAMES: &[&str] = &[
    "normalize_entries",
    "copy_values",
    "gather_forward",
    "gather_forward_width1",
    "dense_forward",
    "loss_grad",
    "accumulate_loss",
    "dense_grad_weights",
    "dense_grad_input",
    "column_sums",
    "dense_update",
    "chunk_max_abs",
    "sparse_backward",
    "sparse_update_hot",
];

/// Runs `f`, turning a panic (cudarc's way to report a missing library) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg =
            panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown error");
        Err(Error::Unavailable(format!("{what}: {msg}")))
    })
}

/// Whether NVRTC (the run-time CUDA compiler) can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Compiles every kernel to PTX for `arch` (e.g. "sm_90"): the code path the device uses, so a
/// kernel that does not compile fails here, on any machine with NVRTC, GPU or not.
pub fn compile(arch: &str) -> Result<String> {
    compile_source(KERNELS, arch)
}

/// Compiles CUDA C `source` to PTX for `arch` with NVRTC (`compile` with our kernels).
pub fn compile_source(source: &str, arch: &str) -> Result<String> {
    if !nvrtc_available() {
        return Err(Error::Unavailable(
            "the CUDA run-time compiler (libnvrtc) was not found: pip install \"nvidia-cuda-nvrtc==13.0.*\" \
             (sparselin finds it with cuda-pathfinder) or add its directory to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    // NVRTC keeps the option string; one leaked string per distinct arch in the process.
    let arch: &'static str = Box::leak(arch.to_string().into_boxed_str());
    guarded("compiling the CUDA kernels", || {
        let options = CompileOptions { arch: Some(arch), name: Some("sparselin_kernels.cu".into()), ..Default::default() };
        cudarc::nvrtc::compile_ptx_with_opts(source, options)
            .map(|ptx| ptx.to_src())
            .map_err(|e| Error::Unavailable(format!("NVRTC could not compile the kernels for {arch}: {e}")))
    })
}

/// One CUDA device with the kernels loaded and the stream everything runs on.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: Vec<(&'static str, CudaFunction)>,
    pub name: String,
    pub arch: String,
    /// Pinned memory is slow to allocate (milliseconds for a few MB), so the buffers for batches
    /// and for the model's tables are kept for the life of the process, as PyTorch's caching
    /// host allocator does.
    pub batch_buffers: transfer::PinnedPool,
    pub staging: Mutex<Option<transfer::Staging>>,
}

impl Gpu {
    pub fn function(&self, name: &str) -> &CudaFunction {
        &self.functions.iter().find(|(n, _)| *n == name).expect("every kernel is loaded at start").1
    }
}

fn driver_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Unavailable(format!("{what}: {e}"))
}

fn open_device() -> Result<Arc<Gpu>> {
    // SAFETY: only tries to dlopen libcuda by its usual names.
    if !catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false) {
        return Err(Error::Unavailable("no CUDA driver (libcuda.so) on this machine".into()));
    }
    guarded("opening the CUDA device", || {
        let ctx = CudaContext::new(0).map_err(driver_error("no usable CUDA device"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_error("reading the compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let ptx = compile(&arch)?;
        let module = ctx.load_module(Ptx::from_src(ptx)).map_err(driver_error("loading the kernels"))?;
        let functions = KERNEL_NAMES
            .iter()
            .map(|&n| module.load_function(n).map(|f| (n, f)).map_err(driver_error("loading a kernel")))
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.default_stream();
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let batch_buffers = transfer::PinnedPool::new(ctx.clone());
        Ok(Arc::new(Gpu { ctx, stream, _module: module, functions, name, arch, batch_buffers, staging: Mutex::new(None) }))
    })
}

/// The process's GPU (device 0), opened and its kernels compiled on first use.
pub fn device() -> Result<Arc<Gpu>> {
    static DEVICE: OnceLock<std::result::Result<Arc<Gpu>, Error>> = OnceLock::new();
    DEVICE.get_or_init(open_device).clone()
}

/// `Ok(description)` when training can run on the GPU, otherwise the reason it cannot.
pub fn available() -> Result<String> {
    device().map(|g| format!("{} ({})", g.name, g.arch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_name_is_defined_in_the_source() {
        for name in KERNEL_NAMES {
            assert!(KERNELS.contains(&format!("__global__ void {name}(")), "{name}");
        }
        assert_eq!(KERNELS.matches("__global__").count(), KERNEL_NAMES.len());
    }

    /// Where NVRTC is installed (CI installs it), every kernel compiles for sm_90; elsewhere the
    /// error says what to install. Never a panic.
    #[test]
    fn kernels_compile_or_say_why_not() {
        match compile("sm_90") {
            Ok(ptx) => {
                for name in KERNEL_NAMES {
                    assert!(ptx.contains(&format!(".entry {name}(")), "{name} missing from the PTX");
                }
            }
            Err(e) => assert!(e.to_string().contains("nvrtc"), "{e}"),
        }
        assert!(device().is_ok() || available().is_err());
    }
}
