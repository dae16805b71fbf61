"""Several Python threads on the SAME estimator at once. Training and prediction release the GIL
and the core's weights are atomics (Hogwild), so the core is safe to share; what a user may see is
either a correct result (finite probabilities of the right shape) or a clear exception, never a
crash, a hang, or a model left corrupted (non-finite, unloadable, of the wrong shape).

Each test runs bounded loops in threads and then checks the estimator is still whole."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import sparselin as sl

N_FEATURES = 2**12
ITERATIONS = int(os.environ.get("SPARSELIN_CONCURRENCY_ITERATIONS", "30"))


@pytest.fixture(scope="module")
def data():
    X, y = sl.datasets.make_ctr(2000, n_features=N_FEATURES, nnz=30, random_state=3)
    return X, y


def estimators():
    return [
        sl.SparseLogisticRegression(n_features=N_FEATURES, batch_size=128, threads=2, random_state=0),
        sl.SparseMLPClassifier(n_features=N_FEATURES, sparse_width=8, hidden=(8,), batch_size=128, threads=1,
                               random_state=0),
    ]


def run_threads(*loops, timeout=120):
    """Runs each loop in its own thread; returns the exceptions they raised (per thread)."""
    errors = [[] for _ in loops]
    start = threading.Barrier(len(loops))

    def wrap(k, loop):
        start.wait()
        for _ in range(ITERATIONS):
            try:
                loop()
            except Exception as e:  # noqa: BLE001 - collected and judged below
                errors[k].append(e)

    threads = [threading.Thread(target=wrap, args=(k, loop), daemon=True) for k, loop in enumerate(loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread hung"
    return errors


def check_probabilities(p, n):
    assert p.shape == (n, 2)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))


def check_whole(est, X, tmp_path):
    """The estimator after the storm: predicts finite values, saves, loads to the same model."""
    p = est.predict_proba(X)
    check_probabilities(p, X.shape[0])
    path = tmp_path / f"{type(est).__name__}.safetensors"
    est.save(path)
    np.testing.assert_array_equal(sl.load(path).predict_proba(X), p)


def clear(e):
    """Exceptions a user can act on: the model is being (re)built by another thread."""
    return isinstance(e, NotFittedError)


@pytest.mark.parametrize("est", estimators(), ids=["logreg-2threads", "mlp"])
def test_partial_fit_and_predict_at_once(est, data, tmp_path):
    X, y = data
    est.partial_fit(X, y)
    results = []

    def train():
        est.partial_fit(X, y)

    def predict():
        p = est.predict_proba(X[:500])
        check_probabilities(p, 500)
        results.append(p)

    errors = run_threads(train, predict)
    assert errors == [[], []], errors
    assert len(results) == ITERATIONS
    check_whole(est, X, tmp_path)


@pytest.mark.parametrize("est", estimators(), ids=["logreg-2threads", "mlp"])
def test_two_partial_fits_at_once(est, data, tmp_path):
    X, y = data
    halves = [(X[:1000], y[:1000]), (X[1000:], y[1000:])]
    est.partial_fit(X[:10], y[:10])

    errors = run_threads(*[lambda h=h: est.partial_fit(*h) for h in halves])
    assert errors == [[], []], errors
    check_whole(est, X, tmp_path)
    # Hogwild: both threads' updates landed in one model, which has learned something.
    assert sl.metrics.roc_auc(y, est.predict_proba(X)[:, 1]) > 0.6


@pytest.mark.parametrize("est", estimators(), ids=["logreg-2threads", "mlp"])
def test_fit_and_predict_at_once(est, data, tmp_path):
    """`fit` replaces the model; a predict running meanwhile sees the old model, the new one, or
    a NotFittedError while the new one is being set up."""
    X, y = data
    est.fit(X, y)

    def train():
        est.fit(X, y)

    def predict():
        check_probabilities(est.predict_proba(X[:500]), 500)

    errors = run_threads(train, predict)
    assert errors[0] == [], errors[0]
    assert all(clear(e) for e in errors[1]), errors[1]
    check_whole(est, X, tmp_path)


@pytest.mark.parametrize("est", estimators(), ids=["logreg-2threads", "mlp"])
def test_fit_and_partial_fit_at_once(est, data, tmp_path):
    X, y = data
    est.fit(X, y)
    errors = run_threads(lambda: est.fit(X, y), lambda: est.partial_fit(X[:500], y[:500]))
    assert errors[0] == [], errors[0]
    assert all(clear(e) for e in errors[1]), errors[1]
    check_whole(est, X, tmp_path)


def test_predict_after_a_failed_refit_says_not_fitted(data):
    """The single-thread face of the same guard: a refit that fails on bad input leaves no model,
    and predict says so (it used to raise AttributeError: no attribute '_model')."""
    X, y = data
    est = sl.SparseLogisticRegression(n_features=N_FEATURES, random_state=0).fit(X, y)
    with pytest.raises(ValueError):
        est.fit(X, np.full(X.shape[0], 7.0))  # 1 class
    with pytest.raises(NotFittedError, match="no trained model"):
        est.predict_proba(X)
    with pytest.raises(NotFittedError, match="no trained model"):
        est.save("unused.safetensors")
