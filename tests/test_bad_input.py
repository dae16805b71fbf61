"""Bad input: every case must end in a clear Python exception that names the problem (brief,
section 6): no panic across the FFI boundary, no crash, no garbage output, no partial write of a
model file. Each test asserts the exception type and that the message names the problem.

docs/bad_input.md lists every case with the message a user sees.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

import sparselin as sl
from sparselin import ModelFileError, TrainingDivergedError

N_ROWS, N_FEATURES = 50, 10


# ---------------------------------------------------------------------------------------------
# Small data
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def X():
    return sp.random(N_ROWS, N_FEATURES, density=0.3, format="csr", random_state=0, dtype=np.float32)


@pytest.fixture
def y():
    return (np.arange(N_ROWS) % 2).astype(np.float32)


@pytest.fixture
def triple(X):
    """(indptr, indices, values) of X: int64 indices, float32 values, all C-contiguous."""
    return X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data.copy()


def logreg(**kw):
    kw.setdefault("random_state", 0)
    return sl.SparseLogisticRegression(**kw)


def mlp(**kw):
    kw.setdefault("sparse_width", 4)
    kw.setdefault("hidden", (3,))
    kw.setdefault("random_state", 0)
    return sl.SparseMLPClassifier(**kw)


def regressor(**kw):
    kw.setdefault("sparse_width", 4)
    kw.setdefault("hidden", (3,))
    kw.setdefault("random_state", 0)
    return sl.SparseMLPRegressor(**kw)


@pytest.fixture
def fitted(X, y):
    return logreg().fit(X, y)


def _first_row_and_column(triple, pos):
    """Row and feature id of the non-zero at position ``pos`` of a triple."""
    indptr, indices, _ = triple
    row = int(np.searchsorted(indptr, pos, side="right") - 1)
    return row, int(indices[pos])


# ---------------------------------------------------------------------------------------------
# Wrong dtype
# ---------------------------------------------------------------------------------------------
def test_complex_scipy_matrix_rejected(X, y):
    with pytest.raises(ValueError, match="Complex data not supported"):
        logreg().fit(X.astype(np.complex64), y)


def test_complex_dense_array_rejected(X, y):
    with pytest.raises(ValueError, match="Complex data not supported"):
        logreg().fit(X.toarray().astype(np.complex128), y)


def test_string_dense_array_rejected(y):
    Xs = np.array([["a", "b"]] * N_ROWS)
    with pytest.raises(ValueError, match="could not convert string to float"):
        logreg().fit(Xs, y)


def test_triple_complex_values_rejected(triple, y):
    """Complex values must not be silently cast to float32 (dropping the imaginary part)."""
    indptr, indices, values = triple
    with pytest.raises(TypeError, match="(?i)complex"):
        logreg().fit((indptr, indices, values.astype(np.complex128) + 1j), y)


def test_triple_string_values_rejected(triple, y):
    indptr, indices, values = triple
    with pytest.raises(TypeError, match=r"values must be numeric, got dtype <U"):
        logreg().fit((indptr, indices, values.astype(str)), y)


@pytest.mark.parametrize("which", ["indptr", "indices"])
def test_triple_float_index_arrays_rejected(triple, y, which):
    indptr, indices, values = triple
    if which == "indptr":
        bad = (indptr.astype(np.float64), indices, values)
    else:
        bad = (indptr, indices.astype(np.float64), values)
    with pytest.raises(TypeError, match=rf"{which} must hold integers, got dtype float64"):
        logreg().fit(bad, y)


def test_core_rejects_index_arrays_of_the_wrong_dtype(fitted, triple):
    """The Rust binding itself (reached only through the private API) refuses other dtypes with a
    TypeError instead of reinterpreting memory."""
    indptr, indices, values = triple
    with pytest.raises(TypeError, match="indices must be a 1-D int32 or int64 numpy array"):
        fitted._model.decision_function(indptr, indices.astype(np.float64), values, N_FEATURES, 1)
    with pytest.raises(TypeError, match="indices must be a 1-D int32 or int64 numpy array"):
        fitted._model.decision_function(indptr, indices.astype(np.uint32), values, N_FEATURES, 1)


# ---------------------------------------------------------------------------------------------
# Wrong shape
# ---------------------------------------------------------------------------------------------
def test_1d_X_rejected():
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        logreg().fit(np.ones(5), [0, 1, 0, 1, 0])


def test_3d_X_rejected():
    with pytest.raises(ValueError, match="dim 3"):
        logreg().fit(np.ones((4, 2, 2)), [0, 1, 0, 1])


def test_y_length_mismatch_scipy(X, y):
    with pytest.raises(ValueError, match=r"inconsistent numbers of samples: \[50, 49\]"):
        logreg().fit(X, y[:-1])


def test_y_length_mismatch_triple(triple, y):
    with pytest.raises(ValueError, match=r"X has 50 rows but y has shape \(49,\)"):
        logreg().fit(triple, y[:-1])


@pytest.mark.parametrize("kind", ["scipy", "triple"])
def test_sample_weight_length_mismatch(X, triple, y, kind):
    data = X if kind == "scipy" else triple
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(49,\), expected \(50,\)"):
        logreg().fit(data, y, sample_weight=np.ones(N_ROWS - 1))


@pytest.mark.parametrize(
    "weights, message",
    [(-np.ones(N_ROWS), "Negative values in data passed to `sample_weight`"),
     (np.full(N_ROWS, np.nan), "sample_weight contains NaN")],
    ids=["negative", "nan"],
)
def test_bad_sample_weight_values(X, y, weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        logreg().fit(X, y, sample_weight=weights)


def test_triple_2d_indices_rejected(triple, y):
    indptr, indices, values = triple
    with pytest.raises(ValueError, match=r"indices must be 1-D, got shape \(150, 1\)"):
        logreg().fit((indptr, indices.reshape(-1, 1), values), y)


def test_triple_indices_and_values_lengths_differ(triple, y):
    indptr, indices, values = triple
    with pytest.raises(ValueError, match="indices has 150 entries but values has 149"):
        logreg().fit((indptr, indices, values[:-1]), y)


def test_triple_empty_indptr(triple, y):
    _, indices, values = triple
    with pytest.raises(ValueError, match="indptr is empty"):
        logreg().fit((np.array([], dtype=np.int64), indices, values), y)


def test_two_array_tuple_names_the_triple(triple, y):
    """(indptr, indices) without values: the message should say what a triple is, not numpy's
    'setting an array element with a sequence'."""
    with pytest.raises(ValueError, match=re.escape("(indptr, indices, values)")):
        logreg().fit(triple[:2], y)


def test_tuple_of_three_dense_rows_is_not_taken_for_a_triple():
    """A tuple is an array-like for scikit-learn: three dense rows must train like the same rows
    in a list, not fail as a malformed CSR triple."""
    rows = ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
    want = logreg().fit(list(rows), [0, 1, 0]).decision_function(list(rows))
    got = logreg().fit(rows, [0, 1, 0]).decision_function(list(rows))
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Non-contiguous arrays
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", [0, 1, 2], ids=["indptr", "indices", "values"])
def test_triple_strided_views_are_converted(triple, y, which):
    """A strided view (``a[::2]`` of a doubled array) is copied to C order by the Python layer and
    gives exactly the model the contiguous arrays give."""
    arrays = list(triple)
    arrays[which] = np.repeat(arrays[which], 2)[::2]
    assert not arrays[which].flags.c_contiguous
    got = logreg().fit(tuple(arrays), y).decision_function(triple)
    want = logreg().fit(triple, y).decision_function(triple)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("which", ["indices", "values"])
def test_core_rejects_strided_arrays(fitted, triple, which):
    """The Rust binding borrows memory; given a strided view it raises TypeError, never reads the
    wrong elements."""
    indptr, indices, values = triple
    if which == "indices":
        args = (indptr, np.repeat(indices, 2)[::2], values)
    else:
        args = (indptr, indices, np.repeat(values, 2)[::2])
    with pytest.raises(TypeError, match=f"{which} must be C-contiguous"):
        fitted._model.decision_function(*args, N_FEATURES, 1)


# ---------------------------------------------------------------------------------------------
# indptr
# ---------------------------------------------------------------------------------------------
def test_indptr_not_monotone_names_the_row(triple, y):
    indptr, indices, values = triple
    bad = indptr.copy()
    bad[3], bad[4] = bad[4], bad[3]
    with pytest.raises(ValueError, match=r"indptr is not monotone at row 3: indptr\[4\] = \d+ < indptr\[3\] = \d+"):
        logreg().fit((bad, indices, values), y)


def test_indptr_not_starting_at_zero(triple, y):
    indptr, indices, values = triple
    with pytest.raises(ValueError, match=r"indptr\[0\] is 1, it must be 0"):
        logreg().fit((indptr + 1, indices, values), y)


def test_indptr_end_not_nnz(triple, y):
    indptr, indices, values = triple
    bad = indptr.copy()
    bad[-1] -= 1
    with pytest.raises(ValueError, match=r"indptr ends at 149 but there are 150 non-zeros"):
        logreg().fit((bad, indices, values), y)


# ---------------------------------------------------------------------------------------------
# Feature ids out of range
# ---------------------------------------------------------------------------------------------
def test_negative_feature_id_names_row_and_id(triple, y):
    indptr, indices, values = triple
    bad = indices.copy()
    bad[5] = -3
    row, _ = _first_row_and_column(triple, 5)
    with pytest.raises(ValueError, match=rf"row {row}: feature id \(column\) -3 at position \d+ is out of range \[0, 10\)"):
        logreg(n_features=N_FEATURES).fit((indptr, bad, values), y)


def test_feature_id_at_n_features_names_row_and_id(triple, y):
    indptr, indices, values = triple
    bad = indices.copy()
    bad[7] = N_FEATURES
    row, _ = _first_row_and_column(triple, 7)
    with pytest.raises(ValueError, match=rf"row {row}: feature id \(column\) 10 at position \d+ is out of range \[0, 10\)"):
        logreg(n_features=N_FEATURES).fit((indptr, bad, values), y)


def test_predict_triple_id_beyond_the_model(fitted, triple):
    indptr, indices, values = triple
    bad = indices.copy()
    bad[0] = 1000
    with pytest.raises(ValueError, match=r"row 0: feature id \(column\) 1000 at position 0 is out of range \[0, 10\)"):
        fitted.predict((indptr, bad, values))


def test_n_features_smaller_than_X(X, y):
    with pytest.raises(ValueError, match="X has 10 columns but n_features=5"):
        logreg(n_features=5).fit(X, y)


# ---------------------------------------------------------------------------------------------
# NaN / inf values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [(np.nan, "Input X contains NaN"), (np.inf, "Input X contains infinity")],
                         ids=["nan", "inf"])
def test_nonfinite_values_in_scipy_matrix(X, y, bad, message):
    Xb = X.copy()
    Xb.data[5] = bad
    with pytest.raises(ValueError, match=message):
        logreg().fit(Xb, y)


@pytest.mark.parametrize("bad, shown", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_values_in_triple_name_row_and_column(triple, y, bad, shown):
    indptr, indices, values = triple
    vb = values.copy()
    vb[5] = bad
    row, col = _first_row_and_column(triple, 5)
    with pytest.raises(ValueError, match=rf"row {row}, column {col}: value {re.escape(shown)} is not finite"):
        logreg().fit((indptr, indices, vb), y)


@pytest.mark.parametrize("kind", ["scipy", "dense", "triple"])
def test_float64_value_overflowing_float32(X, triple, y, kind):
    """1e300 is finite in float64 but not in float32: caught after the conversion."""
    row, col = _first_row_and_column(triple, 5)
    if kind == "triple":
        indptr, indices, values = triple
        v = values.astype(np.float64)
        v[5] = 1e300
        data = (indptr, indices, v)
    else:
        Xo = X.astype(np.float64)
        Xo.data[5] = 1e300
        data = Xo if kind == "scipy" else Xo.toarray()
    with pytest.raises(ValueError, match=rf"row {row}, column {col}: value inf is not finite"):
        logreg().fit(data, y)


def test_nonfinite_values_at_predict(fitted, X, triple):
    indptr, indices, values = triple
    vb = values.copy()
    vb[3] = np.nan
    with pytest.raises(ValueError, match=r"row 0, column \d+: value NaN is not finite"):
        fitted.predict_proba((indptr, indices, vb))
    Xb = X.copy()
    Xb.data[3] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fitted.predict_proba(Xb)


# ---------------------------------------------------------------------------------------------
# NaN / inf labels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [logreg, mlp, regressor], ids=["logreg", "mlp", "regressor"])
@pytest.mark.parametrize("kind", ["scipy", "triple"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_labels(X, triple, y, make, kind, bad):
    yb = y.copy()
    yb[3] = bad
    data = X if kind == "scipy" else triple
    with pytest.raises(ValueError, match=r"(?i)y contains (NaN|infinity)"):
        make().fit(data, yb)


def test_core_rejects_nonfinite_labels(fitted, triple):
    indptr, indices, values = triple
    yb = np.zeros(N_ROWS, np.float32)
    yb[4] = np.nan
    with pytest.raises(ValueError, match="label of row 4 is NaN: labels must be finite"):
        fitted._model.fit(indptr, indices, values, N_FEATURES, yb, None, 1, 8, 1, True)


# ---------------------------------------------------------------------------------------------
# Labels for a classifier
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [logreg, mlp], ids=["logreg", "mlp"])
@pytest.mark.parametrize("kind", ["scipy", "triple"])
def test_more_than_two_classes(X, triple, make, kind):
    data = X if kind == "scipy" else triple
    with pytest.raises(ValueError, match=r"exactly 2 classes\W+got 3 class"):
        make().fit(data, np.arange(N_ROWS) % 3)


def test_continuous_labels_for_a_classifier(X):
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        logreg().fit(X, np.linspace(0, 1, N_ROWS))


def test_partial_fit_label_outside_the_classes(fitted, X, y):
    with pytest.raises(ValueError, match=r"label .*2.* \(row 1\) is not one of the classes \[0.0, 1.0\]"):
        fitted.partial_fit(X, np.where(y == 1, 2, 0))


def test_partial_fit_classes_must_be_two(X, y):
    with pytest.raises(ValueError, match=r"2 labels\W+got 3 class"):
        logreg().partial_fit(X, y, classes=[0, 1, 2])


def test_core_rejects_labels_outside_0_1(fitted, triple, y):
    """The estimators map any two labels to 0/1 (scikit-learn style); the core refuses anything
    else, naming the row."""
    indptr, indices, values = triple
    with pytest.raises(ValueError, match="label of row 1 is 2: a binary classifier takes labels 0 or 1"):
        fitted._model.fit(indptr, indices, values, N_FEATURES, (y * 2).astype(np.float32), None, 1, 8, 1, True)


@pytest.mark.parametrize("label", [5, "a"], ids=["int5", "str"])
def test_single_class_rejected(X, label):
    with pytest.raises(ValueError, match=r"exactly 2 classes\W+got 1 class"):
        logreg().fit(X, np.full(N_ROWS, label))


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_0_or_1_is_accepted_by_design(X, label):
    """Documented behaviour, not an error: a batch of only clicks or only non-clicks (common in
    streaming CTR data) trains a model with classes_ [0, 1]."""
    est = logreg().fit(X, np.full(N_ROWS, label))
    assert est.classes_.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# Empty X, n_features = 0
# ---------------------------------------------------------------------------------------------
def test_empty_X_scipy(y):
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\)"):
        logreg().fit(sp.csr_matrix((0, N_FEATURES), dtype=np.float32), y[:0])


def _empty_triple():
    return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


@pytest.mark.parametrize("make", [logreg, mlp], ids=["logreg", "mlp"])
def test_empty_X_triple_classifier(make):
    """The message must say that X has no rows (not talk about classes)."""
    with pytest.raises(ValueError, match=r"(?i)no rows|0 rows|0 sample|empty"):
        make(n_features=N_FEATURES).fit(_empty_triple(), np.zeros(0))


def test_empty_X_triple_regressor():
    with pytest.raises(ValueError, match="X has no rows: nothing to train on"):
        regressor(n_features=N_FEATURES).fit(_empty_triple(), np.zeros(0))


def test_empty_X_partial_fit_after_fit(fitted):
    with pytest.raises(ValueError, match="X has no rows: nothing to train on"):
        fitted.partial_fit(_empty_triple(), np.zeros(0))


def test_empty_svmlight_file_fit(tmp_path):
    path = tmp_path / "empty.svm"
    path.write_text("")
    with pytest.raises(ValueError, match=r"Found array with 0 sample\(s\)"):
        logreg().fit(str(path))


def test_n_features_zero_hyperparameter(X, y):
    with pytest.raises(ValueError, match="n_features must be an integer >= 1, got 0"):
        logreg(n_features=0).fit(X, y)


@pytest.mark.parametrize("kind", ["scipy", "dense"])
def test_X_with_zero_columns(y, kind):
    X0 = sp.csr_matrix((N_ROWS, 0), dtype=np.float32) if kind == "scipy" else np.zeros((N_ROWS, 0))
    with pytest.raises(ValueError, match=r"Found array with 0 feature\(s\)"):
        logreg().fit(X0, y)


def test_load_svmlight_n_features_zero(tmp_path):
    path = tmp_path / "a.svm"
    path.write_text("1 1:1\n")
    with pytest.raises(ValueError, match="n_features must be at least 1, got 0"):
        sl.load_svmlight(path, n_features=0)


def test_core_n_features_zero(fitted, triple):
    with pytest.raises(ValueError, match="n_features must be at least 1"):
        sl._core.SparseModel(0, 1, None, "binary", True, "sgd", 0.1, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="n_features must be at least 1"):
        fitted._model.decision_function(*triple, 0, 1)


# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------
BAD_HYPERPARAMETERS = [
    ("lr_zero", logreg, dict(learning_rate=0), "learning_rate must be a finite float32 number > 0, got 0"),
    ("lr_negative", logreg, dict(learning_rate=-1.0), "learning_rate must be a finite float32 number > 0, got -1.0"),
    ("lr_nan", logreg, dict(learning_rate=float("nan")), "learning_rate must be a finite float32 number > 0, got nan"),
    ("lr_inf", logreg, dict(learning_rate=float("inf")), "learning_rate must be a finite float32 number > 0, got inf"),
    ("lr_overflows_float32", logreg, dict(learning_rate=1e39), "learning_rate must be a finite float32 number > 0"),
    ("batch_size_zero", logreg, dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    ("batch_size_float", logreg, dict(batch_size=1.5), "batch_size must be an integer >= 1, got 1.5"),
    ("epochs_zero", logreg, dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    ("threads_negative", logreg, dict(threads=-1), "threads must be an integer >= 0, got -1"),
    ("optimizer_unknown", logreg, dict(optimizer="adam"), "optimizer must be one of ('sgd', 'lazy_adam', 'adagrad', 'ftrl'), got 'adam'"),
    ("ftrl_with_mlp", mlp, dict(optimizer="ftrl"), "optimizer='ftrl' is for linear models"),
    ("l1_without_ftrl_logreg", logreg, dict(l1=0.1), "l1 is only supported by optimizer='ftrl'"),
    ("l1_without_ftrl_mlp", mlp, dict(l1=0.1), "l1 is only supported by optimizer='ftrl'"),
    ("l2_negative", logreg, dict(l2=-1.0), "l2 must be a finite float32 number >= 0, got -1.0"),
    ("hidden_zero", mlp, dict(hidden=(0,)), "each hidden layer size must be an integer >= 1, got 0"),
    ("hidden_not_a_tuple", mlp, dict(hidden=5), "hidden must be a tuple of layer sizes, got 5"),
    ("sparse_width_zero", mlp, dict(sparse_width=0), "sparse_width must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("make, params, message", [c[1:] for c in BAD_HYPERPARAMETERS],
                         ids=[c[0] for c in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters(X, y, make, params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(**params).fit(X, y)


def test_core_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        sl._core.SparseModel(10, 1, None, "binary", True, "rmsprop", 0.1, 0.0, 0.0, 0)


# ---------------------------------------------------------------------------------------------
# svmlight files
# ---------------------------------------------------------------------------------------------
MALFORMED_SVMLIGHT = [
    ("bad_value", b"1 1:0.5 3:2\n0 2:1\n1 4:abc\n", 3, "value 'abc' of feature 4 is not a finite number"),
    ("missing_colon", b"1 1:0.5 3:2\n0 2 1\n", 2, "token '2' is not of the form id:value"),
    ("bad_label", b"1 1:0.5\nfoo 2:1\n", 2, "label 'foo' is not a finite number"),
    ("non_integer_id", b"1 1:0.5\n0 x:1\n", 2, "feature id 'x' in 'x:1' is not an integer"),
    ("negative_id", b"1 1:0.5\n0 -2:1\n", 2, "feature id -2 is negative"),
    ("nan_value", b"1 1:0.5\n0 2:nan\n", 2, "value 'nan' of feature 2 is not a finite number"),
    ("inf_value", b"1 1:0.5\n\n# comment\n0 2:inf\n", 4, "value 'inf' of feature 2 is not a finite number"),
    ("nan_label", b"1 1:0.5\nnan 2:1\n", 2, "label 'nan' is not a finite number"),
    ("empty_value", b"1 1:\n", 1, "value '' of feature 1 is not a finite number"),
    ("not_utf8", b"1 1:0.5\n0 2:\xff\xfe\n", 2, "value '\ufffd\ufffd' of feature 2 is not a finite number"),
]


@pytest.mark.parametrize("content, line, message", [c[1:] for c in MALFORMED_SVMLIGHT],
                         ids=[c[0] for c in MALFORMED_SVMLIGHT])
def test_svmlight_malformed_line_reports_line_number(tmp_path, content, line, message):
    path = tmp_path / "bad.svm"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad\.svm: line {line}: {re.escape(message)}"):
        sl.load_svmlight(path)


def test_svmlight_malformed_line_via_fit(tmp_path):
    path = tmp_path / "bad.svm"
    path.write_bytes(b"1 1:0.5 3:2\n0 2:1\n1 4:abc\n")
    with pytest.raises(ValueError, match="line 3: value 'abc'"):
        logreg().fit(str(path))


def test_svmlight_id_beyond_n_features_names_line_and_id(tmp_path):
    """An id >= n_features is bad input on a specific line, like every other svmlight error."""
    path = tmp_path / "wide.svm"
    path.write_text("1 1:0.5\n0 2:1\n1 50:1\n")
    with pytest.raises(ValueError, match="n_features") as e:
        sl.load_svmlight(path, n_features=10, zero_based=True)
    msg = str(e.value)
    assert "50" in msg, msg
    assert re.search(r"\bline 3\b", msg), f"the message does not name the line: {msg!r}"


def test_svmlight_id_beyond_the_fitted_model(tmp_path, fitted):
    path = tmp_path / "wide.svm"
    path.write_text("1 1:0.5\n0 2:1\n1 50:1\n")
    with pytest.raises(ValueError, match="line [0-9]+: feature id 50 \\(one-based\\) does not fit n_features=10"):
        fitted.predict(str(path))


def test_svmlight_id_zero_in_a_one_based_file(tmp_path):
    path = tmp_path / "zero.svm"
    path.write_text("1 0:0.5\n0 2:1\n")
    with pytest.raises(ValueError, match=re.escape("feature id 0 found in a file read as one-based (use zero_based=True)")):
        sl.load_svmlight(path, zero_based=False)


def test_svmlight_bad_zero_based_argument(tmp_path):
    with pytest.raises(ValueError, match="zero_based must be True, False or 'auto', got 'yes'"):
        sl.load_svmlight(tmp_path / "x.svm", zero_based="yes")


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_svmlight_unreadable_path(tmp_path, what):
    path = tmp_path / "nope.svm" if what == "missing" else tmp_path
    with pytest.raises(OSError, match="No such file or directory|Is a directory"):
        sl.load_svmlight(path)


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def model_file(tmp_path, X, y):
    path = tmp_path / "model.st"
    mlp().fit(X, y).save(path)
    return path


def _header_len(raw: bytes) -> int:
    return int.from_bytes(raw[:8], "little")


@pytest.mark.parametrize("cut", ["4_bytes", "8_bytes", "half_header", "header_only", "minus_10", "minus_1"])
def test_truncated_model_file(tmp_path, model_file, cut):
    raw = model_file.read_bytes()
    hl = _header_len(raw)
    n = {"4_bytes": 4, "8_bytes": 8, "half_header": 8 + hl // 2, "header_only": 8 + hl,
         "minus_10": len(raw) - 10, "minus_1": len(raw) - 1}[cut]
    bad = tmp_path / "truncated.st"
    bad.write_bytes(raw[:n])
    with pytest.raises(ModelFileError, match=r"truncated\.st: not a readable sparselin model file \(truncated or corrupted\?\)"):
        sl.load(bad)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_byte_flipped_tensor_data(tmp_path, model_file, where):
    raw = bytearray(model_file.read_bytes())
    start = 8 + _header_len(raw)
    pos = {"first": start + 3, "middle": (start + len(raw)) // 2, "last": len(raw) - 5}[where]
    raw[pos] ^= 0x40
    bad = tmp_path / "flipped.st"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum does not match its contents: the file is corrupted or was modified"):
        sl.load(bad)


def test_byte_flipped_header(tmp_path, model_file):
    raw = bytearray(model_file.read_bytes())
    raw[20] ^= 0x01
    bad = tmp_path / "flipped.st"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"truncated or corrupted"):
        sl.load(bad)


def _not_a_model(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    if kind == "text":
        path.write_text("hello, I am not a model\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npy":
        np.save(path, np.zeros(3))
        path = path.with_suffix(".bin.npy")
    elif kind == "foreign_safetensors":
        from safetensors.numpy import save_file
        save_file({"a": np.zeros(3, np.float32)}, str(path))
    elif kind == "other_format_safetensors":
        from safetensors.numpy import save_file
        save_file({"a": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize(
    "kind, message",
    [("text", "not a readable sparselin model file"),
     ("empty", "not a readable sparselin model file"),
     ("npy", "not a readable sparselin model file"),
     ("foreign_safetensors", "model file metadata has no 'format': not a sparselin model file"),
     ("other_format_safetensors", "not a sparselin model file (metadata 'format' is not 'sparselin')")],
    ids=["text", "empty", "npy", "foreign_safetensors", "other_format_safetensors"],
)
def test_file_that_is_not_a_model(tmp_path, kind, message):
    path = _not_a_model(tmp_path, kind)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        sl.load(path)


def _rewrite_metadata(src, dst, **changes):
    """Re-saves ``src`` with some metadata fields changed (None deletes a field). The checksum
    covers only the tensor bytes, so the file stays otherwise valid."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(src), "np") as f:
        meta = dict(f.metadata())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return meta


def test_model_file_from_another_format_version(tmp_path, model_file):
    bad = tmp_path / "v999.st"
    _rewrite_metadata(model_file, bad, format_version="999")
    with pytest.raises(ModelFileError, match=r"v999\.st: model file format version 999 \(written by sparselin .*\) cannot be read by sparselin .* \(format version 1\)"):
        sl.load(bad)


def test_model_file_without_format_version(tmp_path, model_file):
    bad = tmp_path / "nov.st"
    _rewrite_metadata(model_file, bad, format_version=None)
    with pytest.raises(ModelFileError, match="metadata has no 'format_version'"):
        sl.load(bad)


def test_model_file_with_invalid_config(tmp_path, model_file):
    bad = tmp_path / "cfg.st"
    _rewrite_metadata(model_file, bad, config="{}")
    with pytest.raises(ModelFileError, match="model config in the file is invalid: missing field `n_features`"):
        sl.load(bad)


def test_model_file_with_non_numeric_step(tmp_path, model_file):
    bad = tmp_path / "step.st"
    _rewrite_metadata(model_file, bad, step="abc")
    with pytest.raises(ModelFileError, match="metadata 'step' is not a number"):
        sl.load(bad)


def _edit_extra(model_file, edit):
    from safetensors import safe_open

    with safe_open(str(model_file), "np") as f:
        extra = json.loads(f.metadata()["extra"])
    edit(extra)
    return json.dumps(extra)


@pytest.mark.parametrize("case", ["not_json", "unknown_estimator", "unknown_param", "missing_n_features_in"])
def test_model_file_with_tampered_estimator_state(tmp_path, model_file, case):
    """Estimator settings live in unchecksummed metadata; any damage there is a ModelFileError,
    not a raw KeyError/TypeError from the loader."""
    if case == "not_json":
        extra = "{not json"
    elif case == "unknown_estimator":
        extra = _edit_extra(model_file, lambda e: e.update(estimator="Foo"))
    elif case == "unknown_param":
        extra = _edit_extra(model_file, lambda e: e["params"].update(bogus=1))
    else:
        extra = _edit_extra(model_file, lambda e: e.pop("n_features_in"))
    bad = tmp_path / "extra.st"
    _rewrite_metadata(model_file, bad, extra=extra)
    with pytest.raises(ModelFileError, match=r"extra\.st: the estimator settings stored in the file are invalid"):
        sl.load(bad)


def test_model_file_with_wrong_tensor_dtype(tmp_path, model_file):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(model_file), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(model_file))
    tensors["dense.0.bias"] = tensors["dense.0.bias"].astype(np.float64)
    bad = tmp_path / "f64.st"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match=r"tensor 'dense.0.bias' is F64 \[3\] in the file but the model needs F32 \[3\]"):
        sl.load(bad)


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_load_unreadable_path(tmp_path, what):
    path = tmp_path / "nope.st" if what == "missing" else tmp_path
    with pytest.raises(OSError, match=r"cannot read .*(No such file or directory|Is a directory)"):
        sl.load(path)


# ---------------------------------------------------------------------------------------------
# Predict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "save"])
@pytest.mark.parametrize("make", [logreg, mlp, regressor], ids=["logreg", "mlp", "regressor"])
def test_use_before_fit(tmp_path, X, make, method):
    est = make()
    if not hasattr(est, method):
        pytest.skip(f"{type(est).__name__} has no {method}")
    arg = tmp_path / "m.st" if method == "save" else X
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        getattr(est, method)(arg)
    assert not (tmp_path / "m.st").exists()


@pytest.mark.parametrize("n_cols", [9, 11])
@pytest.mark.parametrize("kind", ["scipy", "dense"])
def test_predict_with_wrong_number_of_features(fitted, n_cols, kind):
    Xw = sp.random(5, n_cols, density=0.3, format="csr", random_state=1, dtype=np.float32)
    if kind == "dense":
        Xw = Xw.toarray()
    with pytest.raises(ValueError, match=rf"X has {n_cols} features, but SparseLogisticRegression is expecting 10 features"):
        fitted.predict(Xw)


# ---------------------------------------------------------------------------------------------
# Loss turning NaN during training
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctr():
    return sl.datasets.make_ctr(200, n_features=1000, random_state=0)


def _nonfinite_tensors(est):
    model = est._model
    return [name for name, _ in model.tensor_names() if not np.isfinite(model.get_tensor(name)).all()]


DIVERGING = [
    # The forward pass overflows on the first batch: divergence found before any update.
    ("mlp_sgd_values3e38", lambda: sl.SparseMLPClassifier(normalize=False, optimizer="sgd", learning_rate=1e-3,
                                                           batch_size=32, random_state=0), 3e38),
    # A huge step: the first update is applied, the next batch's loss is NaN.
    ("mlp_sgd_lr1e30_values1e30", lambda: sl.SparseMLPClassifier(normalize=False, optimizer="sgd", learning_rate=1e30,
                                                                  batch_size=32, random_state=0), 1e30),
    ("logreg_sgd_lr1e30_values1e30", lambda: sl.SparseLogisticRegression(normalize=False, optimizer="sgd",
                                                                          learning_rate=1e30, batch_size=32,
                                                                          random_state=0), 1e30),
    ("mlp_adam_lr1e30_values1e30", lambda: sl.SparseMLPClassifier(normalize=False, learning_rate=1e30, batch_size=32,
                                                                   random_state=0), 1e30),
]


@pytest.mark.parametrize("make, value", [c[1:] for c in DIVERGING], ids=[c[0] for c in DIVERGING])
def test_training_divergence_stops_and_keeps_last_good_weights(ctr, make, value):
    X, y = ctr
    Xb = X.copy()
    Xb.data[:] = value
    est = make()
    with pytest.raises(TrainingDivergedError, match=r"training diverged at update [0-9]+ \(epoch 1, .*the model keeps the last weights under which a batch loss was finite"):
        est.fit(Xb, y)
    assert isinstance(TrainingDivergedError("x"), RuntimeError)
    # The estimator is still usable and its weights are the last *good* ones: finite.
    bad = _nonfinite_tensors(est)
    proba = est.predict_proba(X)
    logits = est.decision_function(X)
    assert proba.shape == (X.shape[0], 2)
    problems = []
    if bad:
        problems.append(f"these tensors hold inf/NaN: {bad}")
    if not np.isfinite(proba).all():
        problems.append(f"predict_proba returns {np.unique(proba[~np.isfinite(proba)]).tolist()}")
    if not np.isfinite(logits).all():
        problems.append(f"decision_function returns {np.unique(logits[~np.isfinite(logits)]).tolist()}")
    assert not problems, "after TrainingDivergedError: " + "; ".join(problems)


def test_divergence_in_the_last_batch_is_not_silent(ctr):
    """One batch, one epoch: the only update turns the weights into inf. fit must not return as if
    all went well (history_ shows a finite loss) with a model that predicts NaN."""
    X, y = ctr
    Xb = X.copy()
    Xb.data[:] = 1e30
    est = sl.SparseLogisticRegression(normalize=False, optimizer="sgd", learning_rate=1e30, batch_size=X.shape[0],
                                      random_state=0)
    with pytest.raises(TrainingDivergedError, match="keeps the last weights under which a batch loss was finite"):
        est.fit(Xb, y)
    assert not _nonfinite_tensors(est)
    assert np.isfinite(est.predict_proba(X)).all()


# ---------------------------------------------------------------------------------------------
# Nothing the user saved is lost
# ---------------------------------------------------------------------------------------------
def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_save_over_a_good_model_replaces_it_atomically(tmp_path, X, y):
    path = tmp_path / "model.st"
    old = logreg().fit(X, y)
    old.save(path)
    new = logreg(learning_rate=0.5, random_state=1).fit(X, y)
    new.save(path)
    np.testing.assert_array_equal(sl.load(path).decision_function(X), new.decision_function(X))
    assert _leftovers(tmp_path, {"model.st"}) == []


@pytest.fixture
def good_model(tmp_path, X, y):
    path = tmp_path / "model.st"
    est = logreg().fit(X, y)
    est.save(path)
    return path, path.read_bytes(), est.decision_function(X)


def _assert_still_good(good_model, X):
    path, raw, logits = good_model
    assert path.read_bytes() == raw, "the saved model file was changed"
    np.testing.assert_array_equal(sl.load(path).decision_function(X), logits)


def test_failed_save_parent_missing(tmp_path, X, y, good_model):
    with pytest.raises(OSError, match=r"cannot create a temporary file for .*missing/model\.st: No such file or directory"):
        logreg(random_state=1).fit(X, y).save(tmp_path / "missing" / "model.st")
    _assert_still_good(good_model, X)
    assert _leftovers(tmp_path, {"model.st"}) == []


def test_failed_save_path_is_a_directory(tmp_path, X, y, good_model):
    """Saving onto a directory (here the one that holds the good model) fails and removes nothing."""
    with pytest.raises(OSError, match="Is a directory|not a regular file"):
        logreg(random_state=1).fit(X, y).save(tmp_path)
    _assert_still_good(good_model, X)
    assert _leftovers(tmp_path, {"model.st"}) == []


def test_failed_save_over_a_good_model_keeps_it(tmp_path, X, y, good_model):
    """Make the write itself fail (a directory squats the temporary file name, which works even
    as root): the good model at the target path must be untouched."""
    path = good_model[0]
    blocker = tmp_path / f".{path.name}.tmp-{os.getpid()}"
    blocker.mkdir()
    with pytest.raises(OSError, match=r"cannot create a temporary file for .*model\.st"):
        logreg(random_state=1).fit(X, y).save(path)
    _assert_still_good(good_model, X)
    assert blocker.is_dir()


def test_failed_save_read_only_directory(tmp_path, X, y):
    d = tmp_path / "ro"
    d.mkdir()
    path = d / "model.st"
    est = logreg().fit(X, y)
    est.save(path)
    raw = path.read_bytes()
    d.chmod(0o555)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(OSError, match="Permission denied"):
            logreg(random_state=1).fit(X, y).save(path)
        assert path.read_bytes() == raw
        sl.load(path)
    finally:
        d.chmod(0o755)


def test_save_to_empty_path(fitted):
    with pytest.raises(OSError, match="is not a file path"):
        fitted.save("")
