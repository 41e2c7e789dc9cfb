"""`metaad evaluate run=<name>`: held-out families, the method beside its baselines."""
from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from metaad_dist.data.source import open_source
from metaad_dist.data.views import build_test_view
from metaad_dist.eval.baselines import fit_baseline
from metaad_dist.eval.metrics import family_metrics
from metaad_dist.eval.report import results_table
from metaad_dist.train.artifacts import load_run, load_run_config
from metaad_dist.train.commands import run_location
from metaad_dist.train.setup import prepare_training


def at_threshold(normal: np.ndarray, anomalies: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalies))])
    flag = np.concatenate([normal, anomalies]) > threshold
    return {
        "threshold": threshold,
        "precision": float(precision_score(y, flag, zero_division=0)),
        "recall": float(recall_score(y, flag, zero_division=0)),
        "f1": float(f1_score(y, flag, zero_division=0)),
    }


def evaluate_run(cfg, log=print) -> dict:
    location = run_location(cfg)
    trained, payload = load_run(location)
    run_cfg = load_run_config(location)
    run_cfg.eval = cfg.eval
    run_cfg.quiet = cfg.quiet
    setup = prepare_training(run_cfg)  # same seed: the same split, budget pool and scaler
    test = build_test_view(open_source(run_cfg.data, cfg.storage), setup.roles, run_cfg.data, run_cfg.meta, run_cfg.seed)
    scale = setup.scaler.transform
    normal_x = scale(test.normal_x)
    held_out_x = {f: scale(x) for f, x in test.held_out_x.items()}
    seen_x = {f: scale(x) for f, x in test.seen_meta_x.items() if len(x)}

    def method(x):
        with torch.no_grad():
            return trained.model.anomaly_score(torch.as_tensor(x), trained.score).numpy()

    scorers = {"metaad": method}
    for name in cfg.eval.baselines:
        if not cfg.quiet:
            log(f"fitting baseline {name} on the same split ...")
        scorers[name] = fit_baseline(name, run_cfg, setup)

    held_out, seen = {}, {}
    for name, scorer in scorers.items():
        normal_scores = scorer(normal_x)
        held_out[name] = family_metrics(normal_scores, {f: scorer(x) for f, x in held_out_x.items()})
        if seen_x:
            seen[name] = family_metrics(normal_scores, {f: scorer(x) for f, x in seen_x.items()})
    method_normal = method(normal_x)
    method_anom = np.concatenate([method(x) for x in held_out_x.values()])
    report = {
        "run": location.uri,
        "scaler": run_cfg.data.scaler,
        "held_out": held_out,
        "seen_meta": seen,
        "operating_point": at_threshold(method_normal, method_anom, float(payload["threshold"])),
    }
    return report


def evaluate_command(cfg) -> None:
    report = evaluate_run(cfg)
    location = run_location(cfg)
    out = location.child("report") if cfg.eval.output is None else None
    if out is not None:
        out.write_bytes_atomic(json.dumps(report, indent=2).encode(), "metrics.json")
    else:
        from metaad_dist.data.storage import open_location

        open_location(cfg.eval.output, cfg.storage).write_bytes_atomic(json.dumps(report, indent=2).encode(), "metrics.json")
    print(results_table(report["held_out"], f"held-out families (scaler: {report['scaler']}), anomaly = positive"))
    op = report["operating_point"]
    print(
        f"metaad at the validation-chosen threshold {op['threshold']:.4f}: "
        f"precision {op['precision']:.3f} recall {op['recall']:.3f} F1 {op['f1']:.3f}"
    )
