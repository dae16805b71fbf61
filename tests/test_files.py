"""A full disk while saving: a subprocess lowers RLIMIT_FSIZE (the largest file it may write) below
the model's size and ignores SIGXFSZ, so writes fail with EFBIG ("File too large") as on a full
disk. Saving over a good model file, and the periodic checkpoints `fit` writes, must raise
OSError and leave the previous files intact, loadable, and without temporary leftovers.

(A read-only directory is tested in test_bad_input.py, skipped as root: root writes anyway.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparselin as sl

resource = pytest.importorskip("resource")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE / SIGXFSZ semantics of Linux")

LIMIT = 64 * 1024  # bytes; the models below are ~400 KB

CHILD_PRELUDE = textwrap.dedent(f"""
    import json, resource, signal, sys
    import numpy as np
    import sparselin as sl
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
""")


def run_child(body, *args):
    proc = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(body), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def data():
    return sl.datasets.make_ctr(1000, n_features=2**12, nnz=20, random_state=2)


def estimator(**kw):
    return sl.SparseMLPClassifier(n_features=2**12, sparse_width=8, hidden=(8,), batch_size=100, random_state=0, **kw)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_save_on_a_full_disk_keeps_the_old_model(tmp_path):
    X, y = data()
    path = tmp_path / "model.safetensors"
    good = estimator().fit(X, y)
    good.save(path)
    raw = path.read_bytes()
    assert len(raw) > 2 * LIMIT

    result = run_child("""
        X, y = sl.datasets.make_ctr(1000, n_features=2**12, nnz=20, random_state=5)
        est = sl.SparseMLPClassifier(n_features=2**12, sparse_width=8, hidden=(8,), random_state=1).fit(X, y)
        try:
            est.save(sys.argv[1])
            print(json.dumps({"error": None}))
        except OSError as e:
            print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    """, path)
    assert result["error"] == "OSError", result
    assert "File too large" in result["message"], result
    assert path.read_bytes() == raw
    np.testing.assert_array_equal(sl.load(path).predict_proba(X), good.predict_proba(X))
    assert leftovers(tmp_path) == []


def test_checkpoints_on_a_full_disk_keep_the_previous_ones(tmp_path):
    X, y = data()
    prefix = tmp_path / "ckpt" / "run"
    # A first run writes good checkpoints at 500, 1000 and 1500 samples (of 2 epochs of 1000).
    estimator(epochs=2).fit(X, y, checkpoint_path=prefix, checkpoint_every=500, keep_checkpoints=None)
    before = {p.name: p.read_bytes() for p in prefix.parent.iterdir()}
    assert len(before) == 3

    # The same fit again on a "full disk": its first checkpoint, written over the good file of
    # the same name, fails; the fit raises OSError.
    result = run_child("""
        X, y = sl.datasets.make_ctr(1000, n_features=2**12, nnz=20, random_state=2)
        est = sl.SparseMLPClassifier(n_features=2**12, sparse_width=8, hidden=(8,), batch_size=100, random_state=0,
                                     epochs=2)
        out = {}
        try:
            est.fit(X, y, checkpoint_path=sys.argv[1], checkpoint_every=500, keep_checkpoints=None)
            out["error"] = None
        except OSError as e:
            out["error"], out["message"] = type(e).__name__, str(e)
        # The estimator holds the model trained up to the failed checkpoint and still predicts.
        out["finite"] = bool(np.all(np.isfinite(est.predict_proba(X))))
        print(json.dumps(out))
    """, prefix)
    assert result["error"] == "OSError" and "File too large" in result["message"], result
    assert "000000000500" in result["message"], result
    assert result["finite"]
    after = {p.name: p.read_bytes() for p in prefix.parent.iterdir()}
    assert after == before  # nothing changed, nothing lost, no temporary files
    for name in after:
        sl.load(prefix.parent / name).predict_proba(X[:10])

    # With disk space again, a resumed fit continues from the newest good checkpoint.
    resumed = estimator(epochs=2).fit(X, y, checkpoint_path=prefix, checkpoint_every=500, resume=True)
    assert np.all(np.isfinite(resumed.predict_proba(X)))
