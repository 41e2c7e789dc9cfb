"""Sweep outputs: results table (CSV, Markdown), best config per budget, AUROC-vs-budget curve."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from omegaconf import OmegaConf

from metaad_dist.tune.space import BUDGET_KEY, apply_params

EXPORT_HEADER = (
    "# Exported by `metaad tune`: best trial of budget {budget} (validation AUROC {auroc:.4f}, trial {trial}).\n"
    "# Retrain it as is:  metaad train --config {path}\n"
)


def trial_rows(result_grid, episodes: int, budget: int) -> list[dict]:
    rows = []
    for result in result_grid:
        if result.metrics is None or "val_auroc" not in result.metrics:
            continue
        params = {**result.config, BUDGET_KEY: budget}
        rows.append({
            "trial": result.metrics.get("trial_id", Path(result.path).name),
            "budget": budget,
            "val_auroc": float(result.metrics["val_auroc"]),
            "episode": int(result.metrics["episode"]),
            "completed": int(result.metrics["episode"]) >= episodes,
            # -1: not counted (Ray Train trials report their workers' metrics only)
            "held_out_rows_read": int(result.metrics.get("held_out_rows_read", -1)),
            "trainable_rows_read": int(result.metrics.get("trainable_rows_read", -1)),
            "params": params,
        })
    return sorted(rows, key=lambda r: (r["budget"], -r["val_auroc"]))


def best_per_budget(rows: list[dict]) -> dict[int, dict]:
    """Among trials that ran the full schedule (their config retrains to the same number)."""
    best: dict[int, dict] = {}
    for row in rows:
        if row["completed"] and (row["budget"] not in best or row["val_auroc"] > best[row["budget"]]["val_auroc"]):
            best[row["budget"]] = row
    return best


def _table(rows: list[dict]) -> tuple[list[str], list[list]]:
    keys = sorted({k for r in rows for k in r["params"] if k != BUDGET_KEY})
    header = ["trial", "budget", "val_auroc", "episode", "completed", *keys]
    body = [[r["trial"], r["budget"], f"{r['val_auroc']:.4f}", r["episode"], r["completed"],
             *[_fmt(r["params"].get(k)) for k in keys]] for r in rows]
    return header, body


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_outputs(rows: list[dict], cfg, out_dir: Path, shown_dir: str | None = None) -> dict:
    """Write the tables, exported configs and curve into the local folder `out_dir`; the files
    name themselves under `shown_dir` (e.g. the s3:// folder they are uploaded to) if given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shown_dir = (shown_dir or str(out_dir)).rstrip("/")
    header, body = _table(rows)
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *body])
    (out_dir / "results.csv").write_text(buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    best = best_per_budget(rows)
    md += ["", "Best per budget (validation AUROC, validation families only):", "",
           "| budget | val AUROC | trial | exported config |", "|---|---|---|---|"]
    exported = {}
    for budget, row in sorted(best.items()):
        path = out_dir / f"best_budget_{budget}.yaml"
        trial_cfg = apply_params(cfg, row["params"])
        path.write_text(
            EXPORT_HEADER.format(budget=budget, auroc=row["val_auroc"], trial=row["trial"], path=f"{shown_dir}/{path.name}")
            + OmegaConf.to_yaml(trial_cfg)
        )
        exported[budget] = f"{shown_dir}/{path.name}"
        md.append(f"| {budget} | {row['val_auroc']:.4f} | {row['trial']} | {path.name} |")
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    _plot_budget_curve(best, out_dir / "budget_curve.png")
    return {"best": best, "exported": exported, "out_dir": shown_dir}


def _plot_budget_curve(best: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(best)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(budgets, [best[b]["val_auroc"] for b in budgets], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("labelled anomalies per meta family (budget)")
    ax.set_ylabel("best validation AUROC")
    ax.set_title("validation AUROC vs anomaly-shot budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
