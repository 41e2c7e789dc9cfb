"""Baselines run on the same split, budget and preprocessing as the method (docs/method.md 7).

Each module holds a numpy-in implementation (``fit_*(normal_x, anomaly_x, seed, ...) ->
scorer``) on already-scaled features, and cites its paper. :func:`fit_baseline` adapts a
:class:`~metaad_dist.train.setup.TrainingSetup` to those arrays: training normal rows
(``setup.sampler.normal_x``) and the budget pool of each meta family (``setup.sampler.budget_x``),
both scaled by the setup's scaler. Validation families and held-out rows are never used.

=================  ==========================================  ===========================
name               what it trains on                           source
=================  ==========================================  ===========================
inner_only         normal rows (the method's inner loop)       this project (ablation)
isolation_forest   normal rows                                 Liu et al., ICDM 2008
deep_svdd          normal rows                                 Ruff et al., ICML 2018
supervised_mlp     normal rows + budget anomalies              plain classifier, same encoder
deep_sad           normal rows + budget anomalies              Ruff et al., ICLR 2020
devnet             normal rows + budget anomalies              Pang et al., KDD 2019
prenet             normal rows + budget anomalies              Pang et al., KDD 2023
oc_ensemble        normal rows (IsolationForest + kNN)         Liu et al. 2008; Ramaswamy et al. 2000
gbdt               normal rows + budget anomalies (XGBoost)    Chen & Guestrin, KDD 2016
xgbod              normal rows + budget anomalies              Zhao & Hryniewicki, IJCNN 2018
=================  ==========================================  ===========================

gbdt and xgbod need the ``bench`` extra (xgboost, pyod); oc_ensemble only scikit-learn.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from metaad_dist.errors import ConfigError

Scorer = Callable[[np.ndarray], np.ndarray]  # scaled features -> anomaly scores (higher = more anomalous)

BASELINES = [
    "inner_only", "isolation_forest", "deep_svdd", "supervised_mlp", "deep_sad", "devnet", "prenet",
    "oc_ensemble", "gbdt", "xgbod",
]


def fit_baseline(name: str, cfg, setup) -> Scorer:
    """Fit baseline `name` on the training view of `setup` and return its scorer."""
    if name not in BASELINES:
        raise ConfigError(f"eval.baselines: unknown baseline '{name}'; expected one of {BASELINES}")
    if name == "isolation_forest":
        from metaad_dist.eval.baselines.isolation_forest import fit_isolation_forest

        return fit_isolation_forest(setup, cfg.eval.isolation_forest_estimators, cfg.seed)
    if name == "inner_only":
        from metaad_dist.eval.baselines.inner_only import fit_inner_only

        return fit_inner_only(cfg, setup)
    if name == "oc_ensemble":
        from metaad_dist.eval.baselines.oc_ensemble import fit_oc_ensemble

        return fit_oc_ensemble(setup.sampler.normal_x, setup.val_normal_x, cfg.seed)
    if name in ("gbdt", "xgbod"):
        from metaad_dist.eval.baselines.gbdt import fit_gbdt
        from metaad_dist.eval.baselines.xgbod import fit_xgbod

        return (fit_gbdt if name == "gbdt" else fit_xgbod)(setup.sampler.normal_x, setup.sampler.budget_x, cfg.seed)

    from metaad_dist.train.setup import resolve_device

    device = resolve_device(cfg.trainer.device)
    normal_x, budget_x = setup.sampler.normal_x, setup.sampler.budget_x
    if name == "deep_svdd":
        from metaad_dist.eval.baselines.deep_sad import fit_deep_svdd

        return fit_deep_svdd(normal_x, cfg.seed, cfg.eval, device)
    if name == "deep_sad":
        from metaad_dist.eval.baselines.deep_sad import fit_deep_sad

        return fit_deep_sad(normal_x, budget_x, cfg.seed, cfg.eval, device)
    if name == "supervised_mlp":
        from metaad_dist.eval.baselines.supervised_mlp import fit_supervised_mlp

        return fit_supervised_mlp(normal_x, budget_x, cfg.seed, cfg.model, cfg.eval, device)
    if name == "devnet":
        from metaad_dist.eval.baselines.devnet import fit_devnet

        return fit_devnet(normal_x, budget_x, cfg.seed, cfg.eval, device)
    from metaad_dist.eval.baselines.prenet import fit_prenet

    return fit_prenet(normal_x, budget_x, cfg.seed, cfg.eval, device)
