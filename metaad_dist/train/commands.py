"""Where a run lives in storage and what a finished training writes there (both trainers).

`metaad train` itself is train/launch.py: Ray Train's driver imports these helpers, so the
command that dispatches to it cannot live here without an import circle.
"""
from __future__ import annotations

import json
import re
from typing import Optional

import numpy as np
import torch

from metaad_dist.data.storage import open_location
from metaad_dist.errors import ConfigError, UserError
from metaad_dist.eval.threshold import choose_threshold
from metaad_dist.train.artifacts import TrainedModel, save_run


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def run_name(cfg) -> str:
    """The run's folder name under storage.root: a plain name, so no run writes outside the root."""
    name = cfg.run or f"{cfg.data.name}-seed{cfg.seed}"
    if not RUN_NAME.fullmatch(name) or ".." in name or len(name) > 200:
        key = "run" if cfg.run else "data.name"
        raise ConfigError(
            f"{key}='{name}': a run name must be a plain name (letters, digits, '.', '_', '-', '=', '+'; "
            "no path separators or '..'); storage.root chooses where runs go"
        )
    return name


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


class RunFolder:
    """A run's folder in storage through its life: checked before training (writable, a finished
    run not replaced without overwrite=true), created by the first object training writes, and
    removed again when a failure leaves nothing worth resuming from."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = run_name(cfg)
        self.location = run_location(cfg)
        self.existed = self.location.exists()
        self.resumed_at = 0  # episodes of the newest checkpoint there when this command started

    def check(self) -> None:
        """Refuse to replace a finished run; check the storage is writable without leaving a folder."""
        from metaad_dist.train.artifacts import MODEL_FILE
        from metaad_dist.train.checkpoint import run_checkpoints

        if self.existed and self.location.exists(MODEL_FILE) and not self.cfg.overwrite:
            done = finished_episodes(self.location)
            if done is None or done >= self.cfg.meta.episodes:
                raise ConfigError(
                    f"run '{self.name}' at {self.location.uri} is finished ({done} episodes); pass overwrite=true "
                    "to replace it, a new run= name to keep it, or a larger meta.episodes to train it further"
                )
        self.location.write_bytes_atomic(b"", WRITE_CHECK)  # an unwritable storage.root fails now
        self.location.delete(WRITE_CHECK)
        if not self.existed:
            self.location.delete()  # the check's folder: a run folder appears when training writes to it
        if self.existed and not self.cfg.overwrite:
            done = run_checkpoints(self.location)
            self.resumed_at = done[-1][0] if done else 0

    def start(self) -> None:
        """Training really starts: with overwrite=true the old run goes now (not before setup passed)."""
        if self.existed and self.cfg.overwrite:
            self.location.delete()
            self.existed = False

    def discard_if_empty(self) -> None:
        """After a failure: remove a folder this command created that holds no checkpoint or model."""
        from metaad_dist.train.artifacts import MODEL_FILE
        from metaad_dist.train.checkpoint import run_checkpoints

        try:
            if not self.existed and not self.location.exists(MODEL_FILE) and not run_checkpoints(self.location):
                self.location.delete()
        except UserError:
            pass  # the failure being reported matters more than the cleanup


def finished_episodes(location) -> Optional[int]:
    """The episode count metrics.json records for a finished run (None when unreadable)."""
    from metaad_dist.train.artifacts import METRICS_FILE

    try:
        return int(json.loads(location.read_bytes(METRICS_FILE))["episodes"])
    except (UserError, ValueError, KeyError, TypeError):
        return None


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
def final_line(name: str, uri: str, metrics: dict, resumed_at: int) -> str:
    """The last line of `metaad train`: episodes this process trained and the run's total."""
    total = int(metrics["episodes"])
    val = metrics["final"].get("val_auroc")
    return (
        f"saved run '{name}' to {uri} ({total - resumed_at} episodes trained by this process, {total} in total, "
        f"{metrics['seconds']:.1f}s of training" + (f", validation AUROC {val:.3f})" if val is not None else ")")
    )


def train_local_run(cfg) -> tuple[dict, str, int]:
    """The local trainer under a RunFolder: checkpoints every trainer.checkpoint_every episodes,
    resumes from the newest one, leaves no folder when it fails before the first."""
    from metaad_dist.train.checkpoint import LocalCheckpoints
    from metaad_dist.train.local import train_local
    from metaad_dist.train.setup import prepare_training

    folder = RunFolder(cfg)
    folder.check()
    checkpoints = LocalCheckpoints(cfg, folder.location)
    try:
        setup = prepare_training(cfg)
        folder.start()
        result = train_local(cfg, setup=setup, checkpoints=checkpoints)
        trainer = {"name": "local", "episodes_trained": cfg.meta.episodes - result.resumed_at,
                   "resumed_at_episode": result.resumed_at, "fusion": result.fusion}
        metrics = save_trained_run(cfg, folder.location, result.trained, result.setup, result.history,
                                   result.seconds, {"trainer": trainer})
    except BaseException:
        folder.discard_if_empty()
        raise
    return metrics, folder.location.uri, result.resumed_at
