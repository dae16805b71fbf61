"""The ``sparselin`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

from . import metrics
from ._core import ModelFileError
from .datasets import make_ctr
from .discretizers import PercentileDiscretizer, load_discretizer
from .estimators import SparseLogisticRegression, SparseMLPClassifier
from .io import FileData, load_svmlight
from .predictor import Predictor


def _report(clf, X, y, label):
    y01 = (np.asarray(y) == clf.classes_[1]).astype(np.float32)
    p = clf.predict_proba(X)[:, 1]
    line = f"{label} logloss {metrics.logloss(y01, p):.4f}"
    if 0 < y01.sum() < y01.size:
        line += f"  AUC {metrics.roc_auc(y01, p):.4f}  RCE {metrics.rce(y01, p):.2f}"
        line += f"  calibration {metrics.calibration(y01, p):.3f}"
    print(line)


def _discretizer_path(model_path):
    return f"{model_path}.discretizer.safetensors"


def _discretize(args, X, Xt):
    """Calibrates a PercentileDiscretizer on a random sample of the training rows, for the
    continuous features only (those with a value other than 0 or 1 in the sample; the others pass
    through), and transforms the training and test data."""
    rng = np.random.default_rng(args.seed)
    n = min(args.discretize_rows, X.shape[0])
    Xs = X[np.sort(rng.choice(X.shape[0], size=n, replace=False))]
    continuous = np.unique(Xs.indices[(Xs.data != 0.0) & (Xs.data != 1.0)])
    disc = PercentileDiscretizer(n_bins=args.discretize, out_bits=args.discretize_bits, columns=continuous,
                                 random_state=args.seed, threads=args.threads).fit(Xs)
    start = time.perf_counter()
    X = disc.transform(X)
    Xt = None if Xt is None else disc.transform(Xt)
    print(f"discretized: {continuous.size:,} continuous features into <= {args.discretize} bins each (calibrated "
          f"on {n:,} rows), ids in [0, 2^{args.discretize_bits}); transform {time.perf_counter() - start:.2f} s")
    return X, Xt, disc


def _parse_hidden(text):
    text = text.strip()
    return () if text in ("", "none") else tuple(int(h) for h in text.split(","))


def _split(text):
    return [c for c in (text or "").split(",") if c]


def _file_data(args, paths, n_features=None):
    return FileData(paths, format=args.format, bits=args.bits, n_features=n_features, label=args.label,
                    numeric=_split(args.numeric), categorical=_split(args.categorical), ignore=_split(args.ignore),
                    delimiter=args.delimiter, window=args.window, cache=args.cache or None)


def _estimator(args, n_features, verbose=1):
    """(classifier, description) from the model options."""
    common = dict(n_features=n_features, optimizer=args.optimizer, batch_size=args.batch_size, epochs=args.epochs,
                  threads=args.threads, parallel=args.parallel, normalize=not args.no_normalize, l2=args.l2, random_state=args.seed,
                  verbose=verbose, device=args.device)
    if args.model == "lr":
        return SparseLogisticRegression(learning_rate=args.lr or 0.01, **common), "LR (sparse width 1)"
    hidden = _parse_hidden(args.hidden)
    clf = SparseMLPClassifier(sparse_width=args.sparse_width, hidden=hidden, learning_rate=args.lr or 1e-3, **common)
    return clf, f"MLP (sparse {args.sparse_width} -> {' -> '.join(map(str, hidden + (1,)))})"


def cmd_train(args):
    stream = None
    X = y = Xt = yt = None
    if args.paths:
        train = _file_data(args, args.paths, args.n_features)
        n_features = None
        if train.format == "svmlight":
            n_features = _file_data(args, args.paths + ([args.test] if args.test else []), args.n_features).resolve()[0]
            train = _file_data(args, args.paths, n_features)
        if args.holdout or args.discretize or args.device != "cpu":  # the GPU trains from memory
            if args.holdout and not 0 < args.holdout < 1:
                raise ValueError("--holdout must be a fraction in (0, 1)")
            X, y, _, _ = train.read(binary=True)  # --discretize transforms in memory
            if args.holdout:
                cut = int(round(X.shape[0] * (1 - args.holdout)))
                X, Xt, y, yt = X[:cut], X[cut:], y[:cut], y[cut:]
        else:
            stream = train
        if args.test:
            Xt, yt, _, _ = _file_data(args, [args.test], n_features).read(binary=True)
        source = f"{', '.join(args.paths)} ({train.format})"
    else:
        rows, test_rows = args.rows, args.test_rows
        n_features = args.n_features or 2**20
        X, y = make_ctr(rows + test_rows, n_features=n_features, nnz=100, random_state=args.seed)
        X, Xt, y, yt = X[:rows], X[rows:], y[:rows], y[rows:]
        source = f"make_ctr (synthetic Twitter-like), {rows:,} train / {test_rows:,} test rows"
    discretizer = None
    if args.discretize:
        X, Xt, discretizer = _discretize(args, X, Xt)
    n_features = None if args.paths else args.n_features
    if discretizer is not None:
        n_features = 2**args.discretize_bits
    clf, arch = _estimator(args, n_features)
    if stream is None:
        print(f"data: {source}: {X.shape[0]:,} rows, {X.shape[1]:,} features, {X.nnz / max(X.shape[0], 1):.1f} non-zeros/row")
    else:
        print(f"data: {source}, streamed in windows of {stream.window:,} rows"
              + (f", cache {stream.cache}" if stream.cache else ""))
    print(f"model: {arch}, {clf.optimizer} lr={clf.learning_rate}, batch {args.batch_size}, {args.epochs} epoch(s), "
          f"threads={args.threads or 'all'}")
    start = time.perf_counter()
    wants_curve = args.plot or args.eval_every or args.early_stopping
    eval_set = (Xt, yt) if Xt is not None and (args.epochs > 1 or wants_curve) else None
    if (args.eval_every or args.early_stopping) and eval_set is None:
        raise ValueError("--eval-every and --early-stopping need test data (--test PATH)")
    if stream is not None:
        clf.fit(stream, eval_set=eval_set)
    else:
        clf.fit(X, y, eval_set=eval_set, eval_every=args.eval_every, early_stopping_rounds=args.early_stopping,
                checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume)
    wall = time.perf_counter() - start
    train_seconds = clf.history_[-1]["seconds"]
    samples = clf.history_[-1]["samples"]
    extra = ""
    if stream is not None:
        extra = f"; reader wait {sum(h.get('reader_wait_seconds', 0) for h in clf.history_):.2f} s"
        if hasattr(clf, "collision_rate_"):
            extra += f"; hashed-id collision rate {clf.collision_rate_:.2%}"
    print(f"trained {samples:,} samples in {train_seconds:.2f} s: {samples / train_seconds:,.0f} samples/s "
          f"(train loss {clf.history_[-1]['train_loss']:.4f}; {wall:.2f} s with setup{extra})")
    if Xt is not None:
        _report(clf, Xt, yt, "test")
    elif X is not None:
        _report(clf, X, y, "train (no --test given)")
    else:
        print("no test data: give --test PATH or --holdout FRACTION for test logloss / AUC / RCE")
    if args.save:
        clf.save(args.save)
        print(f"saved {args.save}")
        if discretizer is not None:
            discretizer.save(_discretizer_path(args.save))
            print(f"saved {_discretizer_path(args.save)}")
    if args.plot:
        from .plotting import plot_history
        plot_history(clf.history_, args.plot, title=arch)
        print(f"wrote {args.plot}")
    return 0


def _predictor_and_data(args):
    model = Predictor(args.model, threads=args.threads)
    data = FileData(args.data, format=args.format, bits=args.bits, label=args.label, numeric=_split(args.numeric),
                    categorical=_split(args.categorical), ignore=_split(args.ignore), delimiter=args.delimiter)
    n_features = None if data.format != "svmlight" or os.path.exists(_discretizer_path(args.model)) else model.n_features
    X, y, _, _ = data.read(binary=model.task == "binary", n_features=n_features)
    if os.path.exists(_discretizer_path(args.model)):  # the model was trained with --discretize
        disc = load_discretizer(_discretizer_path(args.model))
        X = disc.transform(X)
    if X.shape[1] != model.n_features:
        raise ValueError(f"the data has {X.shape[1]} features (ids) but the model has n_features={model.n_features}; "
                         f"use the --bits the model was trained with")
    return model, X, y


def cmd_predict(args):
    model, X, _ = _predictor_and_data(args)
    start = time.perf_counter()
    scores = model.predict_proba(X)[:, 1] if model.task == "binary" else model.decision_function(X)
    seconds = time.perf_counter() - start
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w")
    try:
        np.savetxt(out, scores, fmt="%.7g")
    finally:
        if out is not sys.stdout:
            out.close()
    if out is not sys.stdout:
        print(f"wrote {X.shape[0]:,} predictions to {args.output} ({X.shape[0] / max(seconds, 1e-9):,.0f} rows/s)")
    return 0


def cmd_eval(args):
    model, X, y = _predictor_and_data(args)
    if model.task != "binary":
        pred = model.decision_function(X)
        print(f"rows {X.shape[0]:,}  mse {float(np.mean((pred - y) ** 2)):.6g}")
        return 0
    y01 = np.asarray(y, dtype=np.float32)  # read as 0/1 (labels -1/+1 become 0/1)
    p = model.predict_proba(X)[:, 1]
    line = f"rows {X.shape[0]:,}  logloss {metrics.logloss(y01, p):.4f}"
    if 0 < y01.sum() < y01.size:
        line += (f"  AUC {metrics.roc_auc(y01, p):.4f}  PR-AUC {metrics.pr_auc(y01, p):.4f}"
                 f"  RCE {metrics.rce(y01, p):.2f}  calibration {metrics.calibration(y01, p):.3f}")
    print(line)
    return 0


def _reader_options(p):
    p.add_argument("--format", default=None, choices=["svmlight", "vw", "criteo", "csv"])
    p.add_argument("--bits", type=int, default=20)
    for name in ("--label", "--numeric", "--categorical", "--ignore", "--delimiter"):
        p.add_argument(name)


def _model_options(p):
    p.add_argument("--model", default="mlp", choices=["lr", "mlp"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.01 for lr, 0.001 for mlp)")
    p.add_argument("--optimizer", default="lazy_adam", choices=["sgd", "lazy_adam", "adagrad", "ftrl"])
    p.add_argument("--threads", type=int, default=0, help="worker threads, 0 = all cores (default)")
    p.add_argument("--parallel", default="hogwild", choices=["hogwild", "columns"],
                   help="hogwild: threads train their own batches lock-free; columns: threads split each batch's "
                        "parameters by id (bit-identical for any --threads)")
    p.add_argument("--sparse-width", type=int, default=50)
    p.add_argument("--hidden", default="64,16", help="dense layer sizes, e.g. 64,16 (or 'none')")
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--no-normalize", action="store_true", help="turn off online max-abs normalization")
    p.add_argument("--n-features", type=int, default=None, help="feature id space (default: from the data, 2^20 synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="cuda: train on the GPU (data read into memory); auto: the GPU when there is one")


def cmd_train_distributed(args):
    from . import distributed

    clf, arch = _estimator(args, args.n_features, verbose=0)
    print(f"model: {arch}, {clf.optimizer} lr={clf.learning_rate}, batch {args.batch_size}, {args.epochs} epoch(s); "
          f"{args.mode} on Ray ({args.address}): {args.workers} workers"
          + (f", {args.shards} shards" if args.mode == "parameter_server" else f", sync every {args.sync_every} batches"))
    data = FileData(args.paths, format=args.format, bits=args.bits, n_features=args.n_features, label=args.label,
                    numeric=_split(args.numeric), categorical=_split(args.categorical), ignore=_split(args.ignore),
                    delimiter=args.delimiter)
    clf = distributed.train(clf, data, mode=args.mode,
                            workers=args.workers, shards=args.shards, staleness=args.staleness,
                            sync_every=args.sync_every, checkpoint_dir=args.checkpoint_dir, address=args.address)
    stats = clf.distributed_stats_
    print(f"trained {clf.history_[-1]['samples']:,} samples in {stats['seconds']:.2f} s: "
          f"{stats['samples_per_second']:,.0f} samples/s in all (train loss {stats['train_loss']:.4f})")
    for w, ws in enumerate(stats["workers"]):
        moved = "".join(f", {k.replace('_per_batch', '').replace('_', ' ')} {v / 1e3:,.1f} kB/batch"
                        for k, v in ws.items() if k.startswith("bytes_"))
        print(f"  worker {w}: {ws['samples_per_second']:,.0f} samples/s{moved}")
    if args.test:
        Xt, yt, _, _ = FileData([args.test], format=args.format, bits=args.bits,
                                n_features=clf.n_features_in_).read(binary=True)
        _report(clf, Xt, yt, "test")
    if args.save:
        clf.save(args.save)
        print(f"saved {args.save}")
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="sparselin", description="Fast sparse LR / MLP training for CTR data.")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model and print test logloss / AUC / RCE and samples/s",
                       description="With no PATH, trains the reference MLP on built-in synthetic Twitter-like data.")
    t.add_argument("paths", nargs="*", metavar="PATH", help="training file(s) or globs, streamed (gzip ok)")
    t.add_argument("--test", metavar="PATH", help="test file (same format), read into memory")
    t.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="read PATHs into memory and test on their last FRACTION of rows")
    t.add_argument("--format", default=None, choices=["svmlight", "vw", "criteo", "csv"],
                   help="default: from the extension (.svm/.libsvm, .vw, .tsv = Criteo, .csv) or the first line")
    t.add_argument("--bits", type=int, default=20, help="hashed formats: ids in [0, 2^bits) (default 20)")
    t.add_argument("--window", type=int, default=65536, help="rows per shuffle window when streaming")
    t.add_argument("--cache", metavar="PATH", help="binary cache of the parsed rows, reused by later epochs/runs")
    t.add_argument("--label", help="CSV label column (default: label or click)")
    t.add_argument("--numeric", help="CSV numeric columns, comma-separated")
    t.add_argument("--categorical", help="CSV categorical columns (default: all others)")
    t.add_argument("--ignore", help="CSV columns to skip, comma-separated")
    t.add_argument("--delimiter", help="CSV delimiter (default ,)")
    _model_options(t)
    t.add_argument("--rows", type=int, default=200_000, help="synthetic training rows")
    t.add_argument("--test-rows", type=int, default=50_000, help="synthetic test rows")
    t.add_argument("--save", metavar="MODEL", help="write the trained model (safetensors)")
    t.add_argument("--discretize", type=int, default=None, metavar="N_BINS",
                   help="train on percentile-bin features of the continuous features (twml's PercentileDiscretizer), "
                        "data read into memory; with --save the discretizer goes to MODEL.discretizer.safetensors")
    t.add_argument("--discretize-rows", type=int, default=100_000, metavar="ROWS",
                   help="training rows sampled to calibrate the bins (default 100000)")
    t.add_argument("--discretize-bits", type=int, default=22, metavar="BITS",
                   help="the discretized id space is 2^BITS (default 22)")
    t.add_argument("--eval-every", type=int, default=None, metavar="SAMPLES", help="evaluate on the test data this often")
    t.add_argument("--early-stopping", type=int, default=None, metavar="ROUNDS",
                   help="stop when test logloss has not improved for this many evaluations")
    t.add_argument("--checkpoint", metavar="PREFIX", help="write checkpoints PREFIX-<samples>.safetensors")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="SAMPLES")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --checkpoint")
    t.add_argument("--plot", metavar="PNG", help="draw learning curves (needs matplotlib)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("train-distributed", help="train on a Ray cluster (parameter server or model averaging)",
                       description="Trains on Ray actors; needs pip install 'sparselin[ray]'. Each worker reads its "
                                   "share of the files into memory.")
    d.add_argument("paths", nargs="+", metavar="PATH", help="training file(s) or globs (gzip ok)")
    _reader_options(d)
    d.add_argument("--test", metavar="PATH", help="test file (same format)")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--shards", type=int, default=2, help="parameter-server shards (mode parameter_server)")
    d.add_argument("--mode", default="parameter_server", choices=["parameter_server", "average"])
    d.add_argument("--address", default="local",
                   help="'local' starts a private cluster on 127.0.0.1; 'auto' or ray://HOST:PORT joins one")
    d.add_argument("--staleness", type=int, default=2, help="pushes in flight per worker (parameter_server)")
    d.add_argument("--sync-every", type=int, default=16, help="batches between averagings (average)")
    d.add_argument("--checkpoint-dir", metavar="DIR", help="shard / sync checkpoints (shared storage on a cluster)")
    d.add_argument("--save", metavar="MODEL", help="write the trained model (safetensors)")
    _model_options(d)
    d.set_defaults(func=cmd_train_distributed)

    b = sub.add_parser("bench", help="the talk's table: samples/s of sparselin, the dense baseline and peers",
                       add_help=False)
    b.set_defaults(func=None)

    p = sub.add_parser("predict", help="write one prediction per row of an svmlight file")
    p.add_argument("model", help="a model saved with save() or --save, or a checkpoint")
    p.add_argument("data", help="data file (any format; see train --format)")
    _reader_options(p)
    p.add_argument("-o", "--output", help="output file (default: standard output)")
    p.add_argument("--threads", type=int, default=0, help="0 = all cores (default)")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("eval", help="print logloss, AUC, PR-AUC, RCE and calibration of a model on a file")
    e.add_argument("model")
    e.add_argument("data", help="data file (any format; see train --format)")
    _reader_options(e)
    e.add_argument("--threads", type=int, default=0, help="0 = all cores (default)")
    e.set_defaults(func=cmd_eval)
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, ModelFileError) as e:
        print(f"sparselin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
