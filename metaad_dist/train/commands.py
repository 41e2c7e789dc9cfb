"""`metaad train`: train with the configured trainer and save the run to storage."""
from __future__ import annotations

import numpy as np
import torch

from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError
from metaad_dist.eval.threshold import choose_threshold
from metaad_dist.train.artifacts import save_run

TRAINERS = ("local",)


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


def train_command(cfg) -> None:
    if cfg.trainer.name not in TRAINERS:
        raise ConfigError(f"trainer.name='{cfg.trainer.name}'; expected one of {list(TRAINERS)}")
    from metaad_dist.train.local import train_local

    location = run_location(cfg)
    result = train_local(cfg)
    threshold = validation_threshold(result.trained.model, result.setup, cfg.model.score)
    final = result.history[-1]
    metrics = {
        "episodes": cfg.meta.episodes,
        "seconds": result.seconds,
        "final": final,
        "threshold": threshold,
        "history": result.history,
    }
    extra = {
        "model_args_version": 1,
        "threshold": threshold,
        "roles": {k: list(getattr(result.setup.roles, k)) for k in ("normal", "meta", "validation", "held_out")},
        "budget_row_ids": {f: torch.from_numpy(ids) for f, ids in result.setup.view.budget_row_ids.items()},
    }
    save_run(location, result.trained, result.setup.model_args, extra, cfg, metrics)
    if not cfg.quiet:
        val = final.get("val_auroc")
        print(
            f"saved run '{run_name(cfg)}' to {location.uri} ({cfg.meta.episodes} episodes in {result.seconds:.1f}s"
            + (f", validation AUROC {val:.3f})" if val is not None else ")")
        )
