"""Distributed training on a local Ray cluster: samples/s per worker, bytes pulled/pushed (or
sent/received when averaging) per batch, distinct ids per batch, and test AUC against the
single-process trainer on the same data, for the reference LR and MLP. Prints a markdown table.

    python benches/bench_distributed.py [--rows 100000] [--bits 20] [--workers 2] [--shards 2]

All actors share this machine's cores, so samples/s here is a floor for real clusters; the bytes
per batch and ids per batch are what the scaling model in docs/distributed.md needs."""

import argparse
import platform
import time

import sparselin as sl
from sparselin import datasets, distributed, metrics


def models(n_features, batch_size, epochs):
    common = dict(n_features=n_features, batch_size=batch_size, epochs=epochs, threads=1, random_state=0)
    return {
        "LR": sl.SparseLogisticRegression(**common),
        "MLP 50-64-16": sl.SparseMLPClassifier(sparse_width=50, hidden=(64, 16), **common),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--test-rows", type=int, default=30_000)
    ap.add_argument("--bits", type=int, default=20)
    ap.add_argument("--nnz", type=float, default=100)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--sync-every", type=int, default=16)
    args = ap.parse_args()
    n_features = 2**args.bits
    X, y = datasets.make_ctr(args.rows + args.test_rows, n_features=n_features, nnz=args.nnz, random_state=1)
    X, Xt, y, yt = X[:args.rows], X[args.rows:], y[:args.rows], y[args.rows:]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, date {time.strftime('%Y-%m-%d')}; "
          f"make_ctr {args.rows:,} train / {args.test_rows:,} test rows, 2^{args.bits} features, nnz {args.nnz:g}, "
          f"batch {args.batch_size}, {args.epochs} epoch(s), {args.workers} workers, {args.shards} shards, "
          f"all on one machine\n")
    rows = []
    with distributed.local_cluster():
        for name, est in models(n_features, args.batch_size, args.epochs).items():
            start = time.perf_counter()
            single = est.__class__(**est.get_params()).fit(X, y)
            single_rate = args.rows * args.epochs / (time.perf_counter() - start)
            single_auc = metrics.roc_auc(yt, single.predict_proba(Xt)[:, 1])
            rows.append((name, "single process", f"{single_rate:,.0f}", "", "", "", "", "", f"{single_auc:.4f}"))
            for label, mode, extra in (("parameter_server, prefetch", "parameter_server", {"prefetch": True}),
                                       ("parameter_server", "parameter_server", {}),
                                       ("average", "average", {})):
                model = distributed.train(est, X, y, mode=mode, workers=args.workers, shards=args.shards,
                                          sync_every=args.sync_every, **extra)
                stats = model.distributed_stats_
                auc = metrics.roc_auc(yt, model.predict_proba(Xt)[:, 1])
                per_worker = sum(w["samples_per_second"] for w in stats["workers"]) / len(stats["workers"])
                w0 = stats["workers"][0]
                up = w0.get("bytes_pushed_per_batch", w0.get("bytes_sent_per_batch", 0))
                down = w0.get("bytes_pulled_per_batch", w0.get("bytes_received_per_batch", 0))
                ids = w0.get("unique_ids_per_batch")
                ms = lambda key: f"{w0[key] * 1e3:.2f}" if key in w0 else ""  # noqa: E731
                rows.append((name, label, f"{per_worker:,.0f}", f"{down / 1e3:,.1f}", f"{up / 1e3:,.1f}",
                             "" if ids is None else f"{ids:,.0f}", ms("pull_seconds_per_batch"),
                             ms("compute_seconds_per_batch"), f"{auc:.4f}"))
    print("| model | mode | samples/s per worker | kB in per batch | kB out per batch | distinct ids per batch "
          "| pull ms per batch | compute ms per batch | test AUC |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
