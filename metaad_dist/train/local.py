"""The single-process training loop: episodes -> MetaLearner.step, with progress, validation and
(given a LocalCheckpoints) checkpoints that a rerun resumes from."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from metaad_dist.config import Config, plain
from metaad_dist.eval.metrics import detection_metrics
from metaad_dist.meta.learner import MetaLearner, check_meta, step_episodes
from metaad_dist.model.networks import MetaADModel
from metaad_dist.train.artifacts import TrainedModel
from metaad_dist.train.checkpoint import LocalCheckpoints
from metaad_dist.train.fold_processes import LocalFolds, fold_process_count
from metaad_dist.train.fusion import choose_fusion, fold_plan
from metaad_dist.train.setup import TrainingSetup, configure_torch, prepare_training, resolve_device


@dataclass
class TrainResult:
    trained: TrainedModel
    setup: TrainingSetup
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training time of the run, earlier processes' share included
    resumed_at: int = 0  # episodes already done (from a checkpoint) when this process started
    fusion: dict = field(default_factory=dict)  # which process trained each fusion fold (LocalFolds.report)


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
    checkpoints: Optional[LocalCheckpoints] = None,
) -> TrainResult:
    """Train in this process. `outer=False` is the inner-loop-only ablation (one-class MSP).

    `on_validation(metrics)` is called after each validation (Ray Tune reports from it).
    With `checkpoints` the loop resumes from the run's newest checkpoint and writes new ones.
    """
    check_meta(cfg.meta)  # before any data is read or fold process forked
    setup = setup or prepare_training(cfg)
    if not cfg.quiet:
        log(setup.describe())
    start = time.perf_counter()
    progress = Progress()
    # The fusion choice re-enacts the method's own training; the inner-only ablation has none.
    # Its fold networks need nothing of this run's network: they train beside the loop.
    fit = fit_network_only if outer else None
    families = fold_plan(cfg, setup, fit)
    processes = fold_process_count(cfg.trainer.fold_processes, len(families), resolve_device(cfg.trainer.device))
    with LocalFolds(cfg, setup, families, fit, processes, log) as folds:
        model, history = fit_network(cfg, setup, outer, log, on_validation, checkpoints, progress)
        setup.finish_model(model, cfg.model.score, cfg.seed)
        networks = folds.networks()
    choose_fusion(cfg, setup, model, networks, log)
    trained = TrainedModel(model.cpu(), setup.scaler, setup.view.feature_names, cfg.model.score)
    seconds = progress.seconds_before + time.perf_counter() - start
    return TrainResult(trained, setup, history, seconds, progress.resumed_at, folds.report())


@dataclass
class Progress:
    """Where a resumed loop started: the checkpoint's episode count and training seconds."""

    resumed_at: int = 0
    seconds_before: float = 0.0


def resume_loop(checkpoints, learner: MetaLearner, sampler, progress: Progress, log) -> tuple[int, list[dict]]:
    """(first episode, history so far): from the newest checkpoint, or (0, []) without one."""
    if checkpoints is None:
        return 0, []
    start, history, progress.seconds_before = checkpoints.resume(learner, sampler)
    progress.resumed_at = start
    if start:
        log(f"[local] resuming from {checkpoints.location.uri_of()} at episode {start}")
    return start, history


def checkpoint_loop(checkpoints, learner: MetaLearner, sampler, before: int, done: int, total: int, history: list,
                    progress: Progress, started: float) -> None:
    """Write a checkpoint when the step (episodes before..done) crosses a multiple of
    trainer.checkpoint_every, or at the end (`total` episodes)."""
    if checkpoints is not None and checkpoints.due(before, done, total):
        seconds = progress.seconds_before + time.perf_counter() - started
        checkpoints.save(learner, sampler, done, history, seconds)


def fit_network(
    cfg: Config,
    setup: TrainingSetup,
    outer: bool = True,
    log: Callable[[str], None] = print,
    on_validation: Optional[Callable[[dict], None]] = None,
    checkpoints: Optional[LocalCheckpoints] = None,
    progress: Optional[Progress] = None,
) -> tuple[MetaADModel, list[dict]]:
    """The episode loop: the network alone (normal memory not filled) and its metrics history.

    Each step trains `meta.episodes_per_step` episodes at once (the last step completes its
    batch, so meta.episodes rounds up to a multiple of it); history has one row per step."""
    device = configure_torch(cfg.trainer)
    learner = MetaLearner(setup.build_model(cfg.seed), cfg.meta, device, seed=cfg.seed)
    progress = progress or Progress()
    first, history = resume_loop(checkpoints, learner, setup.sampler, progress, log)
    start = time.perf_counter()
    label = "method" if outer else "inner-only"
    meta, trainer, quiet = plain(cfg.meta), plain(cfg.trainer), cfg.quiet  # read every step
    per_step = meta.episodes_per_step
    steps = math.ceil(meta.episodes / per_step)
    total = steps * per_step
    for s in range(first // per_step, steps):  # checkpoints fall on step boundaries
        indices = step_episodes(s, per_step)
        before, done = indices[0], indices[-1] + 1
        metrics = learner.step(
            [setup.sampler.episode(e) for e in indices], outer=outer and before >= meta.warmup_episodes
        )
        if crossed(before, done, trainer.validate_every) or done == total:
            metrics["val_auroc"] = validation_auroc(learner.model, setup, cfg.model.score, device)
        metrics["episode"] = done
        history.append(metrics)
        if on_validation is not None and "val_auroc" in metrics:
            on_validation(metrics)
        checkpoint_loop(checkpoints, learner, setup.sampler, before, done, total, history, progress, start)
        if not quiet and (crossed(before, done, trainer.log_every) or done == total):
            rate = (done - first) / (time.perf_counter() - start)
            shown = " ".join(
                f"{k} {v:.3f}" for k, v in metrics.items()
                if k in ("inner_loss", "outer_loss", "confidence_margin", "temperature", "val_auroc") and v is not None
            )
            log(f"[{label}] episode {done}/{total} {shown} ({rate:.1f} episodes/s)")
    learner.model.eval()
    return learner.model, history


def fit_network_only(cfg: Config, setup: TrainingSetup) -> MetaADModel:
    return fit_network(cfg, setup)[0]
