"""One-class ensemble: IsolationForest + mean distance to the k nearest training normal rows.

What a practitioner tries first on tabular anomaly detection, and the strongest simple peer on
NSL-KDD (ANCHORS.md, "Simple strong peers"): Liu, Ting, Zhou, "Isolation Forest", ICDM 2008
(scikit-learn's implementation with its defaults), and the kNN distance of Ramaswamy, Rastogi,
Shim, "Efficient algorithms for mining outliers from large data sets", SIGMOD 2000 (mean
distance to the 10 nearest of at most 20,000 training normal rows, as in Angiulli and Pizzuti,
PKDD 2002). Normal rows only: the labelled shots are not used.

The two scores are rank-averaged without looking at the rows being scored (so a row's score
does not depend on what it is scored with): each becomes its rank among the scores of the
validation normal rows, on the -log(1 - F) scale with a linear tail beyond the largest one
(model/memory.py's tail_evidence, the method's own calibration), and the two ranks are averaged.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors

from metaad_dist.errors import ConfigError
from metaad_dist.eval.baselines.training import Scorer, as_rows
from metaad_dist.model.memory import tail_evidence

K = 10
MAX_BANK_ROWS = 20_000
MIN_REFERENCE_ROWS = 20  # fewer validation normal rows cannot place a score among them


def _rank(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    ref = torch.as_tensor(np.sort(reference), dtype=torch.float64)
    return tail_evidence(ref, torch.as_tensor(scores, dtype=torch.float64)).numpy()


def fit_oc_ensemble(normal_x: np.ndarray, reference_x: np.ndarray, seed: int) -> Scorer:
    """Fit on training normal rows; `reference_x` (validation normal rows) calibrates the ranks."""
    normal = as_rows(normal_x, "normal_x")
    reference = as_rows(reference_x, "reference_x")
    if len(reference) < MIN_REFERENCE_ROWS:
        raise ConfigError(
            f"oc_ensemble needs at least {MIN_REFERENCE_ROWS} validation normal rows to rank scores, got "
            f"{len(reference)}; raise data.val_fraction"
        )
    if len(normal) < K:
        raise ConfigError(f"oc_ensemble needs at least {K} training normal rows, got {len(normal)}")
    rng = np.random.default_rng(seed)
    bank = normal if len(normal) <= MAX_BANK_ROWS else normal[np.sort(rng.choice(len(normal), MAX_BANK_ROWS, replace=False))]
    neighbours = NearestNeighbors(n_neighbors=K, n_jobs=1).fit(bank)
    forest = IsolationForest(random_state=seed, n_jobs=1).fit(normal)

    def components(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = as_rows(x, "x")
        if len(x) == 0:
            return np.zeros(0), np.zeros(0)
        return neighbours.kneighbors(x)[0].mean(axis=1), -forest.score_samples(x)

    ref_knn, ref_forest = components(reference)

    def score(x: np.ndarray) -> np.ndarray:
        knn, depth = components(x)
        return 0.5 * (_rank(ref_knn, knn) + _rank(ref_forest, depth))

    return score
