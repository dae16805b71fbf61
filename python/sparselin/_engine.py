"""train_and_evaluate: drives the core trainer in segments so that a fit can be evaluated,
checkpointed, stopped early and resumed between any two segments.

The core keeps the model's position inside its epoch (epoch counter, batches done), so training
in segments, or resuming from a checkpoint, visits the same batches in the same order as one
uninterrupted fit: with threads=1 the result is bit-identical.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re

import numpy as np

from . import _core, gpu

LOWER_IS_BETTER = {"logloss", "mse"}


def checkpoint_name(prefix, samples: int) -> str:
    return f"{os.fspath(prefix)}-{samples:012d}.safetensors"


def list_checkpoints(prefix):
    """Checkpoint files written under `prefix`, oldest first."""
    pattern = re.compile(re.escape(os.path.basename(os.fspath(prefix))) + r"-(\d{12})\.safetensors$")
    found = []
    for path in glob.glob(glob.escape(os.fspath(prefix)) + "-*.safetensors"):
        m = pattern.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(prefix):
    found = list_checkpoints(prefix)
    return found[-1] if found else None


class Plan:
    """Where a fit is and where it goes: counted in batches over the whole fit."""

    def __init__(self, n_rows, batch_size, epochs, eval_every, checkpoint_every):
        self.n_rows = n_rows
        self.batch_size = batch_size
        self.epochs = epochs
        self.batches_per_epoch = math.ceil(n_rows / batch_size)
        self.total_batches = epochs * self.batches_per_epoch
        self.eval_every = None if not eval_every else max(1, math.ceil(eval_every / batch_size))
        self.checkpoint_every = None if not checkpoint_every else max(1, math.ceil(checkpoint_every / batch_size))

    def next_stop(self, done):
        stops = [self.total_batches, (done // self.batches_per_epoch + 1) * self.batches_per_epoch]
        for every in (self.eval_every, self.checkpoint_every):
            if every:
                stops.append((done // every + 1) * every)
        return min(stops)

    def is_epoch_end(self, done):
        return done % self.batches_per_epoch == 0

    def eval_due(self, done):
        if self.eval_every:
            return done % self.eval_every == 0 or done == self.total_batches
        return self.is_epoch_end(done)

    def checkpoint_due(self, done):
        return bool(self.checkpoint_every) and done % self.checkpoint_every == 0 and done < self.total_batches


def train(est, csr, targets, weights, epochs, *, evals=(), eval_every=None, early_stopping_rounds=None,
          early_stopping_metric="logloss", callbacks=(), checkpoint_path=None, checkpoint_every=None,
          keep_checkpoints=3, state=None):
    """Runs `epochs` epochs of `est._model` on the data. `state` (from a checkpoint) resumes a fit.
    Appends to `est.history_`; returns the final fit state."""
    if eval_every is not None and not evals:
        raise ValueError("eval_every needs an eval_set")
    if early_stopping_rounds is not None and not evals:
        raise ValueError("early stopping needs an eval_set")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs a checkpoint_path")
    if keep_checkpoints is not None and int(keep_checkpoints) < 1:
        raise ValueError("keep_checkpoints must be >= 1")
    plan = Plan(csr.n_rows, int(est.batch_size), epochs, eval_every, checkpoint_every)
    state = dict(state or {})
    if state:
        if state.get("n_rows") != csr.n_rows or state.get("batch_size") != plan.batch_size \
                or state.get("total_batches") != plan.total_batches:
            raise ValueError(
                "the checkpoint was written by a fit on other data or settings "
                f"({state.get('n_rows')} rows, batch_size {state.get('batch_size')}, "
                f"{state.get('total_batches')} batches); resume with the same X, y, batch_size and epochs")
    else:
        state = {"n_rows": csr.n_rows, "batch_size": plan.batch_size, "total_batches": plan.total_batches,
                 "batches_done": 0, "samples_seen": 0, "seconds": 0.0, "loss_sum": 0.0, "loss_samples": 0,
                 "best_score": None, "best_samples": None, "bad_rounds": 0}
    if checkpoint_path is not None:
        parent = os.path.dirname(os.fspath(checkpoint_path))
        if parent:
            os.makedirs(parent, exist_ok=True)

    model = est._core_model()  # once: a fit in another thread may replace est._model meanwhile
    device = gpu.resolve(est.device)
    n_features = json.loads(model.config_json)["n_features"]
    bar = _progress_bar(est, plan.total_batches * plan.batch_size)
    first_segment = [True]

    def progress(epoch, done, per_epoch):
        if bar is not None:
            bar.update(min(state["samples_seen"] + done, bar.total) - bar.n)

    direction = -1.0 if early_stopping_metric in LOWER_IS_BETTER else 1.0
    try:
        while state["batches_done"] < plan.total_batches:
            target = plan.next_stop(state["batches_done"])
            report = model.fit(
                csr.indptr, csr.indices, csr.values, n_features, targets, weights, 1, plan.batch_size,
                int(est.threads), True, progress, target - state["batches_done"],
                not first_segment[0] or state["batches_done"] > 0, est.parallel, device)
            first_segment[0] = False
            state["batches_done"] = target
            state["samples_seen"] += report["samples"]
            state["seconds"] += report["seconds"]
            # A segment never crosses an epoch boundary: one mean loss over its samples.
            state["loss_sum"] += report["epoch_losses"][-1] * report["samples"]
            state["loss_samples"] += report["samples"]
            stop = False
            if plan.eval_due(target):
                entry = {"samples": state["samples_seen"], "epoch": target / plan.batches_per_epoch,
                         "train_loss": state["loss_sum"] / max(state["loss_samples"], 1),
                         "seconds": state["seconds"]}
                state["loss_sum"], state["loss_samples"] = 0.0, 0
                for k, (Xe, ye) in enumerate(evals):
                    entry.update(est._eval_metrics(Xe, ye, "eval" if k == 0 else f"eval{k}"))
                est.history_.append(entry)
                if early_stopping_rounds is not None:
                    key = f"eval_{early_stopping_metric}"
                    if key not in entry:
                        raise ValueError(f"early_stopping_metric '{early_stopping_metric}' is not computed; "
                                         f"available: {sorted(k[5:] for k in entry if k.startswith('eval_'))}")
                    score = entry[key]
                    if state["best_score"] is None or direction * (score - state["best_score"]) > 0:
                        state["best_score"], state["best_samples"], state["bad_rounds"] = score, entry["samples"], 0
                    else:
                        state["bad_rounds"] += 1
                        stop = state["bad_rounds"] >= int(early_stopping_rounds)
                for cb in callbacks:
                    if cb(est, entry):
                        stop = True
            if plan.checkpoint_due(target) and not stop:
                write_checkpoint(est, checkpoint_path, state, keep_checkpoints)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if early_stopping_rounds is not None:
        est.best_score_ = state["best_score"]
        est.best_samples_ = state["best_samples"]
    return state


def write_checkpoint(est, prefix, state, keep):
    extra = est._extra_state()
    extra["fit"] = dict(state)
    path = checkpoint_name(prefix, state["samples_seen"])
    import json
    _core.save_model(est._model, path, json.dumps(extra))
    if keep is not None:
        for old in list_checkpoints(prefix)[:-int(keep)]:
            try:
                os.remove(old)
            except OSError:
                pass
    return path


def _progress_bar(est, total):
    if not est.verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        return None
    return tqdm(total=total, unit="samples", unit_scale=True, delay=2.0, desc=type(est).__name__, leave=False)
