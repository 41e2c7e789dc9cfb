"""Where a run lives in storage and what a finished training writes there (both trainers).

`metaad train` itself is train/launch.py: Ray Train's driver imports these helpers, so the
command that dispatches to it cannot live here without an import circle.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from metaad_dist.data.storage import open_location
from metaad_dist.eval.threshold import choose_threshold
from metaad_dist.train.artifacts import TrainedModel, save_run


def run_name(cfg) -> str:
    return cfg.run or f"{cfg.data.name}-seed{cfg.seed}"


def run_location(cfg):
    return open_location(cfg.storage.root, cfg.storage).child(run_name(cfg))


def validation_threshold(model, setup, score: str) -> float:
    with torch.no_grad():
        normal = model.anomaly_score(torch.as_tensor(setup.val_normal_x), score).numpy()
        anomalies = (
            np.concatenate([model.anomaly_score(torch.as_tensor(x), score).numpy() for x in setup.validation_x.values()])
            if setup.validation_x else None
        )
    return choose_threshold(normal, anomalies)


WRITE_CHECK = ".write-check"


def save_trained_run(
    cfg, location, trained: TrainedModel, setup, history: list[dict], seconds: float, extra_metrics: Optional[dict] = None
) -> dict:
    """Write model.pt, config.yaml and metrics.json (what `metaad evaluate` reads); returns the metrics."""
    threshold = validation_threshold(trained.model, setup, cfg.model.score)
    metrics = {
        "episodes": cfg.meta.episodes,
        "seconds": seconds,
        "final": history[-1],
        "threshold": threshold,
        "history": history,
        "data": setup.summary,  # which path the run took (memory or streaming) and what setup read
        **(extra_metrics or {}),
    }
    # roles, budget pools and, for prepared datasets, the encoder `metaad score` applies to raw rows
    extra = {"model_args_version": 1, "threshold": threshold, **setup.run_metadata()}
    save_run(location, trained, setup.model_args, extra, cfg, metrics)
    return metrics
