"""bench/convergence.py's figure: accuracy and ROC AUC per global version (left) and per simulated second (right),
both on log x axes so that the first rounds, where the methods differ, are readable."""

from __future__ import annotations

from pathlib import Path


def plot(path: Path, curves: dict[str, list[dict]], central: dict, targets: dict, title: str) -> str | None:
    """Write the PNG; returns None, or why it was not written (matplotlib missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib not importable ({e}): no PNG written"
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    styles = {"sync FedAvg": dict(color="C0", lw=1.8),
              "FedBuff": dict(color="C3", lw=1.4),
              "FedBuff async-global": dict(color="C1", lw=0.9, alpha=0.7),
              "FedBuff K=5": dict(color="C4", lw=0.8, alpha=0.6),
              "FedBuff K=8": dict(color="C5", lw=0.8, alpha=0.6),
              "HeteroFL": dict(color="C2", lw=1.4)}
    for row, (metric, label) in enumerate((("acc", "accuracy"), ("auc", "ROC AUC"))):
        for col, (xkey, xlabel) in enumerate((("round", "global model version (sync: round)"),
                                               ("sim_s", "simulated wall-clock seconds"))):
            ax = axes[row][col]
            for name, pts in curves.items():
                pts = [p for p in pts if p[xkey] > 0]           # log x: the initial model (0) is left out
                ax.plot([p[xkey] for p in pts], [p[metric] for p in pts], label=name,
                        **styles.get(name, {}))
            ax.axhline(central[metric], color="k", ls="-", lw=0.8, label=f"centralized (final) {central[metric]:.4f}")
            ax.axhline(targets[metric], color="k", ls="--", lw=0.8, label=f"95% target {targets[metric]:.4f}")
            lo = min(targets[metric] - 0.05, 0.85 if metric == "acc" else 0.8)
            ax.set_ylim(lo, 1.002)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0 and col == 1:
                ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title + "\nlog x axes (the initial model, version 0 at 0 s, is not shown)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
