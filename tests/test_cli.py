"""The `sparselin` command line."""

import subprocess
import sys

import numpy as np
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "sparselin", *args], capture_output=True, text=True, timeout=300)


def test_train_default_synthetic_prints_quality_and_speed():
    r = run("train", "--rows", "20000", "--test-rows", "5000", "--n-features", "65536", "--epochs", "2",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "make_ctr" in r.stdout
    for word in ("samples/s", "test logloss", "AUC", "RCE"):
        assert word in r.stdout, r.stdout
    auc = float(r.stdout.split("AUC")[1].split()[0])
    assert auc > 0.6  # the reference MLP on 20k rows (0.63 measured); 0.5 is chance


def test_train_svmlight_lr(real_data):
    r = run("train", str(real_data / "a9a"), "--test", str(real_data / "a9a.t"), "--model", "lr", "--epochs", "3",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    auc = float(r.stdout.split("AUC")[1].split()[0])
    assert auc > 0.89, r.stdout


def test_train_save_then_load(tmp_path):
    path = tmp_path / "m.safetensors"
    r = run("train", "--rows", "3000", "--test-rows", "500", "--n-features", "4096", "--model", "lr", "--save", str(path))
    assert r.returncode == 0, r.stderr
    import sparselin
    assert isinstance(sparselin.load(path), sparselin.SparseLogisticRegression)


@pytest.mark.parametrize("args, message", [
    (("train", "/nonexistent/file.svm"), "nonexistent"),
    (("train", "--rows", "100", "--test-rows", "10", "--n-features", "64", "--lr", "-1"), "learning_rate"),
])
def test_errors_exit_2_with_message(args, message):
    r = run(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_predict_and_eval_commands(real_data, tmp_path):
    model = tmp_path / "a9a.safetensors"
    r = run("train", str(real_data / "a9a"), "--model", "lr", "--epochs", "2", "--threads", "1", "--save", str(model))
    assert r.returncode == 0, r.stderr
    r = run("eval", str(model), str(real_data / "a9a.t"))
    assert r.returncode == 0, r.stderr
    for word in ("logloss", "AUC", "PR-AUC", "RCE", "calibration"):
        assert word in r.stdout
    out = tmp_path / "preds.txt"
    r = run("predict", str(model), str(real_data / "a9a.t"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    preds = np.loadtxt(out)
    assert preds.shape == (16281,) and ((preds >= 0) & (preds <= 1)).all()


def test_train_with_eval_every_checkpoint_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    r = run("train", "--rows", "6000", "--test-rows", "1000", "--n-features", "4096", "--model", "lr", "--threads", "1",
            "--eval-every", "2000", "--checkpoint", str(tmp_path / "ck"), "--checkpoint-every", "2000", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 10_000
    assert list(tmp_path.glob("ck-*.safetensors"))


def test_train_with_discretize_then_eval(real_data, tmp_path):
    model = tmp_path / "crit.safetensors"
    r = run("train", str(real_data / "criteo_kaggle_8k.tsv"), "--holdout", "0.2", "--bits", "18", "--epochs", "2",
            "--batch-size", "64", "--threads", "1", "--discretize", "10", "--save", str(model))
    assert r.returncode == 0, r.stderr
    assert "discretized:" in r.stdout
    auc = float(r.stdout.split("AUC")[1].split()[0])
    assert auc > 0.69, r.stdout
    r = run("eval", str(model), str(real_data / "criteo_kaggle_8k.tsv"), "--bits", "18")
    assert r.returncode == 0 and "AUC" in r.stdout, r.stderr


def test_bench_writes_every_sparselin_row(tmp_path):
    # A tiny run without peers: the table has each sparselin row, including sparselin trained
    # like the peers (normalize=False on their scaled rows), with a rate and a quality per cell.
    md = tmp_path / "bench.md"
    r = run("bench", "--rows", "3000", "--test-rows", "1000", "--repeats", "1", "--batch-sizes", "512",
            "--threads", "2", "--baseline-rows", "1024", "--no-peers", "--md", str(md))
    assert r.returncode == 0, r.stderr
    rows = [line for line in md.read_text().splitlines() if line.startswith("| sparselin")]
    systems = {tuple(c.strip() for c in line.split("|")[1:5]) for line in rows}
    no_norm = "sparselin normalize=False (peers' scaled input)"
    for model, opt in (("LR", "lazy_adam"), ("LR", "sgd"), ("MLP", "lazy_adam")):
        for threads in ("1", "2"):
            assert ("sparselin", model, opt, threads) in systems, systems
            assert (no_norm, model, opt, threads) in systems, systems
    for line in rows:
        rate, quality = line.split("|")[5].split(" (")
        assert float(rate.replace(",", "")) > 0
        logloss, auc = (float(v) for v in quality.rstrip(") ").split(" / "))
        assert 0 < logloss < 10 and 0 <= auc <= 1


def test_bench_measures_in_rounds_and_reports_medians(tmp_path, monkeypatch):
    # Every row runs once per round, in the same order each round (so a slow stretch of the
    # machine falls on one run of many cells), and each cell is the median of its runs.
    from sparselin import bench
    calls = []

    def fake(kind):
        def measure(data, model, batch, threads, *rest, normalize=True):
            key = (kind, model, threads, rest[:2] if kind == "bench_sparselin" else (), normalize)
            calls.append(key)
            return [300.0, 100.0, 200.0][calls.count(key) - 1], (0.5, 0.75)
        return measure

    for name in ("bench_sparselin", "bench_row_partitioned", "bench_baseline"):
        monkeypatch.setattr(bench, name, fake(name))
    md = tmp_path / "bench.md"
    assert bench.main(["--rows", "2000", "--test-rows", "500", "--repeats", "3", "--batch-sizes", "512", "--threads", "2",
                       "--baseline-rows", "512", "--no-peers", "--md", str(md)]) == 0
    rows = len(set(calls))
    assert rows == 20 and calls == calls[:rows] * 3, calls
    cells = [line.split("|")[5].strip() for line in md.read_text().splitlines()
             if line.startswith(("| sparselin", "| row-partitioned", "| dense baseline"))]
    assert len(cells) == rows and all(c == "200 (0.5000 / 0.7500)" for c in cells), cells


def test_roofline_visits_rows_in_first_seen_order():
    # The model updates a batch's rows in the order their ids first occur; sorted ids would walk
    # memory ascending and flatter the bound.
    from sparselin.bench import distinct_in_order
    rng = np.random.default_rng()
    ids = rng.integers(0, 50, size=400)
    expected = list(dict.fromkeys(ids.tolist()))
    assert distinct_in_order(ids).tolist() == expected
    assert expected != sorted(expected)
    assert distinct_in_order(np.array([7, 3, 7, 1, 3])).tolist() == [7, 3, 1]
    assert distinct_in_order(np.array([], dtype=np.int32)).tolist() == []
