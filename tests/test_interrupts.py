"""Ctrl-C during a long fit: a subprocess runs a fit that would take minutes, the parent sends it
SIGINT, and the fit must raise KeyboardInterrupt promptly (the core calls its progress callback
every 0.2 s, which runs `check_signals`), leaving an estimator that still predicts finite values
and saves and loads.

Latency is measured from the moment the parent sends the signal (time.monotonic() is one
system-wide clock on Linux, shared by both processes) to the moment the child catches
KeyboardInterrupt. The child also records when its Python-level SIGINT handler ran (a wrapper that
then calls the default handler, which raises KeyboardInterrupt)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux's system-wide monotonic clock")

LATENCY_BOUND_S = 5.0  # generous for loaded CI machines; the requirement is 1 s

CHILD = textwrap.dedent("""
    import json, signal, sys, time
    import numpy as np
    import sparselin as sl

    threads = int(sys.argv[1])
    path = sys.argv[2]
    record = {}

    def on_sigint(signum, frame):
        record["handler_ran"] = time.monotonic()
        record["handler_frame"] = f"{frame.f_code.co_name}:{frame.f_lineno}"
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    X, y = sl.datasets.make_ctr(200_000, n_features=2**14, nnz=40, random_state=0)
    # Wide layers: one epoch takes about 10 s, so the signal arrives inside the core's training
    # loop (not between the Python engine's segments), and the fit would run for hours.
    est = sl.SparseMLPClassifier(n_features=2**14, sparse_width=128, hidden=(256, 128), batch_size=64,
                                 epochs=100000, threads=threads, random_state=0)
    print("READY", flush=True)
    try:
        est.fit(X, y)
        record["outcome"] = "finished"
    except KeyboardInterrupt:
        record["caught"] = time.monotonic()
        record["outcome"] = "KeyboardInterrupt"
    p = est.predict_proba(X[:100])
    record["predict_finite"] = bool(np.all(np.isfinite(p))) and p.shape == (100, 2)
    est.save(path)
    p2 = sl.load(path).predict_proba(X[:100])
    record["reload_same"] = bool(np.array_equal(p, p2))
    print(json.dumps(record), flush=True)
""")


@pytest.mark.parametrize("threads", [1, 2])
def test_sigint_stops_a_long_fit_promptly(tmp_path, threads):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(threads), str(tmp_path / "model.safetensors")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY", child.stderr.read()
        time.sleep(1.5)  # well inside the fit
        assert child.poll() is None, "the fit ended before the signal"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["outcome"] == "KeyboardInterrupt", record
    latency = record["caught"] - sent
    handler_delay = record["handler_ran"] - sent
    print(f"threads={threads}: SIGINT -> KeyboardInterrupt caught in {latency * 1000:.0f} ms "
          f"(Python handler ran after {handler_delay * 1000:.0f} ms, in {record['handler_frame']})")
    assert 0 <= handler_delay <= latency < LATENCY_BOUND_S
    assert record["predict_finite"] and record["reload_same"], record
