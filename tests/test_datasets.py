"""make_ctr (BRIEF section 5) and the svmlight reader."""

import numpy as np
import pytest
from sklearn.datasets import load_svmlight_file

import sparselin
from sparselin.datasets import make_ctr


def test_make_ctr_looks_like_click_logs():
    X, y = make_ctr(20000, random_state=1)
    assert X.shape == (20000, 2**20) and X.dtype == np.float32 and y.dtype == np.float32
    nnz = np.diff(X.indptr)
    assert abs(nnz.mean() - 100) < 1 and 70 < nnz.std() ** 2 < 130  # Poisson(100)
    assert 0.10 <= y.mean() <= 0.20
    # power law: the hottest feature is in most rows, and there is a long tail
    counts = np.bincount(X.indices, minlength=2**20)
    top = np.argsort(counts)[::-1]
    rows_with_top = np.diff((X[:, top[0]] != 0).tocsr().indptr).astype(bool).mean()
    assert rows_with_top > 0.9
    assert (counts == 1).sum() > 50_000
    # 70% binary / 30% continuous features, continuous magnitudes from 1e-2 up to 1e6
    seen = np.flatnonzero(counts)
    is_binary = np.zeros(2**20, bool)
    is_binary[X.indices[X.data == 1.0]] = True
    assert 0.6 < is_binary[seen].mean() < 0.8
    assert X.data.max() > 1e5 and X.data.min() < 1e-1 and (X.data > 0).all()


def test_make_ctr_is_seeded_and_days_drift():
    a = make_ctr(500, n_features=4096, random_state=3)
    b = make_ctr(500, n_features=4096, random_state=3)
    c = make_ctr(500, n_features=4096, random_state=4)
    assert (a[0] != b[0]).nnz == 0 and np.array_equal(a[1], b[1])
    assert a[0].shape == c[0].shape and (a[0] != c[0]).nnz > 0
    days = make_ctr(20000, n_features=2**14, days=4, random_state=0)
    assert isinstance(days, list) and len(days) == 4
    # A model trained on day 0 is worse on day 3 than on fresh day-0-like data.
    X0, y0 = days[0]
    clf = sparselin.SparseLogisticRegression(epochs=2, random_state=0).fit(X0[:15000], y0[:15000])
    auc_same = sparselin.metrics.roc_auc(y0[15000:], clf.predict_proba(X0[15000:])[:, 1])
    auc_later = sparselin.metrics.roc_auc(days[3][1], clf.predict_proba(days[3][0])[:, 1])
    assert auc_later < auc_same - 0.01, (auc_same, auc_later)


def test_make_ctr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_features"):
        make_ctr(10, n_features=0)
    with pytest.raises(ValueError, match="ctr"):
        make_ctr(10, ctr=1.5)


def test_svmlight_matches_scikit_learn(real_data):
    X, y = sparselin.load_svmlight(real_data / "a9a.t", n_features=123)
    Xs, ys = load_svmlight_file(str(real_data / "a9a.t"), n_features=123)
    assert X.shape == Xs.shape
    assert abs(X - Xs).max() == 0
    np.testing.assert_array_equal(y, ys)


def test_svmlight_bases_qid_and_comments(tmp_path):
    p = tmp_path / "f.svm"
    p.write_text("# header comment\n1 qid:7 1:0.5 4:2 # tail\n-1 2:1e6\n\n0\n")
    X, y = sparselin.load_svmlight(p)
    assert X.shape == (3, 4) and list(y) == [1, -1, 0]
    assert X[0, 0] == 0.5 and X[0, 3] == 2 and X[1, 1] == 1e6 and X[2].nnz == 0
    X0, _ = sparselin.load_svmlight(p, zero_based=True)
    assert X0.shape == (3, 5) and X0[0, 1] == 0.5
