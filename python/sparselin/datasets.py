"""Synthetic data that looks like production click logs."""

from __future__ import annotations

import scipy.sparse as sp

from . import _core


def make_ctr(n_rows: int, n_features: int = 2**20, nnz: float = 100, days: int = 1, random_state: int = 0,
             ctr: float = 0.15, drift: float = 0.3):
    """Seeded "Twitter-like" CTR data (generated in Rust, in parallel).

    Each row has Poisson(``nnz``) non-zeros; feature ids follow a power law (a few hot features in
    most rows, a long tail) scattered over ``[0, n_features)``; 70% of features are binary and 30%
    continuous with per-feature magnitudes from 1e-2 to 1e6. Labels come from a planted model on
    the normalized values (with a non-linear part) with click rate ``ctr``. With ``days > 1`` the
    planted weights drift by ``drift`` per day and a list of ``(X, y)``, one per day, is returned;
    otherwise one ``(X, y)``. X is a float32 CSR matrix, y float32 in {0, 1}.
    """
    if int(random_state) < 0:
        raise ValueError("random_state must be >= 0")
    out = []
    for (indptr, indices, values), y in _core.make_ctr(int(n_rows), int(n_features), float(nnz), int(days),
                                                        float(ctr), float(drift), int(random_state)):
        X = sp.csr_matrix((values, indices, indptr), shape=(int(n_rows), int(n_features)))
        out.append((X, y))
    return out if days > 1 else out[0]
