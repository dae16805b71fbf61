"""Parallel CPU training: Hogwild threads and columns mode."""

import numpy as np
import pytest

import sparselin
from sparselin.datasets import make_ctr


@pytest.fixture(scope="module")
def data():
    X, y = make_ctr(12000, n_features=2**15, random_state=11)
    return X[:10000], y[:10000], X[10000:], y[10000:]


def tensors(est):
    return {name: est._model.get_tensor(name) for name, _ in est._model.tensor_names()}


@pytest.mark.parametrize("make", [
    lambda **kw: sparselin.SparseMLPClassifier(sparse_width=50, hidden=(16,), **kw),
    lambda **kw: sparselin.SparseLogisticRegression(**kw),
], ids=["mlp", "lr"])
def test_columns_mode_is_bit_identical_across_thread_counts(data, make):
    X, y, Xt, _ = data
    fits = [make(parallel="columns", threads=t, epochs=2, batch_size=256, random_state=3).fit(X, y) for t in (1, 2)]
    for name, values in tensors(fits[0]).items():
        np.testing.assert_array_equal(values, tensors(fits[1])[name], err_msg=name)
    np.testing.assert_array_equal(fits[0].predict_proba(Xt), fits[1].predict_proba(Xt))


def test_columns_mode_learns_as_well_as_hogwild(data):
    X, y, Xt, yt = data
    auc = {}
    for parallel in ("hogwild", "columns"):
        clf = sparselin.SparseMLPClassifier(sparse_width=50, hidden=(16,), parallel=parallel, threads=2, epochs=2,
                                            batch_size=256, random_state=3).fit(X, y)
        auc[parallel] = sparselin.metrics.roc_auc(yt, clf.predict_proba(Xt)[:, 1])
    assert abs(auc["columns"] - auc["hogwild"]) < 0.01, auc


def test_columns_mode_resume_is_bit_identical(data, tmp_path):
    X, y, _, _ = data
    kw = dict(sparse_width=24, hidden=(8,), parallel="columns", threads=2, epochs=2, batch_size=256, random_state=1)
    whole = sparselin.SparseMLPClassifier(**kw).fit(X, y)
    prefix = tmp_path / "ck"
    sparselin.SparseMLPClassifier(**kw).fit(X, y, checkpoint_path=prefix, checkpoint_every=3000)
    from sparselin import _engine
    files = _engine.list_checkpoints(prefix)
    for f in files[1:]:  # as if the run had died after its first checkpoint
        f_path = f
        import os
        os.remove(f_path)
    resumed = sparselin.SparseMLPClassifier(**kw).fit(X, y, checkpoint_path=prefix, checkpoint_every=3000, resume=True)
    for name, values in tensors(whole).items():
        np.testing.assert_array_equal(values, tensors(resumed)[name], err_msg=name)


def test_parallel_is_validated(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="parallel"):
        sparselin.SparseLogisticRegression(parallel="rows").fit(X, y)
