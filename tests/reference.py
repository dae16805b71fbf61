"""A float64 NumPy implementation of the math in BRIEF section 2, written independently of the
Rust core, for the reference tests: online normalization, the sparse gather-sum layer, ReLU
dense layers, weighted BCE / squared error averaged over the batch, every gradient, and one
step of each optimizer (sgd, TF LazyAdam, TF Adagrad, FTRL-Proximal) on the touched rows."""

import numpy as np

MIN_SCALE = 1e-5
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
FTRL_BETA = 1.0


def _sigmoid(z):
    # Not 0.5 * (1 + tanh(z / 2)): in the tail (z = -29, p = 1.6e-13) that cancels and loses 3 of
    # float64's digits, more than the float32 core's error (found by tests/test_properties.py).
    return np.exp(-np.logaddexp(0.0, -z))


def forward_backward(t, cfg, indptr, indices, values, y, w, rows):
    """t: dict name -> float64 array (copied). Returns dict with loss, outputs, gradients (sparse
    ones as {id: row}) and the updated max_abs. Follows the order of the batch rows.

    Also returns `scale`: for the outputs and each gradient, the same sums taken over absolute
    values (|W|, |y|, |d| ...). A float32 sum of terms of both signs is only accurate relative to
    that magnitude (the bias gradient at the output is mean(p - y), which cancels), so the tests
    measure errors against it; a wrong formula is off by the size of the value itself."""
    n_features, width = cfg["n_features"], cfg["sparse_width"]
    W = t["sparse.weight"].reshape(n_features, width)
    B = t["sparse.bias"]
    normalize = cfg["normalize"]
    max_abs = t["norm.max_abs"].copy() if normalize else None
    fb = t["norm.feat_bias"] if normalize else None
    n_layers = cfg["n_dense"]
    dense = [(t[f"dense.{l}.weight"], t[f"dense.{l}.bias"]) for l in range(n_layers)]
    for l, (dw, db) in enumerate(dense):
        n_out = db.size
        dense[l] = (dw.reshape(-1, n_out), db)

    batch = []  # per row: list of (id, y_in)
    h = np.zeros((len(rows), width))
    h_abs = np.zeros((len(rows), width))
    for b, r in enumerate(rows):
        entries = []
        for k in range(indptr[r], indptr[r + 1]):
            i, v = int(indices[k]), float(values[k])
            if normalize:
                max_abs[i] = max(max_abs[i], abs(v))
                yin = v / max(max_abs[i], MIN_SCALE) + fb[i]
            else:
                yin = v
            entries.append((i, yin))
            h[b] += W[i] * yin
            h_abs[b] += np.abs(W[i] * yin)
        h[b] += B
        h_abs[b] += np.abs(B)
        batch.append(entries)

    pre, act, act_abs, pre_abs = [h], [], [], [h_abs]
    for l, (dw, db) in enumerate(dense):
        a = np.maximum(pre[-1], 0.0)
        act.append(a)
        act_abs.append(pre_abs[-1] * (pre[-1] > 0))
        pre.append(a @ dw + db)
        pre_abs.append(act_abs[-1] @ np.abs(dw) + np.abs(db))
    z = pre[-1][:, 0]
    z_abs = pre_abs[-1][:, 0]

    tgt = np.array([y[r] for r in rows], dtype=np.float64)
    sw = np.array([1.0 if w is None else w[r] for r in rows], dtype=np.float64)
    nb = len(rows)
    if cfg["task"] == "binary":
        losses = np.logaddexp(0.0, z) - tgt * z
        dz = sw * (_sigmoid(z) - tgt) / nb
    else:
        losses = (z - tgt) ** 2
        dz = 2.0 * sw * (z - tgt) / nb
    loss = float(np.sum(sw * losses) / nb)

    if cfg["task"] == "binary":
        dz_abs = sw * (_sigmoid(z) + tgt) / nb
    else:
        dz_abs = 2.0 * sw * (z_abs + np.abs(tgt)) / nb

    grads, scale = {}, {"outputs": float(np.max(z_abs))}
    d, d_abs = dz[:, None], dz_abs[:, None]
    for l in reversed(range(n_layers)):
        dw, db = dense[l]
        grads[f"dense.{l}.weight"] = (act[l].T @ d).ravel()
        grads[f"dense.{l}.bias"] = d.sum(axis=0)
        scale[f"dense.{l}.weight"] = float(np.max(act_abs[l].T @ d_abs))
        scale[f"dense.{l}.bias"] = float(np.max(d_abs.sum(axis=0)))
        d = (d @ dw.T) * (pre[l] > 0)
        d_abs = (d_abs @ np.abs(dw).T) * (pre[l] > 0)
    dh, dh_abs = d, d_abs
    grads["sparse.bias"] = dh.sum(axis=0)
    scale["sparse.bias"] = float(np.max(dh_abs.sum(axis=0)))
    gW, gfb, gW_abs, gfb_abs = {}, {}, {}, {}
    for b, entries in enumerate(batch):
        for i, yin in entries:
            gW[i] = gW.get(i, 0.0) + dh[b] * yin
            gW_abs[i] = gW_abs.get(i, 0.0) + dh_abs[b] * abs(yin)
            if normalize:
                gfb[i] = gfb.get(i, 0.0) + float(dh[b] @ W[i])
                gfb_abs[i] = gfb_abs.get(i, 0.0) + float(dh_abs[b] @ np.abs(W[i]))
    grads["sparse.weight"] = gW
    grads["norm.feat_bias"] = gfb
    scale["sparse.weight"] = max((float(np.max(v)) for v in gW_abs.values()), default=0.0)
    scale["norm.feat_bias"] = max(gfb_abs.values(), default=0.0)
    return {"loss": loss, "outputs": z, "grads": grads, "scale": scale, "max_abs": max_abs}


def _update(kind, w, slots, g, lr, t, l1, l2):
    """One optimizer step on arrays (float64); returns new (w, slots)."""
    if kind == "sgd":
        return w - lr * (g + l2 * w), []
    if kind == "lazy_adam":
        g = g + l2 * w
        m, v = slots
        m = BETA1 * m + (1 - BETA1) * g
        v = BETA2 * v + (1 - BETA2) * g * g
        lr_t = lr * np.sqrt(1 - BETA2**t) / (1 - BETA1**t)
        return w - lr_t * m / (np.sqrt(v) + ADAM_EPS), [m, v]
    if kind == "adagrad":
        g = g + l2 * w
        (acc,) = slots
        acc = acc + g * g
        return w - lr * g / np.sqrt(acc), [acc]
    if kind == "ftrl":
        z, n = slots
        n_new = n + g * g
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / lr
        z = z + g - sigma * w
        w_new = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((FTRL_BETA + np.sqrt(n_new)) / lr + l2))
        return w_new, [z, n_new]
    raise ValueError(kind)


SLOTS = {"sgd": [], "lazy_adam": ["m", "v"], "adagrad": ["accumulator"], "ftrl": ["z", "n"]}
REGULARIZED = ("sparse.weight", "dense.0.weight", "dense.1.weight", "dense.2.weight", "dense.3.weight")


def optimizer_step(t, cfg, grads, step):
    """Returns a new tensor dict after one lazy step with update number `step` (1-based)."""
    kind, lr, l1, l2 = cfg["optimizer"], cfg["learning_rate"], cfg["l1"], cfg["l2"]
    slot_names = SLOTS[kind]
    out = {k: v.copy() for k, v in t.items()}

    def apply(name, sl, g):
        reg = name in REGULARIZED
        w = out[name][sl]
        slots = [out[f"{name}.{s}"][sl] for s in slot_names]
        w_new, slots_new = _update(kind, w, slots, g, lr, step, l1 if reg else 0.0, l2 if reg else 0.0)
        out[name][sl] = w_new
        for s, v in zip(slot_names, slots_new):
            out[f"{name}.{s}"][sl] = v

    width = cfg["sparse_width"]
    for i, g in grads["sparse.weight"].items():
        apply("sparse.weight", slice(i * width, (i + 1) * width), np.asarray(g, dtype=np.float64))
    for i, g in grads["norm.feat_bias"].items():
        apply("norm.feat_bias", slice(i, i + 1), np.array([g]))
    for name, g in grads.items():
        if name in ("sparse.weight", "norm.feat_bias"):
            continue
        apply(name, slice(None), np.asarray(g, dtype=np.float64))
    return out
