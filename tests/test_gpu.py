"""The CUDA backend. Without a GPU: every kernel compiles with NVRTC (required in CI, where the
`gpu` extra installs it), a broken kernel is reported, device="cuda" is a clear error and
device="auto" falls back to the CPU. With a GPU (benches/gpu_check.sh): training and prediction
on the device match the CPU engine on the same batches and initial weights."""

import os

import numpy as np
import pytest
import scipy.sparse as sp

import sparselin as sl
from sparselin import _core

USABLE, WHY = sl.gpu.status()
needs_gpu = pytest.mark.skipif(not USABLE, reason=f"no usable GPU: {WHY}")
no_gpu = pytest.mark.skipif(USABLE, reason="a GPU is present")


def nvrtc_or_skip():
    try:
        return sl.gpu.compile_kernels("sm_90")
    except RuntimeError as e:
        if os.environ.get("CI") or "libnvrtc" not in str(e):
            raise  # CI installs NVRTC: the kernels must compile there
        pytest.skip(str(e))


def test_every_kernel_compiles_to_ptx_for_sm_90():
    ptx = nvrtc_or_skip()
    for name in _core.kernel_names():
        assert f".entry {name}(" in ptx, name
    assert ".target sm_90" in ptx


def test_a_kernel_that_does_not_compile_is_reported():
    nvrtc_or_skip()
    with pytest.raises(RuntimeError, match="could not compile"):
        _core.compile_cuda_source('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "sm_90")


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error_and_auto_falls_back():
    X, y = sl.datasets.make_ctr(1000, n_features=1024, random_state=0)
    with pytest.raises(RuntimeError, match="device='cuda' but no GPU can be used here"):
        sl.SparseLogisticRegression(device="cuda").fit(X, y)
    auto = sl.SparseMLPClassifier(n_features=1024, sparse_width=4, hidden=(3,), device="auto", random_state=0).fit(X, y)
    cpu = sl.SparseMLPClassifier(n_features=1024, sparse_width=4, hidden=(3,), device="cpu", random_state=0).fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(X), cpu.predict_proba(X))
    with pytest.raises(ValueError, match="device must be one of"):
        sl.SparseLogisticRegression(device="gpu").fit(X, y)


def tricky_data(n_rows=600, n_features=2000, seed=0):
    """make_ctr rows plus empty rows, duplicate ids in a row and huge values."""
    X, y = sl.datasets.make_ctr(n_rows, n_features=n_features, nnz=20, random_state=seed)
    X = X.tolil()
    X[3, :] = 0
    X[10, 7] = 1e6
    X = X.tocsr()
    X.eliminate_zeros()
    dup = sp.csr_matrix((np.array([1.0, 2.0, -3.0], np.float32), np.array([5, 5, 9]), np.array([0, 3])),
                        shape=(1, n_features))
    X = sp.vstack([X, dup]).tocsr()
    return X, np.append(y, 1.0).astype(np.float32)


CONFIGS = [
    ("LR lazy_adam", dict(hidden=None, width=1, optimizer="lazy_adam", lr=0.05, normalize=True, task="binary")),
    ("LR sgd raw", dict(hidden=None, width=1, optimizer="sgd", lr=0.01, normalize=False, task="binary")),
    ("MLP lazy_adam", dict(hidden=[8, 4], width=16, optimizer="lazy_adam", lr=0.01, normalize=True, task="binary")),
    ("MLP adagrad", dict(hidden=[5], width=40, optimizer="adagrad", lr=0.05, normalize=True, task="binary")),
    ("MLP sgd regression", dict(hidden=[6], width=8, optimizer="sgd", lr=0.01, normalize=True, task="regression")),
]


def core_model(c, n_features, seed=3):
    return _core.SparseModel(n_features, c["width"], c["hidden"], c["task"], c["normalize"], c["optimizer"], c["lr"],
                             0.0, 0.0, seed)


def assert_close(a, b, what, rel=1e-4):
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-3)
    err = float(np.abs(np.asarray(a, np.float64) - b).max(initial=0.0))
    assert err <= rel * scale, f"{what}: max error {err:.3g} against scale {scale:.3g}"


@needs_gpu
@pytest.mark.parametrize("name,c", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("batch", [1, 64, 601])
def test_gpu_training_matches_the_cpu_engine(name, c, batch):
    X, y = tricky_data()
    weights = np.random.default_rng(1).uniform(0.5, 2.0, y.size).astype(np.float32)
    n = X.shape[1]
    cpu, gpu = core_model(c, n), core_model(c, n)
    args = (X.indptr, X.indices, X.data.astype(np.float32), n, y, weights)
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        # a few optimizer steps on the same batches in the same order, from the same weights
        r = model.fit(*args, 1, batch, 1, True, None, 3, False, "hogwild", device)
        assert r["batches"] == min(3, -(-y.size // batch))  # one epoch at most
    for tensor, _ in cpu.tensor_names():
        assert_close(gpu.get_tensor(tensor), cpu.get_tensor(tensor), f"{name}, batch {batch}: {tensor}")
    assert gpu.step == cpu.step and gpu.position == cpu.position
    # forward (inference) on the GPU against the CPU, with the same weights
    out_cpu = cpu.decision_function(X.indptr, X.indices, X.data.astype(np.float32), n, 1, "cpu")
    out_gpu = cpu.decision_function(X.indptr, X.indices, X.data.astype(np.float32), n, 1, "cuda")
    assert_close(out_gpu, out_cpu, f"{name}: outputs")


@needs_gpu
def test_a_long_run_with_big_tables_matches_the_cpu_engine():
    """Tables larger than a pinned staging buffer (2^18 x 32 floats > 4M: copied in chunks plus a
    tail) and 80 batches, so that the pinned batch buffers are reused many times."""
    n = 2**18
    X, y = sl.datasets.make_ctr(80 * 128, n_features=n, random_state=5)
    c = dict(hidden=[8], width=32, optimizer="sgd", lr=0.05, normalize=True, task="binary")
    cpu, gpu = core_model(c, n), core_model(c, n)
    args = (X.indptr, X.indices, X.data.astype(np.float32), n, y.astype(np.float32), None)
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        assert model.fit(*args, 1, 128, 1, True, None, None, False, "hogwild", device)["batches"] == 80
    for tensor, _ in cpu.tensor_names():
        assert_close(gpu.get_tensor(tensor), cpu.get_tensor(tensor), f"80 batches, big tables: {tensor}")


@needs_gpu
def test_a_gpu_model_saves_and_loads_on_the_cpu(tmp_path):
    X, y = sl.datasets.make_ctr(20_000, n_features=2**16, random_state=0)
    kw = dict(n_features=2**16, epochs=2, random_state=0)
    est = sl.SparseMLPClassifier(device="cuda", **kw).fit(X[:15000], y[:15000])
    cpu = sl.SparseMLPClassifier(device="cpu", threads=1, **kw).fit(X[:15000], y[:15000])
    auc = sl.metrics.roc_auc(y[15000:], est.predict_proba(X[15000:])[:, 1])
    # same batches from the same weights: the same model up to float rounding
    assert abs(auc - sl.metrics.roc_auc(y[15000:], cpu.predict_proba(X[15000:])[:, 1])) < 1e-3
    assert auc > 0.55
    est.save(tmp_path / "m.safetensors")
    loaded = sl.load(tmp_path / "m.safetensors")
    loaded.set_params(device="cpu")
    assert_close(loaded.predict_proba(X[15000:])[:, 1], est.predict_proba(X[15000:])[:, 1], "CPU vs GPU predictions")
