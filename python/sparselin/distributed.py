"""Training on many processes or machines with Ray (``pip install "sparselin[ray]"``).

Ray schedules the actors and moves the arrays; the math is sparselin's Rust core. Two modes:

``mode="parameter_server"`` (Downpour SGD / distributed Hogwild): the sparse table and its
optimizer state are split by ``id % shards`` across shard actors, each holding a Rust
``ParameterShard`` (threaded actor; pulls and pushes release the GIL and run Hogwild inside the
shard); the sparse bias and dense layers live on shard 0. Each worker actor trains on its part of
the data: per batch it pulls the distinct rows the batch uses, computes the gradients with the
same code as the single-process trainer, and pushes row gradients without waiting, keeping at
most ``staleness`` batches of pushes in flight.

``mode="average"`` (synchronous model averaging, like VW's allreduce): every worker trains its own
copy with Hogwild threads; every ``sync_every`` batches the copies are replaced by their average
(only changed rows travel). Deterministic given the seed when ``threads=1``.

Faults: worker and shard actors restart (``max_restarts``). A restarted shard reloads its last
checkpoint (written every ``checkpoint_every`` rounds); a restarted worker redoes its current
segment. In averaging mode all copies roll back to the last synchronized checkpoint and replay,
which gives the same model as a run without the fault. The result is an ordinary fitted
estimator: ``save`` writes a normal model file that ``sparselin.load`` reads.

Local clusters (``address="local"``) bind every Ray server to 127.0.0.1.
"""

from __future__ import annotations

import collections
import copy
import os
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from . import _core
from ._input import Csr
from .io import FileData

MODES = ("parameter_server", "average")


def _import_ray(local: bool):
    if local:
        # Ray picks the loopback address as the node IP, and binds its servers to it, only when
        # multi-node clustering is off; child processes read the variable, this process reads the
        # constant (already evaluated if ray was imported before).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise ImportError('sparselin.distributed needs Ray: pip install "sparselin[ray]"') from None
    if local:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


class _Cluster:
    """Connects to Ray (``address``: "local" starts a private single-machine cluster on
    127.0.0.1, "auto" or "ray://..." joins an existing one) and shuts down only what it started."""

    def __init__(self, address, num_cpus):
        self.local = address in (None, "local")
        self.ray = _import_ray(self.local)
        self.started = False
        if not self.ray.is_initialized():
            if self.local:
                self.ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                              log_to_driver=False, configure_logging=False)
            else:
                self.ray.init(address=address, log_to_driver=False)
            self.started = True

    def close(self):
        if self.started:
            self.ray.shutdown()

    def __enter__(self):
        return self.ray

    def __exit__(self, *exc):
        self.close()


def local_cluster(num_cpus=None):
    """A private Ray cluster on this machine, bound to 127.0.0.1, for several ``train`` calls:
    ``with local_cluster(): ...`` (shut down at the end; ``train`` reuses a running cluster).
    ``num_cpus`` is what Ray may schedule (each worker and shard takes ``worker_cpus`` /
    ``shard_cpus``); default: the machine's cores, and at least 8."""
    return _Cluster("local", num_cpus or max(os.cpu_count() or 1, 8))


def _check_resources(ray, needed):
    """On a single-machine cluster an actor that does not fit would wait forever: say so now."""
    if len(ray.nodes()) != 1:
        return  # a multi-node cluster may scale up
    deadline = time.monotonic() + 5  # actors of a previous run may still be releasing theirs
    while (free := ray.available_resources().get("CPU", 0.0)) + 1e-9 < needed and time.monotonic() < deadline:
        time.sleep(0.2)
    if free + 1e-9 < needed:
        raise ValueError(f"the Ray cluster has {free:g} CPUs free but the workers and shards need {needed:g}: "
                         "start it with more num_cpus, or pass smaller worker_cpus / shard_cpus")


# -- actors (plain classes, wrapped by ray.remote when used, so importing this module needs no Ray)

class ShardActor:
    """One parameter shard. Restarted by Ray after a crash, it reloads its last checkpoint."""

    def __init__(self, config_json, index, count, with_dense, checkpoint_path):
        import ray

        self.checkpoint_path = checkpoint_path
        self.restored = False
        if ray.get_runtime_context().was_current_actor_reconstructed and os.path.exists(checkpoint_path):
            with open(checkpoint_path, "rb") as f:
                self.shard = _core.ParameterShard.from_bytes(f.read())
            self.restored = True
        else:
            self.shard = _core.ParameterShard(config_json, index, count, with_dense)

    def pull(self, ids):
        return self.shard.pull(ids)

    def push(self, ids, row_grads, feat_bias_grads, max_abs):
        self.shard.push(ids, row_grads, feat_bias_grads, max_abs)

    def pull_dense(self):
        return self.shard.pull_dense()

    def push_dense(self, grads):
        self.shard.push_dense(grads)

    def checkpoint(self):
        self.shard.save(self.checkpoint_path)

    def to_bytes(self):
        return bytes(self.shard.to_bytes())

    def stats(self):
        return dict(self.shard.stats(), restored=self.restored, pid=os.getpid())


def _batch_order(seed, worker, epoch, n_rows):
    return np.random.default_rng([seed, worker, epoch]).permutation(n_rows).astype(np.uint32)


class PullWorkerActor:
    """A parameter-server worker: pulls the rows of each batch, computes, pushes. With
    ``prefetch`` the next batch's pulls are in flight while this batch computes (two core
    workers take turns), hiding the pull latency at the cost of one more step of staleness."""

    def __init__(self, config_json, index, shards, data, batch_size, seed, staleness, prefetch=True):
        self.index = index
        self.shards = shards
        self.csr, self.targets, self.weights = _read_part(data)
        self.batch_size = batch_size
        self.seed = seed
        self.staleness = staleness
        self.prefetch = prefetch
        self.workers = [_core.PullWorker(config_json, len(shards)) for _ in range(2 if prefetch else 1)]

    def n_batches(self):
        return -(-self.csr.n_rows // self.batch_size)

    def pid(self):
        return os.getpid()

    def _start(self, worker, rows):
        """Loads a batch into `worker` and sends its pulls; returns what `run` needs later."""
        c, n_shards = self.csr, len(self.shards)
        ids, offsets = worker.load_batch(c.indptr, c.indices, c.values, c.n_cols, self.targets, self.weights, rows)
        parts = [ids[offsets[s]:offsets[s + 1]] for s in range(n_shards)]
        refs = [sh.pull.remote(p) for sh, p in zip(self.shards, parts)] + [self.shards[0].pull_dense.remote()]
        return worker, rows, ids, offsets, parts, refs

    def run(self, epoch, first_batch, n_batches):
        """Trains batches [first_batch, first_batch + n_batches) of `epoch`; returns statistics."""
        import ray

        order = _batch_order(self.seed, self.index, epoch, self.csr.n_rows)
        c, bs, n_shards = self.csr, self.batch_size, len(self.shards)
        last = min(first_batch + n_batches, self.n_batches())
        pending = collections.deque()
        stats = collections.Counter()
        start = time.perf_counter()
        batch = self._start(self.workers[0], order[first_batch * bs:(first_batch + 1) * bs]) if first_batch < last else None
        for b in range(first_batch, last):
            worker, rows, ids, offsets, parts, refs = batch
            following = order[(b + 1) * bs:(b + 2) * bs] if b + 1 < last else None
            if self.prefetch and following is not None:
                batch = self._start(self.workers[(b + 1 - first_batch) % 2], following)
            t0 = time.perf_counter()
            pulled = ray.get(refs)
            stats["pull_seconds"] += time.perf_counter() - t0
            rows_w, fb, max_abs = (np.concatenate([p[k] for p in pulled[:n_shards]]) for k in range(3))
            dense = pulled[-1]
            t0 = time.perf_counter()
            loss = worker.compute(rows_w, fb, max_abs, dense)
            g, fbg, ma, dg = worker.gradients()
            stats["compute_seconds"] += time.perf_counter() - t0
            width = g.size // max(ids.size, 1)
            push = [sh.push.remote(parts[s], g[offsets[s] * width:offsets[s + 1] * width],
                                   fbg[offsets[s]:offsets[s + 1]] if fbg.size else fbg,
                                   ma[offsets[s]:offsets[s + 1]] if ma.size else ma)
                    for s, sh in enumerate(self.shards)]
            push.append(self.shards[0].push_dense.remote(dg))
            pending.append(push)
            while len(pending) > self.staleness:
                ray.get(pending.popleft())
            if not self.prefetch and following is not None:
                batch = self._start(self.workers[0], following)
            stats["batches"] += 1
            stats["samples"] += rows.size
            stats["loss_sum"] += loss * rows.size
            stats["unique_ids"] += ids.size
            stats["nnz"] += int(np.diff(c.indptr)[rows].sum())
            stats["bytes_pulled"] += ids.nbytes + rows_w.nbytes + fb.nbytes + max_abs.nbytes + dense.nbytes
            stats["bytes_pushed"] += ids.nbytes + g.nbytes + fbg.nbytes + ma.nbytes + dg.nbytes
        while pending:
            ray.get(pending.popleft())
        stats["seconds"] = time.perf_counter() - start
        return dict(stats)


class AveragingWorkerActor:
    """A model-averaging worker: trains its copy, sends what changed, applies the average."""

    def __init__(self, model_args, data, batch_size, threads, parallel, epochs):
        self.model = _core.SparseModel(*model_args)
        self.sync = _core.SyncPoint(self.model)
        self.csr, self.targets, self.weights = _read_part(data)
        self.batch_size, self.threads, self.parallel, self.epochs = batch_size, threads, parallel, epochs

    def n_batches(self):
        return -(-self.csr.n_rows // self.batch_size)

    def train_round(self, n_batches):
        c = self.csr
        start = time.perf_counter()
        r = self.model.fit(c.indptr, c.indices, c.values, c.n_cols, self.targets, self.weights, self.epochs,
                           self.batch_size, self.threads, True, None, n_batches, True, self.parallel)
        seconds = time.perf_counter() - start
        delta = self.sync.delta(self.model)
        loss = r["epoch_losses"][-1] if r["epoch_losses"] else float("nan")
        return delta, {"samples": r["samples"], "batches": r["batches"], "seconds": seconds,
                       "loss_sum": loss * r["samples"]}

    def apply(self, average):
        self.sync.apply(self.model, average)

    def model_bytes(self):
        return bytes(_core.model_to_bytes(self.model, ""))

    def position(self):
        return self.model.position

    def restore(self, model_bytes, position):
        self.model, _ = _core.model_from_bytes(model_bytes)
        self.model.set_position(*position)
        self.sync = _core.SyncPoint(self.model)

    def pid(self):
        return os.getpid()


# -- the driver

def _config_json(est, n_features):
    return _core.model_config_json(n_features, est._width(), est._hidden(), est._task, bool(est.normalize),
                                   est.optimizer, float(est.learning_rate), float(est.l1), float(est.l2), est._seed())


def _csr(X, n_features):
    X = sp.csr_matrix(X)
    return Csr(np.ascontiguousarray(X.indptr, np.int64), np.ascontiguousarray(X.indices, np.int64),
               np.ascontiguousarray(X.data, np.float32), X.shape[0], n_features)


def _read_part(part):
    """A worker's data: (Csr, targets, weights) as given, or read from its files."""
    if not isinstance(part[0], FileData):
        return part
    data, binary = part
    X, y, w, _ = data.read(binary=binary, n_features=data.n_features)
    if X.shape[0] == 0:
        raise ValueError(f"{', '.join(data.paths)}: no rows to train on")
    return _csr(X, data.n_features), np.ascontiguousarray(y, np.float32), w


def _worker_data(est, X, y, sample_weight, paths, format, bits, workers):
    """(one data part per worker, n_features); sets the estimator's fitted attributes (classes_,
    n_features_in_) as fit would. With at least one file per worker, each worker reads its own
    files; otherwise rows are dealt round-robin."""
    if paths is None and not isinstance(X, FileData):
        if X is None:
            raise ValueError("pass X and y, paths, or X=FileData(...)")
        csr, targets, weights = est._fit_inputs(X, y, sample_weight, reset=True)
        n_features = csr.n_cols if est.n_features is None else int(est.n_features)
        if csr.n_cols > n_features:
            raise ValueError(f"X has {csr.n_cols} columns but n_features={n_features}: ids must be < n_features")
        return _split_rows(csr._replace(n_cols=n_features), targets, weights, workers), n_features
    if (X is not None and paths is not None) or y is not None or sample_weight is not None:
        raise ValueError("with files (paths or X=FileData) the labels come from the files: pass y=None")
    data = copy.copy(X) if isinstance(X, FileData) else FileData(paths, format=format, bits=bits, n_features=est.n_features)
    if data.transform is not None:
        raise ValueError("distributed training reads files without a transform: discretize the files first")
    binary = est._task == "binary"
    if data.format == "svmlight":
        n_features, data.zero_based = data.resolve(data.n_features or est.n_features)
    else:
        n_features = 2**data.bits
    if est.n_features not in (None, n_features):
        raise ValueError(f"n_features={est.n_features} but the files hold ids in [0, {n_features})")
    data.n_features = n_features
    est.n_features_in_ = n_features
    if binary:
        est.classes_ = np.array([0, 1])
    if len(data.paths) >= workers:
        parts = []
        for w in range(workers):
            part = copy.copy(data)
            part.paths = data.paths[w::workers]
            parts.append((part, binary))
        return parts, n_features
    csr, targets, weights = _read_part((data, binary))
    return _split_rows(csr, targets, weights, workers), n_features


def _split_rows(csr: Csr, targets, weights, workers):
    """Worker w gets rows w, w + workers, ... (each part a sample of the whole, even when the
    rows are ordered by time)."""
    if csr.n_rows < workers:
        raise ValueError(f"{csr.n_rows} rows cannot be split between {workers} workers")
    X = sp.csr_matrix((csr.values, csr.indices, csr.indptr), shape=(csr.n_rows, csr.n_cols))
    parts = []
    for w in range(workers):
        Xw = X[w::workers]
        part = Csr(np.ascontiguousarray(Xw.indptr, np.int64), np.ascontiguousarray(Xw.indices, np.int64),
                   np.ascontiguousarray(Xw.data, np.float32), Xw.shape[0], csr.n_cols)
        parts.append((part, np.ascontiguousarray(targets[w::workers]),
                      None if weights is None else np.ascontiguousarray(weights[w::workers])))
    return parts


def _positive(name, value, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def train(estimator, X=None, y=None, *, sample_weight=None, paths=None, format=None, bits=20,
          mode="parameter_server", workers=2, shards=2, epochs=None, staleness=2, prefetch=False, segment_batches=64,
          sync_every=16, checkpoint_dir=None, checkpoint_every=10, max_restarts=3, address="local",
          worker_cpus=1, shard_cpus=1, callback=None):
    """Trains a copy of ``estimator`` (a SparseLogisticRegression / SparseMLPClassifier /
    SparseMLPRegressor with its hyper-parameters) on ``workers`` Ray actors and returns it fitted.

    Data: ``X, y`` (any input ``fit`` takes), ``paths`` (files of any supported ``format``) or
    ``X=FileData(...)`` (files with reader options). Rows are dealt to workers round-robin and each
    worker holds its part in memory.
    ``mode``: "parameter_server" (``shards`` shard actors; ``staleness``: pushes in flight per
    worker; ``prefetch=True``: pull the next batch's rows while this one computes, which hides
    the pull latency but adds a step of staleness (measured: lower AUC, see docs/distributed.md);
    workers run in segments of ``segment_batches`` batches) or "average" (copies averaged
    every ``sync_every`` batches). ``epochs`` defaults to ``estimator.epochs``.
    ``checkpoint_dir``: where shards and synchronized states are checkpointed every
    ``checkpoint_every`` rounds (default: a temporary directory, which must be shared storage
    on a multi-machine cluster). ``callback(info)`` runs on the driver after every round with
    the round number, samples done and the actor handles.

    The result has ``distributed_stats_``: per-worker samples/s and bytes moved per batch."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value, minimum in (("workers", workers, 1), ("shards", shards, 1), ("staleness", staleness, 0),
                                 ("segment_batches", segment_batches, 1), ("sync_every", sync_every, 1),
                                 ("checkpoint_every", checkpoint_every, 1), ("max_restarts", max_restarts, 0)):
        _positive(name, value, minimum)
    est = copy.deepcopy(estimator)
    est._check_hyperparameters()
    epochs = int(est.epochs if epochs is None else epochs)
    _positive("epochs", epochs)
    parts, n_features = _worker_data(est, X, y, sample_weight, paths, format, bits, workers)
    config_json = _config_json(est, n_features)
    own_dir = checkpoint_dir is None
    checkpoint_dir = tempfile.mkdtemp(prefix="sparselin-dist-") if own_dir else os.fspath(checkpoint_dir)
    os.makedirs(checkpoint_dir, exist_ok=True)
    n_actors_cpus = workers * worker_cpus + (shards * shard_cpus if mode == "parameter_server" else 0)
    cluster = _Cluster(address, max(os.cpu_count() or 1, int(np.ceil(n_actors_cpus))))
    try:
        _check_resources(cluster.ray, n_actors_cpus)
        if mode == "parameter_server":
            model, stats = _train_parameter_server(cluster.ray, est, config_json, parts, shards, epochs, staleness,
                                                   bool(prefetch), segment_batches, checkpoint_dir, checkpoint_every, max_restarts,
                                                   worker_cpus, shard_cpus, callback)
        else:
            model, stats = _train_average(cluster.ray, est, n_features, parts, epochs, sync_every, checkpoint_dir,
                                          checkpoint_every, max_restarts, worker_cpus, callback)
    finally:
        cluster.close()
        if own_dir:
            import shutil

            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    est._model = model
    est.n_features_in_ = getattr(est, "n_features_in_", n_features)
    samples = sum(w["samples"] for w in stats["workers"])
    est.history_ = [{"samples": samples, "epoch": epochs, "train_loss": stats["train_loss"],
                     "seconds": stats["seconds"]}]
    est.distributed_stats_ = stats
    return est


def _summary(mode, per_worker, seconds, extra):
    workers = []
    for s in per_worker:
        batches = max(s.get("batches", 0), 1)
        entry = {"samples": int(s.get("samples", 0)), "batches": int(s.get("batches", 0)),
                 "samples_per_second": s.get("samples", 0) / max(s.get("seconds", 0.0), 1e-9)}
        for key in ("bytes_pulled", "bytes_pushed", "unique_ids", "nnz", "bytes_sent", "bytes_received",
                    "pull_seconds", "compute_seconds"):
            if key in s:
                entry[f"{key}_per_batch"] = s[key] / batches
        workers.append(entry)
    loss = sum(s.get("loss_sum", 0.0) for s in per_worker) / max(sum(s.get("samples", 0) for s in per_worker), 1)
    return dict({"mode": mode, "seconds": seconds, "train_loss": loss, "workers": workers,
                 "samples_per_second": sum(s.get("samples", 0) for s in per_worker) / max(seconds, 1e-9)}, **extra)


def _train_parameter_server(ray, est, config_json, parts, n_shards, epochs, staleness, prefetch, segment_batches,
                            checkpoint_dir, checkpoint_every, max_restarts, worker_cpus, shard_cpus, callback):
    shard_cls = ray.remote(ShardActor).options(max_restarts=max_restarts, max_task_retries=max_restarts,
                                               max_concurrency=8, num_cpus=shard_cpus)
    shards = [shard_cls.remote(config_json, s, n_shards, s == 0,
                               os.path.join(checkpoint_dir, f"shard-{s}-of-{n_shards}.safetensors"))
              for s in range(n_shards)]
    ray.get([s.checkpoint.remote() for s in shards])  # a restarted shard always has one to load
    worker_cls = ray.remote(PullWorkerActor).options(max_restarts=max_restarts, max_task_retries=max_restarts,
                                                     num_cpus=worker_cpus)
    # The driver keeps the data refs: a restarted worker is built again from them.
    data_refs = [ray.put(p) for p in parts]
    workers = [worker_cls.remote(config_json, w, shards, ref, int(est.batch_size), est._seed(), staleness, prefetch)
               for w, ref in enumerate(data_refs)]
    n_batches = ray.get([w.n_batches.remote() for w in workers])
    per_worker = [collections.Counter() for _ in workers]
    start = time.perf_counter()
    rounds = 0
    for epoch in range(epochs):
        for first in range(0, max(n_batches), segment_batches):
            active = [w for w, n in enumerate(n_batches) if first < n]
            results = ray.get([workers[w].run.remote(epoch, first, segment_batches) for w in active])
            for w, r in zip(active, results):
                per_worker[w].update(r)
            rounds += 1
            if rounds % checkpoint_every == 0:
                ray.get([s.checkpoint.remote() for s in shards])
            if callback is not None:
                callback({"mode": "parameter_server", "round": rounds, "epoch": epoch,
                          "samples": sum(c["samples"] for c in per_worker), "workers": workers, "shards": shards})
    seconds = time.perf_counter() - start
    shard_stats = ray.get([s.stats.remote() for s in shards])
    model = _core.assemble_shards(ray.get([s.to_bytes.remote() for s in shards]))
    for a in workers + shards:
        ray.kill(a)
    return model, _summary("parameter_server", per_worker, seconds, {"shards": shard_stats, "rounds": rounds})


def _retry_while_restarting(ray, call, timeout=120.0):
    """Runs `call` until no actor it uses is dead or restarting (Ray restarts crashed actors in
    the background; a call that reaches one meanwhile fails with an actor error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _train_average(ray, est, n_features, parts, epochs, sync_every, checkpoint_dir, checkpoint_every, max_restarts,
                   worker_cpus, callback):
    model_args = (n_features, est._width(), est._hidden(), est._task, bool(est.normalize), est.optimizer,
                  float(est.learning_rate), float(est.l1), float(est.l2), est._seed())
    worker_cls = ray.remote(AveragingWorkerActor).options(max_restarts=max_restarts, num_cpus=worker_cpus)
    data_refs = [ray.put(p) for p in parts]  # kept by the driver for restarts
    workers = [worker_cls.remote(model_args, ref, int(est.batch_size), int(est.threads), est.parallel, epochs)
               for ref in data_refs]
    total = [epochs * n for n in ray.get([w.n_batches.remote() for w in workers])]
    done = [0] * len(workers)
    per_worker = [collections.Counter() for _ in workers]
    checkpoint_path = os.path.join(checkpoint_dir, "average-sync.safetensors")

    def snapshot():
        model_bytes = ray.get(workers[0].model_bytes.remote())
        positions = ray.get([w.position.remote() for w in workers])
        with open(checkpoint_path + ".tmp", "wb") as f:
            f.write(model_bytes)
        os.replace(checkpoint_path + ".tmp", checkpoint_path)
        return {"positions": positions, "done": list(done), "stats": copy.deepcopy(per_worker)}

    saved = snapshot()
    start = time.perf_counter()
    rounds = restarts = 0
    sync_bytes = 0
    while any(d < t for d, t in zip(done, total)):
        active = [w for w in range(len(workers)) if done[w] < total[w]]
        try:
            results = ray.get([workers[w].train_round.remote(min(sync_every, total[w] - done[w])) for w in active])
            deltas = [d for d, _ in results]
            average = _core.average_deltas(deltas)
            average_ref = ray.put(average)
            ray.get([w.apply.remote(average_ref) for w in workers])
        except ray.exceptions.RayActorError:
            # A worker died: Ray restarts it; every copy goes back to the last synchronized state
            # and the rounds since then are replayed (same batches, same result).
            restarts += 1
            if restarts > max_restarts:
                raise
            with open(checkpoint_path, "rb") as f:
                model_bytes = f.read()
            _retry_while_restarting(ray, lambda: ray.get(
                [w.restore.remote(model_bytes, pos) for w, pos in zip(workers, saved["positions"])]))
            done = list(saved["done"])
            per_worker = copy.deepcopy(saved["stats"])
            continue
        for w, (delta, s) in zip(active, results):
            done[w] += s["batches"]
            per_worker[w].update(s)
            per_worker[w]["bytes_sent"] += sum(r.nbytes + v.nbytes for _, _, r, v in delta[0])
            per_worker[w]["bytes_received"] += sum(r.nbytes + v.nbytes for _, _, r, v in average[0])
        sync_bytes += sum(r.nbytes + v.nbytes for _, _, r, v in average[0])
        rounds += 1
        if rounds % checkpoint_every == 0:
            saved = snapshot()
        if callback is not None:
            callback({"mode": "average", "round": rounds, "samples": sum(c["samples"] for c in per_worker),
                      "workers": workers, "shards": []})
    seconds = time.perf_counter() - start
    model, _ = _core.model_from_bytes(ray.get(workers[0].model_bytes.remote()))
    for a in workers:
        ray.kill(a)
    return model, _summary("average", per_worker, seconds, {"rounds": rounds, "restarts": restarts,
                                                             "average_bytes_per_round": sync_bytes / max(rounds, 1)})
