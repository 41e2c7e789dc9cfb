"""Baselines run on the same split, budget and preprocessing as the method (METHOD.md 7)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from metaad_dist.errors import ConfigError

Scorer = Callable[[np.ndarray], np.ndarray]  # scaled features -> anomaly scores


def fit_baseline(name: str, cfg, setup) -> Scorer:
    """Fit baseline `name` on the training view of `setup` and return its scorer."""
    if name == "isolation_forest":
        from metaad_dist.eval.baselines.isolation_forest import fit_isolation_forest

        return fit_isolation_forest(setup, cfg.eval.isolation_forest_estimators, cfg.seed)
    if name == "inner_only":
        from metaad_dist.eval.baselines.inner_only import fit_inner_only

        return fit_inner_only(cfg, setup)
    raise ConfigError(f"eval.baselines: unknown baseline '{name}'; expected one of {BASELINES}")


BASELINES = ["inner_only", "isolation_forest"]
