"""Detection metrics with anomalies as the positive class, all from scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def fpr_at_tpr(y_true: np.ndarray, scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """False-positive rate at the first threshold reaching `tpr_level` true-positive rate."""
    # Every threshold: dropping collinear points can skip the first one reaching the level when
    # scores tie (duplicate rows), which overstates the FPR.
    fpr, tpr, _ = roc_curve(y_true, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def detection_metrics(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> dict[str, float]:
    y = np.concatenate([np.zeros(len(normal_scores)), np.ones(len(anomaly_scores))])
    s = np.concatenate([normal_scores, anomaly_scores]).astype(np.float64)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "fpr95": fpr_at_tpr(y, s),
        "n_normal": int(len(normal_scores)),
        "n_anomaly": int(len(anomaly_scores)),
    }


def family_metrics(normal_scores: np.ndarray, family_scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """Overall (all families pooled) and per-family metrics against the same normal rows."""
    out = {"overall": detection_metrics(normal_scores, np.concatenate(list(family_scores.values())))}
    for family, scores in family_scores.items():
        if len(scores):
            out[family] = detection_metrics(normal_scores, scores)
    return out
