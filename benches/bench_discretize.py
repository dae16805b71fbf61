"""Discretizer throughput on make_ctr data (2^20 features, ~100 non-zeros per row): transform
values/s with 1 and 2 threads, and calibration values/s (exact and with a reservoir).

    python benches/bench_discretize.py [--rows 200000] [--repeats 5]

"core" times the Rust transform on the CSR arrays (what a reader would call per batch);
"transform" is the scikit-learn method, which also validates X and builds the scipy matrix.
"""

import argparse
import platform
import statistics
import time

import numpy as np

import sparselin
from sparselin.datasets import make_ctr


def rate(f, n_values, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return n_values / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    X, _ = make_ctr(args.rows, n_features=2**20, random_state=0)
    calib = X[: min(50_000, args.rows)]
    continuous = np.unique(calib.indices[calib.data != 1.0])
    print(f"# make_ctr: {args.rows} rows, 2^20 features, {X.nnz / 1e6:.1f}M values; calibration on "
          f"{calib.shape[0]} rows ({calib.nnz / 1e6:.1f}M values, {continuous.size} continuous features); "
          f"n_bins=20, out_bits=22; median of {args.repeats}; {platform.machine()}, {time.strftime('%Y-%m-%d')}")

    print(f"\n{'calibration':34} {'values/s':>12}")
    for name, kw in [("exact (sample=None), continuous", dict(columns=continuous)),
                     ("reservoir sample=1000, continuous", dict(columns=continuous, sample=1000)),
                     ("reservoir sample=1000, all features", dict(sample=1000))]:
        cls = sparselin.HashingDiscretizer if "all" in name else sparselin.PercentileDiscretizer
        r = rate(lambda: cls(n_bins=20, out_bits=22, **kw).fit(calib), calib.nnz, args.repeats)
        print(f"{name:34} {r:>12,.0f}", flush=True)

    print(f"\n{'discretizer':30} {'threads':>7} {'core values/s':>15} {'transform values/s':>19}")
    for name, d in [("Percentile (continuous cols)", sparselin.PercentileDiscretizer(n_bins=20, out_bits=22,
                                                                                     columns=continuous)),
                    ("Hashing (all features)", sparselin.HashingDiscretizer(n_bins=20, out_bits=22))]:
        d.fit(calib)
        core = d._disc()
        for threads in (1, 2):
            d.set_params(threads=threads)
            r_core = rate(lambda: core.transform(X.indptr, X.indices, X.data, X.shape[1], threads), X.nnz, args.repeats)
            r_full = rate(lambda: d.transform(X), X.nnz, args.repeats)
            print(f"{name:30} {threads:>7} {r_core:>15,.0f} {r_full:>19,.0f}", flush=True)


if __name__ == "__main__":
    main()
