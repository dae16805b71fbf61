"""GPU throughput: sparselin device="cuda" against PyTorch on the same card, same data, same
batches sizes, one epoch each (data in host memory, batches built and uploaded inside the timed
loop for every system). Prints one markdown table.

    python benches/bench_gpu.py [--rows 200000] [--batches 256,512,1024]

Peers: nn.EmbeddingBag(sparse=True) + SparseAdam (Adam for the dense head), and the generic
torch.sparse.mm(X, W) layer with Adam. PyTorch gets inputs pre-scaled by the training set's
max |value| per feature (it has no online normalization)."""

import argparse
import time

import numpy as np

import sparselin as sl
from sparselin import metrics

N_FEATURES = 2**20


def quality(y, p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return metrics.logloss(y, p), metrics.roc_auc(y, p)


def run_sparselin(model, batch, X, y, Xt, yt):
    """Returns (rate of the whole fit call, rate of its training loop, quality): a device fit
    uploads the model's tables at its start and downloads them at its end (transfer_seconds),
    which PyTorch's loop below, with its model already on the card, does not pay."""
    kw = dict(n_features=N_FEATURES, batch_size=batch, device="cuda", random_state=0)
    est = sl.SparseLogisticRegression(**kw) if model == "LR" else sl.SparseMLPClassifier(**kw)
    est.fit(X[:4 * batch], y[:4 * batch])  # builds the model; the kernels are compiled by then
    r = est._model.fit(X.indptr, X.indices, X.data.astype(np.float32), N_FEATURES, y.astype(np.float32), None, 1, batch,
                       0, True, None, None, False, "hogwild", "cuda")
    rows = X.shape[0]
    return rows / r["seconds"], rows / (r["seconds"] - r["transfer_seconds"]), quality(yt, est.predict_proba(Xt)[:, 1])


def run_torch(model, batch, X, y, Xt, yt, layer):
    import torch

    dev = torch.device("cuda")
    torch.manual_seed(0)
    width = 1 if model == "LR" else 50
    lr = 0.01 if model == "LR" else 1e-3
    if layer == "embedding_bag":
        bag = torch.nn.EmbeddingBag(N_FEATURES, width, mode="sum", sparse=True).to(dev)
        table = bag.weight
    else:
        table = torch.nn.Parameter(torch.empty(N_FEATURES, width, device=dev))
    with torch.no_grad():
        if model == "LR":
            table.zero_()
        else:
            table.uniform_(-1 / np.sqrt(width), 1 / np.sqrt(width))
    if model == "LR":
        head = torch.nn.Identity()
        bias = torch.nn.Parameter(torch.zeros(1, device=dev))
        dense_params = [bias]
    else:
        head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(50, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16),
                                   torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dev)
        bias = torch.nn.Parameter(torch.zeros(width, device=dev))
        dense_params = [bias, *head.parameters()]
    if layer == "embedding_bag":
        opts = [torch.optim.SparseAdam([table], lr=lr), torch.optim.Adam(dense_params, lr=lr)]
    else:
        opts = [torch.optim.Adam([table, *dense_params], lr=lr)]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def forward(sub):
        if layer == "embedding_bag":
            idx = torch.from_numpy(sub.indices.astype(np.int64)).to(dev, non_blocking=True)
            off = torch.from_numpy(sub.indptr[:-1].astype(np.int64)).to(dev, non_blocking=True)
            w = torch.from_numpy(sub.data.astype(np.float32)).to(dev, non_blocking=True)
            h = bag(idx, off, per_sample_weights=w)
        else:
            coo = sub.tocoo()
            xs = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data.astype(np.float32), coo.shape, device=dev)
            h = torch.sparse.mm(xs, table)
        return head(h + bias).squeeze(1)

    yt_dev = torch.from_numpy(y.astype(np.float32)).to(dev)
    order = np.random.default_rng(0).permutation(X.shape[0])
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, X.shape[0], batch):
        rows = order[s:s + batch]
        loss = loss_fn(forward(X[rows]), yt_dev[torch.from_numpy(rows).to(dev)])
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
    torch.cuda.synchronize()
    rate = X.shape[0] / (time.perf_counter() - start)
    with torch.no_grad():
        preds = [torch.sigmoid(forward(Xt[s:s + 8192])).cpu().numpy() for s in range(0, Xt.shape[0], 8192)]
    return rate, quality(yt, np.concatenate(preds))


def profile_sparselin(model, batch, X, y):
    """GPU time per kernel (and copies) of one sparselin epoch, read by PyTorch's profiler (CUPTI
    sees every kernel of the process, ours too): says whether the device or the host bounds a rate."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    kw = dict(n_features=N_FEATURES, batch_size=batch, device="cuda", random_state=0)
    est = sl.SparseLogisticRegression(**kw) if model == "LR" else sl.SparseMLPClassifier(**kw)
    est.fit(X[:4 * batch], y[:4 * batch])
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        r = est._model.fit(X.indptr, X.indices, X.data.astype(np.float32), N_FEATURES, y.astype(np.float32), None, 1,
                           batch, 0, True, None, None, False, "hogwild", "cuda")
    loop = r["seconds"] - r["transfer_seconds"]
    print(f"\n{model} batch {batch}: {X.shape[0]:,} rows, fit {r['seconds']:.3f} s, of which model transfers "
          f"{r['transfer_seconds']:.3f} s; training loop {loop:.3f} s = {X.shape[0] / loop:,.0f} rows/s, of which "
          f"{r['waiting']:.3f} s waiting for host threads to build batches")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=40))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--batches", default="256,512,1024")
    ap.add_argument("--skip-sparse-mm", action="store_true")
    ap.add_argument("--profile", action="store_true", help="then a per-kernel GPU time profile of sparselin")
    args = ap.parse_args()
    import torch

    usable, what = sl.gpu.status()
    if not usable:
        raise SystemExit(f"no usable GPU: {what}")
    X, y = sl.datasets.make_ctr(args.rows + args.test_rows, n_features=N_FEATURES, random_state=0)
    X, Xt, y, yt = X[:args.rows], X[args.rows:], y[:args.rows], y[args.rows:]
    scale = np.zeros(N_FEATURES, np.float32)
    np.maximum.at(scale, X.indices, np.abs(X.data))
    scale[scale == 0] = 1.0
    Xs, Xts = X.copy(), Xt.copy()
    Xs.data = Xs.data / scale[Xs.indices]
    Xts.data = Xts.data / scale[Xts.indices]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"card: {what}; torch {torch.__version__}; CUDA {torch.version.cuda}; sparselin {sl.__version__}; "
          f"date {time.strftime('%Y-%m-%d')}; make_ctr {args.rows:,} rows, 2^20 features, ~100 non-zeros/row, 1 epoch\n")
    print("| model | system | " + " | ".join(f"batch {b}" for b in batches) + " | test AUC (largest batch) |")
    print("|---|---|" + "---:|" * len(batches) + "---:|")
    for model in ("LR", "MLP"):
        systems = [("sparselin cuda", lambda b, X=X, y=y, Xt=Xt, yt=yt: run_sparselin(model, b, X, y, Xt, yt)),
                   ("PyTorch EmbeddingBag + SparseAdam", lambda b, X=Xs, y=y, Xt=Xts, yt=yt: run_torch(model, b, X, y, Xt, yt, "embedding_bag"))]
        if not args.skip_sparse_mm:
            systems.append(("PyTorch torch.sparse.mm + Adam", lambda b, X=Xs, y=y, Xt=Xts, yt=yt: run_torch(model, b, X, y, Xt, yt, "sparse_mm")))
        for name, run in systems:
            cells, loop_cells, auc = [], [], float("nan")
            try:
                # warm-up on a slice (library start-up, kernel compilation, allocator pools)
                torch_input = "PyTorch" in name
                run(batches[0], X=(Xs if torch_input else X)[:20_000], y=y[:20_000], Xt=(Xts if torch_input else Xt)[:2000],
                    yt=yt[:2000])
                for b in batches:
                    result = run(b)
                    auc = result[-1][1]
                    cells.append(f"{result[0]:,.0f}")
                    if len(result) == 3:
                        loop_cells.append(f"{result[1]:,.0f}")
            except Exception as e:  # noqa: BLE001 - one failing system must not hide the others
                print(f"{model} {name}: failed: {type(e).__name__}: {e}", flush=True)
                continue
            print(f"| {model} | {name} | " + " | ".join(cells) + f" | {auc:.4f} |", flush=True)
            if loop_cells:
                print(f"| {model} | {name} (training loop, without the model's upload/download) | "
                      + " | ".join(loop_cells) + " | |", flush=True)
    if args.profile:
        for model in ("LR", "MLP"):
            try:
                profile_sparselin(model, batches[-1], X[:100_000], y[:100_000])
            except Exception as e:  # noqa: BLE001
                print(f"profile {model}: failed: {type(e).__name__}: {e}")

if __name__ == "__main__":
    main()
