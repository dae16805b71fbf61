"""The CUDA backend: ``device="cuda"`` (or ``"auto"``) on the estimators and ``--device`` in the
CLI. Kernels are compiled at first use by NVRTC, the CUDA run-time compiler, which comes from
PyPI (``pip install "sparselin[gpu]"``: ``nvidia-cuda-nvrtc`` 13.0, found with
``cuda-pathfinder``) or from a CUDA toolkit on ``LD_LIBRARY_PATH``. The GPU needs a driver for
CUDA 13.0 or newer."""

from __future__ import annotations

from . import _core

DEVICES = ("cpu", "cuda", "auto")
_nvrtc = []  # keeps the loaded library referenced for the life of the process


def _load_nvrtc():
    """Loads the pip-installed NVRTC so that the core's dlopen by name finds it."""
    if _nvrtc:
        return
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError:
        return  # a system CUDA on LD_LIBRARY_PATH may still be there
    try:
        _nvrtc.append(load_nvidia_dynamic_lib("nvrtc"))
    except Exception:  # noqa: BLE001 - not found is reported by the core with what to install
        pass


def status():
    """``(usable, description)``: the GPU's name and architecture, or why it cannot be used."""
    _load_nvrtc()
    return _core.gpu_status()


def compile_kernels(arch="sm_90"):
    """PTX of every kernel for ``arch``, through the same NVRTC path the device uses (no GPU
    needed). Raises RuntimeError naming what is missing."""
    _load_nvrtc()
    return _core.compile_kernels(arch)


def resolve(device):
    """"cpu" or "cuda" for a device setting: "auto" is "cuda" when a GPU is usable, else "cpu";
    "cuda" without a usable GPU raises RuntimeError saying why."""
    if device == "cpu":
        return "cpu"
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    usable, why = status()
    if usable:
        return "cuda"
    if device == "auto":
        return "cpu"
    raise RuntimeError(f"device='cuda' but no GPU can be used here: {why}. Use device='cpu' or device='auto'.")
