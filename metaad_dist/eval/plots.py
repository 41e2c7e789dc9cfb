"""PNG figures of an evaluation report (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_per_family(normal: np.ndarray, families: dict[str, np.ndarray], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for family, scores in families.items():
        if len(scores) == 0:
            continue
        y = np.concatenate([np.zeros(len(normal)), np.ones(len(scores))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([normal, scores]))
        ax.plot(fpr, tpr, label=family)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (normal)", ylabel="true-positive rate (held-out family)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_histogram(normal: np.ndarray, held_out: np.ndarray, threshold: float, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bins = np.linspace(min(normal.min(), held_out.min()), max(normal.max(), held_out.max()), 50)
    ax.hist(normal, bins=bins, alpha=0.6, density=True, label="test normal")
    ax.hist(held_out, bins=bins, alpha=0.6, density=True, label="held-out families")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="validation threshold")
    ax.set(xlabel="anomaly score", ylabel="density", title="scores: normal vs held-out")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def auroc_vs_budget(points: dict[int, float], path: Path) -> None:
    plt = _pyplot()
    budgets = sorted(points)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(budgets, [points[b] for b in budgets], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set(xlabel="labelled anomalies per meta family", ylabel="held-out AUROC", title="AUROC vs anomaly-shot budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
