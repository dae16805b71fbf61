"""Quality on real data from ../shared/data/real (see its SOURCES.md); skipped when it is absent.

Measured here (2-core CPU, threads=1), test set AUC:
- a9a: scikit-learn LogisticRegression (C=1) 0.90215.
  SparseLogisticRegression lazy_adam lr=1e-3, 10 epochs, batch 128: 0.90225-0.90229 over
  random_state 0..4 (~0.05 s a fit). Other settings that also beat sklearn over 5 seeds: adagrad
  lr=0.05 10 epochs batch 128 (0.90237-0.90241), ftrl lr=0.1 5 epochs batch 32 (0.90232-0.90245).
  SparseMLPClassifier 50 -> (64, 16), lazy_adam lr=3e-4, 6 epochs, batch 64: 0.90341-0.90395
  over random_state 0..4 (~0.6 s a fit), i.e. >= 0.0011 above our LR for every seed. (More
  epochs or lr=1e-3 overfit: 10 epochs at lr=1e-3 gave 0.9008-0.9017.)
- Criteo 8k (rows 0..6399 train, 6400..7999 test): constant-CTR test logloss 0.5156 (test CTR),
  0.5157 (train CTR). SparseMLPClassifier 50 -> (64, 16), lazy_adam lr=1e-3, 2 epochs, batch 64:
  AUC 0.676-0.691, RCE 5.9-7.0, logloss 0.480-0.485 over random_state 0..5. The data is tiny
  for 37k categorical values: a third epoch overfits (RCE falls to about 0, a fourth to -20).
  SparseLogisticRegression lazy_adam lr=3e-3, 3 epochs, batch 64, for comparison: AUC ~0.702,
  RCE ~8.6.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import sparselin
from sparselin import metrics as M

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _need(*names):
    missing = [n for n in names if not (REAL / n).is_file()]
    if missing:
        pytest.skip(f"real data not found: {', '.join(str(REAL / n) for n in missing)}")


# -- a9a ---------------------------------------------------------------------------------

A9A_LR = dict(optimizer="lazy_adam", learning_rate=1e-3, epochs=10, batch_size=128, l2=0.0, threads=1)
A9A_MLP = dict(sparse_width=50, hidden=(64, 16), optimizer="lazy_adam", learning_rate=3e-4, epochs=6,
               batch_size=64, threads=1)


@pytest.fixture(scope="module")
def a9a():
    _need("a9a", "a9a.t")
    X, y = sparselin.load_svmlight(REAL / "a9a", n_features=123, zero_based=False)
    Xt, yt = sparselin.load_svmlight(REAL / "a9a.t", n_features=123, zero_based=False)
    assert X.shape == (32561, 123) and Xt.shape == (16281, 123)
    assert set(np.unique(y)) == {-1.0, 1.0}
    assert int((y > 0).sum()) == 7841 and int((yt > 0).sum()) == 3846  # SOURCES.md
    yt01 = (yt > 0).astype(np.float64)
    return X, y, Xt, yt01


@pytest.fixture(scope="module")
def a9a_sklearn_auc(a9a):
    from sklearn.linear_model import LogisticRegression

    X, y, Xt, yt01 = a9a
    sk = LogisticRegression(max_iter=5000).fit(X, y)
    assert sk.n_iter_[0] < 5000
    return M.roc_auc(yt01, sk.predict_proba(Xt)[:, 1])


@pytest.fixture(scope="module")
def a9a_lr_auc(a9a):
    X, y, Xt, yt01 = a9a
    clf = sparselin.SparseLogisticRegression(n_features=123, random_state=0, **A9A_LR).fit(X, y)
    return M.roc_auc(yt01, clf.predict_proba(Xt)[:, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a9a_lr_matches_sklearn(a9a, a9a_sklearn_auc, seed):
    X, y, Xt, yt01 = a9a
    clf = sparselin.SparseLogisticRegression(n_features=123, random_state=seed, **A9A_LR).fit(X, y)
    # labels are -1/+1 in the file: classes_ keeps them, column 1 is P(+1)
    np.testing.assert_array_equal(clf.classes_, [-1.0, 1.0])
    auc = M.roc_auc(yt01, clf.predict_proba(Xt)[:, 1])
    print(f"\n[a9a] sklearn LR AUC {a9a_sklearn_auc:.5f} | sparselin LR (seed {seed}) AUC {auc:.5f}")
    # measured: ours 0.9022-0.9023 vs sklearn 0.90215, so there is ~0.003 of margin
    assert auc >= a9a_sklearn_auc - 0.003


def test_a9a_mlp_at_least_as_good_as_lr(a9a, a9a_sklearn_auc, a9a_lr_auc):
    X, y, Xt, yt01 = a9a
    clf = sparselin.SparseMLPClassifier(n_features=123, random_state=0, **A9A_MLP).fit(X, y)
    p = clf.predict_proba(Xt)[:, 1]
    auc = M.roc_auc(yt01, p)
    print(f"\n[a9a] sklearn LR AUC {a9a_sklearn_auc:.5f} | sparselin LR AUC {a9a_lr_auc:.5f} | "
          f"sparselin MLP AUC {auc:.5f} (logloss {M.logloss(yt01, p):.4f})")
    assert auc >= a9a_sklearn_auc - 0.003
    # measured: the MLP is 0.0011-0.0017 above our LR for every seed 0..4
    assert auc >= a9a_lr_auc


# -- Criteo ------------------------------------------------------------------------------

N_INT, N_CAT = 13, 26
HASH_BITS = 18
CRITEO_FEATURES = N_INT + 2**HASH_BITS


def load_criteo_tsv(path):
    """Raw Kaggle Criteo TSV -> (float32 CSR, float32 labels).

    Feature ids: the 13 integer fields I1..I13 are ids 0..12 with their raw value (negative values
    kept; online normalization scales them); the 26 categorical fields become tokens "C{j}={hex}"
    (j = 1..26), hashed by sklearn's FeatureHasher into 2**18 slots (value 1.0, alternate_sign=False;
    a within-row collision adds up to 2.0) placed at ids 13 .. 13 + 2**18 - 1. Empty fields give no
    feature.
    """
    from sklearn.feature_extraction import FeatureHasher

    labels, rows, cols, vals, tokens = [], [], [], [], []
    with open(path, encoding="ascii") as f:
        for r, line in enumerate(f):
            fields = line.rstrip("\n").split("\t")
            assert len(fields) == 1 + N_INT + N_CAT, f"line {r + 1}: {len(fields)} fields"
            labels.append(float(fields[0]))
            for j, v in enumerate(fields[1:1 + N_INT]):
                if v != "":
                    rows.append(r)
                    cols.append(j)
                    vals.append(float(int(v)))
            tokens.append([f"C{j + 1}={v}" for j, v in enumerate(fields[1 + N_INT:]) if v != ""])
    n = len(labels)
    ints = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(n, N_INT))
    cats = FeatureHasher(n_features=2**HASH_BITS, input_type="string", alternate_sign=False).transform(tokens)
    X = sp.hstack([ints, cats.astype(np.float32)], format="csr", dtype=np.float32)
    assert X.shape == (n, CRITEO_FEATURES)
    return X, np.asarray(labels, np.float32)


CRITEO_MLP = dict(sparse_width=50, hidden=(64, 16), optimizer="lazy_adam", learning_rate=1e-3, epochs=2,
                  batch_size=64, threads=1)


def test_criteo_mlp_beats_constant_ctr():
    _need("criteo_kaggle_8k.tsv")
    X, y = load_criteo_tsv(REAL / "criteo_kaggle_8k.tsv")
    assert X.shape[0] == 8000
    assert y.mean() == pytest.approx(0.216, abs=1e-3)  # SOURCES.md: 21.6% positive
    assert X[:, :N_INT].min() < 0  # the integers can be negative (min -2)
    Xtr, ytr, Xte, yte = X[:6400], y[:6400], X[6400:], y[6400:]

    clf = sparselin.SparseMLPClassifier(n_features=CRITEO_FEATURES, random_state=0, **CRITEO_MLP).fit(Xtr, ytr)
    p = clf.predict_proba(Xte)[:, 1]
    auc, rce, ll = M.roc_auc(yte, p), M.rce(yte, p), M.logloss(yte, p)
    const_test = M.logloss(yte, np.full(yte.shape, yte.mean()))    # the RCE baseline
    const_train = M.logloss(yte, np.full(yte.shape, ytr.mean()))   # what a constant model would learn
    print(f"\n[criteo 8k] MLP AUC {auc:.4f} RCE {rce:.2f} logloss {ll:.4f} | constant-CTR logloss "
          f"{const_test:.4f} (test CTR) {const_train:.4f} (train CTR) | calibration {M.calibration(yte, p):.3f}")

    # measured: RCE 5.9-7.0 over seeds 0..5 (6.84 for seed 0), AUC 0.676-0.691
    assert rce > 4.0
    assert auc > 0.65
    assert ll < const_test - 0.02
    assert ll < const_train - 0.02
