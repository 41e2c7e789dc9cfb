"""Detection metrics with anomalies as the positive class (scikit-learn), and the DeLong variance
of a paired AUROC difference (how precisely two scores on the same rows are compared)."""
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


def auroc_difference_variance(normal_a, shots_a, normal_b, shots_b) -> float:
    """Variance of AUROC_a - AUROC_b when two scores rank the same shots above the same normal
    rows: DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated
    receiver operating characteristic curves", Biometrics 44, 1988. Each shot's placement (the
    share of normal rows it outranks, ties half) and each normal row's (the share of shots that
    outrank it) vary together under both scores, so the closer the two scores agree, the more
    precisely their difference is measured, however few the shots."""

    def placements(normal: np.ndarray, shots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ordered = np.sort(normal)
        below = np.searchsorted(ordered, shots, "left")
        ties = np.searchsorted(ordered, shots, "right") - below
        of_shots = (below + 0.5 * ties) / len(normal)
        above = (shots[None, :] > normal[:, None]).sum(axis=1) + 0.5 * (shots[None, :] == normal[:, None]).sum(axis=1)
        return of_shots, above / len(shots)

    shots_a_place, normal_a_place = placements(np.asarray(normal_a), np.asarray(shots_a))
    shots_b_place, normal_b_place = placements(np.asarray(normal_b), np.asarray(shots_b))
    if len(shots_a_place) < 2:
        return float("inf")  # one shot: no estimate of its spread
    return float(
        np.var(shots_a_place - shots_b_place, ddof=1) / len(shots_a_place)
        + np.var(normal_a_place - normal_b_place, ddof=1) / len(normal_a_place)
    )
