"""Property tests (hypothesis): random shapes, int32/int64 index arrays, float32/float64 values,
empty rows, duplicate ids and values from ±1e-30 to ±1e30.

- `fit`, `partial_fit`, `predict_proba` / `predict` never crash and, with normalize=True, give
  finite outputs of the right shape, for every estimator and optimizer, as CSR triples or scipy
  matrices, with or without sample weights, on one thread or two.
- Every gradient and one optimizer step match the float64 NumPy reference (tests/reference.py,
  through the checks of tests/test_reference.py) on hypothesis-generated batches.

Example counts are modest for CI; `SPARSELIN_HYPOTHESIS_EXAMPLES=2000` runs each test longer.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparselin as sl

import test_reference

EXAMPLES = int(os.environ.get("SPARSELIN_HYPOTHESIS_EXAMPLES", "60"))
# No example database (it would write .hypothesis/ into the checkout); a failure prints its
# reproduction blob instead.
# Under CI (CI=true) the examples are derandomized, so a submission's test run is repeatable;
# local runs draw new examples each time.
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None, print_blob=True, derandomize=os.environ.get("CI") == "true")

INDEX_DTYPES = st.sampled_from([np.int32, np.int64])
VALUE_DTYPES = st.sampled_from([np.float32, np.float64])


def values(min_exp=-30, max_exp=30):
    """0, ±1, and ±m·10^e with m in [1, 10), e in [min_exp, max_exp]."""
    scaled = st.builds(lambda m, e, s: s * m * 10.0**e, st.floats(1.0, 9.99), st.integers(min_exp, max_exp),
                       st.sampled_from([-1.0, 1.0]))
    return st.one_of(st.just(0.0), st.just(1.0), st.just(-1.0), scaled)


@st.composite
def csr(draw, n_features, max_rows=20, min_exp=-30, max_exp=30, n_rows=None):
    """(indptr, indices, values) as float64 / int64: ~1/4 empty rows, ids repeating inside rows
    (a few hot ids), extreme values."""
    if n_rows is None:
        n_rows = draw(st.integers(1, max_rows))
    counts = draw(st.lists(st.one_of(st.just(0), st.integers(0, 7)), min_size=n_rows, max_size=n_rows))
    nnz = sum(counts)
    hot = st.integers(0, min(n_features, 3) - 1)
    ids = draw(st.lists(st.one_of(hot, st.integers(0, n_features - 1)), min_size=nnz, max_size=nnz))
    vals = draw(st.lists(values(min_exp, max_exp), min_size=nnz, max_size=nnz))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, np.array(ids, dtype=np.int64), np.array(vals, dtype=np.float64)


def as_input(triple, n_features, form, index_dtype, value_dtype):
    """The batch as the user would pass it: a triple or a scipy CSR matrix, in the given dtypes."""
    indptr, indices, vals = triple
    indptr, indices, vals = indptr.astype(index_dtype), indices.astype(index_dtype), vals.astype(value_dtype)
    if form == "triple":
        return indptr, indices, vals
    m = sp.csr_matrix((vals, indices, indptr), shape=(indptr.size - 1, n_features))
    # scipy may pick its own index dtype; put the drawn one back.
    m.indptr, m.indices = indptr, indices
    return m


def make_estimator(kind, optimizer, n_features, batch_size, threads, seed):
    common = dict(n_features=n_features, optimizer=optimizer, batch_size=batch_size, threads=threads,
                  normalize=True, random_state=seed)
    if kind == "logreg":
        return sl.SparseLogisticRegression(**common)
    small = dict(sparse_width=3, hidden=(4,))
    if kind == "mlp":
        return sl.SparseMLPClassifier(**common, **small)
    return sl.SparseMLPRegressor(**common, **small)


def check_outputs(est, X, n_rows):
    if isinstance(est, sl.SparseMLPRegressor):
        pred = est.predict(X)
        assert pred.shape == (n_rows,) and np.all(np.isfinite(pred))
        return
    proba = est.predict_proba(X)
    assert proba.shape == (n_rows, 2)
    assert np.all(np.isfinite(proba)) and np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.all(np.isfinite(est.decision_function(X)))
    assert set(np.unique(est.predict(X))) <= set(est.classes_.tolist())


@SETTINGS
@given(data=st.data())
def test_fit_partial_fit_predict_never_crash_and_stay_finite(data):
    kind = data.draw(st.sampled_from(["logreg", "mlp", "regressor"]), label="kind")
    optimizers = ["sgd", "lazy_adam", "adagrad"] + (["ftrl"] if kind == "logreg" else [])
    optimizer = data.draw(st.sampled_from(optimizers), label="optimizer")
    n_features = data.draw(st.integers(1, 60), label="n_features")
    form = data.draw(st.sampled_from(["triple", "scipy"]), label="form")
    index_dtype = data.draw(INDEX_DTYPES, label="index_dtype")
    value_dtype = data.draw(VALUE_DTYPES, label="value_dtype")
    threads = data.draw(st.sampled_from([1, 2]), label="threads")

    def batch(label):
        triple = data.draw(csr(n_features), label=label)
        n_rows = triple[0].size - 1
        if kind == "regressor":
            y = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n_rows, max_size=n_rows), label=f"{label} y")
        else:
            y = data.draw(st.lists(st.sampled_from([0, 1]), min_size=n_rows, max_size=n_rows), label=f"{label} y")
        # Zeros included, but not all of them (scikit-learn refuses all-zero sample weights, also
        # when they underflow float32, e.g. 1e-160).
        weight = st.one_of(st.just(0.0), st.floats(1e-3, 3.0))
        w = data.draw(st.one_of(st.none(), st.lists(weight, min_size=n_rows, max_size=n_rows).filter(any)),
                      label=f"{label} sample_weight")
        return as_input(triple, n_features, form, index_dtype, value_dtype), np.array(y), w, n_rows

    X, y, w, n_rows = batch("first batch")
    batch_size = data.draw(st.integers(1, n_rows + 2), label="batch_size")
    est = make_estimator(kind, optimizer, n_features, batch_size, threads, data.draw(st.integers(0, 2**31 - 1)))
    assert est.fit(X, y, sample_weight=w) is est
    check_outputs(est, X, n_rows)

    X2, y2, w2, n_rows2 = batch("second batch")
    est.partial_fit(X2, y2, sample_weight=w2)
    check_outputs(est, X2, n_rows2)
    check_outputs(est, X, n_rows)

    # partial_fit on a fresh estimator creates the model.
    fresh = make_estimator(kind, optimizer, n_features, batch_size, threads, 0)
    kw = {} if kind == "regressor" else {"classes": [0, 1]}
    fresh.partial_fit(X2, y2, **kw)
    check_outputs(fresh, X, n_rows)


@SETTINGS
@given(data=st.data())
def test_gradients_match_the_float64_reference_on_generated_batches(data):
    """tests/test_reference.py's check of one step (outputs, loss, every gradient, max_abs and
    the optimizer update of every tensor, to 1e-5), with its random batch replaced by
    hypothesis-generated ones, for each model/optimizer case, two successive steps."""
    case = data.draw(st.sampled_from(test_reference.CASES), label="case")
    cfg = test_reference._cfg(case)
    cfg["weighted"] = case[-1]
    # Without normalization the raw values feed the layer, and a float32 output z carries an
    # error of about 6e-8 * sum |w v| (more than 1e-5 of a loss or a gradient once that sum
    # passes ~150 and cancels, which hypothesis finds): raw cases take |v| < 10. Normalized
    # cases take the full ±1e-30..±1e30.
    exps = (-30, 30) if cfg["normalize"] else (-3, 0)
    n_rows = data.draw(st.integers(1, 16), label="n_rows")
    batches = [data.draw(csr(test_reference.N_FEATURES, min_exp=exps[0], max_exp=exps[1], n_rows=n_rows),
                         label=f"batch {k}") for k in range(2)]
    dtypes = [(data.draw(INDEX_DTYPES, label="indptr dtype"), data.draw(INDEX_DTYPES, label="indices dtype"))
              for _ in range(2)]
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    model = test_reference._model(cfg, seed % 1000)
    test_reference._randomize(model, rng)
    for step, ((indptr, indices, vals), (p_dtype, i_dtype)) in enumerate(zip(batches, dtypes), start=1):
        batch = (indptr.astype(p_dtype), indices.astype(i_dtype), vals.astype(np.float32))
        with mock.patch.object(test_reference, "_batch", lambda rng, n, index_dtype=None: batch):
            test_reference._check_step(model, cfg, rng, n_rows=n_rows, step=step)


def test_the_generators_make_what_they_promise():
    """A sanity check of the strategies above: empty rows, repeated ids and extreme values do occur."""
    seen = {"empty": False, "dup": False, "big": False, "tiny": False}

    @settings(max_examples=200, deadline=None, database=None)
    @given(csr(20))
    def look(triple):
        indptr, indices, vals = triple
        counts = np.diff(indptr)
        seen["empty"] |= bool((counts == 0).any())
        for r in range(counts.size):
            row = indices[indptr[r]:indptr[r + 1]]
            seen["dup"] |= row.size != np.unique(row).size
        seen["big"] |= bool((np.abs(vals) >= 1e25).any())
        seen["tiny"] |= bool(((np.abs(vals) > 0) & (np.abs(vals) <= 1e-25)).any())

    look()
    assert all(seen.values()), seen
