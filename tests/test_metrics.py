"""sparselin.metrics against scikit-learn and against float64 NumPy formulas.

The core takes float32 inputs, so every reference is computed on the inputs rounded to float32
first (then in float64); the comparison tolerance is relative 1e-5.
"""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from sparselin import metrics as M

RTOL = 1e-5
EPS = 1e-15  # the clipping documented for sparselin.metrics.logloss


def f32(a):
    """What the core sees: the values rounded to float32, handed back as float64."""
    return None if a is None else np.asarray(a, dtype=np.float32).astype(np.float64)


def np_logloss(y, p, w=None):
    y, p = np.asarray(y, np.float64), np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(np.sum(w * ce) / np.sum(w))


def np_rce(y, p, w=None):
    y = np.asarray(y, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    ctr = np.sum(w * y) / np.sum(w)
    return 100.0 * (1.0 - np_logloss(y, p, w) / np_logloss(y, np.full_like(y, ctr), w))


def np_calibration(y, p, w=None):
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, np.float64)
    return float((np.sum(w * p) / np.sum(w)) / (np.sum(w * y) / np.sum(w)))


def random_case(seed, n, ties, weighted):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(np.float64)
    y[0], y[1] = 0.0, 1.0  # both classes present
    p = rng.beta(2.0, 5.0, n) + 0.3 * y * rng.random(n)  # informative, in (0, 1.3)
    p = np.clip(p, 1e-4, 1 - 1e-4)
    if ties:
        p = np.round(p, 2)  # about 100 distinct values: many ties, across both classes
        p = np.clip(p, 0.005, 0.995)
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    return y, p, w


CASES = [
    pytest.param(seed, n, ties, weighted, id=f"seed{seed}-n{n}-{'ties' if ties else 'distinct'}-{'w' if weighted else 'unw'}")
    for seed, n in [(0, 50), (1, 1000), (2, 20000)]
    for ties in (False, True)
    for weighted in (False, True)
]


@pytest.mark.parametrize("seed,n,ties,weighted", CASES)
def test_metrics_match_sklearn_and_numpy(seed, n, ties, weighted):
    y, p, w = random_case(seed, n, ties, weighted)
    p32, w32 = f32(p), f32(w)
    if ties:
        assert np.unique(p32).size < n // 2 or n <= 100

    got = M.logloss(y, p, sample_weight=w)
    assert got == pytest.approx(log_loss(y, p32, sample_weight=w32), rel=RTOL)
    assert got == pytest.approx(np_logloss(y, p32, w32), rel=RTOL)

    assert M.roc_auc(y, p, sample_weight=w) == pytest.approx(roc_auc_score(y, p32, sample_weight=w32), rel=RTOL)
    assert M.pr_auc(y, p, sample_weight=w) == pytest.approx(
        average_precision_score(y, p32, sample_weight=w32), rel=RTOL)
    assert M.rce(y, p, sample_weight=w) == pytest.approx(np_rce(y, p32, w32), rel=RTOL, abs=1e-6)
    assert M.calibration(y, p, sample_weight=w) == pytest.approx(np_calibration(y, p32, w32), rel=RTOL)


def test_all_tied_scores_give_auc_one_half_and_ap_equal_to_ctr():
    y = np.array([0, 1, 0, 0, 1, 0, 1, 0], dtype=np.float64)
    p = np.full(y.size, 0.3)
    assert M.roc_auc(y, p) == pytest.approx(0.5, rel=RTOL)
    assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), rel=RTOL)
    assert M.pr_auc(y, p) == pytest.approx(average_precision_score(y, p), rel=RTOL)
    assert M.pr_auc(y, p) == pytest.approx(y.mean(), rel=RTOL)


def test_auc_takes_unbounded_scores():
    """The AUCs rank scores, so logits (outside [0, 1]) are fine and give the same number."""
    y, p, w = random_case(7, 500, ties=True, weighted=True)
    logit = np.log(p / (1 - p))
    assert M.roc_auc(y, logit, w) == pytest.approx(roc_auc_score(y, f32(logit), sample_weight=f32(w)), rel=RTOL)
    assert M.pr_auc(y, logit, w) == pytest.approx(average_precision_score(y, f32(logit), sample_weight=f32(w)), rel=RTOL)


def test_integer_weights_equal_repeated_rows():
    y = np.array([0, 1, 1, 0, 1, 0], dtype=np.float64)
    p = np.array([0.1, 0.4, 0.4, 0.35, 0.8, 0.8])
    w = np.array([1, 2, 0, 3, 1, 1], dtype=np.float64)
    yr, pr = np.repeat(y, w.astype(int)), np.repeat(p, w.astype(int))
    for f in (M.logloss, M.roc_auc, M.pr_auc, M.rce, M.calibration):
        assert f(y, p, sample_weight=w) == pytest.approx(f(yr, pr), rel=RTOL), f.__name__


def test_unit_weights_equal_no_weights():
    y, p, _ = random_case(3, 700, ties=True, weighted=False)
    ones = np.ones_like(y)
    for f in (M.logloss, M.roc_auc, M.pr_auc, M.rce, M.calibration):
        assert f(y, p, sample_weight=ones) == pytest.approx(f(y, p), rel=RTOL), f.__name__


def test_constant_ctr_predictor_has_rce_zero_and_calibration_one():
    y, _, w = random_case(4, 3000, ties=False, weighted=True)
    ctr = float(np.sum(f32(w) * y) / np.sum(f32(w)))
    p = np.full(y.size, ctr)
    assert abs(M.rce(y, p, sample_weight=w)) < 1e-3
    assert M.calibration(y, p, sample_weight=w) == pytest.approx(1.0, rel=1e-5)


def test_logloss_clips_extreme_probabilities():
    """Probabilities 0 and 1 are clipped to [1e-15, 1 - 1e-15] (as documented), not inf."""
    assert M.logloss([1], [0.0]) == pytest.approx(np_logloss([1], [0.0]), rel=RTOL)
    assert M.logloss([0], [1.0]) == pytest.approx(np_logloss([0], [1.0]), rel=RTOL)
    assert M.logloss([1], [0.0]) == pytest.approx(-math.log(EPS), rel=RTOL)
    assert M.logloss([1, 0], [1.0, 0.0]) < 1e-12


def test_labels_as_bool_int_float_agree():
    p = [0.3, 0.2, 0.1, 0.7]
    ref = M.roc_auc([1.0, 0.0, 1.0, 0.0], p)
    assert M.roc_auc(np.array([True, False, True, False]), p) == ref
    assert M.roc_auc(np.array([1, 0, 1, 0], dtype=np.int64), p) == ref


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("f", [M.roc_auc, M.pr_auc])
@pytest.mark.parametrize("label", [0, 1])
def test_auc_with_one_class_raises(f, label):
    with pytest.raises(ValueError, match="one class"):
        f([label] * 4, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("f", [M.logloss, M.roc_auc, M.pr_auc, M.rce, M.calibration])
def test_length_mismatch_raises(f):
    with pytest.raises(ValueError, match="2 entries"):
        f([0, 1], [0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="sample_weight"):
        f([0, 1, 1], [0.2, 0.3, 0.4], sample_weight=[1.0, 1.0])


@pytest.mark.parametrize("f", [M.logloss, M.roc_auc, M.pr_auc, M.rce, M.calibration])
def test_bad_values_raise(f):
    with pytest.raises(ValueError):
        f([], [])
    with pytest.raises(ValueError, match="0 or 1"):
        f([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        f([0, 1, 1], [0.2, np.nan, 0.4])
    with pytest.raises(ValueError, match="sample_weight"):
        f([0, 1, 1], [0.2, 0.3, 0.4], sample_weight=[1.0, -1.0, 1.0])


@pytest.mark.parametrize("f", [M.logloss, M.rce, M.calibration])
def test_probability_metrics_reject_values_outside_0_1(f):
    with pytest.raises(ValueError, match="probability"):
        f([0, 1, 1], [0.2, 1.5, 0.4])


def test_calibration_without_positives_raises():
    with pytest.raises(ValueError, match="positive"):
        M.calibration([0, 0, 0], [0.2, 0.3, 0.4])


# -- found while writing these tests: degenerate inputs give silent garbage ---------------

@pytest.mark.parametrize("label", [0, 1])
def test_rce_with_one_class_is_not_a_finite_garbage_number(label):
    """With one class the baseline CE(mean label) is ~0, so RCE is undefined. It should raise
    ValueError (like roc_auc and calibration do) or at least return NaN; the core returned
    about -1.2e17 for labels [1, 1, 1] and predictions [0.2, 0.3, 0.4]."""
    try:
        r = M.rce([label] * 3, [0.2, 0.3, 0.4])
    except ValueError:
        return
    assert math.isnan(r), f"rce on one-class labels returned {r!r}"


@pytest.mark.parametrize("f", [M.logloss, M.rce, M.calibration, M.roc_auc, M.pr_auc])
def test_all_zero_sample_weight_raises(f):
    """Weights that sum to 0 leave every metric undefined; logloss/rce/calibration returned NaN
    silently instead of a clear ValueError (the AUCs raise, if with a 'one class' message)."""
    with pytest.raises(ValueError):
        f([0, 1, 1], [0.2, 0.3, 0.4], sample_weight=[0.0, 0.0, 0.0])
