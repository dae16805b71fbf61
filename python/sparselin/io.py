"""File readers."""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from . import _core


def load_svmlight(path, n_features: int | None = None, zero_based="auto"):
    """Reads an svmlight / libsvm file into ``(X, y)``: X a float32 ``scipy.sparse.csr_matrix``,
    y float32 labels as written. ``qid:`` fields and ``#`` comments are ignored. ``zero_based``
    is True, False or "auto" (one-based unless some id is 0). A malformed line raises ValueError
    naming its line number."""
    if zero_based not in (True, False, "auto"):
        raise ValueError(f"zero_based must be True, False or 'auto', got {zero_based!r}")
    base = {True: "true", False: "false", "auto": "auto"}[zero_based]
    if n_features is not None and int(n_features) < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    (indptr, indices, values), y, n = _core.load_svmlight(os.fspath(path), n_features, base)
    X = sp.csr_matrix((values, indices, indptr), shape=(indptr.size - 1, n))
    return X, y
