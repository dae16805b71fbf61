"""Continual training under data shift: per-day AUC / RCE of (a) a model trained once on day 0
and (b) the same model updated with partial_fit every day, both evaluated on each next day
before it is trained on (the production setting: yesterday's model serves today).

    python benches/continual.py [--rows 50000] [--days 6] [--drift 0.3] [--decay 0.5]
"""

import argparse

import sparselin
from sparselin import metrics
from sparselin.datasets import make_ctr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--drift", type=float, default=0.3)
    ap.add_argument("--decay", type=float, default=0.5, help="optimizer-state decay before each day")
    ap.add_argument("--model", default="mlp", choices=["lr", "mlp"])
    args = ap.parse_args()
    days = make_ctr(args.rows, n_features=2**20, days=args.days, drift=args.drift, random_state=0)
    make = (lambda: sparselin.SparseLogisticRegression(n_features=2**20, epochs=1, random_state=0)) \
        if args.model == "lr" else \
        (lambda: sparselin.SparseMLPClassifier(n_features=2**20, epochs=1, random_state=0))
    stale = make().fit(*days[0])
    live = make().fit(*days[0])
    print(f"# make_ctr {args.rows} rows/day, drift {args.drift}/day, {args.model.upper()}, "
          f"optimizer-state decay {args.decay}")
    print(f"{'day':>3} {'trained-once AUC':>17} {'RCE':>7} {'continual AUC':>14} {'RCE':>7}")
    for d, (X, y) in enumerate(days[1:], start=1):
        row = []
        for model in (stale, live):
            p = model.predict_proba(X)[:, 1]
            row += [metrics.roc_auc(y, p), metrics.rce(y, p)]
        print(f"{d:>3} {row[0]:>17.4f} {row[1]:>7.2f} {row[2]:>14.4f} {row[3]:>7.2f}", flush=True)
        live.partial_fit(X, y, optimizer_state_decay=args.decay)


if __name__ == "__main__":
    main()
