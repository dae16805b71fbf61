"""Distributed training on a local Ray cluster bound to 127.0.0.1 (skipped without Ray).

Data: make_ctr with 4096 features and 30 non-zeros per row, where logistic regression converges
in two epochs, so a distributed run that learns as well as the single process lands within
0.005 test AUC of it."""

import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest

import sparselin as sl
from sparselin import _core, datasets, distributed, metrics

ray = pytest.importorskip("ray")

N_FEATURES = 2**12
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real")


@pytest.fixture(scope="module")
def cluster():
    with distributed.local_cluster(num_cpus=6):
        yield


@pytest.fixture(scope="module")
def data():
    X, y = datasets.make_ctr(130_000, n_features=N_FEATURES, nnz=30, random_state=1)
    return X[:100_000], y[:100_000], X[100_000:], y[100_000:]


def lr(**kw):
    params = dict(n_features=N_FEATURES, epochs=2, batch_size=256, threads=1, random_state=0)
    params.update(kw)
    return sl.SparseLogisticRegression(**params)


def auc(model, X, y):
    return metrics.roc_auc(y, model.predict_proba(X)[:, 1])


@pytest.fixture(scope="module")
def single_auc(data):
    X, y, Xt, yt = data
    return auc(lr().fit(X, y), Xt, yt)


def test_the_cluster_listens_on_loopback_only(cluster):
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    if shutil.which("ss") is None:
        pytest.skip("no ss to list listening sockets")
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True).stdout
    ray_lines = [line for line in out.splitlines() if re.search(r'"(raylet|gcs_server|ray::[^"]*)"', line)
                 or f"pid={os.getpid()}," in line]
    assert ray_lines, out
    for line in ray_lines:
        local = line.split()[3]
        assert local.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"), line


@pytest.mark.parametrize("mode", distributed.MODES)
def test_two_workers_match_the_single_process(cluster, data, single_auc, tmp_path, mode):
    X, y, Xt, yt = data
    model = distributed.train(lr(), X, y, mode=mode, workers=2, shards=2)
    dist_auc = auc(model, Xt, yt)
    assert abs(dist_auc - single_auc) < 0.005, (mode, dist_auc, single_auc)
    stats = model.distributed_stats_
    assert len(stats["workers"]) == 2
    assert sum(w["samples"] for w in stats["workers"]) == 2 * X.shape[0]
    assert all(w["samples_per_second"] > 0 for w in stats["workers"])
    # The result is an ordinary model file.
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = sl.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(Xt[:500]), model.predict_proba(Xt[:500]))


def test_parameter_server_mlp(cluster, data):
    X, y, Xt, yt = data
    est = sl.SparseMLPClassifier(n_features=N_FEATURES, sparse_width=8, hidden=(8,), epochs=2, batch_size=256,
                                 threads=1, random_state=0)
    single = auc(est.__class__(**est.get_params()).fit(X, y), Xt, yt)
    model = distributed.train(est, X, y, mode="parameter_server", workers=2, shards=3)
    assert abs(auc(model, Xt, yt) - single) < 0.01
    pulled = model.distributed_stats_["workers"][0]["bytes_pulled_per_batch"]
    unique = model.distributed_stats_["workers"][0]["unique_ids_per_batch"]
    # Per distinct id: its id (8 bytes), 8 weights, feature bias and max_abs (4 bytes each).
    assert pulled > unique * (8 + 4 * 10)


def test_prefetch_trains_every_batch_once(cluster, data):
    X, y, Xt, yt = data
    model = distributed.train(lr(epochs=1), X[:20_000], y[:20_000], prefetch=True, segment_batches=7)
    assert [w["samples"] for w in model.distributed_stats_["workers"]] == [10_000, 10_000]
    assert auc(model, Xt, yt) > 0.72  # a sane model; the staleness cost is measured in the bench


@pytest.mark.parametrize("mode", distributed.MODES)
def test_ftrl_and_a_weighted_regressor_train_in_both_modes(cluster, data, mode):
    X, y, Xt, yt = data
    X, y = X[:12_000], y[:12_000]
    ftrl = lr(optimizer="ftrl", l1=0.001, learning_rate=0.1, epochs=1)
    single = auc(ftrl.__class__(**ftrl.get_params()).fit(X, y), Xt, yt)  # 0.599
    dist = auc(distributed.train(ftrl, X, y, mode=mode), Xt, yt)
    if mode == "parameter_server":
        assert abs(dist - single) < 0.01
    else:  # averaging FTRL's z and n halves its progress per epoch here: 0.567 measured
        assert 0.55 < dist < single
    w = np.random.default_rng(0).uniform(0.5, 2.0, y.size)
    reg = sl.SparseMLPRegressor(n_features=N_FEATURES, sparse_width=4, hidden=(3,), random_state=0)
    model = distributed.train(reg, X, y, sample_weight=w, mode=mode)
    assert np.isfinite(model.predict(Xt[:100])).all() and model.history_[-1]["train_loss"] < 1.0


def test_averaging_is_deterministic(cluster, data):
    X, y, _, _ = data
    a = distributed.train(lr(epochs=1), X[:20_000], y[:20_000], mode="average", workers=2, sync_every=8)
    b = distributed.train(lr(epochs=1), X[:20_000], y[:20_000], mode="average", workers=2, sync_every=8)
    for name, _ in a._model.tensor_names():
        np.testing.assert_array_equal(a._model.get_tensor(name), b._model.get_tensor(name), err_msg=name)


def _kill_later(handle, seconds=0.05):
    timer = threading.Timer(seconds, lambda: ray.kill(handle, no_restart=False))
    timer.start()
    return timer


def test_a_worker_killed_mid_training_restarts_and_training_completes(cluster, data, single_auc):
    X, y, Xt, yt = data
    pids = {}

    def callback(info):
        if info["round"] == 1:
            pids["before"] = ray.get(info["workers"][1].pid.remote())
            _kill_later(info["workers"][1])
        if info["round"] == 3:
            pids["after"] = ray.get(info["workers"][1].pid.remote())

    model = distributed.train(lr(), X, y, mode="parameter_server", workers=2, shards=2, segment_batches=40,
                              callback=callback)
    assert pids["before"] != pids["after"], "the worker was not restarted"
    # The restarted worker redid its segment: at least every sample was trained.
    assert sum(w["samples"] for w in model.distributed_stats_["workers"]) >= 2 * X.shape[0]
    assert abs(auc(model, Xt, yt) - single_auc) < 0.01


def test_a_shard_killed_mid_training_reloads_its_checkpoint(cluster, data, single_auc, tmp_path):
    X, y, Xt, yt = data

    def callback(info):
        if info["round"] == 2:
            _kill_later(info["shards"][1])

    model = distributed.train(lr(), X, y, mode="parameter_server", workers=2, shards=2, segment_batches=40,
                              checkpoint_dir=tmp_path, checkpoint_every=1, callback=callback)
    shard_stats = model.distributed_stats_["shards"]
    assert shard_stats[1]["restored"] and not shard_stats[0]["restored"]
    assert (tmp_path / "shard-1-of-2.safetensors").exists()
    # Updates after the last checkpoint are lost, the model is still sane.
    assert abs(auc(model, Xt, yt) - single_auc) < 0.01
    with pytest.raises(sl.ModelFileError, match="shard 1 of 2"):
        sl.load(tmp_path / "shard-1-of-2.safetensors")


def test_averaging_replays_after_a_worker_dies_to_the_same_model(cluster, data):
    X, y, _, _ = data
    X, y = X[:30_000], y[:30_000]
    clean = distributed.train(lr(epochs=1), X, y, mode="average", workers=2, sync_every=8)

    def callback(info):
        if info["round"] == 3:
            ray.kill(info["workers"][0], no_restart=False)

    faulty = distributed.train(lr(epochs=1), X, y, mode="average", workers=2, sync_every=8, checkpoint_every=2,
                               callback=callback)
    assert faulty.distributed_stats_["restarts"] == 1
    for name, _ in clean._model.tensor_names():
        np.testing.assert_array_equal(clean._model.get_tensor(name), faulty._model.get_tensor(name), err_msg=name)


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "a9a")), reason="../shared/data/real/a9a not present")
@pytest.mark.parametrize("mode", distributed.MODES)
def test_files_a9a(cluster, mode):
    train, test = os.path.join(SHARED, "a9a"), os.path.join(SHARED, "a9a.t")
    est = sl.SparseLogisticRegression(epochs=3, threads=1, random_state=0)
    Xt, yt = sl.read(test, n_features=123)
    yt = (yt > 0).astype(np.float32)
    single = est.__class__(**est.get_params()).fit(sl.FileData(train, n_features=123))
    model = distributed.train(est, paths=[train], workers=2, shards=2, mode=mode, sync_every=4)
    assert abs(auc(model, Xt, yt) - auc(single, Xt, yt)) < 0.005


def test_each_worker_reads_its_own_files(cluster, data, tmp_path):
    from sklearn.datasets import dump_svmlight_file

    X, y, Xt, yt = data
    paths = []
    for k in range(4):
        path = tmp_path / f"part-{k}.svm"
        dump_svmlight_file(X[k * 5000:(k + 1) * 5000], y[k * 5000:(k + 1) * 5000], str(path), zero_based=True)
        paths.append(str(path))
    model = distributed.train(lr(n_features=None, epochs=1), paths=paths, workers=2, shards=2)
    assert [w["samples"] for w in model.distributed_stats_["workers"]] == [10_000, 10_000]
    assert model.n_features_in_ >= int(X[:20_000].indices.max()) + 1
    assert auc(model, Xt[:, :model.n_features_in_], yt) > 0.7


def test_bad_arguments_are_clear_errors(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="mode"):
        distributed.train(lr(), X, y, mode="allreduce")
    with pytest.raises(ValueError, match="workers"):
        distributed.train(lr(), X, y, workers=0)
    with pytest.raises(ValueError, match="labels come from the files"):
        distributed.train(lr(), X, y, paths=["x.svm"])
    with pytest.raises(ValueError, match="cannot be split"):
        distributed.train(lr(), X[:1], y[:1], workers=2)
    with pytest.raises(ValueError, match="n_features"):
        distributed.train(lr(n_features=10), X, y)


def test_actors_that_cannot_fit_are_an_error_not_a_hang(cluster, data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="CPUs free"):
        distributed.train(lr(), X[:1000], y[:1000], workers=2, shards=2, shard_cpus=10)


def test_core_shard_rejects_foreign_ids():
    config = _core.model_config_json(10, 1, None, "binary", True, "sgd", 0.1, 0.0, 0.0, 0)
    shard = _core.ParameterShard(config, 1, 2, False)
    with pytest.raises(ValueError, match="belongs to shard 0"):
        shard.pull(np.array([2], np.uint64))
    with pytest.raises(ValueError, match="out of range"):
        shard.pull(np.array([11], np.uint64))
    with pytest.raises(ValueError, match="dense"):
        shard.pull_dense()
    with pytest.raises(sl.ModelFileError):
        _core.ParameterShard.from_bytes(b"not a checkpoint")


def test_cli_train_distributed(cluster, data, tmp_path, capsys):
    from sklearn.datasets import dump_svmlight_file

    from sparselin.cli import main

    X, y, Xt, yt = data
    train, test = tmp_path / "train.svm", tmp_path / "test.svm"
    dump_svmlight_file(X[:20_000], y[:20_000], str(train), zero_based=True)
    dump_svmlight_file(Xt[:5000], yt[:5000], str(test), zero_based=True)
    out = tmp_path / "model.safetensors"
    rc = main(["train-distributed", str(train), "--test", str(test), "--model", "lr", "--n-features", str(N_FEATURES),
               "--workers", "2", "--shards", "2", "--save", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "worker 1:" in text and "AUC" in text and "bytes pulled" in text
    assert sl.load(out).predict_proba(Xt[:10]).shape == (10, 2)
