"""Single-thread training throughput of the reference models (BRIEF section 5).

Samples/s over one whole epoch (data in memory, model allocation excluded, everything else
included) for LR and the MLP (sparse width 50 -> 64 -> 16 -> 1), lazy_adam, batch 256/512/1024,
on make_ctr data (2**20 features, ~100 non-zeros per row). Median of --repeats runs, with the
test logloss/AUC of the last run beside it.

    python benches/bench_core.py [--rows 200000] [--repeats 3] [--threads 1]
"""

import argparse
import platform
import statistics
import time

import numpy as np

import sparselin
from sparselin import metrics
from sparselin.datasets import make_ctr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", default="256,512,1024")
    args = ap.parse_args()

    X, y = make_ctr(args.rows + args.test_rows, n_features=2**20, nnz=100, random_state=0)
    Xtr, ytr, Xte, yte = X[: args.rows], y[: args.rows], X[args.rows:], y[args.rows:]
    print(f"# make_ctr: {args.rows} train rows, {args.test_rows} test rows, nnz/row {X.nnz / X.shape[0]:.1f}, "
          f"threads={args.threads}, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':6} {'batch':>6} {'samples/s':>12} {'test logloss':>13} {'test AUC':>9}")
    for name, make in [
        ("LR", lambda b: sparselin.SparseLogisticRegression(n_features=2**20, batch_size=b, threads=args.threads,
                                                            random_state=0)),
        ("MLP", lambda b: sparselin.SparseMLPClassifier(n_features=2**20, sparse_width=50, hidden=(64, 16),
                                                        batch_size=b, threads=args.threads, random_state=0)),
    ]:
        for b in [int(s) for s in args.batch_sizes.split(",")]:
            rates = []
            for _ in range(args.repeats):
                clf = make(b)
                clf.fit(Xtr, ytr)
                seconds = clf.history_[-1]["seconds"]
                rates.append(args.rows / seconds)
            p = clf.predict_proba(Xte)[:, 1]
            print(f"{name:6} {b:>6} {statistics.median(rates):>12,.0f} {metrics.logloss(yte, p):>13.4f} "
                  f"{metrics.roc_auc(yte, p):>9.4f}", flush=True)


if __name__ == "__main__":
    main()
