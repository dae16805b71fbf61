"""Parse throughput (MB/s, rows/s) of sparselin's svmlight reader on 1 and 2 threads against
scikit-learn's load_svmlight_file, and streaming training from a file against training from
memory.

    python benches/bench_readers.py [--mb 1024] [--train-rows 200000]

The big file repeats a ~64 MB block of make_ctr rows (2^20 features, ~100 non-zeros per row)
until it reaches --mb megabytes; it is written to a temporary directory and removed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import sparselin
from sparselin.datasets import make_ctr


def write_svmlight(path, X, y):
    X = X.copy()
    X.sum_duplicates()  # scikit-learn's reader wants sorted, unique ids per row
    with open(path, "w") as f:
        for r in range(X.shape[0]):
            s, e = X.indptr[r], X.indptr[r + 1]
            f.write(f"{int(y[r])} " + " ".join(f"{i}:{v:.6g}" for i, v in zip(X.indices[s:e], X.data[s:e])) + "\n")


def timed_read(path, threads):
    code = ("import time, sparselin; t = time.perf_counter(); "
            f"X, y = sparselin.read({path!r}, format='svmlight', n_features=2**20, zero_based=True); "
            "print(time.perf_counter() - t, X.shape[0])")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    seconds, rows = out.split()
    return float(seconds), int(rows)


def bench_parse(d, mb, skip_sklearn):
    block = os.path.join(d, "block.svm")
    X, y = make_ctr(60_000, n_features=2**20, random_state=0)
    write_svmlight(block, X, y)
    big = os.path.join(d, "big.svm")
    data = open(block, "rb").read()
    with open(big, "wb") as f:
        while f.tell() < mb * 2**20:
            f.write(data)
    size = os.path.getsize(big) / 2**20
    print(f"# svmlight file: {size:,.0f} MB, make_ctr rows; {time.strftime('%Y-%m-%d')}")
    print(f"{'reader':34} {'MB/s':>8} {'rows/s':>12}")
    for threads in (1, 2):
        s, rows = timed_read(big, threads)
        print(f"{'sparselin.read, ' + str(threads) + ' thread(s)':34} {size / s:>8,.1f} {rows / s:>12,.0f}", flush=True)
    if not skip_sklearn:
        from sklearn.datasets import load_svmlight_file
        t = time.perf_counter()
        Xs, _ = load_svmlight_file(big, n_features=2**20, zero_based=True)
        s = time.perf_counter() - t
        print(f"{'sklearn load_svmlight_file':34} {size / s:>8,.1f} {Xs.shape[0] / s:>12,.0f}", flush=True)
    os.remove(big)


def bench_streaming(d, rows):
    X, y = make_ctr(rows, n_features=2**20, random_state=1)
    small = os.path.join(d, "train.svm")
    write_svmlight(small, X, y)
    print(f"\n# training, {rows:,} rows, 1 training thread (the reader thread runs beside it)")
    print(f"{'model':5} {'from memory':>14} {'streamed from file':>20} {'ratio':>7}")
    for name, make in (("LR", sparselin.SparseLogisticRegression), ("MLP", sparselin.SparseMLPClassifier)):
        mem = make(n_features=2**20, random_state=0).fit(X, y).history_[-1]["seconds"]
        data = sparselin.FileData(small, n_features=2**20, zero_based=True, window=65536)
        h = make(n_features=2**20, random_state=0).fit(data).history_[-1]
        stream = h["seconds"]  # the epoch, reading and parsing included; model set-up excluded on both sides
        print(f"{name:5} {rows / mem:>14,.0f} {rows / stream:>20,.0f} {mem / stream:>7.2f}   "
              f"(trainer waited {h['reader_wait_seconds']:.2f} s for the reader)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--training-only", action="store_true", help="skip the big-file parse")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if not args.training_only:
            bench_parse(d, args.mb, args.skip_sklearn)
        bench_streaming(d, args.train_rows)


if __name__ == "__main__":
    main()
