"""A scikit-learn / PyOD-style estimator around the same core, for in-memory use.

    det = MetaADDetector(normal_families=["normal"], budget=10).fit(X, families)
    scores = det.decision_function(X_new)   # higher = more anomalous
    flags = det.predict(X_new)              # 1 = anomaly, at threshold_

`families` labels each training row; rows of `normal_families` are normal, rows of any other
family are labelled anomalies (at most `budget` per family are used, drawn once per seed).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from omegaconf import OmegaConf

from metaad_dist.config import Config, apply_overrides
from metaad_dist.data.table import FamilyTable
from metaad_dist.errors import ConfigError, DataError
from metaad_dist.eval.threshold import FALLBACK_NORMAL_QUANTILE
from metaad_dist.train.artifacts import score_scaled_rows


class _ArraySource:
    def __init__(self, table: FamilyTable):
        self.table = table

    def family_names(self) -> list[str]:
        return sorted(set(self.table.families.tolist()))

    def read(self, families: Sequence[str]) -> FamilyTable:
        return self.table.select(np.isin(self.table.families, list(families)))


class MetaADDetector:
    def __init__(self, normal_families: Optional[Sequence[str]] = None, budget: int = 10, k_shot: int = 5,
                 episodes: int = 600, scaler: str = "standard", seed: int = 0, overrides: Sequence[str] = ()):
        self.normal_families = normal_families
        self.budget = budget
        self.k_shot = k_shot
        self.episodes = episodes
        self.scaler = scaler
        self.seed = seed
        self.overrides = tuple(overrides)  # dotted key=value settings of the schema, e.g. "model.embed_dim=16"

    def _config(self, normal: list[str], meta: list[str]):
        cfg = OmegaConf.structured(Config)
        cfg.data.name, cfg.data.path = "in-memory", "in-memory"
        cfg.data.normal, cfg.data.meta, cfg.data.scaler = normal, meta, self.scaler
        cfg.meta.budget, cfg.meta.k_shot, cfg.meta.episodes = self.budget, self.k_shot, self.episodes
        cfg.seed, cfg.quiet = self.seed, True
        return apply_overrides(cfg, self.overrides)

    def fit(self, X, y) -> "MetaADDetector":
        from metaad_dist.data.roles import FamilyRoles
        from metaad_dist.data.scaling import FeatureScaler  # noqa: F401 - part of the fitted state
        from metaad_dist.train import setup as training
        from metaad_dist.train import api

        x = np.asarray(X, dtype=np.float32)
        families = np.asarray(y).astype(str)
        if x.ndim != 2 or len(x) != len(families):
            raise DataError(f"X must be 2-D with one family label per row; got X {x.shape}, y {families.shape}")
        names = sorted(set(families.tolist()))
        normal = [str(f) for f in self.normal_families] if self.normal_families else [max(names, key=lambda f: (families == f).sum())]
        meta = [f for f in names if f not in normal]
        if not meta:
            raise ConfigError("y has no anomaly family: label a few anomalies with a family other than normal_families")
        cfg = self._config(normal, meta)
        cfg.data.test_fraction = 0.0  # every normal row given is for training (20% for the threshold)
        train_rows = int(np.isin(families, normal).sum() * (1 - cfg.data.val_fraction))
        cfg.meta.n_support = min(cfg.meta.n_support, max(1, train_rows // 2 - 1))
        cfg.meta.n_query = min(cfg.meta.n_query, max(1, train_rows // 2 - 1))
        table = FamilyTable(x, families, np.arange(len(x), dtype=np.int64), [f"x{i}" for i in range(x.shape[1])])
        source = _ArraySource(table)
        roles = FamilyRoles.from_config(cfg.data, source.family_names(), required=("normal", "meta"))
        setup = training.build_setup(cfg, source, roles)
        result = api.fit(cfg, setup=setup)
        self.model_ = result.trained.model.eval()
        self.scaler_ = setup.scaler
        self.score_ = cfg.model.score
        val = setup.val_normal_x if len(setup.val_normal_x) else setup.sampler.normal_x
        self.threshold_ = float(np.quantile(self._scores_scaled(val), FALLBACK_NORMAL_QUANTILE))
        return self

    def _scores_scaled(self, xs: np.ndarray) -> np.ndarray:
        return score_scaled_rows(self.model_, xs, self.score_)

    def decision_function(self, X) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("MetaADDetector is not fitted; call fit(X, y) first")
        return self._scores_scaled(self.scaler_.transform(np.asarray(X, dtype=np.float32)))

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > self.threshold_).astype(np.int64)
