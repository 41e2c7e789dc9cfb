"""`metaad evaluate run=<name>`: held-out families, the method beside its baselines.

Writes a report folder (default <run>/report, local or S3): metrics.json, report.md, ROC
curves per held-out family, score histograms (normal vs held-out), AUROC vs budget, and the
operating point at the threshold chosen on validation data.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from metaad_dist.data.source import open_source
from metaad_dist.data.storage import open_location
from metaad_dist.data.views import build_test_view
from metaad_dist.eval import plots
from metaad_dist.eval.baselines import fit_baseline
from metaad_dist.eval.metrics import auroc_difference_variance, detection_metrics, family_metrics
from metaad_dist.eval.report import markdown_report, results_table, summary_line
from metaad_dist.train.api import fit
from metaad_dist.train.artifacts import load_run, load_run_config, score_scaled_rows
from metaad_dist.train.commands import run_location
from metaad_dist.train.setup import prepare_training, resolve_device

METHOD = "metaad"
ABLATION = "inner_only"  # the method without its outer loop (eval/baselines/inner_only.py)


def at_threshold(normal: np.ndarray, anomalies: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalies))])
    flag = np.concatenate([normal, anomalies]) > threshold
    return {
        "threshold": threshold,
        "precision": float(precision_score(y, flag, zero_division=0)),
        "recall": float(recall_score(y, flag, zero_division=0)),
        "f1": float(f1_score(y, flag, zero_division=0)),
    }


def _model_scorer(model, score: str, device: torch.device):
    """Scores of scaled rows, batched on the evaluating host's `trainer.device`."""
    return lambda x: score_scaled_rows(model, x, score, device)


def _budget_point(run_cfg, budget: int, normal_x, held_out_x) -> float:
    """Held-out AUROC of the method retrained at `budget` on the same split and seed."""
    cfg = run_cfg.copy()
    cfg.meta.budget = budget
    cfg.meta.k_shot = min(cfg.meta.k_shot, budget)
    result = fit(cfg)
    scorer = _model_scorer(result.trained.model, cfg.model.score, resolve_device(cfg.trainer.device))
    scale = result.setup.scaler.transform
    return family_metrics(scorer(scale(normal_x)), {f: scorer(scale(x)) for f, x in held_out_x.items()})["overall"]["auroc"]


def versus_ablation(scores: dict[str, tuple[np.ndarray, dict]]) -> dict | None:
    """The method's held-out AUROC minus its inner-loop-only ablation's, with the standard error
    of that paired difference (DeLong: both rank the same held-out rows above the same normal
    rows), so a report can say whether this run shows the method beating its inner loop alone."""
    if ABLATION not in scores:
        return None
    (normal_m, held_m), (normal_a, held_a) = scores[METHOD], scores[ABLATION]
    anomalies_m, anomalies_a = np.concatenate(list(held_m.values())), np.concatenate(list(held_a.values()))
    difference = detection_metrics(normal_m, anomalies_m)["auroc"] - detection_metrics(normal_a, anomalies_a)["auroc"]
    variance = auroc_difference_variance(normal_m, anomalies_m, normal_a, anomalies_a)
    return {"baseline": ABLATION, "auroc_difference": difference, "standard_error": float(np.sqrt(variance))}


def evaluate_run(cfg, log=print) -> dict:
    """Metrics of the run's method and of each baseline on the run's own split; plus the
    scores behind them (key "scores") for the figures."""
    location = run_location(cfg)
    trained, payload = load_run(location)
    run_cfg = load_run_config(location)
    # The run's data, model, meta and seed (the same split, budget pool and scaler); this host's
    # device and storage settings, for the baselines and budget-curve retraining too.
    run_cfg.eval, run_cfg.quiet, run_cfg.trainer, run_cfg.storage = cfg.eval, cfg.quiet, cfg.trainer, cfg.storage
    setup = prepare_training(run_cfg)
    test = build_test_view(open_source(run_cfg.data, cfg.storage), setup.roles, run_cfg.data, run_cfg.meta, run_cfg.seed)
    scale = setup.scaler.transform
    normal_x = scale(test.normal_x)
    held_out_x = {f: scale(x) for f, x in test.held_out_x.items()}
    seen_x = {f: scale(x) for f, x in test.seen_meta_x.items() if len(x)}

    scorers = {METHOD: _model_scorer(trained.model, trained.score, resolve_device(cfg.trainer.device))}
    for name in cfg.eval.baselines:
        if not cfg.quiet:
            log(f"fitting baseline {name} on the same split ...")
        scorers[name] = fit_baseline(name, run_cfg, setup)

    held_out, seen, scores = {}, {}, {}
    for name, scorer in scorers.items():
        normal_scores = scorer(normal_x)
        scores[name] = (normal_scores, {f: scorer(x) for f, x in held_out_x.items()})
        held_out[name] = family_metrics(*scores[name])
        if seen_x:
            seen[name] = family_metrics(normal_scores, {f: scorer(x) for f, x in seen_x.items()})
    method_normal, method_held_out = scores[METHOD]
    budget_points = {int(run_cfg.meta.budget): held_out[METHOD]["overall"]["auroc"]}
    for budget in cfg.eval.budget_curve:
        if budget not in budget_points:
            if not cfg.quiet:
                log(f"retraining the method at budget {budget} for the AUROC-vs-budget curve ...")
            budget_points[int(budget)] = _budget_point(run_cfg, int(budget), test.normal_x, test.held_out_x)
    roles = setup.roles
    return {
        "run": location.uri,
        "scaler": run_cfg.data.scaler,
        "budget": int(run_cfg.meta.budget),
        "trained": {"episodes": int(run_cfg.meta.episodes), "seed": int(run_cfg.seed), "normal": list(roles.normal),
                    "meta": list(roles.meta), "held_out": list(roles.held_out)},
        "versus_ablation": versus_ablation(scores),
        # (network, kNN, isolation, reconstruction) evidence weights the run chose; None without a memory.
        "fusion_weights": trained.model.memory.weights.tolist() if trained.model.memory is not None else None,
        "held_out": held_out,
        "seen_meta": seen,
        "operating_point": at_threshold(
            method_normal, np.concatenate(list(method_held_out.values())), float(payload["threshold"])
        ),
        "auroc_vs_budget": {str(b): a for b, a in sorted(budget_points.items())},
        "scores": {"normal": method_normal, "held_out": method_held_out},
    }


def write_report(report: dict, out) -> list[str]:
    """metrics.json, report.md and the PNGs into `out` (a storage Location); returns the names."""
    scores = report["scores"]
    metrics = {k: v for k, v in report.items() if k != "scores"}
    files = {"metrics.json": json.dumps(metrics, indent=2).encode(), "report.md": markdown_report(metrics).encode()}
    with tempfile.TemporaryDirectory() as tmp:
        figures = {
            "roc_held_out.png": lambda p: plots.roc_per_family(scores["normal"], scores["held_out"], p,
                                                               "ROC per held-out family (metaad)"),
            "score_histogram.png": lambda p: plots.score_histogram(
                scores["normal"], np.concatenate(list(scores["held_out"].values())),
                report["operating_point"]["threshold"], p),
            "auroc_vs_budget.png": lambda p: plots.auroc_vs_budget(
                {int(b): a for b, a in report["auroc_vs_budget"].items()}, p),
        }
        for name, draw in figures.items():
            path = Path(tmp) / name
            draw(path)
            files[name] = path.read_bytes()
    for name, data in files.items():
        out.write_bytes_atomic(data, name)
    return sorted(files)


def evaluate_command(cfg) -> None:
    report = evaluate_run(cfg)
    out = (
        run_location(cfg).child("report") if cfg.eval.output is None
        else open_location(cfg.eval.output, cfg.storage)
    )
    write_report(report, out)
    print(results_table(report["held_out"], f"held-out families (scaler: {report['scaler']}), anomaly = positive"))
    op = report["operating_point"]
    print(
        f"{METHOD} at the validation-chosen threshold {op['threshold']:.4f}: "
        f"precision {op['precision']:.3f} recall {op['recall']:.3f} F1 {op['f1']:.3f}"
    )
    print(f"report: {out.uri}/report.md")
    print(summary_line(report, METHOD))
