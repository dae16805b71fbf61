"""``sparselin bench``: the talk's table on this machine, with peers measured in the same run on
the same data (make_ctr, Twitter-like), the same threads and the same batch sizes.

Each cell is the median samples/s over ``--repeats`` epochs from a fresh model (training time
of the epoch, data in memory) with the test logloss / AUC of the last run beside it. The table
is measured in ``--repeats`` rounds, each running every cell once (Vowpal Wabbit's runs come
after them, in a row), so that a slow stretch of a noisy machine does not fall on all the runs
of one cell. Rows:
sparselin optimized (Hogwild; columns mode on several threads; and with ``normalize=False`` on the
peers' scaled rows, the same input and work as theirs), the talk's dense baseline
(sparse x dense matmul forward, dense gradient, dense optimizer step over the whole table: our
own kernel, run on fewer rows since it is slow), the talk's approach A (each batch split by rows
between threads, gradients summed per id) on several threads, and, when installed, PyTorch
(``EmbeddingBag(sparse=True)`` + ``SparseAdam``), TensorFlow (``tf.nn.embedding_lookup_sparse``
+ Lazy Adam), scikit-learn ``SGDClassifier`` and Vowpal Wabbit. Peers get per-feature max-abs scaled values (fitted on the training rows, not timed):
the same scale sparselin's online normalization reaches. Ends with a memory roofline line.

    sparselin bench [--rows 200000] [--repeats 3] [--batch-sizes 256,512,1024] [--md FILE] [--png FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import metrics
from .datasets import make_ctr
from .estimators import SparseLogisticRegression, SparseMLPClassifier

N_FEATURES = 2**20
# sparselin trained as the peers are: on their max-abs scaled rows, without online normalization.
NO_NORM = "sparselin normalize=False (peers' scaled input)"


def _quality(y, p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return metrics.logloss(y, p), metrics.roc_auc(y, p)


class Data:
    def __init__(self, rows, test_rows, seed=0):
        X, y = make_ctr(rows + test_rows, n_features=N_FEATURES, random_state=seed)
        self.X, self.y = X[:rows], y[:rows]
        self.Xt, self.yt = X[rows:], y[rows:]
        scale = np.zeros(N_FEATURES, np.float32)
        np.maximum.at(scale, self.X.indices, np.abs(self.X.data))
        scale[scale == 0] = 1.0
        self.scale = scale
        self._scaled = None

    def scaled_pair(self):
        """The training and test rows max-abs scaled as the peers get them (computed once)."""
        if self._scaled is None:
            self._scaled = self.scaled(self.X), self.scaled(self.Xt)
        return self._scaled

    def scaled(self, X):
        Xs = X.copy()
        Xs.data = Xs.data / self.scale[Xs.indices]
        return Xs


def bench_sparselin(data, model, batch, threads, parallel, optimizer, repeats, normalize=True):
    """``normalize=False`` trains without online normalization on the peers' scaled rows: the
    same input and the same work as theirs."""
    X, Xt = (data.X, data.Xt) if normalize else data.scaled_pair()
    rates = []
    for _ in range(repeats):
        kw = dict(n_features=N_FEATURES, batch_size=batch, threads=threads, parallel=parallel, optimizer=optimizer,
                  normalize=normalize, random_state=0)
        if optimizer == "sgd":
            # LR: at 0.5, 2 Hogwild threads (each step's gradient one step stale) sometimes
            # trained to a test logloss of 0.39-1.35 where one thread gets 0.355; at 0.25 both
            # get 0.363 (batch 512, peers' input).
            kw["learning_rate"] = 0.25 if model == "LR" else 0.05
        clf = (SparseLogisticRegression if model == "LR" else SparseMLPClassifier)(**kw)
        clf.fit(X, data.y)
        rates.append(X.shape[0] / clf.history_[-1]["seconds"])
    return statistics.median(rates), _quality(data.yt, clf.predict_proba(Xt)[:, 1])


def bench_baseline(data, model, batch, threads, rows):
    from . import _core
    X, y = data.X[:rows], data.y[:rows]
    clf = (SparseLogisticRegression if model == "LR" else SparseMLPClassifier)(n_features=N_FEATURES, random_state=0)
    clf._check_hyperparameters()
    clf._model = clf._new_model(N_FEATURES)
    _, seconds = clf._model.fit_comparison("dense_baseline", X.indptr, X.indices, X.data, N_FEATURES, y, batch, threads)
    clf.classes_ = np.array([0.0, 1.0], dtype=np.float32)
    clf.n_features_in_ = N_FEATURES
    return rows / seconds, _quality(data.yt, clf.predict_proba(data.Xt)[:, 1])


def bench_row_partitioned(data, model, batch, threads, repeats):
    """The talk's approach A: each batch split by rows between threads, gradients summed per id."""
    rates = []
    for _ in range(repeats):
        clf = (SparseLogisticRegression if model == "LR" else SparseMLPClassifier)(n_features=N_FEATURES, random_state=0)
        clf._check_hyperparameters()
        clf._model = clf._new_model(N_FEATURES)
        _, seconds = clf._model.fit_comparison("row_partitioned", data.X.indptr, data.X.indices, data.X.data, N_FEATURES,
                                               data.y, batch, threads)
        rates.append(data.X.shape[0] / seconds)
    clf.classes_ = np.array([0.0, 1.0], dtype=np.float32)
    clf.n_features_in_ = N_FEATURES
    return statistics.median(rates), _quality(data.yt, clf.predict_proba(data.Xt)[:, 1])


def bench_torch(data, model, batch, threads, repeats):
    import torch
    torch.set_num_threads(threads)
    Xs, Xts = data.scaled_pair()

    def make():
        torch.manual_seed(0)
        width = 1 if model == "LR" else 50
        bag = torch.nn.EmbeddingBag(N_FEATURES, width, mode="sum", sparse=True)
        if model == "LR":
            torch.nn.init.zeros_(bag.weight)
            head = torch.nn.Linear(1, 1)
            torch.nn.init.ones_(head.weight)
            head.weight.requires_grad_(False)
        else:
            torch.nn.init.uniform_(bag.weight, -1 / np.sqrt(width), 1 / np.sqrt(width))
            head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(50, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 1))
        lr = 0.01 if model == "LR" else 1e-3
        opts = [torch.optim.SparseAdam(list(bag.parameters()), lr=lr),
                torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)]
        return bag, head, opts

    def batches(X, order):
        for s in range(0, X.shape[0], batch):
            rows = order[s:s + batch]
            sub = X[rows]
            yield (torch.from_numpy(sub.indices.astype(np.int64)), torch.from_numpy(sub.indptr[:-1].astype(np.int64)),
                   torch.from_numpy(sub.data.astype(np.float32)), rows)

    rates = []
    for r in range(repeats):
        bag, head, opts = make()
        order = np.random.default_rng(r).permutation(Xs.shape[0])
        y = torch.from_numpy(data.y.astype(np.float32))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        t = time.perf_counter()
        for idx, off, w, rows in batches(Xs, order):
            z = head(bag(idx, off, per_sample_weights=w)).squeeze(1)
            loss = loss_fn(z, y[rows])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
        rates.append(Xs.shape[0] / (time.perf_counter() - t))
    with torch.no_grad():
        preds = []
        for idx, off, w, _ in batches(Xts, np.arange(Xts.shape[0])):
            preds.append(torch.sigmoid(head(bag(idx, off, per_sample_weights=w)).squeeze(1)).numpy())
    return statistics.median(rates), _quality(data.yt, np.concatenate(preds))


def bench_tensorflow(data, model, batch_sizes, threads, repeats, workdir):
    """TensorFlow ``tf.nn.embedding_lookup_sparse`` + Lazy Adam (TF's LazyAdamOptimizer rule:
    only the rows of the batch move, their moments decay only then; written out with
    ``tf.unique`` and scatter updates, since Keras 3 has no LazyAdam), in a subprocess per thread
    count: TF fixes its thread pools when it starts. Returns [(samples/s, (logloss, auc))] per
    batch size."""
    path = os.path.join(workdir, "tf_data.npz")
    if not os.path.exists(path):
        Xs, Xts = data.scaled_pair()
        np.savez(path, indptr=Xs.indptr, indices=Xs.indices, values=Xs.data, y=data.y, t_indptr=Xts.indptr,
                 t_indices=Xts.indices, t_values=Xts.data, t_y=data.yt)
    out = os.path.join(workdir, f"tf_{model}_{threads}.npz")
    args = [sys.executable, "-c", "import sys; from sparselin.bench import _tensorflow_worker as w; w(*sys.argv[1:])",
            path, out, model, ",".join(map(str, batch_sizes)), str(threads), str(repeats)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    r = np.load(out)
    return [(float(rate), (float(ll), float(auc))) for rate, ll, auc in r["cells"]]


def _tensorflow_worker(path, out, model, batch_sizes, threads, repeats):
    import tensorflow as tf
    threads, repeats = int(threads), int(repeats)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    d = dict(np.load(path))  # NpzFile re-reads an array from the archive at each access
    width = 1 if model == "LR" else 50
    lr = 0.01 if model == "LR" else 1e-3
    b1, b2, eps = 0.9, 0.999, 1e-7

    def split(indptr, indices, values, rows):
        starts = indptr[rows]
        lengths = indptr[rows + 1] - starts
        row_of = np.repeat(np.arange(len(rows)), lengths)
        pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = starts[row_of] + pos
        coords = np.stack([row_of, pos], 1).astype(np.int64)
        shape = [len(rows), int(lengths.max()) if len(rows) else 0]
        return (tf.SparseTensor(coords, indices[flat].astype(np.int64), shape),
                tf.SparseTensor(coords, values[flat].astype(np.float32), shape))

    def run(batch, seed):
        rng = np.random.default_rng(seed)
        if model == "LR":
            emb = tf.Variable(tf.zeros([N_FEATURES, 1]))
            dense = [tf.Variable(tf.zeros([1]))]
        else:
            a = 1 / np.sqrt(width)
            emb = tf.Variable(rng.uniform(-a, a, (N_FEATURES, width)).astype(np.float32))
            dense = []
            for n_in, n_out in ((50, 64), (64, 16), (16, 1)):
                g = np.sqrt(6 / (n_in + n_out))
                dense += [tf.Variable(rng.uniform(-g, g, (n_in, n_out)).astype(np.float32)), tf.Variable(tf.zeros([n_out]))]
        m, v = tf.Variable(tf.zeros_like(emb)), tf.Variable(tf.zeros_like(emb))
        dm = [tf.Variable(tf.zeros_like(p)) for p in dense]
        dv = [tf.Variable(tf.zeros_like(p)) for p in dense]
        step = tf.Variable(0.0)

        def forward(sp_ids, sp_w):
            h = tf.nn.embedding_lookup_sparse(emb, sp_ids, sp_w, combiner="sum")
            if model == "LR":
                return h[:, 0] + dense[0]
            for k in range(0, len(dense), 2):
                h = tf.matmul(tf.nn.relu(h), dense[k]) + dense[k + 1]
            return h[:, 0]

        sparse_spec = tf.SparseTensorSpec(shape=[None, None], dtype=tf.int64)
        weight_spec = tf.SparseTensorSpec(shape=[None, None], dtype=tf.float32)

        @tf.function(input_signature=[sparse_spec, weight_spec, tf.TensorSpec([None], tf.float32)])
        def train_step(sp_ids, sp_w, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=forward(sp_ids, sp_w)))
            grads = tape.gradient(loss, [emb] + dense)
            step.assign_add(1.0)
            lr_t = lr * tf.sqrt(1 - b2 ** step) / (1 - b1 ** step)
            g = grads[0]
            rows, slot = tf.unique(g.indices)
            g = tf.math.unsorted_segment_sum(g.values, slot, tf.shape(rows)[0])
            m_rows = b1 * tf.gather(m, rows) + (1 - b1) * g
            v_rows = b2 * tf.gather(v, rows) + (1 - b2) * g * g
            m.scatter_update(tf.IndexedSlices(m_rows, rows))
            v.scatter_update(tf.IndexedSlices(v_rows, rows))
            emb.scatter_sub(tf.IndexedSlices(lr_t * m_rows / (tf.sqrt(v_rows) + eps), rows))
            for p, gp, mp, vp in zip(dense, grads[1:], dm, dv):
                mp.assign(b1 * mp + (1 - b1) * gp)
                vp.assign(b2 * vp + (1 - b2) * gp * gp)
                p.assign_sub(lr_t * mp / (tf.sqrt(vp) + eps))
            return loss

        n = d["y"].size
        order = rng.permutation(n)
        y = d["y"].astype(np.float32)
        t = time.perf_counter()
        for s in range(0, n, batch):
            rows = order[s:s + batch]
            sp_ids, sp_w = split(d["indptr"], d["indices"], d["values"], rows)
            train_step(sp_ids, sp_w, tf.constant(y[rows]))
        rate = n / (time.perf_counter() - t)
        preds = []
        nt = d["t_y"].size
        for s in range(0, nt, 4096):
            sp_ids, sp_w = split(d["t_indptr"], d["t_indices"], d["t_values"], np.arange(s, min(s + 4096, nt)))
            preds.append(tf.sigmoid(forward(sp_ids, sp_w)).numpy())
        return rate, _quality(d["t_y"], np.concatenate(preds))

    cells = []
    for batch in map(int, batch_sizes.split(",")):
        runs = [run(batch, r) for r in range(repeats)]
        cells.append((statistics.median(r for r, _ in runs), *runs[-1][1]))
    np.savez(out, cells=np.array(cells))


def _installed(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def bench_sklearn(data, repeats):
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    Xs, Xts = data.scaled_pair()
    rates = []
    for r in range(repeats):
        clf = SGDClassifier(loss="log_loss", max_iter=1, tol=None, random_state=r, alpha=1e-6)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Xs, data.y)
        rates.append(Xs.shape[0] / (time.perf_counter() - t))
    return statistics.median(rates), _quality(data.yt, clf.predict_proba(Xts)[:, 1])


def bench_vw(data, repeats):
    from vowpalwabbit import Workspace
    Xs, Xts = data.scaled_pair()
    with tempfile.TemporaryDirectory() as d:
        def write(path, X, y):
            with open(path, "w") as f:
                for r in range(X.shape[0]):
                    s, e = X.indptr[r], X.indptr[r + 1]
                    f.write(f"{1 if y[r] > 0 else -1} |f " + " ".join(f"{i}:{v:.6g}" for i, v in
                                                                       zip(X.indices[s:e], X.data[s:e])) + "\n")
        train, test = os.path.join(d, "train.vw"), os.path.join(d, "test.vw")
        write(train, Xs, data.y)
        write(test, Xts, data.yt)
        rates = {}
        model = os.path.join(d, "m.vw")
        for source, args in (("text", f"-d {train}"), ("cache", f"-d {train} -c --cache_file {d}/c.cache")):
            if source == "cache":  # build the cache once, then time a run that reads it
                Workspace(f"{args} --loss_function logistic -b 20 --quiet").finish()
            runs = []
            for _ in range(repeats):
                t = time.perf_counter()
                Workspace(f"{args} --loss_function logistic -b 20 --quiet -f {model}").finish()
                runs.append(Xs.shape[0] / (time.perf_counter() - t))
            rates[source] = statistics.median(runs)
        preds = os.path.join(d, "p.txt")
        Workspace(f"-t -i {model} -d {test} -p {preds} --quiet").finish()
        z = np.loadtxt(preds)
        p = 1 / (1 + np.exp(-z))
    return rates, _quality(data.yt, p)


def memory_bandwidth():
    a = np.ones(2**26, np.float32)  # 256 MiB
    b = np.empty_like(a)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best


def distinct_in_order(ids):
    """The distinct ids in the order of their first occurrence, the order in which the model's
    update visits a batch's rows (np.unique's sorted order would walk memory ascending, which
    runs 11-14% faster and so would flatter the bound)."""
    _, first = np.unique(ids, return_index=True)
    return np.asarray(ids)[np.sort(first)]


def roofline(data, batch, rate, threads):
    """Two bounds for the reference MLP with Lazy Adam at one thread. Bandwidth: the bytes of
    weights and optimizer state it touches per sample (W, m, v of each distinct row of a batch,
    read and written; max_abs, feature bias and its m, v of each non-zero) over the measured copy
    bandwidth. Random rows: the rate of plain Adam row updates (no atomics, checks or undo log;
    rows prefetched ahead as the model's update does) on the batches' own distinct rows of a
    2^20 x 50 table on huge pages as the model's, in the model's first-seen order, over the
    distinct rows per sample; the update alone, before any forward or backward work."""
    from . import _core
    X = data.X[:20 * batch]
    ids = [distinct_in_order(X[s:s + batch].indices).astype(np.uint64).tolist() for s in range(0, X.shape[0], batch)]
    unique = np.mean([len(i) for i in ids]) / batch
    nnz = X.nnz / X.shape[0]
    per_sample = unique * 50 * 4 * 3 * 2 + nnz * 4 * 5
    bw = memory_bandwidth()
    bound = bw / per_sample
    row_rate = _core.adam_row_roofline(N_FEATURES, 50, ids, 3)
    row_bound = row_rate / unique
    return (f"roofline (MLP, batch {batch}, {threads} thread(s)): {per_sample / 1024:.1f} KiB of weights and optimizer "
            f"state per sample ({unique:.1f} distinct rows x 50 x W/m/v, read+write; {nnz:.0f} non-zeros x "
            f"normalization state) at {bw / 1e9:.1f} GB/s copy bandwidth = {bound:,.0f} samples/s; plain Adam "
            f"updates of those rows at random run at {row_rate / 1e6:.2f}M rows/s = {row_bound:,.0f} samples/s for the "
            f"update alone; measured {rate:,.0f} = {100 * rate / bound:.0f}% of the first, {100 * rate / row_bound:.0f}% "
            f"of the second")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="sparselin bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="256,512,1024")
    ap.add_argument("--threads", type=int, default=0, help="the 'all threads' column (0 = all cores)")
    ap.add_argument("--baseline-rows", type=int, default=8192, help="rows for the slow dense baseline")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--md", help="also write the markdown table here")
    ap.add_argument("--png", help="bar chart of samples/s at batch 512 (needs matplotlib)")
    args = ap.parse_args(argv)
    all_threads = args.threads or os.cpu_count() or 1
    thread_list = sorted({1, all_threads})
    batches = [int(b) for b in args.batch_sizes.split(",")]
    data = Data(args.rows, args.test_rows)
    lines = [f"make_ctr: {args.rows:,} train / {args.test_rows:,} test rows, 2^20 features, "
             f"{data.X.nnz / data.X.shape[0]:.0f} non-zeros/row; {platform.machine()} {os.cpu_count()} cores; "
             f"{time.strftime('%Y-%m-%d')}; median of {args.repeats}",
             "",
             "| system | model | optimizer | threads | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|---|" + "---|" * len(batches)]
    chart = {}

    def row(system, model, opt, threads, cells):
        text = " | ".join(f"{r:,.0f} ({ll:.4f} / {auc:.4f})" for r, (ll, auc) in cells)
        lines.append(f"| {system} | {model} | {opt} | {threads} | {text} |")
        print(lines[-1], flush=True)
        if 512 in batches:
            chart[f"{system} {model} {opt} {threads}t"] = cells[batches.index(512)][0]

    print("\n".join(lines), flush=True)
    # Rows in table order: (system, model, optimizer, threads, measure); `measure()` runs each cell
    # of the row once and returns [(samples/s, (logloss, auc))] per batch size (None: a line that
    # says a peer is not installed).
    plan = []
    tf_workdir = tempfile.TemporaryDirectory()  # TensorFlow's copy of the data, written once
    workdir = tf_workdir.name

    def add(system, model, opt, threads, measure):
        plan.append((system, model, opt, threads, measure))

    for model in ("LR", "MLP"):
        for threads in thread_list:
            for parallel in (("hogwild", "columns") if threads > 1 else ("hogwild",)):
                name = "sparselin" if parallel == "hogwild" else "sparselin (columns)"
                add(name, model, "lazy_adam", threads, lambda model=model, threads=threads, parallel=parallel:
                    [bench_sparselin(data, model, b, threads, parallel, "lazy_adam", 1) for b in batches])
            if threads > 1:
                add("row-partitioned batches (talk's approach A)", model, "lazy_adam", threads,
                    lambda model=model, threads=threads: [bench_row_partitioned(data, model, b, threads, 1) for b in batches])
        for threads in thread_list:
            add(NO_NORM, model, "lazy_adam", threads, lambda model=model, threads=threads:
                [bench_sparselin(data, model, b, threads, "hogwild", "lazy_adam", 1, normalize=False) for b in batches])
        if model == "LR":
            for normalize in (True, False):
                for threads in thread_list:
                    add("sparselin" if normalize else NO_NORM, "LR", "sgd", threads, lambda threads=threads, normalize=normalize:
                        [bench_sparselin(data, "LR", b, threads, "hogwild", "sgd", 1, normalize=normalize) for b in batches])
        for threads in thread_list:
            add(f"dense baseline ({args.baseline_rows:,} rows)", model, "adam", threads, lambda model=model, threads=threads:
                [bench_baseline(data, model, b, threads, args.baseline_rows) for b in batches])
        if not args.no_peers:
            if _installed("torch"):
                for threads in thread_list:
                    add("PyTorch EmbeddingBag+SparseAdam", model, "sparse_adam", threads, lambda model=model, threads=threads:
                        [bench_torch(data, model, b, threads, 1) for b in batches])
            else:
                add(f"PyTorch | {model} | not installed", None, None, None, None)
            if _installed("tensorflow"):
                for threads in thread_list:
                    add("TensorFlow embedding_lookup_sparse+LazyAdam", model, "lazy_adam", threads,
                        lambda model=model, threads=threads: bench_tensorflow(data, model, batches, threads, 1, workdir))
            else:
                add(f"TensorFlow | {model} | not installed", None, None, None, None)
    if not args.no_peers:
        if _installed("sklearn"):
            add("scikit-learn SGDClassifier (per-sample SGD)", "LR", "sgd", 1, lambda: [bench_sklearn(data, 1)])
        else:
            add("scikit-learn | not installed", None, None, None, None)

    # The table is measured round by round: each round runs every row's cells once, and a cell is
    # the median of its rounds. A slow stretch of a noisy machine then falls on one run of many
    # cells, not on every run of one (a cell's runs back to back once put columns mode at 57% of
    # Hogwild on a machine where alternating runs measured 85-103%).
    runs = [[] for _ in plan]
    try:
        for round_ in range(args.repeats):
            for k, (system, model, opt, threads, measure) in enumerate(plan):
                if measure is not None:
                    runs[k].append(measure())
            print(f"(round {round_ + 1} of {args.repeats} done)", file=sys.stderr, flush=True)
    finally:
        tf_workdir.cleanup()
    for (system, model, opt, threads, measure), cells_by_run in zip(plan, runs):
        if measure is None:
            lines.append(f"| {system} |")
            continue
        cells = [(statistics.median(run[j][0] for run in cells_by_run), cells_by_run[-1][j][1]) for j in range(len(cells_by_run[0]))]
        if system.startswith("scikit-learn"):
            (rate, q), = cells
            lines.append(f"| {system} | LR | sgd | 1 | {rate:,.0f} ({q[0]:.4f} / {q[1]:.4f}) |")
            print(lines[-1], flush=True)
            chart["scikit-learn SGD LR 1t"] = rate
        else:
            row(system, model, opt, threads, cells)
    if not args.no_peers:
        # Vowpal Wabbit writes its input files once and then times its own repeats, in a row.
        try:
            rates, q = bench_vw(data, args.repeats)
            for source, rate in rates.items():
                lines.append(f"| Vowpal Wabbit ({source}) | LR | sgd | 1 | {rate:,.0f} ({q[0]:.4f} / {q[1]:.4f}) |")
                print(lines[-1], flush=True)
                chart[f"VW {source} LR 1t"] = rate
        except ImportError:
            lines.append("| Vowpal Wabbit | not installed |")
    if all_threads > 1 and 512 in batches:
        for model in ("LR", "MLP"):
            hog = chart.get(f"sparselin {model} lazy_adam {all_threads}t")
            cols = chart.get(f"sparselin (columns) {model} lazy_adam {all_threads}t")
            rows = chart.get(f"row-partitioned batches (talk's approach A) {model} lazy_adam {all_threads}t")
            if hog and cols and rows:
                lines += ["", f"{model}, batch 512, {all_threads} threads: columns (approach B) at {cols / hog:.0%} of Hogwild; "
                          f"approach B / approach A = {cols / rows:.2f} (the issue quotes ~37% for the talk)"]
                print(lines[-1], flush=True)
    mlp512 = chart.get("sparselin MLP lazy_adam 1t")
    if mlp512:
        lines += ["", roofline(data, 512, mlp512, 1)]
        print(lines[-1])
    lines += ["", "Cells: samples/s (test logloss / test AUC). Training time of one epoch, data in memory."]
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.png and chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(chart)
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
        ax.barh(names, [chart[n] for n in names], color=["C0" if n.startswith("sparselin") else "C7" for n in names])
        ax.set_xscale("log")
        ax.set_xlabel("training samples/s at batch 512 (log scale)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
