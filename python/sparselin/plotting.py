"""Learning curves from ``history_`` (matplotlib is an optional dependency)."""

from __future__ import annotations


def plot_history(history, path=None, title=None):
    """Draws train loss and eval logloss against samples seen, and eval AUC / RCE when present.
    Saves a PNG to ``path`` if given; returns the matplotlib figure."""
    try:
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_history needs matplotlib: pip install matplotlib") from e
    history = list(getattr(history, "history_", history))
    if not history:
        raise ValueError("the history is empty: nothing to plot")
    x = [h["samples"] for h in history]
    has_auc = any("eval_auc" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_auc else 1, figsize=(11 if has_auc else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(x, [h["train_loss"] for h in history], marker="o", label="train loss")
    for key in sorted(k for k in history[-1] if k.endswith("_logloss") or k.endswith("_mse")):
        ax.plot(x, [h.get(key) for h in history], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("samples seen")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_auc:
        ax = axes[0][1]
        ax.plot(x, [h.get("eval_auc") for h in history], marker="o", color="C2", label="eval AUC")
        ax.set_xlabel("samples seen")
        ax.set_ylabel("AUC")
        ax.grid(alpha=0.3)
        if any("eval_rce" in h for h in history):
            ax2 = ax.twinx()
            ax2.plot(x, [h.get("eval_rce") for h in history], marker="s", color="C3", label="eval RCE")
            ax2.set_ylabel("RCE")
            ax2.legend(loc="lower right")
        ax.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
