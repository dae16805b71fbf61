"""Offline metrics (computed in Rust): logloss, ROC AUC, PR AUC (average precision), RCE and
calibration. All take 0/1 labels, predicted probabilities (or scores, for the AUCs) and optional
sample weights."""

from __future__ import annotations

import numpy as np

from . import _core


def _arrays(y_true, y_pred, sample_weight):
    y = np.ascontiguousarray(np.asarray(y_true, dtype=np.float32).ravel())
    p = np.ascontiguousarray(np.asarray(y_pred, dtype=np.float32).ravel())
    w = None if sample_weight is None else np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float32).ravel())
    return y, p, w


def logloss(y_true, y_pred, sample_weight=None) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-15, 1 - 1e-15]."""
    return _core.logloss(*_arrays(y_true, y_pred, sample_weight))


def roc_auc(y_true, y_score, sample_weight=None) -> float:
    """Area under the ROC curve; tied scores count one half."""
    return _core.roc_auc(*_arrays(y_true, y_score, sample_weight))


def pr_auc(y_true, y_score, sample_weight=None) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn's definition)."""
    return _core.pr_auc(*_arrays(y_true, y_score, sample_weight))


def rce(y_true, y_pred, sample_weight=None) -> float:
    """Relative cross entropy: 100 * (1 - CE(pred) / CE(mean label)); higher is better, 0 is
    no better than predicting the click rate."""
    return _core.rce(*_arrays(y_true, y_pred, sample_weight))


def calibration(y_true, y_pred, sample_weight=None) -> float:
    """mean(prediction) / mean(label); 1.0 is calibrated on average."""
    return _core.calibration(*_arrays(y_true, y_pred, sample_weight))
