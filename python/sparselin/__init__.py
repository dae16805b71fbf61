"""sparselin: fast sparse logistic regression and MLPs for click-through-rate and ranking data.

A Rust core (gather-sum sparse layer, online normalization, lazy optimizers, Hogwild threads)
under a scikit-learn style API.
"""

from ._core import ModelFileError, TrainingDivergedError, __version__
from . import datasets, gpu, metrics
from .estimators import (
    SparseLogisticRegression,
    SparseMLPClassifier,
    SparseMLPRegressor,
    load,
)
from .discretizers import HashingDiscretizer, IsotonicCalibrator, PercentileDiscretizer, load_discretizer
from .io import FeatureHasher, FileData, from_records, load_svmlight, read
from .plotting import plot_history
from .predictor import Predictor

__all__ = [
    "SparseLogisticRegression",
    "SparseMLPClassifier",
    "SparseMLPRegressor",
    "load",
    "load_svmlight",
    "read",
    "FileData",
    "FeatureHasher",
    "from_records",
    "PercentileDiscretizer",
    "HashingDiscretizer",
    "IsotonicCalibrator",
    "load_discretizer",
    "Predictor",
    "plot_history",
    "datasets",
    "gpu",
    "metrics",
    "ModelFileError",
    "TrainingDivergedError",
    "__version__",
]
