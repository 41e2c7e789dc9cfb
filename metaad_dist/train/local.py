"""The single-process training loop: episodes -> MetaLearner.step, with progress and validation."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from metaad_dist.config import Config
from metaad_dist.eval.metrics import detection_metrics
from metaad_dist.meta.learner import MetaLearner, step_episodes
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.artifacts import TrainedModel
from metaad_dist.train.fusion import finish_training
from metaad_dist.train.setup import TrainingSetup, configure_torch, prepare_training


@dataclass
class TrainResult:
    trained: TrainedModel
    setup: TrainingSetup
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def validation_auroc(model, setup: TrainingSetup, score: str, device: torch.device) -> Optional[float]:
    """AUROC of validation families vs validation normals: model selection only, never held-out."""
    if not setup.validation_x:
        return None
    model.eval()
    normal = model.anomaly_score(torch.as_tensor(setup.val_normal_x, device=device), score).cpu().numpy()
    anomalies = np.concatenate([
        model.anomaly_score(torch.as_tensor(x, device=device), score).cpu().numpy()
        for x in setup.validation_x.values()
    ])
    model.train()
    return detection_metrics(normal, anomalies)["auroc"]


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]: a step advances several episodes."""
    return every > 0 and after // every > before // every


def train_local(
    cfg: Config,
    outer: bool = True,
    setup: Optional[TrainingSetup] = None,
    log: Callable[[str], None] = print,
    on_validation: Optional[Callable[[dict], None]] = None,
) -> TrainResult:
    """Train in this process. `outer=False` is the inner-loop-only ablation (one-class MSP).

    `on_validation(metrics)` is called after each validation (Ray Tune reports from it).
    """
    setup = setup or prepare_training(cfg)
    start = time.perf_counter()
    model, history = fit_network(cfg, setup, outer, log, on_validation)
    # The fusion choice re-enacts the method's own training; the inner-only ablation has none.
    finish_training(cfg, setup, model, fit_network_only if outer else None, log)
    trained = TrainedModel(model.cpu(), setup.scaler, setup.view.feature_names, cfg.model.score)
    return TrainResult(trained, setup, history, time.perf_counter() - start)


def fit_network(
    cfg: Config,
    setup: TrainingSetup,
    outer: bool = True,
    log: Callable[[str], None] = print,
    on_validation: Optional[Callable[[dict], None]] = None,
) -> tuple[MetaADModel, list[dict]]:
    """The episode loop: the network alone (normal memory not filled) and its metrics history.

    Each step trains `meta.episodes_per_step` episodes at once (the last step completes its
    batch, so meta.episodes rounds up to a multiple of it); history has one row per step."""
    device = configure_torch(cfg.trainer)
    learner = MetaLearner(setup.build_model(cfg.seed), cfg.meta, device, seed=cfg.seed)
    history: list[dict] = []
    start = time.perf_counter()
    label = "method" if outer else "inner-only"
    per_step = cfg.meta.episodes_per_step
    steps = math.ceil(cfg.meta.episodes / per_step)
    total = steps * per_step
    for s in range(steps):
        indices = step_episodes(s, per_step)
        before, done = indices[0], indices[-1] + 1
        metrics = learner.step(
            [setup.sampler.episode(e) for e in indices], outer=outer and before >= cfg.meta.warmup_episodes
        )
        if crossed(before, done, cfg.trainer.validate_every) or done == total:
            metrics["val_auroc"] = validation_auroc(learner.model, setup, cfg.model.score, device)
        metrics["episode"] = done
        history.append(metrics)
        if on_validation is not None and "val_auroc" in metrics:
            on_validation(metrics)
        if not cfg.quiet and (crossed(before, done, cfg.trainer.log_every) or done == total):
            rate = done / (time.perf_counter() - start)
            shown = " ".join(
                f"{k} {v:.3f}" for k, v in metrics.items()
                if k in ("inner_loss", "outer_loss", "confidence_margin", "temperature", "val_auroc") and v is not None
            )
            log(f"[{label}] episode {done}/{total} {shown} ({rate:.1f} episodes/s)")
    learner.model.eval()
    return learner.model, history


def fit_network_only(cfg: Config, setup: TrainingSetup) -> MetaADModel:
    return fit_network(cfg, setup)[0]
