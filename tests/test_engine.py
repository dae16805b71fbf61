"""The training engine: evaluation during fit, early stopping, callbacks, checkpoints, resume
after SIGKILL, continual training under drift, and the lean Predictor."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import sparselin
from sparselin import _engine
from sparselin.datasets import make_ctr


@pytest.fixture(scope="module")
def data():
    X, y = make_ctr(9000, n_features=2**14, random_state=7)
    return X[:6000], y[:6000], X[6000:], y[6000:]


def mlp(**kw):
    base = dict(sparse_width=8, hidden=(8,), batch_size=128, random_state=0)
    base.update(kw)
    return sparselin.SparseMLPClassifier(**base)


def tensors(est):
    return {name: est._model.get_tensor(name) for name, _ in est._model.tensor_names()}


def test_eval_every_history_has_every_metric(data):
    X, y, Xt, yt = data
    clf = mlp(epochs=2).fit(X, y, eval_set=(Xt, yt), eval_every=1500)
    samples = [h["samples"] for h in clf.history_]
    # every 12 batches of 128 over the whole fit (47 batches per epoch, the last one of 112 rows)
    assert samples == [1536, 3072, 4608, 6128, 7664, 9200, 10736, 12000]
    for key in ("train_loss", "eval_logloss", "eval_auc", "eval_pr_auc", "eval_rce", "eval_calibration"):
        assert all(np.isfinite(h[key]) for h in clf.history_), key


def test_segmented_fit_is_bit_identical_to_one_fit(data):
    X, y, Xt, yt = data
    a = mlp(epochs=2).fit(X, y)
    b = mlp(epochs=2).fit(X, y, eval_set=(Xt, yt), eval_every=700)
    for name, values in tensors(a).items():
        np.testing.assert_array_equal(values, tensors(b)[name], err_msg=name)


def test_early_stopping_and_callbacks(data):
    X, y, Xt, yt = data
    # A high learning rate over-fits these 6000 rows within a few epochs.
    clf = mlp(epochs=40, learning_rate=0.03).fit(X, y, eval_set=(Xt, yt), early_stopping_rounds=2)
    losses = [h["eval_logloss"] for h in clf.history_]
    assert len(losses) < 40
    assert clf.best_score_ == min(losses)
    assert losses[-1] > clf.best_score_ and losses[-2] > clf.best_score_
    seen = []
    clf = mlp(epochs=5).fit(X, y, eval_set=(Xt, yt), callbacks=[lambda est, h: seen.append(h) or len(seen) == 2])
    assert len(seen) == 2 and len(clf.history_) == 2
    with pytest.raises(ValueError, match="eval_set"):
        mlp().fit(X, y, early_stopping_rounds=3)


def test_checkpoints_rotate_and_load(data, tmp_path):
    X, y, Xt, _ = data
    prefix = tmp_path / "ckpt" / "run"
    clf = mlp(epochs=2).fit(X, y, checkpoint_path=prefix, checkpoint_every=1000, keep_checkpoints=2)
    files = _engine.list_checkpoints(prefix)
    # every 8 batches of 128 (47 per epoch): the last two are after batches 80 and 88
    assert [os.path.basename(f) for f in files] == ["run-000000010224.safetensors", "run-000000011248.safetensors"]
    back = sparselin.load(files[-1])
    assert isinstance(back, sparselin.SparseMLPClassifier)
    assert np.isfinite(back.predict_proba(Xt)).all()


CHILD = textwrap.dedent("""
    import sys
    import sparselin
    from sparselin.datasets import make_ctr
    X, y = make_ctr(60000, n_features=2**16, random_state=3)
    clf = sparselin.SparseMLPClassifier(sparse_width=16, hidden=(16,), epochs=2, batch_size=256,
                                        threads=int(sys.argv[2]), random_state=5)
    clf.fit(X, y, checkpoint_path=sys.argv[1], checkpoint_every=10000, keep_checkpoints=3, resume=True)
    clf.save(sys.argv[1] + "-final.model")
""")


def _run_killed(prefix, threads):
    """Starts the child, SIGKILLs it once a checkpoint exists, then resumes it to the end."""
    script = prefix.parent / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(prefix), str(threads)])
    deadline = time.time() + 120
    while not _engine.list_checkpoints(prefix) and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed = child.poll() is None
    if killed:
        child.send_signal(signal.SIGKILL)
    child.wait()
    assert _engine.list_checkpoints(prefix), "no checkpoint was written"
    for path in _engine.list_checkpoints(prefix):  # a kill never leaves a half file under a real name
        sparselin.load(path)
    resumed = subprocess.run([sys.executable, str(script), str(prefix), str(threads)], timeout=300)
    assert resumed.returncode == 0
    return sparselin.load(str(prefix) + "-final.model")


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    resumed = _run_killed(tmp_path / "run", threads=1)
    X, y = make_ctr(60000, n_features=2**16, random_state=3)
    whole = sparselin.SparseMLPClassifier(sparse_width=16, hidden=(16,), epochs=2, batch_size=256, threads=1,
                                          random_state=5).fit(X, y)
    for name, values in tensors(whole).items():
        np.testing.assert_array_equal(values, tensors(resumed)[name], err_msg=name)
    assert resumed.history_[-1]["samples"] == whole.history_[-1]["samples"] == 120000


def test_sigkill_then_resume_under_hogwild(tmp_path):
    resumed = _run_killed(tmp_path / "run", threads=2)
    X, y = make_ctr(70000, n_features=2**16, random_state=3)  # same rows, plus held-out ones
    Xt, yt = make_ctr(10000, n_features=2**16, random_state=99)
    whole = sparselin.SparseMLPClassifier(sparse_width=16, hidden=(16,), epochs=2, batch_size=256, threads=2,
                                          random_state=5).fit(X[:60000], y[:60000])
    auc = lambda m: sparselin.metrics.roc_auc(yt, m.predict_proba(Xt)[:, 1])
    assert abs(auc(resumed) - auc(whole)) < 0.01


def test_divergence_leaves_checkpoints_intact(tmp_path):
    X, y = make_ctr(8192, n_features=2**12, random_state=1)
    X, y = X.tolil(), y.copy()
    poisoned = np.arange(0, 8192, 160)
    for r in poisoned:
        X[r, 7] = 3e38  # without normalization: the first such row pushes w7 to ~1e33, the next overflows
    y[poisoned] = 1
    X = X.tocsr()
    prefix = tmp_path / "run"
    clf = sparselin.SparseLogisticRegression(normalize=False, optimizer="sgd", learning_rate=1e-3, batch_size=64,
                                             random_state=0)
    with pytest.raises(sparselin.TrainingDivergedError, match=r"at update \d+"):
        clf.fit(X, y, checkpoint_path=prefix, checkpoint_every=64, keep_checkpoints=1000)
    files = _engine.list_checkpoints(prefix)
    assert files  # an LR starts at w = 0, so the first batch cannot diverge
    for path in files:
        back = sparselin.load(path)
        assert all(np.isfinite(v).all() for v in tensors(back).values())
    # The estimator itself also kept finite weights and can predict.
    assert np.isfinite(clf.predict_proba(X[:100])).all()


def test_continual_training_beats_a_stale_model():
    days = make_ctr(15000, n_features=2**15, days=4, drift=0.5, random_state=2)
    stale = sparselin.SparseLogisticRegression(epochs=2, random_state=0).fit(*days[0])
    fresh = sparselin.SparseLogisticRegression(epochs=2, random_state=0).fit(*days[0])
    gains = []
    for X, y in days[1:]:
        auc = lambda m: sparselin.metrics.roc_auc(y, m.predict_proba(X)[:, 1])
        gains.append(auc(fresh) - auc(stale))  # next-day evaluation, before training on the day
        fresh.partial_fit(X, y, optimizer_state_decay=0.5)
    assert gains[-1] > 0.01 and gains[-1] > gains[0], gains


def test_optimizer_state_decay_scales_the_moments(data):
    X, y, _, _ = data
    clf = mlp().fit(X, y)
    before = clf._model.get_tensor("sparse.weight.v")
    clf._model.decay_optimizer_state(0.25)
    np.testing.assert_allclose(clf._model.get_tensor("sparse.weight.v"), before * 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        clf.partial_fit(X, y, optimizer_state_decay=1.5)


def test_predictor_loads_only_inference_tensors(data, tmp_path):
    X, y, Xt, _ = data
    clf = mlp(epochs=1).fit(X, np.where(y == 1, "yes", "no"))
    clf.save(tmp_path / "m.safetensors")
    pred = sparselin.Predictor(tmp_path / "m.safetensors", threads=2)
    names = [n for n, _ in pred._model.tensor_names()]
    assert "sparse.weight" in names and not any(n.endswith((".m", ".v")) for n in names)
    np.testing.assert_array_equal(pred.predict_proba(Xt), clf.predict_proba(Xt))
    assert list(pred.predict(Xt[:50])) == list(clf.predict(Xt[:50]))
    reg = sparselin.SparseMLPRegressor(sparse_width=4, hidden=(), random_state=0).fit(X, y)
    reg.save(tmp_path / "r.safetensors")
    np.testing.assert_array_equal(sparselin.Predictor(tmp_path / "r.safetensors").predict(Xt), reg.predict(Xt))


def test_predict_proba_threads_agree(data):
    X, y, Xt, _ = data
    clf = mlp().fit(X, y)
    one = mlp(predict_threads=1).set_params().fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(one, clf.set_params(predict_threads=2).predict_proba(Xt))


def test_plot_history(data, tmp_path):
    pytest.importorskip("matplotlib")
    X, y, Xt, yt = data
    clf = mlp(epochs=2).fit(X, y, eval_set=(Xt, yt))
    sparselin.plot_history(clf.history_, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
