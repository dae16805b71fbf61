"""File readers, hashing and streaming training (BRIEF section 4)."""

import gzip
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_svmlight_file

import sparselin
from sparselin.datasets import make_ctr


def write_svmlight(path, X, y, zero_based=False, extra=""):
    base = 0 if zero_based else 1
    with open(path, "w") as f:
        for r in range(X.shape[0]):
            row = X[r]
            f.write(f"{y[r]:g} " + " ".join(f"{i + base}:{v!r}" for i, v in zip(row.indices, row.data.tolist()))
                    + extra + "\n")


def test_svmlight_agrees_with_scikit_learn_on_a9a(real_data):
    X, y = sparselin.read(real_data / "a9a", format="svmlight", n_features=123)
    Xs, ys = load_svmlight_file(str(real_data / "a9a"), n_features=123)
    assert abs(X - Xs).max() == 0 and np.array_equal(y, ys)


@pytest.mark.parametrize("zero_based", [True, False])
def test_svmlight_edge_cases_agree_with_scikit_learn(tmp_path, zero_based):
    rng = np.random.default_rng(0)
    X = sp.random(300, 5000, density=0.01, random_state=1, format="csr", dtype=np.float64)
    X.data = np.round(rng.normal(size=X.nnz) * 1e3, 3)
    X[7] = 0  # empty rows
    X.eliminate_zeros()
    long_row = sp.random(1, 5000, density=0.9, random_state=2, format="csr")  # a long line
    X = sp.vstack([X, long_row]).tocsr()
    y = rng.integers(0, 2, size=X.shape[0]) * 2 - 1
    path = tmp_path / "edge.svm"
    write_svmlight(path, X, y, zero_based, extra="   # trailing spaces and a comment")
    with open(path, "a") as f:
        f.write("# a comment line\n\n")
    Xr, yr = sparselin.read(path, zero_based=zero_based, n_features=5001)
    Xs, ys = load_svmlight_file(str(path), zero_based=zero_based, n_features=5001)
    assert abs(Xr - Xs.astype(np.float32)).max() == 0 and np.array_equal(yr, ys)  # values are float32


def test_gzip_is_read_transparently_and_truncation_is_an_error(tmp_path, real_data):
    raw = (real_data / "a9a.t").read_bytes()
    gz = tmp_path / "a9a.t.gz"
    gz.write_bytes(gzip.compress(raw))
    X, y = sparselin.read(gz, format="svmlight", n_features=123)
    Xs, ys = load_svmlight_file(str(real_data / "a9a.t"), n_features=123)
    assert abs(X - Xs).max() == 0
    cut = tmp_path / "cut.svm.gz"
    cut.write_bytes(gzip.compress(raw)[: len(raw) // 20])
    with pytest.raises(OSError, match="cut.svm.gz: cannot read past line .*truncated or corrupt gzip"):
        sparselin.read(cut, n_features=123)


@pytest.mark.parametrize("fmt, text, line, message", [
    ("svmlight", b"1 1:2\n0 3:x\n", 2, "value 'x' of feature 3"),
    ("svmlight", b"1 1:2\n\n# c\nabc 1:1\n", 4, "label 'abc'"),
    ("vw", b"1 |a b\n1 c d\n", 2, "no '|'"),
    ("vw", b"1 |a b:zz\n", 1, "value in 'b:zz'"),
    ("criteo", b"1" + b"\t" * 39 + b"\n0\t1\t2\n", 2, "expected 40 tab-separated fields"),
    ("criteo", b"1\tx" + b"\t" * 38 + b"\n", 1, "field I1: 'x' is not an integer"),
    ("csv", b"label,a,b\n1,x,y\n1,2\n", 3, "2 fields, but the header has 3"),
])
def test_malformed_lines_name_file_and_line(tmp_path, fmt, text, line, message):
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=rf"bad\.{fmt}: line {line}\b.*{message}"):
        sparselin.read(path, format=fmt, n_features=10)


def test_binary_garbage_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.svm"
    path.write_bytes(os.urandom(1 << 16).replace(b"\n", b"x"))
    with pytest.raises(ValueError, match="garbage.svm: line 1"):
        sparselin.read(path)


def test_criteo_and_avazu_train_end_to_end_from_the_cli(real_data):
    for args in (["criteo_kaggle_8k.tsv", "--epochs", "2", "--batch-size", "64"],
                 ["avazu_9k.csv", "--label", "click", "--ignore", "id", "--model", "lr", "--epochs", "3",
                  "--batch-size", "64"]):
        r = subprocess.run([sys.executable, "-m", "sparselin", "train", str(real_data / args[0]), *args[1:],
                            "--holdout", "0.2", "--bits", "18", "--threads", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        auc = float(r.stdout.split("AUC")[1].split()[0])
        rce = float(r.stdout.split("RCE")[1].split()[0])
        assert auc > 0.65 and rce > 3, r.stdout


def test_streaming_fit_from_files_with_cache(tmp_path, real_data):
    cache = tmp_path / "a9a.cache"
    data = sparselin.FileData(real_data / "a9a", window=4000, cache=cache)
    Xt, yt = sparselin.load_svmlight(real_data / "a9a.t", n_features=123)
    yt = (yt > 0).astype(np.float32)
    first = sparselin.SparseLogisticRegression(epochs=3, batch_size=128, random_state=0).fit(data)
    assert cache.exists()
    second = sparselin.SparseLogisticRegression(epochs=3, batch_size=128, random_state=0).fit(data)
    np.testing.assert_array_equal(first.predict_proba(Xt), second.predict_proba(Xt))  # cache = same rows
    assert sparselin.metrics.roc_auc(yt, first.predict_proba(Xt)[:, 1]) > 0.895
    # A damaged cache is detected and rebuilt, not trusted.
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))
    third = sparselin.SparseLogisticRegression(epochs=3, batch_size=128, random_state=0).fit(data)
    np.testing.assert_array_equal(first.predict_proba(Xt), third.predict_proba(Xt))
    # A changed source file makes the cache stale.
    src = tmp_path / "small.svm"
    src.write_bytes((real_data / "a9a.t").read_bytes()[:200_000])
    small = sparselin.FileData(src, window=500, cache=cache, n_features=123)
    sparselin.SparseLogisticRegression(epochs=2, random_state=0).fit(small)
    with open(src, "ab") as f:
        f.write(b"1 5:1\n")
    clf = sparselin.SparseLogisticRegression(epochs=1, random_state=0).fit(small)
    assert clf.history_[-1]["samples"] == sum(1 for _ in open(src))


def test_hashing_is_stable_and_matches_the_readers(tmp_path):
    mmh3 = pytest.importorskip("mmh3")
    h = sparselin.FeatureHasher(bits=20)
    X = h.transform([{"site": "abc", "price": 2.5}, {"site": "xyz"}])
    key = mmh3.hash128(b"site\x00abc", 0, True) & (2**64 - 1)
    assert X[0, key % 2**20] == 1.0
    key = mmh3.hash128(b"price\x00", 0, True) & (2**64 - 1)
    assert X[0, key % 2**20] == 2.5
    # The CSV reader gives the same ids.
    path = tmp_path / "d.csv"
    path.write_text("label,site,price\n1,abc,2.5\n0,xyz,\n")
    Xr, _ = sparselin.read(path, numeric=["price"], bits=20)
    assert (Xr != X).nnz == 0
    ids = sparselin.from_records([7, 7, 3], np.array([11, 2**63 + 5, 11], np.uint64), [1.0, 2.0, 3.0], bits=16)[0]
    key = mmh3.hash128((11).to_bytes(8, "little"), 0, True) & (2**64 - 1)
    assert ids[1, key % 2**16] == 1.0 and ids[0, key % 2**16] == 3.0  # rows = sorted sample ids 3, 7


def test_collision_rate_is_reported(real_data):
    data = sparselin.FileData(real_data / "avazu_9k.csv", label="click", ignore=["id"], bits=10)
    clf = sparselin.SparseLogisticRegression(random_state=0).fit(data)
    assert 0.3 < clf.collision_rate_ < 1.0  # ~10k distinct values in 1024 slots collide a lot
    clf = sparselin.SparseLogisticRegression(random_state=0).fit(
        sparselin.FileData(real_data / "avazu_9k.csv", label="click", ignore=["id"], bits=30))
    assert clf.collision_rate_ < 0.001


def test_training_from_a_file_larger_than_the_memory_it_may_use(tmp_path):
    X, y = make_ctr(120_000, n_features=2**16, random_state=0)
    path = tmp_path / "big.svm"
    write_svmlight(path, X, y.astype(int), zero_based=True)
    size = path.stat().st_size
    child = textwrap.dedent(f"""
        import resource, sparselin
        data = sparselin.FileData({str(path)!r}, n_features=2**16, zero_based=True, window=4096)
        clf = sparselin.SparseLogisticRegression(n_features=2**16, random_state=0).fit(data)
        assert clf.history_[-1]["samples"] == 120000, clf.history_
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak = int(r.stdout.strip().splitlines()[-1])
    baseline = subprocess.run([sys.executable, "-c", "import resource, sparselin;"
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"],
                              capture_output=True, text=True).stdout.strip()
    # The file is ~160 MB; streaming keeps a few 4096-row windows (~5 MB each) above the interpreter.
    assert peak - int(baseline) < size / 3, (peak, int(baseline), size)


def test_discretizer_calibrated_on_a_file_sample_and_applied_while_streaming(real_data, tmp_path):
    lines = (real_data / "criteo_kaggle_8k.tsv").read_bytes().splitlines(keepends=True)
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_bytes(b"".join(lines[:6400]))
    test.write_bytes(b"".join(lines[6400:]))
    raw = sparselin.FileData(train, bits=18, window=1000)
    sample, _ = raw.head(3000)
    assert sample.shape[0] == 3000
    continuous = np.unique(sample.indices[(sample.data != 0) & (sample.data != 1)])
    disc = sparselin.PercentileDiscretizer(n_bins=10, out_bits=20, columns=continuous).fit(sample)
    streamed = sparselin.FileData(train, bits=18, window=1000, transform=disc)
    clf = sparselin.SparseMLPClassifier(epochs=2, batch_size=64, random_state=0)
    clf.fit(streamed, eval_set=(sparselin.FileData(test, bits=18, transform=disc), None))
    assert clf.n_features_in_ == 2**20
    # The same model trained on the data discretized in memory sees the same rows (windows aside).
    Xt, yt, _, _ = sparselin.FileData(test, bits=18, transform=disc).read(binary=True)
    p = clf.predict_proba(Xt)[:, 1]
    assert sparselin.metrics.roc_auc(yt, p) > 0.69
    assert clf.history_[-1]["eval_auc"] == pytest.approx(sparselin.metrics.roc_auc(yt, p))


def test_head_reads_exactly_the_rows_asked_for(real_data):
    data = sparselin.FileData(real_data / "a9a", n_features=123, zero_based=False, window=65536)
    X, y = data.head(20000)  # more than the first streamed window
    Xs, ys = load_svmlight_file(str(real_data / "a9a"), n_features=123)
    assert X.shape == (20000, 123) and abs(X - Xs[:20000].astype(np.float32)).max() == 0
    assert np.array_equal(y, ys[:20000])
