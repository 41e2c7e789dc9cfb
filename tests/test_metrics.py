"""Detection metrics against hand-computed values (anomaly = positive class)."""
import numpy as np
import pytest

from metaad_dist.eval.metrics import detection_metrics


def test_values_on_a_small_hand_computed_case():
    normal, anomalies = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5])
    m = detection_metrics(normal, anomalies)
    assert m["auroc"] == pytest.approx(7 / 8)  # 0.35 outranks 3 of 4 normals, 0.5 all 4
    assert m["aupr"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)  # precision 1 at recall 1/2, 2/3 at recall 1
    assert m["fpr95"] == pytest.approx(1 / 4)  # catching both anomalies needs threshold 0.35


def test_fpr_at_95_is_exact_when_scores_tie():
    # 10 clear anomalies, then 10 pairs of one normal and one anomaly with the same score, among 90 normals.
    clear = np.full(10, 10.0)
    tied = np.arange(10, dtype=float)
    normal = np.concatenate([tied, np.full(80, -1.0)])
    anomalies = np.concatenate([clear, tied])
    # 19 of 20 anomalies (95%) are reached at the tie score 1.0: normals at or above it are 9 of 90.
    assert detection_metrics(normal, anomalies)["fpr95"] == pytest.approx(9 / 90)
