"""predict_proba throughput (rows/s) with 1 and 2 threads, estimator and lean Predictor.

    python benches/bench_predict.py [--rows 200000]
"""

import argparse
import platform
import statistics
import tempfile
import time

import sparselin
from sparselin.datasets import make_ctr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    X, y = make_ctr(args.rows, n_features=2**20, random_state=0)
    print(f"# predict_proba on make_ctr: {args.rows} rows, 2^20 features, ~100 non-zeros/row; "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':6} {'threads':>7} {'rows/s':>12} {'Predictor rows/s':>17}")
    for name, clf in [("LR", sparselin.SparseLogisticRegression(n_features=2**20, random_state=0)),
                      ("MLP", sparselin.SparseMLPClassifier(n_features=2**20, random_state=0))]:
        clf.fit(X[:50_000], y[:50_000])
        with tempfile.TemporaryDirectory() as d:
            clf.save(f"{d}/m.safetensors")
            for threads in (1, 2):
                pred = sparselin.Predictor(f"{d}/m.safetensors", threads=threads)
                clf.set_params(predict_threads=threads)
                rates = {"est": [], "pred": []}
                for _ in range(args.repeats):
                    for key, f in (("est", clf.predict_proba), ("pred", pred.predict_proba)):
                        t = time.perf_counter()
                        f(X)
                        rates[key].append(args.rows / (time.perf_counter() - t))
                print(f"{name:6} {threads:>7} {statistics.median(rates['est']):>12,.0f} "
                      f"{statistics.median(rates['pred']):>17,.0f}", flush=True)


if __name__ == "__main__":
    main()
