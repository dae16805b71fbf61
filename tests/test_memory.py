"""Memory: a model that cannot fit is refused with a clear ValueError (in GiB) before anything is
allocated; repeated small fits do not leak; a table of 2^31 rows trains on a few rows because
tables are allocated lazily (rows no batch touches cost no RAM)."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest
import scipy.sparse as sp

import sparselin as sl

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def tiny_data(n_features, rows=8):
    rng = np.random.default_rng(0)
    X = sp.random(rows, min(n_features, 64), density=0.3, format="csr", random_state=rng, dtype=np.float32)
    X.resize((rows, n_features))
    return X, np.arange(rows) % 2


def test_model_larger_than_the_limit_is_refused_before_allocating():
    X, y = tiny_data(2**34)
    est = sl.SparseMLPClassifier(n_features=2**34, random_state=0)
    before = rss_bytes() if os.path.exists("/proc/self/statm") else 0
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"needs [\d.]+ GiB .*reduce n_features"):
        est.fit(X, y)
    assert time.monotonic() - start < 5
    if before:
        assert rss_bytes() - before < 100 * 2**20


def test_layer_sizes_whose_product_overflows_are_refused():
    X, y = tiny_data(16)
    with pytest.raises(ValueError, match="GiB"):
        sl.SparseMLPClassifier(n_features=16, sparse_width=2**40, hidden=(2**40,)).fit(X, y)


@linux_only
def test_eagerly_written_tables_must_fit_in_available_memory():
    """The MLP's sparse table is written at creation (random init): it must fit in MemAvailable,
    even when the address-space limit (1 TiB) would allow it."""
    available = mem_available_bytes()
    if available is None:
        pytest.skip("no MemAvailable in /proc/meminfo")
    width = 50
    n_features = int(2 * available / (4 * width))  # about twice the memory available now
    if n_features * (4 * width + 8) >= 2**40:
        pytest.skip("this machine has so much memory that the 1 TiB limit comes first")
    X, y = tiny_data(n_features)
    est = sl.SparseMLPClassifier(n_features=n_features, sparse_width=width, hidden=(), optimizer="sgd")
    before = rss_bytes()
    with pytest.raises(ValueError, match=r"writes [\d.]+ GiB when it is created .* only [\d.]+ GiB of memory is "
                                         r"available"):
        est.fit(X, y)
    assert rss_bytes() - before < 100 * 2**20
    # Adagrad's accumulators (filled with 0.1) count too, for a linear model as well.
    est = sl.SparseLogisticRegression(n_features=int(available / 4) + 1, optimizer="adagrad", normalize=False)
    with pytest.raises(ValueError, match="available"):
        est.fit(*tiny_data(est.n_features))


@linux_only
def test_repeated_small_fits_do_not_grow_rss():
    X, y = sl.datasets.make_ctr(300, n_features=2**12, nnz=20, random_state=1)

    def one_round(k):
        kind = k % 3
        if kind == 0:
            est = sl.SparseLogisticRegression(n_features=2**12, batch_size=64, random_state=k)
        elif kind == 1:
            est = sl.SparseMLPClassifier(n_features=2**12, sparse_width=8, hidden=(8,), batch_size=64, threads=2,
                                         random_state=k)
        else:
            est = sl.SparseMLPRegressor(n_features=2**12, sparse_width=4, hidden=(), optimizer="adagrad",
                                        batch_size=64, random_state=k)
        est.fit(X, y)
        est.partial_fit(X[:100], y[:100])
        assert np.all(np.isfinite(est.predict(X)))

    for k in range(30):  # warm-up: allocator arenas, thread pools, caches
        one_round(k)
    gc.collect()
    before = rss_bytes()
    for k in range(200):
        one_round(k)
    gc.collect()
    growth = rss_bytes() - before
    print(f"RSS before {before / 2**20:.1f} MiB, after 200 fits {(before + growth) / 2**20:.1f} MiB "
          f"(growth {growth / 2**20:+.1f} MiB)")
    assert growth < 20 * 2**20


@linux_only
def test_a_table_of_2_31_rows_trains_lazily():
    n_features = 2**31
    ids = np.array([n_features - 1, 5, n_features - 2, n_features - 1, 0, n_features - 3], dtype=np.int64)
    indptr = np.array([0, 2, 4, 6], dtype=np.int64)
    values = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0], dtype=np.float32)
    y = np.array([1, 0, 1])
    before = rss_bytes()
    est = sl.SparseLogisticRegression(n_features=n_features, optimizer="sgd", learning_rate=0.5, epochs=5,
                                      batch_size=2, random_state=0)
    est.fit((indptr, ids, values), y)
    p = est.predict_proba((indptr, ids, values))[:, 1]
    grown = rss_bytes() - before
    print(f"n_features=2**31: RSS grew by {grown / 2**20:.1f} MiB for tables of {3 * 4 * n_features / 2**30:.0f} GiB")
    assert p.shape == (3,) and np.all(np.isfinite(p))
    assert p[0] > 0.5 and p[1] < 0.5  # it learned the rows
    assert grown < 200 * 2**20
    est.partial_fit((indptr, ids, values), y)
    assert np.all(np.isfinite(est.decision_function((indptr, ids, values))))
