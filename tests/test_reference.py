"""The Rust core against the float64 NumPy reference (tests/reference.py): forward outputs, the
loss, every gradient, max_abs, and one (then a second) optimizer step of each optimizer, on fresh
random batches with empty rows, duplicate ids, values from 1e-6 to 1e6 and a batch of one.

Tolerance: relative error < 1e-5 per tensor. For outputs and gradients, which are float32 sums
of terms of both signs, "relative" is to the magnitude of the summed terms (reference.py's
`scale`): that is the accuracy float32 summation has, and a wrong formula misses by far more.
The optimizer step is checked on its own: the reference optimizer is fed the core's gradients
and every updated tensor (weights and optimizer state) must match to 1e-5 of the larger of its
old values and its change."""

import os
import zlib

import numpy as np
import pytest

from sparselin import _core

import reference

TOL = 1e-5

CASES = [
    # id, head, hidden, width, task, normalize, optimizer, l1, l2, weighted
    ("lr-sgd", "lr", None, 1, "binary", True, "sgd", 0.0, 0.0, False),
    ("lr-adam", "lr", None, 1, "binary", True, "lazy_adam", 0.0, 0.0, True),
    ("lr-adagrad-l2", "lr", None, 1, "binary", True, "adagrad", 0.0, 0.05, False),
    ("lr-ftrl-l1l2", "lr", None, 1, "binary", True, "ftrl", 0.01, 0.1, True),
    ("lr-raw-sgd", "lr", None, 1, "binary", False, "sgd", 0.0, 0.0, True),
    ("mlp-adam-l2", "mlp", [8, 4], 6, "binary", True, "lazy_adam", 0.0, 0.01, True),
    ("mlp-adagrad", "mlp", [5], 4, "binary", True, "adagrad", 0.0, 0.0, False),
    ("mlp-nohidden-sgd", "mlp", [], 3, "binary", True, "sgd", 0.0, 0.0, False),
    ("mlp-raw-adam", "mlp", [4], 5, "binary", False, "lazy_adam", 0.0, 0.0, False),
    ("mlp-regression", "mlp", [6, 3], 4, "regression", True, "lazy_adam", 0.0, 0.0, True),
]

N_FEATURES = 40  # small, so ids repeat inside rows and across rows


def _cfg(case):
    _, head, hidden, width, task, normalize, optimizer, l1, l2, _ = case
    return {"n_features": N_FEATURES, "sparse_width": width, "task": task, "normalize": normalize,
            "optimizer": optimizer, "learning_rate": 0.05, "l1": l1, "l2": l2,
            "n_dense": 0 if hidden is None else len(hidden) + 1, "hidden": hidden}


def _model(cfg, seed):
    return _core.SparseModel(cfg["n_features"], cfg["sparse_width"], cfg["hidden"], cfg["task"], cfg["normalize"],
                             cfg["optimizer"], cfg["learning_rate"], cfg["l1"], cfg["l2"], seed)


def _tensors(model):
    return {name: model.get_tensor(name).astype(np.float64) for name, _ in model.tensor_names()}


def _randomize(model, rng):
    """Every tensor and optimizer slot gets random (valid) values, so no term is trivially 0."""
    for name, shape in model.tensor_names():
        n = int(np.prod(shape))
        if name == "norm.max_abs":
            v = np.abs(rng.normal(size=n)) * rng.choice([1e-3, 1.0, 10.0], size=n)
            v[rng.random(n) < 0.3] = 0.0  # features not seen yet
        elif name.endswith(".v") or name.endswith(".n"):
            v = rng.uniform(0.0, 0.01, size=n)
        elif name.endswith(".accumulator"):
            v = rng.uniform(0.1, 1.0, size=n)
        elif name.endswith(".m") or name.endswith(".z"):
            v = rng.normal(scale=0.01, size=n)
        else:
            v = rng.normal(scale=0.3, size=n)
        model.set_tensor(name, v.astype(np.float32))


def _batch(rng, n_rows, index_dtype=np.int64):
    """Random CSR: ~25% empty rows, duplicate ids, a mix of binary, normal, 1e6 and 1e-6 values."""
    counts = rng.poisson(4, size=n_rows)
    counts[rng.random(n_rows) < 0.25] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(index_dtype)
    nnz = int(indptr[-1])
    indices = rng.integers(0, N_FEATURES, size=nnz).astype(index_dtype)
    kind = rng.integers(0, 5, size=nnz)
    values = np.where(kind == 0, 1.0,
             np.where(kind == 1, rng.normal(size=nnz),
             np.where(kind == 2, rng.choice([-1, 1], size=nnz) * rng.uniform(1e5, 1e6, size=nnz),
             np.where(kind == 3, rng.uniform(1e-6, 1e-5, size=nnz), 0.0)))).astype(np.float32)
    return indptr, indices, values


def _rel_err(actual, expected, scale=0.0):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not expected.size:
        return 0.0
    scale = max(np.max(np.abs(expected)), scale, 1e-30)
    return float(np.max(np.abs(actual - expected)) / scale)


def _check_step(model, cfg, rng, n_rows, step, index_dtype=np.int64):
    indptr, indices, values = _batch(rng, n_rows, index_dtype)
    if cfg["task"] == "binary":
        y = (rng.random(n_rows) < 0.4).astype(np.float32)
    else:
        y = rng.normal(size=n_rows).astype(np.float32)
    w = rng.uniform(0.2, 3.0, size=n_rows).astype(np.float32) if cfg["weighted"] else None
    rows = [int(r) for r in rng.permutation(n_rows)]

    before = _tensors(model)
    ref = reference.forward_backward(before, cfg, indptr, indices, values, y, w, rows)
    got = model.batch_gradients(indptr, indices, values, N_FEATURES, y, w, rows, apply=True)

    scale = ref["scale"]
    assert abs(got["loss"] - ref["loss"]) <= TOL * max(abs(ref["loss"]), 1e-12)
    assert _rel_err(got["outputs"], ref["outputs"], scale["outputs"]) < TOL
    ids = [int(i) for i in got["ids"]]
    assert sorted(ids) == sorted(ref["grads"]["sparse.weight"]), "touched rows differ"
    width = cfg["sparse_width"]
    g_rows = got["sparse.weight"].reshape(len(ids), width)
    expected_rows = np.array([ref["grads"]["sparse.weight"][i] for i in ids]).reshape(len(ids), width)
    assert _rel_err(g_rows, expected_rows, scale["sparse.weight"]) < TOL, "sparse.weight gradient"
    core_grads = {"sparse.weight": {i: g_rows[k].astype(np.float64) for k, i in enumerate(ids)},
                  "norm.feat_bias": {}}
    if cfg["normalize"]:
        expected_fb = np.array([ref["grads"]["norm.feat_bias"][i] for i in ids])
        assert _rel_err(got["norm.feat_bias"], expected_fb, scale["norm.feat_bias"]) < TOL, "feature-bias gradient"
        core_grads["norm.feat_bias"] = {i: float(got["norm.feat_bias"][k]) for k, i in enumerate(ids)}
    for name, g in ref["grads"].items():
        if name in ("sparse.weight", "norm.feat_bias"):
            continue
        assert _rel_err(got[name], g, scale[name]) < TOL, f"{name} gradient"
        core_grads[name] = got[name].astype(np.float64)

    expected = reference.optimizer_step(before, cfg, core_grads, step)
    if cfg["normalize"]:
        expected["norm.max_abs"] = ref["max_abs"]
    after = _tensors(model)
    for name in expected:
        # An update w - step (or 0.9 m + 0.1 g) can cancel too: compare against the size of
        # the old value and of the change.
        change = float(np.max(np.abs(expected[name] - before[name]))) if before[name].size else 0.0
        old = float(np.max(np.abs(before[name]))) if before[name].size else 0.0
        assert _rel_err(after[name], expected[name], max(change, old)) < TOL, f"{name} after optimizer step {step}"
    # Untouched rows of the sparse table and its optimizer state did not move.
    untouched = sorted(set(range(N_FEATURES)) - set(ids))
    for name in after:
        if name.startswith("sparse.weight"):
            a = after[name].reshape(N_FEATURES, width)[untouched]
            b = before[name].reshape(N_FEATURES, width)[untouched]
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", list(range(int(os.environ.get("SPARSELIN_REFERENCE_SEEDS", "3")))))
def test_gradients_and_two_optimizer_steps(case, seed):
    cfg = _cfg(case)
    cfg["weighted"] = case[-1]
    rng = np.random.default_rng([seed, zlib.crc32(case[0].encode())])
    model = _model(cfg, seed)
    _randomize(model, rng)
    _check_step(model, cfg, rng, n_rows=16, step=1)
    _check_step(model, cfg, rng, n_rows=16, step=2, index_dtype=np.int32)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batch_of_one(case):
    cfg = _cfg(case)
    cfg["weighted"] = case[-1]
    rng = np.random.default_rng(7)
    model = _model(cfg, 3)
    _randomize(model, rng)
    for step in (1, 2, 3):
        _check_step(model, cfg, rng, n_rows=1, step=step)


def test_fresh_model_first_step_matches():
    """Real initialization (not randomized): max_abs and feature bias start at 0."""
    cfg = _cfg(CASES[5])
    cfg["weighted"] = False
    model = _model(cfg, 11)
    t = _tensors(model)
    assert not t["norm.max_abs"].any() and not t["norm.feat_bias"].any()
    _check_step(model, cfg, np.random.default_rng(5), n_rows=32, step=1)


def test_predict_matches_reference_inference():
    """decision_function uses inference-time normalization: max(max_abs, |v|), no update."""
    cfg = _cfg(CASES[5])
    rng = np.random.default_rng(3)
    model = _model(cfg, 2)
    _randomize(model, rng)
    indptr, indices, values = _batch(rng, 50)
    t = _tensors(model)
    out = model.decision_function(indptr, indices, values, N_FEATURES, 1)
    W = t["sparse.weight"].reshape(N_FEATURES, cfg["sparse_width"])
    expected = []
    for r in range(50):
        h = t["sparse.bias"].copy()
        for k in range(indptr[r], indptr[r + 1]):
            i, v = indices[k], float(values[k])
            yin = v / max(max(t["norm.max_abs"][i], abs(v)), 1e-5) + t["norm.feat_bias"][i]
            h = h + W[i] * yin
        a = h
        for l in range(cfg["n_dense"]):
            b = t[f"dense.{l}.bias"]
            a = np.maximum(a, 0) @ t[f"dense.{l}.weight"].reshape(-1, b.size) + b
        expected.append(a[0])
    assert _rel_err(out, expected) < TOL
    np.testing.assert_array_equal(model.get_tensor("norm.max_abs"), t["norm.max_abs"].astype(np.float32))
