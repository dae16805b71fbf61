"""A lean, read-only model for serving: only the inference tensors are loaded (no optimizer
state), predictions run on all cores with the GIL released."""

from __future__ import annotations

import json
import os

import numpy as np

from . import _core
from ._input import from_matrix, from_triple, is_path, is_triple
from .io import load_svmlight


class Predictor:
    """``Predictor(path, threads=0)`` loads a model saved by ``save`` or a checkpoint.

    ``decision_function(X)`` gives raw outputs (logits for a classifier), ``predict_proba(X)``
    (classifiers) the probabilities of ``classes_``, ``predict(X)`` labels or values. X is any
    input the estimators take; its ids must be < ``n_features``."""

    def __init__(self, path, threads: int = 0):
        self._model, extra = _core.load_model(os.fspath(path), inference_only=True)
        extra = json.loads(extra) if extra else {}
        config = json.loads(self._model.config_json)
        self.n_features = int(config["n_features"])
        self.task = config["task"]
        self.estimator = extra.get("estimator")
        self.classes_ = (np.asarray(extra["classes"], dtype=np.dtype(extra["classes_dtype"]))
                         if "classes" in extra else None)
        if int(threads) < 0:
            raise ValueError("threads must be >= 0 (0 = all cores)")
        self.threads = int(threads)

    def _csr(self, X):
        if is_path(X):
            X, _ = load_svmlight(X, n_features=self.n_features)
        if is_triple(X):
            return from_triple(X, self.n_features)
        csr = from_matrix(X)
        if csr.n_cols > self.n_features:
            raise ValueError(f"X has {csr.n_cols} columns but the model has n_features={self.n_features}")
        return csr

    def decision_function(self, X):
        csr = self._csr(X)
        return self._model.decision_function(csr.indptr, csr.indices, csr.values, self.n_features,
                                             self.threads).astype(np.float64)

    def predict_proba(self, X):
        if self.task != "binary":
            raise AttributeError("predict_proba is for classifiers; this model is a regressor")
        p = 0.5 * (1.0 + np.tanh(0.5 * self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        z = self.decision_function(X)
        if self.task != "binary":
            return z
        classes = self.classes_ if self.classes_ is not None else np.array([0, 1])
        return classes[(z > 0).astype(np.intp)]
