"""Online normalization (BRIEF section 2, twml SparseMaxNorm).

"Without normalization, the heavy-tailed continuous values make SGD diverge or crawl; with it,
training converges." make_ctr's continuous features reach magnitudes near 1e6.

Measured on this data (make_ctr(30000, 2**14, nnz=30, random_state=0), first 20000 rows train,
rest test; test constant-CTR logloss 0.421), threads=1, random_state 0..4:
- LR lazy_adam lr=0.01, 2 epochs, batch 256: normalize=True AUC 0.739-0.744, logloss 0.370-0.372;
  normalize=False finishes, AUC 0.509-0.520, logloss 6.6-10.8.
- LR sgd lr=1.0, 3 epochs, batch 256: normalize=True AUC 0.731-0.741, logloss 0.375-0.414;
  normalize=False finishes, AUC 0.502-0.525, logloss 7.1-12.9.
- MLP (50 -> 64 -> 16) sgd lr=0.3, 3 epochs, batch 128, random_state=3: normalize=True AUC 0.697,
  logloss 0.389; normalize=False raises TrainingDivergedError in the first epoch (after 256
  samples). With other seeds the un-normalized MLP either diverges or ends with all ReLUs dead
  (AUC exactly 0.5).
"""

import numpy as np
import pytest

import sparselin
from sparselin import metrics as M

N_FEATURES = 2**14


@pytest.fixture(scope="module")
def ctr_data():
    X, y = sparselin.datasets.make_ctr(n_rows=30000, n_features=N_FEATURES, nnz=30, random_state=0)
    assert np.abs(X.data).max() > 1e5, "make_ctr should produce heavy-tailed continuous values"
    Xtr, ytr, Xte, yte = X[:20000], y[:20000], X[20000:], y[20000:]
    const = M.logloss(yte, np.full(yte.shape, yte.mean()))
    return Xtr, ytr, Xte, yte, const


def _score(clf, Xte, yte):
    p = clf.predict_proba(Xte)[:, 1]
    return M.roc_auc(yte, p), M.logloss(yte, p)


@pytest.mark.parametrize(
    "optimizer,learning_rate,epochs",
    [("lazy_adam", 0.01, 2), ("sgd", 1.0, 3)],
)
def test_lr_converges_with_normalization_and_not_without(ctr_data, optimizer, learning_rate, epochs):
    Xtr, ytr, Xte, yte, const = ctr_data
    params = dict(n_features=N_FEATURES, optimizer=optimizer, learning_rate=learning_rate, epochs=epochs,
                  batch_size=256, threads=1, random_state=0)

    on = sparselin.SparseLogisticRegression(normalize=True, **params).fit(Xtr, ytr)
    auc_on, ll_on = _score(on, Xte, yte)
    # Without normalization this config does not raise: the weights blow up to huge finite
    # values, the logits saturate and the test logloss is many times the constant predictor's.
    off = sparselin.SparseLogisticRegression(normalize=False, **params).fit(Xtr, ytr)
    auc_off, ll_off = _score(off, Xte, yte)
    print(f"\n[normalization LR {optimizer} lr={learning_rate} ep={epochs}] const logloss {const:.4f} | "
          f"normalize=True AUC {auc_on:.4f} logloss {ll_on:.4f} | normalize=False AUC {auc_off:.4f} logloss {ll_off:.4f}")

    assert auc_on > 0.70
    assert ll_on < const - 0.03
    assert np.isfinite(on.history_[-1]["train_loss"]) and on.history_[-1]["train_loss"] < 0.45

    assert auc_off < 0.56
    assert ll_off > 3.0 * const
    assert auc_on - auc_off > 0.15
    # the un-normalized training loss is orders of magnitude off, too
    assert off.history_[-1]["train_loss"] > 10.0


MLP_PARAMS = dict(n_features=N_FEATURES, sparse_width=50, hidden=(64, 16), optimizer="sgd", learning_rate=0.3,
                  epochs=3, batch_size=128, threads=1, random_state=3)


def test_mlp_converges_with_normalization_and_diverges_without(ctr_data):
    Xtr, ytr, Xte, yte, const = ctr_data
    on = sparselin.SparseMLPClassifier(normalize=True, **MLP_PARAMS).fit(Xtr, ytr)
    auc_on, ll_on = _score(on, Xte, yte)
    print(f"\n[normalization MLP sgd lr=0.3] const logloss {const:.4f} | normalize=True AUC {auc_on:.4f} "
          f"logloss {ll_on:.4f}")
    assert auc_on > 0.65
    assert ll_on < const - 0.01

    off = sparselin.SparseMLPClassifier(normalize=False, **MLP_PARAMS)
    with pytest.raises(sparselin.TrainingDivergedError, match="normalize=True"):
        off.fit(Xtr, ytr)
    # the error keeps a model whose tensors are finite ("the weights of the last good batch")
    for name, _shape in off._model.tensor_names():
        assert np.all(np.isfinite(np.asarray(off._model.get_tensor(name)))), name


def test_predictions_after_divergence_are_not_nan(ctr_data):
    """Found while writing these tests. After TrainingDivergedError the model keeps "the weights
    of the last good batch", i.e. the weights the NaN batch was evaluated with (the update of the
    last good batch is kept). With inputs up to 1e6 those weights are ~1e21, so the forward pass
    overflows float32: here decision_function gave NaN for ~16% of the training rows (inf for
    most others), and predict_proba returns NaN probabilities. BRIEF section 6 asks to "keep the last good
    weights": the weights under which the loss was last finite (one step earlier) would not."""
    Xtr, ytr, Xte, yte, _ = ctr_data
    clf = sparselin.SparseMLPClassifier(n_features=N_FEATURES, sparse_width=16, hidden=(16,), optimizer="sgd",
                                        learning_rate=0.5, epochs=3, batch_size=256, threads=1, normalize=False,
                                        random_state=3)
    with pytest.raises(sparselin.TrainingDivergedError):
        clf.fit(Xtr, ytr)
    p = clf.predict_proba(Xtr[:2000])[:, 1]
    assert not np.isnan(p).any(), f"{int(np.isnan(p).sum())} of {p.size} predicted probabilities are NaN"


# -- exactness of the max_abs state ------------------------------------------------------

def _signed_ctr(n_rows, random_state):
    """make_ctr data with about a third of the values negated (make_ctr's are all >= 0), so the
    test checks max |v|, not max v."""
    X, y = sparselin.datasets.make_ctr(n_rows=n_rows, n_features=N_FEATURES, nnz=30, random_state=random_state)
    X = X.copy()
    rng = np.random.default_rng(random_state)
    X.data[rng.random(X.data.size) < 0.33] *= -1
    return X, y


def _col_max_abs(*mats):
    """Per-column max |value| over the stored entries, in float32; 0 where a column never appears.
    (np.maximum.at handles ids repeated within a row; make_ctr produces some.)"""
    ref = np.zeros(N_FEATURES, dtype=np.float32)
    for X in mats:
        np.maximum.at(ref, X.indices, np.abs(X.data.astype(np.float32)))
    return ref


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls", [sparselin.SparseLogisticRegression, sparselin.SparseMLPClassifier])
def test_max_abs_equals_training_column_max(cls, threads):
    X, y = _signed_ctr(4000, random_state=5)
    ref = _col_max_abs(X)
    assert (ref == 0).sum() > 100, "some columns should never be seen"
    assert (X.data < 0).any()

    kw = dict(sparse_width=8, hidden=(8,)) if cls is sparselin.SparseMLPClassifier else {}
    clf = cls(n_features=N_FEATURES, normalize=True, threads=threads, random_state=0, **kw).fit(X, y)
    max_abs = np.asarray(clf._model.get_tensor("norm.max_abs"))
    assert max_abs.dtype == np.float32 and max_abs.shape == (N_FEATURES,)
    np.testing.assert_array_equal(max_abs, ref)
    assert np.all(max_abs[ref == 0] == 0)


def test_max_abs_accumulates_over_partial_fit_and_is_not_updated_by_inference():
    X1, y1 = _signed_ctr(3000, random_state=6)
    X2, y2 = _signed_ctr(3000, random_state=7)
    clf = sparselin.SparseLogisticRegression(n_features=N_FEATURES, normalize=True, threads=1, random_state=0)
    clf.partial_fit(X1, y1)
    np.testing.assert_array_equal(np.asarray(clf._model.get_tensor("norm.max_abs")), _col_max_abs(X1))
    clf.partial_fit(X2, y2)
    after_training = np.asarray(clf._model.get_tensor("norm.max_abs")).copy()
    np.testing.assert_array_equal(after_training, _col_max_abs(X1, X2))

    # inference with bigger values must not move max_abs (BRIEF: "Inference: ... with no update")
    X3 = X2.copy()
    X3.data *= 10.0
    clf.predict_proba(X3)
    clf.decision_function(X3)
    np.testing.assert_array_equal(np.asarray(clf._model.get_tensor("norm.max_abs")), after_training)


def test_normalize_false_has_no_norm_state():
    X, y = _signed_ctr(500, random_state=8)
    clf = sparselin.SparseLogisticRegression(n_features=N_FEATURES, normalize=False, threads=1, random_state=0)
    clf.fit(X, y)
    names = [n for n, _ in clf._model.tensor_names()]
    assert not any(n.startswith("norm.") for n in names), names
