"""XGBOD: XGBoost on the features plus the scores of many unsupervised detectors.

Zhao, Hryniewicki, "XGBOD: Improving Supervised Outlier Detection with Unsupervised
Representation Learning", IJCNN 2018; PyOD's implementation (Zhao, Nasrullah, Li, JMLR 2019)
with its defaults (kNN and LOF at eight k, HBOS, OC-SVM at eleven nu, IsolationForest at seven
sizes, then an XGBoost classifier). Trained on the labelled shots and, as in ANCHORS.md, a
seeded subsample of 3,000 training normal rows (its OC-SVMs and LOFs are quadratic in rows).
Score: PyOD's decision_function (the classifier's anomaly probability).
"""
from __future__ import annotations

import warnings

import numpy as np

from metaad_dist.eval.baselines.training import Anomalies, Scorer, as_rows, stack_anomalies

MAX_NORMAL_ROWS = 3000


def fit_xgbod(normal_x: np.ndarray, anomaly_x: Anomalies, seed: int) -> Scorer:
    from pyod.models.xgbod import XGBOD

    normal = as_rows(normal_x, "normal_x")
    anomalies = stack_anomalies(anomaly_x, normal.shape[1])
    if len(normal) > MAX_NORMAL_ROWS:
        rng = np.random.default_rng(seed)
        normal = normal[np.sort(rng.choice(len(normal), MAX_NORMAL_ROWS, replace=False))]
    # verbosity=0 only silences XGBoost's warning about PyOD's obsolete `silent` argument.
    model = XGBOD(random_state=seed, verbosity=0)
    with warnings.catch_warnings():  # PyOD warns once per inner detector that it was handed the labels
        warnings.filterwarnings("ignore", message="y should not be presented", category=UserWarning)
        model.fit(np.concatenate([normal, anomalies]).astype(np.float64), np.r_[np.zeros(len(normal)), np.ones(len(anomalies))])

    def score(x: np.ndarray) -> np.ndarray:
        x = as_rows(x, "x")
        return model.decision_function(x.astype(np.float64)).astype(np.float64) if len(x) else np.zeros(0)

    return score
