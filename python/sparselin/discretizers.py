"""Discretizers for continuous features (twml's PercentileDiscretizer family) and isotonic
calibration of predicted probabilities, as scikit-learn transformers over the Rust core.

``PercentileDiscretizer`` calibrates, per continuous feature, weighted percentile boundaries at
``linspace(0, 1, n_bins + 1)`` of the values seen, then maps each ``(feature id, value)`` of a
calibrated feature to ``(bin id, 1.0)``; features that were not calibrated keep their value in
the id range left over. ``HashingDiscretizer`` uses the same boundaries but hashes
``(feature id, bin)`` to the output id, so ids do not depend on which other features were
calibrated. The exact definitions (weighted percentile, duplicate boundaries, id layout, the
streaming error bound) are in ``src/features/discretize.rs`` and ``docs/architecture.md``.

The input is sparse: only stored entries are values (a dense array's zeros are absent features,
as in a scipy matrix built from it). Output: a float32 CSR matrix of shape ``(n, 2**out_bits)``,
one entry per input entry, ready for a sparselin estimator (``n_features=2**out_bits``, or let
it infer that from the shape).
"""

from __future__ import annotations

import json
import numbers
import os

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _core
from . import metrics as _metrics
from ._input import from_matrix, from_triple, is_triple

_MAX_OUT_BITS = 62


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class _Discretizer(TransformerMixin, BaseEstimator):
    _kind = "percentile"

    def __init__(self, n_bins=20, out_bits=22, sample=None, columns=None, random_state=0, threads=0):
        self.n_bins = n_bins
        self.out_bits = out_bits
        self.sample = sample
        self.columns = columns
        self.random_state = random_state
        self.threads = threads

    # -- parameters ------------------------------------------------------------------------
    def _check_params(self):
        if not _is_int(self.n_bins) or self.n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {self.n_bins!r}")
        if not _is_int(self.out_bits) or not 1 <= self.out_bits <= _MAX_OUT_BITS:
            raise ValueError(f"out_bits must be an integer in [1, {_MAX_OUT_BITS}], got {self.out_bits!r}")
        if self.sample is not None and (not _is_int(self.sample) or self.sample < 1):
            raise ValueError(f"sample (the reservoir size per feature) must be None or an integer >= 1, "
                             f"got {self.sample!r}")
        if not _is_int(self.threads) or self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {self.threads!r}")
        return self._columns()

    def _columns(self):
        if self.columns is None:
            return None
        cols = np.asarray(self.columns)
        if cols.ndim != 1:
            raise ValueError(f"columns must be a 1-D list of feature ids, got shape {cols.shape}")
        if cols.size and not np.issubdtype(cols.dtype, np.integer):
            raise ValueError(f"columns must hold integer feature ids, got dtype {cols.dtype}")
        cols = cols.astype(np.int64)
        if cols.size and cols.min() < 0:
            raise ValueError(f"columns must be feature ids >= 0, got {int(cols.min())}")
        return np.ascontiguousarray(np.unique(cols))

    def _seed(self):
        rs = self.random_state
        if _is_int(rs) and rs >= 0:
            return int(rs)
        return int(check_random_state(rs).randint(0, 2**31 - 1))

    # -- inputs ----------------------------------------------------------------------------
    def _csr(self, X, reset, min_samples):
        if is_triple(X):
            return from_triple(X, None)
        # non-finite values are left to the core, whose error names the row and column
        X = validate_data(self, X, accept_sparse="csr", dtype=(np.float32, np.float64), reset=reset,
                          ensure_all_finite=False, ensure_min_samples=min_samples)
        return from_matrix(X)

    # -- calibration -----------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Calibrates on X (a scipy.sparse matrix, a dense array or an ``(indptr, indices,
        values)`` triple), with optional row weights. ``y`` is ignored."""
        for attr in ("_calibrator", "_discretizer", "n_features_in_", "n_calibration_rows_"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._start()
        self._update(X, sample_weight, reset=True)
        self._discretizer = self._calibrator.finish(self._kind, int(self.out_bits))  # errors show at fit
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """Adds one chunk of rows to the calibration (data larger than memory: pass it chunk by
        chunk, with ``sample=k`` to bound memory). The boundaries are computed at the next
        ``transform``."""
        first = not hasattr(self, "_calibrator")
        if first and hasattr(self, "_discretizer"):
            raise ValueError(f"this {type(self).__name__} was loaded or unpickled: it can transform but its "
                             "calibration sample is not stored, so it cannot continue calibrating; fit a new one")
        if first:
            self._start()
        self._update(X, sample_weight, reset=first)
        return self

    def _start(self):
        columns = self._check_params()
        self._calibrator = _core.Calibrator(int(self.n_bins), None if self.sample is None else int(self.sample),
                                            self._seed(), columns)

    def _update(self, X, sample_weight, reset):
        csr = self._csr(X, reset=reset, min_samples=1)
        if csr.n_rows == 0:
            raise ValueError("X has no rows: nothing to calibrate on")
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, np.empty((csr.n_rows, 0)), dtype=np.float32,
                                           ensure_non_negative=True)
            weights = np.ascontiguousarray(weights, dtype=np.float32)
        self._calibrator.update(csr.indptr, csr.indices, csr.values, csr.n_cols, weights)
        self._discretizer = None
        self.n_calibration_rows_ = int(self._calibrator.rows_seen)

    def _disc(self):
        check_is_fitted(self, "n_calibration_rows_")
        if self._discretizer is None:
            self._discretizer = self._calibrator.finish(self._kind, int(self.out_bits))
        return self._discretizer

    # -- transform -------------------------------------------------------------------------
    def transform(self, X):
        """Float32 CSR of shape ``(n, 2**out_bits)``, one entry per stored entry of X (a triple
        gives back a triple of int64 indptr, int64 indices, float32 values). Zero rows give zero
        rows; NaN or infinite values raise ValueError naming the row and column."""
        d = self._disc()
        if is_triple(X):
            csr = from_triple(X, None)
            return d.transform(csr.indptr, csr.indices, csr.values, csr.n_cols, int(self.threads))
        csr = self._csr(X, reset=False, min_samples=0)
        indptr, indices, values = d.transform(csr.indptr, csr.indices, csr.values, csr.n_cols, int(self.threads))
        return sp.csr_matrix((values, indices, indptr), shape=(csr.n_rows, 2 ** int(d.out_bits)))

    # -- fitted attributes -----------------------------------------------------------------
    @property
    def feature_ids_(self):
        """Calibrated feature ids, ascending (their rank is k in the percentile id layout)."""
        return self._disc().feature_ids

    @property
    def quantiles_(self):
        """Float32 array (n calibrated features, n_bins + 1): the weighted quantiles found."""
        d = self._disc()
        return d.quantiles.reshape(-1, int(d.n_bins) + 1)

    @property
    def boundaries_(self):
        """Per calibrated feature, its split points s_1 < ... < s_m: bin b is [s_b, s_{b+1})."""
        splits, offsets = self._disc().splits
        return [splits[offsets[i]:offsets[i + 1]] for i in range(offsets.size - 1)]

    @property
    def n_bins_(self):
        """Number of bins of each calibrated feature (at most n_bins, fewer after duplicates)."""
        _, offsets = self._disc().splits
        return np.diff(offsets).astype(np.int64) + 1

    # -- persistence -----------------------------------------------------------------------
    def _extra(self):
        params = self.get_params()
        cols = self._columns()
        params["columns"] = None if cols is None else cols.tolist()
        if not isinstance(params.get("random_state"), (int, type(None))):
            params["random_state"] = None
        state = {"estimator": type(self).__name__, "params": params,
                 "n_calibration_rows": int(self.n_calibration_rows_)}
        if hasattr(self, "n_features_in_"):
            state["n_features_in"] = int(self.n_features_in_)
        return json.dumps(state)

    def save(self, path):
        """Writes the calibration (feature ids, quantiles, kind, n_bins, out_bits, settings) to a
        safetensors file, atomically. ``sparselin.load_discretizer(path)`` reads it back."""
        self._disc().save(os.fspath(path), self._extra())

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_calibrator", None)
        d = state.pop("_discretizer", None)
        if "n_calibration_rows_" in state:
            d = d if d is not None else self._disc()
            state["_discretizer_bytes"] = bytes(d.to_bytes(""))
        return state

    def __setstate__(self, state):
        data = state.pop("_discretizer_bytes", None)
        super().__setstate__(state)
        if data is not None:
            self._discretizer, _ = _core.discretizer_from_bytes(data)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = []  # the output is float32 (bins are 1.0)
        return tags


class PercentileDiscretizer(_Discretizer):
    """twml's PercentileDiscretizer.

    Parameters: ``n_bins`` (20) bins per calibrated feature at most; ``out_bits`` (22): output
    ids are in ``[0, 2**out_bits)``; ``sample``: None keeps every value seen (exact weighted
    percentiles), an integer k keeps at most about k values per feature (a weighted reservoir:
    rank error at most ``sqrt(ln(2/delta) / (2k))`` with probability ``1 - delta``);
    ``columns``: the feature ids to calibrate (the continuous ones), None = every feature seen;
    ``random_state``: seed of the reservoir; ``threads`` (0 = all cores) for ``transform``.

    Ids: calibrated features in ascending id order get ranks k = 0..C-1; bin b of rank k is id
    ``k * n_bins + b``. Any other feature i keeps its value at id
    ``C * n_bins + i % (2**out_bits - C * n_bins)``. ``fit`` raises ValueError when
    ``C * n_bins > 2**out_bits``.
    """


class HashingDiscretizer(_Discretizer):
    """twml's HashingDiscretizer: the boundaries of PercentileDiscretizer, but bin b of feature
    i has id ``mix64(i * 0x9E3779B97F4A7C15 + b) % 2**out_bits`` (uint64 wrapping arithmetic,
    ``mix64`` the splitmix64 finalizer), independent of the other calibrated features, and an
    uncalibrated feature i keeps its value at id ``i % 2**out_bits``. Ids may collide, as with
    any hashing."""

    _kind = "hashing"


_DISCRETIZERS = {c.__name__: c for c in (PercentileDiscretizer, HashingDiscretizer)}


def load_discretizer(path):
    """Loads a discretizer written by ``save``: it transforms to identical ids. A truncated,
    corrupted or foreign file raises ``sparselin.ModelFileError``."""
    d, extra = _core.load_discretizer(os.fspath(path))
    cls = PercentileDiscretizer if d.kind == "percentile" else HashingDiscretizer
    try:
        state = json.loads(extra) if extra else {}
        if state and _DISCRETIZERS.get(state.get("estimator")) is not cls:
            raise ValueError(f"estimator {state.get('estimator')!r} does not match kind {d.kind!r}")
        est = cls(**state.get("params", {}))
        est.set_params(n_bins=int(d.n_bins), out_bits=int(d.out_bits))  # the file's own values rule
        est.n_calibration_rows_ = int(state.get("n_calibration_rows", 0))
        if "n_features_in" in state:
            est.n_features_in_ = int(state["n_features_in"])
    except (ValueError, KeyError, TypeError) as e:
        raise _core.ModelFileError(f"{os.fspath(path)}: the discretizer settings stored in the file are invalid "
                                   f"({e!r})") from None
    est._discretizer = d
    return est


# -- isotonic calibration ------------------------------------------------------------------

def _vector(a, name):
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


class IsotonicCalibrator(TransformerMixin, BaseEstimator):
    """Isotonic calibration of predicted probabilities (twml's IsotonicCalibrator).

    ``fit(pred, y, sample_weight=None)`` on held-out predictions: weighted pool-adjacent-violators
    (the non-decreasing least-squares fit of y on pred); ``predict(pred)`` (= ``transform``)
    interpolates linearly between the block ends, clamped outside the fitted range: the same map
    as scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``. ``calibration_before_`` and
    ``calibration_after_``: mean(prediction) / mean(label) on the fitting data before and after
    (1.0 is calibrated); ``calibration_report(pred, y)`` gives both on other data.
    """

    def fit(self, pred, y, sample_weight=None):
        pred, y = _vector(pred, "pred"), _vector(y, "y")
        if pred.shape != y.shape:
            raise ValueError(f"pred has {pred.size} entries but y has {y.size}")
        w = None if sample_weight is None else _vector(sample_weight, "sample_weight")
        self._iso = _core.IsotonicCalibrator.fit(pred, y, w)
        self.X_thresholds_, self.y_thresholds_ = self._iso.thresholds
        self.calibration_before_, self.calibration_after_ = self._report(pred, y, w)
        return self

    def _core_model(self):
        check_is_fitted(self, "X_thresholds_")
        if getattr(self, "_iso", None) is None:
            self._iso = _core.IsotonicCalibrator(np.ascontiguousarray(self.X_thresholds_, dtype=np.float64),
                                                 np.ascontiguousarray(self.y_thresholds_, dtype=np.float64))
        return self._iso

    def predict(self, pred):
        """Calibrated probabilities (float64), same shape as a 1-D ``pred``."""
        return self._core_model().predict(_vector(pred, "pred"))

    def transform(self, pred):
        return self.predict(pred)

    def _report(self, pred, y, w):
        binary = np.all((y == 0) | (y == 1)) and y.any()
        if not binary:
            return None, None
        return _metrics.calibration(y, pred, w), _metrics.calibration(y, self.predict(pred), w)

    def calibration_report(self, pred, y, sample_weight=None):
        """{"before": calibration of pred, "after": calibration of predict(pred)} against 0/1
        labels y (mean prediction / mean label)."""
        pred, y = _vector(pred, "pred"), _vector(y, "y")
        w = None if sample_weight is None else _vector(sample_weight, "sample_weight")
        before, after = self._report(pred, y, w)
        if before is None:
            raise ValueError("calibration needs 0/1 labels with at least one positive")
        return {"before": before, "after": after}

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_iso", None)
        return state
