"""The single operating threshold, chosen on validation data by maximising F1 (docs/method.md 5).

Everywhere (score, evaluate, the estimator) a row is flagged when its score is strictly above
the threshold.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve

# Without validation families, flag rows scoring above this quantile of validation normals.
FALLBACK_NORMAL_QUANTILE = 0.95


def choose_threshold(normal_scores: np.ndarray, anomaly_scores: np.ndarray | None) -> float:
    if anomaly_scores is None or len(anomaly_scores) == 0:
        return float(np.quantile(normal_scores, FALLBACK_NORMAL_QUANTILE))
    scores = np.concatenate([normal_scores, anomaly_scores])
    y = np.concatenate([np.zeros(len(normal_scores)), np.ones(len(anomaly_scores))])
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = float(thresholds[int(np.argmax(f1[:-1]))])
    # The curve flags score >= best; return the midpoint to the next lower score, so that
    # "strictly above" flags the same validation rows and new rows get a margin on both sides.
    below = scores[scores < best]
    return float((best + below.max()) / 2) if len(below) else float(np.nextafter(best, -np.inf))
