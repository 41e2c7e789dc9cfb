"""`metaad train`: train with the configured trainer and save the run to storage."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError
from metaad_dist.eval.threshold import choose_threshold
from metaad_dist.train.artifacts import TrainedModel, save_run

TRAINERS = ("local", "ray")


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


def train_command(cfg) -> None:
    if cfg.trainer.name not in TRAINERS:
        raise ConfigError(f"trainer.name='{cfg.trainer.name}'; expected one of {list(TRAINERS)}")
    if cfg.trainer.name == "ray":
        from metaad_dist.train.ray_trainer import train_ray

        result = train_ray(cfg)
        metrics, location_uri = result.metrics, result.location_uri
    else:
        from metaad_dist.train.local import train_local

        location = run_location(cfg)
        location.write_bytes_atomic(b"", WRITE_CHECK)  # an unwritable storage.root fails now, not after training
        location.delete(WRITE_CHECK)
        result = train_local(cfg)
        metrics = save_trained_run(cfg, location, result.trained, result.setup, result.history, result.seconds)
        location_uri = location.uri
    if not cfg.quiet:
        val = metrics["final"].get("val_auroc")
        print(
            f"saved run '{run_name(cfg)}' to {location_uri} ({cfg.meta.episodes} episodes in {metrics['seconds']:.1f}s"
            + (f", validation AUROC {val:.3f})" if val is not None else ")")
        )
