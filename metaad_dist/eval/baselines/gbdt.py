"""Gradient-boosted trees: XGBoost, normal rows vs the labelled shots.

Chen, Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016. The supervised model a
practitioner fits first on a labelled table (ANCHORS.md, "Simple strong peers"): XGBClassifier
with the library's defaults, the class imbalance met by scale_pos_weight = normals / shots.
Score: the raw margin (log-odds), which ranks rows as the probability does without the ties
that float32 probabilities saturated at 0 or 1 would give.
"""
from __future__ import annotations

import numpy as np

from metaad_dist.eval.baselines.training import Anomalies, Scorer, as_rows, stack_anomalies


def fit_gbdt(normal_x: np.ndarray, anomaly_x: Anomalies, seed: int) -> Scorer:
    from xgboost import XGBClassifier

    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x, normal.shape[1])
    model = XGBClassifier(scale_pos_weight=len(normal) / len(anomalies), random_state=seed, n_jobs=1)
    model.fit(np.concatenate([normal, anomalies]), np.r_[np.zeros(len(normal)), np.ones(len(anomalies))])

    def score(x: np.ndarray) -> np.ndarray:
        x = as_rows(x, "x")
        return model.predict(x, output_margin=True).astype(np.float64) if len(x) else np.zeros(0)

    return score
