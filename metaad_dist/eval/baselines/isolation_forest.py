"""IsolationForest on training normal rows only.

Liu, Ting, Zhou, "Isolation Forest", ICDM 2008; scikit-learn's implementation.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest


def fit_isolation_forest(setup, n_estimators: int, seed: int):
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    forest.fit(setup.sampler.normal_x)

    def score(x_scaled: np.ndarray) -> np.ndarray:
        return -forest.score_samples(x_scaled)  # higher = more anomalous

    return score
