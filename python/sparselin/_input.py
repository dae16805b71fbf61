"""Turning what users pass as X into the arrays the core borrows: done once per call, with a
copy only when the dtype or layout is not already right (int32/int64 indices, float32 values,
C-contiguous)."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp


class Csr(NamedTuple):
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_rows: int
    n_cols: int


def _index_array(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype not in (np.int32, np.int64):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
        a = a.astype(np.int64)
    return np.ascontiguousarray(a)


def _values_array(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {a.shape}")
    if np.iscomplexobj(a):
        raise TypeError(f"values must be real numbers, got dtype {a.dtype}")
    if a.dtype != np.float32:
        if a.size and not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"values must be numeric, got dtype {a.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def from_triple(triple, n_cols: int | None) -> Csr:
    """(indptr, indices, values) with ids in [0, n_cols); n_cols defaults to max id + 1."""
    if len(triple) != 3:
        raise ValueError("a CSR triple must be (indptr, indices, values)")
    indptr = _index_array(triple[0], "indptr")
    indices = _index_array(triple[1], "indices")
    values = _values_array(triple[2])
    if indptr.size == 0:
        raise ValueError("indptr is empty: a CSR matrix with n rows has an indptr of n + 1 entries")
    if n_cols is None:
        n_cols = int(indices.max()) + 1 if indices.size else 1
    return Csr(indptr, indices, values, indptr.size - 1, int(n_cols))


def from_matrix(X) -> Csr:
    """A scipy.sparse matrix/array (any format) or a dense 2-D array."""
    if sp.issparse(X):
        X = X.tocsr()
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got {X.ndim}-D")
        indptr, indices = X.indptr, X.indices
        if indptr.dtype not in (np.int32, np.int64):
            indptr = indptr.astype(np.int64)
        if indices.dtype not in (np.int32, np.int64):
            indices = indices.astype(np.int64)
        return Csr(np.ascontiguousarray(indptr), np.ascontiguousarray(indices), _values_array(X.data), X.shape[0], X.shape[1])
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x features), got shape {X.shape}")
    return from_matrix(sp.csr_matrix(X))


def is_path(X) -> bool:
    return isinstance(X, (str, os.PathLike))


def is_triple(X) -> bool:
    """A tuple of numpy arrays is a CSR triple (a tuple of rows of a dense matrix is not)."""
    if not isinstance(X, tuple) or not X or not all(isinstance(a, np.ndarray) for a in X):
        return False
    if len(X) != 3:
        if all(a.ndim == 1 for a in X):
            raise ValueError(f"a CSR triple must be (indptr, indices, values); got a tuple of {len(X)} arrays")
        return False
    return True
