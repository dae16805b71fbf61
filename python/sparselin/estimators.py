"""scikit-learn style estimators over the Rust core.

This layer only validates and converts inputs, maps labels, keeps fitted attributes and shows
progress; all training and prediction happens in ``sparselin._core`` with the GIL released.
"""

from __future__ import annotations

import json
import numbers
import os

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _core, _engine, gpu
from . import metrics as _metrics
from ._input import Csr, from_matrix, from_triple, is_path, is_triple
from .io import FileData, load_svmlight

_OPTIMIZERS = ("sgd", "lazy_adam", "adagrad", "ftrl")


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _SparseEstimator(BaseEstimator):
    """Shared machinery; subclasses set ``_task`` ("binary" or "regression") and ``_linear``."""

    _task = "binary"
    _linear = False

    # -- configuration ---------------------------------------------------------------------
    def _hidden(self):
        return None if self._linear else tuple(int(h) for h in self.hidden)

    def _width(self):
        return 1 if self._linear else int(self.sparse_width)

    def _check_hyperparameters(self):
        def positive_int(name, value, minimum=1):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        if self.n_features is not None:
            positive_int("n_features", self.n_features)
        if not self._linear:
            positive_int("sparse_width", self.sparse_width)
            try:
                hidden = tuple(self.hidden)
            except TypeError:
                raise ValueError(f"hidden must be a tuple of layer sizes, got {self.hidden!r}") from None
            for h in hidden:
                positive_int("each hidden layer size", h)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        f32_max = float(np.finfo(np.float32).max)
        lr = self.learning_rate
        if not isinstance(lr, numbers.Real) or not np.isfinite(lr) or lr <= 0 or lr > f32_max:
            raise ValueError(f"learning_rate must be a finite float32 number > 0, got {lr!r}")
        for name in ("l1", "l2"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0 or v > f32_max:
                raise ValueError(f"{name} must be a finite float32 number >= 0, got {v!r}")
        positive_int("batch_size", self.batch_size)
        positive_int("epochs", self.epochs)
        positive_int("threads", self.threads, minimum=0)
        positive_int("predict_threads", self.predict_threads, minimum=0)
        if self.parallel not in ("hogwild", "columns"):
            raise ValueError(f"parallel must be 'hogwild' or 'columns', got {self.parallel!r}")
        if self.device not in gpu.DEVICES:
            raise ValueError(f"device must be one of {gpu.DEVICES}, got {self.device!r}")

    def _seed(self):
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool) and rs >= 0:
            return int(rs)
        return int(check_random_state(rs).randint(0, 2**31 - 1))

    def _new_model(self, n_features):
        return _core.SparseModel(
            n_features, self._width(), self._hidden(), self._task, bool(self.normalize), self.optimizer,
            float(self.learning_rate), float(self.l1), float(self.l2), self._seed(),
        )

    # -- inputs ----------------------------------------------------------------------------
    def _fit_inputs(self, X, y, sample_weight, reset):
        """Returns (Csr, targets float32, weights float32 or None)."""
        if is_path(X):
            if y is not None:
                raise ValueError("when X is a file path the labels come from the file: pass y=None")
            X, y = load_svmlight(X, n_features=self._model_n_features() if not reset else self.n_features)
        if is_triple(X):
            n_cols = self._model_n_features() if not reset else self.n_features
            csr = from_triple(X, n_cols)
            if y is None:
                raise ValueError(f"This {type(self).__name__} estimator requires y to be passed, but the target y is None.")
            y = np.asarray(y)
            if csr.n_rows == 0:
                raise ValueError("X has no rows: nothing to train on")
            if y.ndim != 1 or y.shape[0] != csr.n_rows:
                raise ValueError(f"X has {csr.n_rows} rows but y has shape {y.shape}")
            if reset:
                self.n_features_in_ = csr.n_cols
        else:
            X, y = validate_data(self, X, y, accept_sparse="csr", dtype=(np.float32, np.float64), reset=reset,
                                 y_numeric=self._task == "regression")
            csr = from_matrix(X)
        targets = self._encode_targets(y, reset)
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, np.empty((csr.n_rows, 0)), dtype=np.float32,
                                           ensure_non_negative=True)
            weights = np.ascontiguousarray(weights, dtype=np.float32)
        return csr, targets, weights

    def _predict_inputs(self, X) -> Csr:
        check_is_fitted(self)
        if isinstance(X, FileData):
            Xf, _, _, _ = X.read(n_features=None if X.transform is not None else self._model_n_features())
            return from_matrix(Xf)
        if is_path(X):
            X, _ = load_svmlight(X, n_features=self._model_n_features())
            if X.shape[1] != self.n_features_in_:
                X = X.copy()
                X.resize((X.shape[0], self.n_features_in_)) if X.shape[1] < self.n_features_in_ else None
        if is_triple(X):
            return from_triple(X, self._model_n_features())
        X = validate_data(self, X, accept_sparse="csr", dtype=(np.float32, np.float64), reset=False)
        return from_matrix(X)

    def _core_model(self):
        """The core model, read once per call: a fit in another thread may replace it meanwhile,
        and a failed or running fit leaves none."""
        model = getattr(self, "_model", None)
        if model is None:
            raise NotFittedError(f"This {type(self).__name__} instance has no trained model: it is not fitted, its "
                                 "last fit failed, or a fit in another thread is setting it up")
        return model

    def _model_n_features(self):
        model = getattr(self, "_model", None)
        if model is not None:
            return json.loads(model.config_json)["n_features"]
        return self.n_features

    # -- training --------------------------------------------------------------------------
    def _start(self, n_cols):
        self._check_hyperparameters()
        n_features = n_cols if self.n_features is None else int(self.n_features)
        if n_cols > n_features:
            raise ValueError(f"X has {n_cols} columns but n_features={n_features}: ids must be < n_features")
        self._model = self._new_model(n_features)
        self.history_ = []

    @staticmethod
    def _eval_sets(eval_set):
        if eval_set is None:
            return []
        if isinstance(eval_set, tuple) and len(eval_set) == 2:
            return [eval_set]
        return list(eval_set)

    def _eval_arrays(self, pair):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError("eval_set must be (X, y) or a list of (X, y) pairs")
        X, y = pair
        if isinstance(X, FileData):
            Xf, yf, _, _ = X.read(binary=self._task == "binary",
                                  n_features=None if X.transform is not None else self._model_n_features())
            if y is not None:
                raise ValueError("with FileData in eval_set the labels come from the files: pass (data, None)")
            return from_matrix(Xf), np.ascontiguousarray(yf, dtype=np.float32)
        return self._predict_inputs(X), self._encode_targets(np.asarray(y), reset=False)

    def _decision(self, csr: Csr):
        model = self._core_model()
        n_features = json.loads(model.config_json)["n_features"]
        return model.decision_function(csr.indptr, csr.indices, csr.values, n_features, int(self.predict_threads),
                                       gpu.resolve(getattr(self, "device", "cpu")))

    # -- public API ------------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, eval_set=None, *, eval_every=None, early_stopping_rounds=None,
            early_stopping_metric="logloss", callbacks=(), checkpoint_path=None, checkpoint_every=None,
            keep_checkpoints=3, resume=False):
        """Trains a new model for ``epochs`` passes.

        X: scipy.sparse matrix, dense array, ``(indptr, indices, values)`` triple, or an svmlight
        file path (then y=None). ``eval_set``: (X, y) or a list of them, scored every
        ``eval_every`` samples (default: each epoch) into ``history_`` (logloss, AUC, PR-AUC, RCE,
        calibration). ``early_stopping_rounds``: stop when ``early_stopping_metric`` of the first
        eval set has not improved for that many evaluations (``best_score_``, ``best_samples_``).
        ``callbacks``: functions ``f(estimator, history_entry)``; one returning True stops the
        fit. ``checkpoint_path`` + ``checkpoint_every`` (samples): write
        ``{checkpoint_path}-{samples}.safetensors`` atomically, keeping the last
        ``keep_checkpoints``. ``resume=True``: continue from the newest such checkpoint, if any
        (same data and settings), ending with the model an uninterrupted fit would have."""
        for attr in ("classes_", "_model", "best_score_", "best_samples_", "collision_rate_"):
            if hasattr(self, attr):
                delattr(self, attr)
        if isinstance(X, FileData):
            if y is not None or sample_weight is not None:
                raise ValueError("with FileData the labels (and VW importances) come from the files: pass y=None")
            if any(v for v in (eval_every, early_stopping_rounds, checkpoint_path, checkpoint_every, resume)):
                raise ValueError("eval_every, early stopping, checkpoints and resume need the data in memory; "
                                 "streaming from FileData supports eval_set (scored after each epoch)")
            self._fit_files(X, int(self.epochs), eval_set, new_model=True)
            return self
        csr, targets, weights = self._fit_inputs(X, y, sample_weight, reset=True)
        state = None
        latest = _engine.latest_checkpoint(checkpoint_path) if resume and checkpoint_path is not None else None
        if resume and checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_path")
        if latest is not None:
            model, extra = _core.load_model(latest)
            extra = json.loads(extra)
            if extra.get("estimator") != type(self).__name__ or "fit" not in extra:
                raise _core.ModelFileError(f"{latest} is not a checkpoint of a {type(self).__name__} fit")
            self._check_hyperparameters()
            self._restore(model, extra)
            state = extra["fit"]
        else:
            self._start(csr.n_cols)
        evals = [self._eval_arrays(e) for e in self._eval_sets(eval_set)]
        _engine.train(self, csr, targets, weights, int(self.epochs), evals=evals, eval_every=eval_every,
                      early_stopping_rounds=early_stopping_rounds, early_stopping_metric=early_stopping_metric,
                      callbacks=callbacks, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                      keep_checkpoints=keep_checkpoints, state=state)
        return self

    def partial_fit(self, X, y=None, sample_weight=None, eval_set=None, *, classes=None,
                    optimizer_state_decay=None):
        """One pass over (X, y), continuing from the current model (creating it on the first
        call): weights, optimizer state and normalization statistics carry over.
        ``optimizer_state_decay`` in [0, 1] first multiplies the optimizer state (Adam moments,
        Adagrad/FTRL accumulators), so statistics from older data fade (continual training)."""
        first = getattr(self, "_model", None) is None
        if isinstance(X, FileData):
            if not first and optimizer_state_decay is not None:
                self._model.decay_optimizer_state(float(optimizer_state_decay))
            self._fit_files(X, 1, eval_set, new_model=first)
            return self
        if first and classes is not None:
            self._set_classes(np.asarray(classes))
        csr, targets, weights = self._fit_inputs(X, y, sample_weight, reset=first)
        if first:
            self._start(csr.n_cols)
        elif optimizer_state_decay is not None:
            self._core_model().decay_optimizer_state(float(optimizer_state_decay))
        evals = [self._eval_arrays(e) for e in self._eval_sets(eval_set)]
        _engine.train(self, csr, targets, weights, 1, evals=evals)
        return self

    def _fit_files(self, data: FileData, epochs, eval_set, new_model):
        """Streams the files through the core trainer (bounded memory, background reader)."""
        binary = self._task == "binary"
        if gpu.resolve(self.device) == "cuda":
            raise ValueError("training on the GPU takes data in memory: read the files with sparselin.read or "
                             "FileData.read(), or use device='cpu' to stream them")
        if new_model:
            self._check_hyperparameters()
            if data.transform is not None:
                if data.format == "svmlight":
                    data.resolve(data.n_features)  # validates the files early
                n_features, zero_based = 2 ** int(data.transform.out_bits), None
                if self.n_features not in (None, n_features):
                    raise ValueError(f"n_features={self.n_features} but the discretizer outputs 2**{data.transform.out_bits} ids")
            elif data.format == "svmlight":
                n_features, zero_based = data.resolve(data.n_features or self.n_features)
            else:
                n_features, zero_based = 2**data.bits, None
                if self.n_features not in (None, n_features):
                    raise ValueError(f"n_features={self.n_features} but the files are hashed into 2**{data.bits} ids")
            self._model = self._new_model(n_features)
            self.history_ = []
            self.n_features_in_ = n_features
            if binary:
                self.classes_ = np.array([0, 1])
        else:
            n_features, zero_based = self._model_n_features(), None
            if data.format == "svmlight":
                zero_based = data.resolve(None if data.transform is not None else n_features)[1]
        spec = data.spec_json(None if data.transform is not None else n_features, zero_based)
        discretizer = None if data.transform is None else data.transform._disc()
        evals = [self._eval_arrays(e) for e in self._eval_sets(eval_set)]
        bar = _engine._progress_bar(self, None)
        samples = self.history_[-1]["samples"] if self.history_ else 0
        seconds = self.history_[-1]["seconds"] if self.history_ else 0.0

        def progress(epoch, done, per_epoch):
            if bar is not None:
                bar.update(done - bar.n)

        try:
            for epoch in range(epochs):
                r = self._model.fit_files(data.paths, spec, binary, 1, int(self.batch_size), int(self.threads),
                                          data.window, data.cache, progress if bar is not None else None,
                                          epoch == 0, self.parallel, discretizer)
                samples += r["samples"]
                seconds += r["seconds"]
                entry = {"samples": samples, "epoch": len(self.history_) + 1, "train_loss": r["epoch_losses"][-1],
                         "seconds": seconds, "reader_wait_seconds": r["waiting"]}
                for k, (Xe, ye) in enumerate(evals):
                    entry.update(self._eval_metrics(Xe, ye, "eval" if k == 0 else f"eval{k}"))
                self.history_.append(entry)
                if "distinct_keys" in r and r["distinct_keys"]:
                    self.collision_rate_ = 1.0 - r["distinct_slots"] / r["distinct_keys"]
        finally:
            if bar is not None:
                bar.close()

    def save(self, path):
        """Writes the model (weights, normalization, optimizer state, estimator settings) to a
        safetensors file, atomically."""
        check_is_fitted(self)
        _core.save_model(self._core_model(), os.fspath(path), json.dumps(self._extra_state()))

    def _extra_state(self):
        params = self.get_params()
        if not isinstance(params.get("random_state"), (int, type(None))):
            params["random_state"] = None
        if "hidden" in params:
            params["hidden"] = list(params["hidden"])
        state = {"estimator": type(self).__name__, "params": params, "n_features_in": int(self.n_features_in_),
                 "history": getattr(self, "history_", [])}
        if hasattr(self, "best_score_"):
            state["best_score"], state["best_samples"] = self.best_score_, self.best_samples_
        if hasattr(self, "classes_"):
            state["classes"] = self.classes_.tolist()
            state["classes_dtype"] = self.classes_.dtype.str
        return state

    def _restore(self, model, extra):
        self._model = model
        self.n_features_in_ = extra["n_features_in"]
        self.history_ = extra.get("history", [])
        if "classes" in extra:
            self.classes_ = np.asarray(extra["classes"], dtype=np.dtype(extra["classes_dtype"]))
        if "best_score" in extra:
            self.best_score_, self.best_samples_ = extra["best_score"], extra["best_samples"]

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns __dict__ itself
        model = state.pop("_model", None)
        if model is not None:
            state["_model_bytes"] = bytes(_core.model_to_bytes(model, ""))
        return state

    def __setstate__(self, state):
        data = state.pop("_model_bytes", None)
        super().__setstate__(state)
        if data is not None:
            self._model, _ = _core.model_from_bytes(data)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = self.threads != 1 and self.parallel == "hogwild"
        return tags


class _Classifier(ClassifierMixin, _SparseEstimator):
    _task = "binary"

    def _set_classes(self, classes):
        classes = np.unique(classes)
        if classes.size != 2:
            raise ValueError(f"Only binary classification is supported by {type(self).__name__}: classes must hold "
                             f"2 labels, got {classes.size} class(es)")
        self.classes_ = classes

    def _encode_targets(self, y, reset):
        y = np.asarray(y)
        if reset or not hasattr(self, "classes_"):
            check_classification_targets(y)
            classes = np.unique(y)
            if classes.size == 1 and classes[0] in (0, 1) and np.issubdtype(classes.dtype, np.number):
                classes = np.array([0, 1], dtype=classes.dtype)
            if classes.size != 2:
                raise ValueError(
                    f"Only binary classification is supported by {type(self).__name__}: it needs samples of "
                    f"exactly 2 classes, got {classes.size} class(es)")
            self.classes_ = classes
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            bad = y[unknown][0]
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise ValueError(f"label {bad!r} (row {int(np.argmax(unknown))}) is not one of the classes {self.classes_.tolist()}")
        return np.ascontiguousarray(y == self.classes_[1], dtype=np.float32)

    def _eval_metrics(self, csr, targets, prefix):
        p = _sigmoid(self._decision(csr))
        out = {f"{prefix}_logloss": _metrics.logloss(targets, p)}
        if 0 < targets.sum() < targets.size:
            out[f"{prefix}_auc"] = _metrics.roc_auc(targets, p)
            out[f"{prefix}_pr_auc"] = _metrics.pr_auc(targets, p)
            out[f"{prefix}_rce"] = _metrics.rce(targets, p)
            out[f"{prefix}_calibration"] = _metrics.calibration(targets, p)
        return out

    def decision_function(self, X):
        """The logit of ``classes_[1]`` for each row."""
        return self._decision(self._predict_inputs(X)).astype(np.float64)

    def predict_proba(self, X):
        """Array of shape (n, 2): probabilities of ``classes_[0]`` and ``classes_[1]``."""
        p = _sigmoid(self._decision(self._predict_inputs(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        z = self._decision(self._predict_inputs(X))
        return self.classes_[(z > 0).astype(np.intp)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class SparseLogisticRegression(_Classifier):
    """Logistic regression on sparse features: online normalization -> sparse linear layer of
    width 1 -> sigmoid. ``optimizer="ftrl"`` gives FTRL-Proximal with ``l1``/``l2``."""

    _linear = True

    def __init__(self, n_features=None, optimizer="lazy_adam", learning_rate=0.01, batch_size=512, epochs=1,
                 threads=1, parallel="hogwild", normalize=True, l1=0.0, l2=0.0, random_state=None, verbose=0,
                 predict_threads=0, device="cpu"):
        self.n_features = n_features
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.threads = threads
        self.parallel = parallel
        self.normalize = normalize
        self.l1 = l1
        self.l2 = l2
        self.random_state = random_state
        self.verbose = verbose
        self.predict_threads = predict_threads
        self.device = device


class SparseMLPClassifier(_Classifier):
    """Online normalization -> sparse layer (gather-sum, width ``sparse_width``) -> ReLU ->
    dense layers ``hidden`` with ReLU -> one logit -> sigmoid."""

    def __init__(self, n_features=None, sparse_width=50, hidden=(64, 16), optimizer="lazy_adam", learning_rate=1e-3,
                 batch_size=512, epochs=1, threads=1, parallel="hogwild", normalize=True, l1=0.0, l2=0.0,
                 random_state=None, verbose=0, predict_threads=0, device="cpu"):
        self.n_features = n_features
        self.sparse_width = sparse_width
        self.hidden = hidden
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.threads = threads
        self.parallel = parallel
        self.normalize = normalize
        self.l1 = l1
        self.l2 = l2
        self.random_state = random_state
        self.verbose = verbose
        self.predict_threads = predict_threads
        self.device = device


class SparseMLPRegressor(RegressorMixin, _SparseEstimator):
    """The MLP with an identity output and squared-error loss."""

    _task = "regression"

    def __init__(self, n_features=None, sparse_width=50, hidden=(64, 16), optimizer="lazy_adam", learning_rate=1e-3,
                 batch_size=512, epochs=1, threads=1, parallel="hogwild", normalize=True, l1=0.0, l2=0.0,
                 random_state=None, verbose=0, predict_threads=0, device="cpu"):
        self.n_features = n_features
        self.sparse_width = sparse_width
        self.hidden = hidden
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.threads = threads
        self.parallel = parallel
        self.normalize = normalize
        self.l1 = l1
        self.l2 = l2
        self.random_state = random_state
        self.verbose = verbose
        self.predict_threads = predict_threads
        self.device = device

    def _encode_targets(self, y, reset):
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or infinity")
        return np.ascontiguousarray(y, dtype=np.float32)

    def _eval_metrics(self, csr, targets, prefix):
        pred = self._decision(csr).astype(np.float64)
        return {f"{prefix}_mse": float(np.mean((pred - targets) ** 2))}

    def predict(self, X):
        return self._decision(self._predict_inputs(X)).astype(np.float64)


_ESTIMATORS = {c.__name__: c for c in (SparseLogisticRegression, SparseMLPClassifier, SparseMLPRegressor)}


def load(path):
    """Loads an estimator saved with ``save``. A truncated, corrupted or foreign file raises
    ``sparselin.ModelFileError``."""
    model, extra = _core.load_model(os.fspath(path))
    try:
        extra = json.loads(extra)
        cls = _ESTIMATORS[extra["estimator"]]
        params = dict(extra["params"])
        if "hidden" in params:
            params["hidden"] = tuple(params["hidden"])
        if params.get("device") == "cuda":
            params["device"] = "auto"  # a model file is portable: GPU when there is one
        est = cls(**params)
        est._restore(model, extra)
    except (ValueError, KeyError, TypeError) as e:
        raise _core.ModelFileError(f"{os.fspath(path)}: the estimator settings stored in the file are invalid ({e!r})") from None
    return est
