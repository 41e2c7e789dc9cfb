"""The one door into training for evaluation, the inner-only ablation and the estimator: `fit`.

Why a door: evaluation retrains the method (budget curve), the ablation trains the inner loop
alone and the estimator trains in memory; each calling the loop's internals tied eval/ to
train/'s files and closed an import circle through the CLI. `fit` trains in this process and
saves nothing; saving a run and choosing Ray Train is `metaad train` (train/launch.py).
"""
from __future__ import annotations

from typing import Callable, Optional

from metaad_dist.config import Config
from metaad_dist.train.local import TrainResult as FitResult  # trained model, its setup, history, seconds
from metaad_dist.train.local import train_local
from metaad_dist.train.setup import TrainingSetup

__all__ = ["FitResult", "fit"]


def fit(
    cfg: Config, setup: Optional[TrainingSetup] = None, outer: bool = True, log: Callable[[str], None] = print
) -> FitResult:
    """Train the method on `cfg` (or on an already built `setup`: the same split, scaler and
    budget pool) in this process. `outer=False` is the inner-loop-only ablation: no outer
    calibration, no fusion choice."""
    return train_local(cfg, outer=outer, setup=setup, log=log)
